"""The figures of the Goldilocks reproduction, drawn from its results.npz arrays (matplotlib, Agg)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .common import save_figures
from .gamst_walker_plots import GREY


def plot_all(res: Mapping[str, Any], out: Path, cfg, plt) -> list[str]:
    return save_figures((fig2_accuracy, fig3_radius), res, out, cfg, plt)


def fig2_accuracy(res, cfg, plt):
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    r0, rx = res["r0"], float(res["r_x"])
    cmap = plt.get_cmap("viridis")
    for ax, kind, title in ((axes[0], "hyperplane", "(a) random hyperplanes r = a + P theta, |a| = r0"),
                            (axes[1], "hypersphere", "(b) random hyperspheres |P theta| = r0")):
        acc = res[f"{kind}_acc"]
        for i, d in enumerate(res["dims"]):
            ax.plot(r0, acc[i], marker="o", ms=3, color=cmap(i / max(1, len(res["dims"]) - 1)), label=f"d = {d}")
        ax.plot(r0, res["full_acc"][0], color="k", ls="--", lw=1, label="full space (d = D), from |r| = r0")
        ax.axvline(rx, color=GREY, ls=":", lw=1.5, label=f"r_X = {rx:.3g}")
        ax.set_xscale("log")
        ax.set_xlabel("initialisation radius r0")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    axes[0].set_ylabel(f"validation accuracy after {cfg.epochs} epochs")
    return fig, "fig2_accuracy.png"


def fig3_radius(res, cfg, plt):
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    r0 = res["r0"]
    cmap = plt.get_cmap("plasma")
    drawn = 0
    for k in range(len(r0)):
        t, r = res[f"full_t_{k}"], res[f"full_r_{k}"]
        if len(t) < 2:
            continue
        drawn += 1
        c = cmap(k / max(1, len(r0) - 1))
        e = res["full_fit"][k, 0]
        keep = t > 0
        axes[0].plot(t[keep], r[keep], color=c, lw=1, label=f"r0 = {r0[k]:.2g}, exponent {e:.2f}")
        axes[1].plot(t, r ** 2 - r0[k] ** 2, color=c, lw=1)
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("optimizer step t")
    axes[0].set_ylabel("radius |r(t)|")
    axes[0].set_title("full-space training: r(t) on log-log axes (fitted log-log exponent)", fontsize=10)
    if drawn:
        axes[0].legend(fontsize=6, ncol=2)
    else:  # a run shorter than two radius records (record_every larger than its steps)
        for ax in axes:
            ax.text(0.5, 0.5, "no trajectory has two radius records", ha="center", va="center",
                    transform=ax.transAxes)
    axes[1].set_xlabel("optimizer step t")
    axes[1].set_ylabel("r(t)^2 - r0^2")
    axes[1].set_yscale("symlog", linthresh=1e-2)
    axes[1].set_title("random-walk model: r^2 - r0^2 grows linearly in t", fontsize=10)
    return fig, "fig3_radius.png"
