"""lscape: fast, exact tools for the geometry of neural-network loss landscapes."""
from __future__ import annotations

from . import checkpoints, data, probes
from ._backend import BackendInfo, backends, use_backend
from ._modelio import token_cross_entropy
from .ensemble import TrainResult, TrainState, mlp_loss, mlp_loss_grad, train_ensemble
from .intrinsic import IntrinsicDimension, intrinsic_dimension
from .landscape import Landscape
from .neb import NEBConfig, NEBResult, neb
from .projection import FastfoodProjection, SparseSignProjection
from .radial import RadiusRecorder, RandomWalkFit, fit_random_walk, r_x, radius
from .subspace import OffSphereError, SphereConstraint, Subspace
from .surface import Surface, surface
from .tinymlp import TinyMLP

try:  # the version is written once, in pyproject.toml
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version
    __version__ = _version("lscape")
except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
    __version__ = "0+unknown"
__all__ = [
    "BackendInfo",
    "FastfoodProjection",
    "IntrinsicDimension",
    "Landscape",
    "NEBConfig",
    "NEBResult",
    "OffSphereError",
    "RadiusRecorder",
    "RandomWalkFit",
    "SparseSignProjection",
    "SphereConstraint",
    "Subspace",
    "Surface",
    "TinyMLP",
    "TrainResult",
    "TrainState",
    "backends",
    "checkpoints",
    "data",
    "fit_random_walk",
    "intrinsic_dimension",
    "mlp_loss",
    "mlp_loss_grad",
    "neb",
    "probes",
    "r_x",
    "radius",
    "surface",
    "token_cross_entropy",
    "train_ensemble",
    "use_backend",
    "__version__",
]
