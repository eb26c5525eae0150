"""Argument checks that name the argument, what it got and what was expected."""
from __future__ import annotations

import numbers

import numpy as np
import torch


def describe(x) -> str:
    """Short description of a value for error messages."""
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)}, dtype {x.dtype}, device {x.device}"
    shape = getattr(x, "shape", None)
    if shape is not None and hasattr(x, "dtype"):
        return f"{type(x).__module__.split('.')[0]} array of shape {tuple(shape)}, dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}"


def int_arg(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    """An integer in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: got {describe(value)}, expected an integer")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        lo = "-inf" if low is None else str(low)
        hi = "inf" if high is None else str(high)
        raise ValueError(f"{name}: got {v}, expected an integer in [{lo}, {hi}]")
    return v


def float_arg(name: str, value, *, low: float, high: float, low_open: bool = False) -> float:
    """A finite real in [low, high] ((low, high] with low_open)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: got {describe(value)}, expected a real number")
    v = float(value)
    bad_low = v <= low if low_open else v < low
    if not (v == v) or bad_low or v > high:
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"{name}: got {v}, expected a number in {interval}")
    return v


def bool_arg(name: str, value) -> bool:
    """True or False (not 0, 1 or None)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: got {describe(value)}, expected True or False")
    return value


def choice_arg(name: str, value, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name}: got {value!r}, expected one of {', '.join(map(repr, choices))}")
    return value


def as_tensor(name: str, x) -> torch.Tensor:
    """x as a detached tensor (through numpy, so Python floats stay float64)."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:  # through numpy, so Python floats stay float64 (torch.as_tensor would make them float32)
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name}: got {describe(x)}, expected a tensor or array") from None


def finite(name: str, t: torch.Tensor, expected: str) -> None:
    """A named error unless every entry of t is finite."""
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: got {describe(t)} with non-finite entries, expected {expected}")


def vector_arg(name: str, x, dim: int | None, device: torch.device | None = None) -> torch.Tensor:
    """A finite floating vector (D,) as float64 (on `device` when given)."""
    t = as_tensor(name, x)
    expected = f"a finite floating vector of shape ({'D' if dim is None else dim},)"
    if t.ndim != 1 or (dim is not None and t.shape[0] != dim) or t.shape[0] == 0 or not t.is_floating_point():
        raise ValueError(f"{name}: got {describe(t)}, expected {expected}")
    t = t.to(dtype=torch.float64, device=device)
    finite(name, t, expected)
    return t


def real_or_vector_arg(name: str, value, D: int, like: torch.Tensor) -> torch.Tensor:
    """A real scalar or a (D,) vector of finite reals, as a (D,) tensor in like's dtype, on its device."""
    if isinstance(value, bool):
        raise TypeError(f"{name}: got {describe(value)}, expected a real number or a ({D},) vector")
    if isinstance(value, numbers.Real):
        t = torch.full((D,), float(value), dtype=torch.float64)
    else:
        try:
            t = torch.as_tensor(np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value),
                                dtype=torch.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{name}: got {describe(value)}, expected a real number or a ({D},) "
                            "vector") from None
        if t.ndim == 0:
            t = t.expand(D).clone()
        if t.shape != (D,):
            raise ValueError(f"{name}: got {describe(value)}, expected a real number or a vector "
                             f"of shape ({D},)")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: got non-finite values, expected finite reals")
    # round to the landscape's dtype once: every later comparison is made in that dtype
    return t.to(like.dtype).to(device=like.device)
