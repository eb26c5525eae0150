"""Dispatch of the projection kernels to cuda / cpu / torch, and the autograd Functions over them.

Callers (lscape.projection) pass validated, C-contiguous tensors on the projection's device; this module
only chooses the backend and moves pointers.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from .. import _backend
from ..reference import projection as ref

KERNEL_DTYPES = (torch.float32, torch.float64)


def build(spec: ref.ProjSpec, storage: str, device: torch.device) -> dict[str, torch.Tensor]:
    """Generate P's held buffers on `device`: col_counts always; seg_start, chunk_ptr, indices for
    storage="indices".  Runs on the backend `select` picks for the device."""
    backend = _backend.select(device)
    d, n_chunks = spec.d, spec.n_chunks
    want_segments = storage == "indices"
    if backend == "torch":
        if want_segments:
            seg_start, chunk_ptr, indices = ref.storage(spec)
            out = {"seg_start": seg_start, "chunk_ptr": chunk_ptr, "indices": indices}
            counts = (seg_start[:, 1:] - seg_start[:, :-1]).sum(axis=0)
        else:
            counts = np.zeros(d, dtype=np.int64)
            for c0, c1 in ref.chunk_groups(spec):
                counts += ref.pattern(spec, c0, c1)[0].sum(axis=0, dtype=np.int64)
            out = {}
        out["col_counts"] = counts.astype(np.int64)
        return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in out.items()}

    col_counts = torch.empty(d, dtype=torch.int64, device=device)
    seg_counts = torch.empty((n_chunks, d), dtype=torch.int32, device=device) if want_segments else None
    if backend == "cpu":
        ext, tail = _backend.cpu_extension(), (_backend.num_threads(),)
    else:
        ext, tail = _backend.cuda_extension(), (_backend.cuda_stream(device),)
    with _on_device(device):
        ext.proj_count(spec.as_tuple(), _ptr(seg_counts), col_counts.data_ptr(), *tail)
    out = {"col_counts": col_counts}
    if want_segments:
        seg_start = torch.zeros((n_chunks, d + 1), dtype=torch.int64, device=device)
        torch.cumsum(seg_counts.to(torch.int64), dim=1, out=seg_start[:, 1:])
        totals = seg_start[:, -1]
        if n_chunks and int(totals.max()) >= 2**31:
            raise ValueError("density too high: a chunk of P would hold 2^31 or more nonzeros")
        chunk_ptr = torch.zeros(n_chunks + 1, dtype=torch.int64, device=device)
        torch.cumsum(totals, dim=0, out=chunk_ptr[1:])
        seg_start = seg_start.to(torch.int32)
        del seg_counts, totals
        indices = torch.empty(int(chunk_ptr[-1]), dtype=torch.int32, device=device)
        with _on_device(device):
            ext.proj_fill(spec.as_tuple(), seg_start.data_ptr(), chunk_ptr.data_ptr(), indices.data_ptr(),
                          *tail)
        out.update(seg_start=seg_start, chunk_ptr=chunk_ptr, indices=indices)
    return out


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def product(P, x: torch.Tensor, transpose: bool) -> torch.Tensor:
    """matvec (x (B, d) -> (B, D)) or, with transpose, rmatvec (x (B, D) -> (B, d)).

    `P` is a SparseSignProjection; x is C-contiguous, 2-D, float32/float64, on P's device.
    """
    spec = P.spec
    B = x.shape[0]
    out_shape = (B, spec.d if transpose else spec.D)
    backend = _backend.select(x.device, x.dtype)
    if B == 0:
        return x.new_zeros(out_shape)
    scales = P._scales(x.dtype)
    if backend == "torch":
        if P.storage == "implicit":
            return ref.implicit_product(spec, scales, x, transpose)
        rows, cols, vals = P._reference_coo(x.dtype)
        fn = ref.rmatvec if transpose else ref.matvec
        return fn(rows, cols, vals, x, out_shape[1])

    out = torch.empty(out_shape, dtype=x.dtype, device=x.device)
    if backend == "cpu":
        ext, tail = _backend.cpu_extension(), (_backend.num_threads(),)
    else:
        ext, tail = _backend.cuda_extension(), (_backend.cuda_stream(x.device),)
    f64 = x.dtype == torch.float64
    name = ("proj_rmatvec_" if transpose else "proj_matvec_") + P.storage
    if P.storage == "indices":
        b = P._buffers
        args = (b["seg_start"].data_ptr(), b["chunk_ptr"].data_ptr(), b["indices"].data_ptr())
    else:
        args = ()
    with _on_device(x.device):
        getattr(ext, name)(spec.as_tuple(), *args, scales.data_ptr(), x.data_ptr(), out.data_ptr(), B, f64,
                           *tail)
    return out


def _on_device(device: torch.device):
    """Make `device` current while a CUDA kernel launches (a no-op context on the CPU)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class Product(torch.autograd.Function):
    """matvec (theta (B, d) -> (B, D)) or, with transpose, rmatvec (g (B, D) -> (B, d)).

    The gradient of each is the other, so derivatives of any order stay on the kernels.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, P, transpose: bool) -> torch.Tensor:
        ctx.P, ctx.transpose = P, transpose
        return product(P, x, transpose)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return Product.apply(grad.contiguous(), ctx.P, not ctx.transpose), None, None
