"""lscape: fast, exact tools for the geometry of neural-network loss landscapes."""
from __future__ import annotations

from ._backend import BackendInfo, backends, use_backend
from . import data, probes
from .ensemble import TrainResult, TrainState, mlp_loss, mlp_loss_grad, train_ensemble
from .landscape import Landscape
from .neb import NEBConfig, NEBResult, neb
from .projection import SparseSignProjection
from .radial import RadiusRecorder, RandomWalkFit, fit_random_walk, r_x, radius
from .subspace import OffSphereError, SphereConstraint, Subspace
from .tinymlp import TinyMLP

__version__ = "0.1.0"
__all__ = ["BackendInfo", "Landscape", "NEBConfig", "NEBResult", "RadiusRecorder", "RandomWalkFit", "SparseSignProjection",
           "SphereConstraint", "Subspace", "TinyMLP", "TrainResult", "TrainState", "backends",
           "data", "fit_random_walk", "mlp_loss", "mlp_loss_grad", "neb", "probes", "r_x", "radius", "train_ensemble", "use_backend", "__version__"]
