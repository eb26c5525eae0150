"""The fused C++ walk step (csrc/include/lscape/walk.h) against the numpy passes it replaces, bit for bit:
the kernel alone on random and edge-case inputs, and whole walks with the kernel and without it
(use_backend("torch") keeps the numpy passes).  test_every_isa.py runs this file on every ISA build."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from lscape import Landscape, _backend, use_backend
from lscape.probes import walks
from lscape.probes.walks import progressive_walk

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")


def _kernel(dtype: torch.dtype) -> _backend.Kernel:
    k = _backend.kernel("walk_step", CPU, dtype)
    if k is None:
        pytest.skip(f"no CPU walk_step kernel here: {_backend.backends()['cpu'].reason}")
    return k


def reference_step(keys, tag, bound, grad, up, stopped, x):
    """The walk step as the numpy reference writes it: r = U * bound in x's dtype, signed by the gradient
    (down where g > 0) or by `up`, zero for stopped walkers, added to x."""
    D = x.shape[1]
    r = walks._step_sizes(keys, tag, bound, np.arange(D, dtype=np.uint32) * walks.rng.GOLDEN32,
                          np.empty_like(x)) if D else np.empty_like(x)
    step = np.where(grad > 0, -r, r) if grad is not None else np.where(up, r, -r)
    if stopped is not None:
        step[stopped] = 0
    return x + step


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def inputs(W, D, dtype, seed):
    g = np.random.default_rng(seed)
    x = g.standard_normal((W, D)).astype(dtype)
    grad = g.standard_normal((W, D)).astype(dtype)
    grad[g.random((W, D)) < 0.2] = 0.0  # zero components step up, +0 and -0 alike
    grad[g.random((W, D)) < 0.1] = -0.0
    x[g.random((W, D)) < 0.1] = -0.0
    bound = (g.random(D) * 0.5 + 1e-3).astype(dtype)
    return x, grad, bound


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("W", "D"), [(1, 1), (1, 7), (5, 33), (3, walks._BLOCK + 37), (40, 100)])
@pytest.mark.parametrize("mode", ["gradient", "stopped", "random"])
def test_kernel_is_the_numpy_step_bit_for_bit(dtype, W, D, mode):
    k = _kernel(torch.float32 if dtype == np.float32 else torch.float64)
    x, grad, bound = inputs(W, D, dtype, seed=W * 1000 + D)
    keys = walks._walker_keys(123, 7, W)
    stopped = (np.arange(W) % 3 == 1) if mode == "stopped" else None
    up = np.random.default_rng(1).random((W, D)) < 0.5 if mode == "random" else None
    g = None if mode == "random" else grad
    for tag in (1, 2, 2**40 + 3):
        got = walks._fused_step(k, keys, tag, bound, g, up, stopped, x)
        want = reference_step(keys, tag, bound, g, up, stopped, x)
        assert same_bits(got, want), f"tag {tag}: {np.count_nonzero(got != want)} entries differ"
    if stopped is not None and W > 1:
        assert same_bits(got[1], x[1] + dtype(0)), "a stopped walker stays put"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_edges_tiny_bounds_huge_values_and_non_contiguous_inputs(dtype):
    """Step sizes that underflow to 0 (signed zeros), positions where a step rounds away, and strided
    arrays (the wrapper makes them contiguous)."""
    k = _kernel(torch.float32 if dtype == np.float32 else torch.float64)
    W, D = 4, 9
    tiny = np.finfo(dtype).smallest_subnormal
    bound = np.array([tiny, tiny * 3, 1e-30, 1.0, 2.0, tiny, 0.5, 1e30, 1.0], dtype=dtype)
    x = np.array([[0.0, -0.0, 1e30, -1e30, 0.0, -0.0, 1.0, 3.0, np.finfo(dtype).max / 2]] * W, dtype=dtype)
    grad = np.array([[1.0, 1.0, -1.0, 0.0, -0.0, -2.0, 5.0, -5.0, 1.0]] * W, dtype=dtype)
    keys = walks._walker_keys(0, 0, W)
    assert same_bits(walks._fused_step(k, keys, 9, bound, grad, None, None, x),
                     reference_step(keys, 9, bound, grad, None, None, x))
    wide = np.zeros((W, 2 * D), dtype)
    wide[:, ::2] = grad
    assert same_bits(walks._fused_step(k, keys, 9, bound, wide[:, ::2], None, None, np.asfortranarray(x)),
                     reference_step(keys, 9, bound, grad, None, None, x))


def test_kernel_refuses_bad_buffers():
    k = _kernel(torch.float64)
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="exactly one of g and up"):
        k.ext.walk_step(2, 3, 1, 1, 1, 0, 0, 0, x.ctypes.data, x.ctypes.data, True, 1)
    with pytest.raises(ValueError, match="keys must not be null"):
        k.ext.walk_step(2, 3, 0, 1, 1, 1, 0, 0, x.ctypes.data, x.ctypes.data, True, 1)
    with pytest.raises(ValueError, match="W must be >= 0"):
        k.ext.walk_step(-1, 3, 1, 1, 1, 1, 0, 0, 1, 1, True, 1)


# ---- whole walks: the kernel against the numpy passes -----------------------------------------------------
def bowl(D: int, dtype: torch.dtype) -> Landscape:
    a = torch.linspace(0.5, 2.0, D, dtype=dtype)
    return Landscape.from_function(lambda t: (a * (t - 0.1) ** 2).sum(1), D, batched=True, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("gradient", "bounds"), [(True, (-1.0, 1.0)), (True, None), (False, (-1.0, 1.0))])
def test_walks_with_the_kernel_equal_walks_without_it(monkeypatch, dtype, gradient, bounds):
    _kernel(dtype)
    L = bowl(11, dtype)
    starts = (torch.rand(6, 11, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.6 - 0.8)
    args = dict(steps=30, step_bound=torch.linspace(0.01, 0.3, 11), bounds=bounds, gradient=gradient, seed=4,
                record_positions=True)
    calls = []
    fused = walks._fused_step
    monkeypatch.setattr(walks, "_fused_step", lambda *a: calls.append(1) or fused(*a))
    for s in (starts.to(dtype), 6 if bounds else starts.to(dtype)):
        a = progressive_walk(L, s, **args)
        assert len(calls) == 30, "the CPU walk should take the fused step"
        calls.clear()
        with use_backend("torch"):
            b = progressive_walk(L, s, **args)
        assert not calls, "use_backend('torch') should keep the numpy passes"
        assert a.positions.dtype == dtype
        assert torch.equal(a.positions, b.positions) and torch.equal(a.loss, b.loss)
        assert torch.equal(a.grad_norm, b.grad_norm) and torch.equal(a.end, b.end)
