"""Basin volume along random rays (Huang et al., "Understanding generalization through visualizations"):
the region around theta where the loss stays below a threshold, measured by how far each of many random
rays gets before the loss first reaches the threshold, and its volume as a star-shaped region.

    res = basin_volume(L, theta, threshold=0.1, n_rays=1000, r_max=10.0)
    res.radii, res.censored        # (n_rays,): where each ray first crosses; rays that never did by r_max
    res.log_volume, res.log_volume_se

A star-shaped region {theta + r u : 0 <= r < R(u)} has volume V_D E_u[R(u)^D], u uniform on the unit
sphere, V_D the volume of the unit D-ball.  With a_i = D log r_i and m = max a_i,

    log V = log V_D + m + log mean_i exp(a_i - m)

which never overflows or underflows, whatever D.  The uncertainty is the delta method on the mean of
w_i = exp(a_i - m): se(log V) = std(w) / (sqrt(n) mean(w)).  In high dimension a few long rays carry the
mean (see `ess`, the effective number of rays, (sum w)^2 / sum w^2); when it is small the estimate is
dominated by the longest ray and the standard error is itself unreliable (it tends to understate).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch

from .. import _checks
from .._progress import ProgressArg, as_callback
from ..landscape import Landscape
from ..reference import rng

__all__ = ["BasinResult", "basin_volume", "log_star_volume", "log_unit_ball_volume", "ray_directions"]


@dataclass
class BasinResult:
    """radii (n_rays,) float64: where each ray first reaches the threshold (the middle of a final bracket no
    wider than tol), r_max for censored rays; censored (n_rays,) bool: rays still below the threshold at
    r_max (then log_volume is a lower bound); log_volume, log_volume_se: log of the volume estimate and its
    delta-method standard error; ess: effective number of rays in the mean; log_unit_ball: log V_D;
    loss_at_theta; evaluations: landscape.loss calls made (each on all rays still in play)."""

    radii: torch.Tensor
    censored: torch.Tensor
    log_volume: float
    log_volume_se: float
    ess: float
    log_unit_ball: float
    loss_at_theta: float
    threshold: float
    dim: int
    r_max: float
    tol: float
    seed: int
    evaluations: int

    @property
    def is_lower_bound(self) -> bool:
        """True when some ray was censored at r_max (its true radius is longer)."""
        return bool(self.censored.any())


def ray_directions(n_rays: int, dim: int, seed: int = 0, *, first: int = 0) -> torch.Tensor:
    """(n_rays, dim) float64 unit vectors, uniform on the sphere: ray i normalises dim standard normals from
    the counter-based stream (seed, first + i), so a ray depends only on (seed, its index)."""
    n_rays = _checks.int_arg("n_rays", n_rays, low=0)
    dim = _checks.int_arg("dim", dim, low=1, high=2**31 - 1)
    seed = _checks.int_arg("seed", seed, low=0, high=2**64 - 1)
    first = _checks.int_arg("first", first, low=0, high=2**63)
    z = rng.normal(rng.stream_key(seed, np.arange(first, first + n_rays, dtype=np.uint64)), dim)
    z = z.reshape(n_rays, dim)
    return torch.from_numpy(z / np.linalg.norm(z, axis=1, keepdims=True))


def log_unit_ball_volume(dim: int) -> float:
    """log V_D = (D/2) log(pi) - log Gamma(D/2 + 1)."""
    dim = _checks.int_arg("dim", dim, low=1)
    return 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim + 1.0)


def log_star_volume(radii, dim: int) -> tuple[float, float, float]:
    """(log V, se of log V, ess) of the star-shaped region with ray radii `radii` (n,) in dimension `dim`:
    log V = log V_D + logmeanexp(D log r_i), computed in log space (see the module docstring)."""
    dim = _checks.int_arg("dim", dim, low=1)
    r = np.asarray(radii.cpu() if isinstance(radii, torch.Tensor) else radii, dtype=np.float64)
    if r.ndim != 1 or r.size == 0 or not np.all(np.isfinite(r)) or np.any(r <= 0):
        raise ValueError(f"radii: got {_checks.describe(r)}, expected a non-empty 1-D array of positive "
                         "finite radii")
    a = dim * np.log(r)
    m = float(a.max())
    w = np.exp(a - m)  # in (0, 1], the largest exactly 1: no overflow, and the sum is at least 1
    mean = float(w.mean())
    log_v = log_unit_ball_volume(dim) + m + math.log(mean)
    se = float(w.std(ddof=1) / math.sqrt(r.size) / mean) if r.size > 1 else math.nan
    ess = float(w.sum() ** 2 / (w * w).sum())
    return log_v, se, ess


def _basin_args(landscape, theta, threshold, n_rays, r_max, tol, seed, n_scan):
    """basin_volume's arguments, checked (errors name the argument): (theta (1, D), threshold, n_rays,
    r_max, tol, seed, n_scan)."""
    if not isinstance(landscape, Landscape):
        raise TypeError(f"landscape: got {_checks.describe(landscape)}, expected a lscape.Landscape")
    D = landscape.dim
    t = _checks.as_tensor("theta", theta)
    if tuple(t.shape) not in ((D,), (1, D)) or not t.is_floating_point() or not bool(torch.isfinite(t).all()):
        raise ValueError(f"theta: got {_checks.describe(theta)}, expected one finite floating point of shape "
                         f"({D},) or (1, {D})")
    t0 = landscape.check_points(t.reshape(1, D), "theta")
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise TypeError(f"threshold: got {_checks.describe(threshold)}, expected a finite real number")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold: got {threshold}, expected a finite real number")
    threshold = float(threshold)
    n_rays = _checks.int_arg("n_rays", n_rays, low=1)
    r_max = _checks.float_arg("r_max", r_max, low=0.0, high=math.inf, low_open=True)
    if not math.isfinite(r_max):
        raise ValueError(f"r_max: got {r_max}, expected a positive finite radius")
    tol = 1e-6 * r_max if tol is None else tol
    tol = _checks.float_arg("tol", tol, low=0.0, high=r_max, low_open=True)
    seed = _checks.int_arg("seed", seed, low=0, high=2**64 - 1)
    n_scan = _checks.int_arg("n_scan", n_scan, low=1)
    return t0, threshold, n_rays, r_max, tol, seed, n_scan


def basin_volume(landscape: Landscape, theta: torch.Tensor | np.ndarray, threshold: float, n_rays: int = 1000,
                 r_max: float = 1.0, tol: float | None = None, seed: int = 0, *, n_scan: int = 32,
                 progress: ProgressArg = False) -> BasinResult:
    """Radii of the region {loss < threshold} around theta along n_rays random rays, and its log-volume.

    landscape: the Landscape (dimension D).  theta: (D,) or (1, D), with loss(theta) < threshold.
    threshold: the loss level that bounds the basin; a non-finite loss counts as above it.
    n_rays: rays (directions from `ray_directions(n_rays, D, seed)`).
    r_max: the longest radius looked at; rays still below the threshold there are censored at r_max.
    tol: each radius is the middle of a final bracket at most tol wide (default 1e-6 r_max), so it is off by
        at most tol / 2; that moves log V by at most about D tol / (2 r) for rays of radius r.
    n_scan: the coarse scan evaluates every ray at r_max k / n_scan, k = 1, 2, ..., to bracket its FIRST
        crossing (an excursion above the threshold shorter than r_max / n_scan can be missed); the scan
        stops as soon as every ray has crossed.
    progress: True for a progress bar on stderr, or a callable (done, total) called after each loss call.

    Every scan radius and every bisection iteration is one landscape.loss call on all rays still in play
    (memory: n_rays x D values for the directions plus one batch of points).
    """
    t0, threshold, n_rays, r_max, tol, seed, n_scan = _basin_args(landscape, theta, threshold, n_rays, r_max,
                                                                   tol, seed, n_scan)
    D = landscape.dim
    callback = as_callback(progress, "basin rays")

    loss0 = float(landscape.loss(t0)[0])
    if not loss0 < threshold:
        raise ValueError(f"threshold: got {threshold}, but the loss at theta is already {loss0}; expected "
                         "theta inside the basin (loss(theta) < threshold)")

    U = ray_directions(n_rays, D, seed).to(dtype=landscape.dtype, device=landscape.device)
    cell = r_max / n_scan
    n_bisect = max(0, math.ceil(math.log2(cell / tol)))  # the final bracket is at most tol wide
    total = n_scan + n_bisect
    evaluations = 0

    def outside(idx: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Whether the points theta + r u_i (rays idx, radii r float64) are at or above the threshold."""
        nonlocal evaluations
        pts = t0 + r.to(landscape.dtype)[:, None] * U[idx]
        loss = landscape.loss(pts)  # one batched call for every ray in play
        evaluations += 1
        if callback is not None:
            callback(evaluations, total)
        return ~(loss.to(torch.float64) < threshold)  # NaN counts as outside

    dev = landscape.device
    lo = torch.zeros(n_rays, dtype=torch.float64, device=dev)
    hi = torch.full((n_rays,), r_max, dtype=torch.float64, device=dev)
    crossed = torch.zeros(n_rays, dtype=torch.bool, device=dev)
    for k in range(1, n_scan + 1):
        active = torch.nonzero(~crossed).flatten()
        if active.numel() == 0:
            break
        r = torch.full((active.numel(),), cell * k, dtype=torch.float64, device=dev)
        out = outside(active, r)
        hit = active[out]
        lo[hit], hi[hit] = cell * (k - 1), cell * k
        crossed[hit] = True

    idx = torch.nonzero(crossed).flatten()
    if idx.numel():
        for _ in range(n_bisect):
            mid = 0.5 * (lo[idx] + hi[idx])
            out = outside(idx, mid)
            hi[idx] = torch.where(out, mid, hi[idx])
            lo[idx] = torch.where(out, lo[idx], mid)
    if callback is not None and evaluations < total:
        callback(total, total)

    radii = torch.where(crossed, 0.5 * (lo + hi), torch.full_like(lo, r_max))
    log_v, se, ess = log_star_volume(radii, D)
    return BasinResult(radii=radii, censored=~crossed, log_volume=log_v, log_volume_se=se, ess=ess,
                       log_unit_ball=log_unit_ball_volume(D), loss_at_theta=loss0, threshold=threshold, dim=D,
                       r_max=r_max, tol=tol, seed=seed, evaluations=evaluations)
