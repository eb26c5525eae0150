"""Huang et al. (2019), "Understanding generalization through visualizations".

    lscape reproduce huang --scale smoke|default|paper --out DIR [--resume]

A small ReLU classifier on a 2D problem (two moons):
1. good minima: trained from different initialisations on the clean training set;
2. bad minima: trained on the training set plus a "poison" set drawn from the same distribution with
   flipped labels (loss = CE(train) + poison_weight * ratio * CE(poison), ratio = poison points per
   training point), so they still fit the training set but generalise badly (more poison, worse);
3. for every minimum: train and test accuracy, the generalisation gap, and the log-volume of its basin
   {theta : training loss < basin_threshold} (lscape.probes.basin_volume along random rays);
4. figures: log10 basin volume against generalisation gap; decision boundaries of a good and a bad
   minimum; a t-SNE (scikit-learn, perplexity 30) of SGD iterates of a good run among the bad minima.
Each trained network and each basin estimate is checkpointed, so an interrupted run resumes.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import data as datasets
from .._flat import FlatLayout
from ..landscape import Landscape
from . import common
from .stats import spearman

NAME = "huang"


@dataclass(frozen=True)
class Config:
    scale: str
    n_train: int = 100
    n_test: int = 2000
    noise: float = 0.15
    hidden: tuple[int, ...] = (64, 64)
    good: int = 8  # good minima (initialisations)
    poison_ratios: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)  # poison points per training point
    # weight of the poison term per unit ratio: with equal weights (1.0) the poison wins and the minima stop
    # fitting the training set (measured: ratio 1 -> 93% train accuracy, loss 0.17); 0.2 keeps the training
    # loss below the basin threshold
    poison_weight: float = 0.2
    bad_repeats: int = 2  # bad minima per ratio
    steps: int = 2000  # full-batch Adam steps
    lr: float = 0.01
    record_every: int = 100  # SGD iterates kept for the t-SNE
    basin_threshold: float = 0.1  # Huang et al.: basins are the points with loss below 0.1
    n_rays: int = 200
    r_max: float = 50.0
    seed: int = 0


SCALES: dict[str, Config] = {
    "smoke": Config("smoke", n_train=40, n_test=200, hidden=(16, 16), good=2, poison_ratios=(0.5,), bad_repeats=2,
                    steps=600, record_every=60, n_rays=24),
    "default": Config("default"),
    "paper": Config("paper", hidden=(128, 128), good=32, poison_ratios=(0.25, 0.5, 0.75, 1.0, 1.5, 2.0),
                    bad_repeats=6, steps=10_000, n_rays=2000,
                    # at r_max 50, 1 to 34 of the 2,000 rays of every good minimum were censored (its radii
                    # reach about 60): log V, which the longest rays dominate, then only bounds it from below
                    r_max=200.0),
}


PLOTS = "huang_plots"


config, replot = common.module_functions(__name__)  # config(scale, **overrides), replot(out)


def make_model(cfg: Config, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    sizes = (2, *cfg.hidden)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=False):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(sizes[-1], 2))
    return nn.Sequential(*layers)


def _flat(model: nn.Module) -> np.ndarray:
    return FlatLayout.of(model).flatten(model).numpy()


def train_one(cfg: Config, seed: int, x: torch.Tensor, y: torch.Tensor, px: torch.Tensor, py: torch.Tensor,
              poison_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Full-batch Adam on CE(x, y) + poison_weight * CE(px, py) from the init of `seed`: final parameters
    (D,) and the iterates (T, D)."""
    model = make_model(cfg, seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    iterates = [_flat(model)]
    for s in range(cfg.steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if len(px):
            loss = loss + poison_weight * F.cross_entropy(model(px), py)
        loss.backward()
        opt.step()
        if (s + 1) % cfg.record_every == 0:
            iterates.append(_flat(model))
    return _flat(model), np.stack(iterates)


def _accuracy(cfg: Config, theta: np.ndarray, x: torch.Tensor, y: torch.Tensor) -> float:
    model = make_model(cfg, 0)
    FlatLayout.of(model).load(model, torch.from_numpy(theta))
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def problem(cfg: Config) -> tuple[datasets.Split, torch.Tensor, torch.Tensor]:
    """The clean split and a pool of poison points (same distribution, flipped labels)."""
    n = cfg.n_train + cfg.n_test
    d = datasets.two_moons(n, noise=cfg.noise, test_fraction=cfg.n_test / n, seed=cfg.seed)
    n_poison = int(math.ceil(max(cfg.poison_ratios) * cfg.n_train))
    pool = datasets.two_moons(2 * n_poison, noise=cfg.noise, test_fraction=0.5, seed=cfg.seed + 7919)
    return d, pool.x_train[:n_poison], 1 - pool.y_train[:n_poison]


def minima_runs(cfg: Config) -> list[tuple[str, int, float]]:
    """(kind, seed, poison ratio) of every minimum, in run order."""
    runs = [("good", cfg.seed + 100 + k, 0.0) for k in range(cfg.good)]
    return runs + [("bad", cfg.seed + 200 + 10 * i + j, r) for i, r in enumerate(cfg.poison_ratios)
                   for j in range(cfg.bad_repeats)]


def _minimum(k: int, job: tuple[Config, datasets.Split, torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """Chunk k: train minimum k (poisoned by its ratio), its accuracies and, inside the loss threshold,
    its basin volume."""
    from ..probes.basin import basin_volume

    cfg, d, px, py = job
    _, seed, ratio = minima_runs(cfg)[k]
    n_p = int(round(ratio * cfg.n_train))
    land = Landscape.from_module(make_model(cfg, 0), F.cross_entropy, (d.x_train, d.y_train), chunk=256)
    with common.torch_threads(1):
        theta, iterates = train_one(cfg, seed, d.x_train, d.y_train, px[:n_p], py[:n_p], cfg.poison_weight * ratio)
    loss = float(land.loss(torch.from_numpy(theta)[None])[0])
    ck = {"theta": theta, "iterates": iterates, "train_loss": loss,
          "train_acc": _accuracy(cfg, theta, d.x_train, d.y_train),
          "test_acc": _accuracy(cfg, theta, d.x_test, d.y_test), "log_volume": math.nan,
          "log_volume_se": math.nan, "censored": 0}
    if loss < cfg.basin_threshold:
        b = basin_volume(land, torch.from_numpy(theta), cfg.basin_threshold, n_rays=cfg.n_rays,
                         r_max=cfg.r_max, seed=cfg.seed + k)
        ck.update(log_volume=b.log_volume, log_volume_se=b.log_volume_se, censored=int(b.censored.sum()),
                  radii=b.radii.numpy())
    return ck


def run(scale: str = "default", out: str = "huang", *, resume: bool = False, progress: bool = True,
        stop_after_chunks: int | None = None, figures: bool = True, executor=None,
        **overrides: Any) -> dict[str, Any]:
    """Run (or resume) the experiment into folder `out`, each minimum (training and basin volume) a chunk
    on `executor`; returns the summary (also in summary.json)."""
    cfg = config(scale, **overrides)
    ctx = common.start(cfg, out, resume=resume, progress=progress, stop_after_chunks=stop_after_chunks,
                       figures=figures, executor=executor)
    d, px, py = problem(cfg)
    runs = minima_runs(cfg)
    rows = ctx.chunks([f"minimum_{k}" for k in range(len(runs))], _minimum, shared=(cfg, d, px, py),
                      label="huang minima")

    kinds = np.array([r[0] for r in runs])
    arr = lambda key: np.array([float(r[key]) for r in rows])  # noqa: E731
    res: dict[str, Any] = {
        "kind_is_bad": kinds == "bad", "poison_ratio": np.array([r[2] for r in runs]),
        "train_loss": arr("train_loss"), "train_acc": arr("train_acc"), "test_acc": arr("test_acc"),
        "log_volume": arr("log_volume"), "log_volume_se": arr("log_volume_se"), "censored": arr("censored"),
        "thetas": np.stack([r["theta"] for r in rows]), "good_iterates": rows[0]["iterates"],
        "x_train": d.x_train.numpy(), "y_train": d.y_train.numpy(), "x_test": d.x_test.numpy(),
        "y_test": d.y_test.numpy(),
    }
    res["gap"] = res["train_acc"] - res["test_acc"]
    res["tsne"] = _tsne(res, cfg)
    return ctx.finish(sys.modules[__name__], res, _summary(cfg, res))


def _tsne(res: dict[str, Any], cfg: Config) -> np.ndarray:
    """2D t-SNE (perplexity 30, or less for few points) of the good run's iterates and the bad minima;
    NaN when scikit-learn is missing."""
    pts = np.concatenate([res["good_iterates"], res["thetas"][res["kind_is_bad"]]])
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        return np.full((len(pts), 2), np.nan)
    perplexity = float(min(30.0, max(2.0, (len(pts) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, random_state=cfg.seed, init="pca").fit_transform(pts)


def _summary(cfg: Config, res: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"experiment": NAME, "scale": cfg.scale, "dim": int(res["thetas"].shape[1])}
    for name, mask in (("good", ~res["kind_is_bad"]), ("bad", res["kind_is_bad"])):
        lv = res["log_volume"][mask]
        out[name] = {
            "minima": int(mask.sum()),
            "in_basin_threshold": int(np.isfinite(lv).sum()),
            "train_acc_mean": float(res["train_acc"][mask].mean()) if mask.any() else math.nan,
            "test_acc_mean": float(res["test_acc"][mask].mean()) if mask.any() else math.nan,
            "log10_volume_median": float(np.nanmedian(lv) / math.log(10)) if np.isfinite(lv).any() else math.nan,
        }
    g, b = out["good"]["log10_volume_median"], out["bad"]["log10_volume_median"]
    out["good_minus_bad_log10_volume"] = g - b
    ok = np.isfinite(res["log_volume"])
    if ok.sum() >= 3:
        out["spearman_gap_vs_log_volume"] = spearman(res["gap"][ok], res["log_volume"][ok])
    return out
