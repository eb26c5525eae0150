"""Dispatch of the projection kernels to cuda / cpu / torch, and the autograd Functions over them.

Callers (lscape.projection) pass validated, C-contiguous tensors on the projection's device, and the
operands of P as an `Operands`; this module only chooses the backend and moves pointers.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .. import _backend
from ..reference import projection as ref
from ._common import call, ptr

KERNEL_DTYPES = (torch.float32, torch.float64)


# The column-band copy (csrc/include/lscape/projection.h) that one-vector products run on, by default:
BAND_COLS = 4608  # columns per band at most: a band's part of the float32 signed vector is <= 36 KB
BAND_WINDOW = 32768  # rows sorted together by their counts per band (0.9% padding at the paper's size)
BAND_MAX_PADDING = 0.10  # a copy padded more than this (many bands, few nonzeros a row) is not kept
BAND_MAX_WIDTH = 65535  # bwidth is uint16: a copy with a wider block is not made
# Products touching fewer nonzeros than this run on one CPU thread: an OpenMP team costs more than the
# work (measured: D = 1,000, d = 10 took 6-9 ms a product on 2 threads of a loaded 2-core machine, 0.05 ms
# on one; the partner thread was descheduled while the team waited for it)
SERIAL_WORK = 1 << 16


@dataclass(frozen=True)
class Bands:
    """The column-band copy of the CPU's SELL layout: nb bands of columns, rows in windows of `window`;
    bperm (n_slices * 16,) int16, bwidth (n_slices * nb,) int16 holding uint16 bits, bstart
    (n_windows * nb + 1,) int64, bcols int16/int32 (as the SELL cols)."""

    nb: int
    window: int
    bperm: torch.Tensor
    bwidth: torch.Tensor
    bstart: torch.Tensor
    bcols: torch.Tensor

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.bperm, self.bwidth, self.bstart, self.bcols


def _no_bands() -> Bands | None:
    return None


@dataclass(frozen=True)
class Operands:
    """What a product with P needs, in one dtype.

    buffers: P's held buffers (`build`'s dict); scales: (d,) column scales in the product's dtype;
    coo: builds (rows, cols, values) for the torch reference on demand (cached by its owner);
    bands: the column-band copy that one-vector products run on with the CPU kernels, or None (built and
    cached by its owner on first use)."""

    spec: ref.ProjSpec
    storage: str
    buffers: dict[str, torch.Tensor]
    scales: torch.Tensor
    coo: Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    bands: Callable[[], Bands | None] = _no_bands


def build(spec: ref.ProjSpec, storage: str, device: torch.device) -> dict[str, torch.Tensor]:
    """Generate P's held buffers on `device`: col_counts always; for storage="indices" the segment layout
    (seg_start, chunk_ptr, indices) on a CUDA device, and on the CPU the same matrix re-laid as
    SELL-C-sigma (perm, slice_ptr, cols; see csrc/include/lscape/projection.h)."""
    k = _backend.kernel("proj_build", device)
    if k is None:
        out = _build_reference(spec, storage == "indices", device)
    else:
        out = build_segments(k, spec, storage == "indices", device)
    if storage == "indices" and device.type == "cpu":
        seg = (out.pop("seg_start"), out.pop("chunk_ptr"), out.pop("indices"))
        if k is not None:
            out.update(_sell(k, spec, *seg))
        else:
            sell = ref.sell_layout(spec, *(t.numpy() for t in seg))
            out.update({key: torch.from_numpy(a) for key, a in sell.items()})
    return out


def build_segments(k, spec: ref.ProjSpec, want_segments: bool, device: torch.device) -> dict[str, torch.Tensor]:
    """col_counts and, with want_segments, the segment layout (seg_start, chunk_ptr, indices), by kernel k."""
    d, n_chunks = spec.d, spec.n_chunks
    col_counts = torch.empty(d, dtype=torch.int64, device=device)
    seg_counts = torch.empty((n_chunks, d), dtype=torch.int32, device=device) if want_segments else None
    call(k, "proj_count", spec.as_tuple(), ptr(seg_counts), ptr(col_counts))
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
        call(k, "proj_fill", spec.as_tuple(), ptr(seg_start), ptr(chunk_ptr), ptr(indices))
        out.update(seg_start=seg_start, chunk_ptr=chunk_ptr, indices=indices)
    return out


def _sell(k, spec: ref.ProjSpec, seg_start: torch.Tensor, chunk_ptr: torch.Tensor,
          indices: torch.Tensor) -> dict[str, torch.Tensor]:
    """The SELL-C-sigma buffers from the segments, by the C++ kernels (CPU tensors)."""
    n_slices = -(-spec.D // ref.SELL_C)
    perm = torch.empty(n_slices * ref.SELL_C, dtype=torch.int16)
    widths = torch.empty(n_slices, dtype=torch.int32)
    call(k, "proj_sell_plan", spec.as_tuple(), ptr(seg_start), ptr(chunk_ptr), ptr(indices), ptr(perm), ptr(widths))
    slice_ptr = torch.zeros(n_slices + 1, dtype=torch.int64)
    torch.cumsum(widths.to(torch.int64) * ref.SELL_C, dim=0, out=slice_ptr[1:])
    cols = torch.empty(int(slice_ptr[-1]), dtype=torch.int16 if ref.sell_narrow(spec.d) else torch.int32)
    call(k, "proj_sell_fill", spec.as_tuple(), ptr(seg_start), ptr(chunk_ptr), ptr(indices), ptr(perm),
         ptr(slice_ptr), ptr(cols))
    return {"perm": perm, "slice_ptr": slice_ptr, "cols": cols}


def band_count(d: int) -> int:
    """Bands of at most BAND_COLS columns that cover d columns."""
    return -(-d // BAND_COLS)


def build_bands(spec: ref.ProjSpec, buffers: dict[str, torch.Tensor], *, nb: int | None = None,
                window: int = BAND_WINDOW, max_padding: float | None = BAND_MAX_PADDING) -> Bands | None:
    """The column-band copy of the CPU's SELL buffers, by the C++ kernels; None where it would not pay:
    one band (nb = band_count(d) by default), padding above max_padding, or no CPU kernels."""
    if "cols" not in buffers:
        raise ValueError("build_bands: the buffers hold no SELL layout (storage='indices' on the CPU)")
    nb = band_count(spec.d) if nb is None else nb
    if not 1 <= nb <= 64:
        raise ValueError(f"nb: got {nb}, expected an integer in [1, 64]")
    if not (ref.SELL_C <= window <= 65536 and window & (window - 1) == 0):
        raise ValueError(f"window: got {window}, expected a power of two in [{ref.SELL_C}, 65536]")
    k = _backend.kernel("proj_build", torch.device("cpu"))
    if k is None or (nb == 1 and max_padding is not None):
        return None
    b = buffers
    held = (ptr(b["perm"]), ptr(b["slice_ptr"]), ptr(b["cols"]))
    n_slices = -(-spec.D // ref.SELL_C)
    bperm = torch.empty(n_slices * ref.SELL_C, dtype=torch.int16)
    widths = torch.empty(n_slices * nb, dtype=torch.int32)
    call(k, "proj_bands_plan", spec.as_tuple(), nb, window, *held, ptr(bperm), ptr(widths))
    band_ptr = torch.zeros(n_slices * nb + 1, dtype=torch.int64)  # every block's offset, while filling
    torch.cumsum(widths.to(torch.int64) * ref.SELL_C, dim=0, out=band_ptr[1:])
    entries, nnz = int(band_ptr[-1]), int(b["col_counts"].sum())
    if max_padding is not None and entries > (1 + max_padding) * nnz:
        return None
    if n_slices and int(widths.max()) > BAND_MAX_WIDTH:
        return None
    bcols = torch.empty(entries, dtype=b["cols"].dtype)
    call(k, "proj_bands_fill", spec.as_tuple(), nb, window, *held, ptr(bperm), ptr(band_ptr), ptr(bcols))
    bwidth = widths.numpy().astype(np.uint16).view(np.int16)
    return Bands(nb, window, bperm, torch.from_numpy(bwidth), band_ptr[ref.band_group_starts(spec.D, nb, window)],
                 bcols)


def decode(spec: ref.ProjSpec, buffers: dict[str, torch.Tensor]):
    """(rows, cols, neg) of every nonzero of the "indices" storage, either layout."""
    if "cols" in buffers:
        return ref.sell_decode(spec.D, spec.d, buffers["perm"], buffers["slice_ptr"], buffers["cols"])
    return ref.decode(buffers["seg_start"], buffers["chunk_ptr"], buffers["indices"])


def _build_reference(spec: ref.ProjSpec, want_segments: bool, device: torch.device) -> dict[str, torch.Tensor]:
    if want_segments:
        seg_start, chunk_ptr, indices = ref.storage(spec)
        out = {"seg_start": seg_start, "chunk_ptr": chunk_ptr, "indices": indices}
        counts = (seg_start[:, 1:] - seg_start[:, :-1]).sum(axis=0)
    else:
        counts = np.zeros(spec.d, dtype=np.int64)
        for c0, c1 in ref.chunk_groups(spec):
            counts += ref.pattern(spec, c0, c1)[0].sum(axis=0, dtype=np.int64)
        out = {}
    out["col_counts"] = counts.astype(np.int64)
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in out.items()}


def product(P: Operands, x: torch.Tensor, transpose: bool) -> torch.Tensor:
    """matvec (x (B, d) -> (B, D)) or, with transpose, rmatvec (x (B, D) -> (B, d)).

    x is C-contiguous, 2-D, float32/float64 (P.scales' dtype), on P's device.
    """
    spec = P.spec
    B = x.shape[0]
    out_shape = (B, spec.d if transpose else spec.D)
    k = _backend.kernel("proj_product", x.device, x.dtype)
    if B == 0:
        return x.new_zeros(out_shape)
    if k is not None and k.backend == "cpu" and B * spec.D * spec.d * spec.density < SERIAL_WORK:
        k = dataclasses.replace(k, tail=1)
    if k is None:
        if P.storage == "implicit":
            return ref.implicit_product(spec, P.scales, x, transpose)
        rows, cols, vals = P.coo()
        fn = ref.rmatvec if transpose else ref.matvec
        return fn(rows, cols, vals, x, out_shape[1])

    out = torch.empty(out_shape, dtype=x.dtype, device=x.device)
    b = P.buffers
    if B == 1 and "cols" in b and (bands := P.bands()) is not None:
        name = "proj_rmatvec_bands" if transpose else "proj_matvec_bands"
        call(k, name, spec.as_tuple(), bands.nb, bands.window, *(ptr(t) for t in bands.tensors), ptr(P.scales),
             ptr(x), ptr(out), x.dtype == torch.float64)
        return out
    if P.storage == "implicit":
        layout, held = "implicit", ()
    elif "cols" in b:
        layout, held = "sell", (ptr(b["perm"]), ptr(b["slice_ptr"]), ptr(b["cols"]))
    else:  # the segments: held on a CUDA device only (build re-lays them as SELL on the CPU)
        layout, held = "indices", (ptr(b["seg_start"]), ptr(b["chunk_ptr"]), ptr(b["indices"]))
    name = ("proj_rmatvec_" if transpose else "proj_matvec_") + layout
    call(k, name, spec.as_tuple(), *held, ptr(P.scales), ptr(x), ptr(out), B, x.dtype == torch.float64)
    return out


class LinearProduct(torch.autograd.Function):
    """product(P, x, transpose): matvec (theta (B, d) -> (B, D)) or, with transpose, rmatvec (g (B, D) -> (B, d)),
    for any linear P with such a `product` (the sparse and the Fastfood P).

    The gradient of each is the other, so derivatives of any order stay on the kernels.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, product, P, transpose: bool) -> torch.Tensor:
        ctx.product, ctx.P, ctx.transpose = product, P, transpose
        return product(P, x, transpose)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return LinearProduct.apply(grad.contiguous(), ctx.product, ctx.P, not ctx.transpose), None, None, None


class Product:
    """The sparse P's autograd product: Product.apply(x, P, transpose)."""

    @staticmethod
    def apply(x: torch.Tensor, P: Operands, transpose: bool) -> torch.Tensor:
        return LinearProduct.apply(x, product, P, transpose)
