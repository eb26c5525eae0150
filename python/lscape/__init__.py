"""lscape: fast, exact tools for the geometry of neural-network loss landscapes."""
from __future__ import annotations

from ._backend import BackendInfo, backends, use_backend
from .projection import SparseSignProjection

__version__ = "0.1.0"
__all__ = ["BackendInfo", "SparseSignProjection", "backends", "use_backend", "__version__"]
