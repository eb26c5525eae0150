"""summary.json of the grokking reproduction: lscape's headline numbers beside the papers' own."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

# the papers' numbers, quoted beside ours (see docs/reproductions/grokking.md for the sources)
PAPERS = {
    "nanda_2023": "p = 113, 30% of pairs, 40,000 full-batch epochs: train accuracy ~1 by epoch ~1,400 "
                  "(memorisation); circuit formation 1.4k-9.4k; cleanup 9.4k-13k, when test loss falls and "
                  "test accuracy reaches ~1; the total weight norm falls through circuit formation and cleanup",
    "omnigrok_2023_lu": "training at fixed weight norm w: train loss L-shaped (high below a critical norm, flat "
                        "and low above it), test loss U-shaped with its minimum at an interior norm; large "
                        "initial norms memorise and generalise only once weight decay brings w down",
    "omnigrok_2023_mnist": "MNIST, 1,000 training images, width-200 depth-3 MLP, MSE, AdamW lr 1e-3, weight "
                           "decay 0.01, init x8: train accuracy ~1 within ~10^3 steps, test accuracy rises "
                           "only after ~10^4-10^5 steps as the weight norm decays (grokking)",
}


def first_step(step: np.ndarray, values: np.ndarray, threshold: float) -> int | None:
    """The first step at which values >= threshold (None: never)."""
    hits = np.flatnonzero(values >= threshold)
    return int(step[hits[0]]) if len(hits) else None


def _at(step: np.ndarray, values: np.ndarray, s: int | None) -> float | None:
    return None if s is None else float(values[np.searchsorted(step, s)])


def _modular(res: dict[str, Any]) -> dict[str, Any]:
    step, rec = res["mod_rec_step"], res["mod_rec"]
    mem = first_step(step, rec[:, 1], 0.99)
    grok = first_step(step, rec[:, 3], 0.9)
    out = {"memorised_epoch (train acc >= 0.99)": mem, "grokked_epoch (test acc >= 0.9)": grok,
           "gap_epochs": None if mem is None or grok is None else grok - mem,
           "final_train_acc": float(rec[-1, 1]), "final_test_acc": float(rec[-1, 3]),
           "final_train_loss": float(rec[-1, 0]), "final_test_loss": float(rec[-1, 2]),
           "norm_start": float(rec[0, 4]), "norm_max": float(rec[:, 4].max()),
           "norm_at_memorised": _at(step, rec[:, 4], mem), "norm_at_grokked": _at(step, rec[:, 4], grok),
           "norm_final": float(rec[-1, 4])}
    if mem is not None and grok is not None:
        out["norm_falls_during_gap"] = bool(out["norm_at_grokked"] < out["norm_at_memorised"])
    return out


def _hessian(res: dict[str, Any]) -> dict[str, Any]:
    s, top, tr = res["mod_snap_step"], res["hess_eigs"][:, 0], res["hess_trace"]
    k = int(np.argmax(top))

    def at(j: int) -> dict[str, float]:
        return {"epoch": int(s[j]), "top": float(top[j]), "trace": float(tr[j])}

    out = {"snapshot_epochs": s.tolist(), "top_eigenvalue": top.tolist(), "trace": tr.tolist(),
           "top_eigenvalue_max": float(top[k]), "top_eigenvalue_max_epoch": int(s[k]),
           "at_memorised": at(int(res["mem_index"])), "final": at(len(s) - 1)}
    grok = first_step(res["mod_rec_step"], res["mod_rec"][:, 3], 0.9)
    if grok is not None:  # the snapshots either side of the test accuracy's crossing of 0.9
        j = int(np.searchsorted(s, grok))
        out["around_grokked"] = [at(i) for i in sorted({max(j - 1, 0), min(j, len(s) - 1)})]
    return out


def _paths(res: dict[str, Any]) -> dict[str, Any]:
    lt, nt = res["path_line_train"], res["path_neb_train"]
    return {"line_train_barrier": float(lt.max() - max(lt[0], lt[-1])),
            "neb_train_barrier": float(nt.max() - max(nt[0], nt[-1])),
            "line_test_loss_ends": [float(res["path_line_test"][0]), float(res["path_line_test"][-1])],
            "neb_length_over_straight": float(res["path_neb_length"]),
            "pca_explained_variance": res["plane_explained"].tolist()}


def _lu(res: dict[str, Any], net: str) -> dict[str, Any]:
    s, fin = res["lu_scales"], res[f"lu_{net}_final"]
    k_test = int(np.nanargmin(fin[:, 2])) if np.isfinite(fin[:, 2]).any() else 0
    return {"w0": float(res[f"lu_{net}_w0"]), "w_over_w0": s.tolist(), "final_train_loss": fin[:, 0].tolist(),
            "final_test_loss": fin[:, 2].tolist(), "final_test_acc": fin[:, 3].tolist(),
            "test_loss_min_at_w_over_w0": float(s[k_test]),
            "test_loss_min_interior": bool(0 < k_test < len(s) - 1),
            "max_relative_norm_error": float(np.max(res[f"lu_{net}_norm_error"]))}


def _mnist(res: dict[str, Any]) -> dict[str, Any]:
    step, rec = res["mnist_rec_step"], res["mnist_rec"]
    fit = first_step(step, rec[:, 1], 0.99)
    best = float(rec[:, 3].max())
    half = first_step(step, rec[:, 3], rec[0, 3] + 0.5 * (best - rec[0, 3]))
    return {"train_acc_0.99_step": fit, "test_acc_half_rise_step": half, "final_train_acc": float(rec[-1, 1]),
            "final_test_acc": float(rec[-1, 3]), "best_test_acc": best, "norm_start": float(rec[0, 4]),
            "norm_final": float(rec[-1, 4]),
            "delay_ratio": None if not fit or half is None else half / fit}


def summary(cfg, res: dict[str, Any]) -> dict[str, Any]:
    out = {"experiment": "grokking", "scale": cfg.scale, "p": cfg.p, "train_fraction": cfg.train_fraction,
           "epochs": cfg.epochs, "modular_addition": _modular(res), "hessian": _hessian(res),
           "paths": _paths(res), "lu_transformer": _lu(res, "mod"), "lu_mnist": _lu(res, "mnist"),
           "mnist_grokking": _mnist(res), "papers": PAPERS,
           "hessian_attention": "sdpa (the network as trained; lscape._hvpattention's written-out second "
                                "derivatives)"}
    return _finite(out)


def _finite(v):
    """NaN / inf -> None, so summary.json is strict JSON."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
