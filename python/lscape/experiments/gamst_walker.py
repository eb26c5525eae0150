"""Gamst & Walker (2017), "The energy landscape of a simple neural network" (§2, §3.1-3.5).

    lscape reproduce gamst-walker --scale smoke|default|paper --out DIR [--resume]

1. W_f, the hand-built 5 x 5 network (a 16-tooth sawtooth on top of a low-frequency spline; see
   lscape.tinymlp.wf_network, construction wf_construction) and its training set (f at the 33 knots plus 9
   points between each pair: P = 321).  Fig 1.  Both constructions compute the same f, so the trained
   minima do not depend on the choice; W_f's place among them does.  Measured against 163 trained minima
   (20,000 steps), 192 jitters per construction (SGD, 10,000 steps) and 20 NEB bands (k = 10, 12 images):
   "v1" (offset 10 in the spline's accumulator) sits 16.2 (median) from the minima, jitter 50% point 0.13;
   "v2" (tent maps without a kink at the end of their range, offset 0.6) sits 10.7 from them, jitter 50%
   point 0.22.  No construction tried came near the paper's basin radius of ~2 by jitter (0.13-0.29; the
   sawtooth's amplitude changes nothing): the sawtooth is five tent maps in a row, so an error in layer 1
   is doubled four times, and noise of ~0.03 per weight (norm ~0.35 over 136 weights) on the O(1)
   balanced weights scrambles the teeth beyond what training repairs.  The NEB "first rise" read between
   images (1.3-1.8) mostly measures the first segment's length; read along the polyline it is 0.05-0.1.
2. Ensembles of 5 x 5 networks from the He init, half trained with SGD + momentum, half with Adadelta
   (torch's defaults), full batch.  The mean +- std of the fitted functions per optimizer (Fig 2), the
   best fits (Fig 3), the distribution of final losses and the fraction reaching the global minimum
   (final loss < global_min_rel * var(y)).  Every minimum is de-symmetrised (lscape.tinymlp.desymmetrize)
   and saved.
3. Hessians (136 x 136, float64) at the de-symmetrised minima, with counts of negative / near-zero /
   positive eigenvalues (|lambda| <= hessian_tol * max |lambda| is near-zero).  Rescaling and permuting
   units is a congruence of the Hessian, so the counts do not depend on the representative (Sylvester).
4. The basin of W_f (§3.4, Fig 5): de-symmetrised W_f plus Gaussian noise of L2 norm uniform in
   [0, basin_max_noise], retrained with each optimizer (the same jitters for both); final loss against
   noise norm with a lowess curve (of log10 loss) and a logistic fit of P(return to the global minimum).
5. NEB paths (§3.3, Fig 4): climbing-image nudged elastic bands (lscape.neb, all at once) from
   de-symmetrised W_f to neb_paths de-symmetrised trained minima (half from each optimizer; not dead
   networks, not at the global minimum): energy against distance along each path, one path coloured by
   the network's output function along it, the angles between successive segments; the basin radius of
   W_f read off each path (the arc length where the energy first reaches neb_basin_rise of the far
   minimum's energy: the initial rise) and the distribution of distances from W_f to the minima.  The
   same radius is also read off the loss along each band's polyline (neb_polyline_points per segment):
   with few images the straight segments cross ridges far above the images, the valley of W_f being
   much narrower than a segment, and the two readings differ by an order of magnitude.

Every stage runs in chunks (ensemble shards, Hessian blocks, NEB band shards) on the run's executor
(local or Ray), each chunk checkpointed as it finishes, so an interrupted run resumes losing only the
chunks in flight, and every chunk's result is independent of where and with which others it ran.
"""
from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import _checks
from .. import tinymlp as tm
from ..reference import mlp as ref
from . import common
from .stats import logistic_fit, lowess
from .training import EnsembleJob, train_ensemble_stage

NAME = "gamst-walker"
OPTIMIZERS = ("sgd", "adadelta")
CHUNK_FIELD = "shard_models"  # what `lscape reproduce --chunk N` sets


@dataclass(frozen=True)
class Config:
    """One scale of the experiment (every field lands in config.json)."""

    scale: str
    models_per_optimizer: int  # paper: 160,000 each
    steps: int  # paper: 50,000
    shard_models: int  # models per ensemble chunk (each chunk trains its models for all steps)
    record_every: int  # loss history resolution
    basin_trials: int  # jitters of W_f, each retrained with both optimizers (paper: 4096)
    basin_steps: int  # paper: 20,000
    hessian_models: int | None  # per optimizer, the first non-diverged models (a random sample); None: all
    hessian_block: int = 256  # Hessians per chunk
    # 0.0015 with momentum 0.9: below 2 (1 + mu) / lambda_max at de-symmetrised W_f (0.0019 for v1, 0.0041
    # for v2; a larger lr makes SGD unstable at v1's global minimum itself); no model diverges, the median
    # loss settles by ~12k steps
    sgd_lr: float = 0.0015
    sgd_momentum: float = 0.9
    adadelta_lr: float = 1.0  # torch.optim.Adadelta's defaults
    adadelta_rho: float = 0.9
    adadelta_eps: float = 1e-6
    init_scheme: str = "he"
    seed: int = 0
    basin_max_noise: float = 2.0
    # "at the global minimum": final loss < global_min_rel * var(y) = 3.0e-5.  Missing one tooth of the 16
    # costs ~ alpha^2 / 12 / 16 = 3.3e-4 (11x more), the best local minima sit near 5e-3, while W_f itself
    # has 2e-13 on the float32 data and SGD runs that return to it end below 1e-6.
    global_min_rel: float = 1e-4
    # near-zero eigenvalue: |lambda| <= hessian_tol * max |lambda|.  Exact zeros of the float64 Hessians sit
    # at ~1e-16; W_f's smallest nonzero ones (curvature from the float32 rounding of y) reach 6e-7.
    hessian_tol: float = 1e-6
    lowess_frac: float = 0.3  # of log10(final loss) against noise norm
    grid_points: int = 1001
    # NEB paths (§3.3): lscape.neb's climbing image + FIRE with ASE's defaults (maxstep 0.2).  Measured on
    # bands from W_f v2 to trained minima (float32): with 32 images and k = 1, 0 of 10 reached fmax 1e-2 in
    # 4,000-16,000 steps (the images wander over the rugged plain, the paths grow to 3-6x the straight
    # distance, longer runs only make them longer); FIRE then descent, maxstep 0.05, no climbing image,
    # respacing and insert= refinement did not help either.  Stiffer springs and fewer images did: k = 10
    # reached 1e-2 on 22 of 30 bands with 16 images and 29 of 30 with 12 (paths ~1.5x the distance).
    neb_paths: int = 100
    neb_images: int = 12
    neb_steps: int = 16_000
    neb_shard: int = 25  # bands per chunk (each chunk relaxes its bands for all neb_steps)
    neb_k: float = 10.0
    neb_fmax: float = 1e-2
    # then the bands not converged get fresh FIRE runs of neb_restart_steps, one per (maxstep, dt) of
    # neb_restarts in turn, each band keeping its state of smallest fmax (a restart that makes it worse is
    # dropped).  Measured: 89 of the default run's 100 bands converged in the first 16,000 steps; restarts
    # at maxstep 0.02 / dt 0.02 alone added 1 of the other 11, at ASE's 0.2 / 0.1 alone 2, the two in
    # turn 4 (none after the second pair).
    neb_restarts: tuple[tuple[float, float], ...] = ((0.2, 0.1), (0.02, 0.02), (0.2, 0.1), (0.02, 0.02))
    neb_restart_steps: int = 16_000
    neb_basin_rise: float = 0.5  # basin edge: the energy first reaches this fraction of the far minimum's
    # the loss is also read at this many points per segment along each band's polyline (straight lines
    # between images): the basin radius read there, and how far the polyline rises above the images
    neb_polyline_points: int = 16
    # which W_f (lscape.tinymlp.wf_network): "v2" (default) or "v1", the first construction, whose runs
    # are reproduced with wf_construction="v1", neb_images=32, neb_steps=4000 (10,000 at paper scale),
    # neb_k=1.0, neb_fmax=1e-3, neb_restarts=()
    wf_construction: str = "v2"
    device: str = "auto"  # "auto": cuda when lscape's CUDA backend runs, else cpu

    def __post_init__(self) -> None:
        _checks.choice_arg("wf_construction", self.wf_construction, tm.WF_CONSTRUCTIONS)
        for pair in self.neb_restarts:
            if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                    or not all(isinstance(v, (int, float)) and v > 0 for v in pair)):
                raise ValueError(f"neb_restarts: got {self.neb_restarts!r}, expected (maxstep, dt) pairs of "
                                 "positive numbers")


SCALES: dict[str, Config] = {
    # seconds; what the tests run
    "smoke": Config("smoke", models_per_optimizer=16, steps=300, shard_models=8, record_every=50,
                    basin_trials=16, basin_steps=300, hessian_models=2, hessian_block=4, grid_points=201,
                    neb_paths=4, neb_images=8, neb_steps=40, neb_shard=2, neb_restart_steps=20),
    # 1% of the paper's models and 40% of its steps: a few minutes on a 2-core CPU with lscape._C
    "default": Config("default", models_per_optimizer=1600, steps=20_000, shard_models=400, record_every=200,
                      basin_trials=256, basin_steps=10_000, hessian_models=128, hessian_block=64),
    # a tenth of the paper's networks at its 50,000 steps (issue 18): 1.6e9 model-steps, about 40 minutes
    # of ensemble training on a quiet 2-core CPU; basin, Hessians and NEB as at default
    "large": Config("large", models_per_optimizer=16_000, steps=50_000, shard_models=2000, record_every=500,
                    basin_trials=256, basin_steps=10_000, hessian_models=128, hessian_block=64),
    # the paper's sizes (for a GPU)
    "paper": Config("paper", models_per_optimizer=160_000, steps=50_000, shard_models=4000, record_every=500,
                    basin_trials=4096, basin_steps=20_000, hessian_models=None, hessian_block=4096),
}


PLOTS = "gamst_walker_plots"


config, replot = common.module_functions(__name__)  # config(scale, **overrides), replot(out)


def _opt_kwargs(cfg: Config, opt: str) -> dict[str, Any]:
    if opt == "sgd":
        return {"lr": cfg.sgd_lr, "momentum": cfg.sgd_momentum}
    return {"lr": cfg.adadelta_lr, "rho": cfg.adadelta_rho, "eps": cfg.adadelta_eps}


# ---- analysis helpers --------------------------------------------------------------------------------------
def fit_moments(spec: tm.TinyMLP, params: torch.Tensor, x: torch.Tensor,
                chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (G,) over models params (M, D) of the fitted functions on grid x (G,),
    `chunk` models at a time (float64 sums)."""
    s = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    s2 = torch.zeros_like(s)
    for i in range(0, params.shape[0], chunk):
        out = ref.forward(spec.depth, spec.width, params[i:i + chunk], x).double()
        s += out.sum(0)
        s2 += (out * out).sum(0)
    n = max(1, params.shape[0])
    mean = s / n
    var = (s2 / n - mean * mean).clamp_min(0.0)
    return mean.cpu().numpy(), var.sqrt().cpu().numpy()


def eig_counts(eigvals: np.ndarray, tol: float) -> np.ndarray:
    """eigvals (B, D) -> counts (B, 3) of negative, near-zero and positive eigenvalues, near-zero meaning
    |lambda| <= tol * max |lambda| of that Hessian."""
    scale = np.abs(eigvals).max(axis=1, keepdims=True) * tol
    neg = (eigvals < -scale).sum(1)
    pos = (eigvals > scale).sum(1)
    return np.stack([neg, eigvals.shape[1] - neg - pos, pos], axis=1)


def _hessian_block(k: int, job: tuple[Any, torch.Tensor, int]) -> dict[str, np.ndarray]:
    """Chunk k: eigenvalues of the Hessians at thetas[k * block:(k + 1) * block]."""
    from ..probes import hessian

    landscape, thetas, block = job
    H = hessian(landscape, thetas[k * block:(k + 1) * block])
    return {"eigvals": torch.linalg.eigvalsh(H).cpu().numpy()}


def _hessian_stage(ctx: common.Context, stage: str, landscape, thetas: torch.Tensor, block: int) -> np.ndarray:
    """Eigenvalues (B, D) of the Hessians at thetas (B, D), `block` points per chunk."""
    n = -(-thetas.shape[0] // block)
    rows = ctx.chunks([f"{stage}_{k}" for k in range(n)], _hessian_block, shared=(landscape, thetas, block),
                      label=stage)
    return np.concatenate([r["eigvals"] for r in rows]) if rows else np.empty((0, thetas.shape[1]))


# ---- the run -----------------------------------------------------------------------------------------------
def run(scale: str = "default", out: str = "gamst-walker", *, resume: bool = False, progress: bool = True,
        stop_after_chunks: int | None = None, figures: bool = True, executor=None,
        **overrides: Any) -> dict[str, Any]:
    """Run (or resume) the experiment into folder `out`, every stage in chunks on `executor` ("local",
    "ray" or an lscape.executor.Executor); returns the summary (also in summary.json).

    stop_after_chunks: raise common.RunInterrupted after that many chunks (each one checkpointed first),
    as an interruption would.  overrides: Config fields (e.g. steps=...)."""
    cfg = config(scale, **overrides)
    ctx = common.start(cfg, out, resume=resume, progress=progress, stop_after_chunks=stop_after_chunks,
                       figures=figures, executor=executor)
    dev = common.resolve_device(cfg.device)
    spec, wf = tm.wf_network(cfg.wf_construction)
    wf_desym = tm.desymmetrize(spec, wf)
    x, y = tm.wf_training_set()
    var_y = float(y.double().var(unbiased=False))
    threshold = cfg.global_min_rel * var_y
    res: dict[str, Any] = {"x_train": x.numpy(), "y_train": y.numpy(), "wf_params": wf.numpy(),
                           "wf_desym": wf_desym.numpy(), "global_min_threshold": threshold}
    summary: dict[str, Any] = {"experiment": NAME, "scale": cfg.scale, "device": str(dev),
                               "wf_construction": cfg.wf_construction,
                               "global_min_threshold": threshold, "var_y": var_y, "P": int(x.shape[0])}

    def train(stage: str, opt: str, start: torch.Tensor, steps: int) -> dict[str, np.ndarray]:
        job = EnsembleJob(spec, start.cpu().numpy(), x.numpy(), y.numpy(), opt, _opt_kwargs(cfg, opt), steps,
                          cfg.record_every, cfg.shard_models, str(dev))
        return train_ensemble_stage(ctx, stage, job)

    # 1. ensembles from the He init: models [0, M) train with SGD, [M, 2M) with Adadelta
    M = cfg.models_per_optimizer
    init = spec.init(2 * M, seed=cfg.seed, scheme=cfg.init_scheme)
    trained = {opt: train(f"main_{opt}", opt, init[k * M:(k + 1) * M], cfg.steps)
               for k, opt in enumerate(OPTIMIZERS)}
    # 2. the basin of W_f: the same jitters for both optimizers
    start, noise_norm = basin_starts(wf_desym, cfg)
    basin = {opt: train(f"basin_{opt}", opt, start, cfg.basin_steps) for opt in OPTIMIZERS}
    # 3. de-symmetrised minima, and Hessians there and at W_f
    desym = {opt: _desymmetrize_all(spec, trained[opt]["params"]) for opt in OPTIMIZERS}
    summary["wf"] = _hessians(ctx, spec, x, y, wf_desym, desym, trained, res, dev)
    summary["wf"].update(loss_float32_data=_loss(spec, wf, x, y), norm=float(wf.norm()),
                         desym_norm=float(wf_desym.norm()))
    # 4. fitted functions, losses, the global minimum
    _fits(cfg, spec, trained, desym, threshold, var_y, res, summary)
    # 5. basin: loss against noise norm, lowess, logistic P(return)
    _basin(cfg, basin, noise_norm, threshold, res, summary)
    # 6. NEB paths from W_f to trained minima
    _neb_paths(ctx, spec, x, y, wf_desym, res, summary, dev)
    return ctx.finish(sys.modules[__name__], res, summary)


def basin_starts(wf_desym: torch.Tensor, cfg: Config) -> tuple[torch.Tensor, np.ndarray]:
    """Jittered copies of W_f (basin_trials, D) float32 and the L2 norms of their noise (float64): noise
    = r z / |z| with z ~ N(0, I) and r ~ U[0, basin_max_noise]."""
    gen = np.random.default_rng([cfg.seed, 0xBA5])
    r = gen.uniform(0.0, cfg.basin_max_noise, cfg.basin_trials)
    z = gen.standard_normal((cfg.basin_trials, wf_desym.shape[0]))
    w = wf_desym.numpy()[None, :]
    start = (w + r[:, None] * z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)
    return torch.from_numpy(start), np.linalg.norm(start.astype(np.float64) - w, axis=1)


def _desymmetrize_all(spec: tm.TinyMLP, params: np.ndarray) -> torch.Tensor:
    """desymmetrize (float64) of every finite row; NaN rows where params are not finite."""
    p = torch.from_numpy(params).double()
    finite = torch.isfinite(p).all(1)  # a diverged model is frozen at finite values, but be sure
    out = torch.full_like(p, math.nan)
    out[finite] = tm.desymmetrize(spec, p[finite])
    return out


def _hessians(ctx: common.Context, spec: tm.TinyMLP, x: torch.Tensor, y: torch.Tensor, wf_desym: torch.Tensor,
              desym: dict[str, torch.Tensor], trained: dict[str, dict[str, np.ndarray]], res: dict[str, Any],
              dev: torch.device) -> dict[str, Any]:
    """Hessians at W_f and the first hessian_models finite, non-diverged minima of each optimizer, in one
    batched, checkpointed stage; fills res; returns W_f's entries of the summary."""
    from ..landscape import Landscape

    cfg = ctx.cfg
    land = Landscape.from_mlp(spec, x.double(), y.double(), dtype=torch.float64, device=dev)
    hidx = {}
    for opt in OPTIMIZERS:
        ok = np.flatnonzero(~trained[opt]["diverged"] & np.isfinite(desym[opt].numpy()).all(1))
        hidx[opt] = ok if cfg.hessian_models is None else ok[:cfg.hessian_models]
    thetas = torch.cat([wf_desym[None]] + [desym[o][hidx[o]] for o in OPTIMIZERS]).to(dev)
    eig = _hessian_stage(ctx, "hessians", land, thetas, cfg.hessian_block)
    counts = eig_counts(eig, cfg.hessian_tol)
    res["wf_hess_eigvals"], res["wf_hess_counts"] = eig[0], counts[0]
    off = 1
    for opt in OPTIMIZERS:
        n = len(hidx[opt])
        res[f"{opt}_hess_index"] = hidx[opt]
        res[f"{opt}_hess_eigvals"] = eig[off:off + n].astype(np.float32)  # 160K x 136 each at paper scale
        res[f"{opt}_hess_counts"] = counts[off:off + n]
        off += n
    # SGD with momentum mu is linearly stable at a minimum only if lr * lambda_max < 2 (1 + mu)
    lam_max = float(np.abs(eig[0]).max())
    limit = 2.0 * (1.0 + cfg.sgd_momentum) / lam_max
    if cfg.sgd_lr >= limit:
        warnings.warn(f"sgd_lr {cfg.sgd_lr:g} >= {limit:.3g} = 2 (1 + momentum) / lambda_max(W_f): SGD cannot "
                      f"stay at the global minimum, for a reason that has nothing to do with its basin",
                      RuntimeWarning, stacklevel=3)
    return {"hessian_lambda_max": lam_max, "sgd_lr_stability_limit": limit,
            "hessian_counts_neg_zero_pos": counts[0].tolist()}


def _fits(cfg, spec, trained, desym, threshold, var_y, res, summary) -> None:
    """Mean +- sd and best / typical fits on the grid, final losses, the global-minimum fraction."""
    grid = torch.linspace(0.0, 1.0, cfg.grid_points, dtype=torch.float64)
    K, N = spec.depth, spec.width
    res["grid_x"] = grid.numpy()
    res["grid_f"] = tm.wf_function(grid.numpy())
    for opt in OPTIMIZERS:
        t = trained[opt]
        loss, div = t["loss"].astype(np.float64), t["diverged"].astype(bool)
        ok = np.flatnonzero(~div)
        params = torch.from_numpy(t["params"]).double()
        mean, std = fit_moments(spec, params[ok], grid)
        order = ok[np.argsort(loss[ok], kind="stable")]
        best, typical = (int(order[0]), int(order[len(order) // 2])) if len(order) else (0, 0)
        at_min = (loss < threshold) & ~div
        # a network whose every path is dead outputs a constant: its loss is var(y)
        constant = np.abs(loss - var_y) <= 1e-5 * var_y
        counts = res[f"{opt}_hess_counts"]
        live = ~constant[res[f"{opt}_hess_index"]]
        res.update({f"{opt}_loss": loss, f"{opt}_diverged": div, f"{opt}_history": t["history"],
                    f"{opt}_mean": mean, f"{opt}_std": std, f"{opt}_desym": desym[opt].float().numpy(),
                    f"{opt}_best_index": best, f"{opt}_typical_index": typical,
                    f"{opt}_best_fit": ref.forward(K, N, params[best:best + 1], grid)[0].numpy(),
                    f"{opt}_typical_fit": ref.forward(K, N, params[typical:typical + 1], grid)[0].numpy(),
                    f"{opt}_at_global_min": at_min, f"{opt}_constant": constant})
        summary[opt] = {
            "models": int(loss.shape[0]), "diverged": int(div.sum()), "constant_fits": int(constant.sum()),
            "at_global_min": int(at_min.sum()),
            "fraction_at_global_min": float(at_min.mean()) if loss.size else math.nan,
            "best_loss": float(loss[best]) if len(ok) else math.nan,
            "loss_quantiles_0_1_10_50_90_100": (np.quantile(loss[ok], [0, .01, .1, .5, .9, 1]).tolist()
                                                if len(ok) else []),
            "hessians": int(counts.shape[0]),
            "hessian_mean_counts_neg_zero_pos": counts.mean(0).tolist() if counts.size else [],
            "hessian_mean_counts_neg_zero_pos_nonconstant": counts[live].mean(0).tolist() if live.any() else [],
            "hessians_with_negative": int((counts[:, 0] > 0).sum()),
        }


def _basin(cfg, basin, noise_norm, threshold, res, summary) -> None:
    """Final loss against noise norm (lowess of log10 loss) and a logistic fit of P(return)."""
    res["basin_noise_norm"] = noise_norm
    for opt in OPTIMIZERS:
        b = basin[opt]
        loss = np.where(b["diverged"], np.nan, b["loss"].astype(np.float64))
        back = loss < threshold
        lx, ly = lowess(noise_norm, np.log10(np.maximum(loss, 1e-30)), frac=cfg.lowess_frac)
        # a whisker of ridge keeps the slope finite when returns and misses are perfectly separated
        fit = logistic_fit(noise_norm, back.astype(np.float64), l2=1e-6)
        res.update({f"basin_{opt}_loss": loss, f"basin_{opt}_returned": back, f"basin_{opt}_lowess_x": lx,
                    f"basin_{opt}_lowess_y": 10.0 ** ly,
                    f"basin_{opt}_logistic": np.array([fit.intercept, fit.slope])})
        summary[f"basin_{opt}"] = {"trials": int(loss.shape[0]), "returned": int(back.sum()),
                                   "diverged": int(b["diverged"].sum()), "logistic_intercept": fit.intercept,
                                   "logistic_slope": fit.slope, "noise_norm_at_p50": fit.x50,
                                   "returned_below_0.1": _frac(back[noise_norm < 0.1]),
                                   "returned_above_0.5": _frac(back[noise_norm > 0.5])}


def neb_ends(cfg: Config, res: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Which minima the NEB paths go to: (optimizer index into OPTIMIZERS, model index), each (B,).  The
    first neb_paths // 2 eligible models of each optimizer (models are i.i.d., so the first are a random
    sample; eligible: not diverged, not a dead constant network, not at the global minimum), topped up
    from the other optimizer when one has too few."""
    eligible = []
    for opt in OPTIMIZERS:
        ok = ~res[f"{opt}_diverged"] & ~res[f"{opt}_constant"] & ~res[f"{opt}_at_global_min"]
        ok &= np.isfinite(res[f"{opt}_desym"]).all(1)
        eligible.append(np.flatnonzero(ok))
    half = cfg.neb_paths // 2
    take = [min(len(eligible[0]), max(half, cfg.neb_paths - len(eligible[1])))]
    take.append(min(len(eligible[1]), cfg.neb_paths - take[0]))
    src = np.concatenate([np.full(t, k) for k, t in enumerate(take)]).astype(np.int64)
    idx = np.concatenate([e[:t] for e, t in zip(eligible, take, strict=False)]).astype(np.int64)
    return src, idx


def basin_radius(arc: np.ndarray, energies: np.ndarray, rise: float) -> np.ndarray:
    """Per path (B, n) from a minimum (image 0) to another (image n-1): the arc length where the energy,
    going out from image 0, first reaches `rise` times the far minimum's energy (both relative to image
    0's; linear between images): the "initial rise" of Gamst & Walker's Fig 4a, whatever barriers lie
    beyond it.  NaN where the far minimum is not higher.  (B,)"""
    E = energies - energies[:, :1]
    level = rise * E[:, -1:]
    first = np.argmax(E >= level, axis=1)
    out = np.full(E.shape[0], np.nan)
    for b, i in enumerate(first):
        if level[b, 0] <= 0 or i == 0:
            continue
        e0, e1 = E[b, i - 1], E[b, i]
        w = (level[b, 0] - e0) / (e1 - e0) if e1 > e0 else 1.0
        out[b] = arc[b, i - 1] + w * (arc[b, i] - arc[b, i - 1])
    return out


def polyline(images: torch.Tensor, per_segment: int) -> torch.Tensor:
    """Points along bands (B, n, D) -> (B, (n - 1) * per_segment + 1, D): per_segment equally spaced
    points on each straight segment between adjacent images (the images themselves included)."""
    B, n, D = images.shape
    w = torch.arange(per_segment, dtype=images.dtype, device=images.device) / per_segment
    a, b = images[:, :-1, None], images[:, 1:, None]
    pts = (a + w[None, None, :, None] * (b - a)).reshape(B, (n - 1) * per_segment, D)
    return torch.cat([pts, images[:, -1:]], dim=1)


def _neb_shard(j: int, job: tuple[Any, torch.Tensor, torch.Tensor, Config]) -> dict[str, np.ndarray]:
    """Chunk j: NEB of bands [j * neb_shard, (j + 1) * neb_shard) for all neb_steps, then restarts of the
    bands not converged (fresh FIRE from where they are, neb_restart_steps steps at each (maxstep, dt) of
    neb_restarts in turn), each band keeping whichever of its states has the smaller fmax (a diverged
    restart is dropped).  Each band's steps and optimizer state are its own, so a band's
    result does not depend on which others share its chunk."""
    from dataclasses import replace

    from ..neb import neb

    land, start, ends, cfg = job
    sl = slice(j * cfg.neb_shard, (j + 1) * cfg.neb_shard)
    r = neb(land, start[sl], ends[sl], n_images=cfg.neb_images, k=cfg.neb_k, fmax=cfg.neb_fmax,
            steps=cfg.neb_steps)
    first_steps, first_conv = r.steps.clone(), r.converged.clone()
    images, energies, fmax = r.images.clone(), r.energies.clone(), r.fmax.clone()
    steps, conv = r.steps.clone(), r.converged.clone()
    for maxstep, dt in cfg.neb_restarts:
        todo = (~conv & ~r.diverged).nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        im = images[todo]
        r2 = neb(land, im[:, 0], im[:, -1], n_images=im.shape[1], init=im, k=cfg.neb_k, fmax=cfg.neb_fmax,
                 steps=cfg.neb_restart_steps, maxstep=float(maxstep), dt=float(dt))
        steps[todo] += r2.steps
        keep = ~r2.diverged & (r2.converged | (r2.fmax < fmax[todo]))
        idx = todo[keep]
        images[idx], energies[idx], fmax[idx], conv[idx] = (r2.images[keep], r2.energies[keep], r2.fmax[keep],
                                                             r2.converged[keep])
    r = replace(r, images=images, energies=energies, converged=conv, fmax=fmax, steps=steps)
    return {"images": r.images.cpu().numpy(), "energies": r.energies.cpu().numpy(),
            "converged": r.converged.cpu().numpy(), "diverged": r.diverged.cpu().numpy(),
            "fmax": r.fmax.cpu().numpy(), "steps": r.steps.cpu().numpy(), "angles": r.angles().cpu().numpy(),
            "barrier": r.barrier.cpu().numpy(), "saddle": r.saddle.cpu().numpy(),
            "steps_first": first_steps.cpu().numpy(), "converged_first": first_conv.cpu().numpy()}


def _neb_paths(ctx: common.Context, spec: tm.TinyMLP, x: torch.Tensor, y: torch.Tensor, wf_desym: torch.Tensor,
               res: dict[str, Any], summary: dict[str, Any], dev: torch.device) -> None:
    """NEB from de-symmetrised W_f to trained minima, in chunks of neb_shard bands."""
    from ..landscape import Landscape
    from ..neb import arc_length

    cfg = ctx.cfg
    src, idx = neb_ends(cfg, res)
    B = len(idx)
    res["neb_source"], res["neb_index"] = src, idx
    for opt in OPTIMIZERS:
        res[f"{opt}_wf_distance"] = np.linalg.norm(res[f"{opt}_desym"].astype(np.float64)
                                                   - wf_desym.numpy()[None], axis=1)
    summary["neb"] = {"paths": B}
    if B == 0:
        warnings.warn("no eligible minima for NEB paths (all diverged, dead or at the global minimum)",
                      RuntimeWarning, stacklevel=3)
        return
    ends = np.stack([res[f"{OPTIMIZERS[s]}_desym"][i] for s, i in zip(src, idx, strict=True)])
    ends = torch.from_numpy(ends).to(dev)
    start = wf_desym.float().to(dev)[None].expand(B, -1).contiguous()
    land = Landscape.from_mlp(spec, x.to(dev), y.to(dev), device=dev)
    n = -(-B // cfg.neb_shard)
    rows = ctx.chunks([f"neb_{j}" for j in range(n)], _neb_shard, shared=(land, start, ends, cfg), label="neb")
    result = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    done = int(result["steps_first"].max())
    images = torch.from_numpy(result["images"]).double()
    arc = arc_length(images).numpy()
    energies = result["energies"].astype(np.float64)
    radius = basin_radius(arc, energies, cfg.neb_basin_rise)
    var_y = float(y.double().var(unbiased=False))
    on_plateau = energies.max(1) >= (1.0 - 1e-5) * var_y
    # the path of Fig 4b-d: the median radius among converged paths off the dead plateau (else among all)
    finite = np.isfinite(radius)
    typical = finite & result["converged"] & ~on_plateau
    pool = typical if typical.any() else finite
    hl = int(np.flatnonzero(pool)[np.argsort(radius[pool])[pool.sum() // 2]]) if pool.any() else 0
    # the energy along the polyline between the images (float32, as the bands were relaxed)
    line = polyline(images, cfg.neb_polyline_points)
    line_e = land.loss(line.reshape(-1, line.shape[-1]).to(device=dev, dtype=land.dtype)).view(B, -1)
    line_e = line_e.double().cpu().numpy()
    radius_line = basin_radius(arc_length(line).numpy(), line_e, cfg.neb_basin_rise)
    rise_above = (line_e.max(1) - energies[:, 0]) / np.maximum(energies.max(1) - energies[:, 0], 1e-300)
    grid = torch.from_numpy(res["grid_x"])
    res.update({"neb_energies": energies, "neb_basin_radius_polyline": radius_line, "neb_arc": arc,
                "neb_angles": result["angles"],
                "neb_converged": result["converged"], "neb_fmax": result["fmax"],
                "neb_barrier": result["barrier"], "neb_saddle": result["saddle"],
                "neb_basin_radius": radius, "neb_distance": (images[:, -1] - images[:, 0]).norm(dim=1).numpy(),
                "neb_highlight": hl,
                "neb_highlight_outputs": ref.forward(spec.depth, spec.width, images[hl], grid).numpy()})
    all_d = np.concatenate([res[f"{o}_wf_distance"][~res[f"{o}_diverged"] & ~res[f"{o}_constant"]]
                            for o in OPTIMIZERS])
    q = lambda a: np.quantile(a[np.isfinite(a)], [0.1, 0.5, 0.9]).tolist() if np.isfinite(a).any() else []  # noqa: E731
    summary["neb"].update({
        "first_segment_length_median": float(np.median(arc[:, 1])),  # the radius's resolution
        "steps": done, "converged": int(result["converged"].sum()), "diverged": int(result["diverged"].sum()),
        "converged_fraction": float(result["converged"].mean()),
        "converged_first_relaxation": int(result["converged_first"].sum()),
        "restarted": int((~result["converged_first"] & ~result["diverged"]).sum()),
        "steps_with_restarts_max": int(result["steps"].max()),
        # bands with an image on the dead-network plateau (loss var(y): no gradient there, so such an image
        # only moves along the band and the band can converge across it)
        "paths_on_dead_plateau": int(on_plateau.sum()),
        "converged_paths_on_dead_plateau": int((on_plateau & result["converged"]).sum()),
        "fmax_quantiles_10_50_90": q(res["neb_fmax"]),
        "basin_radius_quantiles_10_50_90": q(radius),
        "basin_radius_polyline_quantiles_10_50_90": q(radius_line),
        "polyline_max_over_images_max_quantiles_10_50_90": q(rise_above),
        "basin_radius_quantiles_10_50_90_converged": q(radius[result["converged"]]),
        "barrier_quantiles_10_50_90": q(res["neb_barrier"]),
        "path_length_over_distance_median": float(np.median(arc[:, -1] / res["neb_distance"])),
        "distance_wf_to_minima_quantiles_10_50_90": q(all_d),
        "fraction_of_minima_in_paper_shell_9.5_10.5": float(((all_d >= 9.5) & (all_d <= 10.5)).mean())
        if all_d.size else math.nan,
    })


def _frac(a: np.ndarray) -> float:
    return float(a.mean()) if a.size else math.nan


def _loss(spec: tm.TinyMLP, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    """MSE of one float64 parameter vector on float32 data, evaluated in float64."""
    return float(ref.loss_grad(spec.depth, spec.width, params[None].double(), x.double(), y.double(),
                               want_grad=False)[0][0])
