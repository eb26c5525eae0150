"""Probes of a Landscape; each evaluates all its points in batched calls.

lines:    interpolate, plane, random_direction (Li et al. filter normalisation), project_trajectory
spectrum: hessian_eigs (Lanczos on Hessian-vector products), hvp, hutchinson_trace, spectral_density
          (stochastic Lanczos quadrature), classify_stationary (Bosman et al.)
hessian:  dense batched Hessians (small D)
walks:    progressive_walk (random and gradient walks of Malan & Engelbrecht / Bosman et al.)
basin:    basin_volume (Huang et al.: radii along random rays, log-volume)
"""
from __future__ import annotations

from .basin import BasinResult, basin_volume
from .hessian import hessian
from .lines import interpolate, plane, project_trajectory, random_direction
from .spectrum import classify_stationary, hessian_eigs, hutchinson_trace, hvp, spectral_density
from .walks import WalkResult, progressive_walk

__all__ = ["BasinResult", "WalkResult", "basin_volume", "classify_stationary", "hessian", "hessian_eigs",
           "hutchinson_trace", "hvp", "interpolate", "plane", "progressive_walk", "project_trajectory",
           "random_direction", "spectral_density"]
