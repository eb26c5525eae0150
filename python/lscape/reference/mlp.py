"""Pure-torch tiny-MLP ensembles: loss, gradient and fused training of M K x N networks.

The contract (layout, loss, optimizer rules, divergence, history) is csrc/include/lscape/mlp.h; this is
its oracle and the fallback.  Models are processed in chunks so temporaries stay bounded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SGD, ADADELTA, ADAM = "sgd", "adadelta", "adam"
OPTIMIZERS = (SGD, ADADELTA, ADAM)
OPT_KIND = {SGD: 0, ADADELTA: 1, ADAM: 2}  # mlp.h OptKind
_CHUNK_ELEMS = 1 << 24  # M_chunk * P * N * K activations held at once


@dataclass(frozen=True)
class OptConfig:
    """Optimizer and hyper-parameters (torch.optim's defaults where it has them)."""

    kind: str = SGD
    lr: float = 0.01
    momentum: float = 0.9  # sgd
    rho: float = 0.9  # adadelta
    eps: float | None = None  # adadelta, adam; None: torch's default (1e-6 for adadelta, 1e-8 for adam)
    beta1: float = 0.9  # adam
    beta2: float = 0.999  # adam

    def __post_init__(self) -> None:
        if self.eps is None:
            object.__setattr__(self, "eps", 1e-6 if self.kind == ADADELTA else 1e-8)

    def as_tuple(self) -> tuple:
        """(kind, lr, momentum, rho, eps, beta1, beta2), as the kernels take it."""
        return (OPT_KIND[self.kind], self.lr, self.momentum, self.rho, self.eps, self.beta1, self.beta2)

    @property
    def n_state(self) -> int:
        """Optimizer state tensors of shape (M, D): 1 for sgd, 2 otherwise."""
        return 1 if self.kind == SGD else 2


def _layers(K: int, N: int, params: torch.Tensor):
    """[(W (M, out, in), b (M, out))] views of params (M, D) in the mlp.h layout."""
    sizes = [1] + [N] * K + [1]
    out, off = [], 0
    for i, o in zip(sizes[:-1], sizes[1:], strict=False):
        out.append((params[:, off:off + o * i].reshape(-1, o, i), params[:, off + o * i:off + o * i + o]))
        off += o * i + o
    return out


def forward(K: int, N: int, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Network outputs (M, P) of params (M, D) at inputs x (P,)."""
    h = x[None, :, None].expand(params.shape[0], -1, 1)
    layers = _layers(K, N, params)
    for l, (W, b) in enumerate(layers):
        h = torch.baddbmm(b[:, None, :], h, W.transpose(1, 2))
        if l < K:
            h = torch.relu(h)
    return h[..., 0]


def _loss_grad_chunk(K: int, N: int, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                     want_grad: bool):
    M, P = params.shape[0], x.shape[0]
    layers = _layers(K, N, params)
    hs = [x[None, :, None].expand(M, P, 1)]  # inputs of each layer (M, P, in)
    for W, b in layers[:-1]:
        hs.append(torch.relu(torch.baddbmm(b[:, None, :], hs[-1], W.transpose(1, 2))))
    WK, bK = layers[-1]
    out = torch.baddbmm(bK[:, None, :], hs[-1], WK.transpose(1, 2))[..., 0]  # (M, P)
    r = out - y[None, :]
    loss = (r * r).mean(dim=1)
    if not want_grad:
        return loss, None
    dz = (2.0 / P) * r[..., None]  # dL/d(pre-activation) of the output layer, (M, P, 1)
    grads = []
    for l in range(K, -1, -1):
        W, _ = layers[l]
        h = hs[l]
        grads.append(torch.cat([torch.bmm(dz.transpose(1, 2), h).reshape(M, -1), dz.sum(dim=1)], dim=1))
        if l > 0:
            dz = torch.bmm(dz, W) * (h > 0)  # ReLU'(0) = 0, as autograd
    return loss, torch.cat(grads[::-1], dim=1)


def loss_grad(K: int, N: int, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
              want_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """MSE loss (M,) and its gradient (M, D) (None unless want_grad) of params (M, D) on (x, y) (P,)."""
    M, P = params.shape[0], x.shape[0]
    step = max(1, _CHUNK_ELEMS // max(1, P * N * K))
    if M <= step:
        return _loss_grad_chunk(K, N, params, x, y, want_grad)
    parts = [_loss_grad_chunk(K, N, params[i:i + step], x, y, want_grad) for i in range(0, M, step)]
    loss = torch.cat([p[0] for p in parts])
    return loss, (torch.cat([p[1] for p in parts]) if want_grad else None)


def update(opt: OptConfig, t: int, p: torch.Tensor, g: torch.Tensor, s0: torch.Tensor,
           s1: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One optimizer step (t is 1-based) -> new (params, state0, state1), out of place (mlp.h rules)."""
    if opt.kind == SGD:
        s0 = opt.momentum * s0 + g
        return p - opt.lr * s0, s0, s1
    if opt.kind == ADADELTA:
        s0 = opt.rho * s0 + (1 - opt.rho) * g * g
        delta = torch.sqrt(s1 + opt.eps) / torch.sqrt(s0 + opt.eps) * g
        s1 = opt.rho * s1 + (1 - opt.rho) * delta * delta
        return p - opt.lr * delta, s0, s1
    s0 = s0 + (1 - opt.beta1) * (g - s0)
    s1 = opt.beta2 * s1 + (1 - opt.beta2) * g * g
    step_size = opt.lr / (1 - opt.beta1 ** t)
    bc2 = math.sqrt(1 - opt.beta2 ** t)
    return p - step_size * (s0 / (torch.sqrt(s1) / bc2 + opt.eps)), s0, s1


def train(K: int, N: int, opt: OptConfig, params: torch.Tensor, state0: torch.Tensor,
          state1: torch.Tensor | None, diverged: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
          step0: int, steps: int, record_every: int, history: torch.Tensor | None) -> None:
    """`steps` training steps in place on params, state0, state1 and diverged (bool (M,)); fills
    history (M, steps // record_every) when given.  See mlp.h for the rules."""
    for i in range(steps):
        loss, g = loss_grad(K, N, params, x, y)
        p, s0, s1 = update(opt, step0 + i + 1, params, g, state0, state1)
        ok = ~diverged & torch.isfinite(loss) & torch.isfinite(g).all(dim=1) & torch.isfinite(p).all(dim=1)
        diverged |= ~ok
        m = ok[:, None]
        params.copy_(torch.where(m, p, params))
        state0.copy_(torch.where(m, s0, state0))
        if state1 is not None:
            state1.copy_(torch.where(m, s1, state1))
        if history is not None and (i + 1) % record_every == 0:
            history[:, (i + 1) // record_every - 1] = torch.where(diverged, torch.nan, loss)
