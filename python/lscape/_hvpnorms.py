"""LayerNorm and RMSNorm with their double backward written out (Hessian-vector products of transformers).

torch's double backward of layer_norm (NativeLayerNormBackwardBackward) is a long chain of elementwise ops.
Over the K normalised features of a row, with x^ = (x - mu) r, r = rsqrt(var + eps), y = x^ w + b
(RMSNorm: mu = 0, r = rsqrt(mean(x^2) + eps)) the first backward is gx = N(gy w), gw = sum_rows gy x^,
gb = sum_rows gy, with N(u) = r (u - mean(u) - x^ mean(u x^)) (RMSNorm: no mean(u)).  N is symmetric, so for
cotangents (a, c, e) of (gx, gw, gb), with u = gy w and means over the row:

    d/d(gy) = w N(a) + c x^ + e          d/dw = sum_rows gy N(a)
    G = -r (u mean(a x^) + mean(u x^) a) + gy c
    d/dx = N(G) - r^2 x^ (mean(u a) - mean(u) mean(a) - mean(u x^) mean(a x^))     (RMSNorm: no mean(u) mean(a))

(the last term: the loss's explicit r, through dr/dx = -r^2 x^ / K).  The values are the original op's
(F.layer_norm, F.rms_norm, or a module's own forward for Hugging Face's RMSNorm classes); LayerNorm's first
backward is torch's fused kernel.  Under create_graph (a third derivative) the same formulas run as
differentiable ops with x^ and r recomputed from x, so every order stays exact.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch.nn import functional as F

from ._hvpbase import differentiating, keep

__all__ = ["layer_norm", "norm_with_value", "rms_norm"]

_aten = torch.ops.aten


class _Spec:
    def __init__(self, shape: Sequence[int], eps: float, centered: bool, has_bias: bool):
        self.shape, self.eps, self.centered, self.has_bias = list(shape), eps, centered, has_bias
        self.K = math.prod(self.shape)


def _stats(spec: _Spec, x2: torch.Tensor):
    """(mu or None, r) of x2 (M, K): (M, 1) each, differentiable."""
    if spec.centered:
        mu = x2.mean(-1, keepdim=True)
        return mu, torch.rsqrt(x2.var(-1, unbiased=False, keepdim=True) + spec.eps)
    return None, torch.rsqrt(x2.pow(2).mean(-1, keepdim=True) + spec.eps)


def _normalised(x2, mu, r):
    if mu is None:
        return x2 * r
    return (x2 - mu) * r if torch.is_grad_enabled() else torch.sub(x2, mu).mul_(r)


def _mean(t: torch.Tensor) -> torch.Tensor:
    return t.mean(-1, keepdim=True)


def _nback(u, xh, r, centered, k=None, fresh=False):
    """N(u) = r (u - mean(u) - x^ k) over each row, k = mean(u x^) unless given (RMSNorm: centered False, no
    mean(u)); fresh: u is a temporary of the caller's, overwritten where nothing is differentiated."""
    k = _mean(u * xh) if k is None else k
    m = _mean(u) if centered else None
    if fresh and not torch.is_grad_enabled():
        t = u.addcmul_(xh, k, value=-1)
        return (t if m is None else t.sub_(m)).mul_(r)
    t = torch.addcmul(u, xh, k, value=-1)
    return (t if m is None else t - m) * r


class _NormGrad(torch.autograd.Function):
    """(gy, x, w, mu, r) -> (gx, gw, gb): a norm's first backward, differentiable once more in gy, x, w."""

    @staticmethod
    def forward(ctx, gy, x, w, mu, r, spec):
        keep(ctx, spec, gy, x, w, mu, r)
        if spec.centered:  # torch's fused backward, on its own statistics' layout (only the bias' shape is read)
            shape = x.shape[:x.dim() - len(spec.shape)] + (1,) * len(spec.shape)
            return _aten.native_layer_norm_backward(gy, x, spec.shape, mu.reshape(shape), r.reshape(shape), w,
                                                    w if spec.has_bias else None, [True, True, spec.has_bias])
        x2, g2 = x.reshape(-1, spec.K), gy.reshape(-1, spec.K)
        xh = x2 * r
        return _nback(g2 * w.reshape(-1), xh, r, False).reshape(x.shape), (g2 * xh).sum(0).reshape(w.shape), None

    @staticmethod
    def backward(ctx, a, c, e):
        gy, x, w, mu, r = ctx.saved_tensors
        spec = ctx.spec
        K, cen = spec.K, spec.centered
        x2, g2, w1 = x.reshape(-1, K), gy.reshape(-1, K), w.reshape(-1)
        grad = torch.is_grad_enabled()
        if grad:  # a third derivative: x^ and r as functions of x
            mu, r = _stats(spec, x2)
        xh = _normalised(x2, mu, r)
        a2 = torch.zeros_like(x2) if a is None else a.reshape(-1, K)
        c1 = None if c is None else c.reshape(-1)
        A2 = _mean(a2 * xh)
        ah = _nback(a2, xh, r, cen, A2)
        dgy = ah * w1
        if c1 is not None:
            dgy = torch.addcmul(dgy, xh, c1) if grad else dgy.addcmul_(xh, c1)
        if e is not None:
            dgy = dgy + e.reshape(-1) if grad else dgy.add_(e.reshape(-1))
        dw = (g2 * ah).sum(0)
        u = g2 * w1
        U2, T = _mean(u * xh), _mean(u * a2)
        T = T - U2 * A2 - _mean(u) * _mean(a2) if cen else T - U2 * A2
        # G = -r (u A2 + U2 a) + gy c, in u's place; d/dx = N(G) - r^2 x^ T
        G = torch.addcmul(u * (-r * A2), a2, -r * U2) if grad else u.mul_(-r * A2).addcmul_(a2, -r * U2)
        if c1 is not None:
            G = torch.addcmul(G, g2, c1) if grad else G.addcmul_(g2, c1)
        dx = _nback(G, xh, r, cen, _mean(G * xh) + r * T, fresh=True)
        return dgy.reshape(gy.shape), dx.reshape(x.shape), dw.reshape(w.shape), None, None, None


class _Norm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, spec, value):
        y, mu, r = value()
        keep(ctx, spec, x, w, mu, r)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, w, mu, r = ctx.saved_tensors
        gx, gw, gb = _NormGrad.apply(gy, x, w, mu, r, ctx.spec)
        return gx, gw, gb if ctx.spec.has_bias else None, None, None


def layer_norm(input: torch.Tensor, normalized_shape: Sequence[int], weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """F.layer_norm (x (..., *normalized_shape), weight and bias normalized_shape) with the double backward
    written out (module docstring); the plain function without a weight, or where nothing is differentiated."""
    shape = [normalized_shape] if isinstance(normalized_shape, int) else list(normalized_shape)
    x = input
    if weight is None or not differentiating(x, weight, bias):
        return F.layer_norm(x, shape, weight, bias, eps)
    spec = _Spec(shape, eps, True, bias is not None)

    def value():  # F.layer_norm is native_layer_norm's output; its statistics come with it
        y, mu, r = torch.native_layer_norm(x, shape, weight, bias, eps)
        return y, mu.reshape(-1, 1), r.reshape(-1, 1)
    return _Norm.apply(x, weight, bias, spec, value)


def norm_with_value(x: torch.Tensor, weight: torch.Tensor, eps: float, value: Callable[[], torch.Tensor],
                    centered: bool = False) -> torch.Tensor:
    """value() (a norm over x's trailing weight.shape dimensions: y = x^ weight, module docstring) with the
    norm's double backward written out: how a module that computes RMSNorm from elementwise ops gets it."""
    spec = _Spec(weight.shape, eps, centered, False)

    def stats():
        with torch.no_grad():
            mu, r = _stats(spec, x.reshape(-1, spec.K))
        return value(), mu, r
    return _Norm.apply(x, weight, None, spec, stats)


def rms_norm(input: torch.Tensor, normalized_shape: Sequence[int], weight: torch.Tensor | None = None,
             eps: float | None = None) -> torch.Tensor:
    """F.rms_norm with the double backward written out (module docstring); the plain function without a
    weight, or where nothing is differentiated."""
    shape = [normalized_shape] if isinstance(normalized_shape, int) else list(normalized_shape)
    x = input
    if weight is None or not differentiating(x, weight):
        return F.rms_norm(x, shape, weight, eps)
    e = torch.finfo(x.dtype).eps if eps is None else eps
    return norm_with_value(x, weight, e, lambda: F.rms_norm(x, shape, weight, eps))
