"""Which implementation runs an op: the CUDA extension, the C++ extension, or the torch reference.

auto (the default): a CUDA tensor runs on `cuda` when lscape._cuda is built and a GPU is visible, a CPU
tensor on `cpu` when lscape._C is built; otherwise on `torch`.  LSCAPE_BACKEND=torch|cpu|cuda|auto, or
the `use_backend` context manager, forces one; forcing one that cannot run is an error saying why.

Which backend can run which op in which dtype is declared once, in OPS; `kernel(op, device,
dtype)` is the one lookup every op module makes.  Under "auto" an op+dtype that no compiled backend
supports runs on the reference; a forced backend that cannot run it raises UnsupportedKernel.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType

import torch

NAMES = ("cuda", "cpu", "torch")

_F32, _F64 = torch.float32, torch.float64


@dataclass(frozen=True)
class Op:
    """One op: the extension functions that serve it (all of `functions` in lscape._C, which lacks the
    cuda_only ones; lscape._cuda has the ones it serves), and per compiled backend the dtypes its kernel
    takes (None in the set: the op has no floating-point operand).  The torch reference runs every op in
    every dtype."""

    functions: tuple[str, ...]
    dtypes: dict[str, frozenset]
    cuda_only: tuple[str, ...] = ()  # functions lscape._cuda has and lscape._C does not


# Every op, declared once.  The CUDA NEB kernel is float32 only; the MLP kernels are float32 everywhere.
OPS: dict[str, Op] = {
    # (proj_sell_*, proj_*_sell and proj_*bands*: the CPU's layouts of the stored kind, in lscape._C only;
    # the stored kind's products on its segments are CUDA's, cuda_only)
    "proj_build": Op(("proj_count", "proj_fill", "proj_sell_plan", "proj_sell_fill", "proj_bands_plan",
                      "proj_bands_fill"),
                     {"cpu": frozenset({None}), "cuda": frozenset({None})}),
    "proj_product": Op(("proj_matvec_implicit", "proj_rmatvec_implicit", "proj_matvec_sell", "proj_rmatvec_sell",
                        "proj_matvec_bands", "proj_rmatvec_bands"),
                       {"cpu": frozenset({_F32, _F64}), "cuda": frozenset({_F32, _F64})},
                       cuda_only=("proj_matvec_indices", "proj_rmatvec_indices")),
    "mlp": Op(("mlp_loss_grad", "mlp_train"), {"cpu": frozenset({_F32}), "cuda": frozenset({_F32})}),
    "neb_step": Op(("neb_work_size", "neb_step"), {"cpu": frozenset({_F32, _F64}), "cuda": frozenset({_F32})}),
    # The fused walk step (walk.h): CPU only; on a GPU the walks' step runs in torch.
    "walk_step": Op(("walk_step",), {"cpu": frozenset({_F32, _F64}), "cuda": frozenset()}),
    # The Fastfood projection's transform and products: CPU only; on a GPU they run on the torch reference.
    "fastfood": Op(("fastfood_fwht", "fastfood_matvec", "fastfood_rmatvec"),
                   {"cpu": frozenset({_F32, _F64}), "cuda": frozenset()}),
}


class UnsupportedKernel(RuntimeError):
    """A forced backend has no kernel for this op and dtype."""


@dataclass(frozen=True)
class BackendInfo:
    name: str
    available: bool
    reason: str  # why it is unavailable, or what it is

    def __str__(self) -> str:
        return f"{self.name}: {'available' if self.available else 'unavailable'} ({self.reason})"


def _build_info() -> ModuleType | None:
    """lscape._build_info (written by CMake at build time), or None in a tree that was never built."""
    try:
        return importlib.import_module(f"{__package__}._build_info")
    except ImportError:
        return None


def _import_extension(name: str):
    """(module, "") or (None, why it cannot be used)."""
    if importlib.util.find_spec(f"{__package__}.{name}") is None:
        why = "build failed?"
        if name == "_cuda":
            why = getattr(_build_info(), "cuda_why_not", "") or "no CUDA compiler at build time, or LSCAPE_CUDA=off"
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


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def arch_runs(capability: tuple[int, int], architectures: str) -> bool:
    """Whether a GPU of compute `capability` (major, minor) runs a build for `architectures` (CMake's
    list, e.g. "80-real;90-real;90-virtual"): a cubin runs on its own major version at an equal or higher
    minor one, PTX (-virtual, or a bare number: both) is compiled by the driver for any newer GPU."""
    have = capability[0] * 10 + capability[1]
    for entry in filter(None, (a.strip() for a in architectures.split(";"))):
        num, _, kind = entry.partition("-")
        digits = "".join(c for c in num if c.isdigit())
        if not digits:
            continue
        arch = int(digits)
        if kind in ("", "virtual") and arch <= have:
            return True
        if kind in ("", "real") and arch // 10 == have // 10 and arch <= have:
            return True
    return False


def _cuda_reason() -> tuple[bool, str]:
    if _CUDA is None:
        return False, _CUDA_ERROR or "lscape was built without CUDA"
    if not torch.cuda.is_available():
        return False, "lscape._cuda is built but torch sees no CUDA device"
    built = _CUDA.runtime_version()
    fallback = "CUDA tensors run on the torch reference"
    if _CUDA.device_count() < 1:  # torch sees a GPU, the runtime lscape._cuda carries does not
        driver = _CUDA.driver_version()
        if 0 < driver < built:
            return False, (f"the driver supports CUDA {_cuda_version(driver)} but lscape._cuda carries the CUDA "
                           f"{_cuda_version(built)} runtime: update the driver; {fallback}")
        return False, f"lscape._cuda's CUDA {_cuda_version(built)} runtime sees no device ({_CUDA.device_error()}); " \
                      f"{fallback}"
    info = _build_info()
    archs = getattr(info, "cuda_architectures", "")
    cap = torch.cuda.get_device_capability()
    if archs and not arch_runs(cap, archs):
        return False, (f"lscape._cuda has no kernels for this GPU (sm_{cap[0]}{cap[1]}; built for {archs}); "
                       f"{fallback}")
    return True, f"CUDA runtime {built} (static), {torch.cuda.device_count()} device(s)"


def provenance() -> list[str]:
    """Where the installed lscape came from (a binary wheel, an sdist, a source tree) and how its extensions
    were built, as lines of text: the distribution's WHEEL and direct_url.json metadata and lscape._build_info."""
    import importlib.metadata as md
    import json

    lines = []
    try:
        dist = md.distribution("lscape")
    except md.PackageNotFoundError:
        dist = None
    if dist is None:
        lines.append("installed: not as a distribution (the package is imported from a source folder)")
    else:
        wheel = dist.read_text("WHEEL") or ""
        tags = [ln.split(":", 1)[1].strip() for ln in wheel.splitlines() if ln.startswith("Tag:")]
        url = json.loads(dist.read_text("direct_url.json") or "null")
        binary = any(("manylinux" in t or "musllinux" in t or "macosx" in t or "win" in t) for t in tags)
        kind = "a binary wheel (" + ", ".join(tags) + ")" if binary else "a local build (" + ", ".join(tags) + ")"
        if url is None:
            origin = "from an index or a --find-links folder"
            if not binary:
                kind = "built here from the sdist (" + ", ".join(tags) + ")"
        elif "dir_info" in url:
            origin = f"from the source folder {url['url'].removeprefix('file://')}"
            if url["dir_info"].get("editable"):
                origin += " (editable)"
        else:
            origin = f"from {url.get('url', '?')}"
        lines.append(f"installed: {kind}, {origin}")
    info = _build_info()
    if info is None:
        lines.append("build: no lscape._build_info (the extensions were not built by this package's CMake)")
    else:
        cuda = (f"lscape._cuda by {info.cuda_compiler} for {info.cuda_architectures}, {info.cuda_runtime} runtime"
                if info.cuda_architectures else f"no lscape._cuda: {info.cuda_why_not}")
        lines.append(f"build: {info.system}, {info.cxx_compiler}, OpenMP {'on' if info.openmp else 'off'}, "
                     f"ISA builds {', '.join(info.cpu_isas)}; {cuda}")
    return lines


def backends() -> dict[str, BackendInfo]:
    """Every backend, whether it can run here, and why not."""
    ok_cuda, why_cuda = _cuda_reason()
    ok_cpu, why_cpu = _C is not None, _C_ERROR
    if _C is not None:
        try:
            why_cpu = f"C++ extension, {_C.isa()} kernels, OpenMP {'on' if _C.openmp() else 'off'}"
        except RuntimeError as exc:  # LSCAPE_CPU_ISA forces an instruction set this CPU cannot run
            ok_cpu, why_cpu = False, str(exc)
    return {
        "cuda": BackendInfo("cuda", ok_cuda, why_cuda),
        "cpu": BackendInfo("cpu", ok_cpu, why_cpu),
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
    """The backend that runs ops on tensors of `device`, before asking whether it has a kernel for a
    given op and `dtype` (`kernel` asks; `dtype` is accepted for callers that pass it)."""
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


@dataclass(frozen=True)
class Kernel:
    """A compiled backend chosen for one op: its extension module and the trailing argument its
    functions take (the thread count on the CPU, the CUDA stream handle on a GPU)."""

    backend: str  # "cpu" or "cuda"
    ext: ModuleType
    tail: int
    device: torch.device


def supports(op: str, backend: str, dtype: torch.dtype | None) -> bool:
    """Whether `backend` has a kernel for `op` in `dtype` (the reference has every one)."""
    if op not in OPS:
        raise ValueError(f"op: got {op!r}, expected one of {sorted(OPS)}")
    return backend == "torch" or dtype in OPS[op].dtypes.get(backend, ())


def kernel(op: str, device: torch.device, dtype: torch.dtype | None = None) -> Kernel | None:
    """The compiled kernel that runs `op` on `dtype` tensors of `device`, or None for the torch reference.

    Raises UnsupportedKernel when a forced backend has no kernel for op + dtype, and RuntimeError (from
    `select`) when it cannot run here at all."""
    name = select(device, dtype)
    if not supports(op, name, dtype):
        if requested() != "auto":
            have = sorted(str(t).removeprefix("torch.") for t in OPS[op].dtypes[name] if t is not None)
            raise UnsupportedKernel(f"backend {name!r} was forced but has no {op} kernel for dtype {dtype} "
                                    f"(it takes {', '.join(have) or 'no floating-point data'}); convert "
                                    "the data, or force 'torch'/'auto' to run the reference")
        return None
    if name == "torch":
        return None
    if name == "cpu":
        return Kernel("cpu", _C, num_threads(), device)
    return Kernel("cuda", _CUDA, cuda_stream(device), device)


def num_threads() -> int:
    """Threads for the C++ kernels: $OMP_NUM_THREADS when set, else torch's, so one count rules both."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, torch.get_num_threads())


def cuda_stream(device: torch.device) -> int:
    """The current torch CUDA stream of `device`, as an integer handle."""
    return torch.cuda.current_stream(device).cuda_stream
