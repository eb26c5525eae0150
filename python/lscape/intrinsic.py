"""lscape.intrinsic_dimension: the intrinsic dimension of a model's objective (Li et al. 2018).

    res = lscape.intrinsic_dimension(model, F.cross_entropy, (x_train, y_train), test_data=(x_test, y_test),
                                     dims=[100, 200, 400, 800], seeds=3, epochs=5, baseline=1.0)
    res.d_int, res.d_int_interpolated, res.per_seed      # Li et al.'s reading, its interpolation, per seed

Each run trains `model` from its initial point theta0 in a random d-dimensional hyperplane
r = theta0 + P theta (theta from zero, P a random projection with unit-norm columns: by default a
lscape.SparseSignProjection, stored when it fits in memory, implicit above, and a lscape.FastfoodProjection
where the sparse P would be dense enough to be slower; never a dense D x d matrix) for `epochs` epochs, and
scores it (accuracy, or any metric) on the test data after the last epoch.  The intrinsic dimension d_int
is the smallest swept d whose mean score over seeds reaches threshold x baseline; the baseline is either
measured (the same model trained in the full space with the same budget: the d = D point) or given (Li et
al. use 1.0 on MNIST, which makes 0.9 an absolute accuracy threshold).

Each (d, seed) run is one chunk of lscape.executor (in process or on Ray): its result depends only on the
study's arguments, d and the seed (P, theta0 of a model factory and the minibatch order are all drawn from
seeded generators), so both executors give the same numbers bit for bit.  With `file`, every finished run
is written to it at once (atomically, like a surface file); running the same study again on the same file
skips the runs already there, so a killed study resumes losing only the runs in flight.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import numbers
import os
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from . import _checks
from ._atomicfiles import atomic_savez, load_npz
from ._modelio import Batch, Batches, Objective, as_batch, one_batch
from ._runlock import hold_file
from .executor import get_executor
from .subspace import Subspace

__all__ = ["IntrinsicDimension", "intrinsic_dimension", "OPTIMIZERS", "METRICS"]

OPTIMIZERS = ("adam", "sgd")
METRICS = ("acc",)
KINDS = ("hyperplane", "hypersphere")
STORAGES = ("auto", "indices", "implicit", "fastfood")
# storage="auto" stores P (about 5 bytes per nonzero: the SELL-C-sigma entries and the column-band copy)
# while that stays under this many bytes, and regenerates it (implicit, O(d) memory) above.  A fixed budget,
# not the free memory of the moment: the choice must be the same on every worker (the two storages' P^T g
# may round differently), or Ray and local runs would not agree bit for bit
STORED_P_BYTES = 1 << 30
# storage="auto" uses a FastfoodProjection (O(D log d) products, about 29 bytes per row of D whatever d)
# where the sparse P would hold FASTFOOD_NNZ_PER_ROW or more nonzeros per row (d >= 4 sqrt(D)), and d >=
# FASTFOOD_MIN_D.  The sparse P's products cost one gather per nonzero, Fastfood's a few transforms per row:
# one P theta plus one P^T g, one thread, broke even at d / sqrt(D) = 2.5-3 at D = 199,210 and 656,810, and
# Fastfood was 1.4x faster at 4.9, 4.5x at 22 (bench/fastfood_crossover.py, docs/performance.md).  The floor
# keeps every d <= 2,000 on the sparse P (the paper-scale studies' sweeps) whatever D.
FASTFOOD_NNZ_PER_ROW = 4.0
FASTFOOD_MIN_D = 2500
# scored (inputs, targets) tensors go through the model this many rows at a time: a whole test set at once
# can take gigabytes of activations (a CNN on CIFAR-10's 10,000 test images)
EVAL_BATCH = 1000
_FORMAT = "lscape.intrinsic_dimension/1"
FULL_SPACE = "full"  # the run table's storage of a full-space (d = D baseline) run: no projection


# ---- the result ---------------------------------------------------------------------------------------
@dataclass
class IntrinsicDimension:
    """A finished study.

    dims (n,) int, ascending; scores, losses, train_losses (n, seeds): the metric and loss_fn on the scored
    data after the last epoch, and the mean training loss of the last epoch; history (n, seeds, epochs) the
    score after every epoch (NaN unless history=True); baseline: the reference score (measured: the mean of
    baseline_scores (seeds,) of full-space runs); threshold; D; seeds (the seed of each column); runs: the
    training runs the study took (baseline included); order: the d values in the order they were run (a
    search's path); info: the study's settings, and under "storage_chosen" {str(d): the projection storage
    d's runs were trained with ("indices", "implicit" or "fastfood"; what storage="auto" resolved to)}."""
    dims: np.ndarray
    scores: np.ndarray
    losses: np.ndarray
    train_losses: np.ndarray
    history: np.ndarray
    baseline: float
    baseline_scores: np.ndarray
    threshold: float
    D: int
    seeds: np.ndarray
    runs: int
    order: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def target(self) -> float:
        """threshold x baseline: the score a run must reach."""
        return self.threshold * self.baseline

    @property
    def mean_scores(self) -> np.ndarray:
        """(len(dims),) each d's score averaged over the seeds (what d_int reads)."""
        return self.scores.mean(axis=1)

    @property
    def d_int(self) -> int | None:
        """Li et al.'s reading: the first swept d whose mean score over seeds reaches threshold x baseline
        (None when no swept d does)."""
        i = _first_reaching(self.mean_scores, self.target)
        return None if i is None else int(self.dims[i])

    @property
    def d_int_interpolated(self) -> float:
        """d where the straight line between the bracketing swept d (the last below the target before
        d_int, and d_int) crosses the target; d_int itself when the first swept d already reaches it;
        NaN when none does."""
        return _crossing(self.dims, self.mean_scores, self.target)

    @property
    def per_seed(self) -> np.ndarray:
        """(seeds,): the interpolated crossing of each seed's own score curve (NaN where it never reaches)."""
        return np.array([_crossing(self.dims, self.scores[:, s], self.target) for s in range(self.scores.shape[1])])

    def summary(self) -> str:
        """One line: d_int, its interpolation, the per-seed crossings, the target and the runs taken."""
        d = "none of the swept d" if self.d_int is None else f"{self.d_int:,}"
        seeds = ", ".join("-" if math.isnan(c) else f"{c:,.0f}" for c in self.per_seed)
        return (f"d_int = {d} of D = {self.D:,} (interpolated {self.d_int_interpolated:,.1f}; per seed {seeds}): "
                f"the first swept d whose mean score over {self.scores.shape[1]} seed(s) reaches "
                f"{self.threshold:g} x baseline {self.baseline:.4g} = {self.target:.4g}; {self.runs} training runs")

    _ARRAYS = ("dims", "scores", "losses", "train_losses", "history", "baseline_scores", "seeds", "order")

    def _payload(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return ({k: getattr(self, k) for k in self._ARRAYS},
                {"baseline": self.baseline, "threshold": self.threshold, "D": self.D, "runs": self.runs,
                 "info": self.info})

    def save(self, path: str | os.PathLike) -> None:
        """An .npz file (atomic); IntrinsicDimension.load reads it back."""
        arrays, result = self._payload()
        atomic_savez(path, {**arrays, "meta": np.array(json.dumps({"format": _FORMAT, "result": result}))})

    @classmethod
    def load(cls, path: str | os.PathLike) -> IntrinsicDimension:
        """A result saved by save(), or the file of a finished study."""
        arrays = load_npz(path)
        if arrays is None:
            raise FileNotFoundError(f"path: {os.fspath(path)!r} does not exist")
        meta = json.loads(str(arrays.get("meta", "{}")))
        if meta.get("format") != _FORMAT or "result" not in meta:
            raise ValueError(f"path: {os.fspath(path)!r} holds no finished intrinsic-dimension study (an "
                             "interrupted study's file is completed by running the study again on it)")
        return cls(**{k: arrays[k] for k in cls._ARRAYS}, **meta["result"])


def _first_reaching(scores: np.ndarray, target: float) -> int | None:
    hit = np.flatnonzero(scores >= target)
    return None if hit.size == 0 else int(hit[0])


def _crossing(dims: np.ndarray, scores: np.ndarray, target: float) -> float:
    i = _first_reaching(scores, target)
    if i is None:
        return math.nan
    if i == 0:
        return float(dims[0])
    d0, d1, s0, s1 = float(dims[i - 1]), float(dims[i]), float(scores[i - 1]), float(scores[i])
    return d0 + (target - s0) * (d1 - d0) / (s1 - s0)


# ---- one training run ----------------------------------------------------------------------------------
@dataclass
class _Study:
    """Everything a run needs; shipped once to the executor's workers (picklable when model, loss_fn,
    metric and data are)."""
    model: Any  # an nn.Module (theta0 for every run) or a zero-argument factory (theta0 drawn per seed)
    loss_fn: Callable | None
    metric: Any  # "acc" or fn(outputs, targets) -> float
    train: Any  # (X, Y) tensors, or a re-iterable of batches
    test: Any
    epochs: int
    batch_size: int
    lr: float
    optimizer: Any
    optimizer_kwargs: dict
    l2: float
    kind: str
    storage: str
    history: bool
    jobs: list = field(default_factory=list)  # [(d or None for the full space, seed)] of the current stage
    shift: bool = False  # the model's own loss is a causal LM's (lscape._modelio.Objective.check)

    def objective(self) -> Objective:
        return Objective(self.loss_fn, self.shift)


def _fresh_model(model, seed: int) -> nn.Module:
    """A model at theta0: a copy of the module, or the factory's model drawn with torch seeded by `seed`."""
    if isinstance(model, nn.Module):
        return copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model()


def _mix(*xs: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence: nearby inputs give unrelated streams)."""
    return int(np.random.SeedSequence(list(xs)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _storage(storage: str, D: int, d: int) -> str:
    """The projection a run in d dimensions of a D-parameter model uses (a function of D and d alone, so
    every worker picks the same)."""
    if storage != "auto":
        return storage
    if d >= FASTFOOD_MIN_D and d >= FASTFOOD_NNZ_PER_ROW * math.sqrt(D):
        return "fastfood"
    nnz = d * math.sqrt(D)  # the expected nonzeros at the default density 1/sqrt(D)
    return "indices" if 5 * nnz <= STORED_P_BYTES else "implicit"


def _epoch_batches(data, batch_size: int, seed: int, epoch: int, own: bool) -> Iterable[Batch]:
    """One epoch's minibatches, reshuffled from a generator seeded by (seed, epoch): tensors are permuted
    and cut into batch_size batches; a sequence of batches is visited in a permuted order; any other
    re-iterable (a DataLoader) is iterated with torch's global generator seeded, which is where a
    DataLoader with shuffle=True draws its order from."""
    gen = torch.Generator().manual_seed(_mix(seed, epoch, 7))
    if one_batch(data):
        b = as_batch(data, own)
        order = torch.randperm(b.rows, generator=gen)
        for i in range(0, b.rows, batch_size):
            idx = order[i:i + batch_size]
            yield b.select(idx, idx.shape[0])
    elif isinstance(data, Sequence):
        for k in torch.randperm(len(data), generator=gen).tolist():
            yield as_batch(data[k], own, "data", k)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_mix(seed, epoch, 7))
            yield from Batches(data, "data", own_loss=own)


def _eval_batches(data, own: bool) -> Iterable[Batch]:
    """The scored data in order: one batch in slices of EVAL_BATCH rows, batches as they come."""
    if one_batch(data):
        b = as_batch(data, own, "test_data")
        for i in range(0, b.rows, EVAL_BATCH):
            yield b.take(i, i + EVAL_BATCH)
    else:
        yield from Batches(data, "test_data", own_loss=own)


def _score(model: nn.Module, sh: _Study) -> tuple[float, float]:
    """(metric, loss_fn) on the scored data, batch-size-weighted means, in eval mode."""
    model.eval()
    tot = loss = score = 0.0
    obj = sh.objective()
    with torch.no_grad():
        for b in _eval_batches(sh.test, obj.own):
            out = b.call(model)
            n = obj.count(b)
            tot += n
            loss += float(obj.loss(out, b)) * n
            if sh.metric == "acc":
                acc = obj.accuracy(out, b.targets)
                if acc is None:
                    raise ValueError(f"metric: got 'acc' but the outputs {type(out).__name__} and targets "
                                     f"{_checks.describe(b.targets)} are not classes or tokens (logits (N, ..., C), "
                                     "integer targets (N, ...)), expected a metric fn(outputs, targets)")
                score += float(acc) * n
            else:
                score += float(sh.metric(out, b.targets)) * n
    model.train()
    return score / tot, loss / tot


def _make_optimizer(sh: _Study, params) -> torch.optim.Optimizer:
    if callable(sh.optimizer):
        return sh.optimizer(params)
    cls = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[sh.optimizer]
    return cls(params, lr=sh.lr, **sh.optimizer_kwargs)


@dataclass
class _Run:
    """One run being trained: the model, what the optimizer steps (the model itself in the full space, a
    Subspace otherwise), the optimizer, and the names of the kernels the L2 term covers."""
    model: nn.Module
    net: nn.Module
    opt: torch.optim.Optimizer
    kernels: list[str]
    subspace: bool

    def params(self) -> dict[str, torch.Tensor]:
        """The parameters the forward pass uses: the model's own, or views of r = theta0 + P theta."""
        return self.net.params_dict() if self.subspace else dict(self.model.named_parameters())

    def trained(self) -> nn.Module:
        """The model holding the trained parameters (r written back into it for a subspace run)."""
        return self.net.load_into_model() if self.subspace else self.model


def _setup(d: int | None, seed: int, sh: _Study) -> _Run:
    """A run at its start: theta0 (the module's copy, or the factory's draw for `seed`), and for d not
    None a `kind` subspace of dimension d with P seeded by (seed, d) and theta = 0."""
    model = _fresh_model(sh.model, seed)
    net: nn.Module = model
    if d is not None:
        D = sum(p.numel() for p in model.parameters())
        net = Subspace(model, d, kind=sh.kind, seed=_mix(seed, d), storage=_storage(sh.storage, D, d))
    opt = _make_optimizer(sh, net.parameters())
    if d is not None:
        net.constrain(opt)  # hypersphere: hold |r| = r0; hyperplane: nothing
    kernels = [n for n, p in model.named_parameters() if p.ndim >= 2]  # Keras' kernel_regularizer covers these
    model.train()
    return _Run(model, net, opt, kernels, d is not None)


def _epoch(run: _Run, sh: _Study, seed: int, epoch: int) -> float:
    """One pass over the training data; the mean training loss (loss_fn alone, without the L2 term).

    torch.optim.LBFGS, which re-evaluates the loss, steps with the closure; every other optimizer sees the
    gradient computed before its step() (so a hypersphere's SphereConstraint hooks act on it)."""
    total, count = 0.0, 0
    obj = sh.objective()
    for b in _epoch_batches(sh.train, sh.batch_size, seed, epoch, obj.own):
        first: list[float] = []

        def closure(b=b, first=first) -> torch.Tensor:
            run.opt.zero_grad(set_to_none=True)
            params = run.params()
            args, kwargs = b.args()
            out = torch.func.functional_call(run.model, params, args, kwargs, strict=False) if run.subspace \
                else b.call(run.model)
            loss = obj.loss(out, b)
            if not first:
                first.append(float(loss.detach()))
            if sh.l2:
                loss = loss + sh.l2 * sum(params[n].square().sum() for n in run.kernels)
            loss.backward()
            return loss

        if isinstance(run.opt, torch.optim.LBFGS):  # re-evaluates the loss within its step
            run.opt.step(closure)
        else:  # the gradient first: a hypersphere's step pre-hook projects it before the optimizer reads it
            closure()
            run.opt.step()
        n = obj.count(b)
        total, count = total + first[0] * n, count + n
    return total / max(count, 1)


def _train(d: int | None, seed: int, sh: _Study) -> dict[str, Any]:
    """One run: d None trains the full space, else a `kind` subspace of dimension d.  P is seeded by
    (seed, d), the minibatch order by (seed, epoch) and torch's global generator (dropout, a DataLoader's
    shuffle) by (seed, d): the run depends on nothing else, so it is the same on any worker."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_mix(seed, d or 0, 3))
        run = _setup(d, seed, sh)
        history = np.full(sh.epochs, np.nan)
        train_loss = math.nan
        for epoch in range(sh.epochs):
            train_loss = _epoch(run, sh, seed, epoch)
            if sh.history and epoch < sh.epochs - 1:
                history[epoch] = _score(run.trained(), sh)[0]
        score, test_loss = _score(run.trained(), sh)
    history[-1] = score if sh.history else np.nan
    # the P this run was trained in, as built (what storage="auto" resolved to), recorded in the study file
    storage = run.net.P.storage if run.subspace else FULL_SPACE
    return {"score": score, "loss": test_loss, "train_loss": train_loss, "history": history, "storage": storage}


def _run_chunk(i: int, sh: _Study) -> dict[str, Any]:
    d, seed = sh.jobs[i]
    return _train(d, seed, sh)


# ---- the run table: the study's checkpoint file ------------------------------------------------------------
class _Runs:
    """Finished runs {(d, seed): result} (d = 0 for the full space), saved to `file` after each, with the
    projection storage each run used (run_storage)."""

    def __init__(self, file, fingerprint: dict, epochs: int) -> None:
        self.file, self.fingerprint, self.epochs = file, fingerprint, epochs
        self.done: dict[tuple[int, int], dict[str, Any]] = {}
        try:
            arrays = None if file is None else load_npz(file)
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"file: {os.fspath(file)!r} is not a readable .npz file ({exc}), expected an "
                             "intrinsic-dimension study's file to resume, or a new path") from None
        if arrays is None:
            return
        meta = json.loads(str(arrays.get("meta", "{}")))
        if meta.get("format") != _FORMAT or meta.get("study") != fingerprint:
            theirs = meta.get("study") or {}
            diff = sorted(k for k in set(theirs) | set(fingerprint) if theirs.get(k) != fingerprint.get(k))
            raise ValueError(f"file: {os.fspath(file)!r} holds another study (it differs in "
                             f"{', '.join(diff) or 'its format'}), expected the same study to resume, or a new path")
        for k, (d, s) in enumerate(zip(arrays["run_d"].tolist(), arrays["run_seed"].tolist(), strict=True)):
            self.done[(d, s)] = {"score": float(arrays["run_score"][k]), "loss": float(arrays["run_loss"][k]),
                                 "train_loss": float(arrays["run_train_loss"][k]),
                                 "history": arrays["run_history"][k],
                                 # files written before run_storage was kept: the storage that code chose
                                 "storage": str(arrays["run_storage"][k]) if "run_storage" in arrays else
                                 _storage(fingerprint["storage"], fingerprint["D"], d) if d else FULL_SPACE}

    def add(self, d: int, seed: int, result: dict[str, Any]) -> None:
        self.done[(d, seed)] = result
        if self.file is not None:
            self.save()

    def save(self, result: IntrinsicDimension | None = None) -> None:
        """The run table (and, at the end, the result, so IntrinsicDimension.load reads the file too)."""
        keys = list(self.done)
        rows = [self.done[k] for k in keys]
        arrays = {"run_d": np.array([k[0] for k in keys], np.int64),
                  "run_seed": np.array([k[1] for k in keys], np.int64),
                  "run_history": np.array([r["history"] for r in rows], np.float64).reshape(len(rows), self.epochs),
                  "run_storage": np.array([r["storage"] for r in rows], dtype=str)}
        for name in ("score", "loss", "train_loss"):
            arrays[f"run_{name}"] = np.array([r[name] for r in rows], np.float64)
        meta: dict[str, Any] = {"format": _FORMAT, "study": self.fingerprint}
        if result is not None:  # the finished study: its result beside the run table
            more, meta["result"] = result._payload()
            arrays.update(more)
        atomic_savez(self.file, {**arrays, "meta": np.array(json.dumps(meta))})


# ---- arguments ------------------------------------------------------------------------------------------
def _model_arg(model) -> nn.Module:
    """The model at theta0 of seed 0 (a copy), or a named error: a module, or a factory returning one."""
    if isinstance(model, nn.Module):
        probe = copy.deepcopy(model)
    elif callable(model):
        try:
            probe = _fresh_model(model, 0)
        except TypeError as exc:
            raise TypeError(f"model: got {_checks.describe(model)}, expected an nn.Module or a zero-argument "
                            f"callable returning one (calling it failed: {exc})") from None
        if not isinstance(probe, nn.Module):
            raise TypeError(f"model: got a callable returning {_checks.describe(probe)}, expected one returning "
                            "a torch.nn.Module")
    else:
        raise TypeError(f"model: got {_checks.describe(model)}, expected an nn.Module or a zero-argument callable "
                        "returning one")
    if not any(True for _ in probe.parameters()):
        raise ValueError(f"model: got a {type(probe).__name__} with no parameters, expected at least one")
    return probe


def _data_arg(name: str, data):
    """data as given (a pair of tensors or a re-iterable of batches), after checking its first batch."""
    if data is None:
        raise TypeError(f"{name}: got None, expected (inputs, targets) tensors or a re-iterable of batches")
    batches = Batches(data, name)  # the type checks; no batch, or one of no rows, is a ValueError there
    return data, next(iter(batches))


def _dims_arg(dims, D: int) -> list[int] | None:
    if dims is None:
        return None
    if isinstance(dims, (str, bytes)) or not isinstance(dims, Iterable):
        raise TypeError(f"dims: got {_checks.describe(dims)}, expected a list of positive integers or None")
    out = []
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or not 1 <= int(d) <= D:
            raise ValueError(f"dims: got {d!r} in {list(dims)!r}, expected positive integers at most D = {D} "
                             "(the model's parameter count)")
        out.append(int(d))
    if not out:
        raise ValueError("dims: got an empty list, expected at least one d (or None for a search)")
    return sorted(set(out))


def _seeds_arg(seeds) -> list[int]:
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        return list(range(_checks.int_arg("seeds", seeds, low=1)))
    if isinstance(seeds, Sequence) and not isinstance(seeds, str) and len(seeds) > 0 and \
            all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 0 for s in seeds) and \
            len(set(seeds)) == len(seeds):
        return [int(s) for s in seeds]
    raise TypeError(f"seeds: got {_checks.describe(seeds)}, expected a count >= 1 or a list of distinct "
                    "non-negative integers")


def _baseline_arg(baseline) -> float | None:
    if baseline == "measured":
        return None
    if isinstance(baseline, str):
        raise ValueError(f"baseline: got {baseline!r}, expected 'measured' or a positive number")
    return _checks.float_arg("baseline", baseline, low=0.0, high=math.inf, low_open=True)


def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _data_digest(data) -> str:
    """Tensors: all of them; batches: the first batch and its type (streaming a whole loader to hash it
    would cost a pass)."""
    if one_batch(data):
        return _digest(*_tensors(data))
    with torch.random.fork_rng(devices=[]):  # a shuffling DataLoader draws its order from torch's generator
        torch.manual_seed(0)
        first = next(iter(Batches(data, "data", own_loss=True)))
    return f"{type(data).__name__}:{_digest(*_tensors((first.inputs, first.targets)))}"


def _tensors(x) -> list[torch.Tensor]:
    """Every tensor in a batch, in order (a mapping's by key)."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict) or hasattr(x, "keys"):
        return [t for k in sorted(x.keys()) for t in _tensors(x[k])]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in _tensors(v)]
    return []


def _name(fn) -> str:
    return fn if isinstance(fn, str) else f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"


# ---- the study -------------------------------------------------------------------------------------------
def intrinsic_dimension(model, loss_fn: Callable, data, *, test_data=None, dims: Sequence[int] | None = None,
                        threshold: float = 0.9, baseline: str | float = "measured", seeds: int | Sequence[int] = 1,
                        epochs: int = 1, batch_size: int = 128, lr: float = 1e-3, optimizer: str | Callable = "adam",
                        metric: str | Callable = "acc", kind: str = "hyperplane", storage: str = "auto",
                        executor=None, file: str | os.PathLike | None = None, progress: bool = False,
                        optimizer_kwargs: dict | None = None, l2: float = 0.0, history: bool = False,
                        search_start: int = 10, search_factor: float = 2.0, search_rtol: float = 0.05,
                        search_atol: int = 10, on_run: Callable[[int, int, dict], None] | None = None
                        ) -> IntrinsicDimension:
    """The intrinsic dimension of `model` on `data` (Li et al. 2018): train in random d-dimensional
    subspaces through theta0 and find the smallest d whose score reaches threshold x baseline.

    model: an nn.Module (its parameters are theta0 of every run; seeds change P and the batch order) or a
      zero-argument callable returning a fresh module (called with torch seeded by the run's seed, so its
      initialisation gives theta0 of each seed).  D = its parameter count.
    loss_fn(outputs, targets) -> scalar tensor, minimised.  l2: adds l2 x sum of squares of the model's
      kernels (parameters with ndim >= 2, taken in the full space: Li et al.'s weight decay).
    data, test_data: (inputs, targets) tensors, a sequence of such batches or a re-iterable (a DataLoader),
      streamed.  Tensors are cut into batch_size minibatches reshuffled every epoch from a generator seeded
      by (seed, epoch); a sequence of batches is visited in a reshuffled order; a DataLoader keeps its own
      batches, iterated with torch's generator seeded the same way.  test_data=None scores on `data`.
    dims: the d values to train (each <= D), or None for a search: a geometric sweep from search_start
      (x search_factor) up to the first d that reaches the target, then bisection of the bracket until it
      is within search_rtol (relative) or search_atol (absolute) apart.
    threshold in (0, 1]; baseline: "measured" (the full space trained with the same budget, the d = D
      point, one run per seed) or a number (Li et al. use 1.0 on MNIST: 0.9 is then absolute accuracy).
    seeds: a count (seeds 0..n-1) or a list.  metric: "acc" (argmax accuracy) or fn(outputs, targets) ->
      float, higher is better, batch-size-weighted.  optimizer: "adam", "sgd" (with lr, plus
      optimizer_kwargs, default none: torch's defaults) or a callable(params) -> torch.optim.Optimizer (lr
      then unused); torch.optim.LBFGS steps with a closure, so it works too.
    The official code's setup (uber-research/intrinsic-dimension, train.py): the defaults optimizer="adam",
      lr=1e-3, batch_size=128, plus optimizer_kwargs={"betas": (0.9, 0.99)} and l2=1e-4, with a model
      factory giving he_normal kernels and zero biases.  P's nonzero columns always have unit norm over all
      D rows and theta starts at zero (lscape.SparseSignProjection or lscape.FastfoodProjection,
      lscape.Subspace), as there.
    kind: "hyperplane" (r = theta0 + P theta, theta from 0) or "hypersphere" (|r| = |theta0| held).
    storage: P's storage, "indices", "implicit" (a sparse P, stored or regenerated), "fastfood" (a
      FastfoodProjection), or "auto": fastfood where d >= 4 sqrt(D) and d >= 2,500 (FASTFOOD_NNZ_PER_ROW,
      FASTFOOD_MIN_D: where it was measured faster), else the sparse P, stored while its nonzeros take
      under STORED_P_BYTES = 1 GiB, implicit (O(d) memory) above; never a dense D x d matrix.  The storage
      each run was built with is kept: result.info["storage_chosen"], and `file`'s run table (run_storage).
    executor: "local", "ray" or an lscape.executor.Executor; each
      (d, seed) run is one chunk.  file: an .npz path written after every run; an existing file of the same
      study is resumed (its runs are not redone); a file of another study is refused.  history: also score
      after every epoch (one more pass over the scored data per epoch), in result.history.
    search_start (10), search_factor (2.0), search_rtol (0.05), search_atol (10): the search (dims=None).
    on_run(d, seed, result): called on the driver after each run is saved (d = 0: the full space).
    Every bad argument is a named error before any training.
    Returns an IntrinsicDimension: dims (n,), scores / losses (n, seeds), baseline, d_int,
    d_int_interpolated, per_seed, runs (the training runs taken, baseline included), summary()."""
    probe = _model_arg(model)
    D = sum(p.numel() for p in probe.parameters())
    objective = Objective(loss_fn)  # a named error for a loss_fn neither callable nor None
    data, _ = _data_arg("data", data)
    test = data if test_data is None else _data_arg("test_data", test_data)[0]
    for name, given in (("data", data), ("test_data", test_data)):
        if given is not None:
            objective.check(probe, Batches(given, name, own_loss=objective.own))
    dims = _dims_arg(dims, D)
    threshold = _checks.float_arg("threshold", threshold, low=0.0, high=1.0, low_open=True)
    base = _baseline_arg(baseline)
    seed_list = _seeds_arg(seeds)
    epochs = _checks.int_arg("epochs", epochs, low=1)
    batch_size = _checks.int_arg("batch_size", batch_size, low=1)
    lr = _checks.float_arg("lr", lr, low=0.0, high=math.inf, low_open=True)
    if not callable(optimizer):
        optimizer = _checks.choice_arg("optimizer", optimizer, OPTIMIZERS)
    if optimizer_kwargs is not None and not isinstance(optimizer_kwargs, dict):
        raise TypeError(f"optimizer_kwargs: got {_checks.describe(optimizer_kwargs)}, expected a dict or None")
    if not callable(metric):
        metric = _checks.choice_arg("metric", metric, METRICS)
    kind = _checks.choice_arg("kind", kind, KINDS)
    storage = _checks.choice_arg("storage", storage, STORAGES)
    l2 = _checks.float_arg("l2", l2, low=0.0, high=math.inf)
    search_start = _checks.int_arg("search_start", search_start, low=1)
    search_factor = _checks.float_arg("search_factor", search_factor, low=1.0, high=math.inf, low_open=True)
    search_rtol = _checks.float_arg("search_rtol", search_rtol, low=0.0, high=1.0)
    search_atol = _checks.int_arg("search_atol", search_atol, low=1)
    if file is not None and not isinstance(file, (str, os.PathLike)):
        raise TypeError(f"file: got {_checks.describe(file)}, expected a path (str) or None")
    if file is not None and not os.fspath(file).endswith(".npz"):
        raise ValueError(f"file: got {os.fspath(file)!r}, expected a path ending in .npz")
    ex = get_executor(executor)
    opt_kwargs = dict(optimizer_kwargs or {})
    fingerprint = {"D": D, "theta0": _digest(*probe.parameters()), "model": type(probe).__name__,
                   "model_is_factory": not isinstance(model, nn.Module), "loss_fn": _name(loss_fn),
                   "metric": _name(metric), "data": _data_digest(data),
                   "test_data": None if test_data is None else _data_digest(test),
                   "epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": _name(optimizer),
                   "optimizer_kwargs": json.loads(json.dumps(opt_kwargs, default=repr)), "l2": l2, "kind": kind,
                   "storage": storage, "history": history}
    sh = _Study(model, loss_fn, metric, data, test, epochs, batch_size, lr, optimizer, opt_kwargs, l2, kind,
                storage, history)
    sh.shift = objective.shift
    search = _Search(search_start, search_factor, search_rtol, search_atol)
    # one writer per study file: a second live process is refused, a dead one's lock taken over (_runlock)
    with contextlib.nullcontext() if file is None else hold_file(file, "file"):
        runs = _Runs(file, fingerprint, epochs)  # a file of another study is refused here, before any training
        res = _run_study(runs, sh, ex, dims, seed_list, base, threshold, D, search, on_run, progress)
        res.info = {**fingerprint, "baseline": baseline if isinstance(baseline, str) else base,
                    "search": dataclasses.asdict(search) if dims is None else None,
                    "storage_chosen": {str(d): runs.done[(d, seed_list[0])]["storage"] for d in res.dims.tolist()}}
        if file is not None:
            runs.save(res)
    return res


@dataclass(frozen=True)
class _Search:
    """dims=None: a geometric sweep from `start` (x `factor`), then bisection until the bracket is within
    `rtol` (relative to its upper end) or `atol` apart."""
    start: int
    factor: float
    rtol: float
    atol: int


def _run_study(runs: _Runs, sh: _Study, ex, dims: list[int] | None, seed_list: list[int], base: float | None,
               threshold: float, D: int, search: _Search, on_run, progress: bool) -> IntrinsicDimension:
    """Train every run the study needs that `runs` does not hold yet (the baseline first, then the given
    dims or the search's), and gather the result (its info is filled in by the caller)."""
    order: list[int] = []

    def stage(pairs: list[tuple[int, int]], label: str) -> None:
        """Train the (d, seed) pairs not yet in the table (d = 0: the full space), one chunk each."""
        todo = [p for p in pairs if p not in runs.done]
        job = copy.copy(sh)
        job.jobs = [(d or None, s) for d, s in todo]

        def done(i: int, result: dict[str, Any]) -> None:
            runs.add(*todo[i], result)
            if on_run is not None:
                on_run(*todo[i], result)

        ex.map_chunks(_run_chunk, range(len(todo)), shared=job, on_result=done, label=label, progress=progress)

    def mean(d: int) -> float:
        return float(np.mean([runs.done[(d, s)]["score"] for s in seed_list]))

    def run_dims(ds: list[int]) -> None:
        stage([(d, s) for d in ds for s in seed_list], f"intrinsic d={ds[0]}" if len(ds) == 1 else "intrinsic")
        order.extend(ds)

    base_pairs = [(0, s) for s in seed_list] if base is None else []
    if dims is not None:
        stage(base_pairs + [(d, s) for d in dims for s in seed_list], "intrinsic")
        order.extend(dims)
    else:
        stage(base_pairs, "baseline")
    baseline_value = mean(0) if base is None else base
    target = threshold * baseline_value
    if dims is None:
        lo, hi, d = 0, None, min(search.start, D)
        while hi is None:  # the geometric sweep: up to the first d that reaches the target
            run_dims([d])
            if mean(d) >= target:
                hi = d
            elif d == D:
                break
            else:
                lo, d = d, min(D, max(d + 1, int(round(d * search.factor))))
        while hi is not None and hi - lo > max(search.atol, search.rtol * hi) and hi - lo > 1:  # bisection
            mid = (lo + hi) // 2
            run_dims([mid])
            lo, hi = (lo, mid) if mean(mid) >= target else (mid, hi)
        dims = sorted(set(order))

    def table(name: str) -> np.ndarray:
        return np.array([[runs.done[(d, s)][name] for s in seed_list] for d in dims], np.float64)

    return IntrinsicDimension(
        dims=np.array(dims, np.int64), scores=table("score"), losses=table("loss"),
        train_losses=table("train_loss"), history=table("history").reshape(len(dims), len(seed_list), sh.epochs),
        baseline=float(baseline_value),
        baseline_scores=np.array([runs.done[(0, s)]["score"] for s in seed_list] if base is None else [], np.float64),
        threshold=threshold, D=D, seeds=np.array(seed_list, np.int64),
        runs=len(dims) * len(seed_list) + len(base_pairs),
        order=np.array(order, np.int64))
