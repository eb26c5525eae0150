"""Dispatch of the Fastfood kernels to cpu / torch, and the autograd Function over them.

The C++ extension runs them on the CPU (csrc/cpu/fastfood*.cpp, per ISA); CUDA tensors and builds without
the extension run the torch reference (lscape.reference.fastfood), which is fast enough on a GPU: a
product is a few batched transforms of n values.  Callers (lscape.projection) pass validated,
C-contiguous 2-D tensors on the projection's device.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .. import _backend
from ..reference import fastfood as ref
from ._common import call, ptr
from .projection import LinearProduct

# Products with fewer transformed values than this run on one CPU thread: an OpenMP team costs more than
# the work (as SERIAL_WORK in ops.projection)
SERIAL_WORK = 1 << 16


@dataclass
class Operands:
    """P's draws in one dtype on one device: sign, gs (nb, n) in the dtype and perm (nb, n) int32; made
    on first use, for the reference perm as int64 (torch.gather's index type), and for the CPU kernel's
    P^T g the inverse permutations inv (nb, n) int32 and gs_inv[b, j] = gs[b, inv[b, j]] (fastfood.h)."""

    spec: ref.FastfoodSpec
    sign: torch.Tensor
    perm: torch.Tensor
    gs: torch.Tensor
    _made: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    @property
    def perm64(self) -> torch.Tensor:
        if "perm64" not in self._made:
            self._made["perm64"] = self.perm.long()
        return self._made["perm64"]

    @property
    def inverse(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inv, gs_inv)."""
        if "inv" not in self._made:
            inv = torch.argsort(self.perm, dim=1).to(torch.int32)
            self._made["gs_inv"] = torch.gather(self.gs, 1, inv.long()).contiguous()
            self._made["inv"] = inv.contiguous()
        return self._made["inv"], self._made["gs_inv"]

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        """What it holds beyond P's own draws (for nbytes)."""
        return (self.sign, self.gs, *self._made.values())


def fwht(x: torch.Tensor) -> torch.Tensor:
    """H x along the last dimension (a power of two), out of place: x (..., n) float32/float64."""
    n = x.shape[-1]
    if n < 1 or n & (n - 1):
        raise ValueError(f"x: got last dimension {n}, expected a power of two")
    k = _backend.kernel("fastfood", x.device, x.dtype)
    if k is None:
        return ref.fwht(x)
    out = x.contiguous().clone()
    rows = out.numel() // n
    if rows * n < SERIAL_WORK:
        k = dataclasses.replace(k, tail=1)
    call(k, "fastfood_fwht", rows, n, ptr(out), x.dtype == torch.float64)
    return out


def product(P: Operands, x: torch.Tensor, transpose: bool) -> torch.Tensor:
    """matvec (x (B, d) -> (B, D)) or, with transpose, rmatvec (x (B, D) -> (B, d))."""
    spec = P.spec
    B = x.shape[0]
    out_shape = (B, spec.d if transpose else spec.D)
    if B == 0:
        return x.new_zeros(out_shape)
    k = _backend.kernel("fastfood", x.device, x.dtype)
    if k is None:
        fn = ref.rmatvec if transpose else ref.matvec
        return fn(spec, P.sign, P.perm64, P.gs, x)
    if B * spec.nb * spec.n < SERIAL_WORK:
        k = dataclasses.replace(k, tail=1)
    out = torch.empty(out_shape, dtype=x.dtype, device=x.device)
    idx, scale = P.inverse if transpose else (P.perm, P.gs)
    call(k, "fastfood_rmatvec" if transpose else "fastfood_matvec", spec.as_tuple(), ptr(P.sign), ptr(idx),
         ptr(scale), ptr(x), ptr(out), B, x.dtype == torch.float64)
    return out


class Product:
    """The Fastfood P's autograd product: Product.apply(x, P, transpose) (the gradient of each is the other)."""

    @staticmethod
    def apply(x: torch.Tensor, P: Operands, transpose: bool) -> torch.Tensor:
        return LinearProduct.apply(x, product, P, transpose)
