"""Where hvp_mode catches a transformer's attention, norms, activations, embeddings and loss.

Functional calls (F.scaled_dot_product_attention, F.layer_norm, F.rms_norm, F.gelu, F.silu, F.embedding,
F.cross_entropy, and F.linear for a language model's head: _hvphead) are caught by a TorchFunctionMode,
however the model imported them (nn.LayerNorm, nn.GELU, nn.Embedding, nn.Linear, nn.CrossEntropyLoss call
them too): each runs its lscape version, which calls the original for the value.  Hugging Face modules that
compose GELU (tanh form) or RMSNorm from elementwise ops (NewGELUActivation, GELUTanh, LlamaRMSNorm, ...)
get an instance-level forward that calls the module's own forward for the value and attaches the formula's
derivatives.  Such a class is matched by its name, so on its first call each module is checked once, on a
slice of its actual input, against the formula; a module whose output differs (beyond rounding) is left
alone.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from ._hvpactivations import activation_with_value, gelu, silu
from ._hvpattention import sdpa
from ._hvpbase import differentiating
from ._hvpembedding import embedding
from ._hvphead import cross_entropy, linear
from ._hvpnorms import layer_norm, norm_with_value, rms_norm

__all__ = ["Intercept", "module_forwards"]

_HANDLERS: dict[Callable, Callable] = {
    F.scaled_dot_product_attention: sdpa, F.layer_norm: layer_norm, F.gelu: gelu, F.silu: silu,
    F.embedding: embedding, F.cross_entropy: cross_entropy, F.linear: linear,
}
if hasattr(F, "rms_norm"):
    _HANDLERS[F.rms_norm] = rms_norm

# Hugging Face classes computing GELU's tanh form from elementwise ops (transformers.activations)
GELU_TANH_CLASSES = frozenset({"NewGELUActivation", "GELUTanh", "PytorchGELUTanh", "FastGELUActivation",
                               "GELUPytorchTanh"})
_CHECK_ROWS = 8  # rows of the input a matched module is checked on (activations: 8 x 512 entries)


class Intercept(TorchFunctionMode):
    """While entered, the functions in _HANDLERS run their lscape versions (module docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return _HANDLERS.get(func, func)(*args, **(kwargs or {}))


def _tolerance(dtype: torch.dtype) -> float:
    return 64 * torch.finfo(dtype).eps


def _checked(verdicts: dict, m: nn.Module, own: Callable, formula: Callable, x_rows: torch.Tensor) -> bool:
    """Whether m's own forward computes `formula` (on a few rows of its input, once per module)."""
    ok = verdicts.get(m)
    if ok is None:
        with torch.no_grad():
            mine, theirs = own(x_rows), formula(x_rows)
        tol = _tolerance(x_rows.dtype)
        ok = verdicts[m] = mine.shape == theirs.shape and bool(torch.allclose(mine, theirs, rtol=tol, atol=tol))
    return ok


def _gelu_forward(m: nn.Module, verdicts: dict) -> Callable:
    own = type(m).forward.__get__(m)

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs or not differentiating(x) or not _checked(
                verdicts, m, own, lambda t: F.gelu(t, approximate="tanh"), x.detach().reshape(-1)[:512 * _CHECK_ROWS]):
            return own(x, *args, **kwargs)  # a call the formula does not describe: the module's own
        return activation_with_value(x, "gelu_tanh", lambda: own(x))
    return forward


def _rms_eps(m: nn.Module) -> float | None:
    eps = getattr(m, "variance_epsilon", getattr(m, "eps", None))
    return float(eps) if isinstance(eps, (int, float)) else None


def _rms_forward(m: nn.Module, verdicts: dict) -> Callable:
    own = type(m).forward.__get__(m)

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        w, eps = m.weight, _rms_eps(m)
        if (args or kwargs or not differentiating(x, w) or w.dim() != 1 or x.shape[-1] != w.shape[0]
                or not _checked(verdicts, m, own, lambda t: F.rms_norm(t, (w.shape[0],), w, eps),
                                x.detach().reshape(-1, w.shape[0])[:_CHECK_ROWS])):
            return own(x, *args, **kwargs)
        return norm_with_value(x, w, eps, lambda: own(x))
    return forward


def module_forwards(model: nn.Module) -> dict[nn.Module, Callable]:
    """Instance-level forwards for `model`'s Hugging Face-style GELU and RMSNorm modules (module docstring);
    modules with a forward of their own already are left alone."""
    verdicts: dict[nn.Module, bool] = {}
    out: dict[nn.Module, Callable] = {}
    for m in model.modules():
        if "forward" in m.__dict__:
            continue
        name = type(m).__name__
        if name in GELU_TANH_CLASSES:
            out[m] = _gelu_forward(m, verdicts)
        elif (name.endswith("RMSNorm") and type(m) is not getattr(nn, "RMSNorm", None)
              and isinstance(getattr(m, "weight", None), torch.Tensor) and _rms_eps(m) is not None):
            out[m] = _rms_forward(m, verdicts)
    return out
