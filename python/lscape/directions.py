"""Directions for loss surfaces: random (per filter / per layer, seeded), the plane through three
models, and the PCA plane of a training trajectory.  Every vector is flat in FlatLayout order."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from . import _checks
from ._flat import FlatLayout
from .checkpoints import load_checkpoint, load_checkpoints

__all__ = ["Directions", "random_directions", "plane_through", "pca_directions"]

NORMS = ("filter", "layer", None)
IGNORES = ("biasbn", None)


@dataclass
class Directions:
    """vectors (k, D) float64, k in {1, 2}; center (D,) or None (then the model's parameters);
    trajectory (T, 2) or None: a training run's checkpoints on the plane, in order (PCA);
    points (n, 2) or None: models the plane was built through (plane_through's three);
    info: provenance (kind, seed, norm, ignore, explained variance, checkpoint files...).
    lscape.surface frames an int grid around the trajectory and the points."""
    vectors: np.ndarray
    info: dict = field(default_factory=dict)
    center: np.ndarray | None = None
    trajectory: np.ndarray | None = None
    points: np.ndarray | None = None

    def __post_init__(self) -> None:
        t = _checks.as_tensor("vectors", self.vectors)
        expected = "a finite floating (k, D) array of k = 1 or 2 directions"
        if t.ndim != 2 or t.shape[0] not in (1, 2) or t.shape[1] == 0 or not t.is_floating_point():
            raise ValueError(f"vectors: got {_checks.describe(t)}, expected {expected}")
        _checks.finite("vectors", t, expected)
        self.vectors = t.double().cpu().numpy()



def _bn_names(model: nn.Module) -> set[str]:
    """Parameter names that belong to BatchNorm layers (Goldstein's ignore='biasbn' zeroes them)."""
    out = set()
    for mname, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            out.update(f"{mname}.{p}" if mname else p for p, _ in m.named_parameters(recurse=False))
    return out


def random_directions(model: nn.Module, k: int = 2, *, norm: str | None = "filter", ignore: str | None = "biasbn",
                      seed: int = 0) -> Directions:
    """k Gaussian directions (seeds seed, seed+1, ...), normalised per filter (Li et al. 2018: each
    slice along dim 0 of a weight gets the norm of the same slice of the model's weight; 1-D
    parameters are treated as one filter) or per layer (each parameter tensor gets its own norm).
    ignore="biasbn" zeroes biases (1-D parameters) and BatchNorm parameters, as Goldstein's default."""
    if norm not in NORMS:
        raise ValueError(f"norm: got {norm!r}, expected one of {NORMS}")
    if ignore not in IGNORES:
        raise ValueError(f"ignore: got {ignore!r}, expected one of {IGNORES}")
    if not isinstance(k, int) or k not in (1, 2):
        raise ValueError(f"k: got {k!r}, expected 1 or 2")
    layout = FlatLayout.of(model)
    named = dict(model.named_parameters())
    bn = _bn_names(model)
    out = []
    for i in range(k):
        gen = torch.Generator().manual_seed(seed + i)
        parts = []
        for name in layout.names:
            w = named[name].detach().cpu().double()
            d = torch.randn(w.shape, generator=gen, dtype=torch.float64)
            if ignore == "biasbn" and (w.ndim <= 1 or name in bn):
                d = torch.zeros_like(d)
            elif norm == "filter":
                rows = w.shape[0] if w.ndim else 1
                w2, d2 = w.reshape(rows, -1), d.reshape(rows, -1)
                scale = w2.norm(dim=1) / d2.norm(dim=1).clamp_min(1e-300)
                d = (d2 * scale[:, None]).reshape(w.shape)
            elif norm == "layer":
                d = d * (w.norm() / d.norm().clamp_min(1e-300))
            parts.append(d.reshape(-1))
        out.append(torch.cat(parts).numpy())
    info = {"kind": "random", "norm": str(norm), "ignore": str(ignore), "seed": int(seed)}
    return Directions(np.stack(out), info)


def plane_through(theta0, theta1, theta2, *, model: nn.Module, orthonormal: bool = False) -> Directions:
    """The plane through three checkpoints (each a module, a flat vector, a state_dict or a checkpoint file:
    see lscape.checkpoints): center theta0, directions theta1 - theta0 and theta2 - theta0, so the three
    sit at (0, 0), (1, 0), (0, 1).  orthonormal=True (Garipov's plane.py): u = (theta1-theta0)/|.|, v = the
    part of theta2-theta0 orthogonal to u, normalised.  `points` (3, 2) holds the three's coordinates."""
    t0, t1, t2 = (load_checkpoint(t, model, name=f"theta{i}") for i, t in enumerate((theta0, theta1, theta2)))
    u, v = t1 - t0, t2 - t0
    if orthonormal:
        u = u / np.linalg.norm(u)
        v = v - (v @ u) * u
        v = v / np.linalg.norm(v)
    vec = np.stack([u, v])
    pts = np.stack([t0, t1, t2]) - t0
    coords = np.linalg.lstsq(vec.T, pts.T, rcond=None)[0].T
    return Directions(vec, {"kind": "plane", "orthonormal": bool(orthonormal)}, center=t0, points=coords)


def pca_directions(checkpoints, *, model: nn.Module, sort_key: Callable[[str], object] | None = None) -> Directions:
    """Top-2 principal directions of theta_t - theta_final over a training run's checkpoints, the final
    point as center, and the trajectory projected onto the plane (T, 2) (Li et al. 2018, sec. 7).

    checkpoints: a folder or glob pattern of checkpoint files (natural order, epoch_2 before epoch_10, or
      sorted by sort_key(path)), or a list of modules, flat vectors, state_dicts or file paths in training
      order; the last one is the final point.  State_dicts are matched to `model` by parameter name,
      buffers ignored (lscape.checkpoints).
    info['explained_variance_ratio'] holds the two ratios, info['checkpoints'] where each point came from."""
    thetas, labels = load_checkpoints(checkpoints, model, sort_key=sort_key)
    if thetas.shape[0] < 3:
        raise ValueError(f"checkpoints: got {thetas.shape[0]} ({', '.join(labels)}), expected at least 3 for a "
                         "PCA plane (two directions of the differences to the final point)")
    final = thetas[-1]
    M = thetas[:-1] - final
    _, s, vt = np.linalg.svd(M, full_matrices=False)
    ratio = (s ** 2 / (s ** 2).sum())[:2]
    vec = vt[:2]
    traj = (thetas - final) @ vec.T
    info = {"kind": "pca", "explained_variance_ratio": [float(r) for r in ratio], "checkpoints": labels}
    return Directions(vec, info, center=final, trajectory=traj)
