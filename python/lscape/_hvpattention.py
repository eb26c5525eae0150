"""Scaled dot-product attention with its double backward written out (Hessian-vector products of
transformers).

torch has no double backward for its fused attention kernels (flash, efficient): `sdpa` runs the original
F.scaled_dot_product_attention (which picks its own backend, so the values are bit for bit the model's)
on detached inputs with grad enabled and keeps that small inner graph; the first backward (`_SDPAGrad`'s
forward) is torch's own fused backward taken from it, and the second is written out in math form,
recomputing P = softmax(s QK^T + M) from q and k (no Lq x Lk tensor is kept between products), in chunks of
query rows (rows are independent) so its temporaries stay bounded.  With (a, b, c) the cotangents of
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

from ._hvpbase import differentiating, row_chunks

__all__ = ["HessianDropoutError", "sdpa"]

_PLAIN = F.scaled_dot_product_attention


class HessianDropoutError(RuntimeError):
    """Attention dropout while a Hessian-vector product's graph is built: the loss would be random."""


class _Spec:
    """The non-tensor arguments of one attention call, and the inner graph of its forward."""

    def __init__(self, mask, is_causal, scale, groups):
        self.mask, self.is_causal, self.scale, self.groups = mask, is_causal, scale, groups
        self.inner = None


def _expand(t: torch.Tensor, groups: int) -> torch.Tensor:
    return t if groups == 1 else t.repeat_interleave(groups, dim=-3)


def _fold(t: torch.Tensor, groups: int) -> torch.Tensor:
    """The sum over each group of heads: the adjoint of _expand."""
    return t if groups == 1 else t.unflatten(-3, (t.shape[-3] // groups, groups)).sum(-3)


def _probs(spec: _Spec, q: torch.Tensor, k: torch.Tensor, rows: slice) -> torch.Tensor:
    """P = softmax(s q k^T + mask) for query rows `rows` (q already sliced): (..., rows, Lk); rows every key
    is masked from are 0."""
    S = torch.matmul(q, k.transpose(-1, -2)).mul_(spec.scale) if not torch.is_grad_enabled() \
        else torch.matmul(q, k.transpose(-1, -2)) * spec.scale
    m = spec.mask
    if spec.is_causal:
        i = torch.arange(rows.start, rows.stop, device=q.device)[:, None]
        m = i >= torch.arange(k.shape[-2], device=q.device)
    elif m is not None and m.dim() >= 2 and m.shape[-2] > 1:
        m = m[..., rows, :]
    if m is not None:
        S = S.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else S + m
        dead = torch.isneginf(S).all(-1, keepdim=True)
        if bool(dead.any()):
            return torch.softmax(S.masked_fill(dead, 0.0), -1).masked_fill(dead, 0.0)
    return torch.softmax(S, -1)


def _rowsum(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x * y).sum(-1, keepdim=True)


def _second_backward(spec: _Spec, dO, q, k, v, out, a, b, c):
    """(d/d(dO), d/dq, d/dk, d/dv) of <a, dQ> + <b, dK> + <c, dV> (module docstring), in chunks of query
    rows; k, v (and b, c) at q's heads (expanded)."""
    s, grad = spec.scale, torch.is_grad_enabled()
    a = torch.zeros_like(q) if a is None else a
    b = torch.zeros_like(k) if b is None else b
    c = torch.zeros_like(v) if c is None else c
    kT, vT = k.transpose(-1, -2), v.transpose(-1, -2)
    parts_dO, parts_q, dk, dv = [], [], None, None
    rows_all = q.shape[-2]
    for rows in row_chunks(rows_all, k.shape[-2] * (q.numel() // max(1, q.shape[-1] * rows_all))):
        qc, dOc, ac = q[..., rows, :], dO[..., rows, :], a[..., rows, :]
        P = _probs(spec, qc, k, rows)
        dP = torch.matmul(dOc, vT)
        D = _rowsum(P, dP) if grad else _rowsum(dOc, out[..., rows, :])  # equal; the second is cheaper
        dS = P * (dP - D)
        R = (torch.matmul(ac, kT) + torch.matmul(qc, b.transpose(-1, -2))) * s
        Rr = R - _rowsum(P, R)
        G = P * Rr
        Z = dP * Rr - D * R + torch.matmul(dOc, c.transpose(-1, -2))
        W = P * (Z - _rowsum(P, Z))
        parts_dO.append(torch.matmul(G, v) + torch.matmul(P, c))
        parts_q.append((torch.matmul(dS, b) + torch.matmul(W, k)) * s)
        dv_c = torch.matmul(G.transpose(-1, -2), dOc)
        dk_c = (torch.matmul(dS.transpose(-1, -2), ac) + torch.matmul(W.transpose(-1, -2), qc)) * s
        dv = dv_c if dv is None else dv + dv_c
        dk = dk_c if dk is None else dk + dk_c
    cat = (lambda ps: ps[0]) if len(parts_q) == 1 else (lambda ps: torch.cat(ps, -2))
    return cat(parts_dO), cat(parts_q), dk, dv


class _SDPAGrad(torch.autograd.Function):
    """(dO, q, k, v, out) -> (dq, dk, dv): attention's first backward (torch's own, from the forward's
    inner graph), differentiable once more in dO, q, k, v by `_second_backward`."""

    @staticmethod
    def forward(ctx, dO, q, k, v, out, spec):
        ctx.save_for_backward(dO, q, k, v, out)
        ctx.spec = spec
        o, qi, ki, vi = spec.inner
        return torch.autograd.grad(o, (qi, ki, vi), dO, retain_graph=True)

    @staticmethod
    def backward(ctx, a, b, c):
        dO, q, k, v, out = ctx.saved_tensors
        spec, g = ctx.spec, ctx.spec.groups
        ddO, dq, dk, dv = _second_backward(spec, dO, q, _expand(k, g), _expand(v, g), out, a,
                                           None if b is None else _expand(b, g), None if c is None else _expand(c, g))
        return ddO, dq, _fold(dk, g), _fold(dv, g), None, None


class _SDPA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, spec, kwargs):
        with torch.enable_grad():  # the inner graph torch's own first backward is taken from
            inner = [t.detach().requires_grad_(True) for t in (q, k, v)]
            o = _PLAIN(*inner, **kwargs)
        spec.inner = (o, *inner)
        out = o.detach()
        ctx.save_for_backward(q, k, v, out)
        ctx.spec = spec
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
