"""Reference implementation of the sparse +-1 projection (numpy for the pattern, torch for products).

The pattern is the one defined in csrc/include/lscape/projection.h, reproduced bit for bit: rows are
cut into chunks of S rows; segment (column j, chunk c) walks the random stream
stream_key(seed, j << 32 | c), each draw giving the geometric gap to the next nonzero row and its sign.
This module generates every segment of a set of chunks at once (vectorised over segments, one draw
per segment per step), which is slow next to the C++ kernel but short enough to read against the spec.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from . import rng

MAX_ROWS = 2**31 - 1  # rows are int32 with the sign in bit 31


@dataclass(frozen=True)
class ProjSpec:
    """Everything that defines P.  `cinv` = float32(1 / log2(1 - density)), `seg_rows` = S."""

    D: int
    d: int
    seed: int
    density: float
    cinv: float
    seg_rows: int
    n_chunks: int

    def as_tuple(self) -> tuple[int, int, int, float, int, int]:
        """The (D, d, seed, cinv, seg_rows, n_chunks) tuple the extension kernels take."""
        return (self.D, self.d, self.seed, self.cinv, self.seg_rows, self.n_chunks)

    @property
    def expected_nnz(self) -> float:
        return self.D * self.d * self.density


def segment_rows(density: float) -> int:
    """Rows per chunk: the power of two >= 16 / density (about 16 nonzeros per segment), in [2^10, 2^24].

    Large enough that restarting the stream at each chunk costs little, small enough that a chunk of
    the output stays in cache and that there are many chunks to share among threads.
    """
    want = 16.0 / density
    if not want < 2.0**24:  # also a subnormal density, whose quotient overflows to inf
        return 1 << 24
    return 1 << max(10, (math.ceil(want) - 1).bit_length())


def make_spec(D: int, d: int, seed: int, density: float) -> ProjSpec:
    """The spec of P; arguments are assumed validated (see lscape.projection)."""
    if density >= 1.0:
        cinv = -0.0
    else:
        # log1p keeps tiny densities exact; computed once here so every backend uses the same float32.
        # A density below ~1e-39 makes the ratio overflow float32: -FLT_MAX gives the same (empty) P.
        cinv = float(np.float32(max(math.log(2.0) / math.log1p(-density), -float(np.finfo(np.float32).max))))
    S = segment_rows(density)
    return ProjSpec(D, d, int(seed), float(density), cinv, S, -(-D // S))


def _gaps(h: np.ndarray, spec: ProjSpec) -> np.ndarray:
    with np.errstate(over="ignore"):  # cinv = -FLT_MAX (a subnormal density): inf, cut to S just below
        t = rng.log2_approx(rng.uniform24(h)) * np.float32(spec.cinv)
    # min(t, S) truncates to S exactly (a float32 integer), as draw_gap in projection.h
    return np.minimum(t, np.float32(spec.seg_rows)).astype(np.int64)


def pattern(spec: ProjSpec, c0: int = 0, c1: int | None = None):
    """Nonzeros of chunks [c0, c1), in storage order (chunk, column, row).

    Returns (seg_counts (c1 - c0, d) uint32, rows (nnz,) int64, neg (nnz,) bool).
    """
    c1 = spec.n_chunks if c1 is None else c1
    S, D, d = spec.seg_rows, spec.D, spec.d
    cc, jj = np.meshgrid(np.arange(c0, c1, dtype=np.int64), np.arange(d, dtype=np.int64), indexing="ij")
    cc, jj = cc.ravel(), jj.ravel()
    seg = np.arange(cc.size, dtype=np.int64)  # storage order of the segment
    keys = rng.stream_key(spec.seed, (jj.astype(np.uint64) << np.uint64(32)) | cc.astype(np.uint64))
    pos = cc * S
    end = np.minimum((cc + 1) * S, D)
    seg_ids, rows_out, neg_out = [], [], []
    k = 0
    active = np.arange(cc.size)
    while active.size:
        h = rng.draw32(keys[active], np.uint32(k))
        r = pos[active] + _gaps(h, spec)
        alive = r < end[active]
        active = active[alive]
        r = r[alive]
        seg_ids.append(seg[active])
        rows_out.append(r)
        neg_out.append((h[alive] >> np.uint32(31)).astype(bool))
        pos[active] = r + 1
        k += 1
    seg_ids = np.concatenate(seg_ids)
    order = np.argsort(seg_ids, kind="stable")  # draws were appended in draw order within a segment
    counts = np.bincount(seg_ids, minlength=cc.size).astype(np.uint32).reshape(c1 - c0, d)
    return counts, np.concatenate(rows_out)[order], np.concatenate(neg_out)[order]


def storage(spec: ProjSpec):
    """The "indices" storage, exactly as the kernels lay it out (see projection.h).

    Returns (seg_start (n_chunks, d + 1) int32, chunk_ptr (n_chunks + 1,) int64, indices (nnz,) int32)
    as numpy arrays.
    """
    counts, rows, neg = pattern(spec)
    return layout(counts) + (pack(rows, neg),)


def layout(seg_counts: np.ndarray):
    """(seg_start, chunk_ptr) from per-segment counts (n_chunks, d)."""
    n_chunks, d = seg_counts.shape
    seg_start = np.zeros((n_chunks, d + 1), dtype=np.int64)
    np.cumsum(seg_counts, axis=1, out=seg_start[:, 1:])
    totals = seg_start[:, -1]
    if totals.size and totals.max() >= 2**31:
        raise ValueError("density too high: a chunk of P would hold 2^31 or more nonzeros")
    chunk_ptr = np.zeros(n_chunks + 1, dtype=np.int64)
    np.cumsum(totals, out=chunk_ptr[1:])
    return seg_start.astype(np.int32), chunk_ptr


def pack(rows: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Rows with the sign folded into bit 31, as int32."""
    return (rows.astype(np.uint32) | (neg.astype(np.uint32) << np.uint32(31))).view(np.int32)


def column_scales(col_counts: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """1/sqrt(n_j) for columns with n_j > 0, else 0 (an empty column stays zero)."""
    n = col_counts.to(dtype)
    return torch.where(n > 0, 1.0 / torch.sqrt(n.clamp_min(1)), torch.zeros_like(n))


# ---- products, in torch, on any device --------------------------------------------------------------

def segment_cols(seg_counts: torch.Tensor) -> torch.Tensor:
    """The column of every nonzero in storage order, from per-segment counts (n_chunks, d)."""
    n_chunks, d = seg_counts.shape
    cols = torch.arange(d, device=seg_counts.device).repeat(n_chunks)
    return cols.repeat_interleave(seg_counts.reshape(-1).to(torch.int64))


def decode(seg_start: torch.Tensor, chunk_ptr: torch.Tensor, indices: torch.Tensor):
    """(rows, cols, neg) of every stored nonzero, from the "indices" storage."""
    cols = segment_cols(seg_start[:, 1:] - seg_start[:, :-1])
    packed = indices.to(torch.int64) & 0xFFFFFFFF
    return packed & 0x7FFFFFFF, cols, (packed >> 31).bool()


# ---- the SELL-C-sigma layout of the "indices" kind on the CPU (csrc/include/lscape/projection.h) ------
SELL_C = 16             # rows per slice
SELL_SIGMA = 1024       # rows are sorted by length within windows of this many rows
SELL_NARROW_MAX_D = 32767  # up to this d an entry is 16 bits (column << 1 | sign), above 32


def sell_narrow(d: int) -> bool:
    """Whether P's SELL entries are 16-bit (d <= 32767) rather than 32-bit."""
    return d <= SELL_NARROW_MAX_D


def sell_layout(spec: ProjSpec, seg_start: np.ndarray, chunk_ptr: np.ndarray, indices: np.ndarray):
    """The SELL-C-sigma buffers of the same matrix, exactly as the C++ kernels (sell_plan/sell_fill) lay
    them out, from the segment storage.  Returns a dict of numpy arrays: perm (n_slices * C,) int16 holding
    uint16 bits, slice_ptr (n_slices + 1,) int64, cols int16 (narrow) or int32 (wide) holding unsigned bits."""
    D, d, C, sigma = spec.D, spec.d, SELL_C, SELL_SIGMA
    rows, cols, neg = (t.numpy() for t in decode(*(torch.from_numpy(np.ascontiguousarray(a))
                                                   for a in (seg_start, chunk_ptr, indices))))
    length = np.bincount(rows, minlength=D).astype(np.int64)
    n_slices = -(-D // C)
    r = np.arange(D, dtype=np.int64)
    order = np.lexsort((r, -length, r // sigma))  # the row in every slot: by window, longest first, stable
    perm = np.zeros(n_slices * C, dtype=np.uint16)
    perm[:D] = order - (r & ~(sigma - 1))
    slot_len = np.zeros(n_slices * C, dtype=np.int64)
    slot_len[:D] = length[order]
    widths = slot_len.reshape(n_slices, C).max(axis=1)
    slice_ptr = np.zeros(n_slices + 1, dtype=np.int64)
    np.cumsum(widths * C, out=slice_ptr[1:])
    slot_of = np.empty(D, dtype=np.int64)
    slot_of[order] = r
    by_row = np.argsort(rows, kind="stable")  # a row's entries in increasing column order
    rs = rows[by_row]
    row_start = np.concatenate(([0], np.cumsum(length)[:-1]))
    k = np.arange(rows.size, dtype=np.int64) - row_start[rs]
    p = slot_of[rs]
    at = slice_ptr[p // C] + k * C + p % C
    narrow = sell_narrow(d)
    etype = np.uint16 if narrow else np.uint32
    out = np.full(int(slice_ptr[-1]), 2 * d, dtype=etype)  # padding: column d, sign +
    out[at] = (cols[by_row].astype(etype) << etype(1)) | neg[by_row].astype(etype)
    return {"perm": perm.view(np.int16), "slice_ptr": slice_ptr, "cols": out.view(np.int16 if narrow else np.int32)}


def sell_decode(D: int, d: int, perm: torch.Tensor, slice_ptr: torch.Tensor, cols: torch.Tensor):
    """(rows, cols, neg) of every stored nonzero of the SELL-C-sigma storage (slice order), padding left out."""
    dev = cols.device
    n_slices = slice_ptr.numel() - 1
    sl = torch.repeat_interleave(torch.arange(n_slices, device=dev), slice_ptr[1:] - slice_ptr[:-1])
    slot = sl * SELL_C + (torch.arange(cols.numel(), device=dev) - slice_ptr[sl]) % SELL_C
    e = cols.to(torch.int64) & (0xFFFF if sell_narrow(d) else 0xFFFFFFFF)
    col = e >> 1
    keep = col < d  # padding holds column d
    slot = slot[keep]
    rows = (slot & ~(SELL_SIGMA - 1)) + (perm.to(torch.int64) & 0xFFFF)[slot]
    return rows, col[keep], (e[keep] & 1).bool()


# ---- the column-band copy of the SELL layout, for one-vector products (csrc/include/lscape/projection.h)
def band_of(cols: np.ndarray, nb: int, d: int) -> np.ndarray:
    """The band of every column: col * nb // d (bands of about d / nb consecutive columns)."""
    return np.asarray(cols, dtype=np.int64) * nb // d


def _band_blocks(D: int, nb: int, window: int) -> np.ndarray:
    """(n_slices, nb): the storage position of block (slice, band): window by window, then band, then slice."""
    n_slices = -(-D // SELL_C)
    spw = window // SELL_C
    sl = np.arange(n_slices, dtype=np.int64)
    s0 = sl // spw * spw
    ns = np.minimum(spw, n_slices - s0)
    return s0[:, None] * nb + np.arange(nb, dtype=np.int64)[None, :] * ns[:, None] + (sl - s0)[:, None]


def band_group_starts(D: int, nb: int, window: int) -> np.ndarray:
    """(n_windows * nb + 1,): the storage position of every (window, band) group's first block, then the
    block count (so band_ptr[band_group_starts(...)] is bstart)."""
    blocks = _band_blocks(D, nb, window)
    return np.append(blocks[::window // SELL_C].ravel(), blocks.size)  # a window's first slice, every band


def band_layout(D: int, d: int, rows: np.ndarray, cols: np.ndarray, neg: np.ndarray, nb: int, window: int):
    """The column-band copy of the matrix with nonzeros (rows, cols, neg), exactly as the C++ kernels
    (sell_bands_plan/sell_bands_fill) and lscape.ops.projection.build_bands lay it out.  Returns a dict of
    numpy arrays: bperm (n_slices * C,) and bwidth (n_slices * nb,) int16 holding uint16 bits, bstart
    (n_windows * nb + 1,) int64, bcols as sell_layout's cols."""
    C, W = SELL_C, window
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    neg = np.asarray(neg).astype(np.int64)
    band = band_of(cols, nb, d)
    cnt = np.bincount(rows * nb + band, minlength=D * nb).reshape(D, nb)
    n_slices = -(-D // C)
    r = np.arange(D, dtype=np.int64)
    # by window; then band 0's count descending, band 1's, ...; then row
    order = np.lexsort((r, *[-cnt[:, b] for b in range(nb - 1, -1, -1)], r // W))
    bperm = np.zeros(n_slices * C, dtype=np.uint16)
    bperm[:D] = order - (r & ~(W - 1))
    slot_cnt = np.zeros((n_slices * C, nb), dtype=np.int64)
    slot_cnt[:D] = cnt[order]
    widths = slot_cnt.reshape(n_slices, C, nb).max(axis=1)  # (n_slices, nb)
    blocks = _band_blocks(D, nb, W)
    stored = np.zeros(n_slices * nb, dtype=np.int64)
    stored[blocks.ravel()] = widths.ravel() * C
    band_ptr = np.zeros(n_slices * nb + 1, dtype=np.int64)
    np.cumsum(stored, out=band_ptr[1:])
    slot_of = np.empty(D, dtype=np.int64)
    slot_of[order] = r
    o = np.lexsort((cols, rows))  # each row's entries in increasing column order: bands in order too
    rows, cols, neg, band = rows[o], cols[o], neg[o], band[o]
    key = rows * nb + band
    first = np.r_[0, np.flatnonzero(np.diff(key)) + 1] if key.size else np.zeros(0, dtype=np.int64)
    k = np.arange(key.size, dtype=np.int64) - np.repeat(first, np.diff(np.r_[first, key.size]))
    p = slot_of[rows]
    at = band_ptr[blocks[p // C, band]] + k * C + p % C
    narrow = sell_narrow(d)
    etype = np.uint16 if narrow else np.uint32
    out = np.full(int(band_ptr[-1]), 2 * d, dtype=etype)
    out[at] = (cols.astype(etype) << etype(1)) | neg.astype(etype)
    bwidth = stored // C
    return {"bperm": bperm.view(np.int16), "bwidth": bwidth.astype(np.uint16).view(np.int16),
            "bstart": band_ptr[band_group_starts(D, nb, W)], "bcols": out.view(np.int16 if narrow else np.int32)}


def band_decode(D: int, d: int, nb: int, window: int, bperm: torch.Tensor, bwidth: torch.Tensor,
                bcols: torch.Tensor):
    """(rows, cols, neg) of every stored nonzero of the column-band copy (storage order), padding left out."""
    band_ptr = torch.zeros(bwidth.numel() + 1, dtype=torch.int64)
    torch.cumsum((bwidth.to(torch.int64) & 0xFFFF) * SELL_C, dim=0, out=band_ptr[1:])
    blocks = torch.from_numpy(_band_blocks(D, nb, window))
    slice_of_block = torch.empty(blocks.numel(), dtype=torch.int64)
    slice_of_block[blocks.ravel()] = torch.arange(blocks.shape[0]).repeat_interleave(nb)
    size = band_ptr[1:] - band_ptr[:-1]
    blk = torch.repeat_interleave(torch.arange(size.numel()), size)
    slot = slice_of_block[blk] * SELL_C + (torch.arange(bcols.numel()) - band_ptr[blk]) % SELL_C
    e = bcols.to(torch.int64) & (0xFFFF if sell_narrow(d) else 0xFFFFFFFF)
    col = e >> 1
    keep = col < d
    slot = slot[keep]
    rows = (slot & ~(window - 1)) + (bperm.to(torch.int64) & 0xFFFF)[slot]
    return rows, col[keep], (e[keep] & 1).bool()


def coo_values(cols: torch.Tensor, neg: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The value of every nonzero: +-scales[col]."""
    v = scales[cols]
    return torch.where(neg, -v, v)


def matvec(rows, cols, vals, x: torch.Tensor, D: int) -> torch.Tensor:
    """out (B, D) = x (B, d) P^T from COO (rows, cols, vals)."""
    out = torch.zeros(x.shape[0], D, dtype=x.dtype, device=x.device)
    return out.index_add_(1, rows, x[:, cols] * vals)


def rmatvec(rows, cols, vals, g: torch.Tensor, d: int) -> torch.Tensor:
    """out (B, d) = g (B, D) P from COO (rows, cols, vals)."""
    out = torch.zeros(g.shape[0], d, dtype=g.dtype, device=g.device)
    return out.index_add_(1, cols, g[:, rows] * vals)


def chunk_groups(spec: ProjSpec, max_nnz: float = 4e6):
    """Ranges of chunks holding about max_nnz expected nonzeros each (bounds the implicit fallback's memory)."""
    per_chunk = max(1.0, spec.seg_rows * spec.d * spec.density)
    step = max(1, int(max_nnz // per_chunk))
    for c0 in range(0, spec.n_chunks, step):
        yield c0, min(spec.n_chunks, c0 + step)


def implicit_product(spec: ProjSpec, scales: torch.Tensor, x: torch.Tensor, transpose: bool) -> torch.Tensor:
    """matvec (transpose=False: x (B, d) -> (B, D)) or rmatvec (x (B, D) -> (B, d)), regenerating P
    chunk group by chunk group so memory stays bounded."""
    B = x.shape[0]
    out = torch.zeros(B, spec.d if transpose else spec.D, dtype=x.dtype, device=x.device)
    for c0, c1 in chunk_groups(spec):
        counts, rows, neg = pattern(spec, c0, c1)
        dev = x.device
        rows_t = torch.from_numpy(rows).to(dev)
        cols_t = segment_cols(torch.from_numpy(counts.astype(np.int64)).to(dev))
        vals = coo_values(cols_t, torch.from_numpy(neg).to(dev), scales)
        if transpose:
            out.index_add_(1, cols_t, x[:, rows_t] * vals)
        else:
            out.index_add_(1, rows_t, x[:, cols_t] * vals)
    return out
