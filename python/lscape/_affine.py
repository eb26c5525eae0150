"""Exact affine evaluation of a first layer along a plane (issue 17 item 3).

At theta = theta0 + a u + b v, a first nn.Linear / nn.Conv2d that consumes the raw input has the
pre-activation  L(X; W0) + a L(X; U) + b L(X; V)  (biases likewise), because L is linear in its
weights.  The three products are computed once per batch; each point's first layer is then one fused
add.  Detected only where it is certain: an nn.Sequential whose module 0 is such a layer (zero padding),
so nothing else can read the input; any other model falls back to plain evaluation."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ._flat import FlatLayout

__all__ = ["first_layer", "AffinePlane"]

# cached pre-activations beyond this many floats fall back to plain evaluation (memory bound)
MAX_CACHED = 1 << 26


def first_layer(model: nn.Module) -> str | None:
    """The name prefix of a first layer eligible for the affine trick, or None."""
    if not isinstance(model, nn.Sequential) or len(model) < 2:
        return None
    m = model[0]
    if isinstance(m, nn.Linear) or isinstance(m, nn.Conv2d) and m.padding_mode == "zeros":
        return "0"
    return None


def _apply(m: nn.Module, X: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    if isinstance(m, nn.Linear):
        return F.linear(X, w, b)
    return F.conv2d(X, w, b, m.stride, m.padding, m.dilation, m.groups)


class AffinePlane:
    """Cached first-layer products of every batch for center + a dirs[0] (+ b dirs[1])."""

    def __init__(self, model: nn.Sequential, layout: FlatLayout, center: torch.Tensor, dirs: torch.Tensor,
                 batches):
        m = model[0]
        vecs = [layout.split(v) for v in (center, *dirs)]
        self.rest = model[1:]
        self.batches = []
        size = 0
        with torch.no_grad():
            for X, Y in batches:
                parts = [_apply(m, X, p["0.weight"], p.get("0.bias")) for p in vecs]
                size += sum(t.numel() for t in parts)
                if size > MAX_CACHED:
                    raise MemoryError("first-layer cache too large")
                self.batches.append((parts, Y, X.shape[0]))

    def outputs(self, coeffs: tuple[float, ...]):
        """(outputs, targets, n) per batch at center + sum coeffs[k] dirs[k]; rest of the model as loaded."""
        with torch.no_grad():
            for parts, Y, n in self.batches:
                pre = parts[0].add(parts[1], alpha=coeffs[0])  # the one fused add per point
                if len(coeffs) > 1:
                    pre.add_(parts[2], alpha=coeffs[1])
                yield self.rest(pre), Y, n
