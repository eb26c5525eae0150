"""lscape._modeleval.FastForward: BatchNorm folded into the layer before it and channels-last convolutions
give the plain module's values, gradients and Hessian-vector products (autograd on the plain module is the
oracle), and every graph it cannot fold is evaluated plainly."""
from __future__ import annotations

import copy

import pytest
import torch
from lscape import Landscape
from lscape._flat import FlatLayout
from lscape._modeleval import FastForward
from lscape.models import resnet20
from torch import nn
from torch.nn import functional as F

RTOL = 1e-5
# float64 sees what float32's 1e-5 hides: the BatchNorm's eps (1e-5 of var ~1) moves the values by ~5e-6
RTOL64 = 1e-10


def _stats(model: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (a trained net's), then eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                if m.running_mean is None:
                    continue
                m.running_mean.copy_(0.3 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                if m.affine:
                    m.weight.copy_(1 + 0.2 * torch.randn(n, generator=g))
                    m.bias.copy_(0.2 * torch.randn(n, generator=g))
    return model.eval()


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.relu(x + self.bn2(self.conv2(y))).flatten(1))


def _cases():
    torch.manual_seed(0)
    return {
        "cnn2d-bn": (nn.Sequential(nn.Conv2d(2, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3, stride=2),
                                   nn.BatchNorm2d(4, affine=False), nn.Flatten(), nn.Linear(36, 5), nn.BatchNorm1d(5),
                                   nn.Linear(5, 3)), (2, 9, 9)),
        "cnn2d-plain": (nn.Sequential(nn.Conv2d(2, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 49, 3)), (2, 9, 9)),
        "residual": (_Residual(), (4, 6, 6)),
        "conv1d-bn": (nn.Sequential(nn.Conv1d(3, 5, 3, padding=1, dilation=1), nn.BatchNorm1d(5), nn.ReLU(),
                                    nn.Flatten(), nn.Linear(40, 3)), (3, 8)),
        "conv3d-bn": (nn.Sequential(nn.Conv3d(2, 3, 2, groups=1), nn.BatchNorm3d(3), nn.ReLU(), nn.Flatten(),
                                    nn.Linear(3 * 27, 3)), (2, 4, 4, 4)),
        "linear-bn1d": (nn.Sequential(nn.Linear(6, 7), nn.BatchNorm1d(7), nn.Tanh(), nn.Linear(7, 3)), (6,)),
        "resnet20": (resnet20(1, num_classes=3, in_channels=1, seed=0), (1, 32, 32)),
    }


CASES = _cases()
FOLDS = {"cnn2d-bn": 3, "cnn2d-plain": 0, "residual": 2, "conv1d-bn": 1, "conv3d-bn": 1, "linear-bn1d": 1,
         "resnet20": 21}


def _setup(name: str, n: int = 6, dtype: torch.dtype = torch.float32):
    """(model, layout, theta, X, Y) of case `name` in `dtype` (float64: a copy, CASES stays float32)."""
    model, shape = CASES[name]
    _stats(model)
    if dtype != torch.float32:
        model = copy.deepcopy(model).to(dtype)
    layout = FlatLayout.of(model)
    g = torch.Generator().manual_seed(2)
    theta = layout.flatten(model) + 0.05 * torch.randn(layout.dim, generator=g, dtype=dtype)  # off its point
    X = torch.randn(n, *shape, generator=g, dtype=dtype)
    Y = torch.randint(0, 3, (n,), generator=g)
    return model, layout, theta, X, Y


def _plain(model, layout, theta, X):
    return torch.func.functional_call(model, layout.split(theta), (X,))


# ResNet-20 channels-last only: its first channels-last passes warm up oneDNN's kernels (seconds)
@pytest.mark.parametrize(("name", "channels_last"), [(n, c) for n in CASES for c in (False, True)
                                                     if n != "resnet20" or c])
@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float32, RTOL), (torch.float64, RTOL64)],
                         ids=["float32", "float64"])
def test_values_equal_the_plain_module(name, channels_last, dtype, rtol):
    model, layout, theta, X, _ = _setup(name, dtype=dtype)
    fast = FastForward(model, channels_last=channels_last)
    assert len(fast.folded) == FOLDS[name]
    with torch.no_grad():
        want = _plain(model, layout, theta, X)
        got = fast(layout.split(theta), X)
        assert got.dtype == dtype
        torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * float(want.abs().max()))
        torch.testing.assert_close(fast(None, X), model(X), rtol=rtol, atol=rtol * float(want.abs().max()))


# float64 on the small cases (they hold every kind of fold); ResNet-20, the slow case, in float32 only
@pytest.mark.parametrize(("name", "dtype", "rtol"),
                         [pytest.param(n, torch.float32, RTOL, id=f"{n}-float32")
                          for n in ["cnn2d-bn", "cnn2d-plain", "residual", "conv1d-bn", "conv3d-bn", "linear-bn1d",
                                    "resnet20"]]
                         + [pytest.param(n, torch.float64, RTOL64, id=f"{n}-float64")
                            for n in ["cnn2d-bn", "residual", "conv1d-bn", "conv3d-bn", "linear-bn1d"]])
def test_gradients_and_hvps_equal_autograd_on_the_plain_module(name, dtype, rtol):
    model, layout, theta, X, Y = _setup(name, n=2 if name == "resnet20" else 4, dtype=dtype)
    fast = FastForward(model)
    v = torch.randn(layout.dim, generator=torch.Generator().manual_seed(3), dtype=dtype)

    def grad_hvp(forward):
        t = theta.clone().requires_grad_()
        loss = F.cross_entropy(forward(t), Y)
        (g,) = torch.autograd.grad(loss, t, create_graph=True)
        (hv,) = torch.autograd.grad(g @ v, t)
        return loss.detach(), g.detach(), hv

    want = grad_hvp(lambda t: _plain(model, layout, t, X))
    got = grad_hvp(lambda t: fast(layout.split(t), X))
    for w, g in zip(want, got, strict=True):
        torch.testing.assert_close(g, w, rtol=rtol, atol=rtol * float(w.abs().max()))


def test_vmapped_points_equal_one_by_one():
    model, layout, theta, X, _ = _setup("cnn2d-bn")
    fast = FastForward(model)
    thetas = theta + 0.1 * torch.randn(3, layout.dim, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = torch.func.vmap(lambda t: fast(layout.split(t), X, channels_last=False))(thetas)
        want = torch.stack([_plain(model, layout, t, X) for t in thetas])
    torch.testing.assert_close(got, want, rtol=RTOL, atol=RTOL * float(want.abs().max()))


# ---- fallbacks: each graph that cannot fold is evaluated plainly ----------------------------------------
class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = -x
        return self.bn(self.conv(x)).flatten(1)


class _TwoReaders(nn.Module):
    """The conv's output is read by BatchNorm and by the output: folding would change the second."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return (self.bn(y) + y).flatten(1)


def _fallbacks():
    torch.manual_seed(0)
    circular = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular")
    return {
        "bn not after a layer": (nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.BatchNorm2d(3), nn.Flatten()),
                                 "no BatchNorm directly after"),
        "bn in train mode": (nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten()),
                             "no BatchNorm in eval"),
        "no running stats": (nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, track_running_stats=False),
                                           nn.Flatten()), "no BatchNorm in eval"),
        "two readers": (_TwoReaders(), "no BatchNorm directly after"),
        "circular padding": (nn.Sequential(circular, nn.BatchNorm2d(3), nn.Flatten()), "no BatchNorm directly after"),
        "untraceable": (_Branchy(), "torch.fx could not trace"),
        "hooked": (nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten()), "forward hooks"),
    }


@pytest.mark.parametrize("name", list(_fallbacks()))
def test_graphs_that_cannot_fold_are_evaluated_plainly(name):
    model, reason = _fallbacks()[name]
    if name != "bn in train mode":
        _stats(model)
    else:
        model.train()
    if name == "hooked":
        model[2].register_forward_hook(lambda m, a, out: out * 2)
    layout = FlatLayout.of(model)
    X = torch.randn(5, 2, 6, 6, generator=torch.Generator().manual_seed(5))
    fast = FastForward(model)
    assert fast.folded == () and not fast.active and reason in fast.reason
    theta = layout.flatten(model) + 0.1
    bufs = {k: v.clone() for k, v in model.named_buffers()}  # train mode updates the running statistics
    with torch.no_grad():
        want = torch.func.functional_call(model, (layout.split(theta), bufs), (X,))
        got = fast(layout.split(theta), X, {k: v.clone() for k, v in model.named_buffers()})
    torch.testing.assert_close(got, want, rtol=RTOL, atol=1e-6)


def test_folded_batchnorm_put_in_train_mode_later_is_evaluated_plainly():
    model, layout, theta, X, _ = _setup("cnn2d-bn")
    fast = FastForward(model)
    assert fast.active
    model.train()
    try:
        assert not fast.active
        bufs = {k: v.clone() for k, v in model.named_buffers()}
        with torch.no_grad():
            want = torch.func.functional_call(model, (layout.split(theta), bufs), (X,))
            got = fast(layout.split(theta), X, {k: v.clone() for k, v in model.named_buffers()})
        torch.testing.assert_close(got, want, rtol=RTOL, atol=1e-6)
    finally:
        model.eval()


def test_linear_bn1d_on_3d_inputs_runs_unfused():
    # BatchNorm1d on (N, C, L) normalises dim 1, not the linear layer's features: evaluated as it is
    torch.manual_seed(0)
    model = _stats(nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Flatten(), nn.Linear(25, 2)))
    fast = FastForward(model)
    assert len(fast.folded) == 1
    X = torch.randn(3, 5, 4)
    with torch.no_grad():
        torch.testing.assert_close(fast(None, X), model(X), rtol=RTOL, atol=1e-6)


def test_excluded_layers_are_not_folded():
    model, *_ = _setup("cnn2d-bn")
    assert [a for a, _ in FastForward(model, exclude={"0"}).folded] == ["3", "6"]


def test_bad_model_is_refused():
    with pytest.raises(TypeError, match="model: got int, expected a torch.nn.Module"):
        FastForward(3)


# ---- wiring: Landscape.from_module ----------------------------------------------------------------------
@pytest.mark.parametrize("chunk_points", [False, True])
def test_landscape_from_module_uses_the_fold_and_stays_exact(chunk_points, monkeypatch):
    import lscape.landscape as landscape_mod

    # True: points one by one (the CPU's path for large nets); False: vmapped
    monkeypatch.setattr(landscape_mod, "PER_POINT_WORK", 1 if chunk_points else 1 << 40)
    model, layout, theta, X, Y = _setup("residual")
    L = Landscape.from_module(model, F.cross_entropy, (X, Y))
    assert len(L.fast_forward.folded) == 2 and L.per_point == chunk_points
    thetas = theta + 0.05 * torch.randn(3, layout.dim, generator=torch.Generator().manual_seed(6))

    def plain(t):
        return F.cross_entropy(_plain(model, layout, t, X), Y)

    want_loss = torch.stack([plain(t) for t in thetas]).detach()
    want_grad = torch.stack([torch.func.grad(plain)(t) for t in thetas])
    torch.testing.assert_close(L.loss(thetas), want_loss, rtol=RTOL, atol=0)
    loss, grad = L.loss_and_grad(thetas)
    torch.testing.assert_close(loss, want_loss, rtol=RTOL, atol=0)
    torch.testing.assert_close(grad, want_grad, rtol=RTOL, atol=RTOL * float(want_grad.abs().max()))
    v = torch.randn(layout.dim, generator=torch.Generator().manual_seed(7))
    hvp = torch.func.jvp(torch.func.grad(L.point_loss), (thetas[0],), (v,))[1]
    want_hvp = torch.func.jvp(torch.func.grad(plain), (thetas[0],), (v,))[1]
    torch.testing.assert_close(hvp, want_hvp, rtol=RTOL, atol=RTOL * float(want_hvp.abs().max()))


class _Aliasing(nn.Module):
    """Every in-place hazard: a ReLU of the input itself, a conv output read twice, a sum that broadcasts
    the fresh operand up (it cannot hold the result), an nn.ReLU module after a folded conv."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.conv2, self.bn2 = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)
        self.pool_conv = nn.Conv2d(3, 3, 1)
        self.act = nn.ReLU()

    def forward(self, x):
        x = torch.relu(x) + x  # input: never written
        y = self.act(self.bn(self.conv(x)))
        z = self.bn2(self.conv2(y))
        w = self.pool_conv(y.mean((2, 3), keepdim=True))  # (N, 3, 1, 1), fresh, broadcast up by the sum
        return (torch.relu(w + z) + z).flatten(1)


@pytest.mark.parametrize("fused", [True, False])  # oneDNN's conv with a fused ReLU, or the two steps
def test_in_place_graph_without_grad_equals_the_plain_module_and_writes_no_input(fused, monkeypatch):
    from lscape import _modeleval

    if not fused:
        monkeypatch.setattr(_modeleval, "_CONV_RELU", None)
    elif _modeleval._CONV_RELU is None:
        pytest.skip("this torch build has no torch.ops.mkldnn._convolution_pointwise")
    torch.manual_seed(0)
    model = _stats(_Aliasing())
    fast = FastForward(model)
    assert len(fast.folded) == 2
    code = fast._inplace.code
    # the nn.ReLU after the folded conv fused into it, the other ReLU and the sums in place
    assert "relu_" in code and "_add_into" in code and "_conv_bn_relu" in code
    layout = FlatLayout.of(model)
    theta = layout.flatten(model) + 0.05
    X = torch.randn(4, 2, 5, 5, generator=torch.Generator().manual_seed(8))
    X0, theta0 = X.clone(), theta.clone()
    with torch.no_grad():
        want = _plain(model, layout, theta, X)
        got = fast(layout.split(theta), X)
        held = fast(None, X)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=RTOL * float(want.abs().max()))
    torch.testing.assert_close(held, model(X).detach(), rtol=RTOL, atol=RTOL * float(want.abs().max()))
    assert torch.equal(X, X0) and torch.equal(theta, theta0)
    # with grad: the out-of-place graph, and the same values
    t = theta.clone().requires_grad_()
    torch.testing.assert_close(fast(layout.split(t), X).detach(), want, rtol=RTOL, atol=RTOL * float(want.abs().max()))


# ---- metrics from the same forward pass (Landscape.from_module(metrics=...), walks) --------------------
def _acc(out, y):
    return (out.argmax(1) == y).double().mean()


@pytest.mark.parametrize("per_point", [False, True])
def test_recorded_metrics_equal_a_separate_evaluation(per_point, monkeypatch):
    import lscape.landscape as landscape_mod

    monkeypatch.setattr(landscape_mod, "PER_POINT_WORK", 1 if per_point else 1 << 40)
    model, layout, theta, X, Y = _setup("residual", n=10)
    batches = [(X[:6], Y[:6]), (X[6:], Y[6:])]  # batch-weighted means over two batches
    L = Landscape.from_module(model, F.cross_entropy, batches, chunk=2, metrics={"acc": _acc})
    acc_land = Landscape.from_module(model, _acc, batches)
    assert L.per_point == per_point and L.metric_names == ("acc",)
    thetas = theta + 0.3 * torch.randn(5, layout.dim, generator=torch.Generator().manual_seed(9))
    with L.recording_metrics() as rec:
        loss, _ = L.loss_and_grad(thetas)
    got = torch.cat(rec)
    assert got.shape == (5, 1)
    torch.testing.assert_close(got[:, 0].double(), acc_land.loss(thetas).double(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss, L.loss(thetas), rtol=RTOL, atol=0)
    with L.recording_metrics() as rec:
        L.loss(thetas)
    n = len(rec)
    assert torch.equal(torch.cat(rec), got)
    L.loss(thetas)  # not recording: nothing more kept
    assert len(rec) == n


def test_walk_records_the_metrics_of_its_own_forward_passes():
    from lscape.probes import progressive_walk

    model, layout, theta, X, Y = _setup("cnn2d-bn", n=8)
    L = Landscape.from_module(model, F.cross_entropy, (X, Y), metrics={"acc": _acc})
    starts = theta + 0.1 * torch.randn(3, layout.dim, generator=torch.Generator().manual_seed(10))
    res = progressive_walk(L, starts, 4, 0.05, None, True, seed=1, record_positions=True)
    want = Landscape.from_module(model, _acc, (X, Y)).loss(res.positions.reshape(-1, layout.dim)).reshape(3, 5)
    assert set(res.metrics) == {"acc"} and res.metrics["acc"].shape == (3, 5)
    torch.testing.assert_close(res.metrics["acc"], want.double(), rtol=1e-6, atol=1e-6)


def test_bad_metrics_are_named():
    model, *_ = _setup("linear-bn1d")
    with pytest.raises(TypeError, match="metrics: got 'acc'"):
        Landscape.from_module(model, F.cross_entropy, (torch.zeros(2, 6), torch.zeros(2, dtype=torch.long)),
                              metrics={"acc": 3})


def test_hessian_products_are_sliced_only_where_slices_stay_large():
    import lscape._moduleloss as landscape_mod

    rn = resnet20(1, num_classes=3, in_channels=3, seed=0).train()
    assert landscape_mod._slice_rows(rn, torch.randn(64, 3, 32, 32)) == 32  # 0.6 M activations a sample
    assert rn.training and all(m.training for m in rn.modules())  # its modes put back
    assert landscape_mod._slice_rows(rn, torch.randn(32, 3, 32, 32)) is None  # one slice anyway
    mlp = nn.Sequential(nn.Linear(64, 200), nn.ReLU(), nn.Linear(200, 10))
    assert landscape_mod._slice_rows(mlp, torch.randn(1437, 64)) is None  # 410 a sample: calls would cost

    class NeedsFour(nn.Module):
        def forward(self, x):
            if x.shape[0] < 4:
                raise RuntimeError("needs four rows")
            return x

    assert landscape_mod._slice_rows(NeedsFour(), torch.randn(64, 3)) is None  # refuses two rows: whole


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", ["cnn2d-bn", "residual", "linear-bn1d"])
def test_hessian_products_in_slices_equal_autograd_on_the_plain_module(name, reduction, monkeypatch):
    """Hessian-vector products differentiate the loss built in slices of HVP_ROWS samples (75 samples: 32,
    32, 11; these small nets are sliced by lowering HVP_SLICE_ELEMS); with a mean loss that is the same
    function, and a sum loss (not a mean over samples) is detected and kept whole.  Both equal torch's own
    HVP of the plain module on the whole batch."""
    import lscape._moduleloss as landscape_mod
    from lscape.probes.spectrum import hvp

    monkeypatch.setattr(landscape_mod, "HVP_SLICE_ELEMS", 1)
    model, layout, theta, X, Y = _setup(name, n=75)
    assert landscape_mod.HVP_ROWS == 32

    def loss_fn(out, y):
        return F.cross_entropy(out, y, reduction=reduction)

    L = Landscape.from_module(model, loss_fn, (X, Y))
    rows = []  # the samples of every forward pass that builds the products' graph
    real = landscape_mod._sliced_loss

    def spy(forward, objective, b, size):
        def counted(x):
            rows.append(x.rows)
            return forward(x)
        return real(counted, objective, b, size)

    V = torch.randn(2, layout.dim, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    orig = landscape_mod._sliced_loss
    try:
        landscape_mod._sliced_loss = spy
        got = hvp(L, theta, V)
    finally:
        landscape_mod._sliced_loss = orig

    def plain(t):
        return loss_fn(_plain(model, layout, t, X), Y)

    for v, g in zip(V, got, strict=True):
        want = torch.func.jvp(torch.func.grad(plain), (theta,), (v.float(),))[1]
        torch.testing.assert_close(g, want, rtol=RTOL, atol=RTOL * float(want.abs().max()))
    assert rows == ([32, 32, 11] if reduction == "mean" else [32, 32, 11, 75])  # a sum: checked, kept whole
