"""The CUDA tiny-MLP kernels (csrc/cuda/mlp.cu) through lscape._cuda's raw bindings, against the torch
reference: loss and gradient, 200 training steps per optimizer, continuation, batch independence across
launches, divergence isolation, and argument checks.  Both kernel paths are covered: the fixed-size one
(5x5) and the generic one (every other K x N)."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import cuda_stream as stream
from lscape import TinyMLP
from lscape.reference import mlp as ref

OPTS = {"sgd": ref.OptConfig("sgd", lr=0.01, momentum=0.9), "adadelta": ref.OptConfig("adadelta", lr=1.0),
        "adam": ref.OptConfig("adam", lr=1e-3)}
SIZES = [(5, 5), (3, 7)]  # the fixed path, then the generic one


def data(P: int, device: str = "cuda"):
    x = torch.linspace(0.0, 1.0, P)
    return x.to(device), (torch.sin(6.0 * x) + 0.3 * x).to(device)


def loss_grad(cuda_ext, K, N, p, x, y, want_grad=True):
    M = p.shape[0]
    loss = torch.full((M,), math.nan, device=p.device)
    grad = torch.full_like(p, math.nan) if want_grad else None
    cuda_ext.mlp_loss_grad(K, N, M, x.numel(), p.data_ptr(), x.data_ptr(), y.data_ptr(), loss.data_ptr(),
                      grad.data_ptr() if want_grad else 0, stream())
    return loss, grad


def train(cuda_ext, K, N, opt, p0, x, y, steps, record_every=1, step0=0, state=None, diverged=None):
    """(params, state0, state1, diverged, history) after `steps` kernel steps from p0 (not modified)."""
    M, D = p0.shape
    p = p0.clone()
    s0, s1 = (torch.zeros_like(p), torch.zeros_like(p) if opt.kind != "sgd" else None) if state is None else \
        (state[0].clone(), None if state[1] is None else state[1].clone())
    div = torch.zeros(M, dtype=torch.uint8, device=p.device) if diverged is None else diverged.clone()
    hist = torch.full((M, steps // record_every), -1.0, device=p.device)
    s1_ptr = 0 if s1 is None else s1.data_ptr()
    cuda_ext.mlp_train(K, N, opt.as_tuple(), M, x.numel(), p.data_ptr(), s0.data_ptr(), s1_ptr,
                  div.data_ptr(), x.data_ptr(), y.data_ptr(), step0, steps, record_every, hist.data_ptr(), stream())
    return p, s0, s1, div, hist


def ref_train(K, N, opt, p0, x, y, steps, record_every, dtype):
    """The reference run in `dtype` on p0's device."""
    p = p0.to(dtype, copy=True)
    s0 = torch.zeros_like(p)
    s1 = torch.zeros_like(p) if opt.kind != "sgd" else None
    div = torch.zeros(p.shape[0], dtype=torch.bool, device=p.device)
    hist = torch.full((p.shape[0], steps // record_every), -1.0, dtype=dtype, device=p.device)
    ref.train(K, N, opt, p, s0, s1, div, x.to(dtype), y.to(dtype), 0, steps, record_every, hist)
    return p, s0, s1, div, hist


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).abs().max() / b.abs().max())


def assert_rows_close(got, want, rtol):
    """Each row within rtol of the reference, relative to the entry or to the row's largest entry."""
    got, want = got.double().cpu(), want.double().cpu()
    tol = rtol * (want.abs() + want.abs().amax(dim=-1, keepdim=True))
    bad = (got - want).abs() > tol
    assert not bad.any(), f"{int(bad.sum())} entries off; worst {float(((got - want).abs() / tol).max()):.2f} x tol"


@pytest.mark.gpu
@pytest.mark.parametrize("K,N,P,M", [(5, 5, 321, 1000), (5, 5, 41, 1), (5, 5, 1, 33), (1, 1, 7, 1), (2, 3, 40, 31),
                                     (3, 7, 100, 65), (8, 16, 45, 5), (4, 2, 33, 2)])
def test_loss_grad_matches_reference(cuda_gpu, K, N, P, M):
    p = TinyMLP(K, N).init(M, seed=K * 100 + N, device="cuda")
    x, y = data(P)
    loss, grad = loss_grad(cuda_gpu, K, N, p, x, y)
    want_loss, want_grad = ref.loss_grad(K, N, p.double().cpu(), x.double().cpu(), y.double().cpu())
    torch.testing.assert_close(loss.double().cpu(), want_loss, rtol=1e-5, atol=1e-7)
    assert_rows_close(grad, want_grad, 1e-5)
    only, none = loss_grad(cuda_gpu, K, N, p, x, y, want_grad=False)
    assert none is None
    torch.testing.assert_close(only, loss, rtol=1e-6, atol=0)


def row_rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per model: the largest difference relative to the model's largest reference entry."""
    a, b = a.double().cpu(), b.double().cpu()
    return (a - b).abs().amax(dim=1) / b.abs().amax(dim=1).clamp_min(1e-300)


@pytest.mark.gpu
@pytest.mark.parametrize("optimizer", list(OPTS))
@pytest.mark.parametrize("K,N", SIZES)
def test_train_matches_reference(cuda_gpu, K, N, optimizer):
    """200 steps against the float64 reference.  Float32 cannot follow every trajectory to 1e-4: a ReLU
    kink crossed at a point on one side in float32 and on the other in float64, or (Adam) float noise in
    a near-zero gradient normalised into a full step, moves a model by up to ~1e-3.  So each model must be
    within 1e-4 relative or no further than 4x the float32 reference is; a few models may miss even that
    (they crossed a kink the float32 reference did not), but a wrong rule or index would move them all."""
    opt = OPTS[optimizer]
    M = 37
    p0 = TinyMLP(K, N).init(M, seed=2, scheme="he", device="cuda")
    x, y = data(41)
    got = train(cuda_gpu, K, N, opt, p0, x, y, 200, record_every=50)
    r32 = ref_train(K, N, opt, p0, x, y, 200, 50, torch.float32)
    r64 = ref_train(K, N, opt, p0, x, y, 200, 50, torch.float64)
    assert not got[3].any()
    for what, i in (("params", 0), ("state0", 1), ("state1", 2), ("history", 4)):
        if got[i] is None:
            continue
        err, floor = row_rel(got[i], r64[i]), row_rel(r32[i], r64[i])
        off = (err > torch.clamp(4 * floor, min=1e-4)).nonzero()[:, 0].tolist()
        assert len(off) <= M // 10, (f"{what}: models {off} off by {err[off].tolist()} "
                                     f"(float32 ref: {floor[off].tolist()})")
    torch.testing.assert_close(got[4].double().cpu(), r64[4].cpu(), rtol=1e-2, atol=0)  # every loss curve


@pytest.mark.gpu
@pytest.mark.parametrize("optimizer", list(OPTS))
@pytest.mark.parametrize("K,N", SIZES)
def test_first_steps_match_reference_closely(cuda_gpu, K, N, optimizer):
    """Before any trajectory can drift, every value is within 1e-5 of the float64 reference."""
    opt = OPTS[optimizer]
    p0 = TinyMLP(K, N).init(37, seed=2, scheme="he", device="cuda")
    x, y = data(41)
    got = train(cuda_gpu, K, N, opt, p0, x, y, 3)
    want = ref_train(K, N, opt, p0, x, y, 3, 1, torch.float64)
    for i in (0, 1, 2, 4):
        if got[i] is not None:
            assert_rows_close(got[i], want[i], 1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("K,N", SIZES)
def test_continuation_is_bitwise(cuda_gpu, K, N):
    p0 = TinyMLP(K, N).init(45, seed=3, device="cuda")
    x, y = data(29)
    for opt in OPTS.values():
        whole = train(cuda_gpu, K, N, opt, p0, x, y, 100, record_every=20)
        a = train(cuda_gpu, K, N, opt, p0, x, y, 60, record_every=20)
        b = train(cuda_gpu, K, N, opt, a[0], x, y, 40, record_every=20, step0=60, state=a[1:3], diverged=a[3])
        for w, g in zip(whole[:3], b[:3], strict=False):
            assert (w is None and g is None) or torch.equal(w, g), opt.kind
        assert torch.equal(torch.cat([a[4], b[4]], 1), whole[4]), opt.kind


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("K,N,M,steps", [(5, 5, 80_000, 300), (2, 3, 200_000, 800)])
def test_models_do_not_depend_on_the_batch(cuda_gpu, K, N, M, steps):
    """A big batch (which train_cuda splits into several launches) and a few of its models run alone
    give bitwise the same models."""
    p0 = TinyMLP(K, N).init(M, seed=5, device="cuda")
    x, y = data(321)
    opt = OPTS["adam"]
    big = train(cuda_gpu, K, N, opt, p0, x, y, steps, record_every=7)
    pick = torch.tensor([0, 1, 31, 32, 33, M // 2, M - 2, M - 1], device="cuda")
    small = train(cuda_gpu, K, N, opt, p0[pick], x, y, steps, record_every=7)
    for b, s in zip(big, small, strict=False):
        if b is not None:
            assert torch.equal(b[pick], s)


@pytest.mark.gpu
@pytest.mark.parametrize("K,N", SIZES)
@pytest.mark.parametrize("optimizer", list(OPTS))
def test_diverging_models_are_isolated(cuda_gpu, K, N, optimizer):
    opt = OPTS[optimizer]
    M = 40
    p0 = TinyMLP(K, N).init(M, seed=4, device="cuda")
    bad = p0.clone()
    bad[5] *= 1e12  # the loss overflows to inf on the first step
    bad[7, 3] = math.nan
    pre = torch.zeros(M, dtype=torch.uint8, device="cuda")
    pre[33] = 1  # diverged on entry: not touched
    x, y = data(31)
    clean = train(cuda_gpu, K, N, opt, p0, x, y, 40, record_every=10)
    dirty = train(cuda_gpu, K, N, opt, bad, x, y, 40, record_every=10, diverged=pre)
    odd = [5, 7, 33]
    keep = [m for m in range(M) if m not in odd]
    assert dirty[3].cpu().tolist() == [int(m in odd) for m in range(M)]
    for c, d in zip(clean, dirty, strict=False):
        if c is not None:
            assert torch.equal(c[keep], d[keep])
    assert torch.isnan(dirty[4][odd]).all()
    assert torch.equal(dirty[0][odd].nan_to_num(), bad[odd].nan_to_num())  # frozen where they stood
    assert (dirty[1][odd] == 0).all()


@pytest.mark.gpu
@pytest.mark.parametrize("K,N", SIZES)
def test_divergence_mid_run_freezes_the_model(cuda_gpu, K, N):
    """Models whose weights grow until a step fails: history finite then NaN from that step on, and the
    final params are those a run stopped just before that step leaves."""
    M = 64
    opt = ref.OptConfig("sgd", lr=0.5, momentum=0.9)
    p0 = TinyMLP(K, N).init(M, seed=6, device="cuda") * torch.linspace(0.5, 4.0, M, device="cuda")[:, None]
    x, y = data(31)
    p, s0, _, div, hist = train(cuda_gpu, K, N, opt, p0, x, y, 80)
    nan = torch.isnan(hist)
    assert torch.equal(nan.any(1), div.bool())
    assert div.any(), "no model diverged: make the test's lr or scales larger"
    for m in div.nonzero()[:, 0].tolist():
        first = int(nan[m].nonzero()[0])
        assert nan[m, first:].all() and torch.isfinite(hist[m, :first]).all()
        alone = train(cuda_gpu, K, N, opt, p0[m:m + 1], x, y, first)
        assert torch.equal(alone[0][0], p[m]) and torch.equal(alone[1][0], s0[m])


@pytest.mark.gpu
def test_empty_calls_do_nothing(cuda_gpu):
    p = TinyMLP(5, 5).init(3, device="cuda")
    x, y = data(5)
    cuda_gpu.mlp_loss_grad(5, 5, 0, 5, 0, 0, 0, 0, 0, stream())
    out = train(cuda_gpu, 5, 5, OPTS["adam"], p, x, y, 0)
    assert torch.equal(out[0], p) and out[4].shape == (3, 0)


@pytest.mark.parametrize("call,match", [
    (lambda e: e.mlp_loss_grad(0, 5, 1, 1, 1, 1, 1, 1, 0, 0), r"K must be in \[1, 8\]"),
    (lambda e: e.mlp_loss_grad(9, 5, 1, 1, 1, 1, 1, 1, 0, 0), r"K must be in \[1, 8\]"),
    (lambda e: e.mlp_loss_grad(5, 0, 1, 1, 1, 1, 1, 1, 0, 0), r"N must be in \[1, 16\]"),
    (lambda e: e.mlp_loss_grad(5, 17, 1, 1, 1, 1, 1, 1, 0, 0), r"N must be in \[1, 16\]"),
    (lambda e: e.mlp_loss_grad(5, 5, -1, 1, 1, 1, 1, 1, 0, 0), "M must be >= 0"),
    (lambda e: e.mlp_loss_grad(5, 5, 1, 0, 1, 1, 1, 1, 0, 0), "P must be >= 1"),
    (lambda e: e.mlp_loss_grad(5, 5, 1, 1, 1, 1, 1, 0, 0, 0), "loss must not be null"),
    (lambda e: e.mlp_train(5, 5, (3, .1, .9, .9, 1e-6, .9, .999), 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 0, 0),
     "optimizer kind"),
    (lambda e: e.mlp_train(5, 5, (0, .1, .9, .9, 1e-6, .9, .999), 1, 1, 1, 1, 0, 1, 1, 1, 0, -1, 1, 0, 0),
     "steps must be >= 0"),
    (lambda e: e.mlp_train(5, 5, (0, .1, .9, .9, 1e-6, .9, .999), 1, 1, 1, 1, 0, 1, 1, 1, 0, 1, 0, 0, 0),
     "record_every must be >= 1"),
    (lambda e: e.mlp_train(5, 5, (0, .1, .9, .9, 1e-6, .9, .999), 1, 1, 1, 1, 0, 1, 1, 1, -1, 1, 1, 0, 0),
     "step0 must be >= 0"),
    (lambda e: e.mlp_train(5, 5, (2, .1, .9, .9, 1e-8, .9, .999), 1, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 0, 0),
     "state1 must not be null"),
    (lambda e: e.mlp_train(5, 0, (0, .1, .9, .9, 1e-6, .9, .999), 1, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 0, 0),
     r"N must be in \[1, 16\]"),
])
def test_bad_arguments_are_refused_before_any_launch(cuda_ext, call, match):
    """Checked in the binding, so no GPU is needed (the addresses are never dereferenced)."""
    with pytest.raises(ValueError, match=match):
        call(cuda_ext)
