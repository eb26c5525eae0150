"""The figures of the Gamst-Walker reproduction, drawn from its results.npz arrays (matplotlib, Agg)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import tinymlp as tm
from .common import save_figures
from .stats import LogisticFit

OPT_LABEL = {"sgd": "gradient descent + momentum", "adadelta": "Adadelta"}
BLUE, RED, GREEN, GREY, ORANGE = "#1f5fbf", "#d62728", "#2ca02c", "#7f7f7f", "#ff7f0e"


def label_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    """The axis labels, the title (at 10 pt) and the legend (at 8 pt) of one panel, as every figure sets them."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)


def plot_all(res: Mapping[str, Any], out: Path, cfg, plt) -> list[str]:
    """Write every figure into out; returns their file names."""
    figs = [fig1_wf, fig2_mean_fits, fig3_best_fits, fig_losses, fig5_basin, fig_hessian]
    if "neb_energies" in res:
        figs += [fig4_neb, fig_distances]
    return save_figures(figs, res, out, cfg, plt)


def _draw_network(ax, params: np.ndarray) -> None:
    """Nodes of the 5 x 5 net (input at the bottom, output on top) and an edge for every nonzero weight,
    its width growing with |w| (black positive, red negative)."""
    spec = tm.TinyMLP(tm.WF_DEPTH, tm.WF_WIDTH)
    K, N = spec.depth, spec.width
    layers = spec.unflatten(torch.from_numpy(params))
    mid = N / 2 - 0.5
    pos = [[(mid, 0.0)]] + [[(j, l + 1.0) for j in range(N)] for l in range(K)] + [[(mid, K + 1.0)]]
    wmax = max(float(W.abs().max()) for W, _ in layers)
    for l, (W, _) in enumerate(layers):
        W = W.numpy()
        for j in range(W.shape[0]):
            for i in range(W.shape[1]):
                if W[j, i] != 0:
                    (x0, y0), (x1, y1) = pos[l][i], pos[l + 1][j]
                    ax.plot([x0, x1], [y0, y1], color="k" if W[j, i] > 0 else RED,
                            lw=0.6 + 2.6 * abs(W[j, i]) / wmax, zorder=1)
    for l, row in enumerate(pos):
        for j, (px, py) in enumerate(row):
            inner = 0 < l <= K
            c = "white" if not inner else ("#cfe0ff" if j < 2 else "#d8f0d0")
            ax.scatter([px], [py], s=260, c=c, edgecolors="k", zorder=2)
    ax.text(0.5, K + 0.6, "sawtooth", ha="center", fontsize=8, color=BLUE)
    ax.text(3.0, K + 0.6, "spline", ha="center", fontsize=8, color=GREEN)
    ax.set_xlim(-0.8, N - 0.2)
    ax.set_ylim(-0.6, K + 1.6)
    ax.axis("off")


def fig1_wf(res, cfg, plt):
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.4), gridspec_kw={"width_ratios": [1, 1.5]})
    _draw_network(a, res["wf_params"])
    # which construction, read off the weights themselves (a run from before wf_construction has none in
    # its config)
    name = next((c for c in tm.WF_CONSTRUCTIONS
                 if np.array_equal(tm.wf_network(c)[1].numpy(), np.asarray(res["wf_params"]))), "unknown")
    a.set_title(f"$W_f$ (construction {name}): nonzero weights (width ~ |w|; red < 0)", fontsize=10)
    g = res["grid_x"]
    b.plot(g, tm.wf_spline(g), color=GREEN, lw=1, ls="--", label="spline (right 5x3)")
    b.plot(g, tm.wf_sawtooth(g), color=GREY, lw=0.8, ls=":", label="sawtooth (left 5x2)")
    b.scatter(res["x_train"], res["y_train"], s=2, color=GREY, zorder=2,
              label=f"training set (P={len(res['x_train'])})")
    b.plot(g, res["grid_f"], color=BLUE, lw=1.2, zorder=3, label="f = output of $W_f$")
    b.set_xlabel("x")
    b.legend(fontsize=8, loc="lower left")
    b.set_title("f: a low-frequency spline plus a 16-tooth sawtooth", fontsize=10)
    return fig, "fig1_wf.png"


def fig2_mean_fits(res, cfg, plt):
    g, f = res["grid_x"], res["grid_f"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
    axes[0].plot(g, f, color=BLUE, lw=1, label="f")
    axes[0].plot(g, res["sgd_typical_fit"], color=GREEN, lw=1.5, label="a typical fit (median loss, SGD)")
    axes[0].legend(fontsize=8, loc="lower left")
    axes[0].set_title("f and a typical trained 5x5 network", fontsize=10)
    for ax, opt in zip(axes[1:], ("sgd", "adadelta"), strict=False):
        m, s = res[f"{opt}_mean"], res[f"{opt}_std"]
        n = int((~res[f"{opt}_diverged"]).sum())
        ax.plot(g, f, color=BLUE, lw=0.8)
        ax.fill_between(g, m - s, m + s, color=RED, alpha=0.25, lw=0)
        ax.plot(g, m, color=RED, lw=1.5)
        ax.set_title(f"{OPT_LABEL[opt]}: mean fit +- 1 sd ({n:,} models)", fontsize=10)
    for ax in axes:
        ax.set_xlabel("x")
    return fig, "fig2_mean_fits.png"


def fig3_best_fits(res, cfg, plt):
    g, f = res["grid_x"], res["grid_f"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, opt in zip(axes, ("sgd", "adadelta"), strict=False):
        i = int(res[f"{opt}_best_index"])
        ax.plot(g, f, color=BLUE, lw=1, label="f")
        ax.plot(g, res[f"{opt}_best_fit"], color=RED, lw=1.3, label="best fit")
        ax.set_title(f"{OPT_LABEL[opt]}: best of {len(res[f'{opt}_loss']):,} (MSE {res[f'{opt}_loss'][i]:.2e})",
                     fontsize=10)
        ax.set_xlabel("x")
        ax.legend(fontsize=8, loc="lower left")
    return fig, "fig3_best_fits.png"


def fig_losses(res, cfg, plt):
    thr = float(res["global_min_threshold"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
    vals = {o: res[f"{o}_loss"][~res[f"{o}_diverged"]] for o in ("sgd", "adadelta")}
    allv = np.concatenate([v[v > 0] for v in vals.values()] + [np.array([thr])])
    bins = np.logspace(np.log10(allv.min()) - 0.1, np.log10(allv.max()) + 0.1, 60)
    for o, c in (("sgd", RED), ("adadelta", BLUE)):
        a.hist(np.clip(vals[o], bins[0], None), bins=bins, histtype="step", color=c, lw=1.5,
               label=f"{OPT_LABEL[o]} ({(vals[o] < thr).sum()} at the global min)")
    a.axvline(thr, color="k", ls="--", lw=1, label=f"global-min threshold {thr:.1e}")
    a.axvline(tm.WF_SAW_AMPLITUDE ** 2 / 12, color=GREY, ls=":", lw=1, label="variance of the sawtooth")
    a.set_xscale("log")
    a.set_xlabel("final training MSE")
    a.set_ylabel("models")
    a.legend(fontsize=7)
    a.set_title("distribution of final losses", fontsize=10)
    steps = (np.arange(res["sgd_history"].shape[1]) + 1) * cfg.record_every
    for o, c in (("sgd", RED), ("adadelta", BLUE)):
        h = res[f"{o}_history"]
        if h.shape[0]:
            q = np.nanquantile(h, [0.1, 0.5, 0.9], axis=0)
            b.plot(steps, q[1], color=c, lw=1.5, label=f"{OPT_LABEL[o]} median")
            b.fill_between(steps, q[0], q[2], color=c, alpha=0.15, lw=0)
    b.set_yscale("log")
    b.set_xlabel("step")
    b.set_ylabel("training MSE (10%, 50%, 90%)")
    b.legend(fontsize=8)
    b.set_title("loss during training", fontsize=10)
    return fig, "fig_losses.png"


def fig5_basin(res, cfg, plt):
    r = res["basin_noise_norm"]
    grid = np.linspace(0.0, cfg.basin_max_noise, 200)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"wspace": 0.45})
    for ax, opt in zip(axes, ("sgd", "adadelta"), strict=False):
        loss = res[f"basin_{opt}_loss"]
        ax.scatter(r, loss, s=5, color="k", alpha=0.5, lw=0, label="final loss")
        ax.plot(res[f"basin_{opt}_lowess_x"], res[f"basin_{opt}_lowess_y"], color=RED, lw=2,
                label="lowess (of log10 loss)")
        ax.axhline(float(res["global_min_threshold"]), color="k", ls="--", lw=0.8, label="global-min threshold")
        ax.set_yscale("log")
        ax.set_xlabel("L2 norm of the noise added to de-symmetrised $W_f$")
        ax.set_ylabel("final training MSE")
        ax.set_title(f"{OPT_LABEL[opt]}: {int(res[f'basin_{opt}_returned'].sum())}/{len(r)} returned",
                     fontsize=10)
        a0, a1 = res[f"basin_{opt}_logistic"]
        p = LogisticFit(float(a0), float(a1), True, False, 0).predict(grid)
        tw = ax.twinx()
        tw.plot(grid, p, color=BLUE, lw=2, label="P(return), logistic fit")
        tw.scatter(r, res[f"basin_{opt}_returned"].astype(float), s=3, color=BLUE, alpha=0.3, marker="|")
        tw.set_ylim(-0.03, 1.03)
        tw.set_ylabel("P(return to the global minimum)", color=BLUE)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = tw.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2,
                  frameon=False)
    return fig, "fig5_basin.png"


def fig_hessian(res, cfg, plt):
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
    tol = cfg.hessian_tol
    bins = np.linspace(-17, 0.5, 71)
    pooled = [("$W_f$", res["wf_hess_eigvals"][None], "k")]
    pooled += [(OPT_LABEL[o], res[f"{o}_hess_eigvals"], c) for o, c in (("sgd", RED), ("adadelta", BLUE))]
    for label, ev, c in pooled:
        if not ev.size:
            continue
        ev = ev.astype(np.float64)
        rel = ev / np.abs(ev).max(axis=1, keepdims=True)
        for sign, ls in ((1, "-"), (-1, "--")):
            v = np.log10(np.clip(sign * rel[sign * rel > 0], 10.0 ** bins[0], None))
            h, _ = np.histogram(v, bins=bins)
            a.step(bins[:-1], h / ev.shape[0], where="post", color=c, ls=ls, lw=1.2,
                   label=f"{label}, {'positive' if sign > 0 else 'negative'}")
    a.axvline(np.log10(tol), color=GREY, lw=1, ls=":", label=f"near-zero tolerance {tol:g}")
    a.set_yscale("symlog", linthresh=0.1)
    a.set_ylim(0, None)
    a.set_xlabel("log10(|lambda| / max |lambda|)   (float64 Hessian; exact zeros land at about -16)")
    a.set_ylabel("eigenvalues per Hessian")
    a.legend(fontsize=6, ncol=2)
    a.set_title("Hessian spectra at the minima, pooled", fontsize=10)
    width = 0.4
    for k, (o, c) in enumerate((("sgd", RED), ("adadelta", BLUE))):
        counts = res[f"{o}_hess_counts"]
        if counts.shape[0]:
            m = counts.mean(0)
            x = np.arange(3) + (k - 0.5) * width
            b.bar(x, m, width, color=c, alpha=0.7, label=f"{OPT_LABEL[o]} ({counts.shape[0]} minima)")
            b.errorbar(x, m, yerr=counts.std(0), fmt="none", color="k", lw=1)
    b.scatter(np.arange(3), res["wf_hess_counts"], color="k", marker="*", s=80, zorder=3, label="$W_f$")
    b.set_xticks(range(3), ["negative", "near-zero", "positive"])
    b.set_ylabel("eigenvalues per Hessian (mean +- sd)")
    b.legend(fontsize=7)
    b.set_title(f"counts; near-zero: |lambda| <= {tol:g} max|lambda|", fontsize=10)
    return fig, "fig_hessian.png"


def fig4_neb(res, cfg, plt):
    """Gamst & Walker Fig 4: (a) every NEB path's energy against distance from W_f, (b) one path coloured
    by position, (c) that path's output functions in the same colours, (d) segment angles."""
    from matplotlib import cm, colors

    arc, E, ang = res["neb_arc"], res["neb_energies"], res["neb_angles"]
    hl = int(res["neb_highlight"])
    radius = res["neb_basin_radius"]
    med_r = float(np.nanmedian(radius)) if np.isfinite(radius).any() else float("nan")
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), gridspec_kw={"hspace": 0.35, "wspace": 0.25})
    (a, b), (c, d) = axes
    converged = res["neb_converged"].astype(bool)
    conv = int(converged.sum())
    for k in range(E.shape[0]):  # unconverged paths apart: orange, dotted
        if k == hl:
            continue
        style = dict(color=GREY, ls="-") if converged[k] else dict(color=ORANGE, ls=":")
        a.plot(arc[k], E[k], lw=0.6, alpha=0.5, **style)
    a.plot(arc[hl], E[hl], color="k", lw=1.6, ls="-" if converged[hl] else ":")
    a.plot([], [], color=GREY, lw=0.8, label=f"converged to fmax {cfg.neb_fmax:g} ({conv})")
    a.plot([], [], color=ORANGE, lw=0.8, ls=":", label=f"not converged ({E.shape[0] - conv})")
    a.axvline(med_r, color=RED, ls="--", lw=1, label=f"median basin radius {med_r:.2f}")
    # the axes fit the converged paths: an unconverged band can wander thousands of units away
    shown = converged if converged.any() else np.ones_like(converged)
    xmax, ymax = 1.03 * float(arc[shown].max()), 1.05 * float(E[shown].max())
    beyond = int((~shown & ((arc.max(1) > xmax) | (E.max(1) > ymax))).sum())
    a.set_xlim(0.0, xmax)
    a.set_ylim(-0.02 * ymax, ymax)
    a.set_xlabel("distance along the NEB path from $W_f$" + (f"  ({beyond} unconverged paths leave the axes)"
                                                              if beyond else ""))
    a.set_ylabel("training MSE")
    a.set_title(f"(a) {E.shape[0]} NEB paths from $W_f$ to trained minima ({conv} converged to fmax "
                f"{cfg.neb_fmax:g})", fontsize=10)
    a.legend(fontsize=8)
    norm = colors.Normalize(0, E.shape[1] - 1)
    cmap = cm.viridis
    b.plot(arc[hl], E[hl], color=GREY, lw=0.8, zorder=1)
    b.scatter(arc[hl], E[hl], c=np.arange(E.shape[1]), cmap=cmap, norm=norm, s=28, zorder=2)
    if np.isfinite(radius[hl]):
        b.axvline(radius[hl], color=RED, ls="--", lw=1, label=f"basin radius of this path {radius[hl]:.2f}")
        b.legend(fontsize=8)
    b.set_xlabel("distance along the NEB path from $W_f$")
    b.set_ylabel("training MSE")
    b.set_title(f"(b) one path, coloured by image ({'converged' if converged[hl] else 'not converged'})",
                fontsize=10)
    outs = res["neb_highlight_outputs"]
    for i in range(outs.shape[0]):
        c.plot(res["grid_x"], outs[i], color=cmap(norm(i)), lw=0.9)
    c.scatter(res["x_train"], res["y_train"], s=4, color="k", zorder=3, label="training set")
    label_axes(c, "x", "network output", "(c) output functions along that path (same colours; dark = $W_f$)")
    mid = arc[:, 1:-1]
    for k in range(ang.shape[0]):
        if k != hl:
            d.plot(mid[k], ang[k], color=GREY if converged[k] else ORANGE, ls="-" if converged[k] else ":",
                   lw=0.5, alpha=0.4)
    d.plot(mid[hl], ang[hl], color="k", lw=1.4, label="the path of (b)")
    d.set_xlim(0.0, xmax)
    label_axes(d, "distance along the NEB path from $W_f$", "angle between successive segments (rad)",
               "(d) segment angles")
    return fig, "fig4_neb.png"


def fig_distances(res, cfg, plt):
    """Distances from de-symmetrised W_f to the de-symmetrised minima (the paper: a shell of radius
    9.5-10.5) against the basin radius read off the NEB paths."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for opt, c in (("sgd", RED), ("adadelta", BLUE)):
        d = res[f"{opt}_wf_distance"][~res[f"{opt}_diverged"] & ~res[f"{opt}_constant"]]
        if d.size:
            ax.hist(d, bins=40, color=c, alpha=0.5, label=f"{OPT_LABEL[opt]} ({d.size} minima)")
    ax.axvspan(9.5, 10.5, color=GREEN, alpha=0.2, label="the paper's shell (9.5-10.5)")
    radius = res["neb_basin_radius"]
    if np.isfinite(radius).any():
        ax.axvline(float(np.nanmedian(radius)), color="k", ls="--",
                   label=f"median basin radius from NEB, {np.nanmedian(radius):.2f}")
    ax.set_xlabel("L2 distance from de-symmetrised $W_f$ (dead constant networks left out)")
    ax.set_ylabel("minima")
    ax.legend(fontsize=8)
    return fig, "fig_distances.png"
