"""Softmax cross-entropy with its double backward written out (Hessian-vector products of language models).

For logits z (rows of C classes), class-index targets y and a row weight w (1 / the number of rows not
ignored for reduction="mean", 1 for "sum", the incoming gradient's entry for "none"; 0 on rows whose target
is ignore_index) the first backward is gz = w (p - e_y) with p = softmax(z), and the second, for a cotangent
v of gz, is

    d/dz = w (p v - p (p . v))              (the Hessian of logsumexp applied to v, per row)
    d/d(gL) = sum over rows of (p . v - v_y), times the reduction's 1 / n

torch's double backward of log_softmax + nll_loss runs a chain of vocabulary-sized elementwise ops and keeps
log_softmax's output; here only the logits and each row's logsumexp are kept, and p is recomputed in chunks of
rows, so the temporaries of a product stay bounded at 50,257 classes.  The value is the original
F.cross_entropy's.  Under create_graph (a third derivative) the same formulas run as differentiable ops.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from ._hvpbase import differentiating, keep, row_chunks

__all__ = ["cross_entropy"]


class _Spec:
    def __init__(self, shape, reduction, valid, count):
        # valid: (M,) bool, rows whose target is not ignored; count: their number (a 0-d tensor, no sync)
        self.shape, self.reduction, self.valid, self.count = shape, reduction, valid, count


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(N, C, *d) -> (N * prod(d), C): one row per prediction (a view for 2-D input)."""
    return t if t.dim() == 2 else t.movedim(1, -1).reshape(-1, t.shape[1])


def _unrows(t2: torch.Tensor, shape) -> torch.Tensor:
    return t2 if len(shape) == 2 else t2.reshape(shape[0], *shape[2:], shape[1]).movedim(-1, 1)


def _row_weights(spec: _Spec, gL: torch.Tensor) -> torch.Tensor:
    """w per row (M,): the module docstring's, from the loss's incoming gradient gL."""
    if spec.reduction == "none":
        return gL.reshape(-1) * spec.valid
    w = gL / spec.count if spec.reduction == "mean" else gL
    return w * spec.valid


def _reduce_rows(spec: _Spec, per_row: torch.Tensor, gL: torch.Tensor) -> torch.Tensor:
    """d/d(gL) from each row's (M,) derivative of w's factor, reduced as the loss was (gL's shape)."""
    if spec.reduction == "none":
        return per_row.reshape(gL.shape)
    return per_row.sum() / spec.count if spec.reduction == "mean" else per_row.sum()


class _CEGrad(torch.autograd.Function):
    """(gL, z, y, lse) -> gz: cross-entropy's first backward, differentiable once more in gL and z."""

    @staticmethod
    def forward(ctx, gL, z, y, lse, spec):
        keep(ctx, spec, gL, z, y, lse)
        z2 = _rows(z)
        g = (z2 - lse[:, None]).exp_()
        g.scatter_add_(1, y[:, None], torch.full_like(g[:, :1], -1.0))
        return _unrows(g.mul_(_row_weights(spec, gL)[:, None]), spec.shape)

    @staticmethod
    def backward(ctx, v):
        gL, z, y, lse = ctx.saved_tensors
        spec = ctx.spec
        z2, v2 = _rows(z), _rows(v)
        w = _row_weights(spec, gL)
        vy = v2.gather(1, y[:, None])[:, 0]
        if torch.is_grad_enabled():  # a third derivative: p as a function of z
            p = torch.softmax(z2, 1)
            pv = (p * v2).sum(1)
            dz = p * (v2 - pv[:, None]) * w[:, None]
        else:
            dz, pv = torch.empty_like(z2), torch.empty_like(lse)
            for rows in row_chunks(z2.shape[0], z2.shape[1]):
                p = torch.sub(z2[rows], lse[rows, None], out=dz[rows]).exp_()
                pv[rows] = (p * v2[rows]).sum(1)
                p.mul_(v2[rows] - pv[rows, None]).mul_(w[rows, None])
        return _reduce_rows(spec, (pv - vy) * spec.valid, gL), _unrows(dz, spec.shape), None, None, None


class _CE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, y, spec, value):
        keep(ctx, spec, z, y, torch.logsumexp(_rows(z), 1))
        return value()

    @staticmethod
    def backward(ctx, gL):
        z, y, lse = ctx.saved_tensors
        return _CEGrad.apply(gL, z, y, lse, ctx.spec), None, None, None


def cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  size_average=None, ignore_index: int = -100, reduce=None, reduction: str = "mean",
                  label_smoothing: float = 0.0, *, fused: Callable | None = None) -> torch.Tensor:
    """F.cross_entropy (input (N, C, *d) logits, target (N, *d) class indices) with the double backward
    written out (module docstring).  Class weights, label smoothing, probability targets, the legacy
    size_average / reduce, 1-D input, and calls where nothing is differentiated run the plain function.
    fused(input, y, spec, plain): a version for special logits (_hvphead's, of a language model's head) that
    returns None where input is not such logits."""
    def plain():
        return F.cross_entropy(input, target, weight, size_average, ignore_index, reduce, reduction, label_smoothing)
    if (weight is not None or size_average is not None or reduce is not None or label_smoothing != 0.0
            or input.dim() < 2 or target.is_floating_point() or reduction not in ("mean", "sum", "none")
            or not differentiating(input)):
        return plain()
    y = target.reshape(-1)
    valid = y != ignore_index
    spec = _Spec(tuple(input.shape), reduction, valid, valid.sum())
    y = torch.where(valid, y, 0)
    out = None if fused is None else fused(input, y, spec, plain)
    return _CE.apply(input, y, spec, plain) if out is None else out
