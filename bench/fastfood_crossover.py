"""Where the Fastfood projection overtakes the sparse one: one P theta plus one P^T g (one vector each,
float32, one thread), FastfoodProjection against a stored SparseSignProjection, over d at two model sizes
(Li et al.'s MNIST FC net, D = 199,210, and the Goldilocks CIFAR net, D = 656,810).  The least of
`--repeats` rounds, each round timing both contenders in turn, the order alternating (bench/timing.py);
docs/performance.md quotes a run.  --D and --d time one size instead of the grid (a quick check: --D 4096
--d 64 256 --repeats 2).

    PYTHONPATH=python OMP_NUM_THREADS=1 python bench/fastfood_crossover.py
"""
from __future__ import annotations

import argparse

import torch
from lscape import FastfoodProjection, SparseSignProjection
from timing import least_interleaved

GRID = {199_210: (750, 1_000, 1_500, 2_000, 3_000, 4_096, 6_000, 10_000), 656_810: (2_000, 3_000, 4_000, 6_000, 9_000)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--D", type=int, help="one model size instead of the grid's two (with --d)")
    p.add_argument("--d", type=int, nargs="+", help="its subspace dimensions")
    args = p.parse_args()
    if (args.D is None) != (args.d is None):
        p.error(f"--D, --d: got {args.D}, {args.d}; give both or neither")
    torch.set_num_threads(1)
    print(f"{'D':>8} {'d':>6} {'d/sqrtD':>8} {'sparse ms':>10} {'fastfood ms':>12} {'sparse/fastfood':>16}")
    for D, dims in ({args.D: args.d} if args.D else GRID).items():
        g = torch.randn(D)
        for d in dims:
            F, S = FastfoodProjection(D, d, seed=1), SparseSignProjection(D, d, seed=1)
            x = torch.randn(d)
            f, s = least_interleaved([lambda P=F, x=x, g=g: (P.matvec(x), P.rmatvec(g)),
                                      lambda P=S, x=x, g=g: (P.matvec(x), P.rmatvec(g))], args.repeats)
            print(f"{D:>8,} {d:>6,} {d / D ** 0.5:>8.1f} {s * 1e3:>10.3f} {f * 1e3:>12.3f} {s / f:>16.2f}", flush=True)


if __name__ == "__main__":
    main()
