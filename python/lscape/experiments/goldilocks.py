"""Fort & Scherlis / Chang's Goldilocks study: training in random hyperplanes and on hyperspheres as a
function of the initialisation radius r0 (../shared/papers/000_b4bc172e9c85d111.txt, §III-V).

    lscape reproduce goldilocks --scale smoke|default|mnist|paper --out DIR [--resume] [--data-dir DIR]

A fully connected [inputs -> 200 -> 200 -> 10] ReLU network, softmax cross-entropy, Adam, trained
1. in a random d-dimensional hyperplane r = a + P theta through a point a of norm r0 (theta from 0),
2. on the random d-dimensional hypersphere |r| = |P theta| = r0 (lscape.SphereConstraint), and
3. in the full space (d = D) from a random point of norm r0, unconstrained,
for every d in `dims` and r0 on a log grid spanning six orders of magnitude around r_X, the typical
radius of the network's own initialisation (lscape.r_x).  Each cell records the validation accuracy after
`epochs` epochs and the radius r(t) after every step; the full-space trajectories are fitted with the
random-walk model (lscape.fit_random_walk: r^2 - r0^2 grows linearly in t).  Figures: accuracy against r0
per d with r_X marked (Fig 2a hyperplane, 2b hypersphere), r(t) on log-log axes and r^2 - r0^2 against t
(Fig 3).  Each cell is checkpointed; an interrupted sweep resumes without redoing finished cells.
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
from ..radial import RadiusRecorder, fit_random_walk, r_x
from ..subspace import Subspace
from . import common

NAME = "goldilocks"
KINDS = ("hyperplane", "hypersphere", "full")


@dataclass(frozen=True)
class Config:
    scale: str
    dataset: str = "digits"  # "digits" (embedded), "mnist" or "cifar10" (data_dir)
    hidden: tuple[int, ...] = (200, 200)
    dims: tuple[int, ...] = (10, 50, 250, 1000)  # d of the hyperplanes and hyperspheres
    r0_points: int = 13  # log grid of r0 over [r_X / 10**3, r_X * 10**3]
    r0_decades: float = 3.0  # half-width of the grid in decades around r_X
    epochs: int = 5
    batch: int = 64
    lr: float = 1e-2  # Adam; the subspace coordinates and the full space alike
    storage: str = "indices"
    record_every: int = 1  # optimizer steps between radius records
    seed: int = 0


SCALES: dict[str, Config] = {
    "smoke": Config("smoke", hidden=(32, 32), dims=(10, 40), r0_points=4, epochs=1),
    # digits (D = 55,210): 4 d x 13 r0 x 2 kinds + 13 full-space cells x 5 epochs, a few minutes on a CPU
    "default": Config("default"),
    # Fort & Scherlis's own data: MNIST's 784-200-200-10 net (D = 199,210), 2 epochs a cell on a CPU
    "mnist": Config("mnist", dataset="mnist", dims=(10, 100, 1000), r0_points=9, epochs=2, batch=128, lr=1e-3,
                    record_every=5),
    # the paper: CIFAR-10 (D = 656,810), d up to 9,000, a GPU job
    "paper": Config("paper", dataset="cifar10", dims=(10, 100, 1000, 3000, 9000), epochs=10, batch=128,
                    lr=1e-3, record_every=10),
}


PLOTS = "goldilocks_plots"


config, replot = common.module_functions(__name__)  # config(scale, **overrides), replot(out)


def make_model(cfg: Config, n_in: int, n_out: int) -> nn.Sequential:
    torch.manual_seed(cfg.seed)
    sizes = (n_in, *cfg.hidden)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=False):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(sizes[-1], n_out))
    return nn.Sequential(*layers)


def r0_grid(cfg: Config, rx: float) -> np.ndarray:
    return rx * np.logspace(-cfg.r0_decades, cfg.r0_decades, cfg.r0_points)


def cells(cfg: Config) -> list[tuple[str, int | None, int]]:
    """(kind, d (None for the full space), index into the r0 grid) of every cell, in run order."""
    out: list[tuple[str, int | None, int]] = []
    for kind in KINDS:
        for d in (cfg.dims if kind != "full" else (None,)):
            out += [(kind, d, k) for k in range(cfg.r0_points)]
    return out


def train_cell(cfg: Config, data: datasets.Split, kind: str, d: int | None, r0: float, seed: int
               ) -> dict[str, Any]:
    """Train one cell; -> validation accuracy and loss, the radius trajectory r(t) (every record_every
    steps, t = 0 first) and whether training stayed finite."""
    model = make_model(cfg, data.x_train.shape[1], data.n_classes)
    if kind == "full":
        # the full space from a random point of norm r0 (a "sphere" Subspace's start), trained unconstrained:
        # the model itself (Adam is elementwise, so this is the same run as on the flat vector)
        net = Subspace(model, None, kind="sphere", r0=r0, seed=seed).load_into_model()
    else:
        net = Subspace(model, d, kind=kind, r0=r0, seed=seed, storage=cfg.storage)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    if kind == "hypersphere":
        net.constrain(opt)
    rec = RadiusRecorder(net, every=cfg.record_every)
    rec.attach(opt)
    N = data.x_train.shape[0]
    finite = True
    for epoch in range(cfg.epochs):
        order = torch.randperm(N, generator=torch.Generator().manual_seed(seed * 1009 + epoch))
        for i in range(0, N, cfg.batch):
            idx = order[i:i + cfg.batch]
            opt.zero_grad()
            loss = F.cross_entropy(net(data.x_train[idx]), data.y_train[idx])
            if not torch.isfinite(loss):
                finite = False  # a diverged cell is reported, not fatal to the sweep
                break
            loss.backward()
            opt.step()
        if not finite:
            break
    rec.detach()
    with torch.no_grad():
        out = net(data.x_test)
        val_loss = float(F.cross_entropy(out, data.y_test))
        val_acc = float((out.argmax(1) == data.y_test).double().mean()) if finite else math.nan
    return {"val_acc": val_acc, "val_loss": val_loss if finite else math.nan, "t": np.asarray(rec.t, np.float64),
            "r": np.asarray(rec.r, np.float64), "finite": finite}


def _cell(c: int, job: tuple[Config, datasets.Split, np.ndarray]) -> dict[str, Any]:
    """Chunk c of the sweep: cell cells(cfg)[c], trained from its own seed."""
    cfg, data, grid = job
    kind, d, k = cells(cfg)[c]
    return train_cell(cfg, data, kind, d, float(grid[k]), cfg.seed + 1 + k)


def run(scale: str = "default", out: str = "goldilocks", *, resume: bool = False, progress: bool = True,
        data_dir: str | None = None, stop_after_chunks: int | None = None, figures: bool = True,
        executor=None, **overrides: Any) -> dict[str, Any]:
    """Run (or resume) the sweep into folder `out`, each cell a chunk on `executor` ("local", "ray" or an
    lscape.executor.Executor); returns the summary (also in summary.json)."""
    cfg = config(scale, **overrides)
    data = datasets.load(cfg.dataset, data_dir)
    ctx = common.start(cfg, out, resume=resume, progress=progress, stop_after_chunks=stop_after_chunks,
                       figures=figures, executor=executor)
    rx = r_x(make_model(cfg, data.x_train.shape[1], data.n_classes))
    grid = r0_grid(cfg, rx)
    todo = cells(cfg)
    rows = ctx.chunks([f"cell_{c}" for c in range(len(todo))], _cell, shared=(cfg, data, grid),
                      label="goldilocks cells")
    res: dict[str, Any] = {"r0": grid, "r_x": rx, "dims": np.array(cfg.dims)}
    for kind in KINDS:
        ds = cfg.dims if kind != "full" else (None,)
        acc = np.array([[float(rows[todo.index((kind, d, k))]["val_acc"]) for k in range(cfg.r0_points)]
                        for d in ds])
        res[f"{kind}_acc"] = acc  # (len(dims) or 1, r0_points)
    # radius trajectories of the full-space cells and their random-walk fits
    fits = []
    for k in range(cfg.r0_points):
        row = rows[todo.index(("full", None, k))]
        res[f"full_t_{k}"], res[f"full_r_{k}"] = row["t"], row["r"]
        ok = bool(row["finite"]) and len(row["t"]) > 2
        f = fit_random_walk(row["t"], row["r"], float(grid[k])) if ok else None
        fits.append([f.exponent, f.diffusion] if f is not None else [math.nan, math.nan])
    res["full_fit"] = np.array(fits)  # (r0_points, 2): log-log exponent, slope of r^2 - r0^2
    return ctx.finish(sys.modules[__name__], res, _summary(cfg, res))


def _summary(cfg: Config, res: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"experiment": NAME, "scale": cfg.scale, "dataset": cfg.dataset, "r_x": res["r_x"],
                           "r0_range": [float(res["r0"][0]), float(res["r0"][-1])]}
    k_rx = int(np.argmin(np.abs(np.log(res["r0"] / res["r_x"]))))
    for kind in KINDS:
        ds = cfg.dims if kind != "full" else ("D",)
        for i, d in enumerate(ds):
            acc = res[f"{kind}_acc"][i]
            best = int(np.nanargmax(acc)) if np.isfinite(acc).any() else 0
            out[f"{kind}_d{d}"] = {"best_val_acc": float(np.nanmax(acc)) if np.isfinite(acc).any() else math.nan,
                                   "best_r0": float(res["r0"][best]),
                                   "best_r0_over_r_x": float(res["r0"][best] / res["r_x"]),
                                   "val_acc_at_r_x": float(acc[k_rx]), "diverged_cells": int(np.isnan(acc).sum())}
    fit = res["full_fit"]
    out["full_space_random_walk_exponents"] = [float(e) for e in fit[:, 0]]
    # r(T) / r(T/2) of each full-space cell: 1 where r(t) has plateaued, sqrt(2) for a random walk from
    # a small r0 (r^2 growing linearly in t), NaN where the run diverged or has too few records
    out["full_space_r_end_over_r_half"] = [_late_growth(res[f"full_t_{k}"], res[f"full_r_{k}"])
                                           for k in range(len(res["r0"]))]
    return out


def _late_growth(t: np.ndarray, r: np.ndarray) -> float:
    if len(t) < 3 or not np.all(np.isfinite(r)):
        return math.nan
    return float(r[-1] / np.interp(t[-1] / 2, t, r))
