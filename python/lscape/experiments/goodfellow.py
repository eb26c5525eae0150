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
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import data as datasets
from ..landscape import Landscape
from . import common

NAME = "goodfellow"
ACTIVATIONS = ("relu", "sigmoid")


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


def config(scale: str, **overrides: Any) -> Config:
    if scale not in SCALES:
        raise ValueError(f"scale: got {scale!r}, expected one of {', '.join(map(repr, SCALES))}")
    return replace(SCALES[scale], **overrides)


def make_model(cfg: Config, n_in: int, n_out: int, act: str, seed: int) -> nn.Sequential:
    """The fully connected net with torch's default initialisation drawn from `seed`."""
    torch.manual_seed(seed)
    sizes = (n_in, *cfg.hidden)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU() if act == "relu" else nn.Sigmoid()]
    layers.append(nn.Linear(sizes[-1], n_out))
    return nn.Sequential(*layers)


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def _load_flat(model: nn.Module, theta: torch.Tensor) -> None:
    torch.nn.utils.vector_to_parameters(theta, model.parameters())


def train_stage(rd: common.RunDir, stage: str, cfg: Config, d: datasets.Split, act: str, seed: int,
                budget: common.ChunkBudget, progress: bool) -> dict[str, np.ndarray]:
    """SGD + momentum for cfg.epochs, checkpointed after each epoch in checkpoints/<stage>.npz.
    -> theta_i, theta_f (D,), trajectory (T, D), and per epoch train/val loss and accuracy."""
    model = make_model(cfg, d.x_train.shape[1], d.n_classes, act, seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr_of(act), momentum=cfg.momentum)
    ck = rd.load(stage)
    if ck is None:
        ck = {"theta_i": flat(model).numpy(), "epoch": 0, "trajectory": flat(model).numpy()[None],
              "curves": np.zeros((0, 4))}
    else:
        _load_flat(model, torch.from_numpy(ck["theta"]))
        if int(ck["epoch"]) > 0:
            buf = torch.from_numpy(ck["momentum"])
            for p, b in zip(model.parameters(), torch.split(buf, [p.numel() for p in model.parameters()])):
                opt.state[p]["momentum_buffer"] = b.view_as(p).clone()
    bar = common.progress_bar(f"train {act:<8} {seed}", progress)
    N = d.x_train.shape[0]
    epoch = int(ck["epoch"])
    traj, curves = [ck["trajectory"]], [ck["curves"]]
    while epoch < cfg.epochs:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + seed * 1009 + epoch)
        order = torch.randperm(N, generator=g)
        n_batches = -(-N // cfg.batch)
        for s, i in enumerate(range(0, N, cfg.batch)):
            idx = order[i:i + cfg.batch]
            opt.zero_grad()
            F.cross_entropy(model(d.x_train[idx]), d.y_train[idx]).backward()
            opt.step()
            # every record_every steps, and at the end of each epoch (so the trajectory ends at theta_f)
            if (s + 1) % cfg.record_every == 0 or s + 1 == n_batches:
                traj.append(flat(model).numpy()[None])
        epoch += 1
        curves.append(np.array([evaluate(model, d.x_train, d.y_train) + evaluate(model, d.x_test, d.y_test)]))
        mom = torch.cat([opt.state[p]["momentum_buffer"].reshape(-1) for p in model.parameters()])
        ck = {"theta_i": ck["theta_i"], "theta": flat(model).numpy(), "momentum": mom.numpy(), "epoch": epoch,
              "trajectory": np.concatenate(traj), "curves": np.concatenate(curves)}
        traj, curves = [ck["trajectory"]], [ck["curves"]]
        rd.save(stage, ck)
        if bar is not None:
            bar(epoch, cfg.epochs)
        budget.tick()
    theta_f = ck["theta"] if "theta" in ck else ck["theta_i"]
    return {"theta_i": ck["theta_i"], "theta_f": theta_f, "trajectory": ck["trajectory"], "curves": ck["curves"]}


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of model on x, y."""
    out = model(x)
    return float(F.cross_entropy(out, y)), float((out.argmax(1) == y).double().mean())


def run(scale: str = "default", out: str = "goodfellow", *, resume: bool = False, progress: bool = True,
        data_dir: str | None = None, stop_after_chunks: int | None = None, figures: bool = True,
        **overrides: Any) -> dict[str, Any]:
    """Run (or resume) the experiment into folder `out`; returns the summary (also in summary.json)."""
    from ..probes.lines import interpolate, project_trajectory

    cfg = config(scale, **overrides)
    plt = common.require_matplotlib() if figures else None
    d = datasets.load(cfg.dataset, data_dir)  # fails before any training when the files are missing
    rd = common.RunDir(out, common.config_dict(cfg), resume=resume)
    budget = common.ChunkBudget(stop_after_chunks)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    sub = torch.randperm(d.x_train.shape[0], generator=torch.Generator().manual_seed(cfg.seed))
    sub = sub[:cfg.train_points] if cfg.train_points else sub
    xs, ys = d.x_train[sub], d.y_train[sub]

    res: dict[str, Any] = {}
    summary: dict[str, Any] = {"experiment": NAME, "scale": cfg.scale, "dataset": cfg.dataset,
                               "train_points_in_landscape": int(xs.shape[0])}
    wide = np.linspace(-0.5, 1.5, cfg.alphas)
    tiles = {"unit": np.linspace(0.0, 1.0, cfg.alphas), "start": np.linspace(0.0, 0.01, cfg.alphas),
             "end": np.linspace(0.99, 1.0, cfg.alphas)}
    for act in ACTIVATIONS:
        first = train_stage(rd, f"train_{act}_0", cfg, d, act, cfg.seed, budget, progress)
        second = train_stage(rd, f"train_{act}_1", cfg, d, act, cfg.seed + 1, budget, progress)
        model = make_model(cfg, d.x_train.shape[1], d.n_classes, act, cfg.seed)
        train_L = Landscape.from_module(model, F.cross_entropy, (xs, ys), chunk=cfg.chunk)
        val_L = Landscape.from_module(model, F.cross_entropy, (d.x_test, d.y_test), chunk=cfg.chunk)
        ti, tf, tf2 = (torch.from_numpy(first["theta_i"]), torch.from_numpy(first["theta_f"]),
                       torch.from_numpy(second["theta_f"]))
        # a random point: another draw of the initialisation, scaled to the solution's norm
        tr = torch.from_numpy(initial_params(cfg, d, act, cfg.seed + 2)) * (tf.norm() / max(float(ti.norm()), 1e-12))
        ck = rd.load(f"lines_{act}")
        if ck is None:
            ck = {"wide_train": interpolate(train_L, ti, tf, wide).numpy(),
                  "wide_val": interpolate(val_L, ti, tf, wide).numpy(),
                  "two_solutions": interpolate(train_L, tf, tf2, wide).numpy(),
                  "random_to_solution": interpolate(train_L, tr, tf, wide).numpy()}
            if act == "relu":
                for k, a in tiles.items():
                    ck[f"tile_{k}"] = interpolate(train_L, ti, tf, a).numpy()
            rd.save(f"lines_{act}", ck)
            budget.tick()
        coord, resid = project_trajectory(torch.from_numpy(first["trajectory"]), ti, tf)
        coord, resid = coord.numpy(), resid.numpy()
        res.update({f"{act}_{k}": v for k, v in ck.items()})
        res.update({f"{act}_curves": first["curves"], f"{act}_curves_second": second["curves"],
                    f"{act}_coord": coord, f"{act}_residual": resid})
        summary[act] = _line_summary(first, second, ck, wide, coord, resid, tf - ti)
    res["alphas_wide"] = wide
    res.update({f"alphas_{k}": v for k, v in tiles.items()})
    return common.finish_run(rd, res, summary, t0, "goodfellow_plots" if figures else None, cfg, plt)


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


def replot(out: str) -> list[str]:
    """Redraw the figures of a finished run."""
    import json
    from pathlib import Path

    from . import goodfellow_plots

    plt = common.require_matplotlib()
    raw = json.loads((Path(out) / "config.json").read_text())
    raw["hidden"] = tuple(raw["hidden"])
    res = common.load_npz(Path(out) / "results.npz")
    if res is None:
        raise FileNotFoundError(f"out: no results.npz in {out}; run the experiment first")
    return goodfellow_plots.plot_all(res, Path(out), Config(**raw), plt)
