"""Pure-torch nudged-elastic-band step: improved tangents, spring and perpendicular forces, climbing
image, and a FIRE or plain-descent update, for B bands of n images at once.

The contract (layout, tangent, forces, FIRE, convergence and divergence rules) is
csrc/include/lscape/neb.h; this is its oracle and the fallback.  It follows ASE's ase.mep.neb
(ImprovedTangentMethod, climbing image) and ase.optimize.FIRE, with every band's interior images as one
optimizer vector.  Dot products and scalars are in float64, vectors in the input dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

RUNNING, CONVERGED, DIVERGED = 0, 1, 2  # neb.h Status
METHODS = ("fire", "descent")


@dataclass(frozen=True)
class NEBConfig:
    """Spring, climbing image, optimizer and FIRE parameters (ASE's FIRE defaults)."""

    k: float = 1.0
    climb: bool = True
    method: str = "fire"
    fmax: float = 0.05  # convergence: largest per-image NEB force norm below this
    maxstep: float = 0.2  # largest step norm per band
    lr: float = 0.01  # descent
    dt: float = 0.1  # FIRE's initial time step
    dt_max: float = 1.0
    n_min: int = 5
    f_inc: float = 1.1
    f_dec: float = 0.5
    a_start: float = 0.1
    f_a: float = 0.99

    def __post_init__(self) -> None:
        """Every field checked by name (a NEBConfig built by hand is refused before any kernel runs)."""
        from .._checks import choice_arg, float_arg, int_arg

        inf = float("inf")
        choice_arg("method", self.method, METHODS)
        float_arg("k", self.k, low=0.0, high=inf)
        float_arg("fmax", self.fmax, low=0.0, high=inf)
        for name in ("maxstep", "lr", "dt", "dt_max", "f_inc", "f_dec", "a_start", "f_a"):
            float_arg(name, getattr(self, name), low=0.0, high=inf, low_open=True)
        int_arg("n_min", self.n_min, low=0)
        if not isinstance(self.climb, (bool, int)):
            raise TypeError(f"climb: got {type(self.climb).__name__} {self.climb!r}, expected a bool")

    def as_tuple(self) -> tuple:
        """(k, climb, method, fmax_tol, maxstep, lr, dt_max, n_min, f_inc, f_dec, a_start, f_a) for the
        kernels (neb.h Config)."""
        return (float(self.k), int(self.climb), METHODS.index(self.method), float(self.fmax),
                float(self.maxstep), float(self.lr), float(self.dt_max), int(self.n_min), float(self.f_inc),
                float(self.f_dec), float(self.a_start), float(self.f_a))


def _dot(u: torch.Tensor, w: torch.Tensor, dims) -> torch.Tensor:
    return (u * w).sum(dim=dims, dtype=torch.float64)


def tangent_weights(e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (wp, wm), each (B, n - 2) float64, of t+ and t- in the improved tangent of every interior
    image, from the energies e (B, n)."""
    e = e.double()
    ep, ei, en = e[:, :-2], e[:, 1:-1], e[:, 2:]
    up = (en > ei) & (ei > ep)
    down = (en < ei) & (ei < ep)
    dn, dp = (en - ei).abs(), (ep - ei).abs()
    dmax, dmin = torch.maximum(dn, dp), torch.minimum(dn, dp)
    rising = en > ep
    one, zero = torch.ones_like(ei), torch.zeros_like(ei)
    wp = torch.where(up, one, torch.where(down, zero, torch.where(rising, dmax, dmin)))
    wm = torch.where(up, zero, torch.where(down, one, torch.where(rising, dmin, dmax)))
    return wp, wm


def neb_forces(cfg: NEBConfig, x: torch.Tensor, e: torch.Tensor, g: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """NEB forces F (B, n - 2, D) on the interior images and the climbing image index (B,) int64."""
    B, n, D = x.shape
    T = x.dtype
    imax = 1 + torch.argmax(e.double()[:, 1:-1], dim=1)  # first maximum
    wp, wm = tangent_weights(e)
    tp = x[:, 2:] - x[:, 1:-1]
    tm = x[:, 1:-1] - x[:, :-2]
    tau = wp.to(T)[..., None] * tp + wm.to(T)[..., None] * tm
    f = -g[:, 1:-1]
    tt, ftau = _dot(tau, tau, -1), _dot(f, tau, -1)
    len_p, len_m = _dot(tp, tp, -1).sqrt(), _dot(tm, tm, -1).sqrt()
    inv = torch.where(tt > 0, 1.0 / tt.sqrt(), torch.ones_like(tt))
    ft = ftau * inv
    climbing = torch.arange(1, n - 1, device=x.device)[None, :] == imax[:, None]
    if not cfg.climb:
        climbing = torch.zeros_like(climbing)
    beta = torch.where(climbing, -2.0 * ft, cfg.k * (len_p - len_m) - ft)
    coef = beta * inv
    return f + coef.to(T)[..., None] * tau, imax


def band_step(cfg: NEBConfig, vf, F2, v2, dt, a, nsteps):
    """The optimizer scalars of every band (neb.h band_step), vectorised: returns (c1, c2, s, dt, a,
    nsteps) as new tensors."""
    if cfg.method == "descent":
        norm = cfg.lr * F2.sqrt()
        s = torch.where(norm > cfg.maxstep, cfg.lr * (cfg.maxstep / norm), torch.full_like(norm, cfg.lr))
        zero = torch.zeros_like(s)
        return zero, zero, s, dt, a, nsteps
    fresh = nsteps < 0
    mix = ~fresh & (vf > 0)
    reset = ~fresh & ~mix
    k1 = torch.where(mix, 1.0 - a, torch.zeros_like(a))
    k2 = torch.where(mix, a * v2.sqrt() / F2.sqrt(), torch.zeros_like(a))
    grow = mix & (nsteps > cfg.n_min)
    new_dt = torch.where(grow, torch.clamp(dt * cfg.f_inc, max=cfg.dt_max), dt)
    new_dt = torch.where(reset, dt * cfg.f_dec, new_dt)
    new_a = torch.where(grow, a * cfg.f_a, a)
    new_a = torch.where(reset, torch.full_like(a, cfg.a_start), new_a)
    new_n = torch.where(fresh | reset, torch.zeros_like(nsteps), torch.where(mix, nsteps + 1, nsteps))
    k2 = k2 + new_dt
    vnew2 = k1 * k1 * v2 + 2.0 * k1 * k2 * vf + k2 * k2 * F2
    norm = new_dt * vnew2.sqrt()
    s = torch.where(norm > cfg.maxstep, new_dt * (cfg.maxstep / norm), new_dt)
    return k1, k2, s, new_dt, new_a, new_n


def step(cfg: NEBConfig, x: torch.Tensor, e: torch.Tensor, g: torch.Tensor, v: torch.Tensor,
         x_out: torch.Tensor, dt: torch.Tensor, a: torch.Tensor, nsteps: torch.Tensor, status: torch.Tensor,
         fmax: torch.Tensor, imax: torch.Tensor) -> None:
    """One NEB step of all bands, in place on v, x_out (interior rows), dt, a (B,) float64, nsteps (B,)
    int32, status (B,) uint8, fmax (B,) float64 and imax (B,) int32 (neb.h)."""
    T = x.dtype
    running = status == RUNNING
    F, im = neb_forces(cfg, x, e, g)
    F2_img = _dot(F, F, -1)
    finite = torch.isfinite(e.double()).all(dim=1) & torch.isfinite(F2_img).all(dim=1)
    band_fmax = F2_img.max(dim=1).values.sqrt()
    converged = finite & (band_fmax < cfg.fmax)
    move = running & finite & ~converged
    vi = v[:, 1:-1]
    c1, c2, s, new_dt, new_a, new_n = band_step(cfg, _dot(F, vi, (1, 2)), F2_img.sum(dim=1),
                                                _dot(vi, vi, (1, 2)), dt, a, nsteps)
    if cfg.method == "fire":
        v_new = c1.to(T)[:, None, None] * vi + c2.to(T)[:, None, None] * F
        x_new = x[:, 1:-1] + s.to(T)[:, None, None] * v_new
        vi.copy_(torch.where(move[:, None, None], v_new, vi))
    else:
        x_new = x[:, 1:-1] + s.to(T)[:, None, None] * F
    x_out[:, 1:-1] = torch.where(move[:, None, None], x_new, x[:, 1:-1])
    dt.copy_(torch.where(move, new_dt, dt))
    a.copy_(torch.where(move, new_a, a))
    nsteps.copy_(torch.where(move, new_n.to(nsteps.dtype), nsteps))
    fmax.copy_(torch.where(running, torch.where(finite, band_fmax, torch.full_like(band_fmax, float("nan"))),
                           fmax))
    imax.copy_(torch.where(running, im.to(imax.dtype), imax))
    new_status = torch.where(converged, CONVERGED, torch.where(finite, RUNNING, DIVERGED)).to(status.dtype)
    status.copy_(torch.where(running, new_status, status))
