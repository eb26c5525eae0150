"""Exact Hessian-vector products of a plain MLP under cross-entropy, with the R-operator written out.

For an nn.Sequential of nn.Linear layers and elementwise activations (ReLU, LeakyReLU, ELU, Tanh,
Sigmoid) ending in a Linear, under F.cross_entropy (lscape._fastops' form), H v is Pearlmutter's
R-operator: one forward pass of R(z) = R(x) W^T + x V^T + c and one backward pass of
R(g) = (R(g') W + g' V) * s'(z) + (g' W) * s''(z) * R(z), with the weight products R(g)^T x + g^T R(x).
That is the same six big products per layer that autograd's double backward runs, without its
elementwise bookkeeping (zero-filled gradients of masks, transposed accumulations): 11 ms instead of
13 ms per product on the digits 64-200-200-10 net, one core.  The activations, softmax and masks at
theta are computed once per point.  Tested against autograd's double backward (tests/test_mlp_hvp.py).

    op = MLPHessian.of(landscape, theta)   # None where it does not apply: autograd then
    hv = op(v)                             # (D,) -> (D,) in the landscape's dtype
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MLPHessian"]

Derivs = Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor | None, torch.Tensor | None]]


def _sigmoid(m, z):
    s = torch.sigmoid(z)
    d1 = s * (1 - s)
    return d1, d1 * (1 - 2 * s)


def _tanh(m, z):
    t = torch.tanh(z)
    d1 = 1 - t * t
    return d1, -2 * t * d1


def _elu(m, z):
    e = m.alpha * torch.exp(torch.clamp_max(z, 0))
    pos = z > 0
    return torch.where(pos, torch.ones_like(z), e), torch.where(pos, torch.zeros_like(z), e)


# s'(z) and s''(z) of each activation (s'' None: piecewise linear)
ACTIVATIONS: dict[type, Derivs] = {
    nn.ReLU: lambda m, z: ((z > 0).to(z.dtype), None),
    nn.LeakyReLU: lambda m, z: (torch.where(z > 0, torch.ones_like(z), torch.full_like(z, m.negative_slope)), None),
    nn.ELU: _elu,
    nn.Tanh: _tanh,
    nn.Sigmoid: _sigmoid,
}


def _structure(model: nn.Module) -> list[tuple[nn.Linear, nn.Module | None]] | None:
    """[(linear, activation after it or None)] of an nn.Sequential Linear (act) Linear ... Linear."""
    if type(model) is not nn.Sequential:
        return None
    layers: list[list] = []
    for m in model:
        if type(m) is nn.Linear:
            layers.append([m, None])
        elif type(m) is nn.Identity:
            continue
        elif type(m) in ACTIVATIONS and layers and layers[-1][1] is None:
            layers[-1][1] = m
        else:
            return None
    if not layers or layers[-1][1] is not None:
        return None
    return [(lin, act) for lin, act in layers]


class _Batch:
    """What the R-operator needs of one batch at theta: each layer's input, s'(z), (dL/d input) * s''(z)
    where s'' is not zero, dL/dz of each layer, and the softmax."""

    def __init__(self, layers, Ws, bs, X: torch.Tensor, Y: torch.Tensor, total: int) -> None:
        self.inp, self.d1, self.gd2 = [X], [], []
        d2s = []
        for i, ((_, act), W, b) in enumerate(zip(layers, Ws, bs, strict=True)):
            z = F.linear(self.inp[-1], W, b)
            if i == len(layers) - 1:
                break
            d1, d2 = (None, None) if act is None else ACTIVATIONS[type(act)](act, z)
            self.d1.append(d1)
            d2s.append(d2)
            self.inp.append(z if act is None else act(z))
        self.p = torch.softmax(z, 1)
        g = self.p.clone()
        g[torch.arange(len(Y)), Y] -= 1
        g /= total
        self.scale = 1.0 / total
        gs = [g]
        for i in range(len(layers) - 1, 0, -1):
            ga = gs[0] @ Ws[i]
            self.gd2.insert(0, None if d2s[i - 1] is None else ga * d2s[i - 1])
            gs.insert(0, ga if self.d1[i - 1] is None else ga * self.d1[i - 1])
        self.g = gs


class MLPHessian:
    """H(theta) v for an MLP landscape (see the module docstring)."""

    def __init__(self, layers, layout_offsets: list[tuple[tuple[int, int], tuple[int, int] | None]],
                 theta: torch.Tensor, batches) -> None:
        self.layers, self.offsets = layers, layout_offsets
        self.Ws, self.bs = self._views(theta)
        data = list(batches)
        total = sum(X.shape[0] for X, _ in data)
        self.batches = [_Batch(layers, self.Ws, self.bs, X, Y, total) for X, Y in data]
        self._work: dict[int, dict[str, list[torch.Tensor]]] = {}  # per batch size: reused buffers

    @classmethod
    def of(cls, landscape, theta: torch.Tensor) -> MLPHessian | None:
        """The operator at theta (D,) in the landscape's dtype, or None where it does not apply: not a
        from_module landscape with bn='eval', not an nn.Sequential MLP of supported layers, a loss other
        than cross-entropy, or data other than 2-D inputs and non-negative integer class targets."""
        from .._fastops import _covered, _plain_ce

        model = getattr(landscape, "module", None)
        loss_fn = getattr(landscape, "loss_fn", None)
        if model is None or landscape.bn != "eval" or not _plain_ce(getattr(loss_fn, "original", None)):
            return None
        layers = _structure(model)
        if layers is None:
            return None
        offsets = _offsets(model, layers)
        if offsets is None:
            return None
        n_out = layers[-1][0].out_features
        pairs = []
        with torch.no_grad():
            for b in landscape.data:
                X, Y = b.tensor, b.targets
                if X is None or Y is None or b.labels_kw:
                    return None
                pairs.append((X, Y))
                if X.dim() != 2 or X.dtype != landscape.dtype or X.shape[1] != layers[0][0].in_features:
                    return None
                if not _covered(X.new_empty(X.shape[0], n_out), Y) or int(Y.max()) >= n_out:
                    return None
            return cls(layers, offsets, theta.detach(), pairs)

    def _views(self, v: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """Each linear's weight (out, in) and bias (out,) (None without one) as views of a flat (D,) vector."""
        Ws = [v[a:b].view_as(lin.weight) for (lin, _), ((a, b), _) in zip(self.layers, self.offsets, strict=True)]
        return Ws, [None if ob is None else v[ob[0]:ob[1]] for _, ob in self.offsets]

    def _buffers(self, bt: _Batch) -> dict[str, list[torch.Tensor]]:
        # fresh (N, width) tensors on every product cost more than the products' elementwise work
        # (large allocations are new pages each time), so each batch size gets one set, reused
        N = bt.inp[0].shape[0]
        if N not in self._work:
            new = lambda w: bt.inp[0].new_empty(N, w)  # noqa: E731
            outs = [lin.out_features for lin, _ in self.layers]
            self._work[N] = {"Rz": [new(w) for w in outs], "Rin": [new(w) for w in outs[:-1]],
                             "Rg": [new(w) for w in outs[:-1]], "Rga": [new(w) for w in outs[:-1]]}
        return self._work[N]

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """H v for one vector v (D,) in the landscape's dtype."""
        out = torch.zeros_like(v)
        Vs, cs = self._views(v)
        hW, hb = self._views(out)
        n = len(self.layers)
        with torch.no_grad():
            for bt in self.batches:
                w = self._buffers(bt)
                # forward: R(z_i), and R(input of layer i + 1) = s'(z_i) R(z_i)
                Rin: torch.Tensor | None = None
                for i in range(n):
                    Rz = w["Rz"][i]
                    if cs[i] is None:
                        torch.mm(bt.inp[i], Vs[i].t(), out=Rz)
                    else:
                        torch.addmm(cs[i], bt.inp[i], Vs[i].t(), out=Rz)
                    if Rin is not None:
                        Rz.addmm_(Rin, self.Ws[i].t())
                    if i < n - 1:
                        Rin = Rz if bt.d1[i] is None else torch.mul(Rz, bt.d1[i], out=w["Rin"][i])
                # backward: R(dL/dz) of the softmax cross-entropy, then layer by layer
                p = bt.p
                Rg = p * (Rz - (p * Rz).sum(1, keepdim=True)) * bt.scale
                for i in range(n - 1, -1, -1):
                    hW[i].addmm_(Rg.t(), bt.inp[i])
                    if i > 0:
                        Rin_i = w["Rz"][i - 1] if bt.d1[i - 1] is None else w["Rin"][i - 1]
                        hW[i].addmm_(bt.g[i].t(), Rin_i)
                    if hb[i] is not None:
                        hb[i] += Rg.sum(0)
                    if i > 0:
                        Rga = torch.mm(bt.g[i], Vs[i], out=w["Rga"][i - 1]).addmm_(Rg, self.Ws[i])
                        Rg = Rga if bt.d1[i - 1] is None else torch.mul(Rga, bt.d1[i - 1], out=w["Rg"][i - 1])
                        if bt.gd2[i - 1] is not None:
                            Rg.addcmul_(bt.gd2[i - 1], w["Rz"][i - 1])
        return out


def _offsets(model: nn.Module, layers) -> list[tuple[tuple[int, int], tuple[int, int] | None]] | None:
    """Each linear's (weight, bias) slice of the flat vector, or None when the model's parameters are
    not exactly those weights and biases in order."""
    from .._flat import FlatLayout

    offs = FlatLayout.of(model).offsets()
    names = {id(p): n for n, p in model.named_parameters()}
    out, expect = [], []
    for lin, _ in layers:
        w = names.get(id(lin.weight))
        b = None if lin.bias is None else names.get(id(lin.bias))
        if w is None or (lin.bias is not None and b is None):
            return None
        expect += [w] + ([b] if b is not None else [])
        out.append((offs[w], None if b is None else offs[b]))
    return out if expect == list(offs) else None
