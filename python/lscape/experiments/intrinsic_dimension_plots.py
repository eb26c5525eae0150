"""The figures of the intrinsic-dimension reproduction, drawn from its results.npz arrays (matplotlib, Agg)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .common import save_figures
from .gamst_walker_plots import GREY


def plot_all(res: Mapping[str, Any], out: Path, cfg, plt) -> list[str]:
    return save_figures((fig1_accuracy_vs_d, fig2_epochs), res, out, cfg, plt)


def _title(net: str, cfg) -> str:
    return f"FC net, hidden {'-'.join(map(str, cfg.hidden))} ({cfg.dataset})" if net == "fc" else \
        f"LeNet-5 ({cfg.dataset})"


def _networks(res) -> list[str]:
    return [str(n) for n in np.atleast_1d(res["networks"])]


def fig1_accuracy_vs_d(res, cfg, plt):
    """Test accuracy against d (log axis) per network: each seed, the mean, the full-space baseline,
    0.9 absolute (Li et al.'s reading) and 0.9 x the measured baseline, d_int90 and Li et al.'s value."""
    from .intrinsic_dimension import LI_ET_AL, reading

    nets = _networks(res)
    fig, axes = plt.subplots(1, len(nets), figsize=(6.5 * len(nets), 4.5), squeeze=False)
    for ax, net in zip(axes[0], nets, strict=True):
        dims, scores = res[f"{net}_dims"], res[f"{net}_scores"]
        for s in range(scores.shape[1]):
            ax.plot(dims, scores[:, s], "o", ms=3, color=GREY, alpha=0.7, label="each seed" if s == 0 else None)
        ax.plot(dims, scores.mean(axis=1), "-o", ms=4, color="C0", label="mean over seeds")
        li = reading(dict(res), net, cfg.threshold, cfg.baseline)
        if res[f"{net}_baseline_scores"].size:  # the full space was trained too (full_space=True)
            base = float(np.mean(res[f"{net}_baseline_scores"]))
            ax.axhline(base, color="k", lw=1, label=f"full space (d = D = {int(res[f'{net}_D']):,}): {base:.4f}")
            ax.axhline(cfg.threshold * base, color="C1", ls=":", lw=1, label=f"{cfg.threshold:g} x measured baseline")
        ax.axhline(li.target, color="C3", ls="--", lw=1, label=f"{cfg.threshold:g} x {cfg.baseline:g} (Li et al.)")
        if li.d_int is not None:
            ax.axvline(li.d_int_interpolated, color="C3", lw=1.5,
                       label=f"d_int90 = {li.d_int} (interpolated {li.d_int_interpolated:.0f})")
        if cfg.dataset == "mnist":
            ax.axvline(LI_ET_AL[net], color="C2", ls="-.", lw=1, label=f"Li et al.: {LI_ET_AL[net]}")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(plt.matplotlib.ticker.NullFormatter())
        ax.set_xticks(dims)
        ax.set_xlabel("subspace dimension d")
        ax.set_ylabel(f"test accuracy after {cfg.fc_epochs if net == 'fc' else cfg.lenet_epochs} epochs")
        ax.set_title(_title(net, cfg), fontsize=10)
        ax.legend(fontsize=7, loc="center left")
    return fig, "fig1_accuracy_vs_d.png"


def fig2_epochs(res, cfg, plt):
    """Test accuracy after every epoch, per network: the full-space runs and each swept d (mean over
    seeds): how far the capped epoch budget is from a plateau (the y axis zoomed on the last 80%)."""
    nets = _networks(res)
    fig, axes = plt.subplots(1, len(nets), figsize=(6.5 * len(nets), 4.5), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, net in zip(axes[0], nets, strict=True):
        dims, hist, base = res[f"{net}_dims"], res[f"{net}_history"], res[f"{net}_baseline_history"]
        ep = np.arange(1, hist.shape[2] + 1)
        for i, d in enumerate(dims):
            ax.plot(ep, hist[i].mean(axis=0), color=cmap(i / max(1, len(dims) - 1)), lw=1, label=f"d = {d}")
        if np.isfinite(base).any():  # the full space was trained too (full_space=True)
            ax.plot(ep, np.nanmean(base, axis=0), color="k", lw=1.5, label="full space")
        ax.axhline(cfg.threshold * cfg.baseline, color="C3", ls="--", lw=1)
        late = np.concatenate([hist.mean(axis=1)[:, hist.shape[2] // 5:].ravel(), base[:, base.shape[1] // 5:].ravel()])
        if np.isfinite(late).any():  # zoom on the last 80% of the epochs, where a plateau shows or does not
            ax.set_ylim(max(0.0, float(np.nanmin(late)) - 0.02), None)
        ax.xaxis.set_major_locator(plt.matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (mean over seeds)")
        ax.set_title(f"{_title(net, cfg)}: accuracy after every epoch", fontsize=10)
        ax.legend(fontsize=7, ncol=2, loc="lower right")
    return fig, "fig2_epochs.png"
