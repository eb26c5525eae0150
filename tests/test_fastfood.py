"""lscape.FastfoodProjection: the reference against dense matrices built independently (scipy's Hadamard),
the C++ kernels against the reference (tests/test_every_isa.py runs this file on every ISA build), exact
unit column norms, near-orthogonal columns, the adjoint, autograd, and its use by Subspace."""
from __future__ import annotations

import lscape
import numpy as np
import pytest
import scipy.linalg
import torch
from lscape import _backend
from lscape.ops import fastfood as ff_ops
from lscape.projection import FastfoodProjection, make_projection
from lscape.reference import fastfood as ref
from torch import nn

F32, F64 = torch.float32, torch.float64
# (D, d): d' = 1 and 2, non-power-of-two d, D a multiple of d' or not, D < d', a cut block of many pieces,
# and transforms larger than the kernel's in-cache chunk (4,096 float32 values)
SHAPES = [(1, 1), (5, 1), (6, 2), (7, 3), (100, 20), (96, 32), (300, 300), (1000, 513), (14_890, 3_000),
          (40_000, 9_000)]
HAVE_CPU = lscape.backends()["cpu"].available


def _cpu_or_skip():
    if not HAVE_CPU:
        pytest.skip(f"the C++ extension is not built here: {lscape.backends()['cpu'].reason}")


def _dense_independent(P: FastfoodProjection) -> np.ndarray:
    """P built from its draws with scipy.linalg.hadamard and dense products (float64)."""
    s = P.spec
    sign, perm, gs = ref.draw(s)
    rows = []
    for b in range(s.nb):
        r = s.n if b < s.nb - 1 else s.r_last
        M = (scipy.linalg.hadamard(s.n) * sign[b])[perm[b, :r]] * gs[b, :r, None]
        Hp = np.zeros((r, r))
        for off, m in ref.pieces(r):
            Hp[off:off + m, off:off + m] = scipy.linalg.hadamard(m)
        rows.append((Hp @ M)[:, :s.d])
    return np.vstack(rows)


# ---- the transform ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 64, 512])
def test_reference_fwht_is_scipys_hadamard(n):
    x = torch.randn(3, n, dtype=F64, generator=torch.Generator().manual_seed(n))
    want = x.numpy() @ scipy.linalg.hadamard(n).T
    np.testing.assert_allclose(ref.fwht(x).numpy(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 32, 128, 2048, 4096, 8192, 65_536])
def test_kernel_fwht_is_the_reference_bit_for_bit(n, dtype):
    _cpu_or_skip()
    g = torch.Generator().manual_seed(n)
    rows = 3 if n <= 8192 else 1
    x = torch.randn(rows, n, dtype=dtype, generator=g)
    x[0, : min(n, 5)] = torch.tensor([0.0, -0.0, 1e30, -1e-30, 3.0], dtype=dtype)[: min(n, 5)]
    before, want = x.clone(), ref.fwht(x)  # both taken before the kernel runs
    with lscape.use_backend("cpu"):
        got = ff_ops.fwht(x)
    assert torch.equal(got, want)
    assert torch.equal(x, before) and torch.equal(x.signbit(), before.signbit())  # out of place: x untouched


def test_fwht_refuses_a_length_that_is_not_a_power_of_two():
    with pytest.raises(ValueError, match="x: got last dimension 12, expected a power of two"):
        ff_ops.fwht(torch.zeros(12))


# ---- the matrix ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("D,d", SHAPES[:8])
def test_reference_matrix_is_the_dense_construction(D, d):
    P = FastfoodProjection(D, d, seed=3)
    with lscape.use_backend("torch"):
        got = P.to_dense(F64).numpy()
    np.testing.assert_allclose(got, _dense_independent(P), rtol=0, atol=1e-13)


@pytest.mark.parametrize("D,d", SHAPES)
def test_columns_have_unit_norm(D, d):
    P = FastfoodProjection(D, d, seed=1)
    cols = torch.unique(torch.cat((torch.arange(min(d, 40)), torch.arange(max(0, d - 40), d),
                                   torch.randint(0, d, (40,), generator=torch.Generator().manual_seed(d)))))
    for dtype, tol in ((F64, 1e-12), (F32, 1e-5)):
        e = torch.zeros(len(cols), d, dtype=dtype)
        e[torch.arange(len(cols)), cols] = 1
        norms = torch.linalg.vector_norm(P.matvec(e).double(), dim=1)
        assert float((norms - 1).abs().max()) < tol


def test_columns_are_near_orthogonal():
    """Off-diagonal Gram entries of the unit columns are centred, with mean square 2/D: twice that of
    random unit vectors (a block's inner product is sum_i w_i s_i, w_i = g_i^2 / |g|^2, s_i = +-1 balanced:
    variance (E g^4 / (E g^2)^2 - 1) / n = 2 / n; measured 1.92-2.06 / D over shapes and seeds), and none
    beyond 5.7 of their standard deviations (19,900 pairs)."""
    D, d = 30_000, 200
    for seed in (7, 8):
        P = FastfoodProjection(D, d, seed=seed).to_dense(F64)
        G = P.T @ P
        off = G[~torch.eye(d, dtype=torch.bool)]
        assert 1.7 < float((off ** 2).mean()) * D < 2.3
        assert float(off.abs().max()) < 5.7 * (2 / D) ** 0.5
        assert abs(float(off.mean())) < 4 / (D ** 0.5 * d)


def test_draws_follow_the_seed_alone():
    a, b = FastfoodProjection(500, 40, seed=5), FastfoodProjection(500, 40, seed=5)
    assert torch.equal(a.to_dense(), b.to_dense())
    assert not torch.equal(a.to_dense(), FastfoodProjection(500, 40, seed=6).to_dense())
    sign, perm, gs = ref.draw(a.spec)
    assert set(np.unique(sign)) == {-1.0, 1.0}
    assert all(sorted(p) == list(range(a.n)) for p in perm)
    assert np.all(gs[-1, a.spec.r_last:] == 0) and np.all(gs[:, : a.spec.r_last] != 0)


# ---- products: kernels against the reference ----------------------------------------------------------
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("D,d", SHAPES)
def test_kernel_products_match_the_reference(D, d, dtype):
    _cpu_or_skip()
    P = FastfoodProjection(D, d, seed=2)
    g = torch.Generator().manual_seed(D + d)
    x, y = torch.randn(3, d, dtype=dtype, generator=g), torch.randn(3, D, dtype=dtype, generator=g)
    with lscape.use_backend("torch"):
        want_x, want_y = P.matvec(x), P.rmatvec(y)
    with lscape.use_backend("cpu"):
        got_x, got_y = P.matvec(x), P.rmatvec(y)
        one_x, one_y = P.matvec(x[1]), P.rmatvec(y[1])
    assert torch.equal(got_x, want_x)  # the same operations in the same order (fastfood.h)
    assert torch.equal(one_x, got_x[1])
    tol = {F32: 2e-6, F64: 1e-14}[dtype] * float(y.abs().max()) * max(1.0, (D / d) ** 0.5)
    torch.testing.assert_close(got_y, want_y, rtol=0, atol=tol)
    assert torch.equal(one_y, got_y[1])


def test_kernel_results_do_not_depend_on_the_thread_count(monkeypatch):
    _cpu_or_skip()
    P = FastfoodProjection(200_000, 5_000, seed=4)
    x, y = torch.randn(5_000), torch.randn(200_000)
    out = {}
    for nt in ("1", "2", "3"):
        monkeypatch.setenv("OMP_NUM_THREADS", nt)
        out[nt] = P.matvec(x), P.rmatvec(y), P.rmatvec(torch.stack((y, -y)))
    for nt in ("2", "3"):
        assert all(torch.equal(a, b) for a, b in zip(out["1"], out[nt], strict=True))
    assert torch.equal(out["1"][2][0], out["1"][1])


def test_memory_is_about_29_bytes_a_row_whatever_d():
    for d in (100, 5_000):
        P = FastfoodProjection(50_000, d, seed=0)
        P.rmatvec(P.matvec(torch.randn(d)))
        rows = P.blocks * P.n
        assert rows >= P.D and 20 * rows <= P.nbytes <= 29 * rows


def test_adjoint_and_numpy_inputs():
    P = FastfoodProjection(3_000, 700, seed=0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(700, dtype=F64, generator=g), torch.randn(3_000, dtype=F64, generator=g)
    assert abs(float(P.matvec(x) @ y - x @ P.rmatvec(y))) < 1e-10 * float(x.norm() * y.norm())
    np.testing.assert_array_equal(P.matvec(x.numpy()), P.matvec(x).numpy())
    assert P.rmatvec(torch.zeros(0, 3_000)).shape == (0, 700)


def test_autograd_is_the_adjoint():
    P = FastfoodProjection(300, 37, seed=9)
    theta = torch.randn(37, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(P, (theta,))
    assert torch.autograd.gradgradcheck(lambda t: P(t) ** 2, (theta,))
    batch = torch.randn(4, 37, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(P, (batch,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU path (torch reference) "
                                                          "is checked on a machine with one")
def test_cuda_products_match_the_cpu():
    P = FastfoodProjection(20_000, 3_000, seed=1)
    Q = P.to("cuda")
    x, y = torch.randn(2, 3_000, dtype=F64), torch.randn(2, 20_000, dtype=F64)
    torch.testing.assert_close(Q.matvec(x.cuda()).cpu(), P.matvec(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(Q.rmatvec(y.cuda()).cpu(), P.rmatvec(y), rtol=0, atol=1e-10)
    assert _backend.kernel("fastfood", torch.device("cuda"), F32) is None  # the reference runs there


# ---- bad input, and use by Subspace -------------------------------------------------------------------------
@pytest.mark.parametrize("call,err,msg", [
    (lambda: FastfoodProjection(10, 11), ValueError, r"d: got 11, expected at most D = 10"),
    (lambda: FastfoodProjection(10, 0), ValueError, r"d: got 0"),
    (lambda: FastfoodProjection(10, 2, seed=-1), ValueError, r"seed: got -1"),
    (lambda: FastfoodProjection(10, 2).matvec(torch.zeros(3)), ValueError, r"theta: got .* expected shape \(2,\)"),
    (lambda: FastfoodProjection(10, 2).rmatvec(torch.zeros(10, dtype=torch.int64)), TypeError, r"g: got dtype"),
    (lambda: make_projection(10, 2, storage="fastfood", density=0.5), ValueError, r"density: got 0.5 with "
                                                                                  r"storage='fastfood'"),
    (lambda: make_projection(10, 2, storage="dense"), ValueError, r"storage: got 'dense'"),
])
def test_bad_input_is_named(call, err, msg):
    with pytest.raises(err, match=msg):
        call()


def test_subspace_trains_on_a_fastfood_hyperplane():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    sub = lscape.Subspace(model, 20, storage="fastfood", seed=3)
    assert isinstance(sub.P, FastfoodProjection) and sub.P.shape == (sub.D, 20)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    opt = torch.optim.Adam(sub.parameters(), lr=0.05)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = ((sub(x) - y) ** 2).mean()
        first = float(loss.detach()) if first is None else first
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.8 * first
    sphere = lscape.Subspace(model, 20, kind="hypersphere", r0=2.0, storage="fastfood")
    assert abs(sphere.radius() - 2.0) < 1e-5
