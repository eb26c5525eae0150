"""Dispatch of the tiny-MLP ensemble kernels (csrc/include/lscape/mlp.h) to cuda / cpu / torch.

Callers (lscape.ensemble) pass validated, C-contiguous tensors on one device; this module only chooses
the backend and moves pointers.  The compiled kernels are float32; float64 runs on the reference.
"""
from __future__ import annotations

import torch

from .. import _backend
from ..reference import mlp as ref
from .projection import _on_device


def _kernel(device: torch.device, dtype: torch.dtype):
    """(extension module, trailing argument) of the backend that runs here, or (None, None) for torch."""
    backend = _backend.select(device, dtype)
    if backend == "torch" or dtype != torch.float32:
        return None, None
    if backend == "cpu":
        return _backend.cpu_extension(), _backend.num_threads()
    return _backend.cuda_extension(), _backend.cuda_stream(device)


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def loss_grad(K: int, N: int, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
              want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """loss (M,) and, when want_grad, grad (M, D) of params (M, D) on x, y (P,)."""
    ext, tail = _kernel(params.device, params.dtype)
    if ext is None:
        return ref.loss_grad(K, N, params, x, y, want_grad)
    M, P = params.shape[0], x.shape[0]
    loss = torch.empty(M, dtype=params.dtype, device=params.device)
    grad = torch.empty_like(params) if want_grad else None
    if M:
        with _on_device(params.device):
            ext.mlp_loss_grad(K, N, M, P, params.data_ptr(), x.data_ptr(), y.data_ptr(), loss.data_ptr(),
                              _ptr(grad), tail)
    return loss, grad


def train(K: int, N: int, opt: ref.OptConfig, params: torch.Tensor, state0: torch.Tensor,
          state1: torch.Tensor | None, diverged: torch.Tensor, x: torch.Tensor, y: torch.Tensor, step0: int,
          steps: int, record_every: int, history: torch.Tensor | None) -> None:
    """`steps` fused steps in place on params, state0, state1 (M, D) and diverged (M,) uint8; fills
    history (M, steps // record_every) when given (mlp.h)."""
    ext, tail = _kernel(params.device, params.dtype)
    if ext is None:
        div = diverged.bool()
        ref.train(K, N, opt, params, state0, state1, div, x, y, step0, steps, record_every, history)
        diverged.copy_(div)
        return
    M, P = params.shape[0], x.shape[0]
    if M == 0 or steps == 0:
        return
    with _on_device(params.device):
        ext.mlp_train(K, N, opt.as_tuple(), M, P, params.data_ptr(), state0.data_ptr(), _ptr(state1),
                      diverged.data_ptr(), x.data_ptr(), y.data_ptr(), step0, steps, record_every,
                      _ptr(history), tail)
