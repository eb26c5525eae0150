"""Lines and planes through parameter space: linear interpolation (Goodfellow & Vinyals 2015), random
directions normalised per filter or per layer (Li et al. 2018), 2-D loss planes, and the projection of a
training trajectory onto the line between its ends (Goodfellow & Vinyals, Fig. 5).

Every loss value is computed in batched `Landscape.loss` calls; points are built in float64 and cast to
the landscape's dtype, a block at a time so that memory stays bounded for large D.
"""
from __future__ import annotations

import numbers

import torch
from torch import nn

from .. import _affine, _checks
from ..directions import random_directions
from ..landscape import Landscape

__all__ = ["interpolate", "plane", "project_trajectory", "random_direction"]

_BLOCK_ELEMS = 1 << 24  # float64 point entries built per block (128 MiB), before Landscape's own chunking
NORMS = ("filter", "layer", None)


# ---- argument helpers ---------------------------------------------------------------------------------
def _landscape_arg(landscape) -> Landscape:
    if not isinstance(landscape, Landscape):
        raise TypeError(f"landscape: got {_checks.describe(landscape)}, expected a lscape.Landscape")
    return landscape


def _coords_arg(name: str, x) -> torch.Tensor:
    """A non-empty finite 1-D array of real coefficients, as a float64 CPU tensor."""
    if isinstance(x, numbers.Real) and not isinstance(x, bool):
        x = [x]
    t = _checks.as_tensor(name, x)
    expected = "a non-empty finite 1-D array of real numbers"
    if t.ndim != 1 or t.shape[0] == 0 or t.dtype == torch.bool or t.dtype.is_complex:
        raise ValueError(f"{name}: got {_checks.describe(t)}, expected {expected}")
    t = t.to(dtype=torch.float64, device="cpu")
    _checks.finite(name, t, expected)
    return t


def _losses_along(landscape: Landscape, origin: torch.Tensor, coeffs: torch.Tensor,
                  dirs: torch.Tensor) -> torch.Tensor:
    """Loss at origin + coeffs @ dirs for each row of coeffs (P, m); dirs (m, D), all float64 on the
    landscape's device.  A Landscape.from_module whose input layers are affine along the line goes through
    lscape._affine (their products once, then one fused sum per point); any other, points built a block at
    a time (float64, then the landscape's dtype)."""
    fast = _affine.landscape_losses(landscape, origin, coeffs, dirs)
    if fast is not None:
        return fast
    P, D = coeffs.shape[0], landscape.dim
    block = max(1, _BLOCK_ELEMS // D, landscape.chunk or 1)
    out = []
    for i in range(0, P, block):
        c = coeffs[i:i + block].to(landscape.device)
        pts = torch.addmm(origin.expand(c.shape[0], D), c, dirs)
        out.append(landscape.loss(pts.to(landscape.dtype)))
    return torch.cat(out)


# ---- interpolation ------------------------------------------------------------------------------------
def interpolate(landscape: Landscape, theta0, theta1, alphas) -> torch.Tensor:
    """Loss along the line through theta0 and theta1: L((1 - a) theta0 + a theta1) for each a in alphas.

    theta0, theta1: (D,) with D = landscape.dim.  alphas: (A,) any finite reals (a < 0 and a > 1 look
    beyond the ends, as in Goodfellow & Vinyals' plots); a = 0 and a = 1 give exactly theta0 and theta1.
    Returns the losses (A,) in the landscape's dtype.  All A points go through batched landscape.loss
    calls (the landscape chunks them to bound memory)."""
    L = _landscape_arg(landscape)
    t0 = _checks.vector_arg("theta0", theta0, L.dim, L.device)
    t1 = _checks.vector_arg("theta1", theta1, L.dim, L.device)
    a = _coords_arg("alphas", alphas)
    # (1 - a) theta0 + a theta1 rather than theta0 + a (theta1 - theta0): exact at both ends
    coeffs = torch.stack([1.0 - a, a], dim=1)
    return _losses_along(L, torch.zeros_like(t0), coeffs, torch.stack([t0, t1]))


# ---- directions ---------------------------------------------------------------------------------------
def random_direction(model: nn.Module, norm: str | None = "filter", seed: int = 0) -> torch.Tensor:
    """A Gaussian direction in the parameter space of `model`, flattened in model.named_parameters()
    order (the layout of Landscape.from_module): (D,) in the dtype and on the device of the model's
    first parameter.

    norm="filter" (Li et al. 2018, "filter normalization"): in every parameter with two or more
    dimensions, each filter -- a slice along dim 0: an output unit's row of a Linear weight, an output
    channel of a Conv weight -- is rescaled to the norm of the same filter of the model's weights;
    one-dimensional parameters (biases, BatchNorm/LayerNorm scales and shifts) get direction zero, as
    in Li et al.'s default (ignore="biasbn").
    norm="layer": each parameter tensor's direction is rescaled to that tensor's norm (biases included).
    norm=None: the raw N(0, 1) sample.

    Deterministic: the same seed gives the same direction on every device.  One implementation with
    lscape.directions.random_directions(model, 1, norm=norm, ignore="biasbn" for "filter" else None,
    seed=seed), whose float64 vector this is, cast to the model's dtype."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: got {_checks.describe(model)}, expected a torch.nn.Module")
    _checks.choice_arg("norm", norm, NORMS)
    seed = _checks.int_arg("seed", seed, low=0, high=2**63 - 1)
    dirs = random_directions(model, 1, norm=norm, ignore="biasbn" if norm == "filter" else None, seed=seed)
    first = next(model.parameters())
    return torch.as_tensor(dirs.vectors[0]).to(dtype=first.dtype, device=first.device)


# ---- planes -------------------------------------------------------------------------------------------
def _grid_arg(grid) -> tuple[torch.Tensor, torch.Tensor]:
    def count(name: str, n) -> torch.Tensor:
        return torch.linspace(-1.0, 1.0, _checks.int_arg(name, n, low=2), dtype=torch.float64)

    if isinstance(grid, numbers.Integral) and not isinstance(grid, bool):
        g = count("grid", grid)
        return g, g.clone()
    if isinstance(grid, (tuple, list)) and len(grid) == 2:
        a, b = grid
        ints = [isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (a, b)]
        if all(ints):
            return count("grid[0]", a), count("grid[1]", b)
        if not any(ints) and not any(isinstance(v, (bool, numbers.Real)) for v in (a, b)):
            return _coords_arg("grid[0] (alphas)", a), _coords_arg("grid[1] (betas)", b)
    raise TypeError(f"grid: got {_checks.describe(grid)}, expected an int >= 2 (a symmetric [-1, 1] grid of "
                    "that many points), a pair of ints (G1, G2), or a pair of 1-D arrays (alphas, betas)")


def plane(landscape: Landscape, center, u, v, grid: int | tuple = 21
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss on the plane center + a u + b v.

    center, u, v: (D,).  grid: an int G (a = b = linspace(-1, 1, G)), a pair of ints (G1, G2), or a pair
    of 1-D arrays (alphas, betas) of any finite values.
    Returns alphas (G1,) and betas (G2,) as float64, and loss (G1, G2) in the landscape's dtype with
    loss[i, j] = L(center + alphas[i] u + betas[j] v).  All G1 * G2 points go through batched
    landscape.loss calls."""
    L = _landscape_arg(landscape)
    c = _checks.vector_arg("center", center, L.dim, L.device)
    du = _checks.vector_arg("u", u, L.dim, L.device)
    dv = _checks.vector_arg("v", v, L.dim, L.device)
    alphas, betas = _grid_arg(grid)
    A, B = torch.meshgrid(alphas, betas, indexing="ij")
    coeffs = torch.stack([A.reshape(-1), B.reshape(-1)], dim=1)
    loss = _losses_along(L, c, coeffs, torch.stack([du, dv]))
    return alphas, betas, loss.reshape(alphas.shape[0], betas.shape[0])


# ---- trajectories -------------------------------------------------------------------------------------
def project_trajectory(thetas, theta_i, theta_f) -> tuple[torch.Tensor, torch.Tensor]:
    """Project points of a trajectory onto the line from theta_i to theta_f (Goodfellow & Vinyals,
    Fig. 5: the position along the initial-to-final line and the distance from it).

    thetas: (T, D); theta_i, theta_f: (D,), theta_i != theta_f.  With d = theta_f - theta_i:
    coord[t] = <theta_t - theta_i, d> / |d|^2  (0 at theta_i, 1 at theta_f) and
    residual[t] = |theta_t - theta_i - coord[t] d|  (the norm of the part off the line).
    Returns (coord (T,), residual (T,)), float64, computed in float64."""
    ti = _checks.vector_arg("theta_i", theta_i, None)
    D = ti.shape[0]
    tf = _checks.vector_arg("theta_f", theta_f, None, ti.device)
    if tf.shape[0] != D:  # either may be the wrong one: name both
        raise ValueError(f"theta_f: got {_checks.describe(tf)}, expected a vector of shape ({D},), the length of "
                         "theta_i (theta_i and theta_f are two points of one length D)")
    T = _checks.as_tensor("thetas", thetas)
    if T.ndim != 2 or T.shape[1] != D or not T.is_floating_point():
        raise ValueError(f"thetas: got {_checks.describe(T)}, expected a floating tensor of shape (T, {D}) "
                         "(D from theta_i)")
    T = T.to(dtype=torch.float64, device=ti.device)
    _checks.finite("thetas", T, f"finite points of shape (T, {D})")
    d = tf - ti
    dd = float(d @ d)
    if dd == 0.0:
        raise ValueError("theta_f: equals theta_i, expected a different point (the line needs a direction)")
    X = T - ti
    coord = (X @ d) / dd
    residual = (X - coord[:, None] * d).norm(dim=1)
    return coord, residual

