"""The stages of the grokking reproduction (see grokking.py): each returns its arrays for results.npz and
runs its work as checkpointed chunks on the run's executor."""
from __future__ import annotations

import math
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import torch

from .. import data as datasets
from . import grokking_probes as probes
from . import grokking_train as gt
from .training import resolve_device, torch_threads

REC_COLUMNS = ("train_loss", "train_acc", "test_loss", "test_acc", "norm")  # columns of the *_rec arrays
LU_COLUMNS = ("train_loss", "train_acc", "test_loss", "test_acc")


class Data(NamedTuple):
    """mod: the modular-arithmetic split (token ids); mnist: mnist_train training images (the first ones,
    as Omnigrok takes them) and mnist_test test images, flat float32 in [0, 1]."""
    mod: datasets.Split
    mnist: datasets.Split


def load_data(cfg, data_dir: str | None) -> Data:
    """Both studies' data, checked before any training (a missing MNIST or too large a subset fails here)."""
    mod = datasets.modular_arithmetic(cfg.p, "+", cfg.train_fraction, cfg.seed)
    m = datasets.load(cfg.mnist_dataset, data_dir)
    for name, have, want in (("mnist_train", len(m.y_train), cfg.mnist_train),
                             ("mnist_test", len(m.y_test), cfg.mnist_test)):
        if want > have:
            raise ValueError(f"{name}: got {want}, expected at most the {have} images {cfg.mnist_dataset} has")
    m = datasets.Split(m.x_train[:cfg.mnist_train], m.y_train[:cfg.mnist_train], m.x_test[:cfg.mnist_test],
                       m.y_test[:cfg.mnist_test])
    return Data(mod, m)


def schedule(total: int, n_log: int, every: int | None = None, n_linear: int = 0) -> tuple[int, ...]:
    """Steps in [0, total]: 0, total, n_log log-spaced from 1, every `every`-th and n_linear evenly spaced
    (the log part samples the first epochs densely, the even part the long grokking phase)."""
    s = {0, total}
    s |= set(np.unique(np.logspace(0, math.log10(max(total, 1)), max(n_log, 0)).round().astype(int)).tolist())
    if every:
        s |= set(range(0, total + 1, every))
    if n_linear:
        s |= set(np.linspace(0, total, n_linear).round().astype(int).tolist())
    return tuple(sorted(int(v) for v in s if 0 <= v <= total))


def _segment_chunk(_: int, job: tuple[gt.Run, int, int, gt.State | None]) -> dict[str, np.ndarray]:
    run, start, stop, state = job
    return gt.segment(run, start, stop, state)


def side_by_side(cfg) -> int | None:
    """1 on the CPU: the chunk pins one torch thread, so chunks run side by side on the cores (small networks
    gain more from that than from a thread pool); None on a GPU (no forked workers after CUDA starts)."""
    return 1 if resolve_device(cfg.device).type == "cpu" else None


def train_in_segments(ctx, prefix: str, run: gt.Run, total: int, per_chunk: int) -> dict[str, np.ndarray]:
    """`run` for `total` steps as chunks <prefix>_seg_<i> of per_chunk steps, one after another (each
    starts from the state the previous one saved) -> rec_step (R,), rec (R, 5), snap_step (S,), snap (S, D)."""
    parts, state = [], None
    for i, start in enumerate(range(0, total, per_chunk)):
        stop = min(start + per_chunk, total)
        row = ctx.chunks([f"{prefix}_seg_{i}"], _segment_chunk, shared=(run, start, stop, state),
                         label=f"{prefix} {stop}/{total}")[0]
        state = gt.State.of(row)
        parts.append(row)
    return {k: np.concatenate([r[k] for r in parts]) for k in ("rec_step", "rec", "snap_step", "snap")}


def modular_training(ctx, data: Data) -> dict[str, np.ndarray]:
    """Study 1's training: Nanda et al.'s transformer, full-batch AdamW, records and snapshots."""
    cfg = ctx.cfg
    snaps = schedule(cfg.epochs, cfg.snapshot_log, n_linear=cfg.snapshot_linear)
    recs = tuple(sorted(set(schedule(cfg.epochs, cfg.record_log, cfg.record_every)) | set(snaps)))
    d = data.mod
    run = gt.Run(partial(gt.transformer, cfg, cfg.seed), gt.cross_entropy, (d.x_train, d.y_train, d.x_test, d.y_test),
                 cfg.lr, cfg.weight_decay, (0.9, cfg.beta2), None, cfg.seed, recs, snaps,
                 str(resolve_device(cfg.device)))
    out = train_in_segments(ctx, "mod", run, cfg.epochs, cfg.segment_epochs)
    return {f"mod_{k}": v for k, v in out.items()}


def hessians(ctx, data: Data, res: dict[str, Any]) -> dict[str, np.ndarray]:
    """Top Hessian eigenvalues and the trace of the training loss at every snapshot, one chunk each."""
    snap = res["mod_snap"]
    rows = ctx.chunks([f"hessian_{j}" for j in range(len(snap))], probes.hessian_chunk,
                      shared=(ctx.cfg, data.mod, snap), label="hessian", threads=side_by_side(ctx.cfg))
    return {"hess_eigs": np.stack([r["eigs"] for r in rows]), "hess_trace": np.array([float(r["trace"]) for r in rows]),
            "hess_trace_se": np.array([float(r["trace_se"]) for r in rows])}


def memorised_index(res: dict[str, Any]) -> int:
    """The memorising snapshot: the first with train accuracy >= 0.99 (else the best-fitting one), and
    never the last (the grokked end of the line and band)."""
    step, rec, snap_step = res["mod_rec_step"], res["mod_rec"], res["mod_snap_step"]
    acc = np.array([rec[np.searchsorted(step, s), 1] for s in snap_step])
    hits = np.flatnonzero(acc >= 0.99)
    j = int(hits[0]) if len(hits) else int(np.argmax(acc))
    return min(j, len(snap_step) - 2)


def plane_and_paths(ctx, data: Data, res: dict[str, Any]) -> dict[str, np.ndarray]:
    """The PCA-plane surfaces with the trajectory, and the line and NEB path memorised -> grokked."""
    j = memorised_index(res)
    plane = ctx.chunks(["surface"], probes.surface_chunk, shared=(ctx.cfg, data.mod, res["mod_snap"]),
                       label="pca surface")[0]
    paths = ctx.chunks(["paths"], probes.paths_chunk, shared=(ctx.cfg, data.mod, res["mod_snap"][j],
                                                              res["mod_snap"][-1]), label="line + neb")[0]
    return {**{f"plane_{k}": v for k, v in plane.items()}, **{f"path_{k}": v for k, v in paths.items()},
            "mem_index": np.array(j)}


def lu_cells(cfg) -> list[tuple[str, int]]:
    return [(net, k) for net in ("mod", "mnist") for k in range(len(cfg.lu_scales))]


def _lu_chunk(c: int, job: tuple[Any, Data]) -> dict[str, Any]:
    """LU cell c, on one torch thread (see side_by_side)."""
    with torch_threads(1):
        return _lu_cell(c, *job)


def _lu_cell(c: int, cfg, data: Data) -> dict[str, Any]:
    """LU cell c: one network trained on the sphere |theta| = s w0 (s = lu_scales[k])."""
    net, k = lu_cells(cfg)[c]
    dev = resolve_device(cfg.device)
    s = float(cfg.lu_scales[k])
    if net == "mod":
        d = data.mod
        model = gt.transformer(cfg, cfg.seed)
        w0 = gt.norm(model)
        out = gt.sphere_cell(model, s * w0, gt.cross_entropy, tuple(d), lr=cfg.lu_lr, steps=cfg.lu_epochs,
                             batch=None, seed=cfg.seed, evals=cfg.evals, dev=dev)
    else:
        d = data.mnist
        model = gt.mlp(d.x_train.shape[1], cfg.mnist_width, cfg.mnist_depth, 10, cfg.seed)
        w0 = gt.norm(model)
        out = gt.sphere_cell(model, s * w0, gt.one_hot_mse, tuple(d), lr=cfg.mnist_lr, steps=cfg.mnist_lu_steps,
                             batch=cfg.mnist_lu_batch, seed=cfg.seed, evals=cfg.evals, dev=dev)
    return {**out, "w0": w0}


def lu_sweeps(ctx, data: Data) -> dict[str, np.ndarray]:
    """Study 2: every (network, w / w0) cell, one chunk each (transformer cells, the costly ones, first)."""
    cfg = ctx.cfg
    cells = lu_cells(cfg)
    cost = [cfg.lu_epochs * 10.0 if net == "mod" else cfg.mnist_lu_steps for net, _ in cells]
    rows = ctx.chunks([f"lu_{net}_{k}" for net, k in cells], _lu_chunk, shared=(cfg, data), label="LU cells",
                      cost=cost, threads=side_by_side(cfg))
    out: dict[str, np.ndarray] = {"lu_scales": np.array(cfg.lu_scales, np.float64)}
    for net in ("mod", "mnist"):
        mine = [r for (n, _), r in zip(cells, rows, strict=True) if n == net]
        out[f"lu_{net}_final"] = np.stack([r["final"] for r in mine])  # (S, 4): LU_COLUMNS
        out[f"lu_{net}_best"] = np.stack([r["best"] for r in mine])
        out[f"lu_{net}_norm_error"] = np.array([float(r["norm_error"]) for r in mine])
        out[f"lu_{net}_w0"] = np.array(float(mine[0]["w0"]))
    return out


def _scaled_mlp(cfg, n_in: int) -> torch.nn.Module:
    """Omnigrok §4's start: the MLP's standard initialisation times mnist_init_scale."""
    return gt.scale_(gt.mlp(n_in, cfg.mnist_width, cfg.mnist_depth, 10, cfg.seed), cfg.mnist_init_scale)


def mnist_grokking(ctx, data: Data) -> dict[str, np.ndarray]:
    """Study 3: the MLP from 8x its initialisation, AdamW with weight decay, minibatches; records only."""
    cfg = ctx.cfg
    d = data.mnist
    recs = schedule(cfg.mnist_steps, cfg.mnist_record_log, max(cfg.mnist_steps // 50, 1))
    run = gt.Run(partial(_scaled_mlp, cfg, d.x_train.shape[1]), gt.one_hot_mse, tuple(d), cfg.mnist_lr,
                 cfg.mnist_weight_decay, (0.9, 0.999), cfg.mnist_batch, cfg.seed, recs, (),
                 str(resolve_device(cfg.device)))
    out = train_in_segments(ctx, "mnist", run, cfg.mnist_steps, cfg.mnist_segment_steps)
    return {"mnist_rec_step": out["rec_step"], "mnist_rec": out["rec"]}
