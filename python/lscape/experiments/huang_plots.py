"""The figures of the Huang et al. reproduction, drawn from its results.npz arrays (matplotlib, Agg)."""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .common import save_figures
from .gamst_walker_plots import BLUE, GREY, RED


def plot_all(res: Mapping[str, Any], out: Path, cfg, plt) -> list[str]:
    return save_figures((fig_volume, fig_boundaries, fig_tsne), res, out, cfg, plt)


def fig_volume(res, cfg, plt):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lv = res["log_volume"] / math.log(10)
    se = res["log_volume_se"] / math.log(10)
    # a minimum with rays still below the threshold at r_max has a longer basin than measured: its estimate
    # is a lower bound (and, since the longest rays dominate log V, close to that of the r_max ball)
    capped = res["censored"] > 0
    bound = f", lower bound: rays censored at r_max = {cfg.r_max:g}"
    for bad, c, label in ((False, BLUE, "good minima (clean data)"), (True, RED, "bad minima (poisoned data)")):
        for lower, fmt, extra in ((False, "o", ""), (True, "^", bound)):
            m = (res["kind_is_bad"] == bad) & np.isfinite(lv) & (capped == lower)
            if m.any():
                ax.errorbar(100 * res["gap"][m], lv[m], yerr=se[m], fmt=fmt, color=c, ms=5, capsize=2,
                            mfc="none" if lower else c, label=label + extra)
    ax.set_xlabel("generalisation gap (train accuracy - test accuracy, %)")
    ax.set_ylabel(f"log10 volume of {{loss < {cfg.basin_threshold:g}}}")
    ax.set_title(f"basin volume against generalisation (D = {res['thetas'].shape[1]}, {cfg.n_rays} rays)",
                 fontsize=10)
    ax.legend(fontsize=8)
    return fig, "fig_volume.png"


def _predict(cfg, theta: np.ndarray, pts: np.ndarray) -> np.ndarray:
    from .._flat import FlatLayout
    from .huang import make_model

    model = make_model(cfg, 0)
    FlatLayout.of(model).load(model, torch.from_numpy(theta))
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(pts).float()), 1)[:, 1].numpy()


def fig_boundaries(res, cfg, plt):
    x, y = res["x_train"], res["y_train"]
    lo, hi = x.min(0) - 0.5, x.max(0) + 0.5
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
    pts = np.stack([gx.ravel(), gy.ravel()], 1)
    bad = res["kind_is_bad"]
    good_i = int(np.flatnonzero(~bad)[0])
    bad_i = int(np.flatnonzero(bad)[np.argmax(res["gap"][bad])]) if bad.any() else good_i
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, i, title in ((axes[0], good_i, "good minimum"), (axes[1], bad_i, "bad minimum")):
        p = _predict(cfg, res["thetas"][i], pts).reshape(gx.shape)
        ax.contourf(gx, gy, p, levels=20, cmap="RdBu_r", alpha=0.5)
        ax.contour(gx, gy, p, levels=[0.5], colors="k", linewidths=1.2)
        ax.scatter(x[:, 0], x[:, 1], c=np.where(y == 1, RED, BLUE), s=14, edgecolors="k", linewidths=0.3)
        ax.set_title(f"{title}: train {100 * res['train_acc'][i]:.0f}%, test {100 * res['test_acc'][i]:.1f}%",
                     fontsize=10)
        ax.set_xticks([]), ax.set_yticks([])
    return fig, "fig_boundaries.png"


def fig_tsne(res, cfg, plt):
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    t = res["tsne"]
    n_it = res["good_iterates"].shape[0]
    if np.isfinite(t).all():
        ax.plot(t[:n_it, 0], t[:n_it, 1], color=GREY, lw=0.6, zorder=1)
        ax.scatter(t[:n_it, 0], t[:n_it, 1], color=RED, s=12, zorder=2,
                   label=f"optimizer iterates (every {cfg.record_every} steps)")
        ax.scatter(t[n_it:, 0], t[n_it:, 1], color=BLUE, s=16, zorder=2, label="bad minima")
        ax.scatter(t[n_it - 1, 0], t[n_it - 1, 1], color="k", marker="*", s=160, zorder=3, label="final iterate")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "t-SNE needs scikit-learn (pip install scikit-learn)", ha="center", transform=ax.transAxes)
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title("t-SNE of the iterates of a good run and the bad minima", fontsize=10)
    return fig, "fig_tsne.png"
