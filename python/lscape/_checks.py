"""Argument checks that name the argument, what it got and what was expected."""
from __future__ import annotations

import numbers

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


def choice_arg(name: str, value, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name}: got {value!r}, expected one of {', '.join(map(repr, choices))}")
    return value
