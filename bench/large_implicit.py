"""Large implicit projection, measured alone: D = 10**8, d = 10**4, storage="implicit".

Builds P, runs one matvec (P theta) and one rmatvec (P^T g, with g = P theta so only one D-vector is
ever alive), and prints one JSON object: times, peak RSS of this process, and an adjoint check.
Run on its own (`python bench/large_implicit.py [--D N --d N --device cpu|cuda]`) so the peak RSS is
that of this work alone; bench/report.py does so by default.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time

LIMIT_BYTES = 10**9  # the target: the whole process stays under 1 GB


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def run(D: int = 10**8, d: int = 10**4, seed: int = 0, device: str = "cpu") -> dict:
    import lscape
    import torch

    rss_import = peak_rss_bytes()
    sync = (lambda: torch.cuda.synchronize()) if device.startswith("cuda") else (lambda: None)
    t0 = time.perf_counter()
    P = lscape.SparseSignProjection(D, d, seed=seed, storage="implicit", device=device)
    sync()
    t_build = time.perf_counter() - t0
    theta = torch.randn(d, generator=torch.Generator().manual_seed(seed)).to(device)

    t0 = time.perf_counter()
    y = P.matvec(theta)
    sync()
    t_mv = time.perf_counter() - t0

    t0 = time.perf_counter()
    z = P.rmatvec(y)  # g = P theta: a genuine D-vector without holding a second one
    sync()
    t_rmv = time.perf_counter() - t0

    # adjoint check <P theta, g> = <theta, P^T g> with g = P theta, i.e. |P theta|^2 = theta . P^T P theta
    peak = peak_rss_bytes()  # the products' peak; the check below is chunked so it adds little
    lhs = sum(float(c.double().square().sum()) for c in y.split(1 << 22))
    rhs = float(theta.double() @ z.double())
    peak_after_check = peak_rss_bytes()
    out = {
        "D": D, "d": d, "seed": seed, "device": str(P.device), "storage": P.storage,
        "nnz": P.nnz, "nbytes": P.nbytes,
        "build_s": t_build, "matvec_s": t_mv, "rmatvec_s": t_rmv,
        "adjoint_rel_err": abs(lhs - rhs) / max(abs(lhs), 1e-30),
        "peak_rss_bytes": peak, "rss_after_import_bytes": rss_import,
        "peak_rss_after_check_bytes": peak_after_check,
        "limit_bytes": LIMIT_BYTES, "under_limit": peak < LIMIT_BYTES,
        "threads": lscape._backend.num_threads(),
    }
    if device.startswith("cuda"):
        out["cuda_peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--D", type=int, default=10**8)
    ap.add_argument("--d", type=int, default=10**4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ns = ap.parse_args(argv)
    print(json.dumps(run(ns.D, ns.d, ns.seed, ns.device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
