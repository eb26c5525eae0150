"""Benchmarks of the sparse +-1 projection P at the paper's size (D = 656,810, d = 9,000, density 1/sqrt(D)).

Every group times its contenders side by side in one run, on the same matrix (checked: each contender's
result must match lscape indices' before it is timed), float32:

  build                      generating P: lscape indices / implicit storage (default backend)
  matvec-B1, rmatvec-B1      P theta and P^T g for one vector
  matvec-B8, rmatvec-B8      the same for a batch of 8 rows, (8, d) -> (8, D) and (8, D) -> (8, d)
      contenders: lscape indices, lscape implicit, torch CSR, scipy.sparse CSR, lscape torch reference
  cuda-*                     the same on a CUDA device: lscape indices/implicit, torch CSR, cupyx CSR
  implicit-large             D = 10**8, d = 10**4, implicit storage, one product each way, peak RSS in
                             extra_info; only with --bench-large / LSCAPE_BENCH_LARGE=1 (bench/report.py
                             runs bench/large_implicit.py in a fresh process instead, so RSS is its own)

`python bench/report.py` (or `lscape bench`) runs this file and prints the ratio table.
"""
from __future__ import annotations

import os
import time

import lscape
import pytest
import torch
from conftest import BATCH, D_PAPER, SEED, Operands, check_close, d_PAPER, large_enabled
from large_implicit import LIMIT_BYTES, peak_rss_bytes

CPU_CONTENDERS = ["lscape-indices", "lscape-implicit", "torch-csr", "scipy", "torch-reference"]
CUDA_CONTENDERS = ["lscape-indices", "lscape-implicit", "torch-csr", "cupyx"]
LABELS = {"lscape-indices": "lscape indices", "lscape-implicit": "lscape implicit", "torch-csr": "torch CSR",
          "scipy": "scipy.sparse", "torch-reference": "lscape torch reference", "cupyx": "cupyx CSR"}


def _lscape_product(P, transpose: bool):
    return P.rmatvec if transpose else P.matvec


def _csr_product(A, AT, x, transpose: bool):
    """CSR of P (matvec) or of P^T (rmatvec) times x; a batch (B, n) goes in as x.T and out as .T."""
    M = AT if transpose else A
    if x.ndim == 1:
        return lambda: M @ x
    xt = x.T
    return lambda: (M @ xt).T


# ---- large implicit (opt-in here; bench/report.py runs it alone in a subprocess) ---------------------
LARGE_D, LARGE_d = 10**8, 10**4


def _current_rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@pytest.fixture(scope="module")
def large_P(request):
    if not large_enabled(request.config):
        pytest.skip("implicit-large is opt-in here (--bench-large or LSCAPE_BENCH_LARGE=1); "
                    "bench/report.py runs it alone in a subprocess (bench/large_implicit.py)")
    return lscape.SparseSignProjection(LARGE_D, LARGE_d, seed=SEED, storage="implicit")


def _large_info(rss_start):
    return {"D": LARGE_D, "d": LARGE_d, "peak_rss_bytes": peak_rss_bytes(), "rss_at_start_bytes": rss_start,
            "limit_bytes": LIMIT_BYTES,
            "rss_note": "ru_maxrss of the whole pytest process, earlier tests included"}


@pytest.mark.benchmark(group="implicit-large")
@pytest.mark.parametrize("product", ["matvec", "rmatvec"])
def test_large_product(benchmark, large_P, product):
    """P theta (theta of length d) or P^T g (g of length D) of the implicit D = 1e8 projection, one round."""
    n_in, n_out = (LARGE_d, LARGE_D) if product == "matvec" else (LARGE_D, LARGE_d)
    x = torch.randn(n_in, generator=torch.Generator().manual_seed(SEED))
    rss_start = _current_rss_bytes()
    benchmark.extra_info["contender"] = "lscape implicit " + ("P theta" if product == "matvec" else "P^T g")
    out = benchmark.pedantic(getattr(large_P, product), (x,), rounds=1, iterations=1)
    assert out.shape == (n_out,)
    del x, out
    benchmark.extra_info.update(_large_info(rss_start))


# ---- build -----------------------------------------------------------------------------------------
@pytest.mark.benchmark(group="build")
@pytest.mark.parametrize("storage", ["indices", "implicit"])
def test_build(bench_run, benchmark, storage):
    backend = lscape._backend.select(torch.device("cpu"))

    def build():
        return lscape.SparseSignProjection(D_PAPER, d_PAPER, seed=SEED, storage=storage)

    P = bench_run(build, f"lscape {storage}", min_rounds=3, backend=backend, D=D_PAPER, d=d_PAPER)
    nnz, nbytes = P.nnz, P.nbytes  # a fresh P: no product caches counted
    assert abs(nnz - D_PAPER * d_PAPER / D_PAPER**0.5) < 0.01 * nnz
    benchmark.extra_info.update(nnz=nnz, nbytes=nbytes, bytes_per_nnz=nbytes / nnz)
    if storage == "indices" and backend == "cpu":
        # the first one-vector P theta adds the column-band copy (ops.build_bands): time it, count it
        t0 = time.perf_counter()
        P.matvec(torch.zeros(d_PAPER))
        benchmark.extra_info.update(first_matvec_s=time.perf_counter() - t0, nbytes_after_matvec=P.nbytes,
                                    bytes_per_nnz_after_matvec=P.nbytes / nnz)


# ---- products on the CPU ---------------------------------------------------------------------------
def _cpu_fn(ops: Operands, contender: str, transpose: bool, B: int):
    x = ops.input(transpose, B)
    if contender == "lscape-indices":
        f = _lscape_product(ops.P, transpose)
        return lambda: f(x)
    if contender == "lscape-implicit":
        f = _lscape_product(ops.Pi, transpose)
        return lambda: f(x)
    if contender == "torch-csr":
        A, AT = ops.torch_csr("cpu")
        return _csr_product(A, AT, x, transpose)
    if contender == "scipy":
        pytest.importorskip("scipy.sparse", reason="scipy is not installed (pip install '.[bench]')")
        A, AT = ops.scipy()
        return _csr_product(A, AT, x.numpy(), transpose)
    if contender == "torch-reference":
        # its own P: the reference caches a COO copy (20 bytes per nonzero) that must not weigh on ops.P
        P = ops.cached("P_ref", lambda: lscape.SparseSignProjection(ops.D, ops.d, seed=SEED))
        f = _lscape_product(P, transpose)

        def ref():
            with lscape.use_backend("torch"):
                return f(x)

        return ref
    raise ValueError(contender)


def _product(bench_run, ops: Operands, contender: str, transpose: bool, B: int, device: str):
    """Check one contender's P theta (or P^T g) against the reference answer, then time it."""
    cuda = device != "cpu"
    fn = (_cuda_fn if cuda else _cpu_fn)(ops, contender, transpose, B)
    what = f"{'cuda ' if cuda else ''}{LABELS[contender]} {'P^T g' if transpose else 'P theta'} B={B}"
    check_close(fn(), ops.want(transpose, B), what)
    rounds = {} if cuda else {"min_rounds": 3 if contender == "torch-reference" else 5}
    bench_run(fn, LABELS[contender], **rounds, direction="rmatvec" if transpose else "matvec", B=B, D=ops.D,
              d=ops.d, device=torch.cuda.get_device_name() if cuda else "cpu")


def _cpu_product(bench_run, ops: Operands, contender: str, transpose: bool, B: int):
    _product(bench_run, ops, contender, transpose, B, "cpu")


@pytest.mark.benchmark(group="matvec-B1")
@pytest.mark.parametrize("contender", CPU_CONTENDERS)
def test_matvec_B1(bench_run, cpu_ops, contender):
    _cpu_product(bench_run, cpu_ops, contender, transpose=False, B=1)


@pytest.mark.benchmark(group="rmatvec-B1")
@pytest.mark.parametrize("contender", CPU_CONTENDERS)
def test_rmatvec_B1(bench_run, cpu_ops, contender):
    _cpu_product(bench_run, cpu_ops, contender, transpose=True, B=1)


@pytest.mark.benchmark(group=f"matvec-B{BATCH}")
@pytest.mark.parametrize("contender", CPU_CONTENDERS)
def test_matvec_B8(bench_run, cpu_ops, contender):
    _cpu_product(bench_run, cpu_ops, contender, transpose=False, B=BATCH)


@pytest.mark.benchmark(group=f"rmatvec-B{BATCH}")
@pytest.mark.parametrize("contender", CPU_CONTENDERS)
def test_rmatvec_B8(bench_run, cpu_ops, contender):
    _cpu_product(bench_run, cpu_ops, contender, transpose=True, B=BATCH)


# ---- CUDA ------------------------------------------------------------------------------------------
def _need_cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip(f"no CUDA device (torch {torch.__version__}: torch.cuda.is_available() is False)")
    return torch.device("cuda")


def _need_lscape_cuda() -> None:
    info = lscape.backends()["cuda"]
    if not info.available:
        pytest.skip(f"lscape cuda backend unavailable: {info.reason}")


def _cupy():
    try:
        import cupy
        import cupyx.scipy.sparse as csp

        cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # ImportError, or a CuPy built for another CUDA
        pytest.skip(f"cupy does not import or sees no device: {type(exc).__name__}: {exc}")
    return cupy, csp


@pytest.fixture(scope="module")
def cuda_ops(cpu_ops) -> Operands:
    """The same P on the CUDA device (buffers copied from the CPU one: identical matrix), CUDA inputs."""
    dev = _need_cuda()
    return Operands(cpu_ops.D, cpu_ops.d, cpu_ops.P.to(dev), cpu_ops.Pi.to(dev),
                    {k: v.to(dev) for k, v in cpu_ops.x.items()}, ref=cpu_ops)


def _cuda_fn(ops: Operands, contender: str, transpose: bool, B: int):
    x = ops.input(transpose, B)
    sync = torch.cuda.synchronize
    if contender in ("lscape-indices", "lscape-implicit"):
        _need_lscape_cuda()
        f = _lscape_product(ops.P if contender == "lscape-indices" else ops.Pi, transpose)

        def run():
            out = f(x)
            sync()
            return out

        return run
    if contender == "torch-csr":
        A, AT = ops.torch_csr(x.device)
        prod = _csr_product(A, AT, x, transpose)

        def run():
            out = prod()
            sync()
            return out

        return run
    if contender == "cupyx":
        cupy, csp = _cupy()
        mats = ops.cached("cupyx", lambda: tuple(csp.csr_matrix(M) for M in ops.scipy()))
        xc = cupy.asarray(x.cpu().numpy())
        prod = _csr_product(mats[0], mats[1], xc, transpose)

        def run():
            out = prod()
            cupy.cuda.get_current_stream().synchronize()
            return out

        return run
    raise ValueError(contender)


def _cuda_product(bench_run, ops: Operands, contender: str, transpose: bool, B: int):
    _product(bench_run, ops, contender, transpose, B, "cuda")


@pytest.mark.gpu
@pytest.mark.benchmark(group="cuda-build")
@pytest.mark.parametrize("storage", ["indices", "implicit"])
def test_cuda_build(bench_run, benchmark, storage):
    dev = _need_cuda()
    _need_lscape_cuda()

    def build():
        P = lscape.SparseSignProjection(D_PAPER, d_PAPER, seed=SEED, storage=storage, device=dev)
        torch.cuda.synchronize()
        return P

    P = bench_run(build, f"lscape {storage}", min_rounds=3, device=torch.cuda.get_device_name())
    benchmark.extra_info.update(nnz=P.nnz, nbytes=P.nbytes, bytes_per_nnz=P.nbytes / P.nnz)


@pytest.mark.gpu
@pytest.mark.benchmark(group="cuda-matvec-B1")
@pytest.mark.parametrize("contender", CUDA_CONTENDERS)
def test_cuda_matvec_B1(bench_run, cuda_ops, contender):
    _cuda_product(bench_run, cuda_ops, contender, transpose=False, B=1)


@pytest.mark.gpu
@pytest.mark.benchmark(group="cuda-rmatvec-B1")
@pytest.mark.parametrize("contender", CUDA_CONTENDERS)
def test_cuda_rmatvec_B1(bench_run, cuda_ops, contender):
    _cuda_product(bench_run, cuda_ops, contender, transpose=True, B=1)


@pytest.mark.gpu
@pytest.mark.benchmark(group=f"cuda-matvec-B{BATCH}")
@pytest.mark.parametrize("contender", CUDA_CONTENDERS)
def test_cuda_matvec_B8(bench_run, cuda_ops, contender):
    _cuda_product(bench_run, cuda_ops, contender, transpose=False, B=BATCH)


@pytest.mark.gpu
@pytest.mark.benchmark(group=f"cuda-rmatvec-B{BATCH}")
@pytest.mark.parametrize("contender", CUDA_CONTENDERS)
def test_cuda_rmatvec_B8(bench_run, cuda_ops, contender):
    _cuda_product(bench_run, cuda_ops, contender, transpose=True, B=BATCH)
