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
lscape runs a row's points 7-8 per call (lscape._batched.BatchedForward).  Both get the same u, v
(lscape.directions.random_directions, filter-normalised, biases/BN ignored);
lscape's values are checked against a plain loop in tests/test_surface.py.  Target (issue 26): lscape
>= 1.5x loss-landscapes' speed although it computes 4 numbers on 1.25x the data.

Group `surface-resnet20-2x2`: the same surface, train loss and accuracy only, of ResNet-20
(lscape.models.resnet20: BatchNorm in eval mode with non-trivial statistics, D = 272,474) on 512
CIFAR-shaped images (3 x 32 x 32, Gaussian pixels: the timing does not depend on them) at 2 x 2 points:
  lscape               lscape.surface (BatchNorm folded, channels-last convolutions: lscape._modeleval);
                       its losses are checked against the plain loop's, same points
  plain model(X) loop  vector_to_parameters of each point into a model copy, then CE(model(X), Y)
  loss-landscapes      planar_interpolation(..., steps=2) as above
Targets (issue 26): lscape >= 1.7x the plain loop and >= 1.7x loss-landscapes.
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
from lscape.models import resnet20
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


def _loss_landscapes_surface(m, X, Y, dirs, steps):
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
    return lambda: np.asarray(ll.planar_interpolation(m, ends[0], ends[1], metric, steps=steps, deepcopy_model=True))


def _loss_landscapes(m, X, Y, Xt, Yt, dirs):
    return _loss_landscapes_surface(m, X, Y, dirs, N)


CONTENDERS = {"lscape": _lscape, "loss-landscapes": _loss_landscapes}


@pytest.mark.parametrize("contender", list(CONTENDERS))
def test_surface(bench_run, benchmark, case, contender):
    benchmark.group = f"surface-{N}x{N}"
    fn = CONTENDERS[contender](*case)
    bench_run(fn, contender, min_rounds=2, model_steps=N * N, D=FlatLayout.of(case[0]).dim,
              P=int(case[1].shape[0]), device="cpu")


# ---- ResNet-20 with BatchNorm ------------------------------------------------------------------------------
RN_GRID, RN_IMAGES = 2, 512


@pytest.fixture(scope="module")
def resnet_case():
    m = resnet20(1, 10, 3, seed=0)
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(RN_IMAGES, 3, 32, 32, generator=g), torch.randint(0, 10, (RN_IMAGES,), generator=g)
    return m, X, Y, random_directions(m, 2, seed=0)


def _plain_loop(m, probe, dirs, grid: int):
    """What a user writes by hand: load each point into a model copy, then probe(model) under no_grad."""
    mm = copy.deepcopy(m)
    c = FlatLayout.of(m).flatten(m).double()
    u, v = (torch.as_tensor(d) for d in dirs.vectors)
    axis = np.linspace(-1.0, 1.0, grid)

    def run():
        out = np.zeros((grid, grid))
        with torch.no_grad():
            for i, a in enumerate(axis):
                for j, b in enumerate(axis):
                    torch.nn.utils.vector_to_parameters((c + a * u + b * v).float(), mm.parameters())
                    out[i, j] = float(probe(mm))
        return out
    return run


def _rn_plain(m, X, Y, dirs):
    return _plain_loop(m, lambda mm: CE(mm(X), Y), dirs, RN_GRID)


def _rn_lscape(m, X, Y, dirs):
    want = _rn_plain(m, X, Y, dirs)()

    def run():
        got = lscape.surface(m, CE, (X, Y), directions=dirs, grid=RN_GRID)["train_loss"]
        np.testing.assert_allclose(got, want, rtol=1e-4)  # the plain loop's values (float32 convolutions)
        return got
    return run


RN_CONTENDERS = {"lscape": _rn_lscape, "plain model(X) loop": _rn_plain,
                 "loss-landscapes": lambda m, X, Y, dirs: _loss_landscapes_surface(m, X, Y, dirs, RN_GRID)}


@pytest.mark.parametrize("contender", list(RN_CONTENDERS))
def test_surface_resnet20(bench_run, benchmark, resnet_case, contender):
    benchmark.group = f"surface-resnet20-{RN_GRID}x{RN_GRID}"
    m, X, Y, dirs = resnet_case
    fn = RN_CONTENDERS[contender](m, X, Y, dirs)
    bench_run(fn, contender, min_rounds=2, model_steps=RN_GRID * RN_GRID, D=FlatLayout.of(m).dim, P=RN_IMAGES,
              device="cpu")


# ---- transformers -------------------------------------------------------------------------------------------
# Group `surface-nanogpt-5x5`: the reference nanoGPT (lscape.models.nanogpt: 4 blocks, d_model 128, 4 heads,
# context 64, vocab 65, tied head, F.scaled_dot_product_attention; D = 809,856) on 64 sequences of 64
# tokens, shifted targets, token cross-entropy and token accuracy, at 5 x 5 points; group
# `surface-gpt2-2x2`: Hugging Face GPT-2 small from its configuration (124 M parameters, 8 sequences of
# 128 tokens, its own loss, mapping batches with labels) at 2 x 2 points.  Each against the plain loop a
# user writes (vector_to_parameters into a copy, then the model).  Targets (issue 36): nanoGPT >= 1.3x the
# plain loop, GPT-2 never slower than it.
TF_CASES = {"nanogpt": 5, "gpt2": 2}


@pytest.fixture(scope="module", params=list(TF_CASES))
def transformer_case(request):
    from lscape.models import nanogpt

    g = torch.Generator().manual_seed(0)
    if request.param == "nanogpt":
        m = nanogpt()
        seq = torch.randint(0, 65, (64, 65), generator=g)
        batch = (seq[:, :-1], seq[:, 1:])
        return "nanogpt", m, lscape.token_cross_entropy, batch, lambda mm: lscape.token_cross_entropy(mm(batch[0]),
                                                                                                      batch[1])
    transformers = pytest.importorskip("transformers", reason="the GPT-2 row builds transformers' GPT2Config()")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    m = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    ids = torch.randint(0, 50257, (8, 128), generator=g)
    batch = {"input_ids": ids, "labels": ids}
    return "gpt2", m, None, batch, lambda mm: mm(**batch).loss


@pytest.mark.parametrize("contender", ["lscape", "plain model(X) loop"])
def test_surface_transformer(bench_run, benchmark, transformer_case, contender):
    name, m, loss, batch, probe = transformer_case
    grid = TF_CASES[name]
    benchmark.group = f"surface-{name}-{grid}x{grid}"
    dirs = random_directions(m, 2, seed=0)
    plain = _plain_loop(m, probe, dirs, grid)
    if contender == "lscape":
        want = plain()

        def fn():
            got = lscape.surface(m, loss, batch, directions=dirs, grid=grid)["train_loss"]
            np.testing.assert_allclose(got, want, rtol=1e-4)  # the plain loop's values
            return got
    else:
        fn = plain
    bench_run(fn, contender, min_rounds=2, model_steps=grid * grid, D=FlatLayout.of(m).dim, P=64, device="cpu")
