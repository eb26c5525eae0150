"""Reference implementation of the Fastfood projection (numpy for the draws, torch for the products).

P (D x d) is a stack of blocks, each a Fastfood transform (Le, Sarlos & Smola 2013, as Li et al. 2018 use
it for large models) of theta zero-padded to n = 2^ceil(log2 d):

    block b (rows b n ... b n + r_b - 1, r_b = n except the last):  y_b = Hp_b Gs_b S_b Pi_b H B_b theta_pad

- B_b: random +-1 diagonal (n); H: the unnormalised Walsh-Hadamard transform (Sylvester order, entries +-1);
- Pi_b: a random permutation of n; S_b keeps its first r_b entries (all n for a full block);
- Gs_b: Gaussian diagonal (r_b), scaled once by one common factor (below);
- Hp_b: H applied to each dyadic piece of r_b (r_b's binary digits, largest first): one piece of n for a
  full block; the cut last block, e.g. r = 2,602, gets pieces of 2,048, 512, 32, 8 and 2.

Why pieces rather than cutting H's rows: every entry of Pi H B e_j is +-1, so a piece of m rows gives
column j the squared norm m * sum(g^2 over the piece) whatever j.  Every column of P therefore has the
same squared norm sum_i m(i) g_i^2 (m(i) the size of row i's piece), and dividing G by its square root
gives columns of unit norm, exactly up to rounding, with no per-column pass.  (Cutting rows of the
last block's H instead leaves column norms that differ by column and cost O(d n log n) to compute.)

Draws come from the counter-based generator (lscape.reference.rng; stream 4 b + k of `seed` for block b:
k = 0 signs, 1 the permutation, 2 the Gaussians), so the matrix is a function of (D, d, seed) alone and
the same on every backend.  The transforms apply stage h = 1, 2, 4, ... with the butterfly (a + b,
a - b); the C++ kernel keeps that order, so its P theta is bit-identical to `matvec` here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from . import rng

MAX_ROWS = 2**31 - 1
_GEN_CHUNK = 1 << 22  # draw at most this many entries at once (bounds numpy temporaries for huge D)


@dataclass(frozen=True)
class FastfoodSpec:
    """The shape of P: D rows, d columns, transform size n = 2^ceil(log2 d), nb = ceil(D / n) blocks,
    the last holding r_last = D - (nb - 1) n rows."""

    D: int
    d: int
    seed: int
    n: int
    nb: int
    r_last: int

    def as_tuple(self) -> tuple[int, int, int, int]:
        """(D, d, n, nb), as the extension kernels take them."""
        return (self.D, self.d, self.n, self.nb)


def make_spec(D: int, d: int, seed: int) -> FastfoodSpec:
    """The spec of P; arguments are assumed validated (see lscape.projection)."""
    n = 1 << (d - 1).bit_length()
    nb = -(-D // n)
    return FastfoodSpec(D, d, seed, n, nb, D - (nb - 1) * n)


def pieces(r: int) -> list[tuple[int, int]]:
    """(offset, size) of the dyadic pieces of r rows, largest first: r's binary digits."""
    out, off = [], 0
    for bit in range(r.bit_length() - 1, -1, -1):
        if r >> bit & 1:
            out.append((off, 1 << bit))
            off += 1 << bit
    return out


def draw(spec: FastfoodSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sign (nb, n) float64 +-1, perm (nb, n) int32, gs (nb, n) float64): B, Pi and the scaled G of every
    block; perm[b, i] is the entry of H B theta that row i of block b takes; gs is zero past r_b."""
    n, nb = spec.n, spec.nb
    sign = np.empty((nb, n))
    perm = np.empty((nb, n), dtype=np.int32)
    g = np.empty((nb, n))
    per = max(1, _GEN_CHUNK // n)
    counter = np.arange(n, dtype=np.uint32)
    for b0 in range(0, nb, per):
        blocks = np.arange(b0, min(nb, b0 + per), dtype=np.uint64)
        keys = [rng.stream_key(spec.seed, np.uint64(4) * blocks + np.uint64(k))[:, None] for k in range(3)]
        sign[blocks] = np.where(rng.draw32(keys[0], counter) >> np.uint32(31), -1.0, 1.0)
        perm[blocks] = np.argsort(rng.draw32(keys[1], counter), axis=1, kind="stable")
        # rounded to float32: hides the last bits of log/cos, which may differ between numpy builds
        g[blocks] = rng.normal(keys[2][:, 0], n).astype(np.float32)
    g[-1, spec.r_last:] = 0.0
    # every column's squared norm: sum_i m(i) g_i^2, m(i) the size of row i's piece (module docstring).
    # m(i) g_i^2 of a float32 g_i is exact in float64, and math.fsum rounds each chunk's sum once (chunks
    # fixed by n): the scale is the same everywhere, whatever the summation order of the numpy at hand
    last = np.full(n, float(n))
    for off, m in pieces(spec.r_last):
        last[off:off + m] = m
    parts = []
    for b0 in range(0, nb, per):
        chunk = g[b0:b0 + per]
        m_of_row = np.full(chunk.shape, float(n))
        if b0 + len(chunk) == nb:
            m_of_row[-1] = last
        parts.append(math.fsum((m_of_row * chunk * chunk).ravel().tolist()))
    sq = math.fsum(parts)
    return sign, perm, g / math.sqrt(sq)


def fwht(x: torch.Tensor) -> torch.Tensor:
    """The unnormalised Walsh-Hadamard transform along the last dimension (a power of two): H x with
    H[i, j] = (-1)^popcount(i & j) (scipy.linalg.hadamard's order), stages h = 1, 2, 4, ... in turn."""
    n = x.shape[-1]
    if n & (n - 1):
        raise ValueError(f"x: got last dimension {n}, expected a power of two")
    lead = x.shape[:-1]
    h = 1
    while h < n:
        y = x.reshape(*lead, n // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        x = torch.stack((a + b, a - b), dim=-2).reshape(*lead, n)
        h *= 2
    return x


def _last_block_pieces(u: torch.Tensor, spec: FastfoodSpec) -> torch.Tensor:
    """u (B, nb, n) with H applied to the full blocks and to the last block's pieces."""
    if spec.r_last == spec.n:
        return fwht(u)
    full = fwht(u[:, :-1])
    last = u[:, -1].clone()
    for off, m in pieces(spec.r_last):
        last[:, off:off + m] = fwht(last[:, off:off + m])
    return torch.cat((full, last.unsqueeze(1)), dim=1)


def matvec(spec: FastfoodSpec, sign: torch.Tensor, perm: torch.Tensor, gs: torch.Tensor,
           x: torch.Tensor) -> torch.Tensor:
    """P theta: x (B, d) -> (B, D).  sign, gs (nb, n) in x's dtype; perm (nb, n) int64; all on x's device."""
    B = x.shape[0]
    xp = x.new_zeros((B, 1, spec.n))
    xp[:, 0, :spec.d] = x
    v = fwht(xp * sign)
    u = torch.gather(v, 2, perm.expand(B, -1, -1)) * gs
    return _last_block_pieces(u, spec).reshape(B, spec.nb * spec.n)[:, :spec.D]


def rmatvec(spec: FastfoodSpec, sign: torch.Tensor, perm: torch.Tensor, gs: torch.Tensor,
            g: torch.Tensor) -> torch.Tensor:
    """P^T g: g (B, D) -> (B, d), the adjoint of `matvec` (H is symmetric; the same steps in reverse)."""
    B = g.shape[0]
    w = g.new_zeros((B, spec.nb * spec.n))
    w[:, :spec.D] = g
    w = _last_block_pieces(w.view(B, spec.nb, spec.n), spec) * gs
    v = torch.zeros_like(w).scatter_(2, perm.expand(B, -1, -1), w)
    return (fwht(v) * sign).sum(dim=1)[:, :spec.d]
