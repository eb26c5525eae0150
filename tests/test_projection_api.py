"""SparseSignProjection's public surface: shapes, kinds, autograd, conversions and named errors."""
import lscape
import numpy as np
import pytest
import scipy.sparse
import torch
from lscape import SparseSignProjection


@pytest.fixture(scope="module")
def P():
    return SparseSignProjection(2003, 41, seed=1)


def test_shapes_single_and_batched(P):
    assert P.matvec(torch.randn(41)).shape == (2003,)
    assert P.matvec(torch.randn(5, 41)).shape == (5, 2003)
    assert P.rmatvec(torch.randn(2003)).shape == (41,)
    assert P.rmatvec(torch.randn(5, 2003)).shape == (5, 41)
    assert P.matvec(torch.randn(0, 41)).shape == (0, 2003)
    assert P.shape == (2003, 41) and P.D == 2003 and P.d == 41


def test_batched_rows_equal_single_calls(P):
    x = torch.randn(4, 41)
    single = torch.stack([P.matvec(r) for r in x])
    torch.testing.assert_close(P.matvec(x), single, rtol=1e-6, atol=1e-6)


def test_noncontiguous_input(P):
    x = torch.randn(41, 6).t()
    assert not x.is_contiguous()
    torch.testing.assert_close(P.matvec(x), P.matvec(x.contiguous()))


def test_numpy_in_numpy_out(P):
    x = np.random.default_rng(0).standard_normal(41).astype(np.float32)
    y = P.matvec(x)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == (2003,)
    np.testing.assert_allclose(y, P.matvec(torch.from_numpy(x)).numpy())
    z = P.rmatvec(np.ones((2, 2003)))
    assert isinstance(z, np.ndarray) and z.dtype == np.float64


def test_autograd_gradient_is_rmatvec(P):
    theta = torch.randn(3, 41, requires_grad=True)
    w = torch.randn(3, 2003)
    (P(theta) * w).sum().backward()
    torch.testing.assert_close(theta.grad, P.rmatvec(w))


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("storage", ["indices", "implicit"])
def test_gradcheck_float64(backend, storage):
    with lscape.use_backend(backend):
        P = SparseSignProjection(57, 9, seed=2, density=0.3, storage=storage)
        theta = torch.randn(2, 9, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(P, (theta,))
        assert torch.autograd.gradgradcheck(P, (theta,))


def test_to_scipy_agrees_with_matvec(P):
    A = P.to_scipy()
    assert isinstance(A, scipy.sparse.csr_matrix) and A.shape == (2003, 41) and A.nnz == P.nnz
    x = np.random.default_rng(1).standard_normal(41).astype(np.float32)
    np.testing.assert_allclose(P.matvec(x), A @ x, rtol=1e-5, atol=1e-6)
    Pi = SparseSignProjection(2003, 41, seed=1, storage="implicit")
    assert (Pi.to_scipy() != A).nnz == 0


def test_to_dense_and_its_limit(P):
    dense = P.to_dense(torch.float64)
    x = torch.randn(41, dtype=torch.float64)
    torch.testing.assert_close(dense @ x, P.matvec(x))
    with pytest.raises(ValueError, match="max_elements"):
        P.to_dense(max_elements=1000)


def test_nbytes_per_nonzero():
    P = SparseSignProjection(200_000, 2000, seed=0)
    assert P.nbytes / P.nnz <= 4.5
    Pi = SparseSignProjection(200_000, 2000, seed=0, storage="implicit")
    assert Pi.nbytes <= 16 * 2000 + 64


def test_to_the_device_it_is_on_returns_itself_and_a_bad_device_is_named(P):
    """(A round trip to a GPU and back is in test_projection_cuda.py.)"""
    assert P.to("cpu") is P and P.to(None) is P and P.to(torch.device("cpu")) is P
    with pytest.raises(ValueError, match="device: got 'nope', expected a torch device"):
        P.to("nope")


def test_repr(P):
    assert "D=2003" in repr(P) and "indices" in repr(P)


# ---- named errors, raised before any kernel runs -----------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(D=0, d=1), r"^D: got 0"),
    (dict(D=-5, d=1), r"^D: got -5"),
    (dict(D=2**31, d=1), r"^D: got 2147483648"),
    (dict(D=10, d=0), r"^d: got 0"),
    (dict(D=10, d=11), r"^d: got 11, expected at most D = 10"),
    (dict(D=10, d=2, density=0.0), r"^density: got 0.0, expected a number in \(0"),
    (dict(D=10, d=2, density=1.5), r"^density: got 1.5"),
    (dict(D=10, d=2, density=float("nan")), r"^density: got nan"),
    (dict(D=10, d=2, seed=-1), r"^seed: got -1"),
    (dict(D=10, d=2, storage="csr"), r"^storage: got 'csr'"),
    (dict(D=10, d=2, device="tpu"), r"^device: got"),
])
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparseSignProjection(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(D=10.0, d=2), r"^D: got float 10.0, expected an integer"),
    (dict(D=10, d=True), r"^d: got bool True, expected an integer"),
    (dict(D=10, d=2, density="0.1"), r"^density: got str '0.1', expected a real number"),
])
def test_bad_construction_types(kwargs, match):
    with pytest.raises(TypeError, match=match):
        SparseSignProjection(**kwargs)


@pytest.mark.parametrize("method,x,exc,match", [
    ("matvec", torch.randn(40), ValueError,
     r"^theta: got tensor of shape \(40,\).*expected shape \(41,\) or \(B, 41\)"),
    ("matvec", torch.randn(2, 3, 41), ValueError, r"^theta: got tensor of shape \(2, 3, 41\)"),
    ("matvec", torch.tensor(1.0), ValueError, r"^theta: got tensor of shape \(\)"),
    ("rmatvec", torch.randn(41), ValueError, r"^g: got tensor of shape \(41,\).*expected shape \(2003,\)"),
    ("matvec", torch.ones(41, dtype=torch.int64), TypeError, r"^theta: got dtype torch.int64"),
    ("matvec", torch.ones(41, dtype=torch.float16), TypeError, r"^theta: got dtype torch.float16"),
    ("rmatvec", np.ones(2003, dtype=np.int32), TypeError, r"^g: got numpy dtype int32"),
    ("matvec", [1.0] * 41, TypeError, r"^theta: got list"),
])
def test_bad_inputs(P, method, x, exc, match):
    with pytest.raises(exc, match=match):
        getattr(P, method)(x)


def test_wrong_device_is_named(P):
    meta = torch.empty(41, device="meta")
    with pytest.raises(ValueError, match=r"^theta: got a tensor on meta, but the projection lives on cpu"):
        P.matvec(meta)


def test_zero_dim_numpy_is_refused_not_promoted():
    P1 = SparseSignProjection(1, 1)
    with pytest.raises(ValueError, match=r"^theta: got numpy array of shape \(\)"):
        P1.matvec(np.array(1.0, dtype=np.float32))


@pytest.mark.parametrize("storage", ["indices", "implicit"])
def test_subnormal_density_builds_an_empty_matrix(storage):
    """16 / density overflows to inf for a subnormal density (found by hypothesis): the chunk size
    clamps to 2^24 and P is all zero, every column counted empty."""
    P = SparseSignProjection(5, 3, seed=0, density=5e-324, storage=storage)
    assert P.nnz == 0 and P.empty_columns == 3
    assert torch.equal(P.matvec(torch.ones(3)), torch.zeros(5))
