"""Analytic test surfaces for NEB: the Mueller-Brown potential (Mueller & Brown 1979) in torch and numpy,
its minima and saddles, and an ASE calculator for it (one atom moving in the z = 0 plane)."""
from __future__ import annotations

import lscape
import numpy as np
import torch

MB_A = (-200.0, -100.0, -170.0, 15.0)
MB_a = (-1.0, -1.0, -6.5, 0.7)
MB_b = (0.0, 0.0, 11.0, 0.6)
MB_c = (-10.0, -10.0, -6.5, 0.7)
MB_X0 = (1.0, 0.0, -0.5, -1.0)
MB_Y0 = (0.0, 0.5, 1.5, 1.0)

# Published stationary points (e.g. Mueller & Brown 1979; Sheppard, Terrell & Henkelman 2008), 3 decimals.
MIN_A = (-0.558, 1.442)  # E = -146.70
MIN_B = (0.623, 0.028)  # E = -108.17
MIN_C = (-0.050, 0.467)  # E = -80.77
SADDLE_AC = (-0.822, 0.624, -40.66)
SADDLE_CB = (0.212, 0.293, -72.25)


def mb_torch(p: torch.Tensor) -> torch.Tensor:
    """Energy of one point p (2,)."""
    t = lambda v: torch.tensor(v, dtype=p.dtype, device=p.device)  # noqa: E731
    dx, dy = p[0] - t(MB_X0), p[1] - t(MB_Y0)
    return (t(MB_A) * torch.exp(t(MB_a) * dx * dx + t(MB_b) * dx * dy + t(MB_c) * dy * dy)).sum()


def mb_numpy(x, y):
    """Energy and gradient at (x, y) (arrays), independent of torch."""
    E = gx = gy = 0.0
    for A, a, b, c, x0, y0 in zip(MB_A, MB_a, MB_b, MB_c, MB_X0, MB_Y0, strict=False):
        term = A * np.exp(a * (x - x0) ** 2 + b * (x - x0) * (y - y0) + c * (y - y0) ** 2)
        E = E + term
        gx = gx + term * (2 * a * (x - x0) + b * (y - y0))
        gy = gy + term * (b * (x - x0) + 2 * c * (y - y0))
    return E, gx, gy


def mb_landscape(dtype=torch.float64) -> lscape.Landscape:
    return lscape.Landscape.from_function(mb_torch, 2, dtype=dtype)


def ase_mb_calculator():
    """An ASE calculator for one atom on the Mueller-Brown surface (z ignored, zero z force)."""
    from ase.calculators.calculator import Calculator, all_changes

    class MuellerBrown(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=None, system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            x, y, _ = self.atoms.positions[0]
            E, gx, gy = mb_numpy(x, y)
            self.results = {"energy": float(E), "forces": np.array([[-gx, -gy, 0.0]])}

    return MuellerBrown()
