"""Dispatch of the tiny-MLP ensemble kernels (csrc/include/lscape/mlp.h) to cuda / cpu / torch.

Callers (lscape.ensemble) pass validated, C-contiguous tensors on one device; this module only chooses
the backend and moves pointers.  The compiled kernels are float32 (_backend.OPS); float64 runs
on the reference.
"""
from __future__ import annotations

import torch

from .. import _backend
from ..reference import mlp as ref
from ._common import call, ptr


def loss_grad(K: int, N: int, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
              want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """loss (M,) and, when want_grad, grad (M, D) of params (M, D) on x, y (P,)."""
    k = _backend.kernel("mlp", params.device, params.dtype)
    if k is None:
        return ref.loss_grad(K, N, params, x, y, want_grad)
    M, P = params.shape[0], x.shape[0]
    loss = torch.empty(M, dtype=params.dtype, device=params.device)
    grad = torch.empty_like(params) if want_grad else None
    if M:
        call(k, "mlp_loss_grad", K, N, M, P, ptr(params), ptr(x), ptr(y), ptr(loss), ptr(grad))
    return loss, grad


def train(K: int, N: int, opt: ref.OptConfig, params: torch.Tensor, state0: torch.Tensor,
          state1: torch.Tensor | None, diverged: torch.Tensor, x: torch.Tensor, y: torch.Tensor, step0: int,
          steps: int, record_every: int, history: torch.Tensor | None) -> None:
    """`steps` fused steps in place on params, state0, state1 (M, D) and diverged (M,) uint8; fills
    history (M, steps // record_every) when given (mlp.h)."""
    k = _backend.kernel("mlp", params.device, params.dtype)
    if k is None:
        div = diverged.bool()
        ref.train(K, N, opt, params, state0, state1, div, x, y, step0, steps, record_every, history)
        diverged.copy_(div)
        return
    M, P = params.shape[0], x.shape[0]
    if M == 0 or steps == 0:
        return
    call(k, "mlp_train", K, N, opt.as_tuple(), M, P, ptr(params), ptr(state0), ptr(state1), ptr(diverged),
         ptr(x), ptr(y), step0, steps, record_every, ptr(history))
