"""Bosman, Engelbrecht & Helbig (2019), "Loss surface modality of feed-forward neural network architectures".

    lscape reproduce bosman --scale smoke|default|paper-capped|paper --out DIR [--resume] [--data-dir MNIST_DIR]

Progressive gradient walks (lscape.probes.progressive_walk) over the loss surfaces of feed-forward networks
of several widths and depths, on two problems:
1. XOR: 2 inputs, `depth` hidden layers of `width` ELU units, one sigmoid output, binary cross-entropy
   (log-likelihood) on the four patterns; float64.  The paper's widths are 2 (minimal), 4 and 20.
2. digits (embedded, 64 inputs; MNIST at the paper scales, via lscape.data.mnist): ELU hidden layers, softmax output,
   cross-entropy on a fixed random batch of `batch_size` training patterns; float32.  The paper's widths
   are 10 (minimal), 20 and 100.
Every architecture is walked in four settings: two initialisation ranges [-r, r] (starts uniform in it;
the walks themselves are unbounded, as in the paper) times two granularities: micro (largest step per
dimension micro_fraction of the range's width 2r, micro_steps steps) and macro (macro_fraction,
macro_steps).  The paper runs D walks per setting (D: the number of weights); max_walkers caps that.

Every sampled point gets its loss, gradient norm and classification accuracy (XOR: the four patterns;
digits: the loss batch) -- the loss-gradient clouds.  XOR: the dense float64 Hessian at up to
hessian_points points per cell (the walks' end points, then random sampled points) classifies them as
convex / concave / saddle / flat with lscape.probes.classify_stationary, an eigenvalue counting as zero
when |lambda| <= hessian_rtol * max |lambda| of that Hessian (the paper's code tests exact zeros, which
float64 Hessians of ELU networks almost never have).  digits: train and test accuracy at the walks' end
points (the paper's Fig 4).  Each cell (problem, architecture, range, granularity) is checkpointed.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import data as datasets
from ..landscape import Landscape
from . import common
from .stats import spearman

NAME = "bosman"
CLASSES = ("convex", "concave", "saddle", "flat")
PROBLEMS = ("xor", "digits")
_CAP = 1 << 22  # float64 values of recorded positions held at once (32 MiB): walker groups x step chunks
_MIN_CHUNK = 32  # steps per chunk the walker groups are sized for (where D allows)


@dataclass(frozen=True)
class Config:
    """One scale of the experiment (every field lands in config.json)."""

    scale: str
    xor_widths: tuple[int, ...] = (2, 4, 20)
    xor_depths: tuple[int, ...] = (1, 2, 3)
    dataset: str = "digits"  # the second problem: "digits" (embedded) or "mnist" (data_dir)
    digits_widths: tuple[int, ...] = (10, 20, 100)
    digits_depths: tuple[int, ...] = (1, 2)
    init_ranges: tuple[float, ...] = (1.0, 10.0)  # starts uniform in [-r, r]^D
    micro_fraction: float = 0.01  # micro walks: step bound = 1% of the range's width 2r
    micro_steps: int = 300  # the paper: 1000
    macro_fraction: float = 0.1  # macro walks: 10% of 2r
    macro_steps: int = 100  # the paper: 100
    max_walkers: int | None = 64  # walks per cell: min(D, max_walkers); None: D (the paper)
    digits_max_walkers: int | None = None  # when set, the cap for the digits / MNIST cells (XOR keeps max_walkers)
    batch_size: int = 100  # digits / MNIST: the loss is on this many (fixed, random) training patterns
    eval_patterns: int | None = None  # digits end-point accuracies on at most this many train / test patterns
    # XOR: Hessians per cell (half end points, half random sampled points); the paper: every sampled point.
    # 32 keeps default fast: at width 20, depth 3 (D = 921) a dense Hessian + eigvalsh is ~0.4 s on one core
    hessian_points: int = 32
    hessian_rtol: float = 1e-6  # |lambda| <= hessian_rtol * max |lambda| counts as zero (-> "flat")
    seed: int = 0


SCALES: dict[str, Config] = {
    # seconds: two XOR architectures, one digits one, 8 walkers of 30 / 10 steps
    "smoke": Config("smoke", xor_widths=(2,), xor_depths=(1, 2), digits_widths=(10,), digits_depths=(1,),
                    micro_steps=30, macro_steps=10, max_walkers=8, hessian_points=8),
    # about 1.5 minutes on a 2-core CPU: all 9 XOR architectures (tiny), digits widths 10, 20 and 100 at
    # depths 1 and 2; walks capped at 64 per cell, micro walks at 300 steps (the paper: D walks, 1000
    # steps), 32 Hessians per XOR cell
    "default": Config("default"),
    # the paper's sizes: D walks per cell, micro 1000 / macro 100 steps, MNIST widths 10/20/100 x depths 1-3
    # (MNIST from --data-dir).  Far beyond a CPU: MNIST width 100, depth 3 alone has D = 99,710 walkers.
    "paper": Config("paper", dataset="mnist", digits_widths=(10, 20, 100), digits_depths=(1, 2, 3),
                    micro_steps=1000, max_walkers=None, eval_patterns=10_000, hessian_points=1000),
    # what 2 cores can do of it in about 13 minutes: the paper's networks, steps, ranges and MNIST batches, and
    # D walks per XOR cell, but 64 walks per MNIST cell (D walks of the width-100 depth-3 net, 99,710 x 1000
    # steps at ~2 ms a walker-step, would take ~2.4 days a cell) and 256 Hessians per XOR cell (~0.1 s each
    # with the eigenvalues at D = 921)
    "paper-capped": Config("paper-capped", dataset="mnist", digits_widths=(10, 20, 100), digits_depths=(1, 2, 3),
                           micro_steps=1000, max_walkers=None, digits_max_walkers=64, eval_patterns=10_000,
                           hessian_points=256),
}


PLOTS = "bosman_plots"


config, replot = common.module_functions(__name__)  # config(scale, **overrides), replot(out)


def make_model(n_in: int, width: int, depth: int, n_out: int, dtype: torch.dtype) -> nn.Sequential:
    """n_in -> depth x (Linear(width), ELU) -> Linear(n_out) (logits: the sigmoid / softmax is in the loss)."""
    torch.manual_seed(0)  # the values are never used: walks set every weight
    sizes = (n_in, *([width] * depth))
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=False):
        layers += [nn.Linear(a, b), nn.ELU()]
    layers.append(nn.Linear(sizes[-1], n_out))
    return nn.Sequential(*layers).to(dtype)


def _xor_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # sigmoid output + binary cross-entropy, in the stable logits form
    return F.binary_cross_entropy_with_logits(out[:, 0], y.to(out.dtype))


def _xor_acc(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out[:, 0] > 0).long() == y).to(out.dtype).mean()


def _ce_acc(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out.argmax(-1) == y).to(out.dtype).mean()


def cells(cfg: Config) -> list[tuple[str, int, int, float, bool]]:
    """(problem, width, depth, range r, micro) of every cell, in run order."""
    out = []
    for prob, widths, depths in (("xor", cfg.xor_widths, cfg.xor_depths),
                                 ("digits", cfg.digits_widths, cfg.digits_depths)):
        for w in widths:
            for dp in depths:
                for r in cfg.init_ranges:
                    for micro in (True, False):
                        out.append((prob, w, dp, float(r), micro))
    return out


def cell_name(prob: str, w: int, dp: int, r: float, micro: bool) -> str:
    return f"{prob}_w{w}_d{dp}_r{r:g}_{'micro' if micro else 'macro'}"


def walk_cell(land: Landscape, acc_land: Landscape, *, walkers: int, steps: int, step_bound: float, r: float,
              seed: int, n_random: int) -> dict[str, np.ndarray]:
    """`walkers` unbounded gradient walks from uniform starts in [-r, r]^D, recorded in walker groups and
    step chunks (so positions never take more than _CAP values): loss, grad_norm, acc (W, steps + 1)
    float32, end (W, D), and the positions of n_random random sampled points ("picked", (n, D)).  A step
    chunk continues the walk (first_step) and walker w draws from its own stream (first_walker): the draws
    are those of one uninterrupted walk of every walker, whatever the grouping and chunking."""
    from ..probes import progressive_walk

    D, W = land.dim, walkers
    rng = np.random.default_rng(seed)
    starts = torch.from_numpy(rng.uniform(-r, r, (W, D))).to(land.dtype)
    n_pts = W * (steps + 1)
    pick = np.sort(rng.choice(n_pts, size=min(n_random, n_pts), replace=False))
    # Positions are recorded only where something reads them (the random Hessian points; the accuracy
    # when the walk does not record it), in walker groups and step chunks that bound their memory.  A chunk
    # evaluates its first point again (the previous chunk's last), so groups are sized for chunks of at
    # least _MIN_CHUNK steps: 1-step chunks of the width-100 MNIST nets doubled their cost.
    record = n_random > 0 or "acc" not in getattr(land, "metric_names", ())
    if record:
        g = max(1, min(W, _CAP // ((_MIN_CHUNK + 1) * D)))  # walkers per group
        c = max(1, min(steps, _CAP // (g * D) - 1))  # steps per chunk
    else:
        g, c = W, steps  # all walkers step together (a step is one batched call), in one call
    loss = np.empty((W, steps + 1), np.float32)
    gnorm, acc = np.empty_like(loss), np.empty_like(loss)
    end = np.empty((W, D), np.float64)
    picked = np.empty((len(pick), D), np.float64)
    finite = np.ones(W, bool)
    for w0 in range(0, W, g):
        x, s0 = starts[w0:w0 + g], 0
        n = x.shape[0]
        while True:
            ck = min(c, steps - s0)
            res = progressive_walk(land, x, ck, step_bound, None, True, seed, first_walker=w0,
                                   record_positions=record, first_step=s0)
            sl = (slice(w0, w0 + n), slice(s0, s0 + ck + 1))
            loss[sl], gnorm[sl] = res.loss.numpy(), res.grad_norm.numpy()
            pos = res.positions
            if "acc" in res.metrics:  # from the walk's own forward passes (Landscape.from_module(metrics=...))
                acc[sl] = res.metrics["acc"].numpy()
            else:
                acc[sl] = acc_land.loss(pos.reshape(-1, D)).reshape(n, ck + 1).numpy()
            finite[w0:w0 + n] &= res.finite.numpy()
            if len(pick):  # the random Hessian points that fall in this (group, chunk)
                wi, si = pick // (steps + 1), pick % (steps + 1)
                m = (wi >= w0) & (wi < w0 + n) & (si >= s0) & (si <= s0 + ck)
                picked[m] = pos[wi[m] - w0, si[m] - s0].double().numpy()
            x, s0 = res.end, s0 + ck
            if s0 >= steps:
                break
        end[w0:w0 + n] = x.double().numpy()
    return {"loss": loss, "grad_norm": gnorm, "acc": acc, "end": end, "picked": picked, "finite": finite}


def curvature(land: Landscape, pts: torch.Tensor, rtol: float) -> dict[str, np.ndarray]:
    """Dense Hessians at pts (B, D): class codes (index into CLASSES), eigenvalue counts above the
    tolerance (n_pos, n_neg) and min |lambda| / max |lambda| (to reclassify at another tolerance)."""
    from ..probes import classify_stationary, hessian

    H = hessian(land, pts)
    eigs = torch.linalg.eigvalsh(H.double()).numpy()
    a = np.abs(eigs)
    amax = a.max(1)
    codes, npos, nneg = [], [], []
    for row, m in zip(eigs, amax, strict=False):
        tol = rtol * m
        codes.append(CLASSES.index(str(classify_stationary(row, tol))))
        npos.append(int((row > tol).sum()))
        nneg.append(int((row < -tol).sum()))
    return {"class": np.array(codes, np.int64), "n_pos": np.array(npos, np.int64),
            "n_neg": np.array(nneg, np.int64),
            "min_rel": np.where(amax > 0, a.min(1) / np.where(amax > 0, amax, 1.0), 0.0)}


def _problems(cfg: Config, data_dir) -> dict[str, dict[str, Any]]:
    """Per problem: a model factory, loss, accuracy and data (loss data; end-point evaluation data)."""
    x = datasets.xor()
    xx, xy = x.x_train.double(), x.y_train
    d = datasets.load(cfg.dataset, data_dir)
    g = torch.Generator().manual_seed(cfg.seed)
    batch = torch.randperm(d.x_train.shape[0], generator=g)[:cfg.batch_size]
    n_tr = d.x_train.shape[0] if cfg.eval_patterns is None else min(cfg.eval_patterns, d.x_train.shape[0])
    n_te = d.x_test.shape[0] if cfg.eval_patterns is None else min(cfg.eval_patterns, d.x_test.shape[0])
    return {
        "xor": {"n_in": 2, "n_out": 1, "dtype": torch.float64, "loss": _xor_loss, "acc": _xor_acc,
                "data": (xx, xy)},
        "digits": {"n_in": d.x_train.shape[1], "n_out": d.n_classes, "dtype": torch.float32,
                   "loss": F.cross_entropy, "acc": _ce_acc, "data": (d.x_train[batch], d.y_train[batch]),
                   "train": (d.x_train[:n_tr], d.y_train[:n_tr]), "test": (d.x_test[:n_te], d.y_test[:n_te])},
    }


def run_cell(cfg: Config, probs: dict[str, dict[str, Any]], i: int, cell) -> dict[str, np.ndarray]:
    prob, w, dp, r, micro = cell
    p = probs[prob]
    model = make_model(p["n_in"], w, dp, p["n_out"], p["dtype"])
    chunk = 64 if prob == "xor" else 16
    # the accuracy on the walk's batch comes from the walk's own forward passes (no second pass)
    land = Landscape.from_module(model, p["loss"], p["data"], chunk=chunk, metrics={"acc": p["acc"]})
    acc_land = Landscape.from_module(model, p["acc"], p["data"], chunk=256)
    D = land.dim
    W, steps = _walks(cfg, prob, D, micro)
    bound = (cfg.micro_fraction if micro else cfg.macro_fraction) * 2 * r
    n_hess = cfg.hessian_points if prob == "xor" else 0
    n_end = min(W, n_hess // 2)
    seed = cfg.seed * 1_000_003 + 10_007 * i
    wk = walk_cell(land, acc_land, walkers=W, steps=steps, step_bound=bound, r=r, seed=seed,
                   n_random=n_hess - n_end)
    ck: dict[str, Any] = {k: wk[k] for k in ("loss", "grad_norm", "acc", "finite")}
    ck.update(dim=D, walkers=W, steps=steps, step_bound=bound)
    ends = torch.from_numpy(wk["end"]).to(land.dtype)
    if prob == "xor":
        pts = torch.cat([ends[:n_end], torch.from_numpy(wk["picked"]).to(land.dtype)])
        cv = curvature(land, pts, cfg.hessian_rtol)
        ck.update({f"hess_{k}": v for k, v in cv.items()})
        ck["hess_is_end"] = np.arange(len(pts)) < n_end
    else:
        ck["end_train_acc"] = Landscape.from_module(model, p["acc"], p["train"], chunk=16).loss(ends).numpy()
        ck["end_test_acc"] = Landscape.from_module(model, p["acc"], p["test"], chunk=16).loss(ends).numpy()
    return ck


def _walks(cfg: Config, prob: str, D: int, micro: bool) -> tuple[int, int]:
    """(walkers, steps) of a cell: D walkers capped by the problem's cap, the granularity's steps."""
    cap = cfg.digits_max_walkers if prob == "digits" and cfg.digits_max_walkers is not None else cfg.max_walkers
    return (D if cap is None else min(D, cap)), (cfg.micro_steps if micro else cfg.macro_steps)


def cell_cost(cfg: Config, probs: dict[str, dict[str, Any]], cell) -> float:
    """A cell's rough cost in flops, to start the costliest first: its walker-steps' forward and backward
    passes (6 flops a weight and pattern, plus about 3e6 of per-call overhead: measured 130-280 us a
    walker-step on the smallest nets) and, for XOR, its dense Hessians (reverse over reverse, D passes) and
    their eigenvalues (4/3 D^3)."""
    prob, w, dp, _r, micro = cell
    p = probs[prob]
    D = sum(t.numel() for t in make_model(p["n_in"], w, dp, p["n_out"], p["dtype"]).parameters())
    W, steps = _walks(cfg, prob, D, micro)
    n = len(p["data"][0])
    hess = cfg.hessian_points * (6.0 * D * D * n + 4 / 3 * D ** 3) if prob == "xor" else 0.0
    return W * (steps + 1) * (6.0 * D * n + 3e6) + hess


def _cell(i: int, job: tuple[Config, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Chunk i: the walks (and Hessians or accuracies) of cell cells(cfg)[i], on one torch thread (tiny
    networks only lose to a thread pool)."""
    cfg, probs = job
    with common.torch_threads(1):
        return run_cell(cfg, probs, i, cells(cfg)[i])


def run(scale: str = "default", out: str = "bosman", *, resume: bool = False, progress: bool = True,
        data_dir: str | None = None, stop_after_chunks: int | None = None, figures: bool = True,
        executor=None, **overrides: Any) -> dict[str, Any]:
    """Run (or resume) the experiment into folder `out`, each walk cell a chunk on `executor`; returns the
    summary (also in summary.json)."""
    cfg = config(scale, **overrides)
    probs = _problems(cfg, data_dir)  # fails before any walk when the MNIST files are missing
    ctx = common.start(cfg, out, resume=resume, progress=progress, stop_after_chunks=stop_after_chunks,
                       figures=figures, executor=executor)
    todo = cells(cfg)
    rows = ctx.chunks([cell_name(*cell) for cell in todo], _cell, shared=(cfg, probs), label="bosman cells",
                      threads=1,  # _cell pins one thread: cells run side by side on spare cores
                      cost=[cell_cost(cfg, probs, cell) for cell in todo])
    res = _results(todo, rows)
    return ctx.finish(sys.modules[__name__], res, _summary(cfg, todo, rows, res))


def _results(todo, rows) -> dict[str, np.ndarray]:
    """Per problem p: p_cell_* (one entry per cell), p_start (cells + 1) offsets into the flat per-sample
    arrays p_loss, p_grad_norm, p_acc (walker-major: walker w's steps + 1 samples, then w + 1's);
    xor_frac (cells, 4) curvature fractions (CLASSES order); digits_end_{train,test}_acc per walker."""
    res: dict[str, np.ndarray] = {}
    for prob in PROBLEMS:
        idx = [k for k, c in enumerate(todo) if c[0] == prob]
        cs, rs = [todo[k] for k in idx], [rows[k] for k in idx]
        res[f"{prob}_cell_width"] = np.array([c[1] for c in cs], np.int64)
        res[f"{prob}_cell_depth"] = np.array([c[2] for c in cs], np.int64)
        res[f"{prob}_cell_range"] = np.array([c[3] for c in cs], np.float64)
        res[f"{prob}_cell_micro"] = np.array([c[4] for c in cs], bool)
        for k in ("dim", "walkers", "steps"):
            res[f"{prob}_cell_{k}"] = np.array([int(r[k]) for r in rs], np.int64)
        res[f"{prob}_cell_step_bound"] = np.array([float(r["step_bound"]) for r in rs])
        sizes = [r["loss"].size for r in rs]
        res[f"{prob}_start"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        for k in ("loss", "grad_norm", "acc"):
            res[f"{prob}_{k}"] = np.concatenate([r[k].ravel() for r in rs]) if rs else np.zeros(0, np.float32)
        res[f"{prob}_finite"] = np.array([bool(r["finite"].all()) for r in rs], bool)
        res[f"{prob}_final_acc"] = np.array([float(r["acc"][:, -1].mean()) for r in rs])
        res[f"{prob}_final_loss_median"] = np.array([float(np.median(r["loss"][:, -1])) for r in rs])
    xr = [r for c, r in zip(todo, rows, strict=False) if c[0] == "xor"]
    res["xor_frac"] = np.array([np.bincount(r["hess_class"], minlength=4) / len(r["hess_class"]) for r in xr]
                               ).reshape(len(xr), 4)
    res["xor_hess_start"] = np.concatenate([[0], np.cumsum([len(r["hess_class"]) for r in xr])]).astype(np.int64)
    for k in ("class", "n_pos", "n_neg", "min_rel", "is_end"):
        res[f"xor_hess_{k}"] = np.concatenate([r[f"hess_{k}"] for r in xr]) if xr else np.zeros(0)
    dr = [r for c, r in zip(todo, rows, strict=False) if c[0] == "digits"]
    for k in ("end_train_acc", "end_test_acc"):
        res[f"digits_{k}"] = np.concatenate([r[k] for r in dr]) if dr else np.zeros(0)
        res[f"digits_cell_{k}_mean"] = np.array([float(r[k].mean()) for r in dr])
    return res


def _label(c) -> str:
    prob, w, dp, r, micro = c
    return f"{prob} w{w} d{dp} [-{r:g},{r:g}] {'micro' if micro else 'macro'}"


def _summary(cfg: Config, todo, rows, res) -> dict[str, Any]:
    out: dict[str, Any] = {"experiment": NAME, "scale": cfg.scale, "dataset": cfg.dataset,
                           "hessian_rtol": cfg.hessian_rtol, "cells": {}}
    for c, r in zip(todo, rows, strict=False):
        e = {"dim": int(r["dim"]), "walkers": int(r["walkers"]), "steps": int(r["steps"]),
             "all_finite": bool(r["finite"].all()),
             "final_loss_median": float(np.median(r["loss"][:, -1])),
             "final_grad_norm_median": float(np.median(r["grad_norm"][:, -1])),
             "final_acc_mean": float(r["acc"][:, -1].mean())}
        if c[0] == "xor":
            frac = np.bincount(r["hess_class"], minlength=4) / len(r["hess_class"])
            e["curvature"] = {k: float(v) for k, v in zip(CLASSES, frac, strict=False)}
            e["walks_solved"] = float((r["acc"][:, -1] == 1.0).mean())
        else:
            e["end_train_acc_mean"] = float(r["end_train_acc"].mean())
            e["end_test_acc_mean"] = float(r["end_test_acc"].mean())
        out["cells"][_label(c)] = e
    # headline trends: flatness against dimension (XOR), accuracy against width (digits)
    if len(res["xor_frac"]) >= 3:
        out["xor_spearman_dim_vs_flat"] = spearman(res["xor_cell_dim"], res["xor_frac"][:, 3])
        out["xor_spearman_dim_vs_convex"] = spearman(res["xor_cell_dim"], res["xor_frac"][:, 0])
    for name, k in (("xor_mean_fractions", "xor_frac"),):
        if len(res[k]):
            out[name] = {c: float(v) for c, v in zip(CLASSES, res[k].mean(0), strict=False)}
    if len(res["digits_cell_end_test_acc_mean"]):
        out["digits_best_end_test_acc"] = float(res["digits_cell_end_test_acc_mean"].max())
    return out
