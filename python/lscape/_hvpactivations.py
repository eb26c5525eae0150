"""GELU (erf and tanh forms) and SiLU with their double backward written out (Hessian-vector products of
transformers).

For y = f(x) the first backward is gx = gO f'(x) (torch's fused gelu_backward / silu_backward) and the second,
for a cotangent gg of gx, is d/d(gO) = gg f'(x) (the same fused kernel) and d/dx = gg gO f''(x).  torch's own
double backward recomputes f'' from x in a chain of elementwise ops at every product; here f'(x) and gO f''(x)
are computed at the first product and kept (two activation-sized tensors per activation, for as long as the
gradient's graph lives), so each further product is three multiplies (the forward graph's backward, which
every product runs again, reads f'(x) too, instead of the fused kernel that recomputes it).  Under create_graph
(a third derivative) f' and f'' run as differentiable formulas instead, so every order stays exact:

    GELU (erf):  f' = Phi + x phi,  f'' = phi (2 - x^2)
    GELU (tanh): u = k (x + 0.044715 x^3), t = tanh u,  f' = (1 + t)/2 + x (1 - t^2) u'/2,
                 f'' = (1 - t^2) (u' - x t u'^2 + x u''/2)
    SiLU:        s = sigmoid x,  f' = s (1 + x (1 - s)),  f'' = s (1 - s) (2 + x (1 - 2 s))
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.nn import functional as F

from ._hvpbase import differentiating

__all__ = ["KINDS", "activation_with_value", "gelu", "silu"]

_aten = torch.ops.aten
KINDS = ("gelu", "gelu_tanh", "silu")
_K = math.sqrt(2.0 / math.pi)
_C = 0.044715


def _first(kind: str, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """g f'(x) by torch's fused kernel."""
    if kind == "silu":
        return _aten.silu_backward(g, x)
    return _aten.gelu_backward(g, x, approximate="tanh" if kind == "gelu_tanh" else "none")


def _derivatives(kind: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(f'(x), f''(x)) as differentiable torch ops (module docstring)."""
    if kind == "gelu":
        phi = torch.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
        return 0.5 * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0)))) + x * phi, phi * (2.0 - x * x)
    if kind == "gelu_tanh":
        x2 = x * x
        t = torch.tanh(_K * (x + _C * x2 * x))
        du, sech2 = _K * (1.0 + 3.0 * _C * x2), 1.0 - t * t
        return 0.5 * (1.0 + t) + 0.5 * x * sech2 * du, sech2 * (du - x * t * du * du + 3.0 * _K * _C * x2)
    s = torch.sigmoid(x)
    return s * (1.0 + x * (1.0 - s)), s * (1.0 - s) * (2.0 + x * (1.0 - 2.0 * s))


class _ActGrad(torch.autograd.Function):
    """(gO, x) -> gO f'(x), differentiable once more in gO and x.  cache: the activation's x, and f'(x) once
    a product has computed it (the forward graph's backward runs again at every product, and reads it too).
    After the first product only f'(x) and gO f''(x) are needed, so x and gO are let go: two activation-sized
    tensors less for as long as the graph lives (288 MiB on GPT-2 small)."""

    @staticmethod
    def forward(ctx, gO, x, kind, cache):
        # not saved tensors, so that they can be let go below
        ctx.kind, ctx.cache, ctx.curv, ctx.gO, ctx.x = kind, cache, None, gO, x
        return _first(kind, gO, x) if cache.d1 is None else gO * cache.d1

    @staticmethod
    def backward(ctx, gg):
        want_gO, want_x = ctx.needs_input_grad[:2]
        cache = ctx.cache
        if torch.is_grad_enabled():  # a third derivative: differentiable formulas
            if ctx.x is None:
                raise RuntimeError(
                    "hvp_mode: a third derivative through a gradient graph that has already served a plain "
                    "Hessian-vector product (its activations' inputs were let go): build the graph again")
            d1, d2 = _derivatives(ctx.kind, ctx.x)
            return gg * d1 if want_gO else None, gg * ctx.gO * d2 if want_x else None, None, None
        if ctx.curv is None:  # f'(x) and gO f''(x): the same at every product through this graph
            d1, d2 = _derivatives(ctx.kind, ctx.x)
            cache.d1, ctx.curv = d1, d2.mul_(ctx.gO)
            cache.x = ctx.x = ctx.gO = None
        return gg * cache.d1 if want_gO else None, gg * ctx.curv if want_x else None, None, None


class _Cache:
    """One activation call's input x (until a product has its f'(x)) and f'(x)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x, self.d1 = x, None


class _Act(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kind, value):
        ctx.kind, ctx.cache = kind, _Cache(x)  # x on the cache, not saved: let go after the first product
        return value()

    @staticmethod
    def backward(ctx, gO):
        cache = ctx.cache
        return _ActGrad.apply(gO, cache.x, ctx.kind, cache), None, None  # x is None once f'(x) is kept


def activation_with_value(x: torch.Tensor, kind: str, value: Callable[[], torch.Tensor]) -> torch.Tensor:
    """value() (the activation `kind` of x, computed as the caller computes it) with its double backward
    written out: how a module that composes GELU from elementwise ops gets it."""
    return _Act.apply(x, kind, value)


def gelu(input: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """F.gelu with the double backward written out (module docstring); the plain one where nothing is
    differentiated."""
    if not differentiating(input):
        return F.gelu(input, approximate=approximate)
    kind = "gelu_tanh" if approximate == "tanh" else "gelu"
    return _Act.apply(input, kind, lambda: F.gelu(input, approximate=approximate))


def silu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """F.silu (out of place: autograd keeps x) with the double backward written out; the plain one where
    nothing is differentiated."""
    if inplace or not differentiating(input):
        return F.silu(input, inplace=inplace)
    return _Act.apply(input, "silu", lambda: F.silu(input))
