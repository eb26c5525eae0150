"""Ops whose second derivatives are written out: the Hessian-vector products of conv nets.

A Hessian-vector product differentiates the gradient's graph again (double backward).  Two of torch's
double backwards waste work on the networks people study:

- a convolution's computes its weight-gradient term as a convolution of the transposed inputs (batch and
  channels swapped, the activation map as the kernel: a 3 x 3 output of a 32 x 32 "kernel"), which
  oneDNN runs at half its usual rate, after copying both operands.  `conv` is the same convolution as an
  autograd.Function whose backward is itself a Function (`_ConvGrad`), so the double backward is written
  out: for the gradient's (gI, gW) = backward(gO, x, w) and incoming (ggI, ggW),

      d/dgO = conv(ggI, w) + conv(x, ggW)
      d/dx  = the input gradient of a convolution with weight ggW at gO
      d/dw  = the weight gradient of a convolution with input ggI at gO

  each on the kernels torch's first backward uses;
- a ReLU's returns an activation-sized tensor of zeros for the derivative of its mask, which autograd then
  adds into the activation's gradient.  `relu`'s double backward returns nothing there (the mask is
  piecewise constant: its derivative is zero wherever it exists, as torch's own zeros say).

On a width-x4 BatchNorm ResNet-20 (128 images, one thread, alternated in one process) a product took
7.0-7.1 s against 7.7-7.9 s with torch's own (and 8.2-8.5 s before `conv`), the values equal to float32
rounding; bench/hessian_hvp_methods.py and bench/hessian_resnet.py measure it.

`hvp_mode(model)`: while entered, the model's exact-type nn.Conv1d/2d/3d with zero padding and numeric
`padding`, and its nn.ReLU(inplace=False), run these (an instance-level forward, removed on exit; a
module with a forward of its own is left alone), and lscape._modeleval's folded graph runs them too,
folding each BatchNorm into its convolution once per block (`once`) instead of once per call (the
graph's slices share it).  Only where autograd builds the graph: under torch.func transforms (vmap,
jacrev) the plain ops run, whose batching rules those need.  Past the second order, derivatives are
torch's own (the backwards are made of differentiable aten ops), so every order stays exact.

Transformers (issue 36): while entered, hvp_mode also runs, wherever the model calls them, attention
(F.scaled_dot_product_attention, whose fused kernels have no double backward in torch: lscape._hvpattention),
LayerNorm and RMSNorm (_hvpnorms), GELU and SiLU (_hvpactivations), embeddings (_hvpembedding) and softmax
cross-entropy (_hvploss) with their double backwards written out, and `model`'s Hugging Face-style GELU and
RMSNorm modules too (_hvpintercept, which says how they are caught).  Each calls the original op for its
value, so the model computes bit for bit what it computes outside the block.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ._fastops import instance_forwards
from ._hvpattention import HessianDropoutError
from ._hvpintercept import Intercept, module_forwards

__all__ = ["HessianDropoutError", "active", "conv", "hvp_mode", "once", "relu"]

_aten = torch.ops.aten
_ACTIVE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("lscape_hvp_mode", default=None)  # once's memo
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PLAIN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _forward(x, w, b, stride, padding, dilation, groups):
    return _aten.convolution(x, w, b, stride, padding, dilation, False, [0] * (w.dim() - 2), groups)


def _backward(gO, x, w, stride, padding, dilation, groups, mask):
    """(input gradient, weight gradient) of the convolution at gO, each only where mask asks (else None)."""
    gI, gW, _ = _aten.convolution_backward(gO, x, w, None, stride, padding, dilation, False,
                                           [0] * (w.dim() - 2), groups, [mask[0], mask[1], False])
    return gI, gW


class _ConvGrad(torch.autograd.Function):
    """(gO, x, w) -> (gI, gW): a convolution's backward as a function, differentiable once more."""

    @staticmethod
    def forward(ctx, gO, x, w, stride, padding, dilation, groups, need_x, need_w):
        ctx.save_for_backward(gO, x, w)
        ctx.args = (stride, padding, dilation, groups)
        return _backward(gO, x, w, *ctx.args, (need_x, need_w))

    @staticmethod
    def backward(ctx, ggI, ggW):  # aten ops with derivatives of their own: a third order stays exact
        gO, x, w = ctx.saved_tensors
        args = ctx.args
        want_gO, want_x, want_w = ctx.needs_input_grad[:3]
        dgO = dx = dw = None
        if want_gO:
            if ggI is not None:
                dgO = _forward(ggI, w, None, *args)
            if ggW is not None:
                t = _forward(x, ggW, None, *args)
                dgO = t if dgO is None else dgO.add_(t)
        if want_x and ggW is not None:
            dx = _backward(gO, x, ggW, *args, (True, False))[0]
        if want_w and ggI is not None:
            dw = _backward(gO, ggI, w, *args, (False, True))[1]
        return dgO, dx, dw, None, None, None, None, None, None


class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, stride, padding, dilation, groups):
        ctx.save_for_backward(x, w)
        ctx.args = (stride, padding, dilation, groups)
        return _forward(x, w, b, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, gO):
        x, w = ctx.saved_tensors
        want_x, want_w, want_b = ctx.needs_input_grad[:3]
        gI, gW = _ConvGrad.apply(gO, x, w, *ctx.args, want_x, want_w) if want_x or want_w else (None, None)
        gb = gO.sum((0, *range(2, gO.dim()))) if want_b else None
        return gI, gW, gb, None, None, None, None


def _per_dim(name: str, v, dims: int) -> list[int]:
    v = [v] * dims if isinstance(v, int) else list(v)
    if len(v) != dims or not all(isinstance(i, int) for i in v):
        raise ValueError(f"{name}: got {v!r}, expected an int or {dims} ints")
    return v


def conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, stride: int | Sequence[int] = 1,
         padding: int | Sequence[int] | str = 0, dilation: int | Sequence[int] = 1,
         groups: int = 1) -> torch.Tensor:
    """F.conv1d/2d/3d (by w's rank: (C_out, C_in / groups, *kernel)) with the double backward written out
    (module docstring).  String padding ("same", "valid") and calls under torch.func transforms run the
    plain function."""
    dims = w.dim() - 2
    if isinstance(padding, str) or torch._C._are_functorch_transforms_active():
        return _PLAIN[dims](x, w, b, stride, padding, dilation, groups)
    return _Conv.apply(x, w, b, _per_dim("stride", stride, dims), _per_dim("padding", padding, dims),
                       _per_dim("dilation", dilation, dims), groups)


class _ReLUGrad(torch.autograd.Function):
    """(gO, y) -> gO where y > 0: a ReLU's backward, differentiable once more in gO only."""

    @staticmethod
    def forward(ctx, gO, y):
        ctx.save_for_backward(y)
        return _aten.threshold_backward(gO, y, 0)

    @staticmethod
    def backward(ctx, gg):
        (y,) = ctx.saved_tensors
        return _ReLUGrad.apply(gg, y), None


class _ReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = torch.relu(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, gO):
        (y,) = ctx.saved_tensors
        return _ReLUGrad.apply(gO, y)


def relu(x: torch.Tensor) -> torch.Tensor:
    """torch.relu with the double backward written out (module docstring); the plain one under torch.func
    transforms."""
    if torch._C._are_functorch_transforms_active():
        return torch.relu(x)
    return _ReLU.apply(x)


def active() -> bool:
    """Whether an hvp_mode block is entered (lscape._modeleval's folded graph asks)."""
    return _ACTIVE.get() is not None


def once(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args), computed once per hvp_mode block for the same argument objects (tensors: the same
    tensors, not equal ones), and at every call outside one.  The memo holds the arguments, so their ids
    stay theirs while it lives."""
    memo = _ACTIVE.get()
    if memo is None:
        return fn(*args)
    key = (fn, *map(id, args))
    if key not in memo:
        memo[key] = (fn(*args), args)
    return memo[key][0]


def _module_forward(m: nn.Module):
    if isinstance(m, nn.ReLU):
        return relu

    def forward(x: torch.Tensor) -> torch.Tensor:
        return conv(x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)
    return forward


def _swapped(m: nn.Module) -> bool:
    if "forward" in m.__dict__:
        return False
    if type(m) is nn.ReLU:
        return not m.inplace  # an in-place ReLU changes its input, which the model may read again
    return type(m) in _CONV_TYPES and m.padding_mode == "zeros" and not isinstance(m.padding, str)


@contextlib.contextmanager
def hvp_mode(model: nn.Module | None = None):
    """While entered, convolutions and ReLUs run `conv` and `relu` (module docstring): `model`'s modules
    (None: none of a module's, only lscape._modeleval's folded graph); attention, LayerNorm / RMSNorm, GELU,
    SiLU, embeddings and cross-entropy run theirs wherever they are called (lscape._hvpintercept), and so do
    `model`'s Hugging Face-style GELU and RMSNorm modules.  Attention dropout is HessianDropoutError."""
    forwards = {} if model is None else {m: _module_forward(m) for m in model.modules() if _swapped(m)}
    if model is not None:
        forwards.update(module_forwards(model))
    token = _ACTIVE.set({})
    try:
        with instance_forwards(forwards), Intercept():
            yield
    finally:
        _ACTIVE.reset(token)
