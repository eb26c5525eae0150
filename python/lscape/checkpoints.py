"""Checkpoints as flat parameter vectors of a model, for the directions of a loss surface.

A checkpoint is any of: an nn.Module; a flat vector (D,); a state_dict, also nested as {"state_dict": ...}
or {"model": ...} (the training loop's other entries, such as the optimizer's, are left alone), with
DataParallel's "module." prefix or a LightningModule's one prefix ("model.": the network it holds), its
"_extra_state" entries skipped; the path of a file written by torch.save, loaded with
torch.load(weights_only=True), or of a .safetensors file; or a Hugging Face save_pretrained folder (its
model.safetensors or pytorch_model.bin; tied weights, saved once, count once).  A sequence of checkpoints may
also be a folder or a glob pattern of such
files, in natural order (epoch_2 before epoch_10) or sorted by a key the user gives.

State_dicts are matched to `model` by parameter name: buffers (BatchNorm's running statistics) are
ignored, and a missing or extra key or a shape that differs raises CheckpointMismatchError listing them.

    flat = load_checkpoint("ckpt/epoch_3.pt", model)           # (D,) float64, FlatLayout order
    thetas, names = load_checkpoints("ckpt/", model)            # (T, D), and where each came from
"""
from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from ._checks import vector_arg
from ._flat import FlatLayout

__all__ = ["CheckpointMismatchError", "CheckpointNotFound", "load_checkpoint", "load_checkpoints", "checkpoint_files"]

# file names a folder of checkpoints is read for (torch.save has no fixed suffix; these are the usual ones;
# .safetensors: Hugging Face's save_pretrained)
SUFFIXES = (".pt", ".pth", ".ckpt", ".tar", ".bin", ".safetensors")
# the weights file of a save_pretrained folder (one checkpoint), in the order looked for
PRETRAINED_FILES = ("model.safetensors", "pytorch_model.bin")
# state_dict entries that are never parameters: modules' get_extra_state() (TransformerEngine, quantisers)
EXTRA_STATE = "_extra_state"
# the entries a training loop nests the model's state_dict under
NESTED = ("state_dict", "model_state_dict", "model")
# prefixes that wrappers add to every name: DataParallel / DistributedDataParallel, torch.compile
PREFIXES = ("module.", "_orig_mod.")
_SHOWN = 8  # names listed per kind of mismatch; the rest are counted


class CheckpointNotFound(FileNotFoundError, ValueError):
    """A checkpoint path that names no file: a FileNotFoundError, and a ValueError like every bad argument."""


class CheckpointMismatchError(ValueError):
    """A state_dict whose parameter names or shapes differ from the model's."""


def natural_key(path: str) -> list:
    """Sort key that orders the digit runs of a name as numbers: epoch_2 < epoch_10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", os.fspath(path))]


def checkpoint_files(checkpoints: str | os.PathLike, sort_key: Callable[[str], object] | None = None) -> list[str]:
    """The checkpoint files of a folder (names ending in .pt, .pth, .ckpt, .tar, .bin) or a glob pattern,
    sorted by sort_key(path) (default: natural order).  Raises FileNotFoundError when there are none."""
    if not isinstance(checkpoints, (str, os.PathLike)):
        raise TypeError(f"checkpoints: got {type(checkpoints).__name__}, expected a folder or a glob pattern")
    src = os.fspath(checkpoints)
    if os.path.isdir(src) and _pretrained_file(src) is None:
        entries = [os.path.join(src, f) for f in os.listdir(src) if not f.startswith(".")]
        # files, or save_pretrained folders (a Hugging Face Trainer's checkpoint-500/, checkpoint-1000/)
        files = [f for f in entries if f.endswith(SUFFIXES) and os.path.isfile(f)
                 or os.path.isdir(f) and _pretrained_file(f) is not None]
        where = f"folder {src!r} (files ending in {', '.join(SUFFIXES)}, or save_pretrained folders)"
    else:
        files = glob.glob(src)
        where = f"glob {src!r}"
    files = [f for f in files if os.path.isfile(f) or os.path.isdir(f) and _pretrained_file(f) is not None]
    if not files:
        raise CheckpointNotFound(f"checkpoints: got {where}, which holds no checkpoint file; expected at least one")
    return sorted(files, key=natural_key if sort_key is None else sort_key)


def _is_pattern(s: str) -> bool:
    return any(c in s for c in "*?[")


def _pretrained_file(folder: str) -> str | None:
    """The weights file of a save_pretrained folder (PRETRAINED_FILES), or None."""
    return next((os.path.join(folder, f) for f in PRETRAINED_FILES if os.path.isfile(os.path.join(folder, f))), None)


def _read(path: str):
    if os.path.isdir(path):
        path = _pretrained_file(path)
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ValueError(f"checkpoint {path!r}: reading .safetensors needs the safetensors package (pip install "
                             "safetensors; transformers brings it)") from None
        return load_file(path, device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, ... depending on what it found
        raise ValueError(f"checkpoint {path!r}: torch.load(weights_only=True) could not read it ({e}); expected "
                         "a file written by torch.save(model.state_dict()) or a dict holding one") from e


def _unwrap(sd: Mapping) -> Mapping:
    """The state_dict inside training-loop dicts such as {"epoch": 3, "model": {...}, "optimizer": {...}}."""
    while not all(isinstance(v, torch.Tensor) for v in sd.values()):
        inner = next((sd[k] for k in NESTED if isinstance(sd.get(k), Mapping)), None)
        if inner is None:
            raise ValueError(f"checkpoint: got a dict with keys {sorted(map(str, sd))[:_SHOWN]}, expected a "
                             f"state_dict (names -> tensors) or a dict holding one under {NESTED}")
        sd = inner
    return sd


def _strip(name: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for p in PREFIXES:
            if name.startswith(p):
                name, stripped = name[len(p):], True
    return name


def _listed(kind: str, names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return f"{kind} ({len(names)}): {', '.join(names[:_SHOWN])}{more}"


def _from_state_dict(sd: Mapping, layout: FlatLayout, ignored: set[str], where: str) -> np.ndarray:
    """The model's parameters out of a state_dict, by name (wrapper prefixes stripped on both sides); names
    in `ignored` (buffers, second names of tied parameters) are skipped."""
    sd = {_strip(str(k)): v for k, v in _unwrap(sd).items()}
    sd = {k: v for k, v in sd.items() if k not in ignored and not k.endswith(EXTRA_STATE)}
    keys = [_strip(n) for n in layout.names]
    sd = _wrapped(sd, keys)
    missing = [k for k in keys if k not in sd]
    extra = sorted(k for k in sd if k not in set(keys))
    wrong = [f"{k} {tuple(sd[k].shape)} (model {tuple(s)})" for k, s in zip(keys, layout.shapes, strict=True)
             if k in sd and sd[k].shape != s]
    if missing or extra or wrong:
        parts = [_listed(k, v) for k, v in (("missing", missing), ("extra", extra), ("shape differs", wrong)) if v]
        raise CheckpointMismatchError(f"{where}: does not match model's parameters; " + "; ".join(parts))
    return torch.cat([sd[k].detach().reshape(-1).to("cpu", torch.float64) for k in keys]).numpy()


def _wrapped(sd: dict, keys: list[str]) -> dict:
    """sd with the one prefix every name shares removed ("model." of a LightningModule holding the network as
    self.model, "net." ...) where the model's names are found only so; sd itself otherwise."""
    if not sd or all(k in sd for k in keys):
        return sd
    heads = {k.split(".", 1)[0] for k in sd}
    if len(heads) != 1 or not all("." in k for k in sd):
        return sd
    inner = {k.split(".", 1)[1]: v for k, v in sd.items()}
    inner = {k: v for k, v in inner.items() if k in set(keys)} if all(k in inner for k in keys) else inner
    return inner if all(k in inner for k in keys) else sd


def _ignored(model: nn.Module, layout: FlatLayout) -> set[str]:
    """The state_dict names that are not parameters of the flat layout: buffers (BatchNorm's running
    statistics), and the second names of parameters shared between modules (tied weights)."""
    names = {n for n, _ in model.named_buffers(remove_duplicate=False)}
    names |= {n for n, _ in model.named_parameters(remove_duplicate=False)} - set(layout.names)
    return {_strip(n) for n in names}


def _flat(item, layout: FlatLayout, model: nn.Module, where: str) -> np.ndarray:
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        if not (os.path.isfile(path) or os.path.isdir(path) and _pretrained_file(path) is not None):
            raise CheckpointNotFound(f"{where}: got {path!r}, expected an existing checkpoint file")
        return _flat(_read(path), layout, model, f"{where} ({path!r})")
    if isinstance(item, nn.Module):
        return _from_state_dict(dict(item.named_parameters()), layout, set(), where)
    if isinstance(item, Mapping):
        return _from_state_dict(item, layout, _ignored(model, layout), where)
    if isinstance(item, (torch.Tensor, np.ndarray, list, tuple)):
        return vector_arg(where, item, layout.dim).numpy()
    raise TypeError(f"{where}: got {type(item).__name__}, expected a module, a flat vector, a state_dict or the "
                    "path of a checkpoint file")


def load_checkpoint(checkpoint, model: nn.Module, *, name: str = "checkpoint") -> np.ndarray:
    """One checkpoint (module, vector, state_dict or file) -> (D,) float64 in FlatLayout order of model.
    `name` is the argument named in errors."""
    return _flat(checkpoint, FlatLayout.of(model), model, name)


def load_checkpoints(checkpoints, model: nn.Module, *, sort_key: Callable[[str], object] | None = None,
                     name: str = "checkpoints") -> tuple[np.ndarray, list[str]]:
    """A folder, a glob pattern, or an iterable of checkpoints -> ((T, D) float64, T labels: the file paths,
    or '<name>[i]' for checkpoints given as objects).  sort_key orders a folder's or glob's files
    (default: natural order); an iterable keeps its own order."""
    layout = FlatLayout.of(model)
    if isinstance(checkpoints, (str, os.PathLike)):
        src = os.fspath(checkpoints)
        if not (os.path.isdir(src) or _is_pattern(src)):
            raise ValueError(f"{name}: got {src!r}, expected a folder or a glob pattern of checkpoint files (or a "
                             "list of checkpoints)")
        items: list = checkpoint_files(src, sort_key)
        labels = list(items)
    elif isinstance(checkpoints, (torch.Tensor, np.ndarray)) and checkpoints.ndim == 2:  # (T, D): a vector a row
        items, labels = list(checkpoints), [f"{name}[{i}]" for i in range(len(checkpoints))]
    elif isinstance(checkpoints, (nn.Module, Mapping, torch.Tensor, np.ndarray)) or \
            not isinstance(checkpoints, Iterable):
        raise TypeError(f"{name}: got {type(checkpoints).__name__}, expected a folder, a glob pattern, a (T, D) "
                        "tensor or a list of checkpoints (modules, flat vectors, state_dicts or file paths)")
    else:
        items = list(checkpoints)
        labels = [os.fspath(c) if isinstance(c, (str, os.PathLike)) else f"{name}[{i}]" for i, c in enumerate(items)]
    if not items:
        raise ValueError(f"{name}: got none, expected at least one checkpoint")
    thetas = np.stack([_flat(c, layout, model, f"{name}[{i}]") for i, c in enumerate(items)])
    return thetas, labels
