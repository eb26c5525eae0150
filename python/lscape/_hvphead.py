"""A language model's head and its loss as one op for Hessian-vector products: logits z = h W^T + b of many
classes (F.linear), then F.cross_entropy of those logits, with both backwards written out in chunks of rows.

Taken apart, the gradient's graph holds z (saved by cross-entropy) and gz = w (p - e_y) (saved by the head's
backward for the second pass), and every product builds three more (N, C) tensors -- the cotangent of gz from
the head's weight, the one from its input, their sum -- before cross-entropy's second backward makes a
fourth.  On GPT-2 small (C = 50,257, 1,024 tokens) that is six 196 MiB tensors at a product's peak.  Here
only z and each row's logsumexp are kept; gz, and in a product everything of C entries a row, exists one
chunk of rows at a time (HEAD_CHUNK_ELEMS).  The matrix products are the same ones autograd runs.

With p = softmax(z), w the row weight of _hvploss (1 / count for "mean", 0 on ignored rows), the first
backward is gh = gz W, gW = gz^T h, gb = sum_rows gz.  For cotangents (u, vW, vb) of (gh, gW, gb), with
c = u W^T + h vW^T + vb the cotangent of gz and dz = w p (c - p . c) its pull-back through softmax:

    d/dh = dz W + gz vW,   d/dW = dz^T h + gz^T u,   d/db = sum_rows dz,
    d/d(gL) = sum_rows (p . c - c_y) * valid, times the reduction's 1 / count.

Caught where F.cross_entropy's input is the (row-major) output of an F.linear with at least HEAD_MIN_CLASSES
outputs, or a view of it with the classes last; anything else runs _hvploss's cross-entropy.  The value is
the original F.cross_entropy's of the model's own logits.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ._hvpbase import differentiating, row_chunks
from ._hvploss import _reduce_rows, _row_weights
from ._hvploss import cross_entropy as _cross_entropy

__all__ = ["cross_entropy", "linear", "HEAD_MIN_CLASSES"]

HEAD_MIN_CLASSES = 1024  # an F.linear with this many outputs may be a language model's head
HEAD_CHUNK_ELEMS = 1 << 24  # entries of one chunk's (rows, C) temporaries (64 MiB of float32)
_TAG = "_lscape_head"  # the attribute on an F.linear's output holding (input, weight, bias)


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, its output tagged with its operands where it may be a head's logits (module docstring)."""
    z = F.linear(input, weight, bias)
    if (weight.dim() == 2 and weight.shape[0] >= HEAD_MIN_CLASSES and input.dim() >= 2
            and differentiating(input, weight)):
        # on the view's root too: a view of z (logits.view(-1, C)) has z's root as its _base, not z
        for t in (z, z._base):
            if t is not None:
                setattr(t, _TAG, (input, weight, bias))
    return z


def _head_of(z: torch.Tensor):
    """(h (M, d), W, b) where z (M, C) is, row for row, the tagged output of an F.linear; None otherwise."""
    src = z if hasattr(z, _TAG) else z._base
    ops = getattr(src, _TAG, None) if src is not None else None
    if ops is None or z.dim() != 2:
        return None
    h, W, b = ops
    same_rows = (src.is_contiguous() and z.is_contiguous() and z.data_ptr() == src.data_ptr()
                 and z.numel() == src.numel() and z.shape[1] == W.shape[0])
    return (h.reshape(-1, h.shape[-1]), W, b) if same_rows else None


class _HeadGrad(torch.autograd.Function):
    """(gL, h, W, b, z, y, lse) -> (gh, gW, gb): the first backward, differentiable once more (module
    docstring); z and lse are the forward's, held instead of gz."""

    @staticmethod
    def forward(ctx, gL, h, W, b, z, y, lse, spec):
        ctx.save_for_backward(gL, h, W, b, z, y, lse)
        ctx.spec = spec
        w = _row_weights(spec, gL)
        gh, gW = torch.empty_like(h), torch.zeros_like(W)
        gb = torch.zeros(0, dtype=W.dtype, device=W.device) if b is None else torch.zeros_like(b)
        for r in row_chunks(z.shape[0], z.shape[1], HEAD_CHUNK_ELEMS):
            g = torch.sub(z[r], lse[r, None]).exp_()
            g.scatter_add_(1, y[r, None], torch.full_like(g[:, :1], -1.0)).mul_(w[r, None])
            torch.mm(g, W, out=gh[r])
            gW.addmm_(g.t(), h[r])
            if b is not None:
                gb += g.sum(0)
            del g  # before the next chunk's: one chunk's temporaries at a time
        return gh, gW, gb

    @staticmethod
    def backward(ctx, u, vW, vb):
        gL, h, W, b, z, y, lse = ctx.saved_tensors
        spec = ctx.spec
        w = _row_weights(spec, gL)
        if torch.is_grad_enabled():  # a third derivative: z and p as functions of h, W, b
            return (*_second_differentiable(spec, gL, w, h, W, b, y, u, vW, vb), None, None, None, None)
        dh, dW = torch.empty_like(h), torch.zeros_like(W)
        db = None if b is None else torch.zeros_like(b)
        per_row = torch.empty_like(lse)
        for r in row_chunks(z.shape[0], z.shape[1], HEAD_CHUNK_ELEMS):
            p = torch.sub(z[r], lse[r, None]).exp_()
            c = torch.mm(u[r], W.t()).addmm_(h[r], vW.t())  # the cotangent of gz
            if b is not None:
                c += vb
            pc = torch.linalg.vecdot(p, c)
            per_row[r] = (pc - c.gather(1, y[r, None])[:, 0]) * spec.valid[r]
            dz = c.sub_(pc[:, None]).mul_(p).mul_(w[r, None])  # in place: c's memory
            gz = p.scatter_add_(1, y[r, None], torch.full_like(p[:, :1], -1.0)).mul_(w[r, None])
            torch.mm(dz, W, out=dh[r]).addmm_(gz, vW)
            dW.addmm_(dz.t(), h[r]).addmm_(gz.t(), u[r])
            if db is not None:
                db += dz.sum(0)
            del p, c, dz, gz
        return _reduce_rows(spec, per_row, gL), dh, dW, db, None, None, None, None


def _second_differentiable(spec, gL, w, h, W, b, y, u, vW, vb):
    """The second backward as differentiable ops on whole (M, C) tensors (third derivatives: tests)."""
    z = torch.addmm(b, h, W.t()) if b is not None else h @ W.t()
    p = torch.softmax(z, 1)
    gz = (p - F.one_hot(y, z.shape[1]).to(p.dtype)) * w[:, None]
    c = u @ W.t() + h @ vW.t() + (0.0 if b is None else vb)
    pc = (p * c).sum(1)
    dz = w[:, None] * p * (c - pc[:, None])
    per_row = (pc - c.gather(1, y[:, None])[:, 0]) * spec.valid
    db = None if b is None else dz.sum(0)
    return _reduce_rows(spec, per_row, gL), dz @ W + gz @ vW, dz.t() @ h + gz.t() @ u, db


class _HeadCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, W, b, z, y, spec, value):
        ctx.save_for_backward(h, W, b, z, y, torch.logsumexp(z, 1))
        ctx.spec = spec
        return value()

    @staticmethod
    def backward(ctx, gL):
        h, W, b, z, y, lse = ctx.saved_tensors
        gh, gW, gb = _HeadGrad.apply(gL, h, W, b, z, y, lse, ctx.spec)
        return gh, gW, (None if b is None else gb), None, None, None, None


def _fused(input: torch.Tensor, y: torch.Tensor, spec, plain) -> torch.Tensor | None:
    """Cross-entropy of input (M, C), the tagged logits of an F.linear (or a row-major view of them), fused
    with that head (module docstring); None where input is no such logits.  y (M,): class indices with the
    ignored ones replaced by 0 (spec.valid marks them), spec: _hvploss._Spec, plain: the original call."""
    head = _head_of(input)
    if head is None:
        return None
    h, W, b = head
    return _HeadCE.apply(h, W, b, input.detach(), y, spec, plain)


def cross_entropy(*args, **kwargs) -> torch.Tensor:
    """F.cross_entropy as _hvploss writes it out, fused with a language model's head where its input is the
    head's logits (module docstring)."""
    return _cross_entropy(*args, **kwargs, fused=_fused)
