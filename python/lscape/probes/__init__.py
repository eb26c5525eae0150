"""Probes of a Landscape; each evaluates all its points in batched calls."""
from __future__ import annotations

from .hessian import hessian

__all__ = ["hessian"]
