"""Exact affine evaluation of a model's input layers along lines and planes (issue 17 item 3).

At theta = theta0 + sum_k c_k d_k, an nn.Linear or nn.Conv layer whose input does not depend on theta
has the output  L(X; W0, b0) + sum_k c_k L(X; W_k, b_k),  because it is linear in its weight and bias
jointly.  Those products are computed once per batch; each point's layer is then one fused sum, and the
rest of the model runs as usual.  On a 784-200-200-10 MLP the first layer is 79% of the forward FLOPs.

Which layers qualify is found by running the model once with theta requiring grad: an nn.Linear or
nn.Conv1d/2d/3d (zero padding) called exactly once per forward, with one positional input that does not
require grad: the first layer of an MLP or a CNN, also behind a reshape or any fixed preprocessing, or
several such layers reading the input.  A model with none (an input scaled by a parameter, a layer
called twice) is evaluated plainly, as is one whose cache would pass MAX_CACHED floats.

    names = input_layers(model, layout, X)       # () when the trick does not apply
    cache = AffineCache(model, layout, names, center, dirs, batches)
    for out, Y, n in cache.outputs(coeffs, params, buffers): ...
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ._fastops import instance_forwards, narrow_linears
from ._flat import FlatLayout
from ._modeleval import FastForward, prefers_channels_last

__all__ = ["input_layers", "AffineCache", "NotCached", "landscape_losses", "MAX_CACHED", "MIN_FAN_IN_PER_TERM"]

# cached layer outputs beyond this many floats fall back to plain evaluation (memory bound)
MAX_CACHED = 1 << 26
# a layer is cached only when its fan-in is at least this many times the cached terms per point: below,
# the fused sum (memory-bound: one read per term and output) costs more than the layer's own product
MIN_FAN_IN_PER_TERM = 16
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PROBE_ROWS = 8  # input rows of the one forward pass that finds the layers
BLOCK_ELEMS = 1 << 24  # float64 point entries built per block (128 MiB), as probes.lines does
# points evaluated one by one are built this many float64 entries at a time (512 KiB): a block stays in
# cache while its points are copied out one after another, where a 128 MiB one went to memory and back
# (digits 64-100-100-10 on 8 rows, 200 points, one thread: 73-95 us a point against 85-116)
POINT_BLOCK_ELEMS = 1 << 16


def _kind_ok(m: nn.Module) -> bool:
    # exact types: a subclass may compute its output differently (its own forward, a parametrization)
    return type(m) is nn.Linear or type(m) in _CONVS and m.padding_mode == "zeros"


def _apply(m: nn.Module, X: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    if isinstance(m, nn.Linear):
        return F.linear(X, w, b)
    conv = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}[type(m)]
    return conv(X, w, b, m.stride, m.padding, m.dilation, m.groups)


def _fan_in(m: nn.Module) -> int:
    """Multiply-adds per output element of a Linear or Conv layer."""
    if isinstance(m, nn.Linear):
        return m.in_features
    return m.in_channels // m.groups * int(torch.tensor(m.kernel_size).prod())


def input_layers(model: nn.Module, layout: FlatLayout, X: torch.Tensor, terms: int | None = None) -> tuple[str, ...]:
    """Names of the modules of `model` whose output is affine in theta (see the module docstring), found
    by one forward pass of X[:8] with theta requiring grad (buffers are copies: BatchNorm's running
    statistics stay untouched).  () when there is none or the pass fails.

    terms: the cached products per point (1 + the number of directions): a layer whose fan-in is under
    MIN_FAN_IN_PER_TERM per term is left out, since reading the cached terms costs more than computing it
    (ResNet-20's first 3x3 convolution on 3 channels, fan-in 27: a surface 1.6x slower with it cached)."""
    names = set(layout.names)
    least = 0 if terms is None else MIN_FAN_IN_PER_TERM * terms
    candidates = {n: m for n, m in model.named_modules() if _kind_ok(m) and f"{n}.weight" in names
                  and (m.bias is None or f"{n}.bias" in names) and _fan_in(m) >= least}
    if not candidates:
        return ()
    calls: dict[str, list[bool]] = {n: [] for n in candidates}

    def record(name):
        def hook(_m, args):
            free = len(args) == 1 and isinstance(args[0], torch.Tensor) and not args[0].requires_grad
            calls[name].append(free)
        return hook

    hooks = [m.register_forward_pre_hook(record(n)) for n, m in candidates.items()]
    try:
        flat = layout.flatten(model).requires_grad_()
        bufs = {k: v.clone() for k, v in model.named_buffers()}
        with torch.enable_grad():
            torch.func.functional_call(model, (layout.split(flat), bufs), (X[:_PROBE_ROWS],))
    except Exception:  # noqa: BLE001 - a model this pass cannot run is evaluated plainly
        return ()
    finally:
        for h in hooks:
            h.remove()
    return tuple(n for n, c in calls.items() if c == [True])


class NotCached(Exception):
    """The cache does not apply to these batches (inputs other than one tensor): evaluate plainly."""


class _Captured(Exception):
    """Raised by the capturing hooks once every layer's input is in hand: the rest need not run."""


def _combine(parts: list, coeffs, out: torch.Tensor | None = None) -> torch.Tensor:
    """parts[0] (or None for a zero centre) + sum_k coeffs[k] parts[k + 1]; coeffs floats or a tensor.
    With floats, written into `out` when given (a buffer reused point after point: a fresh activation-sized
    tensor per point costs page faults)."""
    base, rest = parts[0], parts[1:]
    if isinstance(coeffs, torch.Tensor):  # inside vmap: coeffs is batched
        acc = sum(coeffs[k] * p for k, p in enumerate(rest))
        return acc if base is None else acc + base
    kw = {} if out is None else {"out": out}
    out = torch.mul(rest[0], coeffs[0], **kw) if base is None else torch.add(base, rest[0], alpha=coeffs[0], **kw)
    for c, p in zip(coeffs[1:], rest[1:], strict=True):
        out.add_(p, alpha=c)
    return out


class AffineCache:
    """The input layers' outputs of every batch at the centre and along each direction.

    center (D,), dirs (k, D) in the model's dtype; batches: a re-iterable of lscape._modelio.Batch with
    one input tensor each (else NotCached), read once here (the
    cache holds that pass, so a shuffling DataLoader is fixed to one order).  Raises MemoryError when the
    cache would pass max_cached floats.  channels_last: 4-D outputs are stored channels-last, so the layers
    after them (lscape._modeleval.FastForward's channels-last convolutions) read them without a reorder;
    None picks it as FastForward does."""

    def __init__(self, model: nn.Module, layout: FlatLayout, names: Sequence[str], center: torch.Tensor,
                 dirs: torch.Tensor, batches: Iterable, max_cached: int = MAX_CACHED,
                 channels_last: bool | None = None) -> None:
        self.model = model
        self.mods = {n: model.get_submodule(n) for n in names}
        self._now: dict[str, torch.Tensor] = {}  # what each layer returns while installed
        self._bufs: dict[tuple[int, str], torch.Tensor] = {}  # (batch, layer): its output, rewritten per point
        self._installed = False
        vecs = [layout.split(v) for v in (center, *dirs)]
        if channels_last is None:
            channels_last = prefers_channels_last(model)
        size = 0
        self.batches = []
        with torch.no_grad():
            for batch in batches:
                X = batch.tensor
                if X is None or batch.labels_kw:
                    raise NotCached("affine cache: a batch's inputs are not one tensor")
                inputs = self._inputs(X)
                parts = {}
                for n, m in self.mods.items():
                    ps = [None if k == 0 and not self._nonzero(v, n) else
                          _apply(m, inputs[n], v[f"{n}.weight"], v.get(f"{n}.bias")) for k, v in enumerate(vecs)]
                    if channels_last:
                        ps = [p if p is None or p.dim() != 4 else p.contiguous(memory_format=torch.channels_last)
                              for p in ps]
                    size += sum(p.numel() for p in ps if p is not None)
                    parts[n] = ps
                if size > max_cached:
                    raise MemoryError(f"affine cache: over {max_cached} floats")
                self.batches.append((batch, parts))

    @staticmethod
    def _nonzero(v: dict, name: str) -> bool:
        return bool(v[f"{name}.weight"].any()) or (f"{name}.bias" in v and bool(v[f"{name}.bias"].any()))

    def _inputs(self, X: torch.Tensor) -> dict[str, torch.Tensor]:
        """The input each layer receives on X (a forward pass cut short once all are seen)."""
        got: dict[str, torch.Tensor] = {}

        def grab(name):
            def hook(_m, args):
                got[name] = args[0]
                if len(got) == len(self.mods):
                    raise _Captured
            return hook

        hooks = [m.register_forward_pre_hook(grab(n)) for n, m in self.mods.items()]
        try:
            self.model(X)
        except _Captured:
            pass
        finally:
            for h in hooks:
                h.remove()
        return got

    def outputs(self, coeffs, params: dict[str, torch.Tensor] | None = None,
                buffers: dict[str, torch.Tensor] | None = None, forward=None):
        """(outputs, batch) of every cached batch at center + sum_k coeffs[k] dirs[k].

        coeffs: k floats, or a (k,) tensor (inside torch.func.vmap).  params/buffers: that point's
        parameters for torch.func.functional_call, or None to run the model with the parameters it holds
        (which must be the same point).  forward: the model's forward as f(params, X, buffers), e.g. a
        lscape._modeleval.FastForward built with exclude=self.mods (default: the model itself)."""
        with self.installed():
            for b, (batch, parts) in enumerate(self.batches):
                X = batch.tensor
                for name, p in parts.items():
                    buf = None
                    if not isinstance(coeffs, torch.Tensor):
                        if (b, name) not in self._bufs:
                            self._bufs[b, name] = torch.empty_like(p[1])
                        buf = self._bufs[b, name]
                    self._now[name] = _combine(p, coeffs, buf)
                if forward is not None:
                    out = forward(params, X, buffers)
                elif params is None:
                    out = self.model(X)
                else:
                    out = torch.func.functional_call(self.model, (params, buffers or {}), (X,))
                yield out, batch

    @contextlib.contextmanager
    def installed(self):
        """Inside, each cached layer returns its output for the current point (an instance-level forward
        reading self._now) instead of computing it.  Re-entrant; a loop over many points installs once."""
        if self._installed:
            yield
            return
        self._installed = True
        try:
            with instance_forwards({m: (lambda key: lambda *a, **k: self._now[key])(name)
                                    for name, m in self.mods.items()}):
                yield
        finally:
            self._installed = False
            self._now.clear()

    @classmethod
    def of(cls, model: nn.Module, layout: FlatLayout, center: torch.Tensor, dirs: torch.Tensor,
           batches: Iterable, channels_last: bool | None = None) -> AffineCache | None:
        """The cache, or None where the trick does not apply (no input layer, or too large)."""
        first = next(iter(batches), None)
        if first is None or first.tensor is None:
            return None
        names = input_layers(model, layout, first.tensor, terms=1 + dirs.shape[0])
        if not names:
            return None
        try:
            return cls(model, layout, names, center, dirs, batches, channels_last=channels_last)
        except (MemoryError, NotCached):
            return None


def _flat_backed(model: nn.Module, layout: FlatLayout) -> tuple[nn.Module, torch.Tensor]:
    """A private copy of `model` whose parameters are views of one flat (D,) buffer: loading a point is
    then one copy."""
    copy_ = copy.deepcopy(model)
    flat = layout.flatten(copy_).clone()
    named = dict(copy_.named_parameters())
    for name, view in layout.split(flat).items():
        named[name].data = view
    return copy_, flat


def landscape_losses(landscape, origin: torch.Tensor, coeffs: torch.Tensor, dirs: torch.Tensor
                     ) -> torch.Tensor | None:
    """Loss of a Landscape.from_module at origin + coeffs @ dirs (origin (D,), coeffs (P, k), dirs (k, D),
    float64) through an AffineCache: (P,) in the landscape's dtype, or None where it does not apply (not a
    module landscape, bn='recompute', no input layer).  Points go one by one where the landscape's own
    evaluation does (into a private copy of the model), else vmapped `chunk` at a time."""
    model = getattr(landscape, "module", None)
    if model is None or landscape.bn != "eval":
        return None
    layout = FlatLayout.of(model)
    dt, dev = landscape.dtype, landscape.device
    if landscape.per_point:
        model, flat = _flat_backed(model, layout)
    # vmapped points run in the standard layout (FastForward's channels_last=False below)
    cache = AffineCache.of(model, layout, origin.to(dt), dirs.to(dt), landscape.data,
                           channels_last=None if landscape.per_point else False)
    if cache is None:
        return None
    objective = landscape.objective
    counts = [objective.count(b) for b, _ in cache.batches]
    total = sum(counts)
    fast = FastForward(model, exclude=cache.mods)  # the layers after the cached ones, BatchNorm folded

    def vfast(params, X, bufs):  # inside vmap: batched weights, standard layout
        return fast(params, X, bufs, channels_last=False)

    def mean_loss(outputs) -> torch.Tensor:
        if len(cache.batches) == 1:  # one batch: its loss is the mean (two tensor ops fewer per point)
            out, b = next(outputs)
            outputs.close()
            return objective.loss(out, b)
        s = 0.0
        for (out, b), n in zip(outputs, counts, strict=True):
            s = s + objective.loss(out, b) * n
        return s / total

    coeffs = coeffs.to(dev)
    buffers = dict(model.named_buffers())
    parts = []
    with torch.no_grad(), cache.installed(), narrow_linears(model, skip=cache.mods.values()):
        step = max(1, (POINT_BLOCK_ELEMS if landscape.per_point else BLOCK_ELEMS) // landscape.dim)
        step = step if landscape.per_point else landscape.chunk or step
        for i in range(0, coeffs.shape[0], step):
            c = coeffs[i:i + step]
            thetas = torch.addmm(origin.expand(c.shape[0], -1), c, dirs)
            if landscape.per_point:
                for theta, ci in zip(thetas, c.tolist(), strict=True):
                    flat.copy_(theta)  # rounds the float64 point to the model's dtype, as .to(dt) would
                    parts.append(mean_loss(cache.outputs(ci, forward=fast)).reshape(1))
            else:
                one = lambda th, ci: mean_loss(cache.outputs(ci, layout.split(th), buffers, vfast))  # noqa: E731
                parts.append(torch.func.vmap(one)(thetas.to(dt), c.to(dt)))
    return torch.cat(parts).to(dt)
