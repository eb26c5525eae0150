"""Benchmark of progressive gradient walks (Bosman et al. 2019) on the 5x5 W_f landscape (Gamst & Walker:
D = 136, the P = 321 point W_f training set), float32 on the CPU.

Group `probe-walk-5x5`: micro walks (Bosman et al. §III-C: step bound 1% of the initialisation range
[-1, 1]), walkers kept inside [-1, 1]; one walker-step = the loss and gradient at the walker's point
(recorded for the loss-gradient cloud) plus one progressive gradient step.  Side by side in one run:

  lscape cpu                     lscape.probes.progressive_walk with 1,000 walkers: one fused-kernel
                                 loss_and_grad call for all walkers per step
  torch nn.Sequential, 1 walker  what a researcher would write after Bosman's fla-in-tf: one walker at a
                                 time, a torch nn.Sequential 5x5 (TinyMLP.to_module), autograd for the
                                 gradient each step, loss and gradient norm recorded, the same step rule
                                 (random U(0, bound) per weight against the gradient sign, reflected at
                                 the bounds)

The speed is walker-steps per second (extra_info["model_steps"] holds walkers * steps); the target is
lscape >= 10x the one-walker peer.  The ratio is printed at the end of the group.
"""
from __future__ import annotations

import pytest
import torch
from lscape import Landscape, TinyMLP
from lscape.probes.walks import progressive_walk
from lscape.tinymlp import wf_training_set

W = 1000
BOUND = 0.02  # micro walk: 1% of the initialisation range [-1, 1]
BOX = (-1.0, 1.0)
PEER_WALKERS = 4
# Rough speeds (walker-steps/s) to size each call to ~0.5 s; a wrong guess only changes the rounds.
GUESS = {"lscape": 1.5e5, "peer": 1e3}
LABELS = {"lscape": "lscape cpu", "peer": "torch nn.Sequential, 1 walker"}
TARGET = 10.0
_RATES: dict[str, float] = {}


def _landscape() -> tuple[TinyMLP, Landscape, torch.Tensor, torch.Tensor]:
    spec = TinyMLP(5, 5)
    x, y = wf_training_set()
    return spec, Landscape.from_mlp(spec, x, y), x, y


def peer_walk(spec: TinyMLP, start: torch.Tensor, x: torch.Tensor, y: torch.Tensor, steps: int,
              gen: torch.Generator) -> tuple[list[float], list[float]]:
    """One progressive gradient walk on an nn.Sequential with autograd: (losses, gradient norms)."""
    model = spec.to_module(start)
    params = list(model.parameters())
    X = x[:, None]
    losses, norms = [], []
    for s in range(steps + 1):
        model.zero_grad(set_to_none=True)
        loss = ((model(X)[:, 0] - y) ** 2).mean()
        loss.backward()
        losses.append(loss.item())
        norms.append(torch.sqrt(sum((p.grad * p.grad).sum() for p in params)).item())
        if s == steps:
            break
        with torch.no_grad():
            for p in params:
                r = torch.rand(p.shape, generator=gen) * BOUND
                p.add_(torch.where(p.grad > 0, -r, r))
                p.copy_(torch.where(p > BOX[1], 2 * BOX[1] - p, torch.where(p < BOX[0], 2 * BOX[0] - p, p)))
    return losses, norms


def _check_agreement() -> None:
    """Before timing: the peer's network gives lscape's loss and gradient norm at the same starts."""
    spec, L, x, y = _landscape()
    res = progressive_walk(L, 4, 0, BOUND, BOX)
    for w in range(4):
        losses, norms = peer_walk(spec, res.start[w], x, y, 0, torch.Generator().manual_seed(0))
        assert abs(losses[0] - float(res.loss[w, 0])) <= 1e-5 * max(1.0, losses[0]), "losses disagree"
        assert abs(norms[0] - float(res.grad_norm[w, 0])) <= 1e-4 * max(1.0, norms[0]), "gradients disagree"


@pytest.mark.parametrize("contender", ["lscape", "peer"])
def test_walk(bench_run, benchmark, capsys, contender):
    benchmark.group = "probe-walk-5x5"
    spec, L, x, y = _landscape()
    if contender == "lscape":
        _check_agreement()
        walkers = W
        steps = max(1, int(0.5 * GUESS["lscape"] / W))

        def fn():
            return progressive_walk(L, W, steps, BOUND, BOX, seed=0)
    else:
        walkers = PEER_WALKERS
        steps = max(1, int(0.5 * GUESS["peer"] / PEER_WALKERS))
        starts = progressive_walk(L, PEER_WALKERS, 0, BOUND, BOX, seed=0).start  # the same starts

        def fn():
            gen = torch.Generator().manual_seed(0)
            return [peer_walk(spec, starts[w], x, y, steps, gen) for w in range(PEER_WALKERS)]

    bench_run(fn, LABELS[contender], min_rounds=3, model_steps=walkers * steps, walkers=walkers, steps=steps,
              P=int(x.shape[0]), D=spec.dim, device="cpu", step_bound=BOUND)
    rate = walkers * steps / benchmark.stats.stats.median
    benchmark.extra_info["model_steps_per_s"] = rate
    _RATES[contender] = rate
    if len(_RATES) == 2:
        ratio = _RATES["lscape"] / _RATES["peer"]
        benchmark.extra_info["speedup_of_lscape"] = ratio
        verdict = "PASS" if ratio >= TARGET else "MISS"
        with capsys.disabled():  # shown even under -q
            print(f"\n[probe-walk-5x5] lscape cpu {_RATES['lscape']:,.0f} walker-steps/s, one-walker nn.Sequential "
                  f"peer {_RATES['peer']:,.0f}: {ratio:.1f}x  [{verdict} >= {TARGET:.0f}x]")


# ---- issue 26: a walk step at the gradient's cost -------------------------------------------------------
# Group `walk-step-mnist-784-100x3`: Bosman's widest MNIST net (784-100-100-100-10 ELU, D = 99,710), a batch
# of 100 MNIST-shaped rows (Gaussian pixels: the timing does not depend on them), 16 walkers, 5 steps:
#   lscape walk      progressive_walk(L, starts, 5, ...): 6 loss_and_grad calls plus 5 steps
#   loss_and_grad    6 loss_and_grad calls of the same 16 points: the walk's floor
# Target (issue 26): lscape walk <= 1.3x loss_and_grad.
MNIST_W, MNIST_STEPS = 16, 5


@pytest.fixture(scope="module")
def mnist_walk_case():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    widths = [784, 100, 100, 100, 10]
    layers = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [torch.nn.Linear(a, b), torch.nn.ELU()]
    model = torch.nn.Sequential(*layers[:-1])
    X, Y = torch.randn(100, 784, generator=g), torch.randint(0, 10, (100,), generator=g)
    L = Landscape.from_module(model, torch.nn.functional.cross_entropy, (X, Y))
    starts = (torch.rand(MNIST_W, L.dim, generator=g) * 2 - 1) * 0.1
    return L, starts


@pytest.mark.parametrize("contender", ["lscape walk", "loss_and_grad"])
def test_walk_step_mnist(bench_run, benchmark, mnist_walk_case, contender):
    L, starts = mnist_walk_case
    benchmark.group = "walk-step-mnist-784-100x3"
    if contender == "lscape walk":
        def fn():
            return progressive_walk(L, starts, MNIST_STEPS, 0.01, None, True, seed=0).loss
    else:
        def fn():
            return [L.loss_and_grad(starts) for _ in range(MNIST_STEPS + 1)]
    bench_run(fn, contender, min_rounds=3, model_steps=MNIST_W * (MNIST_STEPS + 1), D=L.dim, P=100, device="cpu")
