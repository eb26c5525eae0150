"""The projection kernels (C++ and CUDA) against the torch/numpy reference, and the reference against
independent facts (scipy, exact algebra, the sampling law)."""
import math

import lscape
import numpy as np
import pytest
import torch
from conftest import device_of, require
from lscape import SparseSignProjection
from lscape.ops import projection as ops
from lscape.reference import projection as ref

# (D, d, density): sizes 1, odd sizes, non-multiples of the vector width, density 1, tiny densities
# (empty columns), many chunks, and one large D.
SHAPES = [
    (1, 1, None), (2, 1, None), (1, 1, 1.0), (7, 3, 1.0), (37, 5, 0.3), (1000, 999, None),
    (4099, 17, None), (100_003, 9, 1e-4), (33_333, 1, None), (50, 50, 0.02), (5_000_011, 3, None),
]


def reference_product(P, x, transpose):
    with lscape.use_backend("torch"):
        return P.rmatvec(x) if transpose else P.matvec(x)


@pytest.mark.parametrize("D,d,density", SHAPES)
def test_storage_is_bit_identical_to_the_reference(kernel_backend, D, d, density):
    dev = device_of(kernel_backend)
    P = SparseSignProjection(D, d, seed=11, density=density, device=dev)
    seg_start, chunk_ptr, indices = ref.storage(P.spec)
    # the generated segments: the CUDA layout, and on the CPU what the SELL-C-sigma layout is made from
    seg = ops.build_segments(lscape._backend.kernel("proj_build", dev), P.spec, True, dev)
    assert np.array_equal(seg["seg_start"].cpu().numpy(), seg_start)
    assert np.array_equal(seg["chunk_ptr"].cpu().numpy(), chunk_ptr)
    assert np.array_equal(seg["indices"].cpu().numpy(), indices)
    if dev.type == "cpu":
        held = ref.sell_layout(P.spec, seg_start, chunk_ptr, indices)
    else:
        held = {"seg_start": seg_start, "chunk_ptr": chunk_ptr, "indices": indices}
    assert set(P._buffers) == set(held) | {"col_counts"}
    for key, want in held.items():
        assert np.array_equal(P._buffers[key].cpu().numpy(), want), key
    counts = (seg_start[:, 1:] - seg_start[:, :-1]).sum(axis=0)
    assert np.array_equal(P.col_counts.cpu().numpy(), counts)


@pytest.mark.parametrize("storage", ["indices", "implicit"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B", [None, 1, 2, 3, 8, 13, 17])  # 17: two whole AVX2 float vectors and a tail
@pytest.mark.parametrize("D,d,density", SHAPES[:-1])
def test_products_match_reference(kernel_backend, storage, dtype, B, D, d, density):
    dev = device_of(kernel_backend)
    P = SparseSignProjection(D, d, seed=5, density=density, storage=storage, device=dev)
    gen = torch.Generator().manual_seed(D * 31 + d)
    shape_in = (d,) if B is None else (B, d)
    shape_g = (D,) if B is None else (B, D)
    theta = torch.randn(shape_in, generator=gen, dtype=dtype).to(dev)
    g = torch.randn(shape_g, generator=gen, dtype=dtype).to(dev)
    for x, transpose in ((theta, False), (g, True)):
        got = P.rmatvec(x) if transpose else P.matvec(x)
        want = reference_product(P, x, transpose)
        assert got.shape == want.shape and got.dtype == dtype and got.device == x.device
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * max(1.0, float(want.abs().max())))


@pytest.mark.parametrize("D,d,density", [(1, 1, None), (37, 5, 0.3), (4099, 17, None), (100_003, 9, 1e-4)])
def test_both_storages_hold_the_same_matrix(kernel_backend, D, d, density):
    dev = device_of(kernel_backend)
    Pi = SparseSignProjection(D, d, seed=2, density=density, storage="implicit", device=dev)
    Px = SparseSignProjection(D, d, seed=2, density=density, storage="indices", device=dev)
    eye = torch.eye(d, device=dev)
    # one-hot inputs give single nonzeros per output entry: the columns must be exactly equal
    assert torch.equal(Pi.matvec(eye), Px.matvec(eye))
    assert torch.equal(Pi.col_counts, Px.col_counts)


def test_large_D_implicit_equals_indices_and_reference(kernel_backend):
    dev = device_of(kernel_backend)
    D, d = 5_000_011, 3
    Pi = SparseSignProjection(D, d, seed=9, storage="implicit", device=dev)
    Px = SparseSignProjection(D, d, seed=9, device=dev)
    g = torch.randn(2, D, generator=torch.Generator().manual_seed(0)).to(dev)
    torch.testing.assert_close(Pi.rmatvec(g), Px.rmatvec(g), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(Px.rmatvec(g), reference_product(Px, g, True), rtol=1e-5, atol=1e-5)
    theta = torch.randn(2, d, generator=torch.Generator().manual_seed(1)).to(dev)
    assert torch.equal(Pi.matvec(theta), Px.matvec(theta))


@pytest.mark.parametrize("name", ["cpu", "cuda"])
def test_same_matrix_on_every_backend(name):
    require(name)
    with lscape.use_backend("torch"):
        P_torch = SparseSignProjection(4099, 17, seed=123)
    with lscape.use_backend(name):
        P = SparseSignProjection(4099, 17, seed=123, device=device_of(name))
    for key, want in P_torch._buffers.items():  # the same layout on the same device type, bit for bit
        if key in P._buffers:
            assert torch.equal(P._buffers[key].cpu(), want), key
    assert (P.to_scipy() != P_torch.to_scipy()).nnz == 0


# ---- the reference against independent facts ------------------------------------------------------

@pytest.fixture(scope="module")
def mid():
    with lscape.use_backend("torch"):
        return SparseSignProjection(20_000, 400, seed=4, density=0.01)


def test_reference_matches_scipy(mid):
    A = mid.to_scipy(np.float64)
    rng_ = np.random.default_rng(0)
    theta = rng_.standard_normal((3, mid.d))
    g = rng_.standard_normal((3, mid.D))
    with lscape.use_backend("torch"):
        np.testing.assert_allclose(mid.matvec(theta), (A @ theta.T).T, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(mid.rmatvec(g), (A.T @ g.T).T, rtol=1e-12, atol=1e-12)


def test_entries_are_signed_column_scales(mid):
    A = mid.to_scipy(np.float64).tocsc()
    for j in range(0, mid.d, 37):
        col = A[:, j].data
        assert np.allclose(np.abs(col), 1 / math.sqrt(col.size))
    norms = np.sqrt(np.asarray(A.multiply(A).sum(axis=0))).ravel()
    np.testing.assert_allclose(norms[norms > 0], 1.0, rtol=1e-6)


def test_density_within_five_sigma(mid):
    n = mid.D * mid.d
    p = mid.density
    assert abs(mid.nnz - n * p) < 5 * math.sqrt(n * p * (1 - p))


def test_rows_are_uniform_across_chunk_boundaries():
    # P(row i nonzero) = p for every i, including the first rows of chunks where streams restart.
    P = SparseSignProjection(3 * 4096, 3000, seed=1, density=1 / 256)  # S = 4096: three chunks
    assert P.spec.seg_rows == 4096
    rows, _, neg = P._pattern()
    per_row = np.bincount(rows, minlength=P.D)
    p, n = P.density, P.d
    for r in (0, 1, 4095, 4096, 4097, 8192, P.D - 1):
        assert abs(per_row[r] - n * p) < 5 * math.sqrt(n * p * (1 - p))
    # chi-square over 64 row bins
    bins = per_row.reshape(64, -1).sum(axis=1)
    chi2 = ((bins - bins.mean()) ** 2 / bins.mean()).sum()
    assert chi2 < 63 + 6 * math.sqrt(2 * 63)
    assert abs(neg.mean() - 0.5) < 5 * 0.5 / math.sqrt(neg.size)


def test_adjoint_identity(kernel_backend):
    dev = device_of(kernel_backend)
    for storage in ("indices", "implicit"):
        P = SparseSignProjection(30_011, 101, seed=3, storage=storage, device=dev)
        gen = torch.Generator().manual_seed(8)
        theta = torch.randn(4, 101, generator=gen, dtype=torch.float64).to(dev)
        g = torch.randn(4, 30_011, generator=gen, dtype=torch.float64).to(dev)
        lhs = (P.matvec(theta) * g).sum(dim=1)
        rhs = (theta * P.rmatvec(g)).sum(dim=1)
        torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


def test_nonzero_columns_have_unit_norm(kernel_backend):
    dev = device_of(kernel_backend)
    P = SparseSignProjection(10_000, 64, seed=0, density=3e-4, storage="implicit", device=dev)
    norms = P.matvec(torch.eye(64, dtype=torch.float64, device=dev)).norm(dim=1)
    nonzero = P.col_counts > 0
    assert P.empty_columns == int((~nonzero).sum())
    torch.testing.assert_close(norms[nonzero], torch.ones_like(norms[nonzero]))
    assert torch.all(norms[~nonzero] == 0)


def test_empty_columns_exist_at_tiny_density_and_stay_zero(kernel_backend):
    dev = device_of(kernel_backend)
    P = SparseSignProjection(1000, 200, seed=0, density=5e-4, device=dev)  # P(empty) = 0.61
    assert 80 < P.empty_columns < 160
    out = P.rmatvec(torch.randn(1000, device=dev))
    assert torch.all(out[P.col_counts == 0] == 0)


def test_seed_changes_the_matrix():
    a = SparseSignProjection(5000, 20, seed=0).to_scipy()
    b = SparseSignProjection(5000, 20, seed=1).to_scipy()
    assert (a != b).nnz > 0
