"""One flat-dict form for every result and state dataclass, so checkpoints are plain .npz files.

    d = to_dict(state, prefix="state_")          # {"state_opt_lr": 0.1, "state_step": 40, "state_state0": array}
    state = from_dict(TrainState, d, prefix="state_", device="cpu")

A field that is itself a dataclass is flattened under `<prefix><field>_`; tensors become numpy arrays (and
come back as tensors on `device`); None is left out (and comes back as None); anything else is stored as
a plain number or string.  Which fields are tensors and which are nested dataclasses is read from the
class's type hints, so a class needs no code of its own to be saved.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")

__all__ = ["from_dict", "to_dict"]


def to_dict(obj: Any, prefix: str = "") -> dict[str, Any]:
    """The fields of dataclass `obj` as a flat {name: numpy array or plain value} dict (for np.savez)."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"obj: got {type(obj).__name__}, expected a dataclass instance")
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        key = prefix + f.name
        if v is None:
            continue
        if dataclasses.is_dataclass(v):
            out.update(to_dict(v, key + "_"))
        elif isinstance(v, torch.Tensor):
            out[key] = v.detach().cpu().numpy()
        else:
            out[key] = v
    return out


def from_dict(cls: type[T], d: Mapping[str, Any], prefix: str = "", *,
              device: torch.device | str | None = None) -> T:
    """The inverse of to_dict: an instance of dataclass `cls` from a flat mapping (an np.load result works)."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        kind, sub = _kind(cls, f.name)
        if kind == "dataclass":
            if any(k.startswith(key + "_") for k in d):
                kwargs[f.name] = from_dict(sub, d, key + "_", device=device)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                kwargs[f.name] = None
        elif key not in d:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                kwargs[f.name] = None  # a None that to_dict left out
        elif kind == "tensor":
            kwargs[f.name] = torch.as_tensor(np.asarray(d[key]), device=device)
        else:
            v = np.asarray(d[key])
            kwargs[f.name] = v.item() if v.ndim == 0 else v
    return cls(**kwargs)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _kind(cls: type, name: str) -> tuple[str, Any]:
    """("tensor" | "dataclass" | "value", the dataclass type or None) for field `name` of `cls`."""
    hint = _hints(cls)[name]
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = typing.get_args(hint) if is_union else (hint,)
    for h in options:
        if h is torch.Tensor:
            return "tensor", None
        if isinstance(h, type) and dataclasses.is_dataclass(h):
            return "dataclass", h
    return "value", None
