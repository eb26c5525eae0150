"""CUDA-only behaviour: device placement, CuPy in/out, and streams.  Kernel equivalence on CUDA is in
test_projection_kernels.py (its `kernel_backend` fixture includes cuda)."""
import numpy as np
import pytest
import torch
from conftest import require
from lscape import SparseSignProjection

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _need_cuda():
    require("cuda")


def test_to_cuda_keeps_the_matrix():
    P = SparseSignProjection(50_001, 33, seed=4)
    Q = P.to("cuda")
    assert Q.device.type == "cuda"
    x = torch.randn(3, 33)
    torch.testing.assert_close(Q.matvec(x.cuda()).cpu(), P.matvec(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"^theta: got a tensor on cpu, but the projection lives on cuda"):
        Q.matvec(x)


def test_cupy_in_cupy_out():
    cupy = pytest.importorskip("cupy", reason="CuPy (the cuda extra) is not installed")
    P = SparseSignProjection(10_007, 21, seed=1, device="cuda")
    x = cupy.random.standard_normal(21, dtype=cupy.float32)
    y = P.matvec(x)
    assert isinstance(y, cupy.ndarray) and y.shape == (10_007,)
    want = P.matvec(torch.from_dlpack(x)).cpu().numpy()
    np.testing.assert_allclose(cupy.asnumpy(y), want, rtol=1e-5, atol=1e-6)  # atomics: order varies


def test_runs_on_the_current_stream():
    P = SparseSignProjection(200_003, 64, seed=2, device="cuda")
    x = torch.randn(4, 64, device="cuda")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        y = P.matvec(x)
    s.synchronize()
    torch.testing.assert_close(y, P.matvec(x))
