"""The figures of the Goodfellow-Vinyals reproduction, drawn from its results.npz arrays (matplotlib, Agg)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .common import save_figures
from .gamst_walker_plots import BLUE, GREY, RED, label_axes

ACT_LABEL = {"relu": "ReLU", "sigmoid": "logistic sigmoid"}


def plot_all(res: Mapping[str, Any], out: Path, cfg, plt) -> list[str]:
    return save_figures((fig2_interpolation, fig3_resolution, fig4_minima, fig5_trajectory, fig_training),
                        res, out, cfg, plt)


def fig2_interpolation(res, cfg, plt):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    a = res["alphas_wide"]
    for ax, act in zip(axes, ("sigmoid", "relu"), strict=False):
        ax.plot(a, res[f"{act}_wide_train"], color=BLUE, label="train")
        ax.plot(a, res[f"{act}_wide_val"], color=RED, label="validation")
        for x in (0, 1):
            ax.axvline(x, color=GREY, lw=0.7, ls=":")
        ax.set_yscale("log")
        label_axes(ax, r"$\alpha$   ($\theta = (1-\alpha)\,\theta_i + \alpha\,\theta_f$)",
                   "cross-entropy J($\\theta$)", f"{ACT_LABEL[act]}: initial -> final parameters")
    return fig, "fig2_interpolation.png"


def fig3_resolution(res, cfg, plt):
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6), gridspec_kw={"wspace": 0.35})
    u = res["relu_tile_unit"]
    panels = [(res["alphas_unit"], u, "(a) 200 values of alpha tiling [0, 1]", None),
              (res["alphas_unit"], u, "(b) zoom of (a)", (u.min(), u.min() + 0.05 * (u.max() - u.min()))),
              (res["alphas_start"], res["relu_tile_start"], "(c) [0, 0.01]", None),
              (res["alphas_end"], res["relu_tile_end"], "(d) [0.99, 1]", None)]
    for ax, (a, J, title, ylim) in zip(axes, panels, strict=False):
        ax.plot(a, J, color=BLUE, marker=".", ms=2, lw=0.8)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_xlabel(r"$\alpha$")
        ax.set_title(title, fontsize=10)
    axes[0].set_ylabel("training cross-entropy (ReLU)")
    return fig, "fig3_resolution.png"


def fig4_minima(res, cfg, plt):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    a = res["alphas_wide"]
    for act, c in (("relu", BLUE), ("sigmoid", RED)):
        axes[0].plot(a, res[f"{act}_two_solutions"], color=c, label=ACT_LABEL[act])
        axes[1].plot(a, res[f"{act}_random_to_solution"], color=c, label=ACT_LABEL[act])
    axes[0].set_title("between two SGD solutions (different initialisations)", fontsize=10)
    axes[1].set_title("from a random point (alpha = 0) to an SGD solution (alpha = 1)", fontsize=10)
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel(r"$\alpha$")
        ax.set_ylabel("training cross-entropy")
        for x in (0, 1):
            ax.axvline(x, color=GREY, lw=0.7, ls=":")
        ax.legend(fontsize=8)
    return fig, "fig4_minima.png"


def fig5_trajectory(res, cfg, plt):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for act, c in (("relu", BLUE), ("sigmoid", RED)):
        ax.plot(res[f"{act}_coord"], res[f"{act}_residual"], color=c, marker=".", ms=3, lw=0.8,
                label=ACT_LABEL[act])
    label_axes(ax, "coordinate along the line from $\\theta_i$ (0) to $\\theta_f$ (1)",
               "norm of the residual off the line", "how far SGD strays from the initial -> final line")
    return fig, "fig5_trajectory.png"


def fig_training(res, cfg, plt):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for act, c in (("relu", BLUE), ("sigmoid", RED)):
        cur = res[f"{act}_curves"]
        ep = np.arange(1, len(cur) + 1)
        axes[0].plot(ep, cur[:, 0], color=c, label=f"{ACT_LABEL[act]} train")
        axes[0].plot(ep, cur[:, 2], color=c, ls="--", label=f"{ACT_LABEL[act]} validation")
        axes[1].plot(ep, cur[:, 1], color=c, label=f"{ACT_LABEL[act]} train")
        axes[1].plot(ep, cur[:, 3], color=c, ls="--", label=f"{ACT_LABEL[act]} validation")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("cross-entropy")
    axes[1].set_ylabel("accuracy")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    return fig, "fig_training.png"
