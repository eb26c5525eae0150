"""Which implementation runs an op: the CUDA extension, the C++ extension, or the torch reference.

auto (the default): a CUDA tensor runs on `cuda` when lscape._cuda is built and a GPU is visible, a CPU
tensor on `cpu` when lscape._C is built; otherwise on `torch`.  LSCAPE_BACKEND=torch|cpu|cuda|auto, or
the `use_backend` context manager, forces one; forcing one that cannot run is an error saying why.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import os
import warnings
from dataclasses import dataclass
from typing import Iterator

import torch

NAMES = ("cuda", "cpu", "torch")


@dataclass(frozen=True)
class BackendInfo:
    name: str
    available: bool
    reason: str  # why it is unavailable, or what it is

    def __str__(self) -> str:
        return f"{self.name}: {'available' if self.available else 'unavailable'} ({self.reason})"


def _import_extension(name: str):
    """(module, "") or (None, why it cannot be used)."""
    if importlib.util.find_spec(f"{__package__}.{name}") is None:
        why = "no CUDA compiler at build time, or LSCAPE_CUDA=off" if name == "_cuda" else "build failed?"
        return None, f"lscape.{name} is not built ({why})"
    try:
        return importlib.import_module(f"{__package__}.{name}"), ""
    except ImportError as exc:  # built for another Python/ABI, or a missing shared library
        return None, f"lscape.{name} could not be imported: {exc}"


_C, _C_ERROR = _import_extension("_C")
_CUDA, _CUDA_ERROR = _import_extension("_cuda")
if _C is None:
    warnings.warn(f"{_C_ERROR}; lscape runs on its pure-torch reference (slower).", RuntimeWarning,
                  stacklevel=2)


def cpu_extension():
    """The lscape._C module, or None."""
    return _C


def cuda_extension():
    """The lscape._cuda module, or None."""
    return _CUDA


def _cuda_reason() -> tuple[bool, str]:
    if _CUDA is None:
        return False, _CUDA_ERROR or "lscape was built without CUDA"
    if not torch.cuda.is_available():
        return False, "lscape._cuda is built but torch sees no CUDA device"
    return True, f"CUDA runtime {_CUDA.runtime_version()}, {torch.cuda.device_count()} device(s)"


def backends() -> dict[str, BackendInfo]:
    """Every backend, whether it can run here, and why not."""
    ok_cuda, why_cuda = _cuda_reason()
    if _C is not None:
        why_cpu = f"C++ extension, {_C.isa()} kernels, OpenMP {'on' if _C.openmp() else 'off'}"
    else:
        why_cpu = _C_ERROR
    return {
        "cuda": BackendInfo("cuda", ok_cuda, why_cuda),
        "cpu": BackendInfo("cpu", _C is not None, why_cpu),
        "torch": BackendInfo("torch", True, f"pure-torch reference, torch {torch.__version__}"),
    }


_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("lscape_backend", default=None)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run ops inside the block on backend `name` ("auto", "torch", "cpu" or "cuda")."""
    _check_name(name, "use_backend(name)")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


def _check_name(name: str, where: str) -> None:
    if name not in NAMES + ("auto",):
        raise ValueError(f"{where}: got {name!r}, expected one of 'auto', 'torch', 'cpu', 'cuda'")


def requested() -> str:
    """The backend asked for: use_backend's, else $LSCAPE_BACKEND, else "auto"."""
    name = _forced.get()
    if name is None:
        name = os.environ.get("LSCAPE_BACKEND", "auto").strip().lower() or "auto"
        _check_name(name, "LSCAPE_BACKEND")
    return name


def select(device: torch.device, dtype: torch.dtype | None = None) -> str:
    """The backend that runs an op on tensors of `device` (and `dtype`)."""
    name = requested()
    is_cuda = device.type == "cuda"
    if name == "auto":
        if is_cuda:
            return "cuda" if _cuda_reason()[0] else "torch"
        return "cpu" if (_C is not None and device.type == "cpu") else "torch"
    if name == "torch":
        return name
    info = backends()[name]
    if not info.available:
        raise RuntimeError(f"backend {name!r} was forced but is unavailable: {info.reason}")
    if name == "cpu" and device.type != "cpu":
        raise RuntimeError(f"backend 'cpu' was forced but the data is on {device}; move it to the CPU "
                           "or force 'cuda'/'auto'")
    if name == "cuda" and not is_cuda:
        raise RuntimeError(f"backend 'cuda' was forced but the data is on {device}; move it to a CUDA "
                           "device or force 'cpu'/'auto'")
    return name


def num_threads() -> int:
    """Threads for the C++ kernels: $OMP_NUM_THREADS when set, else torch's, so one count rules both."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, torch.get_num_threads())


def cuda_stream(device: torch.device) -> int:
    """The current torch CUDA stream of `device`, as an integer handle."""
    return torch.cuda.current_stream(device).cuda_stream
