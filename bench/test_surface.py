"""Benchmark of lscape.surface: a 41 x 41 surface of a small CNN (Conv(1->8, 3x3) - BatchNorm - ReLU -
Linear(288 -> 10)) on the embedded digits (lscape.data.digits(), 8x8 images, float32, CPU), at
center + a u + b v on a [-1, 1]^2 grid.

Group `surface-41x41`:
  lscape           lscape.surface(..., test_data=...): train loss + accuracy and test loss + accuracy
                   (1,438 + 360 images) in the same forward passes, BatchNorm in eval mode; the first
                   conv layer through the affine cache (lscape._affine)
  loss-landscapes  loss_landscapes.planar_interpolation(model, model+u, model+v, Loss(...), steps=41):
                   train loss only, one forward pass per point (its grid is model + (i u + j v)/41, so
                   the points differ from lscape's but the work per point is the same)
Both get the same u, v (lscape.directions.random_directions, filter-normalised, biases/BN ignored);
lscape's values are checked against a plain loop in tests/test_surface.py.  Target: lscape <= 1.2x
loss-landscapes' time although it computes 4 numbers on 1.25x the data.
"""
from __future__ import annotations

import copy

import lscape
import lscape.data
import numpy as np
import pytest
import torch
from lscape._flat import FlatLayout
from lscape.directions import random_directions
from torch import nn

N = 41
CE = nn.functional.cross_entropy


@pytest.fixture(scope="module")
def case():
    d = lscape.data.digits()
    X, Y = d.x_train.reshape(-1, 1, 8, 8), d.y_train
    Xt, Yt = d.x_test.reshape(-1, 1, 8, 8), d.y_test
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10))
    m.eval()
    return m, X, Y, Xt, Yt, random_directions(m, 2, seed=0)


def _lscape(m, X, Y, Xt, Yt, dirs):
    def run():
        s = lscape.surface(m, CE, (X, Y), test_data=(Xt, Yt), directions=dirs, grid=N)
        return s["train_loss"]
    return run


def _loss_landscapes(m, X, Y, Xt, Yt, dirs):
    ll = pytest.importorskip("loss_landscapes", reason="loss-landscapes (bench extra) is the peer timed here")
    from loss_landscapes.metrics import Loss

    layout = FlatLayout.of(m)
    c = layout.flatten(m)
    ends = []
    for k in range(2):
        e = copy.deepcopy(m)
        layout.load(e, c + torch.as_tensor(dirs.vectors[k], dtype=c.dtype))
        ends.append(e)
    metric = Loss(CE, X, Y)

    def run():
        return np.asarray(ll.planar_interpolation(m, ends[0], ends[1], metric, steps=N, deepcopy_model=True))
    return run


CONTENDERS = {"lscape": _lscape, "loss-landscapes": _loss_landscapes}


@pytest.mark.parametrize("contender", list(CONTENDERS))
def test_surface(bench_run, benchmark, case, contender):
    benchmark.group = f"surface-{N}x{N}"
    fn = CONTENDERS[contender](*case)
    bench_run(fn, contender, min_rounds=2, model_steps=N * N, D=FlatLayout.of(case[0]).dim,
              P=int(case[1].shape[0]), device="cpu")
