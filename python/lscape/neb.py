"""Nudged elastic bands between points of a `Landscape`, many bands at once.

    res = lscape.neb(landscape, start, end, n_images=32)     # start, end (D,) or (B, D)
    res.images (B, n, D), res.energies (B, n), res.arc_length (B, n), res.saddle, res.barrier, res.angles()

The method is Jonsson, Mills & Jacobsen (1998) with Henkelman & Jonsson's improved tangent and climbing
image (2000), optimised with FIRE (Bitzek et al. 2006) exactly as ASE's `ase.mep.NEB` + `ase.optimize.FIRE`
do it, every band's interior images being one optimizer vector.  Each step evaluates the interior images
of all still-running bands in one `landscape.loss_and_grad` call and moves all bands in one fused
`neb_step` kernel (csrc/include/lscape/neb.h).  Endpoints stay fixed.  A band whose energy or force
turns non-finite is marked diverged and stops; the others go on unaffected.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from . import _checks, _records
from ._progress import ProgressArg, as_callback
from .landscape import Landscape
from .ops import neb as ops
from .reference.neb import CONVERGED, DIVERGED, METHODS, RUNNING, NEBConfig

__all__ = ["NEBConfig", "NEBResult", "neb", "respace"]

_UNEVEN = 2.0  # respace_every respaces a band whose longest segment is this many times its shortest


@dataclass
class NEBResult:
    """Bands after `neb`.  B bands of n images in D dimensions.

    images (B, n, D); energies (B, n) at those images; converged, diverged (B,) bool; fmax (B,) float64
    the last largest per-image NEB force (NaN for a diverged band); fmax_history (T, B) float64, one row
    per step, NaN where a band had stopped; steps (B,) int64 force evaluations per band.  velocity and
    state hold the optimizer state, so `neb(..., resume=result)` continues exactly.
    """

    images: torch.Tensor
    energies: torch.Tensor
    converged: torch.Tensor
    diverged: torch.Tensor
    fmax: torch.Tensor
    fmax_history: torch.Tensor
    steps: torch.Tensor
    velocity: torch.Tensor
    state: ops.BandState
    config: NEBConfig

    @property
    def arc_length(self) -> torch.Tensor:
        """Cumulative distance along each band from its start, (B, n) float64."""
        return arc_length(self.images)

    @property
    def saddle(self) -> torch.Tensor:
        """Index of the highest interior image of each band (the climbing image), (B,) int64."""
        return 1 + torch.argmax(self.energies.double()[:, 1:-1], dim=1)

    @property
    def barrier(self) -> torch.Tensor:
        """Energy of the highest interior image minus the start's, (B,) float64."""
        e = self.energies.double()
        return e.gather(1, self.saddle[:, None])[:, 0] - e[:, 0]

    def angles(self) -> torch.Tensor:
        """Angle (radians) between successive difference vectors x[i+1] - x[i] along each band,
        (B, n - 2) float64 (Gamst & Walker Fig 4d); NaN where a segment has zero length."""
        d = torch.diff(self.images.double(), dim=1)
        cos = (d[:, 1:] * d[:, :-1]).sum(-1) / (d[:, 1:].norm(dim=-1) * d[:, :-1].norm(dim=-1))
        return torch.arccos(cos.clamp(-1.0, 1.0))

    def to_dict(self) -> dict[str, Any]:
        """numpy arrays and plain numbers (for np.savez), through lscape._records."""
        return _records.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], device: torch.device | str | None = None) -> NEBResult:
        """The inverse of to_dict (accepts an np.load(...) mapping)."""
        return _records.from_dict(cls, d, device=device)


def arc_length(images: torch.Tensor) -> torch.Tensor:
    """Cumulative distance along bands (B, n, D) -> (B, n) float64, starting at 0."""
    seg = torch.diff(images.double(), dim=1).norm(dim=-1)
    return torch.cat([torch.zeros_like(seg[:, :1]), seg.cumsum(1)], dim=1)


def respace(images: torch.Tensor, pinned: torch.Tensor | None = None) -> torch.Tensor:
    """Bands (B, n, D) with their interior images moved along each band's polyline to equal arc length,
    endpoints kept.  pinned (B,) int: an image per band that stays where it is (the climbing image), the
    images on each side of it being spaced evenly on that side."""
    B, n, D = images.shape
    s = arc_length(images)
    frac = torch.linspace(0.0, 1.0, n, dtype=torch.float64, device=images.device)[None, :].expand(B, n)
    if pinned is None:
        target = s[:, -1:] * frac
    else:
        p = pinned.to(images.device).long()[:, None]
        i = torch.arange(n, device=images.device)[None, :]
        sp, total = s.gather(1, p), s[:, -1:]
        before = sp * i / p.clamp_min(1)
        after = sp + (total - sp) * (i - p) / (n - 1 - p).clamp_min(1)
        target = torch.where(i <= p, before, after)
    j = torch.searchsorted(s.contiguous(), target.contiguous(), right=True).clamp(1, n - 1) - 1
    s0, s1 = s.gather(1, j), s.gather(1, j + 1)
    w = torch.where(s1 > s0, (target - s0) / (s1 - s0), torch.zeros_like(s0)).clamp(0.0, 1.0)
    x0 = images.gather(1, j[..., None].expand(B, n, D))
    x1 = images.gather(1, (j + 1)[..., None].expand(B, n, D))
    out = x0 + w.to(images.dtype)[..., None] * (x1 - x0)
    out[:, 0], out[:, -1] = images[:, 0], images[:, -1]
    if pinned is not None:
        rows = torch.arange(B, device=images.device)
        out[rows, pinned.long()] = images[rows, pinned.long()]
    return out


def _insert(images: torch.Tensor, energies: torch.Tensor, count: int) -> torch.Tensor:
    """AutoNEB-style refinement: `count` new images per band, each at the midpoint of the segment with
    the largest score |segment| / mean |segment| + |dE| / (E range) (midpoint energies taken as the mean of
    the neighbours' for the next pick).  Returns (B, n + count, D)."""
    x, e = images, energies.double()
    B = x.shape[0]
    rows = torch.arange(B, device=x.device)
    for _ in range(count):
        n = x.shape[1]
        seg = torch.diff(x.double(), dim=1).norm(dim=-1)
        rng = (e.max(1).values - e.min(1).values).clamp_min(1e-300)
        score = seg / seg.mean(1, keepdim=True).clamp_min(1e-300) + torch.diff(e, dim=1).abs() / rng[:, None]
        score = torch.where(torch.isfinite(score), score, torch.zeros_like(score))
        j = score.argmax(1)  # new image between j and j + 1
        idx = torch.arange(n + 1, device=x.device)[None, :].expand(B, -1)
        src = idx - (idx > (j[:, None] + 1)).long()
        src = torch.where(idx == j[:, None] + 1, j[:, None], src)
        nx = x.gather(1, src[..., None].expand(B, n + 1, x.shape[2])).clone()
        ne = e.gather(1, src).clone()
        nx[rows, j + 1] = 0.5 * (x[rows, j] + x[rows, j + 1])
        ne[rows, j + 1] = 0.5 * (e[rows, j] + e[rows, j + 1])
        x, e = nx, ne
    return x


def _points(landscape: Landscape, value, name: str) -> torch.Tensor:
    t = _checks.as_tensor(name, value)
    if t.ndim not in (1, 2) or t.shape[-1] != landscape.dim or not t.is_floating_point():
        raise ValueError(f"{name}: got {_checks.describe(t)}, expected a floating tensor of shape "
                         f"({landscape.dim},) or (B, {landscape.dim}) (the landscape's dim)")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: got non-finite values, expected finite points")
    return t.detach().to(dtype=landscape.dtype, device=landscape.device).reshape(-1, landscape.dim)


def _initial_images(landscape: Landscape, x0: torch.Tensor, x1: torch.Tensor, n: int, init) -> torch.Tensor:
    B, D = x0.shape
    if isinstance(init, str):
        _checks.choice_arg("init", init, ("linear",))
        w = torch.linspace(0.0, 1.0, n, dtype=torch.float64, device=x0.device)[None, :, None]
        return (x0.double()[:, None] + w * (x1 - x0).double()[:, None]).to(x0.dtype)
    t = _checks.as_tensor("init", init)
    if t.ndim == 2:
        t = t[None].expand(B, -1, -1)
    if t.shape != (B, n, D) or not t.is_floating_point():
        raise ValueError(f"init: got {_checks.describe(t)}, expected 'linear' or floating images of shape "
                         f"({B}, {n}, {D}) or ({n}, {D})")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("init: got non-finite values, expected finite images")
    out = t.detach().to(dtype=x0.dtype, device=x0.device).clone()
    out[:, 0], out[:, -1] = x0, x1
    return out


def neb(landscape: Landscape, start, end, *, n_images: int = 32, k: float = 1.0, climb: bool = True,
        optimizer: str = "fire", steps: int = 1000, fmax: float = 0.05, maxstep: float = 0.2, dt: float = 0.1,
        lr: float = 0.01, init="linear", respace_every: int | None = None, insert: int = 0,
        resume: NEBResult | None = None, progress: ProgressArg = False) -> NEBResult:
    """Relax B nudged elastic bands between start and end ((D,) for one band, (B, D) for B bands).

    n_images: images per band, endpoints included (>= 3).  k: spring constant.  climb: the highest image
    climbs to the saddle.  optimizer: "fire" (ASE's FIRE: dt initial time step, ASE's other defaults) or
    "descent" (x += lr F).  maxstep: largest step norm per band and step.  A band stops when its largest
    per-image force norm is below fmax, or after `steps` steps.  init: "linear" or images (B, n, D) /
    (n, D) whose endpoints are replaced by start and end.  respace_every: every so many steps, move the
    images of running bands whose longest segment is more than twice their shortest to equal arc length
    (on each side of the climbing image when climb; their optimizer restarts).  insert: after relaxing,
    add this many images per band where segments are long or the energy jumps (AutoNEB-style), then
    relax again for up to `steps` steps.  resume: continue a previous result exactly (its images,
    optimizer state and configuration; start/end/init are then ignored, and steps counts new steps).
    progress: True for a bar on stderr, or a callable (done, total).
    """
    if not isinstance(landscape, Landscape):
        raise TypeError(f"landscape: got {_checks.describe(landscape)}, expected a lscape.Landscape")
    steps = _checks.int_arg("steps", steps, low=0)
    insert = _checks.int_arg("insert", insert, low=0)
    if respace_every is not None:
        respace_every = _checks.int_arg("respace_every", respace_every, low=1)
    report = as_callback(progress, "neb")
    if resume is not None:
        bands = _Bands.resumed(landscape, resume)
    else:
        n_images = _checks.int_arg("n_images", n_images, low=3)
        cfg = _config_arg(k, climb, optimizer, fmax, maxstep, dt, lr)
        bands = _Bands.fresh(landscape, cfg, start, end, n_images, init)
    total = steps * (1 + (insert > 0))
    bands.relax(steps, respace_every, report, 0, total)
    if insert:
        bands.insert(insert)
        bands.relax(steps, respace_every, report, steps, total)
    return bands.result(refresh_all=bool(insert) and not steps)


def _config_arg(k, climb, optimizer, fmax, maxstep, dt, lr) -> NEBConfig:
    """The NEBConfig of neb()'s arguments, each checked by name."""
    _checks.choice_arg("optimizer", optimizer, METHODS)
    pos = {"low": 0.0, "high": float("inf"), "low_open": True}
    return NEBConfig(k=_checks.float_arg("k", k, low=0.0, high=float("inf")), climb=bool(climb), method=optimizer,
                     fmax=_checks.float_arg("fmax", fmax, low=0.0, high=float("inf")),
                     maxstep=_checks.float_arg("maxstep", maxstep, **pos), lr=_checks.float_arg("lr", lr, **pos),
                     dt=_checks.float_arg("dt", dt, **pos))


@dataclass
class _Bands:
    """B bands being relaxed: images x (B, n, D), energies e (B, n), velocities v (B, n, D), the
    optimizer's per-band state, the per-step fmax rows and each band's count of force evaluations."""

    landscape: Landscape
    cfg: NEBConfig
    x: torch.Tensor
    e: torch.Tensor
    v: torch.Tensor
    st: ops.BandState
    history: list
    counts: torch.Tensor

    @classmethod
    def fresh(cls, landscape: Landscape, cfg: NEBConfig, start, end, n_images: int, init) -> _Bands:
        """Bands from start to end (init: "linear" or images), endpoint energies evaluated once."""
        x0, x1 = _points(landscape, start, "start"), _points(landscape, end, "end")
        if x0.shape != x1.shape:
            raise ValueError(f"start, end: got shapes {tuple(np.shape(start))} and {tuple(np.shape(end))}, "
                             "expected the same shape")
        x = _initial_images(landscape, x0, x1, n_images, init).contiguous()
        B = x.shape[0]
        e = torch.empty(B, n_images, dtype=landscape.dtype, device=landscape.device)
        ends = landscape.loss(torch.cat([x0, x1]))
        e[:, 0], e[:, -1] = ends[:B], ends[B:]
        return cls(landscape, cfg, x, e, torch.zeros_like(x), ops.BandState.fresh(B, cfg, x.device), [],
                   torch.zeros(B, dtype=torch.int64, device=x.device))

    @classmethod
    def resumed(cls, landscape: Landscape, resume: NEBResult) -> _Bands:
        """The bands of a previous result, exactly as it left them (copies, on the landscape's device)."""
        if not isinstance(resume, NEBResult):
            raise TypeError(f"resume: got {_checks.describe(resume)}, expected a NEBResult")
        if resume.images.shape[-1] != landscape.dim:
            raise ValueError(f"resume: images of dim {resume.images.shape[-1]}, expected the landscape's "
                             f"dim {landscape.dim}")
        own = lambda t: t.to(dtype=landscape.dtype, device=landscape.device).clone()  # noqa: E731
        st = ops.BandState(**{f.name: getattr(resume.state, f.name).to(landscape.device).clone()
                              for f in fields(ops.BandState)})
        return cls(landscape, resume.config, own(resume.images), own(resume.energies), own(resume.velocity), st,
                   [resume.fmax_history.to(landscape.device)], resume.steps.to(landscape.device).clone())

    def restart(self, mask: torch.Tensor) -> None:
        """Fresh optimizer state for the bands in mask."""
        self.st.dt[mask], self.st.a[mask], self.st.nsteps[mask] = self.cfg.dt, self.cfg.a_start, -1
        self.v[mask] = 0

    def respace(self, running: torch.Tensor, x_out: torch.Tensor) -> None:
        """Only unevenly spaced running bands to equal arc length: the springs space a relaxed band evenly
        already, and respacing it along its polyline would only undo the relaxation.  The climbing image
        stays put: respacing it would undo its climb.  Their optimizer restarts."""
        seg = torch.diff(self.x.double(), dim=1).norm(dim=-1)
        far = running & (seg.max(1).values > _UNEVEN * seg.min(1).values)
        sel = far.nonzero().squeeze(1)
        if sel.numel():
            pin = (1 + torch.argmax(self.e[sel, 1:-1].double(), dim=1)) if self.cfg.climb else None
            self.x[sel] = respace(self.x[sel], pin)
            x_out[sel] = self.x[sel]
            self.restart(far)

    def relax(self, steps: int, respace_every: int | None, report, done0: int, total: int) -> None:
        """Up to `steps` NEB steps of the running bands: each step one loss_and_grad call on every
        interior image of every running band, then the fused tangent / force / optimizer kernel."""
        B, n, D = self.x.shape
        g = torch.zeros_like(self.x)
        x_out = self.x.clone()
        for t in range(steps):
            running = self.st.status == RUNNING
            idx = running.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            if respace_every and t and t % respace_every == 0:
                self.respace(running, x_out)
            loss, grad = self.landscape.loss_and_grad(self.x[idx, 1:-1].reshape(-1, D))
            self.e[idx, 1:-1] = loss.view(-1, n - 2)
            g[idx, 1:-1] = grad.view(-1, n - 2, D)
            ops.step(self.cfg, self.x, self.e, g, self.v, x_out, self.st)
            self.x, x_out = x_out, self.x
            self.counts += running
            self.history.append(torch.where(running, self.st.fmax, torch.full_like(self.st.fmax, float("nan")))[None])
            if report:
                report(done0 + t + 1, total)
        if report:
            report(done0 + steps, total)

    def insert(self, count: int) -> None:
        """AutoNEB-style refinement: `count` new images per band, then every band not diverged restarts."""
        self.x = _insert(self.x, self.e, count).contiguous()
        self.e = torch.cat([self.e[:, :1], torch.full_like(self.x[:, 1:-1, 0], float("nan")), self.e[:, -1:]], dim=1)
        self.v = torch.zeros_like(self.x)
        again = self.st.status != DIVERGED
        self.restart(again)
        self.st.status[again] = RUNNING

    def result(self, refresh_all: bool) -> NEBResult:
        """The NEBResult; bands that moved after their last evaluation (all not diverged, with
        refresh_all) get their final energies first."""
        st, x, e = self.st, self.x, self.e
        moved = (st.status != DIVERGED) if refresh_all else (st.status == RUNNING)
        if bool(moved.any()):
            e[moved, 1:-1] = self.landscape.loss(x[moved, 1:-1].reshape(-1, x.shape[2])).view(-1, x.shape[1] - 2)
        B = x.shape[0]
        fh = torch.cat(self.history) if self.history else torch.empty(0, B, dtype=torch.float64, device=x.device)
        return NEBResult(images=x, energies=e, converged=st.status == CONVERGED, diverged=st.status == DIVERGED,
                         fmax=st.fmax.clone(), fmax_history=fh, steps=self.counts, velocity=self.v, state=st,
                         config=self.cfg)
