"""Progressive random and gradient walks (Malan & Engelbrecht 2014; Bosman, Engelbrecht & Helbig 2018/2019),
W walkers at once: every step evaluates all walkers in one `landscape.loss_and_grad` call.

    res = progressive_walk(L, 1000, steps=100, step_bound=0.1, bounds=(-1.0, 1.0))   # gradient walks
    res.loss, res.grad_norm        # (W, steps + 1): the loss-gradient cloud of Bosman et al. (2019) §II
    res = progressive_walk(L, starts, 100, 0.1, (-1.0, 1.0), gradient=False)        # random walks

The walk rules (Malan & Engelbrecht, "A progressive random walk algorithm for sampling continuous fitness
landscapes", CEC 2014, Algorithm 1; Bosman et al., "Loss surface modality of feed-forward neural network
architectures", 2019, §II, and Bosman et al., GECCO 2018, for the gradient walk):

* Start (an int W for `starts`): per walker a random starting-zone bit b_j per dimension; coordinate j is
  high_j - r_j when b_j = 1 and low_j + r_j when b_j = 0, with r_j ~ U(0, (high_j - low_j) / 2); then one
  dimension d ~ U{0..D-1} is put on its boundary (high_d if b_d = 1, else low_d).
* Random walk step: per dimension r_j ~ U(0, step_bound_j), moving down (-r_j) while b_j = 1 and up (+r_j)
  while b_j = 0.  A coordinate that would leave [low_j, high_j] is reflected by its excess
  (high_j - (x_j - high_j), or low_j + (low_j - x_j)) and its bit b_j flips, so the walk turns back.
  Explicit starts take b_j = 1 where the start is above the middle of the domain (they walk across it).
* Gradient walk step: the gradient g at the current point gives the mask b_j = 0 if g_j > 0 else 1, and
  the step is +r_j where b_j = 1 and -r_j where b_j = 0 (the sign of -g_j; a zero component steps up, as in
  Bosman's pgwalk optimizer), r_j ~ U(0, step_bound_j) as before.  Bosman's walks are unbounded
  (`bounds=None`, explicit starts); with bounds, a coordinate that would leave them is reflected by its
  excess as in the random walk (there is no persistent bit to flip: the next gradient decides).

Random numbers come from the counter-based generator of lscape.reference.rng, keyed by (seed, walker id,
step), so a walker's path depends only on (seed, its id): a batch of W walkers with ids first_walker,
..., first_walker + W - 1 walks exactly as W separate runs of one walker each, and a huge run can be split.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import _backend, _checks
from .._progress import ProgressArg, as_callback
from ..landscape import Landscape
from ..reference import rng

__all__ = ["WalkResult", "progressive_walk"]

_U32_SCALE = 2.0 ** -32

VectorLike = float | Sequence[float] | np.ndarray | torch.Tensor  # a real, or one value per dimension
Bounds = tuple[VectorLike, VectorLike] | None  # (low, high)


@dataclass
class WalkResult:
    """The samples of W walks of `steps` steps.

    loss, grad_norm: (W, steps + 1) float64, at the start and after every step (the l-g cloud's points);
    start, end: (W, D) first and last positions (the landscape's dtype and device);
    positions: (W, steps + 1, D) every position, when record_positions=True, else None;
    first_nonfinite: (W,) int64, the first sample index whose loss or gradient was not finite, -1 if none.
        A gradient walker stops there (its later positions repeat, its later loss and grad_norm are NaN);
        a random walker's path does not read the loss, so it walks on and records what it finds.
    """

    loss: torch.Tensor
    grad_norm: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor
    positions: torch.Tensor | None
    first_nonfinite: torch.Tensor
    gradient: bool
    step_bound: torch.Tensor  # (D,)
    seed: int
    first_walker: int
    # {name: (W, steps + 1) float64}: a Landscape.from_module(..., metrics=...)'s metrics at every sample,
    # from the same forward passes as the loss (a stopped walker's at its repeated position); {} otherwise
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def finite(self) -> torch.Tensor:
        """(W,) bool: walkers whose every loss and gradient were finite."""
        return self.first_nonfinite < 0


# ---- random numbers: (seed, walker id, tag) -> uniforms in (0, 1) ----------------------------------------
def _walker_keys(seed: int, first: int, W: int) -> np.ndarray:
    return rng.stream_key(seed, np.arange(first, first + W, dtype=np.uint64))


def _draws(keys: np.ndarray, tag: int, n: int) -> np.ndarray:
    """(W, n) uint32 draws of walker streams `keys` (W,) under `tag` (0: the start, s + 1: step s)."""
    with np.errstate(over="ignore"):
        k = rng.mix64(keys ^ rng.mix64(np.full(1, tag, dtype=np.uint64) + rng.GOLDEN64))
    return rng.draw32(k[:, None], np.arange(n, dtype=np.uint32))


_BLOCK = 1 << 14  # columns per block of _step_sizes: its temporaries stay in the core's cache
_M1, _M2 = np.uint32(0x21F0AAAD), np.uint32(0x735A2D97)


def _mix32_(x: np.ndarray, t: np.ndarray) -> None:
    """rng.mix32 in place on x (t: scratch of x's shape): the same bits, no temporaries."""
    for shift, mult in ((16, _M1), (15, _M2), (15, None)):
        np.right_shift(x, np.uint32(shift), out=t)
        np.bitwise_xor(x, t, out=x)
        if mult is not None:
            np.multiply(x, mult, out=x)


def _step_sizes(keys: np.ndarray, tag: int, bound: np.ndarray, counters: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out (W, D) = _uniform(_draws(keys, tag, D)).astype(out.dtype) * bound, the same bits, computed block
    by block in place (the unfused expression makes ~15 passes over (W, D) arrays, most of a walk step's
    time on a large net).  counters: (D,) uint32 arange(D) * GOLDEN32 (rng.draw32's counter term)."""
    with np.errstate(over="ignore"):
        k = rng.mix64(keys ^ rng.mix64(np.full(1, tag, dtype=np.uint64) + rng.GOLDEN64))
    lo = (k & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    hi = (k >> np.uint64(32)).astype(np.uint32)
    W, D = out.shape
    B = min(D, _BLOCK)
    R = max(1, _BLOCK // B)  # rows per block: many walkers of a small net go a block of rows at a time
    h, t, f = np.empty((R, B), np.uint32), np.empty((R, B), np.uint32), np.empty((R, B), np.float64)
    lo, hi = lo[:, None], hi[:, None]
    for w in range(0, W, R):
        m = min(R, W - w)
        for j in range(0, D, B):
            n = min(B, D - j)
            hv, tv, fv, ov = h[:m, :n], t[:m, :n], f[:m, :n], out[w:w + m, j:j + n]
            np.add(counters[j:j + n], lo[w:w + m], out=hv)
            _mix32_(hv, tv)
            np.bitwise_xor(hv, hi[w:w + m], out=hv)
            _mix32_(hv, tv)
            np.add(hv, 0.5, out=fv)  # _uniform: exact in float64, then one rounding to out's dtype
            np.multiply(fv, _U32_SCALE, out=fv)
            ov[...] = fv
            np.multiply(ov, bound[j:j + n], out=ov)
    return out


def _uniform(h: np.ndarray) -> np.ndarray:
    """uint32 draws -> float64 uniforms in (0, 1) (32 random bits; never 0 or 1)."""
    return (h.astype(np.float64) + 0.5) * _U32_SCALE


# ---- arguments -------------------------------------------------------------------------------------------
def _bounds_arg(bounds, D: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    if bounds is None:
        return None
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise TypeError(f"bounds: got {_checks.describe(bounds)}, expected (low, high): two reals or two "
                        f"({D},) vectors, or None")
    low = _checks.real_or_vector_arg("bounds[0] (low)", bounds[0], D, like)
    high = _checks.real_or_vector_arg("bounds[1] (high)", bounds[1], D, like)
    if not bool((low < high).all()):
        j = int(torch.nonzero(~(low < high))[0])
        raise ValueError(f"bounds: got low[{j}] = {float(low[j])} >= high[{j}] = {float(high[j])}, expected "
                         "low < high in every dimension")
    return low, high


# ---- the walk --------------------------------------------------------------------------------------------
def progressive_walk(landscape: Landscape, starts: torch.Tensor | np.ndarray | int, steps: int,
                     step_bound: VectorLike, bounds: Bounds = None, gradient: bool = True, seed: int = 0,
                     progress: ProgressArg = False, *, first_walker: int = 0,
                     record_positions: bool = False, first_step: int = 0) -> WalkResult:
    """W progressive gradient walks (gradient=True) or progressive random walks (gradient=False) at once.

    landscape: the Landscape to sample (dimension D).
    starts: (W, D) starting points inside `bounds`, or an int W: W random starts by the progressive random
        walk's starting-zone rule (needs `bounds`).
    steps: steps per walker (>= 0); each walker yields steps + 1 samples.
    step_bound: the largest step per dimension, a positive real or a (D,) vector (at most high - low).
    bounds: (low, high), each a real or a (D,) vector; walkers never leave [low, high].  None: unbounded
        (gradient walks from explicit starts only, as Bosman et al. ran them).
    gradient: the direction rule: the sign of -gradient (True) or the bit pattern of the random walk.
    seed, first_walker: walker w draws from stream (seed, first_walker + w).
    progress: True for a progress bar on stderr, or a callable (done, total) called after each step.
    record_positions: keep every position ((W, steps + 1, D): memory W * (steps + 1) * D values).
    first_step: the steps this walk already took (gradient walks): step s draws as step first_step + s, so
        a walk continued from its end (starts = res.end) draws exactly as one uninterrupted walk.

    Returns a WalkResult.  Every step is one landscape.loss_and_grad call on all W walkers.
    """
    a = _walk_args(landscape, starts, steps, step_bound, bounds, gradient, seed, first_walker, record_positions,
                   first_step)
    return _walk(landscape, a, as_callback(progress, "gradient walk" if gradient else "random walk"))


@dataclass
class _WalkArgs:
    """progressive_walk's arguments, checked: starts x (W, D) or None (random starts), the box, bounds."""
    D: int
    W: int
    like: torch.Tensor
    steps: int
    seed: int
    first_walker: int
    gradient: bool
    record_positions: bool
    box: tuple[torch.Tensor, torch.Tensor] | None
    bound: torch.Tensor
    x: torch.Tensor | None
    first_step: int = 0


def _walk_args(landscape, starts, steps, step_bound, bounds, gradient, seed, first_walker,
               record_positions, first_step=0) -> _WalkArgs:
    """Every argument of progressive_walk checked, with an error naming it, before any evaluation."""
    if not isinstance(landscape, Landscape):
        raise TypeError(f"landscape: got {_checks.describe(landscape)}, expected a lscape.Landscape")
    D = landscape.dim
    like = torch.empty(0, dtype=landscape.dtype, device=landscape.device)
    steps = _checks.int_arg("steps", steps, low=0)
    seed = _checks.int_arg("seed", seed, low=0, high=2**64 - 1)
    first_walker = _checks.int_arg("first_walker", first_walker, low=0, high=2**63)
    if not isinstance(gradient, bool):
        raise TypeError(f"gradient: got {_checks.describe(gradient)}, expected True (gradient walk) or False "
                        "(random walk)")
    if not isinstance(record_positions, bool):
        raise TypeError(f"record_positions: got {_checks.describe(record_positions)}, expected a bool")
    first_step = _checks.int_arg("first_step", first_step, low=0, high=2**63)
    if first_step and not gradient:  # its turn bits restart from the starts' halves: not a continuation
        raise ValueError(f"first_step: got {first_step} with gradient=False, expected 0: a random walk "
                         "cannot be continued (its direction bits are not carried from call to call)")
    box = _bounds_arg(bounds, D, like)
    if box is None and not gradient:
        raise ValueError("bounds: got None, expected (low, high): the random walk turns at the bounds")
    bound = _checks.real_or_vector_arg("step_bound", step_bound, D, like)
    if not bool((bound > 0).all()):
        raise ValueError(f"step_bound: got {_min_desc(bound)}, expected positive step bounds")
    if box is not None:
        width = box[1] - box[0]
        if not bool((bound <= width).all()):
            j = int(torch.nonzero(bound > width)[0])
            raise ValueError(f"step_bound: got {float(bound[j])} in dimension {j}, expected at most the width "
                             f"of bounds there ({float(width[j])}), so one reflection keeps a walker inside")
    x, W = _starts_arg(landscape, starts, box, first_walker)
    return _WalkArgs(D, W, like, steps, seed, first_walker, gradient, record_positions, box, bound, x, first_step)


def _starts_arg(landscape, starts, box, first_walker: int) -> tuple[torch.Tensor | None, int]:
    """(starts (W, D), W), or (None, W) for W random starts."""
    D = landscape.dim
    if isinstance(starts, numbers.Integral) and not isinstance(starts, bool):
        W = _checks.int_arg("starts", starts, low=1)
        if box is None:
            raise ValueError("bounds: got None, expected (low, high): random starts (an int for starts) are "
                             "drawn inside the bounds")
        if W + first_walker > 2**64:
            raise ValueError(f"first_walker: got {first_walker}, expected walker ids below 2**64")
        return None, W
    if isinstance(starts, bool) or not isinstance(starts, (torch.Tensor, np.ndarray, list, tuple)):
        raise TypeError(f"starts: got {_checks.describe(starts)}, expected a (W, {D}) tensor or an int W")
    x = landscape.check_points(starts, "starts").clone()
    if x.shape[0] == 0:
        raise ValueError(f"starts: got {_checks.describe(x)}, expected at least one walker")
    if not _all_finite(x):
        raise ValueError("starts: got non-finite values, expected finite starting points")
    if box is not None and not bool(((x >= box[0]) & (x <= box[1])).all()):
        w, j = (int(i) for i in torch.nonzero((x < box[0]) | (x > box[1]))[0])
        raise ValueError(f"starts: got starts[{w}, {j}] = {float(x[w, j])}, expected every start inside "
                         f"bounds [{float(box[0][j])}, {float(box[1][j])}]")
    return x, x.shape[0]


class _Arrays:
    """Where a walk's per-step arithmetic runs.  The step is a few elementwise passes over (W, D).  On the
    CPU they run in numpy: at these sizes waking torch's intra-op pool costs more than the work (100x more on
    a busy 2-core machine).  On a GPU they run in torch.  Both are IEEE elementwise operations: the same bits."""

    def __init__(self, like: torch.Tensor) -> None:
        self.cpu = _numpy_steps(like.device)
        self.xp = np if self.cpu else torch
        self.device = like.device

    def arr(self, t: torch.Tensor):
        """A tensor as this side's array (a numpy view on the CPU)."""
        return t.numpy() if self.cpu else t

    def tensor(self, a) -> torch.Tensor:
        """This side's array as a tensor (sharing its memory)."""
        return torch.from_numpy(a) if self.cpu else a

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype):
        return np.empty(shape, dtype=_np_dtype(dtype)) if self.cpu else torch.empty(shape, dtype=dtype,
                                                                                     device=self.device)


class _Samples:
    """What a walk records at each of its steps + 1 samples, and which walkers have stopped."""

    def __init__(self, sp: _Arrays, a: _WalkArgs, names: tuple[str, ...]) -> None:
        W, n = a.W, a.steps + 1
        self.sp = sp
        self.loss = sp.empty((W, n), torch.float64)
        self.gnorm = sp.empty((W, n), torch.float64)
        self.positions = sp.empty((W, n, a.D), a.like.dtype) if a.record_positions else None
        self.first_bad = np.full((W,), -1, dtype=np.int64) if sp.cpu else torch.full((W,), -1, device=sp.device)
        self.stopped = np.zeros(W, dtype=np.bool_) if sp.cpu else torch.zeros(W, dtype=torch.bool).to(sp.device)
        self.names = names  # the landscape's metrics, in the order it records them
        self.metrics = {k: torch.empty((W, n), dtype=torch.float64) for k in names}

    def add(self, s: int, x, loss, grad):
        """Record sample s (positions x (W, D), loss (W,), grad (W, D)); returns (W,) bool: its loss or
        gradient is not finite.  A stopped walker's loss and gradient norm are NaN."""
        xp = self.sp.xp
        gnorm = _row_norms(grad, xp)
        loss64 = loss.astype(np.float64) if self.sp.cpu else loss.to(torch.float64)
        bad = ~(xp.isfinite(loss64) & xp.isfinite(gnorm))
        if bool(bad.any()):
            self.first_bad = xp.where(bad & (self.first_bad < 0), s, self.first_bad)
        if bool(self.stopped.any()):
            loss64 = xp.where(self.stopped, math.nan, loss64)
            gnorm = xp.where(self.stopped, math.nan, gnorm)
        self.loss[:, s] = loss64
        self.gnorm[:, s] = gnorm
        if self.positions is not None:
            self.positions[:, s] = x
        return bad


def _evaluate(landscape: Landscape, x: torch.Tensor, names: tuple[str, ...], metrics: dict[str, torch.Tensor],
              s: int):
    """landscape.loss_and_grad(x), the one batched evaluation of step s; the landscape's metrics of the same
    forward passes go into metrics[name][:, s], for each of the landscape's metric `names`."""
    if not names:
        return landscape.loss_and_grad(x)
    with landscape.recording_metrics() as rec:
        loss, grad = landscape.loss_and_grad(x)
    got = torch.cat(rec).to(device="cpu", dtype=torch.float64)
    for c, k in enumerate(names):
        metrics[k][:, s] = got[:, c]
    return loss, grad


def _walk(landscape: Landscape, a: _WalkArgs, callback) -> WalkResult:
    """The walk itself: one landscape.loss_and_grad call on all W walkers per step."""
    keys = _walker_keys(a.seed, a.first_walker, a.W)
    if a.x is None:
        x, up = _random_starts(keys, a.box, a.D, a.like)
    else:
        x = a.x
        up = None if a.box is None else x <= 0.5 * (a.box[0] + a.box[1])  # b_j = 0 (walk up) in the lower half
    start = x.clone()
    sp = _Arrays(a.like)
    x, bound = sp.arr(x), sp.arr(a.bound)
    low, high = (sp.arr(b) for b in a.box) if a.box is not None else (None, None)
    up = sp.arr(up) if up is not None else None
    rec = _Samples(sp, a, tuple(getattr(landscape, "metric_names", ())))
    step = _stepper(sp, a, keys, bound, x.dtype)
    for s in range(a.steps + 1):
        loss, grad = _evaluate(landscape, sp.tensor(x), rec.names, rec.metrics, s)
        loss, grad = sp.arr(loss), sp.arr(grad)
        bad = rec.add(s, x, loss, grad)
        if s == a.steps:
            break
        if a.gradient:
            rec.stopped |= bad  # no direction from a non-finite gradient: this walker stops, the others go on
        x = step(a.first_step + s + 1, x, grad, up, rec.stopped)  # tag: continued walks draw as one walk
        if low is not None:
            out = (x > high) | (x < low)
            if bool(out.any()):  # most steps stay inside: skip the reflection passes then
                x = _reflect(x, low, high, sp.xp)
                if not a.gradient:
                    up = up ^ out  # turn back where the walker was reflected
        if callback is not None:
            callback(s + 1, a.steps)
    return WalkResult(loss=sp.tensor(rec.loss), grad_norm=sp.tensor(rec.gnorm), start=start, end=sp.tensor(x),
                      positions=None if rec.positions is None else sp.tensor(rec.positions),
                      first_nonfinite=sp.tensor(rec.first_bad), gradient=a.gradient, step_bound=sp.tensor(bound),
                      seed=a.seed, first_walker=a.first_walker, metrics=rec.metrics)


def _stepper(sp: _Arrays, a: _WalkArgs, keys: np.ndarray, bound, dtype) -> Callable:
    """step(tag, x, grad, up, stopped) -> the positions after one step (before any reflection): the fused C++
    step (walk.h) where the backend has one for this dtype, else elementwise passes with the same bits.
    (Other dtypes keep the passes even under a forced backend: the step is not the op the user forced.)"""
    like, gradient = a.like, a.gradient
    fused = (_backend.kernel("walk_step", like.device, like.dtype)
             if sp.cpu and like.dtype in (torch.float32, torch.float64) else None)
    if fused is not None:
        return lambda tag, x, grad, up, stopped: _fused_step(
            fused, keys, tag, bound, grad if gradient else None, None if gradient else up,
            stopped if gradient else None, x)
    if sp.cpu:  # the step sizes' buffer and rng.draw32's counter term, reused step after step
        r_buf = np.empty((a.W, a.D), dtype=dtype)
        with np.errstate(over="ignore"):
            counters = np.arange(a.D, dtype=np.uint32) * rng.GOLDEN32

    def passes(tag, x, grad, up, stopped):
        # r <= bound: u < 1 (it may round up to 1 in float32), bound is exact in this dtype
        if sp.cpu:
            r = _step_sizes(keys, tag, bound, counters, r_buf)
        else:
            u = torch.from_numpy(_uniform(_draws(keys, tag, a.D))).to(dtype=like.dtype, device=like.device)
            r = u * bound
        if not gradient:
            return x + sp.xp.where(up, r, -r)  # the bit pattern: up while b_j = 0, down while b_j = 1
        if sp.cpu:  # r > 0, so -r where g_j > 0 and r elsewhere is r with the sign of -g_j, except at g_j = +0
            step = np.copysign(r, -grad, out=r)
            zero = grad == 0
            if zero.any():
                step[zero] = np.abs(step[zero])
        else:
            step = torch.where(grad > 0, -r, r)  # Bosman's mask: down where g_j > 0, up where g_j <= 0
        if bool(stopped.any()):
            step[stopped] = 0
        return x + step

    return passes


def _fused_step(k: _backend.Kernel, keys: np.ndarray, tag: int, bound: np.ndarray, grad: np.ndarray | None,
                up: np.ndarray | None, stopped: np.ndarray | None, x: np.ndarray) -> np.ndarray:
    """_walk's step `tag - 1` as one C++ pass (csrc/include/lscape/walk.h), bit for bit the numpy passes:
    x (W, D); grad (W, D) (gradient walks) or up (W, D) bool (random walks); stopped (W,) bool or None.
    Returns the new (W, D) positions (before any reflection)."""
    W, D = x.shape
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    bound = np.ascontiguousarray(bound, dtype=x.dtype)
    grad = None if grad is None else np.ascontiguousarray(grad, dtype=x.dtype)
    up = None if up is None else np.ascontiguousarray(up, dtype=np.bool_)
    stop = None if stopped is None or not stopped.any() else np.ascontiguousarray(stopped, dtype=np.bool_)
    keys = np.ascontiguousarray(keys, dtype=np.uint64)

    def ptr(a):
        return 0 if a is None else a.ctypes.data

    k.ext.walk_step(W, D, ptr(keys), tag, ptr(bound), ptr(grad), ptr(up), ptr(stop), ptr(x), ptr(out),
                    x.dtype == np.float64, k.tail)
    return out


def _random_starts(keys: np.ndarray, box: tuple[torch.Tensor, torch.Tensor], D: int,
                   like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Malan & Engelbrecht's starting zones: (starts (W, D), up (W, D) bool: the bit b_j = 0)."""
    h = _draws(keys, 0, 2 * D + 1)  # counters [0, D): r_j; [D, 2D): zone bits; 2D: the boundary dimension
    low, high = (b.to(torch.float64).cpu().numpy() for b in box)
    r = _uniform(h[:, :D]) * (0.5 * (high - low))
    zone = (h[:, D:2 * D] >> np.uint32(31)).astype(bool)  # b_j = 1: start in the upper half, walk down
    x = np.where(zone, high - r, low + r)
    edge = np.minimum((_uniform(h[:, 2 * D]) * D).astype(np.int64), D - 1)
    rows = np.arange(len(keys))
    x[rows, edge] = np.where(zone[rows, edge], high[edge], low[edge])
    xt = torch.from_numpy(x).to(dtype=like.dtype, device=like.device)
    xt = torch.minimum(torch.maximum(xt, box[0]), box[1])  # guards the cast's rounding only
    return xt, torch.from_numpy(~zone).to(like.device)


def _reflect(x, low, high, xp):
    """Reflect the coordinates outside [low, high] by their excess: high - (x - high) or low + (low - x)."""
    x = xp.where(x > high, 2 * high - x, xp.where(x < low, 2 * low - x, x))
    # step_bound <= high - low puts the reflection inside in exact arithmetic; the clamp absorbs rounding
    return xp.minimum(xp.maximum(x, low), high)


def _row_norms(grad, xp):
    """(B,) float64 Euclidean norms of the rows of grad.  Rows whose norm overflows the gradient's dtype
    (a finite float32 gradient above ~1e19) are redone in float64: only a non-finite entry gives a
    non-finite norm."""
    if xp is np:
        n = np.linalg.norm(grad, axis=1).astype(np.float64)
        big = ~np.isfinite(n)
        if big.any():
            n[big] = np.linalg.norm(grad[big].astype(np.float64), axis=1)
        return n
    n = torch.linalg.vector_norm(grad, dim=1).to(torch.float64)
    big = ~torch.isfinite(n)
    if bool(big.any()):
        n[big] = torch.linalg.vector_norm(grad[big].to(torch.float64), dim=1)
    return n


def _all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of t is finite; numpy's test on CPU float tensors (torch's takes ~15x longer on
    one thread: a third of a walk step on a large net)."""
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64):
        return bool(np.isfinite(t.numpy()).all())
    return bool(torch.isfinite(t).all())


def _numpy_steps(device: torch.device) -> bool:
    """Whether the step arithmetic runs in numpy (CPU landscapes) or in torch (other devices)."""
    return device.type == "cpu"


def _np_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty(0, dtype=dtype).numpy().dtype


def _min_desc(t: torch.Tensor) -> str:
    return f"a smallest value of {float(t.min())}"
