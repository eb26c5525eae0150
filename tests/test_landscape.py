"""Landscape: the three constructors agree with each other and with known answers; Hessians are exact
on a quadratic and agree with torch.autograd.functional.hessian on a tiny MLP."""
from __future__ import annotations

import lscape
import pytest
import torch
from conftest import device_of
from lscape import Landscape, TinyMLP
from lscape import landscape as landscape_module
from lscape.probes import hessian
from torch import nn

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def quadratic(A: torch.Tensor, b: torch.Tensor):
    def fn(theta):
        return 0.5 * theta @ A @ theta + b @ theta
    return fn


def test_from_function_quadratic_is_exact():
    gen = torch.Generator().manual_seed(0)
    Q = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    A = Q @ Q.T + torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=gen, dtype=torch.float64)
    L = Landscape.from_function(quadratic(A, b), dim=6, chunk=3)
    th = torch.randn(7, 6, generator=gen, dtype=torch.float64)
    loss, grad = L.loss_and_grad(th)
    torch.testing.assert_close(loss, 0.5 * ((th @ A) * th).sum(1) + th @ b)
    torch.testing.assert_close(grad, th @ A + b)  # A symmetric
    torch.testing.assert_close(L.loss(th), loss)
    H = hessian(L, th)
    torch.testing.assert_close(H, A.expand(7, 6, 6))


def test_from_function_batched_equals_vmapped():
    fn = lambda t: (t ** 4).sum() - t.prod()  # noqa: E731
    L1 = Landscape.from_function(fn, dim=3)
    L2 = Landscape.from_function(lambda T: (T ** 4).sum(1) - T.prod(1), dim=3, batched=True)
    th = torch.randn(5, 3, dtype=torch.float64)
    for a, b in zip(L1.loss_and_grad(th), L2.loss_and_grad(th), strict=False):
        torch.testing.assert_close(a, b)


def test_from_mlp_equals_from_module_and_autograd_hessian():
    spec = TinyMLP(3, 4)
    x = torch.linspace(0, 1, 13, dtype=torch.float64)
    y = torch.cos(3 * x)
    thetas = spec.init(4, seed=1, scheme="torch", dtype=torch.float64)
    Lm = Landscape.from_mlp(spec, x, y, dtype=torch.float64)
    model = spec.to_module(thetas[0])
    halves = [(x[:5, None], y[:5, None]), (x[5:, None], y[5:, None])]
    Lo = Landscape.from_module(model, torch.nn.functional.mse_loss, halves,
                               chunk=3)
    assert Lm.dim == Lo.dim == spec.dim
    l1, g1 = Lm.loss_and_grad(thetas)
    l2, g2 = Lo.loss_and_grad(thetas)
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(g1, g2)
    H = hessian(Lm, thetas[:2])
    for i in range(2):
        want = torch.autograd.functional.hessian(lambda t: Lm.torch_loss(t[None])[0], thetas[i])
        torch.testing.assert_close(H[i], want)


def test_from_mlp_float32_runs_the_kernel(kernel_backend):
    device = device_of(kernel_backend)
    spec = TinyMLP(5, 5)
    x = torch.linspace(0, 1, 21)
    y = torch.sin(4 * x)
    th = spec.init(6, seed=2)
    L = Landscape.from_mlp(spec, x, y, device=device)
    loss, grad = L.loss_and_grad(th)
    assert loss.device.type == device.type
    with lscape.use_backend("torch"):  # the float64 oracle: the forced backend has no float64 MLP kernel
        want = Landscape.from_mlp(spec, x, y, dtype=torch.float64).loss_and_grad(th.double())
    torch.testing.assert_close(loss.cpu().double(), want[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad.cpu().double(), want[1], rtol=1e-4, atol=1e-6)


def test_from_module_with_batchnorm_in_eval_mode():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    X, Y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    model(X)  # one train-mode pass gives the running statistics values
    model.eval()
    L = Landscape.from_module(model, torch.nn.functional.cross_entropy, (X, Y))
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    loss = L.loss(theta[None])
    torch.testing.assert_close(loss[0], torch.nn.functional.cross_entropy(model(X), Y))



def test_from_module_one_by_one_equals_vmapped(monkeypatch):
    # the two ways from_module evaluates a chunk of points (chosen by PER_POINT_WORK) agree
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    X, Y = torch.randn(40, 5, dtype=torch.float64), torch.randint(0, 3, (40,))
    model = model.double()
    D = sum(p.numel() for p in model.parameters())
    thetas = torch.randn(9, D, dtype=torch.float64)
    got = {}
    for work in (0, 1 << 60):  # everything one by one; everything vmapped
        monkeypatch.setattr(landscape_module, "PER_POINT_WORK", work)
        L = Landscape.from_module(model, torch.nn.functional.cross_entropy, (X, Y), chunk=4)
        got[work] = (L.loss(thetas), *L.loss_and_grad(thetas))
    for a, b in zip(got[0], got[1 << 60], strict=False):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # and both equal the model itself at one point
    torch.nn.utils.vector_to_parameters(thetas[3], model.parameters())
    torch.testing.assert_close(got[0][0][3], torch.nn.functional.cross_entropy(model(X), Y).detach())

@pytest.mark.parametrize("make,match", [
    (lambda: Landscape.from_function(lambda t: t.sum(), dim=0), "dim"),
    (lambda: Landscape.from_function("f", dim=2), "fn"),
    (lambda: Landscape.from_module(torch.nn.ReLU(), torch.nn.functional.mse_loss, (torch.ones(2, 1), torch.ones(2))),
     "no parameters"),
    (lambda: Landscape.from_module(torch.nn.Linear(1, 1), torch.nn.functional.mse_loss, 5), "data"),
    (lambda: Landscape.from_mlp("5x5", torch.ones(3), torch.ones(3)), "spec"),
    (lambda: Landscape.from_function(lambda t: t.sum(), dim=2).loss(torch.ones(2)), r"thetas: got .*\(B, 2\)"),
    (lambda: Landscape.from_function(lambda t: t.sum(), dim=2).loss(torch.ones(3, 3)), r"thetas"),
    (lambda: hessian("L", torch.ones(1, 2)), "landscape"),
])
def test_bad_input_is_named(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_point_loss_equals_the_batched_loss():
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    X, Y = torch.randn(12, 3, dtype=torch.float64), torch.randint(0, 2, (12,))
    f = lambda t: (t ** 2).sum() + t.prod()  # noqa: E731
    landscapes = [Landscape.from_module(model, torch.nn.functional.cross_entropy, (X, Y)),
                  Landscape.from_function(f, dim=5),
                  Landscape.from_function(lambda T: (T ** 2).sum(1) + T.prod(1), dim=5, batched=True)]
    for L in landscapes:
        theta = torch.randn(L.dim, dtype=torch.float64)
        got = L.point_loss(theta)
        assert got.shape == ()
        torch.testing.assert_close(got, L.loss(theta[None])[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("work", [0, 1 << 60])  # one by one; vmapped
def test_no_points_give_empty_results(monkeypatch, work):
    monkeypatch.setattr(landscape_module, "PER_POINT_WORK", work)
    X, Y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    L = Landscape.from_module(torch.nn.Linear(3, 2), torch.nn.functional.cross_entropy, (X, Y))
    assert L.loss(torch.zeros(0, 8)).shape == (0,)
    loss, grad = L.loss_and_grad(torch.zeros(0, 8))
    assert loss.shape == (0,) and grad.shape == (0, 8)


# ---- streamed data and BatchNorm re-estimation (Landscape.from_module) ------------------------------------
class _CountingLoader:
    """A re-iterable of batches that counts its passes (as a DataLoader would be re-iterated)."""

    def __init__(self, X, Y, bs):
        self.X, self.Y, self.bs, self.passes = X, Y, bs, 0

    def __iter__(self):
        self.passes += 1
        for i in range(0, len(self.X), self.bs):
            yield self.X[i:i + self.bs], self.Y[i:i + self.bs]


def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 3))


def test_streamed_batches_equal_one_tensor_and_are_streamed_each_time():
    model = _bn_net().eval()
    g = torch.Generator().manual_seed(2)
    X, Y = torch.randn(70, 5, generator=g), torch.randint(0, 3, (70,), generator=g)
    theta = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    thetas = theta + 0.1 * torch.randn(3, theta.numel(), generator=g)
    whole = Landscape.from_module(model, nn.functional.cross_entropy, (X, Y)).loss(thetas)
    loader = _CountingLoader(X, Y, 16)  # batches of 16, 16, 16, 16, 6: weighted by size
    L = Landscape.from_module(model, nn.functional.cross_entropy, loader)
    torch.testing.assert_close(L.loss(thetas), whole, rtol=1e-5, atol=1e-6)
    before = loader.passes
    L.loss(thetas[:1])
    assert loader.passes > before  # streamed again, not cached or concatenated
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=16)
    torch.testing.assert_close(Landscape.from_module(model, nn.functional.cross_entropy, dl).loss(thetas), whole,
                               rtol=1e-5, atol=1e-6)
    first = Landscape.from_module(model, nn.functional.cross_entropy, (X[:16], Y[:16])).loss(thetas)
    torch.testing.assert_close(Landscape.from_module(model, nn.functional.cross_entropy, dl, max_batches=1)
                               .loss(thetas), first, rtol=1e-5, atol=1e-6)


def test_bn_recompute_equals_update_bn_at_the_point():
    import copy

    model = _bn_net()
    g = torch.Generator().manual_seed(3)
    X, Y = torch.randn(64, 5, generator=g) * 3 + 1, torch.randint(0, 3, (64,), generator=g)
    batches = [(X[i:i + 16], Y[i:i + 16]) for i in range(0, 64, 16)]
    model.eval()
    theta = torch.nn.utils.parameters_to_vector(model.parameters()).detach() * 1.7
    L = Landscape.from_module(model, nn.functional.cross_entropy, batches, bn="recompute")
    ref = copy.deepcopy(model)
    torch.nn.utils.vector_to_parameters(theta, ref.parameters())
    torch.optim.swa_utils.update_bn(batches, ref)
    ref.eval()
    with torch.no_grad():
        want = nn.functional.cross_entropy(ref(X), Y)
    torch.testing.assert_close(L.loss(theta[None])[0], want, rtol=1e-5, atol=1e-6)
    stale = Landscape.from_module(model, nn.functional.cross_entropy, batches).loss(theta[None])[0]
    assert abs(float(stale - want)) > 1e-3  # the stale statistics do give another surface
    assert not model.training and model[1].momentum == 0.1  # the model is left as it was


def test_from_module_data_errors_are_named():
    model = _bn_net()
    with pytest.raises(ValueError, match="bn: got 'train', expected one of 'eval', 'recompute'"):
        Landscape.from_module(model, nn.functional.cross_entropy, (torch.zeros(2, 5), torch.zeros(2).long()),
                              bn="train")
    with pytest.raises(TypeError, match="data: .*not a one-shot iterator"):
        Landscape.from_module(model, nn.functional.cross_entropy, iter([(torch.zeros(2, 5), torch.zeros(2))]))
    with pytest.raises(ValueError, match="data: yielded no batch"):
        Landscape.from_module(model, nn.functional.cross_entropy, []).loss(torch.zeros(1, 219))
