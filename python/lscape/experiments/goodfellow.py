"""Goodfellow, Vinyals & Saxe (2015), "Qualitatively characterizing neural network optimization problems".

    lscape reproduce goodfellow --scale smoke|default|paper --out DIR [--resume] [--data-dir DIR]

Fully connected networks (ReLU and logistic sigmoid) trained with SGD + momentum on digits (the
embedded default) or MNIST (paper scale, from --data-dir):
1. training and validation curves, and the parameters every `record_every` steps (the trajectory);
2. the loss along the line from the initial parameters to the solution, (1 - a) theta_i + a theta_f, at
   200 values of a in [-0.5, 1.5] (Fig 2), and at 200 values tiling [0, 1], [0, 0.01] and [0.99, 1]
   (Fig 3, ReLU);
3. the line between two solutions from different initialisations, and from a random point to a
   solution (Fig 4);
4. the trajectory projected on the init -> solution line: its coordinate there and the norm of the
   residual (Fig 5), with the fraction of the trajectory's variance the line captures.
Every line is evaluated in batched landscape calls (lscape.probes.interpolate).  Training checkpoints
after every epoch, so an interrupted run resumes exactly.
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

NAME = "goodfellow"
ACTIVATIONS = ("relu", "sigmoid")
# the four independent trainings: (activation, seed offset); two solutions per activation
TRAININGS = tuple((act, off) for act in ACTIVATIONS for off in (0, 1))


@dataclass(frozen=True)
class Config:
    """One scale of the experiment (every field lands in config.json)."""

    scale: str
    dataset: str  # "digits" (embedded) or "mnist" (data_dir)
    hidden: tuple[int, ...]
    epochs: int
    batch: int = 64
    lr: dict | None = None  # per activation; None: {"relu": 0.05, "sigmoid": 0.2} (0.5 does not train on digits)
    momentum: float = 0.9
    record_every: int = 10  # steps between trajectory points (and one at the end of every epoch)
    alphas: int = 200
    train_points: int | None = None  # evaluate the landscape on at most this many training points
    seed: int = 0
    chunk: int = 25  # points per landscape call (memory)

    def lr_of(self, act: str) -> float:
        return (self.lr or {"relu": 0.05, "sigmoid": 0.2})[act]


SCALES: dict[str, Config] = {
    "smoke": Config("smoke", "digits", hidden=(32,), epochs=2, record_every=5, alphas=24, train_points=256),
    # digits, two hidden layers of 200: about two minutes on a 2-core CPU
    "default": Config("default", "digits", hidden=(200, 200), epochs=30),
    # MNIST (from --data-dir), the paper's fully connected sizes are not given; 2 x 1024 is typical of it
    "paper": Config("paper", "mnist", hidden=(1024, 1024), epochs=30, batch=100, record_every=100,
                    train_points=10_000, chunk=10),
}


PLOTS = "goodfellow_plots"


config, replot = common.module_functions(__name__)  # config(scale, **overrides), replot(out)


def make_model(cfg: Config, n_in: int, n_out: int, act: str, seed: int) -> nn.Sequential:
    """The fully connected net with torch's default initialisation drawn from `seed`."""
    torch.manual_seed(seed)
    sizes = (n_in, *cfg.hidden)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=False):
        layers += [nn.Linear(a, b), nn.ReLU() if act == "relu" else nn.Sigmoid()]
    layers.append(nn.Linear(sizes[-1], n_out))
    return nn.Sequential(*layers)


def flat(model: nn.Module) -> torch.Tensor:
    return FlatLayout.of(model).flatten(model)


def train_one(cfg: Config, d: datasets.Split, act: str, seed: int) -> dict[str, np.ndarray]:
    """SGD + momentum for cfg.epochs from the initialisation of `seed` (its batches drawn from
    (cfg.seed, seed, epoch) streams, so the result depends on nothing else).
    -> theta_i, theta_f (D,), trajectory (T, D), and per epoch train/val loss and accuracy (epochs, 4)."""
    model = make_model(cfg, d.x_train.shape[1], d.n_classes, act, seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr_of(act), momentum=cfg.momentum)
    theta_i = flat(model).numpy()
    N = d.x_train.shape[0]
    n_batches = -(-N // cfg.batch)
    traj, curves = [theta_i[None]], []
    for epoch in range(cfg.epochs):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + seed * 1009 + epoch)
        order = torch.randperm(N, generator=g)
        for s, i in enumerate(range(0, N, cfg.batch)):
            idx = order[i:i + cfg.batch]
            opt.zero_grad()
            F.cross_entropy(model(d.x_train[idx]), d.y_train[idx]).backward()
            opt.step()
            # every record_every steps, and at the end of each epoch (so the trajectory ends at theta_f)
            if (s + 1) % cfg.record_every == 0 or s + 1 == n_batches:
                traj.append(flat(model).numpy()[None])
        curves.append(evaluate(model, d.x_train, d.y_train) + evaluate(model, d.x_test, d.y_test))
    return {"theta_i": theta_i, "theta_f": flat(model).numpy(), "trajectory": np.concatenate(traj),
            "curves": np.array(curves, dtype=np.float64).reshape(-1, 4)}


def _training(k: int, job: tuple[Config, datasets.Split]) -> dict[str, np.ndarray]:
    """Chunk k: the training TRAININGS[k] = (activation, seed offset)."""
    cfg, d = job
    act, off = TRAININGS[k]
    return train_one(cfg, d, act, cfg.seed + off)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of model on x, y."""
    out = model(x)
    return float(F.cross_entropy(out, y)), float((out.argmax(1) == y).double().mean())


def _alphas(cfg: Config) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The wide line's alphas and the zoomed tiles' (unit interval, its start, its end)."""
    tiles = {"unit": np.linspace(0.0, 1.0, cfg.alphas), "start": np.linspace(0.0, 0.01, cfg.alphas),
             "end": np.linspace(0.99, 1.0, cfg.alphas)}
    return np.linspace(-0.5, 1.5, cfg.alphas), tiles


def _lines(k: int, job: tuple[Config, datasets.Split, tuple[torch.Tensor, torch.Tensor], dict]) -> dict[str, Any]:
    """Chunk k: the lines of activation ACTIVATIONS[k]: init -> solution on train (subset) and validation
    data, between the two solutions, random point -> solution, and (ReLU) the zoomed tiles."""
    from ..probes.lines import interpolate

    cfg, d, (xs, ys), trained = job
    act = ACTIVATIONS[k]
    first, second = trained[(act, 0)], trained[(act, 1)]
    model = make_model(cfg, d.x_train.shape[1], d.n_classes, act, cfg.seed)
    train_L = Landscape.from_module(model, F.cross_entropy, (xs, ys), chunk=cfg.chunk)
    val_L = Landscape.from_module(model, F.cross_entropy, (d.x_test, d.y_test), chunk=cfg.chunk)
    ti, tf, tf2 = (torch.from_numpy(first["theta_i"]), torch.from_numpy(first["theta_f"]),
                   torch.from_numpy(second["theta_f"]))
    # a random point: another draw of the initialisation, scaled to the solution's norm
    tr = torch.from_numpy(initial_params(cfg, d, act, cfg.seed + 2)) * (tf.norm() / max(float(ti.norm()), 1e-12))
    wide, tiles = _alphas(cfg)
    ck = {"wide_train": interpolate(train_L, ti, tf, wide).numpy(),
          "wide_val": interpolate(val_L, ti, tf, wide).numpy(),
          "two_solutions": interpolate(train_L, tf, tf2, wide).numpy(),
          "random_to_solution": interpolate(train_L, tr, tf, wide).numpy()}
    if act == "relu":
        for name, a in tiles.items():
            ck[f"tile_{name}"] = interpolate(train_L, ti, tf, a).numpy()
    return ck


def run(scale: str = "default", out: str = "goodfellow", *, resume: bool = False, progress: bool = True,
        data_dir: str | None = None, stop_after_chunks: int | None = None, figures: bool = True,
        executor=None, **overrides: Any) -> dict[str, Any]:
    """Run (or resume) the experiment into folder `out`: the four trainings, then each activation's
    lines, every one a chunk on `executor`; returns the summary (also in summary.json)."""
    from ..probes.lines import project_trajectory

    cfg = config(scale, **overrides)
    d = datasets.load(cfg.dataset, data_dir)  # fails before any training when the files are missing
    ctx = common.start(cfg, out, resume=resume, progress=progress, stop_after_chunks=stop_after_chunks,
                       figures=figures, executor=executor)
    sub = torch.randperm(d.x_train.shape[0], generator=torch.Generator().manual_seed(cfg.seed))
    sub = sub[:cfg.train_points] if cfg.train_points else sub
    xs, ys = d.x_train[sub], d.y_train[sub]
    rows = ctx.chunks([f"train_{act}_{off}" for act, off in TRAININGS], _training, shared=(cfg, d),
                      label="trainings")
    trained = dict(zip(TRAININGS, rows, strict=False))
    lines = ctx.chunks([f"lines_{act}" for act in ACTIVATIONS], _lines, shared=(cfg, d, (xs, ys), trained),
                       label="lines")
    res: dict[str, Any] = {}
    summary: dict[str, Any] = {"experiment": NAME, "scale": cfg.scale, "dataset": cfg.dataset,
                               "train_points_in_landscape": int(xs.shape[0])}
    wide, tiles = _alphas(cfg)
    for act, ck in zip(ACTIVATIONS, lines, strict=False):
        first, second = trained[(act, 0)], trained[(act, 1)]
        ti, tf = torch.from_numpy(first["theta_i"]), torch.from_numpy(first["theta_f"])
        coord, resid = project_trajectory(torch.from_numpy(first["trajectory"]), ti, tf)
        coord, resid = coord.numpy(), resid.numpy()
        res.update({f"{act}_{k}": v for k, v in ck.items()})
        res.update({f"{act}_curves": first["curves"], f"{act}_curves_second": second["curves"],
                    f"{act}_coord": coord, f"{act}_residual": resid})
        summary[act] = _line_summary(first, second, ck, wide, coord, resid, tf - ti)
    res["alphas_wide"] = wide
    res.update({f"alphas_{k}": v for k, v in tiles.items()})
    return ctx.finish(sys.modules[__name__], res, summary)


def initial_params(cfg: Config, d: datasets.Split, act: str, seed: int) -> np.ndarray:
    """The initial parameters the net of `seed` would start from."""
    return flat(make_model(cfg, d.x_train.shape[1], d.n_classes, act, seed)).numpy()


def _max_rise(J: np.ndarray) -> float:
    """Largest increase of J after a lower point along the line (0 for a curve that never goes up)."""
    return float(np.max(J - np.minimum.accumulate(J)))


def _line_summary(first, second, ck, wide, coord, resid, delta) -> dict[str, Any]:
    inside = (wide >= 0) & (wide <= 1)
    J = ck["wide_train"][inside]
    two = ck["two_solutions"][inside]
    c = first["curves"]
    # variance of the trajectory about its mean, and the part of it along the init -> solution line
    along = ((coord - coord.mean()) ** 2).sum() * float(delta.double().norm() ** 2)
    total = along + (resid ** 2).sum()
    return {
        "final_train_loss": float(c[-1, 0]) if len(c) else math.nan,
        "final_train_accuracy": float(c[-1, 1]) if len(c) else math.nan,
        "final_val_loss": float(c[-1, 2]) if len(c) else math.nan,
        "final_val_accuracy": float(c[-1, 3]) if len(c) else math.nan,
        "init_to_solution_max_rise_on_0_1": _max_rise(J),
        "init_to_solution_monotone_on_0_1": bool(np.all(np.diff(J) <= 1e-6 * max(1.0, abs(J).max()))),
        "two_solutions_barrier": float(two.max() - max(two[0], two[-1])),
        "random_to_solution_max_rise": _max_rise(ck["random_to_solution"][inside]),
        "distance_init_to_solution": float(delta.double().norm()),
        "trajectory_points": int(len(coord)),
        "trajectory_max_residual": float(resid.max()) if len(resid) else math.nan,
        "trajectory_fraction_of_variance_on_line": float(along / total) if total > 0 else math.nan,
    }
