"""Where the Fastfood projection overtakes the sparse one: one P theta plus one P^T g (one vector each,
float32, one thread), FastfoodProjection against a stored SparseSignProjection, over d at two model sizes
(Li et al.'s MNIST FC net, D = 199,210, and the Goldilocks CIFAR net, D = 656,810).  The minimum of
`--repeats` timings, each contender timed twice around the other; docs/performance.md quotes a run.

    PYTHONPATH=python OMP_NUM_THREADS=1 python bench/fastfood_crossover.py
"""
from __future__ import annotations

import argparse
import time

import torch
from lscape import FastfoodProjection, SparseSignProjection

GRID = {199_210: (750, 1_000, 1_500, 2_000, 3_000, 4_096, 6_000, 10_000), 656_810: (2_000, 3_000, 4_000, 6_000, 9_000)}


def fastest(P, x: torch.Tensor, g: torch.Tensor, repeats: int) -> float:
    """The least time of P theta then P^T g."""
    P.matvec(x), P.rmatvec(g)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        P.matvec(x), P.rmatvec(g)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"{'D':>8} {'d':>6} {'d/sqrtD':>8} {'sparse ms':>10} {'fastfood ms':>12} {'sparse/fastfood':>16}")
    for D, dims in GRID.items():
        g = torch.randn(D)
        for d in dims:
            F, S = FastfoodProjection(D, d, seed=1), SparseSignProjection(D, d, seed=1)
            x = torch.randn(d)
            f = fastest(F, x, g, args.repeats)
            s = fastest(S, x, g, args.repeats)
            f = min(f, fastest(F, x, g, args.repeats))
            print(f"{D:>8,} {d:>6,} {d / D ** 0.5:>8.1f} {s * 1e3:>10.3f} {f * 1e3:>12.3f} {s / f:>16.2f}", flush=True)


if __name__ == "__main__":
    main()
