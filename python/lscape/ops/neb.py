"""Dispatch of the NEB step (csrc/include/lscape/neb.h) to cuda / cpu / torch.

The caller (lscape.neb) passes validated, C-contiguous tensors on one device and owns the double
buffer x / x_out.  The CPU kernel takes float32 and float64; the CUDA kernel float32 (float64 on a GPU
runs on the reference).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import _backend
from ..reference import neb as ref
from .projection import _on_device


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
    def fresh(cls, B: int, cfg: ref.NEBConfig, device: torch.device) -> "BandState":
        f64 = dict(dtype=torch.float64, device=device)
        return cls(dt=torch.full((B,), cfg.dt, **f64), a=torch.full((B,), cfg.a_start, **f64),
                   nsteps=torch.full((B,), -1, dtype=torch.int32, device=device),
                   status=torch.zeros(B, dtype=torch.uint8, device=device),
                   fmax=torch.full((B,), float("nan"), **f64),
                   imax=torch.zeros(B, dtype=torch.int32, device=device))


def _kernel(device: torch.device, dtype: torch.dtype):
    """(extension module, trailing argument) of the backend that runs here, or (None, None) for torch."""
    backend = _backend.select(device, dtype)
    if backend == "cpu" and dtype in (torch.float32, torch.float64):
        return _backend.cpu_extension(), _backend.num_threads()
    if backend == "cuda" and dtype == torch.float32:
        return _backend.cuda_extension(), _backend.cuda_stream(device)
    return None, None


def step(cfg: ref.NEBConfig, x: torch.Tensor, e: torch.Tensor, g: torch.Tensor, v: torch.Tensor,
         x_out: torch.Tensor, st: BandState) -> None:
    """One NEB step of all bands: x, g, v, x_out (B, n, D), e (B, n); updates v, x_out's interior rows and
    st in place (neb.h)."""
    ext, tail = _kernel(x.device, x.dtype)
    if ext is None:
        ref.step(cfg, x, e, g, v, x_out, st.dt, st.a, st.nsteps, st.status, st.fmax, st.imax)
        return
    B, n, D = x.shape
    if B == 0:
        return
    work = torch.empty(ext.neb_work_size(B, n, D), dtype=torch.float64, device=x.device)
    with _on_device(x.device):
        ext.neb_step(cfg.as_tuple(), B, n, D, x.data_ptr(), e.data_ptr(), g.data_ptr(), v.data_ptr(),
                     x_out.data_ptr(), st.dt.data_ptr(), st.a.data_ptr(), st.nsteps.data_ptr(),
                     st.status.data_ptr(), st.fmax.data_ptr(), st.imax.data_ptr(), work.data_ptr(),
                     x.dtype == torch.float64, tail)
