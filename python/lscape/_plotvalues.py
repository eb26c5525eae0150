"""A surface's quantities as drawn: checked by name, masked where not computed, on a linear or log scale.

The pieces the figures (lscape.plot) and the interactive page (lscape._interactive) share, below both.
"""
from __future__ import annotations

from typing import Any

import numpy as np

SCALES = ("linear", "log")


def check_scale(scale: str) -> str:
    """scale, when it is one of SCALES; a ValueError naming it else."""
    if scale not in SCALES:
        raise ValueError(f"scale: got {scale!r}, expected one of {SCALES}")
    return scale


def surface_arg(surface: Any) -> Any:
    """surface, when it looks like a lscape.Surface (x, y, values, ndim); a TypeError naming it else."""
    if not all(hasattr(surface, a) for a in ("x", "y", "values", "ndim")):
        raise TypeError(f"surface: got {type(surface).__name__} {surface!r:.60}, expected a lscape.Surface "
                        "(lscape.surface(...) or lscape.Surface.load(path))")
    return surface


def quantity_values(surface: Any, quantity: str) -> np.ndarray:
    """The named quantity as float64, or a ValueError naming `quantity` and the ones the surface holds."""
    surface_arg(surface)
    if not isinstance(quantity, str) or quantity not in surface.values:
        raise ValueError(f"quantity: got {quantity!r}, expected one of {sorted(surface.values)}")
    return np.asarray(surface.values[quantity], dtype=np.float64)


def scaled(z: np.ndarray, scale: str, quantity: str) -> tuple[np.ma.MaskedArray, str]:
    """z with NaN (and, on a log scale, non-positive) cells masked, and the colour-bar label."""
    check_scale(scale)
    bad = ~np.isfinite(z)
    if scale == "log":
        bad |= ~(z > 0)
        if bad.all():
            raise ValueError(f"scale='log': {quantity} has no positive computed value to draw")
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.log10(np.where(bad, 1.0, z))
        return np.ma.masked_array(z, bad), f"log10 {quantity}"
    if bad.all():
        raise ValueError(f"{quantity}: no cell is computed yet (all NaN), nothing to draw")
    return np.ma.masked_array(np.where(bad, 0.0, z), bad), quantity
