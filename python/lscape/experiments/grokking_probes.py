"""Landscape probes of the grokking run's snapshots: Hessian spectrum and trace, the PCA-plane surfaces,
and the line and NEB path from the memorising snapshot to the grokked one.  Each function is one
checkpointed chunk: chunk(i, shared) -> arrays."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from .. import data as datasets
from ..directions import pca_directions
from ..landscape import Landscape
from ..neb import neb
from ..probes import hessian_eigs, hutchinson_trace, interpolate
from ..surface import surface
from . import grokking_train as gt
from .training import resolve_device, torch_threads

# Hessian products go through F.scaled_dot_product_attention (lscape._hvpattention writes out its double
# backward), the network exactly as it is trained
HESSIAN_ATTENTION = "sdpa"


def _landscape(cfg, split: datasets.Split, train: bool, attention: str = "sdpa") -> Landscape:
    """The mean cross-entropy of the transformer over the train (or test) pairs, as a Landscape."""
    dev = resolve_device(cfg.device)
    model = gt.transformer(cfg, cfg.seed, attention=attention).to(dev)
    x, y = (split.x_train, split.y_train) if train else (split.x_test, split.y_test)
    return Landscape.from_module(model, gt.cross_entropy, (x.to(dev), y.to(dev)))


def hessian_chunk(j: int, job: tuple[Any, datasets.Split, np.ndarray]) -> dict[str, np.ndarray]:
    """Snapshot j (snap (S, D)): the hessian_k largest eigenvalues (Lanczos, relative tolerance hessian_tol)
    and the Hutch++ trace estimate with its standard error, of the training loss."""
    cfg, split, snap = job
    L = _landscape(cfg, split, True, HESSIAN_ATTENTION)
    theta = torch.from_numpy(np.ascontiguousarray(snap[j])).to(L.device)
    # one torch thread (grokking_stages.side_by_side)
    with torch_threads(1), warnings.catch_warnings():  # not converged in hessian_iters: Ritz values so far
        warnings.simplefilter("ignore", RuntimeWarning)
        eigs = hessian_eigs(L, theta, k=cfg.hessian_k, tol=cfg.hessian_tol, iters=cfg.hessian_iters,
                            seed=cfg.seed + j)
        trace, se = hutchinson_trace(L, theta, n_samples=cfg.hutchinson_samples, seed=cfg.seed + j)
    return {"eigs": eigs.double().cpu().numpy(), "trace": np.array(trace), "trace_se": np.array(se)}


def surface_chunk(_: int, job: tuple[Any, datasets.Split, np.ndarray]) -> dict[str, np.ndarray]:
    """The train- and test-loss (and accuracy) surfaces on the PCA plane of the snapshots (S, D), on a
    surface_grid x surface_grid grid framing the trajectory -> x (n,), y (n,), train_loss, test_loss,
    train_acc, test_acc (n, n), trajectory (S, 2), explained (2,) variance ratios."""
    cfg, split, snap = job
    dev = resolve_device(cfg.device)
    model = gt.transformer(cfg, cfg.seed).to(dev)
    dirs = pca_directions([torch.from_numpy(s) for s in snap], model=model)
    s = surface(model, gt.cross_entropy, (split.x_train.to(dev), split.y_train.to(dev)), directions=dirs,
                grid=cfg.surface_grid, test_data=(split.x_test.to(dev), split.y_test.to(dev)))
    out = {k: np.asarray(s.values[k]) for k in ("train_loss", "test_loss", "train_acc", "test_acc")}
    return {**out, "x": s.x, "y": s.y, "trajectory": np.asarray(dirs.trajectory),
            "explained": np.array(dirs.info["explained_variance_ratio"])}


def paths_chunk(_: int, job: tuple[Any, datasets.Split, np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    """Train and test loss along the straight line a -> b (line_points) and along a nudged elastic band
    relaxed on the training loss (neb_images, neb_steps of FIRE, climbing image) -> alpha, line_train,
    line_test (A,); neb_arc (fraction of the band's length), neb_train, neb_test (n,); neb_length over
    the straight distance."""
    cfg, split, a, b = job
    Ltr, Lte = _landscape(cfg, split, True), _landscape(cfg, split, False)
    ta, tb = (torch.from_numpy(np.ascontiguousarray(v)).to(Ltr.device) for v in (a, b))
    alpha = torch.linspace(0.0, 1.0, cfg.line_points, dtype=torch.float64)
    band = neb(Ltr, ta, tb, n_images=cfg.neb_images, steps=cfg.neb_steps)
    images = band.images[0]
    arc = band.arc_length[0]
    with torch.no_grad():
        return {"alpha": alpha.numpy(), "line_train": interpolate(Ltr, ta, tb, alpha).double().cpu().numpy(),
                "line_test": interpolate(Lte, ta, tb, alpha).double().cpu().numpy(),
                "neb_arc": (arc / arc[-1]).cpu().numpy(), "neb_train": band.energies[0].double().cpu().numpy(),
                "neb_test": Lte.loss(images).double().cpu().numpy(),
                "neb_length": np.array(float(arc[-1] / torch.linalg.vector_norm((tb - ta).double())))}
