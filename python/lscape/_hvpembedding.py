"""Embeddings with their double backward written out (Hessian-vector products of language models).

y = W[idx] is linear in W: the first backward scatters gO's rows into a (num_embeddings, D) gradient
(torch's embedding_backward), and the second, for a cotangent gg of that gradient, gathers them back,
d/d(gO) = gg[idx] (0 where idx is padding_idx, whose row gets no gradient); there is nothing else to
differentiate.  The value is the original F.embedding's.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ._hvpbase import differentiating

__all__ = ["embedding"]

_aten = torch.ops.aten


class _EmbeddingGrad(torch.autograd.Function):
    """gO (*idx.shape, D) -> the weight's gradient (num, D), differentiable once more in gO."""

    @staticmethod
    def forward(ctx, gO, idx, num, padding_idx):
        ctx.save_for_backward(idx)
        ctx.padding_idx = padding_idx
        return _aten.embedding_backward(gO, idx, num, padding_idx, False, False)

    @staticmethod
    def backward(ctx, gg):
        (idx,) = ctx.saved_tensors
        out = gg[idx]
        if ctx.padding_idx >= 0:
            out = out.masked_fill((idx == ctx.padding_idx)[..., None], 0.0)
        return out, None, None, None


class _Embedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, idx, padding_idx, value):
        ctx.save_for_backward(idx)
        ctx.num, ctx.padding_idx = w.shape[0], padding_idx
        return value()

    @staticmethod
    def backward(ctx, gO):
        (idx,) = ctx.saved_tensors
        return _EmbeddingGrad.apply(gO, idx, ctx.num, ctx.padding_idx), None, None, None


def embedding(input: torch.Tensor, weight: torch.Tensor, padding_idx: int | None = None,
              max_norm: float | None = None, norm_type: float = 2.0, scale_grad_by_freq: bool = False,
              sparse: bool = False) -> torch.Tensor:
    """F.embedding (input integer indices, weight (num, D) -> (*input.shape, D)) with the double backward
    written out (module docstring).  max_norm (which renormalises the weight in place), scale_grad_by_freq,
    sparse, and calls where nothing is differentiated run the plain function."""
    def plain():
        return F.embedding(input, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse)
    if max_norm is not None or scale_grad_by_freq or sparse or not differentiating(weight):
        return plain()
    pad = -1 if padding_idx is None else (padding_idx + weight.shape[0] if padding_idx < 0 else padding_idx)
    return _Embedding.apply(weight, input, pad, plain)
