"""Exact fast evaluation of an nn.Module at many parameter points (DESIGN.md, "Real networks at the
hardware's speed").

`FastForward(model)` is the model's forward as a function of its parameters, `f(params, X)`, equal to
`torch.func.functional_call(model, params, X)` up to float rounding, and faster:

- every BatchNorm in eval mode that directly follows a convolution or linear layer (and is that layer's
  only reader) is folded into it at each call, from that call's weights, gamma, beta and the running
  statistics: W' = W s, b' = (b - mean) s + beta with s = gamma / sqrt(var + eps).  The fold is ordinary
  differentiable torch code, so gradients and Hessian-vector products through it are exact;
- 2-D convolutions run channels-last (`channels_last=True`; the input is converted once, the layout
  then carries through the network), which the CPU's convolution kernels run faster.

What it cannot fold runs as it is, and a model it cannot trace (torch.fx: data-dependent control flow),
one with forward hooks, or one whose folded BatchNorms are put in train mode later is evaluated by plain
functional_call: `folded` lists the (layer, BatchNorm) pairs folded, `reason` says why none were.  A
traced forward runs the model's Python code once, at tracing: side effects in a forward (a call counter)
are not repeated; count with a forward hook instead (which keeps the model plain).

    fast = FastForward(model, exclude=("conv",))   # keep layer "conv" as it is (e.g. lscape._affine's)
    out = fast(layout.split(theta), X)             # any point, differentiable (vmap-able)
    out = fast(None, X)                            # the parameters the model holds now
"""
from __future__ import annotations

import copy
import math
import operator
from collections.abc import Collection, Mapping

import torch
import torch.fx
from torch import nn
from torch.nn import functional as F

from . import _hvpops

__all__ = ["FastForward", "fold_pairs", "forward_cost", "prefers_channels_last"]

_CONVS = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def prefers_channels_last(model: nn.Module) -> bool:
    """Whether `model` runs faster channels-last: it has a 2-D convolution and lives on the CPU (oneDNN's
    convolutions read NHWC without the reorders NCHW costs)."""
    first = next(model.parameters(), None)
    return first is not None and first.device.type == "cpu" and any(type(m) is nn.Conv2d for m in model.modules())


def forward_cost(model: nn.Module, X) -> tuple[float, float]:
    """(multiply-adds, activation elements) per sample of one forward pass of `model` on X (a tensor or an
    lscape._modelio.Batch; a few rows suffice): the Linear and Conv layers' outputs times their fan-in, and
    every leaf module's output size.  Counted with temporary forward hooks, under no_grad, the model left as
    it was (eval mode assumed: a BatchNorm in train mode would move its statistics).  Functional ops outside
    modules are not counted."""
    macs, elems = [0.0], [0.0]

    def hook(m, _args, out):
        if isinstance(out, torch.Tensor):
            elems[0] += out.numel()
            if type(m) is nn.Linear:
                macs[0] += out.numel() * m.in_features
            elif type(m) in _CONVS:
                macs[0] += out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model(X) if isinstance(X, torch.Tensor) else X.call(model)
    finally:
        for h in handles:
            h.remove()
    n = max(1, X.shape[0] if isinstance(X, torch.Tensor) else X.rows)
    return macs[0] / n, elems[0] / n


def _foldable_bn(bn: nn.Module) -> bool:
    """A BatchNorm that is a fixed per-channel affine map: eval mode, with running statistics."""
    return (type(bn) in _BNS and not bn.training and bn.track_running_stats
            and bn.running_mean is not None and bn.running_var is not None)


def _foldable_layer(m: nn.Module) -> bool:
    # exact types: a subclass may compute its output differently (its own forward, a parametrization)
    return type(m) is nn.Linear or type(m) in _CONVS and m.padding_mode == "zeros"


def _hooked(model: nn.Module) -> bool:
    """Whether any module has forward (pre-)hooks, or global module hooks are set: a hook may change an
    output or count calls, and a traced graph would skip those of the modules it folds or traces through."""
    from torch.nn.modules import module as _module

    if _module._global_forward_hooks or _module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _scale_shift(b, g, beta, mean, var, eps: float):
    """The BatchNorm's y = s x + t folded onto a layer with bias b: (s, b') with b' = (b - mean) s + beta."""
    s = torch.rsqrt(var + eps)
    if g is not None:
        s = g * s
    shift = (-mean if b is None else b - mean) * s
    return s, shift if beta is None else shift + beta


def _conv_bn(x, w, b, g, beta, mean, var, *, eps: float, dims: int, stride, padding, dilation, groups):
    """conv(x) followed by eval-mode BatchNorm, as one convolution with folded weights.  Inside
    lscape._hvpops.hvp_mode (Hessian-vector products): folded once per block, the double backward written
    out."""
    if _hvpops.active():
        w, shift = _hvpops.once(_fold_conv, w, b, g, beta, mean, var, eps)
        return _hvpops.conv(x, w, shift, stride, padding, dilation, groups)
    w, shift = _fold_conv(w, b, g, beta, mean, var, eps)
    return (F.conv1d, F.conv2d, F.conv3d)[dims - 1](x, w, shift, stride, padding, dilation, groups)


def _fold_conv(w, b, g, beta, mean, var, eps: float):
    """(the convolution's weight with the BatchNorm folded in, its bias)."""
    s, shift = _scale_shift(b, g, beta, mean, var, eps)
    return w * s.reshape(-1, *([1] * (w.dim() - 1))), shift


def _mkldnn_conv_relu():
    """torch's oneDNN convolution with a fused ReLU post-op (what torch.compile's CPU backend calls), or None
    where this build lacks it.  The ReLU is applied to the same float32 sums: the values are identical."""
    op = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)
    return op if op is not None and torch.backends.mkldnn.is_available() else None


_CONV_RELU = _mkldnn_conv_relu()


def _conv_bn_relu(x, w, b, g, beta, mean, var, *, eps: float, dims: int, stride, padding, dilation, groups):
    """relu(_conv_bn(...)) for no-grad calls: one oneDNN convolution with the ReLU fused where it applies
    (a float32 2-D convolution on the CPU with numeric padding), else the two steps, the ReLU in place."""
    if _CONV_RELU is not None and dims == 2 and x.device.type == "cpu" and x.dtype == torch.float32 \
            and not isinstance(padding, str) and x.dim() == 4:
        wf, shift = _fold_conv(w, b, g, beta, mean, var, eps)
        try:
            return _CONV_RELU(x, wf, shift, list(padding), list(stride), list(dilation), groups, "relu", [], "")
        except (RuntimeError, TypeError):  # an input (or a torch version) this private op refuses: two steps
            pass
    return torch.relu_(_conv_bn(x, w, b, g, beta, mean, var, eps=eps, dims=dims, stride=stride, padding=padding,
                                dilation=dilation, groups=groups))


def _linear_bn(x, w, b, g, beta, mean, var, *, eps: float):
    """linear(x) followed by eval-mode BatchNorm1d, as one linear layer with folded weights (2-D x: the
    features are BatchNorm's channels; other ranks are evaluated unfused, as BatchNorm1d reads them)."""
    if x.dim() != 2:
        return F.batch_norm(F.linear(x, w, b), mean, var, g, beta, False, 0.0, eps)
    s, shift = _scale_shift(b, g, beta, mean, var, eps)
    return F.linear(x, w * s[:, None], shift)


def fold_pairs(model: nn.Module, graph: torch.fx.Graph, exclude: Collection[str] = ()) -> list[tuple]:
    """(layer node, BatchNorm node) pairs of a traced graph that fold: an exact nn.Linear / nn.Conv1d/2d/3d
    (zero padding, not in `exclude`) whose only reader is an eval-mode BatchNorm with running statistics
    and as many channels as the layer has outputs."""
    mods = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not _foldable_bn(mods[node.target]) or len(node.args) != 1 or node.kwargs:
            continue
        prev = node.args[0]
        if not isinstance(prev, torch.fx.Node) or prev.op != "call_module" or prev.target in exclude:
            continue
        layer = mods[prev.target]
        if not _foldable_layer(layer) or len(prev.users) != 1 or len(prev.args) != 1 or prev.kwargs:
            continue
        width = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        if width == mods[node.target].num_features:
            pairs.append((prev, node))
    return pairs


def _folded_graph(model: nn.Module, exclude: Collection[str]) -> tuple[torch.fx.GraphModule | None, tuple, str]:
    """(graph module with the pairs fused, the (layer, BatchNorm) names folded, why nothing was)."""
    if not any(_foldable_bn(m) for m in model.modules()):
        return None, (), "no BatchNorm in eval mode with running statistics"
    if _hooked(model):
        return None, (), "the model has forward hooks (tracing would drop them)"
    try:
        graph = torch.fx.Tracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - a model fx cannot trace is evaluated plainly
        return None, (), f"torch.fx could not trace the model ({type(exc).__name__})"
    mods = dict(model.named_modules())
    pairs = fold_pairs(model, graph, exclude)
    if not pairs:
        return None, (), "no BatchNorm directly after a convolution or linear layer"
    for layer_node, bn_node in pairs:
        layer, bn = mods[layer_node.target], mods[bn_node.target]

        def attr(owner: str, name: str, present: bool):
            return graph.get_attr(f"{owner}.{name}") if present else None

        with graph.inserting_before(bn_node):
            args = (layer_node.args[0], attr(layer_node.target, "weight", True),
                    attr(layer_node.target, "bias", layer.bias is not None),
                    attr(bn_node.target, "weight", bn.weight is not None),
                    attr(bn_node.target, "bias", bn.bias is not None),
                    attr(bn_node.target, "running_mean", True), attr(bn_node.target, "running_var", True))
            if isinstance(layer, nn.Linear):
                fused = graph.call_function(_linear_bn, args, {"eps": bn.eps})
            else:
                fused = graph.call_function(_conv_bn, args, {
                    "eps": bn.eps, "dims": list(_CONVS).index(type(layer)) + 1, "stride": layer.stride,
                    "padding": layer.padding, "dilation": layer.dilation, "groups": layer.groups})
        bn_node.replace_all_uses_with(fused)
        graph.erase_node(bn_node)
        graph.erase_node(layer_node)
    graph.lint()
    gm = torch.fx.GraphModule(model, graph)
    return gm, tuple((a.target, b.target) for a, b in pairs), ""


def _add_into(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b written into a (a fresh intermediate nothing else reads) when the sum has a's shape and dtype."""
    if a.shape == torch.broadcast_shapes(a.shape, b.shape) and a.dtype == torch.result_type(a, b):
        return a.add_(b)
    return a + b


_RELUS = (torch.relu, F.relu)
# nodes whose output is a new tensor (never a view of an input, a parameter or another node's output)
_FRESH_FUNCS = {_conv_bn, _conv_bn_relu, _linear_bn, operator.add, _add_into, torch.relu, torch.relu_, F.relu}
_FRESH_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, *_BNS)


def _inplace_graph(gm: torch.fx.GraphModule, exclude: Collection[str] = ()) -> torch.fx.GraphModule:
    """gm with each ReLU and residual sum whose input is a fresh intermediate read by nothing else done in
    place: no new activation-sized tensor (an allocation and its page faults) per layer.  For no-grad
    calls only: autograd and vmap are left the out-of-place graph.  Layers in `exclude`, or with a forward
    of their own, may return a tensor that something else holds (lscape._affine's cached sums): their
    outputs are never written."""
    graph = copy.deepcopy(gm.graph)
    mods = dict(gm.named_modules())

    def fresh(n) -> bool:
        if not isinstance(n, torch.fx.Node) or len(n.users) != 1:
            return False
        if n.op == "call_function":  # F.relu(x, inplace=True) returns x itself
            return n.target in _FRESH_FUNCS and not n.kwargs.get("inplace", False)
        return (n.op == "call_module" and type(mods[n.target]) in _FRESH_MODULES and n.target not in exclude
                and "forward" not in mods[n.target].__dict__)

    for node in list(graph.nodes):
        relu = (node.op == "call_function" and node.target in _RELUS and not node.kwargs.get("inplace", False)
                or node.op == "call_module" and type(mods[node.target]) is nn.ReLU)
        if relu and len(node.args) == 1 and fresh(node.args[0]):
            src = node.args[0]
            with graph.inserting_before(node):
                if src.op == "call_function" and src.target is _conv_bn:  # one oneDNN call with the ReLU fused
                    new = graph.call_function(_conv_bn_relu, src.args, src.kwargs)
                else:
                    new = graph.call_function(torch.relu_, (src,))
        elif node.op == "call_function" and node.target is operator.add and len(node.args) == 2 and not node.kwargs:
            a, b = node.args
            if not fresh(a) and fresh(b) and isinstance(a, torch.fx.Node):
                a, b = b, a  # floating-point addition commutes exactly
            if not (fresh(a) and isinstance(b, torch.fx.Node)):
                continue
            with graph.inserting_before(node):
                new = graph.call_function(_add_into, (a, b))
        else:
            continue
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        if new.target is _conv_bn_relu:
            graph.erase_node(src)
    graph.lint()
    return torch.fx.GraphModule(gm, graph)


def _hvp_graph(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """gm with its out-of-place ReLUs running lscape._hvpops.relu (the graphs Hessian-vector products
    differentiate twice; its folded convolutions switch to _hvpops.conv by themselves)."""
    graph = copy.deepcopy(gm.graph)
    for node in graph.nodes:
        if node.op == "call_function" and node.target in _RELUS and len(node.args) == 1 \
                and not node.kwargs.get("inplace", False):
            node.target, node.kwargs = _hvpops.relu, {}
    graph.lint()
    return torch.fx.GraphModule(gm, graph)


class FastForward:
    """`model`'s forward as f(params, X), BatchNorm folded and 2-D convolutions channels-last (module
    docstring).  params: {name: tensor} as for torch.func.functional_call (a FlatLayout.split of a point),
    or None for the parameters the model holds; buffers: {name: tensor} or None for the model's own.
    exclude: names of layers never folded (they run as modules: an instance-level forward installed on
    them, as lscape._affine does, stays in effect).  channels_last: None picks it for models with a 2-D
    convolution on the CPU."""

    def __init__(self, model: nn.Module, *, exclude: Collection[str] = (), channels_last: bool | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: got {type(model).__name__}, expected a torch.nn.Module")
        self.model = model
        self.graph_module, self.folded, self.reason = _folded_graph(model, set(exclude))
        self._inplace = None if self.graph_module is None else _inplace_graph(self.graph_module, set(exclude))
        self._hvp: torch.fx.GraphModule | None = None  # _hvp_graph's, built on first use
        bn_names = {b for _, b in self.folded}
        self._bns = [m for n, m in model.named_modules() if n in bn_names]
        if self.graph_module is not None:
            self._names = {n for n, _ in self.graph_module.named_parameters()} | \
                {n for n, _ in self.graph_module.named_buffers()}
        self.channels_last = prefers_channels_last(model) if channels_last is None else bool(channels_last)

    @property
    def active(self) -> bool:
        """Whether the folded graph is used now (its BatchNorms still in eval mode)."""
        return self.graph_module is not None and not any(bn.training for bn in self._bns)

    def __call__(self, params: Mapping[str, torch.Tensor] | None, X,
                 buffers: Mapping[str, torch.Tensor] | None = None, *,
                 channels_last: bool | None = None):
        """The model's output on X at params (see the class docstring); X a tensor or an
        lscape._modelio.Batch (a tuple or mapping of inputs: the model runs plainly, nothing folded);
        channels_last: None for the evaluator's choice, False inside torch.func.vmap (batched weights)."""
        args, kwargs = ((X,), {}) if isinstance(X, torch.Tensor) else X.args()
        one = len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor)
        if one and (self.channels_last if channels_last is None else channels_last) and args[0].dim() == 4:
            args = (args[0].contiguous(memory_format=torch.channels_last),)
        fold = self.active and one
        module = self.graph_module if fold else self.model
        if fold and not torch._C._are_functorch_transforms_active():
            if not torch.is_grad_enabled():
                module = self._inplace  # nothing will differentiate: ReLUs and residual sums in place
            elif _hvpops.active():  # a graph to differentiate twice: ReLUs with their double backward written out
                if self._hvp is None:
                    self._hvp = _hvp_graph(self.graph_module)
                module = self._hvp
        if params is None and buffers is None:
            return module(*args, **kwargs)
        state = {**({} if buffers is None else buffers), **({} if params is None else params)}
        if fold:
            state = {k: v for k, v in state.items() if k in self._names}
        return torch.func.functional_call(module, state, args, kwargs)
