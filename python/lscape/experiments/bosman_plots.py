"""The figures of the Bosman et al. (2019) reproduction, drawn from its results.npz arrays (matplotlib, Agg)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .common import save_figures
from .gamst_walker_plots import BLUE, GREEN, GREY, RED

CLASS_COLOURS = {"convex": BLUE, "concave": RED, "saddle": GREEN, "flat": GREY}


def plot_all(res: Mapping[str, Any], out: Path, cfg, plt) -> list[str]:
    return save_figures((fig1_curvature, fig2_lg_clouds_xor, fig3_lg_depth_xor, fig4_digits_accuracy,
                         fig5_lg_clouds_digits), res, out, cfg, plt)


def _settings(cfg) -> list[tuple[float, bool]]:
    return [(float(r), micro) for r in cfg.init_ranges for micro in (True, False)]


def _setting_label(r: float, micro: bool) -> str:
    return f"{'micro' if micro else 'macro'} [-{r:g},{r:g}]"


def _cell(res, prob: str, w: int, dp: int, r: float, micro: bool) -> int | None:
    m = ((res[f"{prob}_cell_width"] == w) & (res[f"{prob}_cell_depth"] == dp)
         & (res[f"{prob}_cell_range"] == r) & (res[f"{prob}_cell_micro"] == micro))
    i = np.flatnonzero(m)
    return int(i[0]) if len(i) else None


def _samples(res, prob: str, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b = res[f"{prob}_start"][i], res[f"{prob}_start"][i + 1]
    return res[f"{prob}_loss"][a:b], res[f"{prob}_grad_norm"][a:b], res[f"{prob}_acc"][a:b]


def _cloud(ax, res, prob: str, i: int | None, title: str):
    """One l-g cloud: loss on x, gradient norm on y, coloured by accuracy; returns the scatter (or None)."""
    ax.set_title(title, fontsize=8)
    if i is None:
        ax.text(0.5, 0.5, "not run at this scale", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
        return None
    loss, g, acc = _samples(res, prob, i)
    ok = np.isfinite(loss) & np.isfinite(g)
    order = np.argsort(acc[ok], kind="stable")  # the accurate points on top
    sc = ax.scatter(loss[ok][order], g[ok][order], c=acc[ok][order], cmap="viridis", vmin=0, vmax=1, s=3,
                    linewidths=0, rasterized=True)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.tick_params(labelsize=7)
    return sc


def _colorbar(fig, axes, sc, plt, label: str):
    if sc is not None:
        fig.colorbar(sc, ax=np.ravel(axes).tolist(), shrink=0.6, aspect=30, label=label)


def fig1_curvature(res, cfg, plt):
    """Stacked bars of the convex / concave / saddle / flat fractions (XOR), a panel per depth, a group of
    bars (the four settings) per width."""
    from .bosman import CLASSES

    depths, widths, sets = list(cfg.xor_depths), list(cfg.xor_widths), _settings(cfg)
    fig, axes = plt.subplots(1, len(depths), figsize=(4.2 * len(depths), 4.2), squeeze=False, sharey=True)
    for ax, dp in zip(axes[0], depths, strict=False):
        ticks, labels = [], []
        for wi, w in enumerate(widths):
            for si, (r, micro) in enumerate(sets):
                x = wi * (len(sets) + 1) + si
                i = _cell(res, "xor", w, dp, r, micro)
                frac = res["xor_frac"][i] if i is not None else np.zeros(4)
                bottom = 0.0
                for k, c in enumerate(CLASSES):
                    ax.bar(x, frac[k], bottom=bottom, color=CLASS_COLOURS[c], width=0.85,
                           label=c if (wi, si) == (0, 0) else None)
                    bottom += frac[k]
                ticks.append(x)
                labels.append(f"{'mi' if micro else 'ma'} {r:g}")
            ax.text(wi * (len(sets) + 1) + (len(sets) - 1) / 2, -0.2, f"h = {w}", ha="center", fontsize=9,
                    transform=ax.get_xaxis_transform())
        ax.set_xticks(ticks)
        ax.set_xticklabels(labels, rotation=90, fontsize=7)
        ax.set_title(f"XOR, {dp} hidden layer{'s' if dp > 1 else ''}", fontsize=10)
        ax.set_ylim(0, 1)
    axes[0, 0].set_ylabel("fraction of Hessians")
    axes[0, -1].legend(fontsize=8, loc="upper right", framealpha=0.9)
    fig.suptitle(f"curvature at sampled points (eigenvalue zero when |l| <= {cfg.hessian_rtol:g} max |l|; "
                 "mi/ma = micro/macro walks, 1/10 = range [-r, r])", fontsize=9)
    fig.subplots_adjust(bottom=0.25)
    return fig, "fig1_curvature.png"


def _cloud_grid(res, plt, problem: str, micro: bool, grid: list[list[tuple[int, int, float]]], xlabel: str,
                cbar: str, title: str, width: float = 3.3):
    """l-g clouds of one problem's micro or macro walks, a panel per (width, depth, range) of grid (rows of
    columns)."""
    fig, axes = plt.subplots(len(grid), len(grid[0]), figsize=(width * len(grid[0]), 2.6 * len(grid)),
                             squeeze=False, layout="constrained")
    sc = None
    for ri, row in enumerate(grid):
        for ci, (w, dp, r) in enumerate(row):
            i = _cell(res, problem, w, dp, float(r), micro)
            d = f", D = {res[f'{problem}_cell_dim'][i]}" if i is not None else ""
            sc = _cloud(axes[ri, ci], res, problem, i, f"h = {w}, {dp} layer{'s' if dp > 1 else ''}, "
                                                       f"[-{r:g},{r:g}]{d}") or sc
    for ax in axes[-1]:
        ax.set_xlabel(xlabel, fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("gradient norm", fontsize=8)
    _colorbar(fig, axes, sc, plt, cbar)
    fig.suptitle(title, fontsize=10)
    return fig


def fig2_lg_clouds_xor(res, cfg, plt):
    """l-g clouds of the XOR macro walks: a column per width, a row per (depth 1 or 2, range)."""
    rows = [(dp, r) for dp in (1, 2) if dp in cfg.xor_depths for r in cfg.init_ranges]
    grid = [[(w, dp, r) for w in cfg.xor_widths] for dp, r in rows]
    return _cloud_grid(res, plt, "xor", False, grid, "loss (binary cross-entropy)", "accuracy (4 patterns)",
                       "XOR l-g clouds, macro walks (width grows to the right)"), "fig2_lg_clouds_xor.png"


def fig3_lg_depth_xor(res, cfg, plt):
    """l-g clouds of the XOR macro walks at the minimal width: a column per depth, a row per range."""
    w = min(cfg.xor_widths)
    grid = [[(w, dp, r) for dp in cfg.xor_depths] for r in cfg.init_ranges]
    title = f"XOR l-g clouds at the minimal width h = {w}, macro walks (depth grows to the right)"
    return _cloud_grid(res, plt, "xor", False, grid, "loss (binary cross-entropy)", "accuracy (4 patterns)",
                       title), "fig3_lg_depth_xor.png"


def fig4_digits_accuracy(res, cfg, plt):
    """Mean train / test accuracy at the walks' last step, per architecture, a panel per setting."""
    sets = _settings(cfg)
    archs = [(w, dp) for w in cfg.digits_widths for dp in cfg.digits_depths]
    ncol = 2
    nrow = (len(sets) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(max(5.0, 1.1 * len(archs) + 2) * ncol, 3.2 * nrow),
                             squeeze=False, sharey=True, layout="constrained")
    x = np.arange(len(archs))
    for k, (r, micro) in enumerate(sets):
        ax = axes.flat[k]
        tr, te = np.full(len(archs), np.nan), np.full(len(archs), np.nan)
        for j, (w, dp) in enumerate(archs):
            i = _cell(res, "digits", w, dp, r, micro)
            if i is not None:
                tr[j], te[j] = res["digits_cell_end_train_acc_mean"][i], res["digits_cell_end_test_acc_mean"][i]
        ax.bar(x - 0.2, tr, width=0.4, color=BLUE, label="train")
        ax.bar(x + 0.2, te, width=0.4, color=RED, label="test")
        for j in range(len(archs)):
            if np.isfinite(te[j]):
                ax.text(x[j] + 0.2, te[j] + 0.01, f"{te[j]:.2f}", ha="center", fontsize=7)
        ax.set_xticks(x)
        ax.set_xticklabels([f"h{w} d{dp}" for w, dp in archs], fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(_setting_label(r, micro), fontsize=9)
    for ax in axes.flat[len(sets):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("mean accuracy at the last step", fontsize=8)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{cfg.dataset}: accuracy reached by the gradient walks (h: width, d: hidden layers)", fontsize=10)
    return fig, "fig4_digits_accuracy.png"


def fig5_lg_clouds_digits(res, cfg, plt):
    """l-g clouds of the digits micro walks, coloured by accuracy on the loss batch: a column per
    architecture, a row per range."""
    grid = [[(w, dp, r) for w in cfg.digits_widths for dp in cfg.digits_depths] for r in cfg.init_ranges]
    return _cloud_grid(res, plt, "digits", True, grid, "loss (cross-entropy, batch)",
                       f"accuracy ({cfg.batch_size} patterns)", f"{cfg.dataset} l-g clouds, micro walks",
                       width=3.1), "fig5_lg_clouds_digits.png"
