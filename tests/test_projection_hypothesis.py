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


@given(D=st.integers(-3, 3000), d=st.integers(-3, 60), seed=st.integers(-2, 2**64),
       density=st.one_of(st.none(), st.floats(-0.5, 1.5), st.just(float("nan")), st.just(float("inf"))),
       storage=st.sampled_from(["indices", "implicit", "dense"]))
@example(D=1, d=1, seed=0, density=9.238232145423484e-275, storage="indices")  # its gap scale overflowed float32
def test_construction_is_correct_or_named(D, d, seed, density, storage):
    """Valid input constructs; invalid input (and only invalid input) is refused, by a named error."""
    valid = (1 <= D and 1 <= d <= D and 0 <= seed < 2**64 and storage in ("indices", "implicit")
             and (density is None or 0.0 < density <= 1.0))  # NaN fails both comparisons
    if not valid:
        with pytest.raises((ValueError, TypeError)) as exc:
            SparseSignProjection(D, d, seed=seed, density=density, storage=storage)
        assert NAMED.match(str(exc.value)), str(exc.value)
        return
    P = SparseSignProjection(D, d, seed=seed, density=density, storage=storage)
    assert P.shape == (D, d)
    counts = P.col_counts.numpy()
    assert counts.sum() == P.nnz and (counts <= D).all()


DTYPES = [torch.float32, torch.float64, torch.float16, torch.int32, torch.bool]


@st.composite
def inputs(draw):
    D = draw(st.integers(1, 400))
    d = draw(st.integers(1, D))
    shape = draw(st.lists(st.integers(0, 5), min_size=0, max_size=3))
    last = draw(st.sampled_from([d, D, d + 1, max(d - 1, 0)]))
    if shape:
        shape[-1] = last
    dtype = draw(st.sampled_from(DTYPES))
    kind = draw(st.sampled_from(["torch", "numpy"]))
    return D, d, tuple(shape), dtype, kind, draw(st.booleans()), draw(st.sampled_from(["indices", "implicit"]))


@given(inputs(), st.sampled_from(["cpu", "torch"]))
def test_products_are_correct_or_named(case, backend):
    D, d, shape, dtype, kind, transpose, storage = case
    with lscape.use_backend(backend):
        P = SparseSignProjection(D, d, seed=D, density=min(1.0, 3 / D ** 0.5), storage=storage)
        x = (torch.randn(shape) * 3).to(dtype)
        arg = x.numpy() if kind == "numpy" else x
        fn = P.rmatvec if transpose else P.matvec
        try:
            y = fn(arg)
        except (ValueError, TypeError) as exc:
            assert NAMED.match(str(exc)), str(exc)
            n = D if transpose else d
            assert not (len(shape) in (1, 2) and shape[-1] == n and dtype in (torch.float32, torch.float64))
            return
        ok_shape = len(shape) in (1, 2) and shape[-1] == (D if transpose else d)
        assert ok_shape and dtype in (torch.float32, torch.float64)
        A = P.to_scipy(np.float64)
        x64 = x.double().reshape(-1, shape[-1]).numpy()
        want = (x64 @ A.toarray()) if transpose else (x64 @ A.toarray().T)
        got = np.asarray(y if kind == "numpy" else y.numpy()).reshape(want.shape)
        assert isinstance(y, np.ndarray if kind == "numpy" else torch.Tensor)
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, np.abs(want).max(initial=0)))
