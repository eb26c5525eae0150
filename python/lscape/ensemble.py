"""Loss, gradient and full-batch training of M tiny networks at once (the fused ensemble kernels).

    loss, grad = lscape.mlp_loss_grad(spec, params, x, y)           # (M,), (M, D)
    res = lscape.train_ensemble(spec, params, x, y, optimizer="adam", steps=5000)
    res = lscape.train_ensemble(spec, res.params, x, y, optimizer="adam", steps=5000, state=res.state)

The update rules are torch.optim.SGD(momentum), Adadelta and Adam exactly (csrc/include/lscape/mlp.h);
a model whose loss, gradient or parameters turn non-finite is marked diverged and frozen without
touching the others.  Runs on CUDA tensors (lscape._cuda), CPU float32 (lscape._C) or the reference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from . import _checks, _records
from ._progress import ProgressArg, as_callback
from .ops import mlp as ops
from .reference.mlp import ADADELTA, ADAM, OPTIMIZERS, SGD, OptConfig
from .tinymlp import TinyMLP

__all__ = ["TrainResult", "TrainState", "mlp_loss", "mlp_loss_grad", "train_ensemble"]

_DEFAULT_LR = {ADADELTA: 1.0, ADAM: 1e-3}  # torch.optim's defaults; SGD has none worth defaulting to
_CHUNKS = 100  # progress (and Ctrl-C) granularity: a long run is split into about this many kernel calls


@dataclass
class TrainState:
    """Where a run stopped: optimizer config, steps taken, optimizer state (M, D) and the diverged mask."""

    opt: OptConfig
    step: int
    state0: torch.Tensor
    state1: torch.Tensor | None
    diverged: torch.Tensor  # (M,) bool

    def to_dict(self) -> dict[str, Any]:
        """numpy arrays and plain numbers (for np.savez), through lscape._records."""
        return _records.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], device: torch.device | str | None = None) -> TrainState:
        """The inverse of to_dict (accepts an np.load(...) mapping)."""
        state = _records.from_dict(cls, d, device=device)
        state.step = int(state.step)
        state.diverged = state.diverged.bool()
        return state


@dataclass
class TrainResult:
    """params (M, D) after training; loss (M,) at those params; history (M, steps // record_every): the
    loss every record_every steps (NaN once diverged); diverged (M,) bool; state: pass back to continue."""

    params: torch.Tensor
    loss: torch.Tensor
    history: torch.Tensor
    diverged: torch.Tensor
    state: TrainState


def _spec_arg(spec) -> TinyMLP:
    if not isinstance(spec, TinyMLP):
        raise TypeError(f"spec: got {_checks.describe(spec)}, expected a lscape.TinyMLP")
    return spec


def _params_arg(spec: TinyMLP, params) -> torch.Tensor:
    if isinstance(params, np.ndarray):
        params = torch.from_numpy(params)
    spec.check_params(params, "params", batched=True)
    if params.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"params: got dtype {params.dtype}, expected float32 or float64")
    return params


def _data_arg(x, y, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y as 1-D tensors of equal length >= 1, moved to params' dtype and device."""
    out = []
    for name, v in (("x", x), ("y", y)):
        t = _checks.as_tensor(name, v)
        if t.ndim != 1 or t.shape[0] == 0 or not t.is_floating_point():
            raise ValueError(f"{name}: got {_checks.describe(t)}, expected a non-empty 1-D floating tensor (P,)")
        _checks.finite(name, t, "finite values")
        out.append(t.to(dtype=like.dtype, device=like.device).contiguous())
    if out[0].shape != out[1].shape:
        raise ValueError(f"x, y: got lengths {out[0].shape[0]} and {out[1].shape[0]}, expected equal lengths")
    return out[0], out[1]


def mlp_loss_grad(spec: TinyMLP, params: torch.Tensor, x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """MSE loss (M,) and its gradient (M, D) for params (M, D) on data x, y (P,)."""
    spec = _spec_arg(spec)
    params = _params_arg(spec, params)
    x, y = _data_arg(x, y, params)
    loss, grad = ops.loss_grad(*spec.spec, params.detach().contiguous(), x, y, True)
    return loss, grad


def mlp_loss(spec: TinyMLP, params: torch.Tensor, x, y) -> torch.Tensor:
    """MSE loss (M,) for params (M, D) on data x, y (P,)."""
    spec = _spec_arg(spec)
    params = _params_arg(spec, params)
    x, y = _data_arg(x, y, params)
    return ops.loss_grad(*spec.spec, params.detach().contiguous(), x, y, False)[0]


def _opt_arg(optimizer, lr, momentum, rho, eps, betas) -> OptConfig:
    _checks.choice_arg("optimizer", optimizer, OPTIMIZERS)
    if lr is None:
        if optimizer == SGD:
            raise ValueError("lr: got None, expected a learning rate (SGD has no sensible default)")
        lr = _DEFAULT_LR[optimizer]
    lr = _checks.float_arg("lr", lr, low=0.0, high=math.inf)
    momentum = _checks.float_arg("momentum", momentum, low=0.0, high=1.0)
    rho = _checks.float_arg("rho", rho, low=0.0, high=1.0)
    if eps is not None:
        eps = _checks.float_arg("eps", eps, low=0.0, high=math.inf)
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"betas: got {betas!r}, expected a pair (beta1, beta2)")
    b1 = _checks.float_arg("betas[0]", betas[0], low=0.0, high=1.0)
    b2 = _checks.float_arg("betas[1]", betas[1], low=0.0, high=1.0)
    if optimizer == ADAM and (b1 >= 1.0 or b2 >= 1.0):
        raise ValueError(f"betas: got {betas!r}, expected each in [0, 1) for adam")
    return OptConfig(optimizer, lr, momentum, rho, eps, b1, b2)


def _state_arg(state, opt: OptConfig, params: torch.Tensor) -> TrainState:
    M = params.shape[0]
    if state is None:
        z = lambda: torch.zeros_like(params)  # noqa: E731
        return TrainState(opt, 0, z(), None if opt.n_state == 1 else z(),
                          torch.zeros(M, dtype=torch.bool, device=params.device))
    if not isinstance(state, TrainState):
        raise TypeError(f"state: got {_checks.describe(state)}, expected the TrainState of an earlier run")
    if state.opt.kind != opt.kind:
        raise ValueError(f"state: got the state of a {state.opt.kind!r} run, expected one of {opt.kind!r}")
    if tuple(state.state0.shape) != tuple(params.shape):
        raise ValueError(f"state: holds {tuple(state.state0.shape)} optimizer state, expected "
                         f"{tuple(params.shape)} to match params")
    conv = lambda t: None if t is None else t.to(dtype=params.dtype, device=params.device).clone()  # noqa: E731
    return TrainState(opt, state.step, conv(state.state0), conv(state.state1),
                      state.diverged.to(device=params.device, dtype=torch.bool).clone())


def train_ensemble(spec: TinyMLP, params: torch.Tensor, x, y, *, optimizer: str = SGD, steps: int,
                   lr: float | None = None, momentum: float = 0.9, rho: float = 0.9, eps: float | None = None,
                   betas: tuple[float, float] = (0.9, 0.999), record_every: int = 100,
                   state: TrainState | None = None, progress: ProgressArg = False) -> TrainResult:
    """Full-batch training of all M models for `steps` steps; params (M, D) is not modified.

    optimizer: "sgd" (torch.optim.SGD with momentum, dampening 0; lr required), "adadelta" (lr 1.0,
    rho, eps 1e-6 by default) or "adam" (lr 1e-3, betas, eps 1e-8).  record_every: the loss history
    keeps one column per record_every steps.  state: a previous result's `state` to continue that run
    exactly (its optimizer state, step count and diverged mask).  progress: True for a bar on stderr,
    or a callable(done_steps, total_steps).
    """
    spec = _spec_arg(spec)
    params = _params_arg(spec, params)
    x, y = _data_arg(x, y, params)
    steps = _checks.int_arg("steps", steps, low=0)
    record_every = _checks.int_arg("record_every", record_every, low=1)
    opt = _opt_arg(optimizer, lr, momentum, rho, eps, betas)
    st = _state_arg(state, opt, params)
    st.opt = replace(opt)
    report = as_callback(progress, f"train_ensemble {opt.kind} M={params.shape[0]}")

    p = params.detach().clone().contiguous()
    div = st.diverged.to(torch.uint8)
    n_rec = steps // record_every
    history = torch.full((p.shape[0], n_rec), math.nan, dtype=p.dtype, device=p.device)
    # Chunks are whole multiples of record_every so each call's history is a block of columns.
    chunk = record_every * max(1, math.ceil(n_rec / _CHUNKS)) if n_rec else steps
    done = 0
    while done < steps:
        c = min(chunk, steps - done)
        h = torch.empty((p.shape[0], c // record_every), dtype=p.dtype, device=p.device)
        ops.train(*spec.spec, opt, p, st.state0, st.state1, div, x, y, st.step + done, c, record_every,
                  h if h.shape[1] else None)
        j = done // record_every
        history[:, j:j + h.shape[1]] = h
        done += c
        if report is not None:
            if p.is_cuda:
                torch.cuda.current_stream(p.device).synchronize()
            report(done, steps)
    st.step += steps
    st.diverged = div.bool()
    loss = ops.loss_grad(*spec.spec, p, x, y, False)[0]
    return TrainResult(p, loss, history, st.diverged.clone(), st)
