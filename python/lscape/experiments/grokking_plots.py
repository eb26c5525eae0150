"""The figures of the grokking reproduction, drawn from its results.npz arrays (matplotlib, Agg), and the
interactive pages of the PCA-plane surfaces (plotly, when installed)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .common import save_figures
from .grokking_summary import first_step

TRAIN, TEST, NORM = "tab:blue", "tab:red", "tab:green"


def plot_all(res: Mapping[str, Any], out: Path, cfg, plt) -> list[str]:
    names = save_figures((fig1_grokking, fig2_hessian, fig3_plane, fig4_paths, fig5_lu, fig6_mnist), res, out,
                         cfg, plt)
    return names + interactive_pages(res, Path(out))


def _x(step: np.ndarray) -> np.ndarray:
    """Steps on a log axis: step 0 drawn at 0.5."""
    return np.where(step > 0, step, 0.5)


def _marks(ax, res, step, rec) -> None:
    """Vertical lines at memorisation (train acc >= 0.99) and grokking (test acc >= 0.9)."""
    for s, label, c in ((first_step(step, rec[:, 1], 0.99), "train acc 0.99", TRAIN),
                        (first_step(step, rec[:, 3], 0.9), "test acc 0.9", TEST)):
        if s is not None:
            ax.axvline(max(s, 0.5), color=c, ls=":", lw=1, label=f"{label} (epoch {s})")


def _pair(ax, x, rec: np.ndarray, column: int, what: str) -> None:
    """Train (rec[:, column]) and test (rec[:, column + 2]) curves of a records array (REC_COLUMNS)."""
    ax.plot(x, rec[:, column], color=TRAIN, label=f"train {what}")
    ax.plot(x, rec[:, column + 2], color=TEST, label=f"test {what}")


def fig1_grokking(res, cfg, plt):
    step, rec = res["mod_rec_step"], res["mod_rec"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.3))
    x = _x(step)
    _pair(axes[0], x, rec, 1, "accuracy")
    axes[0].set_ylabel("accuracy")
    _pair(axes[1], x, rec, 0, "loss")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("cross-entropy")
    axes[2].plot(x, rec[:, 4], color=NORM, label="weight norm r(t)")
    axes[2].set_ylabel("|theta|")
    tw = axes[2].twinx()
    tw.plot(x, rec[:, 3], color=TEST, lw=0.8, alpha=0.6)
    tw.set_ylabel("test accuracy", color=TEST)
    tw.set_ylim(-0.02, 1.02)
    for ax, title in zip(axes, ("(a) accuracy", "(b) loss", "(c) weight norm r(t), test accuracy"), strict=True):
        _marks(ax, res, step, rec)
        ax.set_xscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(f"(a + b) mod {cfg.p}, {cfg.train_fraction:.0%} of pairs for training, full-batch AdamW "
                 f"(wd {cfg.weight_decay:g})", fontsize=11)
    return fig, "fig1_grokking.png"


def fig2_hessian(res, cfg, plt):
    s, eigs, tr, se = res["mod_snap_step"], res["hess_eigs"], res["hess_trace"], res["hess_trace_se"]
    step, rec = res["mod_rec_step"], res["mod_rec"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.3))
    for i in range(eigs.shape[1]):
        axes[0].plot(_x(s), eigs[:, i], marker="o", ms=3, label=f"lambda_{i + 1}")
    axes[1].errorbar(_x(s), tr, yerr=se, marker="o", ms=3, color="k", label="tr H (Hutch++)")
    for ax, title in zip(axes, ("(a) top Hessian eigenvalues of the training loss", "(b) Hessian trace"),
                         strict=True):
        tw = ax.twinx()
        tw.plot(_x(step), rec[:, 3], color=TEST, lw=0.8, alpha=0.6)
        tw.plot(_x(step), rec[:, 1], color=TRAIN, lw=0.8, alpha=0.6)
        tw.set_ylabel("accuracy (train blue, test red)")
        tw.set_ylim(-0.02, 1.02)
        _marks(ax, res, step, rec)
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=1e-2)
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
    return fig, "fig2_hessian.png"


def plane_surface(res: Mapping[str, Any]):
    """The PCA-plane surface of results.npz as a lscape.Surface (directions and centre not kept: the
    figures need the grid, the values and the trajectory only)."""
    from ..surface import Surface

    values = {k: res[f"plane_{k}"] for k in ("train_loss", "test_loss", "train_acc", "test_acc")}
    return Surface(res["plane_x"], res["plane_y"], values, np.isfinite(values["train_loss"]), np.zeros((2, 1)),
                   np.zeros(1), info={"kind": "pca"}, trajectory=res["plane_trajectory"])


def fig3_plane(res, cfg, plt):
    from .. import plot

    s = plane_surface(res)
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    ev = res["plane_explained"]
    for ax, q in zip(axes, ("train_loss", "test_loss"), strict=True):
        plot.trajectory(s, q, ax=ax, scale="log")
        ax.set_title(f"{q.replace('_', ' ')} (log10) on the PCA plane of the snapshots, trajectory drawn",
                     fontsize=9)
    fig.suptitle(f"PCA directions explain {ev[0]:.0%} and {ev[1]:.0%} of the trajectory's variance", fontsize=10)
    return fig, "fig3_pca_plane.png"


def fig4_paths(res, cfg, plt):
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.3), sharey=True)
    j = int(res["mem_index"])
    e0, e1 = int(res["mod_snap_step"][j]), int(res["mod_snap_step"][-1])
    for ax, part, title in ((axes[0], "train", "training loss"), (axes[1], "test", "test loss")):
        ax.plot(res["path_alpha"], res[f"path_line_{part}"], color="k", label="straight line")
        ax.plot(res["path_neb_arc"], res[f"path_neb_{part}"], color="tab:purple", marker="o", ms=3,
                label=f"NEB on the training loss ({res['path_neb_length']:.2f}x the straight length)")
        ax.set_yscale("log")
        ax.set_xlabel(f"fraction of the path, memorised (epoch {e0}) -> grokked (epoch {e1})")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("cross-entropy")
    return fig, "fig4_paths.png"


def fig5_lu(res, cfg, plt):
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    s = res["lu_scales"]
    for row, net, title in ((0, "mod", f"transformer, (a + b) mod {cfg.p}"), (1, "mnist", "MLP, MNIST (1,000 images)")):
        fin = res[f"lu_{net}_final"]
        axes[row, 0].plot(s, fin[:, 0], marker="o", color=TRAIN, label="train loss")
        axes[row, 0].plot(s, fin[:, 2], marker="o", color=TEST, label="test loss")
        axes[row, 0].set_yscale("log")
        axes[row, 1].plot(s, fin[:, 1], marker="o", color=TRAIN, label="train accuracy")
        axes[row, 1].plot(s, fin[:, 3], marker="o", color=TEST, label="test accuracy")
        for ax in axes[row]:
            ax.axvline(1.0, color="grey", ls=":", lw=1, label=f"w0 = {float(res[f'lu_{net}_w0']):.3g}")
            ax.set_xscale("log")
            ticks = s if len(s) <= 11 else s[::2]  # the grid's own values, plainly written
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks], minor=False)
            ax.set_xticks([], minor=True)
            ax.set_xlabel("weight norm w / w0 (training on the sphere |theta| = w)")
            ax.set_title(f"{title}: after training at fixed norm", fontsize=10)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig, "fig5_lu.png"


def fig6_mnist(res, cfg, plt):
    step, rec = res["mnist_rec_step"], res["mnist_rec"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.3))
    x = _x(step)
    _pair(axes[0], x, rec, 1, "accuracy")
    tw = axes[0].twinx()
    tw.plot(x, rec[:, 4], color=NORM, label="r(t)")
    tw.set_ylabel("weight norm r(t)", color=NORM)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("optimizer step")
    axes[0].set_title(f"(a) MNIST MLP from {cfg.mnist_init_scale:g}x its initialisation", fontsize=10)
    axes[0].legend(fontsize=7)
    sc = axes[1].scatter(rec[:, 4], rec[:, 3], c=np.log10(_x(step)), cmap="viridis", s=10)
    fig.colorbar(sc, ax=axes[1], label="log10 step")
    axes[1].set_xlabel("weight norm r(t)")
    axes[1].set_ylabel("test accuracy")
    axes[1].set_title("(b) test accuracy against r(t)", fontsize=10)
    return fig, "fig6_mnist_grokking.png"


def interactive_pages(res: Mapping[str, Any], out: Path) -> list[str]:
    """grokking_train_loss.html and grokking_test_loss.html (lscape.plot.interactive, log10), or none
    without plotly."""
    try:
        import plotly  # noqa: F401
    except ImportError:
        return []
    from .. import plot

    s = plane_surface(res)
    names = []
    for q in ("train_loss", "test_loss"):
        name = f"grokking_{q}.html"
        plot.interactive(s, q, log=True, path=out / name)
        names.append(name)
    return names
