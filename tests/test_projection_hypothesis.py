"""Random shapes, dtypes, sizes and kinds thrown at the public entry points: each call either returns
the right answer or raises a named error."""
import os
import re

import lscape
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from lscape import SparseSignProjection

NAMED = re.compile(r"^(D|d|seed|density|storage|device|theta|g): got ")

# CI replays a fixed set of examples (a red CI must be reproducible); local runs explore new ones.
settings.register_profile("lscape", max_examples=60, deadline=None, derandomize=bool(os.environ.get("CI")),
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("lscape")


@st.composite
def valid_construction(draw):
    """Arguments SparseSignProjection accepts: every example exercises the construction itself."""
    D = draw(st.integers(1, 3000))
    return dict(D=D, d=draw(st.integers(1, min(D, 60))), seed=draw(st.integers(0, 2**64 - 1)),
                density=draw(st.one_of(st.none(), st.floats(0.0, 1.0, exclude_min=True))),
                storage=draw(st.sampled_from(["indices", "implicit"])))


@st.composite
def invalid_construction(draw):
    """Valid arguments with exactly one of them made wrong (a bad value, or a wrong type)."""
    kw = draw(valid_construction())
    arg = draw(st.sampled_from(["D", "d", "seed", "density", "storage"]))
    bad = {"D": st.one_of(st.integers(-3, 0), st.just("10"), st.just(None), st.just(2.5)),
           "d": st.one_of(st.integers(-3, 0), st.just(kw["D"] + 1), st.just("3"), st.just(None)),
           "seed": st.one_of(st.integers(-2, -1), st.just(2**64), st.just("0"), st.just(1.5)),
           "density": st.one_of(st.floats(-0.5, 0.0), st.floats(1.0, 1.5, exclude_min=True),
                                st.just(float("nan")), st.just(float("inf")), st.just("0.1")),
           "storage": st.sampled_from(["dense", "", None])}[arg]
    kw[arg] = draw(bad)
    return arg, kw


@given(valid_construction())
@example(dict(D=1, d=1, seed=0, density=9.238232145423484e-275, storage="indices"))  # gap scale overflowed f32
def test_valid_construction_is_correct(kw):
    P = SparseSignProjection(**kw)
    assert P.shape == (kw["D"], kw["d"])
    counts = P.col_counts.numpy()
    assert counts.sum() == P.nnz and (counts <= kw["D"]).all() and (counts >= 0).all()
    A = P.to_scipy(np.float64).toarray()
    for j in range(A.shape[1]):  # a column's entries are 0 or +-s_j: one magnitude per column
        assert np.unique(np.abs(A[:, j][A[:, j] != 0])).size <= 1
    np.testing.assert_array_equal((A != 0).sum(0), counts)


@given(invalid_construction())
def test_invalid_construction_is_refused_by_name(case):
    arg, kw = case
    with pytest.raises((ValueError, TypeError), match=rf"^{arg}: got "):
        SparseSignProjection(**kw)


@st.composite
def valid_products(draw):
    """A projection and an input it accepts: (n,) or (B, n) float32/float64, torch or numpy."""
    D = draw(st.integers(1, 400))
    d = draw(st.integers(1, D))
    transpose = draw(st.booleans())
    n = D if transpose else d
    shape = draw(st.sampled_from([(n,), (draw(st.integers(0, 5)), n)]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return D, d, shape, dtype, draw(st.sampled_from(["torch", "numpy"])), transpose, \
        draw(st.sampled_from(["indices", "implicit"]))


@st.composite
def invalid_products(draw):
    """A valid case with its input made wrong: a wrong last dimension, a wrong rank, or a wrong dtype."""
    D, d, shape, dtype, kind, transpose, storage = draw(valid_products())
    n = D if transpose else d
    fault = draw(st.sampled_from(["length", "rank", "dtype"]))
    if fault == "length":
        shape = shape[:-1] + (draw(st.sampled_from([n + 1, max(n - 1, 0), (d if transpose else D) + (D == d)])),)
    elif fault == "rank":
        shape = draw(st.sampled_from([(), (2, 2, n), (1, 1, 1, n)]))
    else:
        dtype = draw(st.sampled_from([torch.float16, torch.int32, torch.bool]))
    return D, d, shape, dtype, kind, transpose, storage


def _product(case):
    D, d, shape, dtype, kind, transpose, storage = case
    P = SparseSignProjection(D, d, seed=D, density=min(1.0, 3 / D ** 0.5), storage=storage)
    x = (torch.randn(shape) * 3).to(dtype)
    arg = x.numpy() if kind == "numpy" else x
    return P, x, (P.rmatvec if transpose else P.matvec)(arg)


@given(valid_products(), st.sampled_from(["cpu", "torch"]))
def test_valid_products_are_correct(case, backend):
    D, d, shape, dtype, kind, transpose, storage = case
    with lscape.use_backend(backend):
        P, x, y = _product(case)
        A = P.to_scipy(np.float64)
        x64 = x.double().reshape(-1, shape[-1]).numpy()
        want = (x64 @ A.toarray()) if transpose else (x64 @ A.toarray().T)
        got = np.asarray(y if kind == "numpy" else y.numpy()).reshape(want.shape)
        assert isinstance(y, np.ndarray if kind == "numpy" else torch.Tensor)
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, np.abs(want).max(initial=0)))


@given(invalid_products(), st.sampled_from(["cpu", "torch"]))
def test_invalid_products_are_refused_by_name(case, backend):
    with lscape.use_backend(backend), pytest.raises((ValueError, TypeError), match=r"^(theta|g): got "):
        _product(case)
