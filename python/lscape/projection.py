"""The random projections P (D x d) of random-subspace training: SparseSignProjection, a sparse random +-1
matrix, and FastfoodProjection, a stack of Walsh-Hadamard transforms (for large d; see its docstring).

How the sparse P is drawn (a function of D, d, seed and density alone, identical on every backend and storage):
- each entry is nonzero independently with probability `density` (default 1/sqrt(D), as in Li et al.
  2018 and Fort & Scherlis 2019), with a random sign;
- positions are drawn column by column as geometric gaps between successive nonzero rows (inverse-CDF
  of a counter-based uniform), restarted at every chunk of S rows (S a power of two about 16/density)
  so any chunk can be generated alone: memorylessness keeps the entries independent;
- column j's nonzeros are +-1/sqrt(n_j), n_j its count, so nonzero columns have unit norm; a column
  that drew no nonzero (probability (1 - density)^D) stays all zero, and `empty_columns` counts them.
The counter-based generator is csrc/include/lscape/rng.h, mirrored bit for bit by lscape.reference.rng.
"""
from __future__ import annotations

import math
from typing import Any, TypeVar

import numpy as np
import torch

from . import _checks
from .ops import fastfood as ff_ops
from .ops import projection as ops
from .reference import fastfood as ff_ref
from .reference import projection as ref

STORAGES = ("indices", "implicit")  # SparseSignProjection's storages
# What lscape.Subspace and intrinsic_dimension take as `storage`: the sparse P's two, or "fastfood" for a
# FastfoodProjection (another matrix with the same column norms and products; see make_projection)
PROJECTIONS = (*STORAGES, "fastfood")
DENSE_LIMIT = 2**28  # to_dense() refuses more elements than this (1 GiB of float32)


_P = TypeVar("_P", bound="_Projection")


class _Projection:
    """What both kinds of P share: their description, the products (through `_ops`, the kernels' ops module:
    lscape.ops.projection or lscape.ops.fastfood), nbytes and to().  A subclass sets `spec` and `device`, and
    says what it holds (_held) and how a copy on another device gets its buffers (_moved)."""

    _ops: Any
    spec: Any
    device: torch.device

    D = property(lambda self: self.spec.D, doc="Rows of P: the length of P theta (int).")
    d = property(lambda self: self.spec.d, doc="Columns of P: the length of theta (int).")
    seed = property(lambda self: self.spec.seed, doc="The seed P was drawn from (int).")
    shape = property(lambda self: (self.spec.D, self.spec.d), doc="(D, d), as a matrix's shape.")

    @property
    def nbytes(self) -> int:
        """Bytes of memory P holds: its buffers and what it keeps for products (a sparse P's cached scales, band
        copy and torch-backend COO; a Fastfood P's draws in each dtype products ran in)."""
        return sum(t.numel() * t.element_size() for t in self._held())

    def _held(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def to(self: _P, device: torch.device | str) -> _P:
        """The same matrix with its buffers on `device`."""
        device = _device_arg(device)
        if device == self.device:
            return self
        other = object.__new__(type(self))
        other.device, other.spec = device, self.spec
        self._moved(other)
        return other

    def _moved(self, other: _Projection) -> None:
        """Give `other` (this P's copy on other.device) its buffers and empty caches."""
        raise NotImplementedError

    def matvec(self, theta: Any) -> Any:
        """P theta: (d,) -> (D,) or (B, d) -> (B, D)."""
        return _apply(self, self._ops, theta, "theta", transpose=False, grad=False)

    def rmatvec(self, g: Any) -> Any:
        """P^T g: (D,) -> (d,) or (B, D) -> (B, d)."""
        return _apply(self, self._ops, g, "g", transpose=True, grad=False)

    def __call__(self, theta: Any) -> Any:
        """P theta with autograd: the gradient with respect to theta is rmatvec."""
        return _apply(self, self._ops, theta, "theta", transpose=False, grad=True)


class SparseSignProjection(_Projection):
    """A D x d sparse +-1 projection with normalised columns.

    Args:
        D: rows (the full parameter count), 1 <= D < 2^31.
        d: columns (the subspace dimension), 1 <= d <= D.
        seed: any integer in [0, 2^64).
        density: probability that an entry is nonzero, in (0, 1]; default 1/sqrt(D).
        storage: "indices" holds the nonzeros.  On the CPU they are laid out SELL-C-sigma (rows in slices
            of 16, sorted by length within windows of 1024 rows): 2 bytes per nonzero (column and sign;
            4 when d > 32,767), about 1.5% padding, 2 bytes per row and 8 per slice of 16 rows.  The
            first product of one vector adds a second copy of the entries cut into bands of at most
            4,608 columns (when d > 4,608 and it pads by 10% or less): one-vector products then use one
            band of the d-sized vector at a time (P theta 1.25-1.4x faster at the paper's size, P^T g
            1.1-1.15x), for about 2.2 more bytes per nonzero.  On a CUDA device: one int32 per nonzero
            (row and sign) plus 4 bytes per chunk-column segment.
            "implicit" holds O(d) numbers and regenerates the nonzeros on every product.
        device: where the buffers live and products run (default CPU).

    Products: `matvec(theta)` (d,) or (B, d) -> (D,) or (B, D); `rmatvec(g)` (D,) or (B, D) -> (d,) or
    (B, d); `P(theta)` is matvec with autograd (its gradient is rmatvec).  Inputs may be torch tensors
    (float32 or float64), numpy arrays (CPU) or CuPy arrays (CUDA); results come back in the same kind.
    """

    _ops = ops

    def __init__(self, D: int, d: int, *, seed: int = 0, density: float | None = None,
                 storage: str = "indices", device: torch.device | str | None = None) -> None:
        D = _checks.int_arg("D", D, low=1, high=ref.MAX_ROWS - 1)
        d = _checks.int_arg("d", d, low=1)
        if d > D:
            raise ValueError(f"d: got {d}, expected at most D = {D} (P is D x d with d <= D)")
        seed = _checks.int_arg("seed", seed, low=0, high=2**64 - 1)
        if density is None:
            density = 1.0 / math.sqrt(D)
        density = _checks.float_arg("density", density, low=0.0, high=1.0, low_open=True)
        self.storage = _checks.choice_arg("storage", storage, STORAGES)
        self.device = _device_arg(device)
        self.spec = ref.make_spec(D, d, seed, density)
        self._buffers = ops.build(self.spec, self.storage, self.device)
        self._scale_cache: dict[torch.dtype, torch.Tensor] = {}
        self._coo_cache: dict[torch.dtype, tuple[torch.Tensor, ...]] = {}
        self._bands_cache: list[ops.Bands | None] = []  # [] until a one-vector product first asks

    # ---- description -------------------------------------------------------------------------------
    density = property(lambda self: self.spec.density, doc="Each entry's probability of being nonzero (float).")

    @property
    def col_counts(self) -> torch.Tensor:
        """Nonzeros per column, (d,) int64."""
        return self._buffers["col_counts"]

    @property
    def nnz(self) -> int:
        """Number of nonzeros."""
        return int(self.col_counts.sum())

    @property
    def empty_columns(self) -> int:
        """Columns that drew no nonzero (they stay zero)."""
        return int((self.col_counts == 0).sum())

    def _held(self) -> list[torch.Tensor]:
        """Its buffers, cached scales, band copy and (torch backend) COO cache."""
        held = list(self._buffers.values()) + list(self._scale_cache.values())
        held += [t for coo in self._coo_cache.values() for t in coo]
        held += [t for bands in self._bands_cache if bands is not None for t in bands.tensors]
        return held

    def __repr__(self) -> str:
        return (f"SparseSignProjection(D={self.D}, d={self.d}, seed={self.seed}, density={self.density:.4g}, "
                f"storage={self.storage!r}, device={str(self.device)!r}, nnz={self.nnz})")

    def _moved(self, other: SparseSignProjection) -> None:
        other.storage = self.storage
        if self.storage == "indices" and other.device.type != self.device.type:
            # the CPU and CUDA lay the stored kind out differently: generate it there (the same matrix)
            other._buffers = ops.build(self.spec, self.storage, other.device)
        else:
            other._buffers = {k: v.to(other.device) for k, v in self._buffers.items()}
        other._scale_cache, other._coo_cache, other._bands_cache = {}, {}, []

    # ---- helpers the ops use -----------------------------------------------------------------------
    def _operands(self, dtype: torch.dtype) -> ops.Operands:
        """What lscape.ops.projection needs for a product in `dtype` (the reference COO built lazily)."""
        return ops.Operands(self.spec, self.storage, self._buffers, self._scales(dtype),
                            lambda: self._reference_coo(dtype), self._bands)

    def _bands(self) -> ops.Bands | None:
        """The column-band copy that one-vector products run on (CPU kernels), built on first use; None
        where it would not pay (ops.build_bands)."""
        if not self._bands_cache:
            self._bands_cache.append(ops.build_bands(self.spec, self._buffers))
        return self._bands_cache[0]

    def _scales(self, dtype: torch.dtype) -> torch.Tensor:
        s = self._scale_cache.get(dtype)
        if s is None:
            s = self._scale_cache[dtype] = ref.column_scales(self.col_counts, dtype).contiguous()
        return s

    def _reference_coo(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, cols, values) for the torch backend, built once per dtype."""
        coo = self._coo_cache.get(dtype)
        if coo is None:
            rows, cols, neg = ops.decode(self.spec, self._buffers)
            coo = self._coo_cache[dtype] = (rows, cols, ref.coo_values(cols, neg, self._scales(dtype)))
        return coo

    def _pattern(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, cols, neg) of all nonzeros in storage order, as numpy arrays."""
        if self.storage == "indices":
            rows, cols, neg = ops.decode(self.spec, {k: v.cpu() for k, v in self._buffers.items()})
            return rows.numpy(), cols.numpy(), neg.numpy()
        counts, rows, neg = ref.pattern(self.spec)
        return rows, ref.segment_cols(torch.from_numpy(counts.astype(np.int64))).numpy(), neg

    # ---- conversions -------------------------------------------------------------------------------
    def to_scipy(self, dtype: Any = np.float32):
        """P as a scipy.sparse CSR matrix (D x d)."""
        import scipy.sparse as sp

        rows, cols, neg = self._pattern()
        scales = ref.column_scales(self.col_counts.cpu(), torch.float64).numpy()
        vals = np.where(neg, -scales[cols], scales[cols]).astype(dtype)
        return sp.csr_matrix((vals, (rows, cols)), shape=self.shape)

    def to_dense(self, dtype: torch.dtype = torch.float32, *, max_elements: int = DENSE_LIMIT) -> torch.Tensor:
        """P as a dense (D, d) tensor on its device; refused above max_elements entries."""
        if self.D * self.d > max_elements:
            raise ValueError(f"to_dense: P has {self.D} x {self.d} = {self.D * self.d:,} entries, more than "
                             f"max_elements = {max_elements:,}; use matvec/rmatvec or to_scipy() instead")
        rows, cols, neg = (torch.from_numpy(a).to(self.device) for a in self._pattern())
        dense = torch.zeros(self.shape, dtype=dtype, device=self.device)
        dense[rows, cols] = ref.coo_values(cols, neg, self._scales(dtype))
        return dense


class FastfoodProjection(_Projection):
    """A D x d Fastfood projection with unit-norm columns (lscape.reference.fastfood defines it).

    P = stacked blocks of Hp G Pi H B applied to theta zero-padded to n = 2^ceil(log2 d): H the
    Walsh-Hadamard transform, B random signs, Pi a random permutation, G Gaussian; the cut last block
    applies H to the dyadic pieces of its rows, which keeps every column's norm exactly 1 (up to
    rounding).  Its columns are orthogonal in expectation, like SparseSignProjection's (their inner
    products have mean square 2/D, the sparse P's 1/D: the Gaussian G spreads them), but it is a
    different matrix: a product costs O(D log n) operations in cache (a few transforms of n values per
    block of n rows) instead of one gather per nonzero, and P holds about 29 bytes per row of D whatever
    d (B, Pi and G of every block, G in float64, B and G in the dtype products run in, and for the CPU's
    P^T g the inverse of Pi and G through it).

    Args:
        D: rows (the full parameter count), 1 <= D < 2^31.
        d: columns (the subspace dimension), 1 <= d <= D.
        seed: any integer in [0, 2^64); the draws come from the counter-based generator, so P is the same
            on every backend and device.
        device: where the draws live and products run (default CPU).  The CPU runs the C++ kernels
            (per-ISA); a CUDA device runs the torch reference.

    Products: `matvec(theta)` (d,) or (B, d) -> (D,) or (B, D); `rmatvec(g)` (D,) or (B, D) -> (d,) or
    (B, d); `P(theta)` is matvec with autograd (its gradient is rmatvec).  Inputs may be torch tensors
    (float32 or float64), numpy arrays (CPU) or CuPy arrays (CUDA); results come back in the same kind.
    """

    storage = "fastfood"  # how lscape.Subspace and intrinsic_dimension name this kind of P
    _ops = ff_ops

    def __init__(self, D: int, d: int, *, seed: int = 0, device: torch.device | str | None = None) -> None:
        D = _checks.int_arg("D", D, low=1, high=ff_ref.MAX_ROWS - 1)
        d = _checks.int_arg("d", d, low=1)
        if d > D:
            raise ValueError(f"d: got {d}, expected at most D = {D} (P is D x d with d <= D)")
        seed = _checks.int_arg("seed", seed, low=0, high=2**64 - 1)
        self.device = _device_arg(device)
        self.spec = ff_ref.make_spec(D, d, seed)
        sign, perm, gs = ff_ref.draw(self.spec)
        self._draws = {"sign": torch.from_numpy(sign.astype(np.int8)).to(self.device),
                       "gs": torch.from_numpy(gs).to(self.device), "perm": torch.from_numpy(perm).to(self.device)}
        self._cache: dict[torch.dtype, ff_ops.Operands] = {}

    n = property(lambda self: self.spec.n, doc="The transform size 2^ceil(log2 d) (int).")
    blocks = property(lambda self: self.spec.nb, doc="Blocks of n rows, ceil(D / n), the last one cut (int).")

    def _held(self) -> list[torch.Tensor]:
        """Its draws, and their copies in each dtype products ran in."""
        return list(self._draws.values()) + [t for o in self._cache.values() for t in o.tensors]

    def __repr__(self) -> str:
        return (f"FastfoodProjection(D={self.D}, d={self.d}, seed={self.seed}, n={self.n}, blocks={self.blocks}, "
                f"device={str(self.device)!r})")

    def _moved(self, other: FastfoodProjection) -> None:
        other._draws = {k: v.to(other.device) for k, v in self._draws.items()}
        other._cache = {}

    def _operands(self, dtype: torch.dtype) -> ff_ops.Operands:
        o = self._cache.get(dtype)
        if o is None:
            dr = self._draws
            o = self._cache[dtype] = ff_ops.Operands(self.spec, dr["sign"].to(dtype), dr["perm"], dr["gs"].to(dtype))
        return o

    def to_dense(self, dtype: torch.dtype = torch.float32, *, max_elements: int = DENSE_LIMIT) -> torch.Tensor:
        """P as a dense (D, d) tensor on its device (P times the identity, a block of columns at a time);
        refused above max_elements entries."""
        if self.D * self.d > max_elements:
            raise ValueError(f"to_dense: P has {self.D} x {self.d} = {self.D * self.d:,} entries, more than "
                             f"max_elements = {max_elements:,}; use matvec/rmatvec instead")
        dense = torch.empty(self.shape, dtype=dtype, device=self.device)
        step = max(1, (1 << 22) // self.D)
        for j in range(0, self.d, step):
            cols = torch.eye(self.d, dtype=dtype, device=self.device)[j:j + step]
            dense[:, j:j + step] = self.matvec(cols).T
        return dense


def make_projection(D: int, d: int, *, seed: int = 0, storage: str = "indices", density: float | None = None,
                    device: torch.device | str | None = None) -> SparseSignProjection | FastfoodProjection:
    """The D x d projection `storage` names: "indices" or "implicit", a SparseSignProjection held that way;
    "fastfood", a FastfoodProjection (density must then be None: it has no zeros to thin)."""
    storage = _checks.choice_arg("storage", storage, PROJECTIONS)
    if storage != "fastfood":
        return SparseSignProjection(D, d, seed=seed, density=density, storage=storage, device=device)
    if density is not None:
        raise ValueError(f"density: got {density!r} with storage='fastfood', expected None (a Fastfood P is "
                         "dense; density sets the sparse P's nonzeros)")
    return FastfoodProjection(D, d, seed=seed, device=device)


def _apply(P, kernels, x: Any, name: str, transpose: bool, grad: bool) -> Any:
    """P's product (transpose: P^T) on x, through `kernels` (an ops module with product and Product):
    checks x, runs (d,) or (B, d) inputs as (B, d), and returns the result in x's kind."""
    t, back = _tensor_and_back(x, name)
    n = P.D if transpose else P.d
    other = P.d if transpose else P.D
    if t.ndim not in (1, 2) or t.shape[-1] != n:
        raise ValueError(f"{name}: got {_checks.describe(x)}, expected shape ({n},) or (B, {n}) "
                         f"for a {P.D} x {P.d} projection")
    if t.dtype not in ops.KERNEL_DTYPES:
        raise TypeError(f"{name}: got dtype {t.dtype}, expected torch.float32 or torch.float64")
    if t.device != P.device and not (t.device.type == P.device.type == "cuda" and P.device.index is None):
        raise ValueError(f"{name}: got a tensor on {t.device}, but the projection lives on "
                         f"{P.device}; use P.to({str(t.device)!r})")
    single = t.ndim == 1
    t2 = (t.unsqueeze(0) if single else t).contiguous()
    if grad:
        out = kernels.Product.apply(t2, P._operands(t2.dtype), transpose)
    else:
        with torch.no_grad():
            out = kernels.product(P._operands(t2.dtype), t2, transpose)
    if single:
        out = out.reshape(other)
    return back(out)


def _device_arg(device) -> torch.device:
    try:
        dev = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device: got {device!r}, expected a torch device such as 'cpu' or 'cuda'") from exc
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device: got {dev}, expected a CPU or CUDA device")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: got {dev}, but torch sees no CUDA device here")
    return dev


def _tensor_and_back(x: Any, name: str):
    """(tensor, back) where back(result) returns the result in x's kind (torch, numpy or CuPy)."""
    if isinstance(x, torch.Tensor):
        return x, lambda out: out
    if isinstance(x, np.ndarray):
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(f"{name}: got numpy dtype {x.dtype}, expected float32 or float64")
        # (not np.ascontiguousarray: it turns a 0-d array into shape (1,))
        c = x if x.flags.c_contiguous else x.copy(order="C")
        return torch.from_numpy(c), lambda out: out.detach().numpy()
    if type(x).__module__.startswith("cupy"):
        import cupy  # an optional extra; present if x is a CuPy array

        return torch.from_dlpack(x), lambda out: cupy.from_dlpack(out.detach())
    raise TypeError(f"{name}: got {_checks.describe(x)}, expected a torch tensor, numpy array or CuPy array")
