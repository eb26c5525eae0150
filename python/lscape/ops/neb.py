"""Dispatch of the NEB step (csrc/include/lscape/neb.h) to cuda / cpu / torch.

The caller (lscape.neb) passes validated, C-contiguous tensors on one device and owns the double
buffer x / x_out.  The CPU kernel takes float32 and float64; the CUDA kernel float32 (_backend.OPS:
float64 on a GPU runs on the reference under "auto", and is refused when "cuda" is forced).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import _backend
from ..reference import neb as ref
from ._common import call, ptr


@dataclass
class BandState:
    """Per-band optimizer state and outputs, all (B,): dt, a float64; nsteps int32 (-1 = fresh);
    status uint8 (reference.neb RUNNING / CONVERGED / DIVERGED); fmax float64; imax int32."""

    dt: torch.Tensor
    a: torch.Tensor
    nsteps: torch.Tensor
    status: torch.Tensor
    fmax: torch.Tensor
    imax: torch.Tensor

    @classmethod
    def fresh(cls, B: int, cfg: ref.NEBConfig, device: torch.device) -> BandState:
        f64 = dict(dtype=torch.float64, device=device)
        return cls(dt=torch.full((B,), cfg.dt, **f64), a=torch.full((B,), cfg.a_start, **f64),
                   nsteps=torch.full((B,), -1, dtype=torch.int32, device=device),
                   status=torch.zeros(B, dtype=torch.uint8, device=device),
                   fmax=torch.full((B,), float("nan"), **f64),
                   imax=torch.zeros(B, dtype=torch.int32, device=device))


def step(cfg: ref.NEBConfig, x: torch.Tensor, e: torch.Tensor, g: torch.Tensor, v: torch.Tensor,
         x_out: torch.Tensor, st: BandState) -> None:
    """One NEB step of all bands: x, g, v, x_out (B, n, D), e (B, n); updates v, x_out's interior rows and
    st in place (neb.h)."""
    k = _backend.kernel("neb_step", x.device, x.dtype)
    if k is None:
        ref.step(cfg, x, e, g, v, x_out, st.dt, st.a, st.nsteps, st.status, st.fmax, st.imax)
        return
    B, n, D = x.shape
    if B == 0:
        return
    work = torch.empty(k.ext.neb_work_size(B, n, D), dtype=torch.float64, device=x.device)
    call(k, "neb_step", cfg.as_tuple(), B, n, D, ptr(x), ptr(e), ptr(g), ptr(v), ptr(x_out), ptr(st.dt),
         ptr(st.a), ptr(st.nsteps), ptr(st.status), ptr(st.fmax), ptr(st.imax), ptr(work),
         x.dtype == torch.float64)
