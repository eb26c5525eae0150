"""Scaled dot-product attention with its double backward written out (Hessian-vector products of
transformers).

torch has no double backward for its fused attention kernels (flash, efficient): `sdpa` runs the original
F.scaled_dot_product_attention (which picks its own backend, so the values are bit for bit the model's)
on detached inputs with grad enabled and keeps that small inner graph; the first backward (`_SDPAGrad`'s
forward) is torch's own fused backward taken from it, and the second is written out in math form,
recomputing P = softmax(s QK^T + M) from q and k, in chunks of query rows (rows are independent) so its
temporaries stay bounded; where P is small (FIXED_ELEMS) it and the other vector-free terms are kept with the
graph after the first product instead.  With (a, b, c) the cotangents of
(dQ, dK, dV):

    R = s (a K^T + Q b^T)   r = rowsum(P R)   G = P (R - r)   E = dO c^T   D = rowsum(dO O)
    Z = dP (R - r) - D R + E                  W = P (Z - rowsum(P Z))        dP = dO V^T, dS = P (dP - D)
    d/d(dO) = G V + P c     d/dV = G^T dO     d/dQ = s (dS b + W K)           d/dK = s (dS^T a + W^T Q)

Fully masked rows attend to nothing (P = 0), as torch's kernels return.  Grouped-query attention expands
k and v to q's heads and sums the head groups back.  Under create_graph (a third derivative) the same
formulas run as differentiable torch ops, so every order stays exact.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ._hvpbase import differentiating, keep, row_chunks

__all__ = ["HessianDropoutError", "sdpa"]

_PLAIN = F.scaled_dot_product_attention
# P, dP - D and dS depend on the gradient's graph, not on the vector: where each has at most this many entries
# (4 MiB of float32; nanoGPT's 64 x 4 heads x 64 x 64) they are kept with the graph after the first product
# instead of recomputed by every one (two batched products, the mask and softmax: ~1/3 of this backward)
FIXED_ELEMS = 1 << 20


class HessianDropoutError(RuntimeError):
    """Attention dropout while a Hessian-vector product's graph is built: the loss would be random."""


class _Spec:
    """The non-tensor arguments of one attention call, the rows every key is masked from (None: none), and the
    inner graph of its forward."""

    def __init__(self, mask, is_causal, scale, groups):
        self.mask, self.is_causal, self.scale, self.groups = mask, is_causal, scale, groups
        self.dead, self.inner = None, None
        if mask is not None:  # top-left causal masks leave no row empty; other masks may
            dead = (~mask if mask.dtype == torch.bool else torch.isneginf(mask)).all(-1, keepdim=True)
            self.dead = dead if bool(dead.any()) else None


def _expand(t: torch.Tensor, groups: int) -> torch.Tensor:
    return t if groups == 1 else t.repeat_interleave(groups, dim=-3)


def _fold(t: torch.Tensor, groups: int) -> torch.Tensor:
    """The sum over each group of heads: the adjoint of _expand."""
    return t if groups == 1 else t.unflatten(-3, (t.shape[-3] // groups, groups)).sum(-3)


def _rows_of(m: torch.Tensor | None, rows: slice) -> torch.Tensor | None:
    return m if m is None or m.dim() < 2 or m.shape[-2] == 1 else m[..., rows, :]


def _probs(spec: _Spec, sq: torch.Tensor, k: torch.Tensor, rows: slice, batch: torch.Size) -> torch.Tensor:
    """P = softmax(s q k^T + mask) for query rows `rows`: sq = s q[rows] (BH, rows, E), k (BH, Lk, E) ->
    (BH, rows, Lk); rows every key is masked from are 0.  In place where nothing is differentiated."""
    ip = not torch.is_grad_enabled()
    S = torch.bmm(sq, k.transpose(1, 2))
    m, dead = spec.mask, _rows_of(spec.dead, rows)
    if spec.is_causal:
        m = torch.arange(rows.start, rows.stop, device=sq.device)[:, None] >= torch.arange(k.shape[1],
                                                                                         device=sq.device)
    elif m is not None:
        m = _rows_of(m, rows)
        S = S.view(*batch, *S.shape[1:])  # the mask broadcasts against (..., H, rows, Lk)
    if m is not None:
        if m.dtype == torch.bool:
            S = S.masked_fill_(~m, float("-inf")) if ip else S.masked_fill(~m, float("-inf"))
        else:
            S = S.add_(m) if ip else S + m
        if dead is not None:
            S = S.masked_fill(dead, 0.0)
        S = S.reshape(-1, *S.shape[-2:])
    P = torch.softmax(S, -1)
    return P if dead is None else P.view(*batch, *P.shape[1:]).masked_fill(dead, 0.0).view(P.shape)


def _rowsum(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x * y).sum(-1, keepdim=True)


def _acc(total: torch.Tensor | None, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """total + x @ y (batched), in place where nothing is differentiated."""
    if total is None:
        return torch.bmm(x, y)
    return total.baddbmm_(x, y) if not torch.is_grad_enabled() else torch.baddbmm(total, x, y)


def _second_backward(spec: _Spec, dO, q, k, v, out, a, b, c, fixed: dict | None = None):
    """(d/d(dO), d/dq, d/dk, d/dv) of <a, dQ> + <b, dK> + <c, dV> (module docstring), in chunks of query
    rows, on (batch x heads, L, E) views; k, v (and b, c) at q's heads (expanded).  Temporaries are reused
    in place where nothing is differentiated; under create_graph every op is out of place.  fixed: where
    the vector-free terms (P, dP - D, dS) of this first backward (this dO) are kept between products."""
    s, grad = spec.scale, torch.is_grad_enabled()
    batch, shapes = q.shape[:-2], (dO.shape, q.shape, k.shape, v.shape)
    flat = [None if t is None else t.reshape(-1, *t.shape[-2:]) for t in (dO, q, k, v, out, a, b, c)]
    dO, q, k, v, out, a, b, c = flat
    a = torch.zeros_like(q) if a is None else a
    b = torch.zeros_like(k) if b is None else b
    c = torch.zeros_like(v) if c is None else c
    sq, sk, sa, sb = q * s, k * s, a * s, b * s
    kb = torch.cat([k, sb], -1).transpose(1, 2)  # R = s (a k^T + q b^T) = [s a, q] [k, s b]^T: one product
    vT, cT = v.transpose(1, 2), c.transpose(1, 2)
    parts_dO, parts_q, dk, dv = [], [], None, None
    chunks = row_chunks(q.shape[1], k.shape[1] * q.shape[0])
    for rows in chunks:
        dOc = dO[:, rows]
        if fixed and not grad:
            P, delta, dS = fixed["terms"]
        else:
            P = _probs(spec, sq[:, rows], k, rows, batch)
            dP = torch.bmm(dOc, vT)
            D = _rowsum(P, dP) if grad else _rowsum(dOc, out[:, rows])  # equal; the second is cheaper
            delta = dP - D if grad else dP.sub_(D)
            dS = P * delta
            if fixed is not None and not grad and len(chunks) == 1 and P.numel() <= FIXED_ELEMS:
                fixed["terms"] = (P, delta, dS)  # read-only below: the next product of this graph reuses them
        R = torch.bmm(torch.cat([sa[:, rows], q[:, rows]], -1), kb)
        r = _rowsum(P, R)
        Rr = R - r if grad else R.sub_(r)
        G = P * Rr
        # Z = (dP - D)(R - r) - r D + dO c^T; the row constant -r D cancels in W (rows of P sum to 1): dropped
        E = torch.bmm(dOc, cT)
        Z = E + delta * Rr if grad else E.addcmul_(delta, Rr)
        pz = _rowsum(P, Z)
        W = (Z - pz) * P if grad else Z.sub_(pz).mul_(P)
        parts_dO.append(_acc(torch.bmm(P, c), G, v))
        parts_q.append(_acc(torch.bmm(dS, sb), W, sk))
        dv = _acc(dv, G.transpose(1, 2), dOc)
        dk = _acc(_acc(dk, dS.transpose(1, 2), sa[:, rows]), W.transpose(1, 2), sq[:, rows])
    cat = (lambda ps: ps[0]) if len(parts_q) == 1 else (lambda ps: torch.cat(ps, 1))
    return tuple(t.view(shape) for t, shape in zip((cat(parts_dO), cat(parts_q), dk, dv), shapes, strict=True))


class _SDPAGrad(torch.autograd.Function):
    """(dO, q, k, v, out) -> (dq, dk, dv): attention's first backward (torch's own, from the forward's
    inner graph), differentiable once more in dO, q, k, v by `_second_backward`."""

    @staticmethod
    def forward(ctx, dO, q, k, v, out, spec):
        keep(ctx, spec, dO, q, k, v, out)
        ctx.fixed = {}  # per node, not per attention call: a product runs this first backward again with another dO
        o, qi, ki, vi = spec.inner
        return torch.autograd.grad(o, (qi, ki, vi), dO, retain_graph=True)

    @staticmethod
    def backward(ctx, a, b, c):
        dO, q, k, v, out = ctx.saved_tensors
        spec, g = ctx.spec, ctx.spec.groups
        b, c = (None if t is None else _expand(t, g) for t in (b, c))
        ddO, dq, dk, dv = _second_backward(spec, dO, q, _expand(k, g), _expand(v, g), out, a, b, c, ctx.fixed)
        return ddO, dq, _fold(dk, g), _fold(dv, g), None, None


class _SDPA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, spec, kwargs):
        with torch.enable_grad():  # the inner graph torch's own first backward is taken from
            inner = [t.detach().requires_grad_(True) for t in (q, k, v)]
            o = _PLAIN(*inner, **kwargs)
        spec.inner = (o, *inner)
        out = o.detach()
        keep(ctx, spec, q, k, v, out)
        return out

    @staticmethod
    def backward(ctx, dO):
        q, k, v, out = ctx.saved_tensors
        return (*_SDPAGrad.apply(dO, q, k, v, out, ctx.spec), None, None)


def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
         dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
         enable_gqa: bool = False) -> torch.Tensor:
    """F.scaled_dot_product_attention (query (..., Hq, Lq, E), key (..., Hk, Lk, E), value (..., Hk, Lk, Ev)
    -> (..., Hq, Lq, Ev)) with the double backward written out (module docstring).  The plain function runs
    where nothing is differentiated, under torch.func transforms, and for a mask that needs a gradient;
    dropout_p > 0 while differentiating is HessianDropoutError."""
    kwargs = dict(attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
    if enable_gqa:
        kwargs["enable_gqa"] = True
    if not differentiating(query, key, value) or (attn_mask is not None and attn_mask.requires_grad):
        return _PLAIN(query, key, value, **kwargs)
    if dropout_p > 0:
        raise HessianDropoutError(
            f"scaled_dot_product_attention with dropout_p={dropout_p} while a Hessian-vector product's graph is "
            "built: dropout makes the loss random; call model.eval() (attention dropout is then 0)")
    hq, hk = query.shape[-3] if query.dim() > 2 else 1, key.shape[-3] if key.dim() > 2 else 1
    groups = hq // hk if enable_gqa and hq != hk else 1
    s = 1.0 / query.shape[-1] ** 0.5 if scale is None else scale
    return _SDPA.apply(query, key, value, _Spec(attn_mask, is_causal, s, groups), kwargs)
