"""lscape.surface: a 1-D or 2-D loss surface of a torch module around a centre, along two directions,
with loss, accuracy and custom metrics on train and test data in the same forward passes."""
from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from . import _checks
from ._affine import AffineCache, NotCached, input_layers
from ._batched import BatchedForward, Unsupported
from ._fastops import fast_loss
from ._flat import FlatLayout
from ._modeleval import FastForward, forward_cost
from ._modelio import Batch, Batches, Objective
from ._moduleloss import BN_MODES, recompute_bn
from ._runlock import locks_file
from .directions import Directions, random_directions
from .executor import ExecutorLost, get_executor
from .surface_io import DamagedSurfaceFile, read_surface, write_surface, write_vtp

__all__ = ["Surface", "surface"]



@dataclass
class Surface:
    """x (nx,), y (ny,) or None; values {name: (nx,) or (nx, ny)} with value[i, j] at (x[i], y[j]), NaN
    where not computed; done: bool, same shape; directions (k, D); center (D,); info: provenance;
    trajectory (T, 2) or None: a training run on the plane (PCA directions); points (n, 2) or None: the
    models the plane passes through (plane_through).  In a notebook it displays as lscape.plot.interactive's
    3-D surface and contour (with plotly installed)."""
    x: np.ndarray
    y: np.ndarray | None
    values: dict[str, np.ndarray]
    done: np.ndarray
    directions: np.ndarray
    center: np.ndarray
    info: dict = field(default_factory=dict)
    trajectory: np.ndarray | None = None
    points: np.ndarray | None = None

    @property
    def ndim(self) -> int:
        """1 for a curve (y is None), 2 for a plane."""
        return 1 if self.y is None else 2

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[name]

    def save(self, path: str) -> None:
        """.h5 (Goldstein's names, -1 where not computed) or .npz; atomic."""
        write_surface(path, self.x, self.y, self.values, self.done, self.directions, self.center,
                      self.info, self.trajectory, points=self.points)

    @classmethod
    def load(cls, path: str) -> Surface:
        """A Surface read back from a .h5 or .npz file that Surface.save (or lscape.surface's file=) wrote."""
        return cls(**read_surface(path))

    def to_vtp(self, path: str, name: str = "train_loss", *, log: bool = False, zmax: float | None = None) -> None:
        """ParaView export of a 2-D surface (Goldstein's h52vtp.py: log scale, z cap)."""
        if self.ndim != 2:
            raise ValueError("to_vtp: expected a 2-D surface")
        write_vtp(path, self.x, self.y, self.values[name], log=log, zmax=zmax)

    def _repr_html_(self) -> str | None:
        """Jupyter's rich display: the interactive page of the first loss (None, so the text repr is shown,
        without plotly or before any cell is computed)."""
        from ._interactive import fragment
        return fragment(self)


# ---- arguments ----------------------------------------------------------------------------------------
def _axis(name: str, a, span: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    if isinstance(a, (int, np.integer)) and not isinstance(a, bool):
        if a < 2:
            raise ValueError(f"{name}: got {a} points, expected at least 2")
        return np.linspace(span[0], span[1], int(a))
    try:
        arr = np.array(a, dtype=np.float64)  # a copy: x and y never share the caller's array or each other
    except (TypeError, ValueError):
        raise TypeError(f"{name}: got {a!r}, expected an int >= 2 or a 1-D array of >= 2 finite coordinates") from None
    if arr.ndim != 1 or arr.shape[0] < 2 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: got {a!r}, expected an int >= 2 or a 1-D array of >= 2 finite coordinates")
    return arr


# an int grid around a trajectory or points extends past their extent by this fraction of it on each side
FRAME_MARGIN = 0.25


def _frame(marks: np.ndarray) -> list[tuple[float, float]]:
    """(lo, hi) per axis covering the marks (m, 2) and the centre (0, 0), with FRAME_MARGIN on each side;
    an axis along which they do not spread gets the other axis's span."""
    pts = np.vstack([marks, np.zeros((1, 2))])
    lo, hi = pts.min(0), pts.max(0)
    span = hi - lo
    span = np.where(span > 0, span, span.max() if span.max() > 0 else 1.0)
    return [(float(a - FRAME_MARGIN * s), float(b + FRAME_MARGIN * s)) for a, b, s in zip(lo, hi, span, strict=True)]


def _grid(grid, k: int, marks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The grid's axes; an int (or an int of a pair) spans [-1, 1], or the frame of `marks` (m, 2) when the
    directions carry a trajectory or points.  Coordinates given as arrays are kept as they are."""
    if k == 1:
        return _axis("grid", grid), None
    frame = [(-1.0, 1.0)] * 2 if marks is None or len(marks) == 0 else _frame(marks)
    pair = isinstance(grid, tuple) and len(grid) == 2 or \
        isinstance(grid, list) and len(grid) == 2 and not np.isscalar(grid[0])
    parts = grid if pair else (grid, grid)
    return tuple(_axis(f"grid[{i}]" if pair else "grid", g, frame[i]) for i, g in enumerate(parts))


def _directions(directions, model: nn.Module, D: int) -> Directions:
    if directions is None:
        raise TypeError("directions: got None, expected 'filter', 'layer', 'random', a Directions or a (k, D) array")
    if isinstance(directions, str):
        if directions not in ("filter", "layer", "random"):
            raise ValueError(f"directions: got {directions!r}, expected 'filter', 'layer', 'random', a "
                             "Directions or a (k, D) array")
        return random_directions(model, 2, norm="layer" if directions == "layer" else "filter")
    if not isinstance(directions, Directions):
        if isinstance(directions, (list, tuple)):
            directions = [torch.as_tensor(d).detach().cpu().double().reshape(-1).numpy() for d in directions]
        t = _checks.as_tensor("directions", directions)
        expected = f"a finite floating (k, {D}) array, k = 1 or 2 (D: the model's parameter count)"
        if t.ndim not in (1, 2) or not t.is_floating_point() or t.numel() == 0:
            raise ValueError(f"directions: got {_checks.describe(t)}, expected {expected}")
        _checks.finite("directions", t, expected)
        vec = np.atleast_2d(t.double().cpu().numpy())
        if vec.shape[0] not in (1, 2) or vec.shape[1] != D:
            raise ValueError(f"directions: got shape {vec.shape}, expected {expected}")
        directions = Directions(vec, {"kind": "given"})
    if directions.vectors.ndim != 2 or directions.vectors.shape[0] not in (1, 2) or \
            directions.vectors.shape[1] != D:
        raise ValueError(f"directions: got shape {directions.vectors.shape}, expected (1, {D}) or (2, {D}) "
                         "(the model's parameter count)")
    return directions


def _batches(name: str, data, max_batches: int | None, own_loss: bool = False) -> Batches | None:
    """A re-iterable of batches (lscape._modelio.Batches), streamed (never concatenated), or None."""
    return None if data is None else Batches(data, name, max_batches, own_loss=own_loss)


# ---- evaluation ---------------------------------------------------------------------------------------
@dataclass
class _Shared:
    """Everything a row chunk needs; picklable when model, loss_fn, metrics and data are."""
    model: nn.Module
    loss_fn: Callable | None
    metrics: dict
    train: object
    test: object
    affine: tuple[str, ...]  # the input layers lscape._affine caches (found once, on the driver); () = off
    bn: str
    center: np.ndarray
    directions: np.ndarray
    x: np.ndarray
    y: np.ndarray | None
    todo: np.ndarray
    compile: bool | str = False  # True, False or "auto" (surface's compile=)
    shift: bool = False  # the model's own loss is a causal LM's (lscape._modelio.Objective.check)

    def __getstate__(self) -> dict:
        # a process's evaluation state (_state) stays in that process: Ray sends the surface's inputs only
        return {k: v for k, v in self.__dict__.items() if k != "_state"}


def _plain(forward: FastForward, data):
    """(outputs, batch) of every streamed batch, at the parameters the model holds."""
    with torch.no_grad():
        for b in data:
            yield forward(None, b), b


def _values(out, b: Batch, objective: Objective, metrics: dict) -> dict:
    """{name: scalar} of one batch's outputs: loss, accuracy (classification or tokens: (N, ..., C) logits,
    (N, ...) integer targets, lscape._modelio.Objective.accuracy) and the custom metrics."""
    vals = {"loss": objective.loss(out, b)}
    acc = objective.accuracy(out, b.targets)
    if acc is not None:
        vals["acc"] = acc
    for name, fn in metrics.items():
        vals[name] = fn(out, b.targets)
    return vals


def _values_many(st: _State, out: torch.Tensor, b: Batch, metrics: dict) -> dict[str, np.ndarray]:
    """_values of each point's outputs out[k] (out: (B, N, ...)) as {name: (B,) float64}: one vmapped call,
    or point by point where the loss or a metric cannot run under torch.func.vmap (a metric calling .item()
    or returning a float); that is remembered in st."""
    if st.vmap_values:
        try:
            vals = torch.func.vmap(lambda o: _values(o, b, st.objective, metrics))(out)
            return {k: v.detach().double().cpu().numpy() for k, v in vals.items()}
        except Exception:  # noqa: BLE001 - any refusal of vmap: the same functions point by point below
            st.vmap_values = False
    rows = [_values(o, b, st.objective, metrics) for o in out]
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


def _evaluate(outputs, objective: Objective, metrics: dict, prefix: str, many: _State | None = None) -> dict:
    """Means of _values over one pass of (outputs, batch), each batch weighted by the targets it counts:
    floats, or with `many` (outputs with a leading point axis) (B,) arrays."""
    sums: dict = {}
    total = 0
    with torch.no_grad():
        for out, b in outputs:
            n = objective.count(b)
            total += n
            if many is None:
                vals = {k: float(v) for k, v in _values(out, b, objective, metrics).items()}
            else:
                vals = _values_many(many, out, b, metrics)
            for k, v in vals.items():
                sums[k] = sums.get(k, 0.0) + v * n
    return {f"{prefix}_{k}": v / total for k, v in sums.items()}


def _joined(sh: _Shared) -> tuple[torch.Tensor, int] | None:
    """(train and test inputs as one tensor, the train count) when both are one batch of one input tensor
    of the same kind and BatchNorm runs in eval mode: the two passes then run as one, half the calls per
    point (what costs on small networks).  In eval mode a module's output on a sample depends on that
    sample alone, so the values equal the two passes' to float rounding."""
    if sh.bn != "eval" or sh.test is None:
        return None
    a, b = sh.train.single(), sh.test.single()
    if a is None or b is None or a.tensor is None or b.tensor is None or a.labels_kw or b.labels_kw:
        return None
    X, Xt = a.tensor, b.tensor
    same = X.shape[1:] == Xt.shape[1:] and X.dtype == Xt.dtype and X.device == Xt.device
    return (torch.cat([X, Xt]), X.shape[0]) if same and X.shape[0] > 0 and Xt.shape[0] > 0 else None


def _split(out: torch.Tensor, sh: _Shared, n: int, dim: int = 0):
    """The joined pass's outputs as the train and test passes' (outputs, batch); dim: the samples' axis (1
    with a leading point axis)."""
    return iter([(out.narrow(dim, 0, n), sh.train.single())]), \
        iter([(out.narrow(dim, n, out.shape[dim] - n), sh.test.single())])


# A row's points run `batch` at a time through one forward pass (lscape._batched.BatchedForward: the
# points' convolutions side by side as one wider or grouped convolution, their linear layers as one product)
# when one point's forward pass is small: below BATCH_MAX_MACS multiply-adds a point, per-call overhead
# (Python, dispatch, kernels too narrow for the vector units) costs as much as the arithmetic; above it
# (ResNet-20: 2e10 a point) points go one by one, in place and channels-last.  batch: as many points as
# keep one call's activations under BATCH_BYTES.
BATCH_MAX_MACS = 1e8
BATCH_BYTES = 1 << 26
_PROBE_ROWS = 8  # input rows of the pass that counts a point's work (lscape._modeleval.forward_cost)


@dataclass
class _State:
    """What a process evaluating a surface's rows builds once per surface (not once per row): the model's
    copy and its traced FastForward, the affine caches, the joined inputs, the points per call."""
    model: nn.Module
    layout: FlatLayout
    objective: Objective
    affine: tuple | None
    fast: FastForward
    forward: Callable  # fast, or its compiled form (_compiled): what _point evaluates with
    batched: BatchedForward | None
    joined: tuple[torch.Tensor, int] | None
    buffers: dict
    batch: int
    vmap_values: bool = True  # whether loss and metrics run under vmap (_values_many)


def _batch_size(sh: _Shared, model: nn.Module, affine, batched: BatchedForward | None) -> int:
    """Points per call (BATCH_MAX_MACS, BATCH_BYTES); 1 (one by one) for 1-D surfaces, the affine cache,
    bn='recompute' (buffers updated at each point) and models BatchedForward does not run (its reason)."""
    if sh.y is None or affine or sh.bn != "eval" or batched is None or not batched.supported:
        return 1
    X = next(iter(sh.train)).tensor
    if X is None:
        return 1
    try:
        macs, elems = forward_cost(model, X[:_PROBE_ROWS])
    except Exception:  # noqa: BLE001 - a model this pass cannot run is evaluated one point at a time
        return 1
    passes = [b for b in (sh.train, sh.test) if b is not None]
    samples = sum(b.samples() for b in passes)
    rows = max(batch.rows for b in passes for batch in b)
    per_call = max(elems, 1.0) * rows * X.element_size()
    if macs * samples >= BATCH_MAX_MACS:
        return 1
    return int(max(1, min(len(sh.y), BATCH_BYTES // per_call)))


# compile="auto" compiles where a surface's work (points to do x multiply-adds a point) passes this: the
# break-even measured by bench/compile_break_even.py (docs/performance.md, "Compiled evaluation"): ResNet-20
# on 512 images (2.1e10 a point) 78 s of compilation against 8 ms saved a point (1.7%): 9,400 points, 2e14;
# the digits CNN one point at a time 30 s against 0.4 ms: 76,000 points, 7e11 (and it runs batched, faster).
COMPILE_MIN_MACS = 2e14


def _compile_pays(sh: _Shared, model: nn.Module) -> bool:
    """Whether compile="auto" compiles this surface (COMPILE_MIN_MACS)."""
    first = next(iter(sh.train))
    try:
        macs, _ = forward_cost(model, first.take(0, _PROBE_ROWS))
    except Exception:  # noqa: BLE001 - a model this pass cannot run is not compiled either
        return False
    samples = sum(b.samples() for b in (sh.train, sh.test) if b is not None)
    return float(sh.todo.sum()) * macs * samples >= COMPILE_MIN_MACS


class _Compiled:
    """FastForward's call at the model's own parameters, f(None, X), through torch.compile (compiled on
    the first call, again for a new input shape) of its out-of-place folded graph (inductor fuses the
    ReLUs itself; the oneDNN conv+ReLU op of the in-place graph has a fake kernel that misstates
    channels-last strides); other calls, and any where compilation fails (no C++ compiler, an op inductor
    refuses: a warning says so once), run uncompiled."""

    def __init__(self, fast: FastForward) -> None:
        self.fast = fast

        def run(X: torch.Tensor) -> torch.Tensor:
            if fast.channels_last and X.dim() == 4:
                X = X.contiguous(memory_format=torch.channels_last)
            return (fast.graph_module if fast.active else fast.model)(X)

        self.fn = torch.compile(run, dynamic=False)
        self.failed = False

    def __call__(self, params, X, buffers=None):
        """X: a tensor or an lscape._modelio.Batch (one whose inputs are not one tensor runs uncompiled)."""
        x = X if isinstance(X, torch.Tensor) else X.tensor if not X.labels_kw else None
        if params is not None or buffers is not None or self.failed or x is None:
            return self.fast(params, X, buffers)
        try:
            return self.fn(x)
        except Exception as exc:  # noqa: BLE001 - compilation is an optimisation: plain evaluation instead
            self.failed = True
            warnings.warn(f"compile: torch.compile failed ({type(exc).__name__}: {str(exc)[:200]}); evaluating "
                          "uncompiled", RuntimeWarning, stacklevel=2)
            return self.fast(params, X, buffers)


def _state(sh: _Shared) -> _State:
    """This process's _State of the surface sh, built on the first row it evaluates."""
    st = sh.__dict__.get("_state")
    if st is not None:
        return st
    # sh.model is already this process's own copy (lscape.surface copies the caller's; a Ray worker unpickles
    # its own): a second copy cost a GPT-2 small's surface 0.5 GB and a second
    model = sh.model
    layout = FlatLayout.of(model)
    p0 = next(model.parameters())
    model.eval()
    affine = _affine_caches(model, layout, torch.as_tensor(sh.center, dtype=p0.dtype),
                            torch.as_tensor(sh.directions, dtype=p0.dtype), sh)
    # built after model.eval(): with bn='recompute' the BatchNorms go through train mode at each point,
    # and FastForward then evaluates plainly while they are in it
    fast = FastForward(model, exclude=sh.affine if affine else ())
    # the faster cross-entropy, here on the worker's copy (Ray pickles sh).  Not _fastops.narrow_linears:
    # on the benchmark's CNN surface it made the whole pass slower (0.87 s against 0.60 s, 21 x 21 grid)
    # BatchedForward traces the model (torch.fx): only where it could run, on inputs that are one tensor
    one_tensor = next(iter(sh.train)).tensor is not None
    batched = None if affine or sh.bn != "eval" or sh.y is None or sh.compile is True or not one_tensor \
        else BatchedForward(fast)
    objective = Objective(None if sh.loss_fn is None else fast_loss(sh.loss_fn), sh.shift)
    st = _State(model, layout, objective, affine, fast, fast, batched, None if affine else _joined(sh),
                dict(model.named_buffers()), _batch_size(sh, model, affine, batched))
    if sh.compile is True or sh.compile == "auto" and st.batch == 1 and not affine and _compile_pays(sh, model):
        st.forward = _Compiled(fast)
    sh.__dict__["_state"] = st
    return st


def _point(st: _State, theta: torch.Tensor, sh: _Shared, coeffs) -> dict:
    """All metrics at theta, one point: the affine caches (st.affine) where they apply, else st.fast
    (the model's forward with BatchNorm folded, lscape._modeleval; plain where it does not apply) on the
    joined train and test inputs (_joined) or on each pass."""
    st.layout.load(st.model, theta)
    if sh.bn == "recompute":
        # one pass over the training data in train mode with cumulative averages (momentum None), as
        # torch.optim.swa_utils.update_bn does
        fresh = recompute_bn(st.model, dict(st.model.named_parameters()), dict(st.model.named_buffers()), sh.train)
        with torch.no_grad():
            for k, v in st.model.named_buffers():
                v.copy_(fresh[k])
    st.model.eval()
    affine, fast, obj = st.affine, st.forward, st.objective
    if st.joined is not None:
        with torch.no_grad():
            train, test = _split(fast(None, st.joined[0]), sh, st.joined[1])
        return {**_evaluate(train, obj, sh.metrics, "train"), **_evaluate(test, obj, sh.metrics, "test")}
    train = affine[0].outputs(coeffs, forward=fast) if affine else _plain(fast, sh.train)
    out = _evaluate(train, obj, sh.metrics, "train")
    if sh.test is not None:
        test = affine[1].outputs(coeffs, forward=fast) if affine else _plain(fast, sh.test)
        out.update(_evaluate(test, obj, sh.metrics, "test"))
    return out


def _points(st: _State, thetas: torch.Tensor, sh: _Shared) -> list[dict] | None:
    """All metrics at each of the points thetas (B, D), one BatchedForward call per batch of data; None
    where it refuses a shape at run time (lscape._batched.Unsupported, or an op's RuntimeError): the caller
    then evaluates them one by one, which raises any error that is the data's or the model's."""
    params = st.layout.split(thetas)

    def outputs(X: torch.Tensor | None) -> torch.Tensor:  # (B, N, ...)
        if X is None:
            raise Unsupported("inputs other than one tensor")
        return st.batched(params, X, st.buffers)

    def passes(data):
        return ((outputs(b.tensor), b) for b in data)

    try:
        with torch.no_grad():
            if st.joined is not None:
                train, test = _split(outputs(st.joined[0]), sh, st.joined[1], dim=1)
            else:
                train, test = passes(sh.train), None if sh.test is None else passes(sh.test)
            vals = _evaluate(train, st.objective, sh.metrics, "train", many=st)
            if test is not None:
                vals.update(_evaluate(test, st.objective, sh.metrics, "test", many=st))
    except (Unsupported, RuntimeError):  # a shape its rules refuse: one by one, which raises a real error
        return None
    return [{k: float(v[b]) for k, v in vals.items()} for b in range(thetas.shape[0])]


def _affine_caches(model, layout, center, dirs, sh: _Shared):
    """First-layer caches for train and test data when the affine trick applies (bn='eval'), else None."""
    if not sh.affine:
        return None
    try:
        return tuple(AffineCache(model, layout, sh.affine, center, dirs, d) if d is not None else None
                     for d in (sh.train, sh.test))
    except (MemoryError, NotCached):
        return None


def _eval_row(i: int, sh: _Shared) -> dict[int, dict[str, float]]:
    """Row i of the grid: {j: {metric: value}} for the cells still to do (j = 0 for a 1-D surface)."""
    st = _state(sh)
    p0 = next(st.model.parameters())
    center = torch.as_tensor(sh.center, dtype=torch.float64)
    dirs = torch.as_tensor(sh.directions, dtype=torch.float64)
    ys = [None] if sh.y is None else list(sh.y)
    cells = [j for j in range(len(ys)) if (sh.todo[i] if sh.y is None else sh.todo[i, j])]

    def theta(j: int) -> torch.Tensor:
        # float64, then the model's dtype; one temporary, updated in place: at GPT-2 small's D = 124 M the
        # out-of-place sum's five passes over float64 vectors took 1.3 s a point, as long as its forward pass
        t = torch.add(center, dirs[0], alpha=float(sh.x[i]))
        if ys[j] is not None:
            t.add_(dirs[1], alpha=float(ys[j]))
        return t.to(dtype=p0.dtype, device=p0.device)

    out: dict[int, dict[str, float]] = {}
    k = 0
    while k < len(cells):
        size = -(-(len(cells) - k) // -(-(len(cells) - k) // st.batch))  # equal chunks: 41 = 11 + 10 + 10 + 10
        chunk = cells[k:k + size]
        if len(chunk) > 1:
            got = _points(st, torch.stack([theta(j) for j in chunk]), sh)
            if got is not None:
                out.update(zip(chunk, got, strict=True))
                k += len(chunk)
                continue
            st.batch = 1  # BatchedForward refused a shape: one point at a time from here on
        j = cells[k]
        coeffs = (float(sh.x[i]),) if ys[j] is None else (float(sh.x[i]), float(ys[j]))
        out[j] = _point(st, theta(j), sh, coeffs)
        k += 1
    return out


def _resume(file, x, y, center, dirs, overwrite: bool) -> Surface | None:
    """The surface already in `file` when its grid, centre and directions match ours, else an error
    (None: no file, or overwrite)."""
    if file is None or overwrite or not os.path.exists(file):
        return None
    try:
        old = Surface.load(file)
    except DamagedSurfaceFile as exc:
        raise DamagedSurfaceFile(f"{exc}; pass overwrite=True to compute the surface afresh into it, or a new "
                                 "path") from None
    same = old.x.shape == x.shape and np.allclose(old.x, x) and (old.y is None) == (y is None) and \
        (y is None or old.y.shape == y.shape and np.allclose(old.y, y))
    same = same and old.center is not None and np.allclose(old.center, center) and \
        old.directions is not None and old.directions.shape == dirs.shape and np.allclose(old.directions, dirs)
    if not same:
        raise ValueError(f"file: {file!r} holds a different surface (grid, centre or directions), expected "
                         "the same one to resume, a new path, or overwrite=True")
    return old


@locks_file("file")  # one writer per surface file: a second live process is refused
def surface(model: nn.Module, loss_fn: Callable, data, *, directions, grid, center=None,
            metrics: dict[str, Callable] | None = None, test_data=None, bn: str = "eval", file: str | None = None,
            executor=None, max_batches: int | None = None, progress: bool = False,
            affine: bool = True, overwrite: bool = False, compile: bool | str = False) -> Surface:
    """The loss surface of `model` at center + x u (+ y v) on a grid.

    directions: a Directions (lscape.directions.random_directions / plane_through / pca_directions), a
      (k, D) array/tensor or list of k (D,) vectors (k = 1: 1-D surface, k = 2: 2-D), or 'filter' /
      'layer' for two seeded random directions.  D = number of entries of model.parameters().
    grid: an int n (n points in [-1, 1] on each axis), a pair of ints, a 1-D array for both axes, or a pair
      of arrays.  When the directions carry a trajectory or points (pca_directions, plane_through), an int
      grid spans them and the centre instead, with a margin of a quarter of their extent on each side.
      center: (D,) or None (the model's parameters, or the Directions' own centre).
    data / test_data: (inputs, targets) or a re-iterable of such batches (DataLoader), streamed batch by
      batch, weighted by batch size; max_batches caps the batches per pass.
    metrics: {name: fn(outputs, targets) -> scalar}, computed in the same forward passes as the loss;
      a classification model (outputs (N, C), integer targets) also gets accuracy (fraction correct).
    bn: 'eval' uses the running statistics as they are; 'recompute' re-estimates them at every point
      with one pass over `data` (torch.optim.swa_utils.update_bn): one extra pass per point.
    file: a .h5/.npz path written after every row; an existing file of the same surface is resumed
      (only the cells not yet computed are evaluated); a damaged file (torn, truncated, failing its checksum)
      or one of another surface is refused by name, and replaced only with overwrite=True.  While a call
      writes `file`, a second process asking for it is refused (lscape._runlock: FILE.lock beside it).
      executor: rows are chunks of
      lscape.executor.get_executor(executor).map_chunks.
    affine: with bn='eval', the layers that read the input (an nn.Linear / nn.Conv whose input does not
      depend on the parameters, such as the first layer of an MLP or CNN) get their products X W0, X U,
      X V once per row and batch, and one fused sum per point (lscape._affine); False: plain evaluation.
    compile: True evaluates each point through torch.compile of the model's forward (BatchNorm folded; one
      point per call, no affine cache), after a compilation of seconds to a minute; "auto" does so only
      where the measured break-even says it pays (lscape.surface.COMPILE_MIN_MACS: a long surface of a large
      model evaluated one point at a time); False (default): never.  The values equal the uncompiled ones to
      float rounding.  docs/performance.md has the measurements.
    Returns a Surface with values train_loss, train_acc, test_loss, test_acc, train_<name>, ..."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: got {type(model).__name__}, expected a torch.nn.Module")
    objective = Objective(loss_fn)  # a named error for a loss_fn that is neither callable nor None
    if data is None:
        raise TypeError("data: got None, expected (inputs, targets) or a re-iterable of such batches")
    if compile not in (True, False, "auto") or isinstance(compile, (int, float)) and not isinstance(compile, bool):
        raise ValueError(f"compile: got {compile!r}, expected True, False or 'auto'")
    if bn not in BN_MODES:
        raise ValueError(f"bn: got {bn!r}, expected one of {BN_MODES}")
    metrics = dict(metrics or {})
    for name, fn in metrics.items():
        if not isinstance(name, str) or not callable(fn):
            raise TypeError(f"metrics: got {name!r}: {fn!r}, expected {{name: fn(outputs, targets)}}")
    layout = FlatLayout.of(model)
    dirs = _directions(directions, model, layout.dim)
    if center is None:
        center = dirs.center if dirs.center is not None else layout.flatten(model).double().cpu().numpy()
    center = _checks.vector_arg("center", center, layout.dim).cpu().numpy()
    marks = [m for m in (dirs.trajectory, dirs.points) if m is not None]
    x, y = _grid(grid, dirs.vectors.shape[0], np.vstack(marks) if marks else None)
    shape = x.shape if y is None else (x.shape[0], y.shape[0])
    s = _resume(file, x, y, center, dirs.vectors, overwrite) or Surface(
        x, y, {}, np.zeros(shape, bool), dirs.vectors, center, dict(dirs.info, bn=bn), dirs.trajectory, dirs.points)
    train = _batches("data", data, max_batches, objective.own)
    model = copy.deepcopy(model)
    test = _batches("test_data", test_data, max_batches, objective.own)
    for batches in (train, test):
        if batches is not None:
            objective.check(model, batches)
    X = next(iter(train)).tensor
    layers = input_layers(model, layout, X, terms=1 + dirs.vectors.shape[0]) \
        if affine and bn == "eval" and compile is not True and X is not None else ()
    sh = _Shared(model, loss_fn, metrics, train, test, layers, bn,
                 center, dirs.vectors, x, y, ~s.done, compile, objective.shift)
    rows = [i for i in range(x.shape[0]) if sh.todo[i].any()]

    def on_result(i: int, cells: dict) -> None:
        for j, vals in cells.items():
            idx = i if y is None else (i, j)
            for k, v in vals.items():
                s.values.setdefault(k, np.full(shape, np.nan))[idx] = v
            s.done[idx] = True
        if file is not None:
            try:
                s.save(file)
            except OSError as exc:  # a full disk, a read-only folder: the file keeps the rows saved before
                msg = (f"file: could not write {file} ({exc.strerror or exc}); its earlier rows are intact: free "
                       "space or fix the folder, then call again with the same file= to continue")
                raise (type(exc)(exc.errno, msg) if exc.errno else OSError(msg)) from exc

    try:
        get_executor(executor).map_chunks(_eval_row, rows, shared=sh, on_result=on_result, label="surface",
                                          progress=progress)
    except ExecutorLost as exc:
        where = f"; the finished rows are in {file}: call again with the same file= to continue" if file else ""
        raise ExecutorLost(f"{exc}{where}", finished=exc.finished, pending=exc.pending) from exc
    return s
