"""Dense Hessians of a Landscape at many points (small D), by forward-over-reverse torch.func."""
from __future__ import annotations

import torch

from .. import _checks
from ..landscape import Landscape

_MAX_ELEMS = 1 << 26  # Hessian entries computed per vmap call (chunk * D * D)


def hessian(landscape: Landscape, thetas: torch.Tensor, *, chunk: int | None = None) -> torch.Tensor:
    """Hessians (B, D, D) of the landscape's loss at thetas (B, D), symmetrised ((H + H^T) / 2).

    Differentiates landscape.torch_loss twice; points are processed `chunk` at a time (default: as many
    as keep chunk * D^2 below 2^26 entries)."""
    if not isinstance(landscape, Landscape):
        raise TypeError(f"landscape: got {_checks.describe(landscape)}, expected a lscape.Landscape")
    t = landscape.check_points(thetas)
    D = landscape.dim
    _checks.finite("thetas", t, f"finite points of shape (B, {D})")  # a Hessian at NaN is NaN: say so at once
    if chunk is None:
        chunk = max(1, _MAX_ELEMS // (D * D))
    chunk = _checks.int_arg("chunk", chunk, low=1)

    def one(theta: torch.Tensor) -> torch.Tensor:
        return landscape.torch_loss(theta[None])[0]

    h = torch.func.vmap(torch.func.jacfwd(torch.func.grad(one)))
    parts = [h(t[i:i + chunk]) for i in range(0, t.shape[0], chunk)]
    H = torch.cat(parts) if parts else t.new_zeros(0, D, D)
    return 0.5 * (H + H.transpose(1, 2))
