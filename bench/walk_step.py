"""A progressive gradient-walk step against one loss_and_grad of the same points (issue 26), on one torch
thread (side by side in one process; the pytest group walk-step-mnist-784-100x3 times the same on the
default threads, where a loaded machine's thread-pool wake-ups swamp it).

    PYTHONPATH=python python bench/walk_step.py [walkers=16] [steps=10]

Bosman's widest MNIST net, 784-100-100-100-10 ELU (D = 99,710), a batch of 100 MNIST-shaped rows.
Prints ms per walker-step for both and their ratio (target: <= 1.3).
"""
import sys
import time

import torch
from lscape import Landscape
from lscape.probes import progressive_walk
from torch import nn


def main(W: int = 16, S: int = 10) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(784, 100), nn.ELU(), nn.Linear(100, 100), nn.ELU(), nn.Linear(100, 100), nn.ELU(),
                      nn.Linear(100, 10))
    X, Y = torch.randn(100, 784), torch.randint(0, 10, (100,))
    L = Landscape.from_module(m, nn.functional.cross_entropy, (X, Y))
    x = (torch.rand(W, L.dim) * 2 - 1) * 0.1
    L.loss_and_grad(x)
    res = {"loss_and_grad": [], "walk": []}
    for r in range(3):
        t0 = time.perf_counter()
        for _ in range(S + 1):
            L.loss_and_grad(x)
        res["loss_and_grad"].append((time.perf_counter() - t0) / (S + 1) / W * 1e3)
        t0 = time.perf_counter()
        progressive_walk(L, x, S, 0.01, None, True, seed=r)
        res["walk"].append((time.perf_counter() - t0) / (S + 1) / W * 1e3)
    for k, v in res.items():
        print(f"{k:>14}: min {min(v):.3f} ms per walker-step ({', '.join(f'{a:.3f}' for a in v)})")
    print(f"walk / loss_and_grad = {min(res['walk']) / min(res['loss_and_grad']):.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
