"""lscape._hvpops: convolutions and ReLUs with their double backward written out, against torch's own
autograd (the reference) and finite differences (gradcheck / gradgradcheck, independent of both)."""
import pytest
import torch
from lscape import Landscape, _hvpops
from lscape.models import ResNet, resnet20
from lscape.probes import spectrum
from torch import nn
from torch.nn import functional as F

PLAIN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

# (dims, C_in, C_out, kernel, stride, padding, dilation, groups, bias, spatial)
CASES = [
    (2, 3, 4, 3, 1, 1, 1, 1, True, 7),
    (2, 4, 6, 3, 2, 1, 1, 2, False, 8),
    (2, 2, 3, (3, 1), (1, 2), (2, 0), (2, 1), 1, True, 9),
    (2, 3, 5, 1, 1, 0, 1, 1, False, 5),  # a 1 x 1 shortcut
    (1, 3, 4, 5, 2, 2, 1, 1, True, 11),
    (3, 2, 2, 2, 1, 1, 1, 1, True, 4),
]


def _inputs(case, seed):
    dims, cin, cout, k, stride, padding, dilation, groups, bias, n = case
    g = torch.Generator().manual_seed(seed)
    kernel = (k,) * dims if isinstance(k, int) else k
    x = torch.randn(3, cin, *([n] * dims), generator=g, dtype=torch.float64)
    w = torch.randn(cout, cin // groups, *kernel, generator=g, dtype=torch.float64)
    b = torch.randn(cout, generator=g, dtype=torch.float64) if bias else None
    return x, w, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


def _loss(conv, x, w, b, kw):
    # a nonlinear scalar of the output, so the Hessian has x-x, x-w and w-w blocks
    y = conv(torch.tanh(x), w, b, **kw)
    return (torch.sin(y) * y).sum()


def _grad_and_hvp(conv, x, w, b, kw, vs):
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b) if t is not None]
    xs, ws = leaves[0], leaves[1]
    bs = leaves[2] if b is not None else None
    gs = torch.autograd.grad(_loss(conv, xs, ws, bs, kw), leaves, create_graph=True)
    hv = torch.autograd.grad(gs, leaves, vs)
    return [g.detach() for g in gs], list(hv)


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}d-{i}" for i, c in enumerate(CASES)])
def test_gradient_and_hessian_vector_products_equal_torch_autograd(case):
    x, w, b, kw = _inputs(case, 0)
    g = torch.Generator().manual_seed(1)
    vs = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (x, w, b) if t is not None]
    g_ref, hv_ref = _grad_and_hvp(PLAIN[case[0]], x, w, b, kw, vs)
    g_new, hv_new = _grad_and_hvp(_hvpops.conv, x, w, b, kw, vs)
    for a, r in zip(g_new + hv_new, g_ref + hv_ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)
    assert max(float(h.abs().max()) for h in hv_ref) > 1e-3  # the products are not trivially zero


@pytest.mark.parametrize("case", CASES[:3] + CASES[4:5], ids=["2d", "2d-groups", "2d-asym", "1d"])
def test_first_and_second_derivatives_match_finite_differences(case):
    dims, cin, cout, k, stride, padding, dilation, groups, bias, n = case
    case = (dims, cin, cout, k, stride, padding, dilation, groups, bias, 5)  # small: finite differences
    x, w, b, kw = _inputs(case, 2)
    args = tuple(t.requires_grad_(True) for t in (x, w, b) if t is not None)

    def f(*a):
        return _hvpops.conv(a[0], a[1], a[2] if len(a) > 2 else None, **kw)
    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


def test_input_without_gradient_weight_only():
    # the first layer of a network: the data needs no gradient, so neither gI nor its second derivative
    x, w, b, kw = _inputs(CASES[0], 3)
    wr = w.clone().requires_grad_(True)
    wn = w.clone().requires_grad_(True)
    v = torch.randn_like(w)
    hv = []
    for conv, ww in ((F.conv2d, wr), (_hvpops.conv, wn)):
        (gw,) = torch.autograd.grad((torch.sin(conv(x, ww, None, **kw)) ** 2).sum(), ww, create_graph=True)
        hv.append(torch.autograd.grad(gw, ww, v)[0])
    torch.testing.assert_close(hv[1], hv[0], rtol=1e-10, atol=1e-10)


def test_batched_vectors_and_torch_func_transforms():
    x, w, b, kw = _inputs(CASES[1], 4)
    ws = w.clone().requires_grad_(True)
    V = torch.randn(3, *w.shape, dtype=torch.float64)
    (gw,) = torch.autograd.grad(_loss(_hvpops.conv, x, ws, b, kw), ws, create_graph=True)
    batched = torch.autograd.grad(gw, ws, V, retain_graph=True, is_grads_batched=True)[0]
    looped = torch.stack([torch.autograd.grad(gw, ws, v, retain_graph=True)[0] for v in V])
    torch.testing.assert_close(batched, looped, rtol=1e-10, atol=1e-10)
    # under torch.func the plain convolution runs (its batching rules): jacrev of grad is the Hessian
    flat = w.reshape(-1)

    def loss(u, conv):
        return _loss(conv, x, u.reshape(w.shape), b, kw)
    H_new = torch.func.jacrev(torch.func.grad(lambda u: loss(u, _hvpops.conv)))(flat)
    H_ref = torch.func.jacrev(torch.func.grad(lambda u: loss(u, F.conv2d)))(flat)
    torch.testing.assert_close(H_new, H_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(V.reshape(3, -1) @ H_ref, looped.reshape(3, -1), rtol=1e-9, atol=1e-9)


def test_third_derivative_equals_torch_autograd():
    # nothing in lscape asks for one, but a graph built with these convolutions stays exact past the second
    x, w, b, kw = _inputs(CASES[0], 5)
    u = torch.randn_like(w)
    out = []
    for conv in (F.conv2d, _hvpops.conv):
        ws = w.clone().requires_grad_(True)
        (gw,) = torch.autograd.grad(_loss(conv, x, ws, b, kw), ws, create_graph=True)
        (hv,) = torch.autograd.grad(gw, ws, u, create_graph=True)
        out.append(torch.autograd.grad((hv * u).sum(), ws)[0])
    torch.testing.assert_close(out[1], out[0], rtol=1e-10, atol=1e-10)
    assert float(out[0].abs().max()) > 1e-3


def test_string_padding_and_bad_arguments():
    x, w, b, _ = _inputs(CASES[0], 6)
    torch.testing.assert_close(_hvpops.conv(x, w, b, padding="same"), F.conv2d(x, w, b, padding="same"))
    with pytest.raises(ValueError, match="stride: got"):
        _hvpops.conv(x, w, b, stride=(1, 1, 1))


def test_hvp_mode_patches_and_restores():
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 3, padding="same"),
                        nn.Conv2d(3, 2, 3, padding=1, padding_mode="reflect"), nn.Conv2d(2, 2, 1),
                        nn.ReLU(inplace=True))
    own = net[4].forward = lambda x: x * 2  # an instance-level forward of the user's: kept as it is
    x = torch.randn(2, 2, 6, 6)
    before = net(x)
    assert not _hvpops.active()
    with pytest.raises(KeyError), _hvpops.hvp_mode(net):
        assert _hvpops.active()
        assert "forward" in net[0].__dict__  # zero padding, numeric: runs _hvpops.conv
        assert net[1].forward is _hvpops.relu
        # string or reflect padding, an in-place ReLU (the model may read its input again): left alone
        assert not any("forward" in net[i].__dict__ for i in (2, 3, 5))
        assert net[4].forward is own
        torch.testing.assert_close(net(x), before)
        raise KeyError  # an error inside still restores everything
    assert not _hvpops.active()
    assert not any("forward" in net[i].__dict__ for i in (0, 1, 2, 3, 5)) and net[4].forward is own
    torch.testing.assert_close(net(x), before)


def test_relu_derivatives_equal_torch_autograd():
    # including ReLU inputs exactly 0, where torch's ReLU gradient is 0 (threshold_backward: y > 0):
    # x[0] = (1, -1, 0, 0, 0) and w's rows 0 and 1 equal in columns 0 and 1 make (x @ w)[0, :2] = a - a = 0
    # exactly, in any summation order.  (relu + 1/2)^3, not relu^3: its derivative at a ReLU output of 0 is
    # 3/4 relu'(0), so the convention at 0 shows in every order
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64)
    x[0] = torch.tensor([1.0, -1.0, 0.0, 0.0, 0.0])
    w = torch.randn(5, 5, generator=g, dtype=torch.float64)
    w[1, :2] = w[0, :2]
    u = torch.randn(4, 5, generator=g, dtype=torch.float64)
    out, zeros = [], []

    def spied(relu):
        """relu, recording how many of its inputs are exactly 0."""
        return lambda z: zeros.append(int((z == 0).sum())) or relu(z)

    for relu in (torch.relu, _hvpops.relu):
        xs = x.clone().requires_grad_(True)
        (gx,) = torch.autograd.grad(((spied(relu)(xs @ w) + 0.5) ** 3).sum(), xs, create_graph=True)
        (hv,) = torch.autograd.grad(gx, xs, u, create_graph=True)
        (third,) = torch.autograd.grad((hv * u).sum(), xs)
        out.append((gx.detach(), hv.detach(), third))
    assert zeros == [2, 2]  # both ReLUs saw the two exact zeros
    for a, r in zip(out[1], out[0], strict=True):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)
    xs = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_hvpops.relu, (xs,)) and torch.autograd.gradgradcheck(_hvpops.relu, (xs,))
    # under torch.func the plain ReLU runs
    torch.testing.assert_close(torch.func.vmap(_hvpops.relu)(x), torch.relu(x))


def test_once_memoises_per_block_by_identity():
    calls = []

    def f(a, b):
        calls.append(1)
        return a * b
    a, b = torch.ones(2), torch.full((2,), 3.0)
    f_out = _hvpops.once(f, a, b)
    assert len(calls) == 1 and _hvpops.once(f, a, b) is not f_out  # outside a block: every call
    with _hvpops.hvp_mode():
        first = _hvpops.once(f, a, b)
        assert _hvpops.once(f, a, b) is first and len(calls) == 3
        _hvpops.once(f, a.clone(), b)  # an equal tensor is another tensor
        assert len(calls) == 4
    with _hvpops.hvp_mode():  # a new block: a new memo
        assert _hvpops.once(f, a, b) is not first


def _plain_conv_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 10))  # no BatchNorm: nothing folded


@pytest.mark.parametrize("make", [lambda: resnet20(1), _plain_conv_net], ids=["resnet20-bn", "plain-convs"])
def test_module_products_equal_torch_hvp_of_the_plain_module(make, monkeypatch):
    # BatchNorm folded (lscape._modeleval) and a conv net without it (its modules' forwards swapped): both
    # run _hvpops's convolutions in the products; torch.autograd.functional.hvp on the unmodified module
    # is the reference
    torch.manual_seed(0)
    model = make().double().eval()
    X, Y = torch.randn(6, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (6,))
    L = Landscape.from_module(model, F.cross_entropy, (X, Y))
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    V = torch.randn(2, theta.numel(), dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def f(t):
        parts = dict(zip(names, (c.reshape(s) for c, s in zip(t.split([s.numel() for s in shapes]), shapes,
                                                               strict=True)), strict=True))
        return F.cross_entropy(torch.func.functional_call(model, parts, (X,)), Y)
    ref = torch.stack([torch.autograd.functional.hvp(f, theta, v)[1] for v in V])
    calls = {"conv": 0, "relu": 0}
    for name, fn in (("conv", _hvpops._ConvGrad), ("relu", _hvpops._ReLUGrad)):
        def counted(*a, name=name, second=fn.backward):
            calls[name] += 1
            return second(*a)
        monkeypatch.setattr(fn, "backward", staticmethod(counted))
    got = spectrum.hvp(L, theta, V)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-11)
    # every convolution's and ReLU's double backward was _hvpops's
    assert calls["conv"] >= sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert calls["relu"] >= (17 if isinstance(model, ResNet) else 1)
    assert not _hvpops.active() and not any("forward" in m.__dict__ for m in model.modules())
