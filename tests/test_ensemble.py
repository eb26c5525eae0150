"""The tiny-MLP ensemble API: the reference against autograd and torch.optim, the public train_ensemble
on every backend against torch.optim, continuation, divergence isolation and bad input."""
from __future__ import annotations

import math

import lscape
import numpy as np
import pytest
import torch
from conftest import device_of, require
from lscape import TinyMLP
from lscape.reference import mlp as ref

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OPTIMIZERS = {
    "sgd": (dict(lr=0.05, momentum=0.9), torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    "adadelta": (dict(), torch.optim.Adadelta, dict()),
    "adam": (dict(lr=0.01), torch.optim.Adam, dict(lr=0.01)),
}


def data(P: int = 41, dtype=torch.float64):
    x = torch.linspace(0.0, 1.0, P, dtype=dtype)
    return x, torch.sin(6.0 * x) + 0.3 * x


def torch_optim_run(spec: TinyMLP, p0: torch.Tensor, x, y, optimizer: str, steps: int) -> torch.Tensor:
    """Each model trained alone by torch.optim on spec.to_module: the independent answer, (M, D)."""
    _, cls, kw = OPTIMIZERS[optimizer]
    out = []
    for m in range(p0.shape[0]):
        mod = spec.to_module(p0[m])
        opt = cls(mod.parameters(), **kw)
        for _ in range(steps):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(mod(x[:, None])[:, 0], y)
            loss.backward()
            opt.step()
        out.append(spec.from_module(mod))
    return torch.stack(out)


@pytest.mark.parametrize("K,N", [(1, 1), (5, 5), (3, 7), (8, 16)])
def test_reference_gradient_is_autograd(K, N):
    spec = TinyMLP(K, N)
    p = spec.init(3, seed=K * 31 + N, scheme="torch", dtype=torch.float64)
    x, y = data(17)
    loss, grad = ref.loss_grad(K, N, p, x, y)
    for m in range(3):
        mod = spec.to_module(p[m])
        L = torch.nn.functional.mse_loss(mod(x[:, None])[:, 0], y)
        L.backward()
        g = torch.cat([q.grad.reshape(-1) for q in mod.parameters()])
        assert float(L.detach()) == pytest.approx(float(loss[m]), rel=1e-13)
        torch.testing.assert_close(grad[m], g, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_reference_training_is_torch_optim(optimizer):
    spec = TinyMLP(5, 5)
    p0 = spec.init(3, seed=1, scheme="torch", dtype=torch.float64)
    x, y = data()
    with lscape.use_backend("torch"):
        res = lscape.train_ensemble(spec, p0, x, y, optimizer=optimizer, steps=200, **OPTIMIZERS[optimizer][0])
    want = torch_optim_run(spec, p0, x, y, optimizer, 200)
    torch.testing.assert_close(res.params, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_train_ensemble_float32_matches_torch_optim(kernel_backend, optimizer):
    """The compiled kernels, through the public API, against torch.optim (float32, 200 steps)."""
    device = device_of(kernel_backend)
    spec = TinyMLP(5, 5)
    p0 = spec.init(5, seed=2, scheme="he")
    x, y = data(dtype=torch.float32)
    res = lscape.train_ensemble(spec, p0.to(device), x.to(device), y.to(device), optimizer=optimizer,
                                steps=200, record_every=50, **OPTIMIZERS[optimizer][0])
    want = torch_optim_run(spec, p0, x, y, optimizer, 200)
    got = res.params.cpu()
    assert float((got - want).abs().max() / want.abs().max()) < 1e-4
    assert res.history.shape == (5, 4) and not res.diverged.any()
    final = ref.loss_grad(5, 5, got.double(), x.double(), y.double(), False)[0]
    torch.testing.assert_close(res.loss.cpu().double(), final, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("backend", ["torch", "cpu", "cuda"])
def test_continuation_is_exact(backend):
    require(backend)
    device = device_of(backend)
    spec = TinyMLP(3, 4)
    p0 = spec.init(9, seed=3).to(device)
    x, y = (t.to(device) for t in data(23, torch.float32))
    with lscape.use_backend(backend):
        for opt in ("sgd", "adadelta", "adam"):
            kw = OPTIMIZERS[opt][0]
            whole = lscape.train_ensemble(spec, p0, x, y, optimizer=opt, steps=60, record_every=10, **kw)
            a = lscape.train_ensemble(spec, p0, x, y, optimizer=opt, steps=30, record_every=10, **kw)
            # the state survives a trip through a checkpoint file's arrays
            st = lscape.TrainState.from_dict(dict(a.state.to_dict()), device=device)
            b = lscape.train_ensemble(spec, a.params, x, y, optimizer=opt, steps=30, record_every=10, state=st, **kw)
            assert torch.equal(b.params, whole.params), opt
            assert torch.equal(torch.cat([a.history, b.history], 1), whole.history), opt
            assert b.state.step == 60


@pytest.mark.parametrize("backend", ["torch", "cpu", "cuda"])
def test_diverging_model_is_isolated(backend):
    require(backend)
    device = device_of(backend)
    spec = TinyMLP(5, 5)
    p0 = spec.init(11, seed=4)
    bad = p0.clone()
    bad[5] *= 1e12  # huge weights: the loss overflows to inf in float32 on the first step
    bad[7, 3] = math.nan
    x, y = (t.to(device) for t in data(31, torch.float32))
    with lscape.use_backend(backend):
        clean = lscape.train_ensemble(spec, p0.to(device), x, y, optimizer="sgd", lr=0.05, steps=40, record_every=10)
        dirty = lscape.train_ensemble(spec, bad.to(device), x, y, optimizer="sgd", lr=0.05, steps=40, record_every=10)
    keep = [m for m in range(11) if m not in (5, 7)]
    assert dirty.diverged.cpu().tolist() == [m in (5, 7) for m in range(11)]
    assert torch.equal(dirty.params[keep], clean.params[keep])
    assert torch.equal(dirty.history[keep], clean.history[keep])
    assert torch.isnan(dirty.history[[5, 7]]).all()
    assert torch.equal(dirty.params[5], bad[5].to(device))  # frozen where it stood


def test_state_and_progress_and_shapes():
    spec = TinyMLP(2, 3)
    p0 = spec.init(4, seed=5)
    x, y = data(11, torch.float32)
    calls = []
    res = lscape.train_ensemble(spec, p0, x, y, optimizer="adam", steps=1000, record_every=7,
                                progress=lambda done, total: calls.append((done, total)))
    assert res.history.shape == (4, 1000 // 7)
    assert calls[-1] == (1000, 1000) and len(calls) > 10
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    assert torch.equal(p0, spec.init(4, seed=5))  # the input is not modified
    zero = lscape.train_ensemble(spec, p0, x, y, optimizer="adam", steps=0)
    assert torch.equal(zero.params, p0) and zero.history.shape == (4, 0)
    empty = lscape.train_ensemble(spec, p0[:0], x, y, optimizer="adam", steps=5)
    assert empty.params.shape == (0, spec.dim)


def test_numpy_inputs_and_float64_reference():
    spec = TinyMLP(2, 2)
    p = spec.init(3, seed=6, dtype=torch.float64)
    x, y = data(9)
    loss, grad = lscape.mlp_loss_grad(spec, p.numpy(), x.numpy(), y.numpy())
    want = ref.loss_grad(2, 2, p, x, y)
    torch.testing.assert_close(loss, want[0])
    torch.testing.assert_close(grad, want[1])
    torch.testing.assert_close(lscape.mlp_loss(spec, p, x, y), want[0])


@pytest.mark.parametrize("call,match", [
    (lambda s, p, x, y: lscape.mlp_loss_grad("5x5", p, x, y), "spec"),
    (lambda s, p, x, y: lscape.mlp_loss_grad(s, p[:, :-1], x, y), r"params: got .*\(M, 136\)"),
    (lambda s, p, x, y: lscape.mlp_loss_grad(s, p[0], x, y), r"params"),
    (lambda s, p, x, y: lscape.mlp_loss_grad(s, p.int(), x, y), r"params"),
    (lambda s, p, x, y: lscape.mlp_loss_grad(s, p, x[:0], y[:0]), r"x: got .*non-empty"),
    (lambda s, p, x, y: lscape.mlp_loss_grad(s, p, x, y[:-1]), r"x, y: got lengths"),
    (lambda s, p, x, y: lscape.mlp_loss_grad(s, p, x[:, None], y), r"x: got"),
    (lambda s, p, x, y: lscape.train_ensemble(s, p, x, y, optimizer="rmsprop", steps=1), "optimizer"),
    (lambda s, p, x, y: lscape.train_ensemble(s, p, x, y, optimizer="sgd", steps=1), "lr: got None"),
    (lambda s, p, x, y: lscape.train_ensemble(s, p, x, y, optimizer="adam", steps=-1), "steps"),
    (lambda s, p, x, y: lscape.train_ensemble(s, p, x, y, optimizer="adam", steps=1, record_every=0), "record_every"),
    (lambda s, p, x, y: lscape.train_ensemble(s, p, x, y, optimizer="adam", steps=1, lr=-1.0), "lr"),
    (lambda s, p, x, y: lscape.train_ensemble(s, p, x, y, optimizer="adam", steps=1, betas=(0.9, 1.0)), "betas"),
    (lambda s, p, x, y: lscape.train_ensemble(s, p, x, y, optimizer="adam", steps=1, progress="yes"), "progress"),
    (lambda s, p, x, y: lscape.train_ensemble(
        s, p, x, y, optimizer="adam", steps=1,
        state=lscape.train_ensemble(s, p, x, y, optimizer="adadelta", steps=1).state), "adadelta"),
    (lambda s, p, x, y: lscape.train_ensemble(
        s, p[:2], x, y, optimizer="adam", steps=1,
        state=lscape.train_ensemble(s, p, x, y, optimizer="adam", steps=1).state), "optimizer state"),
])
def test_bad_input_is_named(call, match):
    spec = TinyMLP(5, 5)
    p = spec.init(3, seed=0)
    x, y = data(5, torch.float32)
    with pytest.raises((ValueError, TypeError), match=match):
        call(spec, p, x, y)


@pytest.mark.parametrize("K,N", [(0, 5), (9, 5), (5, 0), (5, 17)])
def test_architecture_out_of_range(K, N):
    with pytest.raises(ValueError, match="depth" if K in (0, 9) else "width"):
        TinyMLP(K, N)


def test_init_is_identical_on_every_device():
    spec = TinyMLP(5, 5)
    a = spec.init(6, seed=9, scheme="xavier")
    assert torch.equal(a, spec.init(6, seed=9, scheme="xavier", device="cpu"))
    assert a.dtype == torch.float32
    assert np.array_equal(a.numpy(), spec.init(6, seed=9, scheme="xavier", dtype=torch.float64).float().numpy())
    if torch.cuda.is_available():
        assert torch.equal(spec.init(6, seed=9, scheme="xavier", device="cuda").cpu(), a)
