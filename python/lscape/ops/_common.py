"""Helpers every op module shares: buffer addresses, the current CUDA device, and one kernel call."""
from __future__ import annotations

import contextlib
from typing import Any

import torch

from .._backend import Kernel


def ptr(t: torch.Tensor | None) -> int:
    """The address of a C-contiguous tensor's data, 0 for None (the kernels read 0 as "absent")."""
    return 0 if t is None else t.data_ptr()


def on_device(device: torch.device):
    """Make `device` current while a CUDA kernel launches (a no-op context on the CPU)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def call(k: Kernel, fn: str, *args: Any) -> Any:
    """k.ext.<fn>(*args, <threads or stream>) with k's device current."""
    with on_device(k.device):
        return getattr(k.ext, fn)(*args, k.tail)
