"""Radial distance from the origin of parameter space: r = |theta|, its trajectory r(t) during training,
the random-walk model of r(t), and r_X, the typical radius of a model's own initialisation.

Random-walk model (Fort & Scherlis 2019; the paper's section V): r(t) = |r0_vec + s(t)| with s(t) a sum
of t independent steps of variance sigma^2 per component gives E r^2 = r0^2 + D sigma^2 t, so
r ~ t^(1/2) once D sigma^2 t >> r0^2, and r^2 - r0^2 grows linearly in t.  fit_random_walk measures
both: the log-log exponent of r against t, and the slope of r^2 - r0^2 against t.

Initialisation radius: with i.i.d. entries of second moment m_l in layer l (n_l entries),
E|theta|^2 = sum_l m_l n_l, and |theta| concentrates at r_X = sqrt(sum_l m_l n_l).  For a zero-mean
initialiser m_l = sigma_l^2.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import _checks

__all__ = ["radius", "RadiusRecorder", "RandomWalkFit", "fit_random_walk", "r_x", "init_second_moment"]


def radius(model) -> float:
    """|r|: the L2 norm of all of `model`'s parameters (a Subspace: of its r = a + P theta, not of
    theta), or of a tensor."""
    if isinstance(model, torch.Tensor):
        with torch.no_grad():
            return float(torch.linalg.vector_norm(model.detach().double()))
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: got {_checks.describe(model)}, expected an nn.Module, a Subspace or a tensor")
    if hasattr(model, "flat_params") and callable(getattr(model, "radius", None)):
        return float(model.radius())
    params = list(model.parameters())
    if not params:
        raise ValueError(f"model: got a {type(model).__name__} with no parameters, expected at least one")
    with torch.no_grad():
        return math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in params))


class RadiusRecorder:
    """Records r(t) = radius(model) during training.

    rec = RadiusRecorder(model)        # records t = 0 at once
    rec.attach(optimizer)              # then one point after every `every`-th optimizer.step()
    ... or call rec.record() yourself (t counts steps; pass t= to use your own clock)
    rec.t, rec.r                       # numpy arrays
    rec.fit()                          # fit_random_walk(rec.t, rec.r, rec.r0)
    """

    def __init__(self, model, *, every: int = 1, record_initial: bool = True) -> None:
        radius(model)  # validates model
        self.model = model
        self.every = _checks.int_arg("every", every, low=1)
        self.steps = 0
        self._t: list[float] = []
        self._r: list[float] = []
        self._handle = None
        if record_initial:
            self.record(t=0)

    def record(self, t: float | None = None) -> float:
        """Append (t, radius(model)); t defaults to the number of steps counted so far."""
        r = radius(self.model)
        self._t.append(float(self.steps if t is None else t))
        self._r.append(r)
        return r

    def _after_step(self, *_):
        self.steps += 1
        if self.steps % self.every == 0:
            self.record()

    def attach(self, optimizer: torch.optim.Optimizer):
        """Record after every `every`-th optimizer.step() (a step post-hook; attach it after any
        SphereConstraint so the recorded radius is the constrained one).  Returns the hook handle."""
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer: got {_checks.describe(optimizer)}, expected a torch.optim.Optimizer")
        self._handle = optimizer.register_step_post_hook(self._after_step)
        return self._handle

    def detach(self) -> None:
        """Stop recording after optimizer steps (undoes attach; the points recorded so far stay)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @property
    def t(self) -> np.ndarray:
        """(n,) float64: the step (or your clock's time) of every recorded point."""
        return np.asarray(self._t, dtype=np.float64)

    @property
    def r(self) -> np.ndarray:
        """(n,) float64: the radius |theta| of the model's parameters at each recorded point."""
        return np.asarray(self._r, dtype=np.float64)

    @property
    def r0(self) -> float:
        """The first recorded radius.  Raises ValueError when nothing has been recorded yet."""
        if not self._r:
            raise ValueError("RadiusRecorder: nothing recorded yet")
        return self._r[0]

    def fit(self, **kwargs) -> RandomWalkFit:
        """fit_random_walk(self.t, self.r, self.r0, **kwargs) (kwargs: t_min=); returns a RandomWalkFit."""
        return fit_random_walk(self.t, self.r, self.r0, **kwargs)


@dataclass(frozen=True)
class RandomWalkFit:
    """exponent, log_prefactor: least squares of log r = exponent * log t + log_prefactor (t > 0).
    diffusion, intercept: least squares of r^2 - r0^2 = diffusion * t + intercept; under the random-walk
    model diffusion = D sigma^2 (the variance added per unit time) and intercept = 0.
    n: points used."""
    exponent: float
    log_prefactor: float
    diffusion: float
    intercept: float
    n: int


def fit_random_walk(t, r, r0: float | None = None, *, t_min: float = 0.0) -> RandomWalkFit:
    """Fit the random-walk model to a radial trajectory r(t).

    t, r: 1-d sequences of equal length (t increasing is not required).  r0: the initial radius
    (default r at the smallest t).  t_min: use only points with t >= t_min (the log-log fit also drops
    t <= 0).  See RandomWalkFit for what is returned."""
    t, r = _checks.as_tensor("t", t).double().cpu().numpy(), _checks.as_tensor("r", r).double().cpu().numpy()
    if t.ndim != 1 or r.shape != t.shape:
        raise ValueError(f"t, r: got shapes {t.shape} and {r.shape}, expected two 1-d arrays of equal length")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(r))) or np.any(r < 0):
        raise ValueError("r: expected finite, nonnegative radii (and finite times t)")
    if r0 is None:
        if t.size == 0:
            raise ValueError("t: got an empty array, expected at least 2 points")
        r0 = float(r[np.argmin(t)])
    r0 = _checks.float_arg("r0", r0, low=0.0, high=math.inf)
    keep = t >= t_min
    tt, rr = t[keep], r[keep]
    if np.unique(tt).size < 2:
        raise ValueError(f"t: got {np.unique(tt).size} distinct times >= t_min = {t_min}, expected at least 2")
    diffusion, intercept = np.polyfit(tt, rr**2 - r0**2, 1)
    pos = (tt > 0) & (rr > 0)
    if np.unique(tt[pos]).size < 2:
        raise ValueError("t, r: fewer than 2 distinct points with t > 0 and r > 0, cannot fit log r vs log t")
    exponent, logc = np.polyfit(np.log(tt[pos]), np.log(rr[pos]), 1)
    return RandomWalkFit(float(exponent), float(logc), float(diffusion), float(intercept), int(tt.size))


# ---- initialisation radius ---------------------------------------------------------------------------
_INITS = ("default", "he", "xavier")
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _fans(module: nn.Module, weight: torch.Tensor) -> tuple[int, int]:
    return nn.init._calculate_fan_in_and_fan_out(weight)


def init_second_moment(module: nn.Module, name: str, param: torch.Tensor, init: str = "default") -> float:
    """E[w^2] per entry of parameter `name` (local name, e.g. "weight") of `module` under an
    initialiser:
      "default": torch's own init: nn.Linear / Conv*: weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
          second moment 1/(3 fan_in) (kaiming_uniform_ with a = sqrt(5)); BatchNorm / LayerNorm /
          GroupNorm: weight 1, bias 0; nn.Embedding: N(0, 1).
      "he": weights N(0, 2/fan_in), biases 0 (norm layers as in "default").
      "xavier": weights N(0, 2/(fan_in + fan_out)), biases 0 (norm layers as in "default").
    Raises ValueError for a module type it does not know (give r_x a callable instead)."""
    if isinstance(module, _NORMS):
        return 1.0 if name == "weight" else 0.0
    if isinstance(module, nn.Embedding) and name == "weight":
        return 1.0
    if isinstance(module, (nn.Linear, nn.Bilinear) + _CONV):
        w = module.weight
        fan_in, fan_out = _fans(module, w)
        if isinstance(module, nn.Bilinear):
            fan_in = w.shape[1]  # torch: U(-1/sqrt(in1_features), 1/sqrt(in1_features)) for both
        if init == "default" or isinstance(module, nn.Bilinear):
            return 1.0 / (3.0 * fan_in)
        if name != "weight":
            return 0.0
        return 2.0 / fan_in if init == "he" else 2.0 / (fan_in + fan_out)
    raise ValueError(f"model: parameter {name!r} of a {type(module).__name__} has no known initialiser; "
                     f"pass init= a callable (module, name, param) -> second moment per entry")


def r_x(model: nn.Module, init: str | Callable[[nn.Module, str, torch.Tensor], float] = "default") -> float:
    """r_X = sqrt(sum_l m_l n_l): the radius at which |theta| concentrates for a fresh initialisation of
    `model` (n_l entries of second moment m_l in parameter l; m_l = sigma_l^2 for zero-mean inits).
    init: "default" (torch's own initialisers), "he", "xavier" (see init_second_moment), or a callable
    (module, local_name, param) -> m_l.  Computed from shapes alone; the current values are not used."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: got {_checks.describe(model)}, expected a torch.nn.Module")
    if isinstance(init, str):
        init = _checks.choice_arg("init", init, _INITS)
        rule = init

        def moment(mod, name, p):
            return init_second_moment(mod, name, p, rule)
    elif callable(init):
        moment = init
    else:
        raise TypeError(f"init: got {_checks.describe(init)}, expected one of {', '.join(map(repr, _INITS))} "
                        f"or a callable")
    total, seen = 0.0, 0
    for mod in model.modules():
        for name, p in mod.named_parameters(recurse=False):
            m = float(moment(mod, name, p))
            if not (m >= 0 and math.isfinite(m)):
                raise ValueError(f"init: gave {m} for {type(mod).__name__}.{name}, expected a finite value >= 0")
            total += m * p.numel()
            seen += 1
    if seen == 0:
        raise ValueError(f"model: got a {type(model).__name__} with no parameters, expected at least one")
    return math.sqrt(total)
