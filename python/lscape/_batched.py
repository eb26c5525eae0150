"""Many parameter points of one nn.Module in one forward pass (issue 26): `BatchedForward(fast)(params, X)`
is the model's output at B points, (B, N, ...), equal to B calls of `fast(params[b], X)` up to float rounding.

Why: on a small network (the digits CNN: 8 x 8 images, Conv(1 -> 8) - BatchNorm - ReLU - Linear) one
point's forward pass is a few thin kernels and most of its time is per-call overhead (Python, dispatch,
a convolution too narrow for the CPU's vector units).  Here the B points' layers run side by side:

- a convolution of the input (shared by every point) runs once with the B points' filters stacked,
  B * C_out output channels ("wide" layout (N, B * C, ...): the points' channels side by side);
- a convolution of a batched activation is one grouped convolution (B * groups groups) on the wide layout;
- a linear layer of the shared input is one matrix product with the B points' weights side by side; of a
  batched activation, one batched product (bmm);
- BatchNorms folded by lscape._modeleval (into the layer before them) are folded per point, from each
  point's weights, gamma, beta and the running statistics; ReLUs run in place on fresh intermediates.

The graph is FastForward's traced graph (BatchNorm folded), else a torch.fx trace of the model.  Any node
outside that small set (pooling, an unfolded BatchNorm, an arbitrary function) makes `supported` False
with `reason` set: the caller then evaluates its points one by one.  A shape the rules refuse at run time
raises `Unsupported`.
"""
from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn
from torch.nn import functional as F

from ._modeleval import _CONVS, FastForward, _conv_bn, _hooked, _linear_bn, _scale_shift

__all__ = ["BatchedForward", "Unsupported"]

_CONV_FNS = (F.conv1d, F.conv2d, F.conv3d)
_RELUS = (torch.relu, F.relu, torch.relu_)
_PASS = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)  # eval mode: the input itself


class Unsupported(Exception):
    """A graph node or shape BatchedForward does not evaluate: evaluate the points one by one."""


@dataclass
class _Act:
    """An activation at the B points: t is (B, N, ...) ("lead"), or (N, B * C, ...) (wide: the points'
    channels side by side, what a convolution reads and writes); fresh: a new tensor nothing else holds."""
    t: torch.Tensor
    wide: bool
    fresh: bool
    B: int

    def lead(self) -> torch.Tensor:
        if not self.wide:
            return self.t
        N, BC = self.t.shape[:2]
        return self.t.view(N, self.B, BC // self.B, *self.t.shape[2:]).transpose(0, 1)

    def as_wide(self) -> torch.Tensor:
        if self.wide:
            return self.t
        t = self.t.transpose(0, 1)  # (N, B, C, ...)
        return t.reshape(t.shape[0], -1, *t.shape[3:])


@dataclass
class _Param:
    """A parameter at the B points: (B, *shape)."""
    t: torch.Tensor


# the shared input's unfolded patches kept for the next call (the same inputs at every point) up to this
# many elements in all
MAX_UNFOLDED = 1 << 25


class _Unfolded:
    """F.unfold of shared inputs with a row of ones appended (the bias's column), (N, C_in * k + 1, L), kept
    per (input tensor, layer geometry)."""

    def __init__(self) -> None:
        self.entries: dict = {}

    def __call__(self, x: torch.Tensor, k, stride, padding, dilation) -> torch.Tensor:
        key = (x.data_ptr(), x._version, tuple(x.shape), x.dtype, tuple(k), tuple(stride), tuple(padding),
               tuple(dilation))
        hit = self.entries.get(key)
        if hit is not None and hit[0] is x:
            return hit[1]
        cols = F.unfold(x, k, dilation, padding, stride)
        cols = torch.cat([cols, cols.new_ones(cols.shape[0], 1, cols.shape[2])], 1)
        if sum(e[1].numel() for e in self.entries.values()) + cols.numel() <= MAX_UNFOLDED:
            self.entries[key] = (x, cols)  # holds x: no other tensor can take its address meanwhile
        return cols


class _Pool:
    """Output buffers reused call after call, one per (layer, shape): a fresh activation-sized tensor per
    call is fresh pages from the OS each time (page faults cost as much as the product that fills them)."""

    def __init__(self) -> None:
        self.buffers: dict = {}

    def get(self, key, shape, like: torch.Tensor) -> torch.Tensor:
        k = (key, tuple(shape), like.dtype, like.device)
        buf = self.buffers.get(k)
        if buf is None:
            buf = self.buffers[k] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf

    def holds(self, t: torch.Tensor) -> bool:
        ptr = t.untyped_storage().data_ptr()
        return any(b.untyped_storage().data_ptr() == ptr for b in self.buffers.values())


def _conv(x, w: torch.Tensor, b: torch.Tensor | None, dims: int, stride, padding, dilation, groups: int,
          unfolded: _Unfolded, pool: _Pool, key) -> _Act:
    """conv of x (a shared tensor or an _Act) with the B points' filters w (B, C_out, C_in / groups, *k).
    A 2-D convolution of the shared input is one product of the B points' stacked filters (B * C_out,
    C_in * k) with the input's unfolded patches (N, C_in * k, L): several times faster than a convolution
    on few input channels (the first layer), and its output is already the wide layout."""
    B, Co = w.shape[:2]
    wf = w.reshape(B * Co, *w.shape[2:])
    bf = None if b is None else b.reshape(B * Co)
    if isinstance(x, _Act):
        return _Act(_CONV_FNS[dims - 1](x.as_wide(), wf, bf, stride, padding, dilation, groups * B), True, True, B)
    if groups != 1:  # stacking output channels would interleave the points' groups
        raise Unsupported("a grouped convolution of the shared input")
    if dims == 2 and x.dim() == 4 and not isinstance(padding, str):
        cols = unfolded(x, w.shape[-2:], stride, padding, dilation)
        buf = pool.get(key, (cols.shape[0], B * Co, cols.shape[2]), cols)
        wb = torch.cat([wf.reshape(B * Co, -1), wf.new_zeros(B * Co, 1) if bf is None else bf[:, None]], 1)
        out = torch.matmul(wb, cols, out=buf)  # the bias as one more input row (of ones): no second pass
        size = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
                zip(x.shape[2:], padding, dilation, w.shape[-2:], stride, strict=True)]
        return _Act(out.view(x.shape[0], B * Co, *size), True, True, B)
    return _Act(_CONV_FNS[dims - 1](x, wf, bf, stride, padding, dilation, 1), True, True, B)


def _linear(x, w: torch.Tensor, b: torch.Tensor | None) -> _Act:
    """linear of x (a shared (N, I) tensor or an _Act of (N, I) per point) with weights w (B, O, I)."""
    B, O, I = w.shape
    if isinstance(x, _Act):
        xl = x.lead()
        if xl.dim() != 3:
            raise Unsupported("a linear layer of a batched input that is not (N, features)")
        out = torch.bmm(xl, w.transpose(1, 2)) if b is None else torch.baddbmm(b[:, None, :], xl, w.transpose(1, 2))
        return _Act(out, False, True, B)
    if x.dim() != 2:
        raise Unsupported("a linear layer of an input that is not (N, features)")
    wf = w.reshape(B * O, I).t()
    out = x @ wf if b is None else torch.addmm(b.reshape(B * O), x, wf)
    return _Act(out.view(x.shape[0], B, O).transpose(0, 1), False, True, B)


def _relu(x, in_place: bool):
    if not isinstance(x, _Act):
        return torch.relu(x)
    if in_place and x.fresh:
        return _Act(x.t.relu_(), x.wide, True, x.B)
    return _Act(torch.relu(x.t), x.wide, True, x.B)


def _flatten(x, start: int, end: int):
    """torch.flatten(x, 1) of each point's (N, ...) activation."""
    if start != 1 or end != -1:
        raise Unsupported("a flatten other than flatten(x, 1)")
    if not isinstance(x, _Act):
        return torch.flatten(x, 1)
    if x.wide:  # (N, B * C, ...) -> (N, B, C * ...): a view, the points' blocks stay contiguous
        t = x.t.reshape(x.t.shape[0], x.B, -1).transpose(0, 1)
        return _Act(t, False, False, x.B)  # a view: never written in place
    return _Act(x.t.flatten(2), False, False, x.B)


def _flatten_dims(args: list, kwargs: dict) -> tuple[int, int]:
    """(start_dim, end_dim) of a torch.flatten / Tensor.flatten call."""
    start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
    return start, args[2] if len(args) > 2 else kwargs.get("end_dim", -1)


def _add(a, b, in_place: bool):
    if isinstance(a, _Act) and isinstance(b, _Act):
        if a.wide and b.wide and a.t.shape == b.t.shape:
            return _Act(a.t.add_(b.t) if in_place and a.fresh else a.t + b.t, True, True, a.B)
        return _Act(a.lead() + b.lead(), False, True, a.B)
    if isinstance(b, _Act):
        a, b = b, a
    if isinstance(a, _Act):  # a batched plus a shared tensor (broadcast over the points)
        return _Act(a.lead() + b, False, True, a.B)
    return a + b


def _check(model: nn.Module, gm: torch.fx.GraphModule) -> str:
    """'' when every node of gm is one BatchedForward evaluates, else what is not."""
    mods = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        if node.op == "call_module":
            m = mods[node.target]
            ok = (type(m) in _CONVS and m.padding_mode == "zeros" or type(m) is nn.Linear or type(m) is nn.ReLU
                  or type(m) is nn.Flatten or type(m) in _PASS)
        elif node.op == "call_function":
            ok = node.target in (_conv_bn, _linear_bn, operator.add, torch.flatten, *_RELUS)
        else:  # call_method
            ok = node.target in ("relu", "relu_", "flatten")
        if not ok:
            what = type(mods[node.target]).__name__ if node.op == "call_module" else str(node.target)
            return f"the graph has a {what} ({node.name}), which only one-by-one evaluation runs"
    return ""


class BatchedForward:
    """The forward pass of `fast.model` at B parameter points at once (module docstring).  `supported`:
    whether it applies to this model; `reason`: why not."""

    def __init__(self, fast: FastForward) -> None:
        self.fast = fast
        self.gm: torch.fx.GraphModule | None = None
        self.reason = ""
        model = fast.model
        if _hooked(model):
            self.reason = "the model has forward hooks (they would see B points as one call)"
        elif fast.graph_module is not None:
            self.gm = fast.graph_module
        else:
            try:
                self.gm = torch.fx.GraphModule(model, torch.fx.Tracer().trace(model))
            except Exception as exc:  # noqa: BLE001 - a model fx cannot trace is evaluated point by point
                self.reason = f"torch.fx could not trace the model ({type(exc).__name__})"
        if self.gm is not None:
            self.reason = _check(model, self.gm)
        if self.reason:
            self.gm = None
        self._mods = {} if self.gm is None else dict(self.gm.named_modules())
        self._buffers = {} if self.gm is None else dict(self.gm.named_buffers())
        self._unfolded = _Unfolded()
        self._pool = _Pool()

    @property
    def supported(self) -> bool:
        """Whether the batched pass applies (and the folded BatchNorms are still in eval mode)."""
        return self.gm is not None and (self.gm is not self.fast.graph_module or self.fast.active)

    def __call__(self, params: Mapping[str, torch.Tensor], X: torch.Tensor,
                 buffers: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The outputs (B, N, ...) at the B points params {name: (B, *shape)} (FlatLayout.split of (B, D)
        points) on the inputs X (N, ...); buffers: {name: tensor} or None for the model's own (shared by
        every point)."""
        if not self.supported:
            raise Unsupported(self.reason or "the folded BatchNorms are in train mode")
        gm = self.gm
        B = next(iter(params.values())).shape[0]
        bufs = self._buffers if buffers is None else buffers
        env: dict = {}

        def val(a):
            if isinstance(a, torch.fx.Node):
                return env[a]
            if isinstance(a, (tuple, list)):
                return type(a)(val(v) for v in a)
            return a

        def par(name: str):
            if name in params:
                return params[name]
            return bufs[name] if name in bufs else None

        out = None
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                env[node] = X
            elif node.op == "get_attr":
                env[node] = _Param(params[node.target]) if node.target in params else bufs[node.target]
            elif node.op == "output":
                out = val(node.args[0])
            elif node.op == "call_module":
                env[node] = self._module(node, val(node.args[0]), params, par)
            elif node.op == "call_function":
                env[node] = self._function(node, [val(a) for a in node.args], B)
            else:  # call_method
                env[node] = _method(node, [val(a) for a in node.args])
        if isinstance(out, _Act):  # never a view of a reused buffer: the caller may keep it
            return out.lead().clone() if self._pool.holds(out.t) else out.lead()
        if isinstance(out, torch.Tensor):  # an output that no parameter reaches: the same at every point
            return out.expand(B, *out.shape)
        raise Unsupported("a model whose output is not one tensor")

    def _module(self, node: torch.fx.Node, x, params: Mapping[str, torch.Tensor], par: Callable):
        """A call_module node's value at the B points, x its input; par(name): a parameter or buffer, or None."""
        m = self._mods[node.target]
        if type(m) in _CONVS:
            return _conv(x, params[f"{node.target}.weight"], par(f"{node.target}.bias"),
                         list(_CONVS).index(type(m)) + 1, m.stride, m.padding, m.dilation, m.groups,
                         self._unfolded, self._pool, node.name)
        if type(m) is nn.Linear:
            return _linear(x, params[f"{node.target}.weight"], par(f"{node.target}.bias"))
        if type(m) is nn.ReLU:
            return _relu(x, len(node.args[0].users) == 1)
        if type(m) is nn.Flatten:
            return _flatten(x, m.start_dim, m.end_dim)
        return x  # _PASS

    def _function(self, node: torch.fx.Node, args: list, B: int):
        """A call_function node's value at the B points, args its arguments' values."""
        t = node.target
        if t is _conv_bn or t is _linear_bn:
            return self._folded(node, args, B)
        if t is operator.add:
            fresh_a = isinstance(node.args[0], torch.fx.Node) and len(node.args[0].users) == 1
            return _add(args[0], args[1], fresh_a)
        if t is torch.flatten:
            return _flatten(args[0], *_flatten_dims(args, node.kwargs))
        # a ReLU
        if node.kwargs.get("inplace", False):
            raise Unsupported("an in-place ReLU of a graph value")
        return _relu(args[0], isinstance(node.args[0], torch.fx.Node) and len(node.args[0].users) == 1)

    def _folded(self, node: torch.fx.Node, args: list, B: int) -> _Act:
        """A convolution or linear layer with the BatchNorm after it folded in, at the B points."""
        x, w, b, g, beta, mean, var = (args[0], *(_raw(a) for a in args[1:]))
        kw = node.kwargs
        s, shift = _scale_shift(b, g, beta, mean, var, kw["eps"])
        shift = shift.expand(B, -1) if shift.dim() == 1 else shift
        s = s.expand(B, -1) if s.dim() == 1 else s
        w = w * s.reshape(B, -1, *([1] * (w.dim() - 2)))
        if node.target is _linear_bn:
            return _linear(x, w, shift)
        return _conv(x, w, shift, kw["dims"], kw["stride"], kw["padding"], kw["dilation"], kw["groups"],
                     self._unfolded, self._pool, node.name)


def _raw(v):
    """A folded layer's argument as a tensor (or None)."""
    return None if v is None else v.t if isinstance(v, _Param) else v


def _method(node: torch.fx.Node, args: list):
    """A call_method node's value (relu / relu_ / flatten) at the B points, args its arguments' values."""
    if node.target == "flatten":
        return _flatten(args[0], *_flatten_dims(args, node.kwargs))
    if node.target == "relu_":
        raise Unsupported("an in-place ReLU of a graph value")
    return _relu(args[0], len(node.args[0].users) == 1)
