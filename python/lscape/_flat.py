"""The flat parameter layout of a module: one vector of length D, in model.named_parameters() order.

Every part of lscape that turns a model into a point of parameter space and back (Landscape.from_module,
Subspace, the probes, the experiments, lscape.surface) goes through FlatLayout, so the order, the shapes
and the split live in one place.

    layout = FlatLayout.of(model)            # names, shapes, sizes; layout.dim == D
    theta = layout.flatten(model)            # (D,) detached copy of the parameters
    params = layout.split(theta)             # {name: view of shape p.shape}, for functional_call
    layout.load(model, theta)                # copy theta into the model's parameters (no grad)
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["FlatLayout"]


@dataclass(frozen=True)
class FlatLayout:
    """names[i] is a parameter of shape shapes[i] holding sizes[i] entries of the flat vector, in order."""
    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def of(cls, model: nn.Module) -> FlatLayout:
        """The layout of model.named_parameters() (every parameter, trainable or not)."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: got {type(model).__name__}, expected a torch.nn.Module")
        named = list(model.named_parameters())
        if not named:
            raise ValueError("model: has no parameters, expected at least one")
        return cls(tuple(n for n, _ in named), tuple(p.shape for _, p in named))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(s.numel() for s in self.shapes)

    @property
    def dim(self) -> int:
        """D, the length of a flat vector."""
        return sum(self.sizes)

    def offsets(self) -> dict[str, tuple[int, int]]:
        """{name: (start, stop)} of each parameter's slice of the flat vector."""
        out, start = {}, 0
        for n, k in zip(self.names, self.sizes, strict=False):
            out[n] = (start, start + k)
            start += k
        return out

    def split(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """(..., D) -> {name: view of shape (..., *shape)}; views share theta's storage and autograd graph."""
        if theta.shape[-1] != self.dim:
            raise ValueError(f"theta: got a tensor of shape {tuple(theta.shape)}, expected last dimension "
                             f"{self.dim} (the model's parameter count)")
        lead = theta.shape[:-1]
        parts = torch.split(theta, self.sizes, dim=-1)
        return {n: p.reshape(*lead, *s) for n, s, p in zip(self.names, self.shapes, parts, strict=False)}

    def flatten(self, params: nn.Module | Mapping[str, torch.Tensor] | Iterable[torch.Tensor]) -> torch.Tensor:
        """A module, a {name: tensor} mapping or tensors in layout order -> one detached (D,) vector."""
        if isinstance(params, nn.Module):
            params = dict(params.named_parameters())
        tensors = [params[n] for n in self.names] if isinstance(params, Mapping) else list(params)
        if len(tensors) != len(self.names) or any(t.shape != s for t, s in zip(tensors, self.shapes, strict=False)):
            got = [tuple(t.shape) for t in tensors]
            raise ValueError(f"params: got tensors of shapes {got}, expected {[tuple(s) for s in self.shapes]}")
        return torch.cat([t.detach().reshape(-1) for t in tensors])

    def load(self, model: nn.Module, theta: torch.Tensor) -> None:
        """Copy the flat vector theta (D,) into model's parameters, in place and without autograd."""
        named = dict(model.named_parameters())
        with torch.no_grad():
            for n, v in self.split(theta.detach()).items():
                named[n].copy_(v)
