"""Shared pieces of the lscape benchmarks: options, the timing helper, and the paper-size operands.

Options (pytest command line, or the environment variable next to each):
  --bench-budget SECONDS  (LSCAPE_BENCH_BUDGET, default 4)  timed seconds to aim for per benchmark; the
                          round count is budget / (one call), clamped to [min_rounds, 200].
  --bench-large           (LSCAPE_BENCH_LARGE=1)  also run the "implicit-large" group in this process
                          (D = 10**8, d = 10**4; bench/report.py runs it alone in a subprocess instead).
"""
from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lscape
import numpy as np
import pytest
import torch
from lscape import _backend

# The paper's size (Chang, Goldilocks, §III.D): D parameters, d directions, density 1/sqrt(D).
D_PAPER = 656_810
d_PAPER = 9_000
BATCH = 8
SEED = 0
MAX_ROUNDS = 200


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lscape-bench", "lscape benchmarks")
    group.addoption("--bench-budget", type=float, default=None,
                    help="timed seconds per benchmark (default $LSCAPE_BENCH_BUDGET or 4)")
    group.addoption("--bench-large", action="store_true", default=False,
                    help="run the implicit-large group (D=1e8) in-process (or LSCAPE_BENCH_LARGE=1)")


def _budget(config: pytest.Config) -> float:
    value = config.getoption("--bench-budget")
    if value is None:
        value = float(os.environ.get("LSCAPE_BENCH_BUDGET", "4") or 4)
    return max(0.0, float(value))


def large_enabled(config: pytest.Config) -> bool:
    return bool(config.getoption("--bench-large")) or os.environ.get("LSCAPE_BENCH_LARGE", "") not in ("", "0")


def pytest_benchmark_update_machine_info(config, machine_info: dict) -> None:
    """What the report needs to read the numbers: versions, backends, thread counts, load."""
    try:
        import scipy

        scipy_version = scipy.__version__
    except ImportError:  # scipy is in the bench extra; the scipy contenders skip without it
        scipy_version = None
    machine_info["lscape"] = {
        "version": lscape.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy_version,
        "python": platform.python_version(),
        "backends": {k: {"available": v.available, "reason": v.reason} for k, v in lscape.backends().items()},
        "lscape_threads": _backend.num_threads(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "budget_s": _budget(config),
        "extension": _extension_note(),
    }


def _extension_mtime() -> tuple[str | None, float | None]:
    path = getattr(_backend.cpu_extension(), "__file__", None)
    try:
        return path, (os.path.getmtime(path) if path else None)
    except OSError:
        return path, None


_EXT_AT_IMPORT = _extension_mtime()  # the build this process loaded (kernels change between runs)


def _extension_note() -> str | None:
    """Which build of lscape._C ran: its file and modification time when this process loaded it."""
    path, mtime = _EXT_AT_IMPORT
    if path is None:
        return None
    fmt = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))  # noqa: E731
    note = f"{path} (built {fmt(mtime)})" if mtime else path
    now = _extension_mtime()[1]
    if now and mtime and now != mtime:
        note += f"; the file was rebuilt during the run ({fmt(now)}): this run used the earlier build"
    return note


# ---- timing ------------------------------------------------------------------------------------------
@pytest.fixture
def bench_run(benchmark, request):
    """bench_run(fn, contender, min_rounds=5, **extra) -> fn's last result.

    Calls fn twice untimed (warm-up: first-call caches, page faults; the second call calibrates the
    round count), then times `rounds` calls of fn with one iteration each, so the median is over rounds.
    """
    budget = _budget(request.config)

    def run(fn: Callable[[], Any], contender: str, *, min_rounds: int = 5, **extra: Any) -> Any:
        fn()
        t0 = time.perf_counter()
        fn()
        once = time.perf_counter() - t0
        rounds = int(min(MAX_ROUNDS, max(min_rounds, math.floor(budget / max(once, 1e-6)))))
        benchmark.extra_info["contender"] = contender
        benchmark.extra_info.update(extra)
        return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)

    return run


# ---- operands ----------------------------------------------------------------------------------------
@dataclass
class Operands:
    """One matrix P in every form the contenders take, plus inputs and lscape-indices results."""

    D: int
    d: int
    P: Any  # storage="indices"
    Pi: Any  # storage="implicit"
    x: dict[tuple[bool, int], torch.Tensor]  # (transpose, B) -> input: theta (B, d) / (d,), g (B, D) / (D,)
    expected: dict[tuple[bool, int], torch.Tensor] = field(default_factory=dict)
    ref: Operands | None = None  # the CPU operands a device copy checks against and converts from
    _cache: dict[str, Any] = field(default_factory=dict)

    def input(self, transpose: bool, B: int) -> torch.Tensor:
        return self.x[(transpose, B)]

    def want(self, transpose: bool, B: int) -> torch.Tensor:
        """lscape indices' result on the default backend: what every contender must reproduce."""
        if self.ref is not None:
            return self.ref.want(transpose, B)
        key = (transpose, B)
        if key not in self.expected:
            x = self.x[key]
            self.expected[key] = (self.P.rmatvec(x) if transpose else self.P.matvec(x)).cpu()
        return self.expected[key]

    def cached(self, name: str, make: Callable[[], Any]) -> Any:
        if name not in self._cache:
            self._cache[name] = make()
        return self._cache[name]

    def scipy(self):
        """(P, P^T) as scipy.sparse CSR, float32."""
        if self.ref is not None:
            return self.ref.scipy()
        return self.cached("scipy", lambda: _scipy_pair(self.P))

    def torch_csr(self, device: torch.device | str = "cpu"):
        """(P, P^T) as torch sparse CSR tensors (int64 indices, float32 values) on `device`."""
        def make():
            A, AT = self.scipy()
            return _torch_csr(A, device), _torch_csr(AT, device)

        return self.cached(f"torch_csr:{device}", make)


def _scipy_pair(P):
    A = P.to_scipy(np.float32)
    A.sort_indices()
    AT = A.T.tocsr()
    AT.sort_indices()
    return A, AT


def _torch_csr(A, device) -> torch.Tensor:
    return torch.sparse_csr_tensor(torch.from_numpy(A.indptr.astype(np.int64)),
                                   torch.from_numpy(A.indices.astype(np.int64)),
                                   torch.from_numpy(A.data), size=A.shape, dtype=torch.float32,
                                   device=device)


def make_inputs(D: int, d: int, device: torch.device | str = "cpu", seed: int = SEED):
    gen = torch.Generator().manual_seed(seed + 12345)
    x = {}
    for B in (1, BATCH):
        shape_t, shape_g = ((d,), (D,)) if B == 1 else ((B, d), (B, D))
        x[(False, B)] = torch.randn(shape_t, generator=gen).to(device)
        x[(True, B)] = torch.randn(shape_g, generator=gen).to(device)
    return x


@pytest.fixture(scope="module")
def cpu_ops() -> Operands:
    """The paper-size P on the CPU (default backend: the C++ kernels when built), both storages."""
    P = lscape.SparseSignProjection(D_PAPER, d_PAPER, seed=SEED, storage="indices")
    Pi = lscape.SparseSignProjection(D_PAPER, d_PAPER, seed=SEED, storage="implicit")
    return Operands(D_PAPER, d_PAPER, P, Pi, make_inputs(D_PAPER, d_PAPER))


def check_close(got: Any, want: torch.Tensor, what: str) -> None:
    """got (torch, numpy or CuPy; any layout) equals want to float32 accuracy."""
    if type(got).__module__.startswith("cupy"):
        got = got.get()
    if hasattr(got, "toarray"):
        got = got.toarray()
    got = torch.as_tensor(np.asarray(got.cpu() if isinstance(got, torch.Tensor) else got))
    got = got.reshape(want.shape).to(torch.float64)
    want = want.to(torch.float64)
    scale = float(want.abs().max()) or 1.0
    err = float((got - want).abs().max()) / scale
    assert err < 1e-4, f"{what}: result differs from lscape indices (max error {err:.2e} of max |value|)"
