"""Training any nn.Module on a random hyperplane, a random hypersphere, or a sphere of the full space.

    sub = Subspace(model, d=200, kind="hyperplane")            # r = a + P theta, theta = 0 at start
    sub = Subspace(model, d=200, kind="hypersphere", r0=10.0)  # r = P theta, |r| = r0 throughout
    sub = Subspace(model, None, kind="sphere", r0=10.0)        # r = theta in R^D, |r| = r0 throughout
    opt = torch.optim.Adam(sub.parameters(), lr=1e-2)          # only theta is trainable
    sub.constrain(opt)                                         # hypersphere / sphere: hold |r| = r0
    loss = loss_fn(sub(x), y); loss.backward(); opt.step()

hypersphere / sphere without constrain(): an optimizer step leaves the sphere (Adam drifts |r| by 16% in
100 steps), so the forward pass refuses to run once |r| is off r0 by more than rounding (relative
tolerance SPHERE_RTOL[dtype]) and raises OffSphereError, which says to call sub.constrain(opt).  The
check costs one float64 norm of the r the forward pass computes anyway; radius() and flat_params() do
not check, so the drift can still be inspected.

r is the model's flat parameter vector, in model.named_parameters() order (the layout of
Landscape.from_module).  The forward pass runs the model with its parameters replaced by r through
torch.func.functional_call; its buffers are the model's own, so BatchNorm running statistics keep
updating in train mode.  The model is held but not registered as a submodule, so its parameters are
not in sub.parameters(); train()/eval() and .to()/.double() are passed on to it.

P is a lscape.SparseSignProjection (D x d, columns of unit norm, orthogonal only in expectation), so
storage="implicit" holds O(d) numbers for any D; storage="fastfood" makes it a lscape.FastfoodProjection
(the same column norms, products O(D log d), faster at large d).  Because P is not exactly orthonormal, the
hypersphere constraint is imposed on |P theta| itself, not on |theta|: see SphereConstraint.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from . import _checks
from ._flat import FlatLayout
from .projection import PROJECTIONS, FastfoodProjection, SparseSignProjection, make_projection

__all__ = ["Subspace", "SphereConstraint", "OffSphereError", "KINDS", "SPHERE_RTOL"]

KINDS = ("hyperplane", "hypersphere", "sphere")
# | |r| - r0 | / r0 the forward pass accepts: constrained steps stay within ~1e-6 (float32) and ~1e-13
# (float64) of r0; one unconstrained Adam step moves |r| by ~1e-3.
SPHERE_RTOL = {torch.float32: 1e-4, torch.float64: 1e-9}


class OffSphereError(RuntimeError):
    """A hypersphere / sphere Subspace was stepped without its constraint and has left its sphere."""


class SphereConstraint:
    """Holds |P theta| = r0 for a parameter theta while any torch optimizer trains it.

    P is a linear map given as a callable (a SparseSignProjection or FastfoodProjection, or None for the
    identity), so the
    constraint surface is S = {theta : |P theta| = r0}; its normal at theta is n = P^T P theta (half the
    gradient of |P theta|^2).

    before_step(): remembers theta, and removes the radial part of theta.grad, g <- g - (g.n / n.n) n
        (the paper's "subtract the radial component of the gradient"; with Adam or momentum it keeps
        the radial direction out of the optimizer's moment estimates).
    after_step(): takes the step the optimizer actually made, delta = theta_new - theta_old (which for
        Adam, momentum or weight decay is not along -g), removes its component along n at theta_old,
        and rescales theta <- theta * r0 / |P theta| so |P theta| = r0 holds to rounding.  Rescaling is
        exact because P is linear: |P (c theta)| = c |P theta|.

    Cost per step: one P^T P product for n (whose P theta a Subspace hands over from its forward pass
    through remember_image, leaving one P^T) and one P theta to renormalise.

    Use it either by calling before_step() / after_step() around optimizer.step(), or with
    attach(optimizer), which registers both as the optimizer's step pre- and post-hooks (torch >= 2.0)
    and returns a handle whose remove() detaches them.  project_() only renormalises (e.g. after
    loading a checkpoint or editing theta by hand).
    """

    def __init__(self, theta: torch.Tensor, r0: float,
                 P: SparseSignProjection | FastfoodProjection | None = None) -> None:
        if not isinstance(theta, torch.Tensor) or theta.ndim != 1:
            raise TypeError(f"theta: got {_checks.describe(theta)}, expected a 1-d tensor (a parameter)")
        if theta.numel() == 0 or not theta.is_floating_point():
            raise ValueError(f"theta: got {_checks.describe(theta)}, expected a non-empty floating 1-d tensor")
        _checks.finite("theta", theta.detach(), "a finite parameter")
        self.theta = theta
        self.r0 = _checks.float_arg("r0", r0, low=0.0, high=math.inf, low_open=True)
        if P is not None and P.d != theta.numel():
            raise ValueError(f"theta: got length {theta.numel()}, expected P.d = {P.d} (P is a {P.D} x {P.d} "
                             "projection)")
        self.P = P
        self._old: tuple[torch.Tensor, torch.Tensor] | None = None  # (theta, its normal) before the step
        self._image: tuple[tuple[int, int, int], torch.Tensor] | None = None  # see remember_image

    def __repr__(self) -> str:
        return f"SphereConstraint(r0={self.r0:.6g}, dim={self.theta.numel()}, projected={self.P is not None})"

    # ---- geometry -----------------------------------------------------------------------------------
    def image(self, theta: torch.Tensor) -> torch.Tensor:
        """P theta (theta itself without P), without autograd."""
        with torch.no_grad():
            return theta if self.P is None else self.P.matvec(theta)

    def normal(self, theta: torch.Tensor) -> torch.Tensor:
        """n = P^T P theta: the normal of the constraint surface at theta."""
        with torch.no_grad():
            return theta if self.P is None else self.P.rmatvec(self.P.matvec(theta))

    @staticmethod
    def _key(theta: torch.Tensor, image: torch.Tensor) -> tuple[int, int, int]:
        return theta.data_ptr(), theta._version, image._version

    def remember_image(self, image: torch.Tensor) -> None:
        """Hand over P theta for theta as it is now (e.g. from the forward pass), so that before_step
        need not recompute it.  It is used only while neither theta nor image has changed (their
        version counters), and dropped at the next step."""
        if self.P is not None:
            image = image.detach()
            self._image = (self._key(self.theta.detach(), image), image)

    def _normal_of_theta(self, th: torch.Tensor) -> torch.Tensor:
        cached, self._image = self._image, None
        if self.P is None or cached is None or cached[0] != self._key(th, cached[1]):
            return self.normal(th)
        return self.P.rmatvec(cached[1])

    def radius(self) -> float:
        """|P theta| now."""
        return float(torch.linalg.vector_norm(self.image(self.theta.detach()), dtype=torch.float64))

    @staticmethod
    def _remove_along(v: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        nn_ = torch.dot(n, n)
        if nn_ <= 0:
            return v
        return v - (torch.dot(v, n) / nn_) * n

    # ---- the two halves of a constrained step ---------------------------------------------------------
    @torch.no_grad()
    def before_step(self) -> None:
        """Remember theta and its normal, and remove the radial component of theta.grad (if there is one)."""
        th = self.theta.detach()
        n = self._normal_of_theta(th)  # after_step needs it too: one P^T P product a step, not two
        self._old = (th.clone(), n)
        g = self.theta.grad
        if g is not None:
            g.copy_(self._remove_along(g, n))

    @torch.no_grad()
    def after_step(self) -> None:
        """Keep only the tangential part of the step just taken, then renormalise to |P theta| = r0."""
        th = self.theta.detach()
        if self._old is not None:
            old, n = self._old
            th.copy_(old + self._remove_along(th - old, n))
            self._old = None
        self.project_()

    @torch.no_grad()
    def project_(self) -> None:
        """theta <- theta * r0 / |P theta| (in place)."""
        th = self.theta.detach()
        # float64 sum: exact to rounding at any D
        rad = float(torch.linalg.vector_norm(self.image(th), dtype=torch.float64))
        if not math.isfinite(rad) or rad <= 0:
            raise FloatingPointError(f"SphereConstraint: |P theta| = {rad}, cannot renormalise to "
                                     f"r0 = {self.r0} (theta diverged or collapsed to zero)")
        th.mul_(self.r0 / rad)

    def attach(self, optimizer: torch.optim.Optimizer) -> _Handles:
        """Run before_step / after_step around every optimizer.step(); returns a handle with remove()."""
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer: got {_checks.describe(optimizer)}, expected a torch.optim.Optimizer")
        if not any(p is self.theta for g in optimizer.param_groups for p in g["params"]):
            raise ValueError("optimizer: does not hold the constrained parameter theta; build it from "
                             "the Subspace's parameters()")
        pre = optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.before_step())
        post = optimizer.register_step_post_hook(lambda opt, args, kwargs: self.after_step())
        return _Handles(pre, post)


class _Handles:
    def __init__(self, *handles: Any) -> None:
        self._handles = handles

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


class Subspace(nn.Module):
    """`model` trained in a random subspace: its only trainable parameter is theta.

    Args:
        model: any nn.Module with at least one parameter; D = its parameter count.
        d: subspace dimension, 1 <= d <= D (kind="sphere": None or D).
        kind: "hyperplane": r = a + P theta, theta starts at 0.  a is the model's own initialisation,
                  or, with r0, an isotropic Gaussian direction scaled to |a| = r0.
              "hypersphere": r = P theta with |r| = r0 held by a SphereConstraint; theta starts
                  Gaussian, scaled so |P theta| = r0.  r0=None: r0 = |model's own initialisation|.
              "sphere": r = theta in the full space (no P) with |r| = r0 held; theta starts at the
                  model's own initialisation (r0=None: r0 = its radius) or, with r0 given, at an
                  isotropic Gaussian direction scaled to |r| = r0.
        r0: radius, > 0 (see kind).
        seed: seeds P and the Gaussian draws of a / theta.
        storage: P's storage, "indices" or "implicit" (O(d) memory for any D), or "fastfood": P is then a
            lscape.FastfoodProjection, another matrix with unit-norm columns whose products cost O(D log d)
            (faster from d of a few thousand; docs/guides/subspaces.md, "Choosing a projection").
        density: P's nonzero probability (default 1/sqrt(D)); None with storage="fastfood".

    The model's parameters, dtype and device are taken at construction; later edits to them do not
    affect the Subspace (use load_into_model() to write r back into the model).
    """

    def __init__(self, model: nn.Module, d: int | None, *, kind: str = "hyperplane", r0: float | None = None,
                 seed: int = 0, storage: str = "indices", density: float | None = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: got {_checks.describe(model)}, expected a torch.nn.Module")
        kind = _checks.choice_arg("kind", kind, KINDS)
        storage = _checks.choice_arg("storage", storage, PROJECTIONS)
        named = list(model.named_parameters())
        if not named:
            raise ValueError(f"model: got a {type(model).__name__} with no parameters, expected at least one")
        dtypes = {p.dtype for _, p in named}
        devices = {p.device for _, p in named}
        if len(dtypes) != 1 or len(devices) != 1:
            raise ValueError(f"model: got parameters of dtypes {sorted(map(str, dtypes))} on devices "
                             f"{sorted(map(str, devices))}, expected one floating dtype on one device")
        dtype, device = dtypes.pop(), devices.pop()
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"model: got parameters of dtype {dtype}, expected torch.float32 or torch.float64")
        seed = _checks.int_arg("seed", seed, low=0, high=2**63 - 1)
        self.layout = FlatLayout.of(model)
        D = self.layout.dim
        if kind == "sphere":
            if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d != D):
                raise ValueError(f"d: got {d!r}, expected None or D = {D} for kind='sphere' "
                                 f"(the sphere lives in the full parameter space)")
            d = D
        else:
            if d is None:
                raise TypeError(f"d: got None, expected an integer in [1, {D}] for kind={kind!r}")
            d = _checks.int_arg("d", d, low=1)
            if d > D:
                raise ValueError(f"d: got {d}, expected at most D = {D} (the model's parameter count)")
        if r0 is not None:
            r0 = _checks.float_arg("r0", r0, low=0.0, high=math.inf, low_open=True)

        object.__setattr__(self, "model", model)  # held, not registered: its parameters stay out of ours
        self.kind, self.D, self.d, self.seed = kind, D, d, seed
        gen = torch.Generator().manual_seed(seed)
        init = self.layout.flatten(model)
        init_radius = float(torch.linalg.vector_norm(init))

        self.P: SparseSignProjection | FastfoodProjection | None = None
        if kind != "sphere":
            self.P = make_projection(D, d, seed=seed, storage=storage, density=density, device=device)

        self.constraint: SphereConstraint | None = None
        if kind == "hyperplane":
            if r0 is None:
                a = init
            else:
                a = _gaussian(D, gen, dtype, device)
                a = a * (r0 / torch.linalg.vector_norm(a))
            self.register_buffer("a", a)
            self.r0 = float(torch.linalg.vector_norm(a))
            self.theta = nn.Parameter(torch.zeros(d, dtype=dtype, device=device))
        else:
            own_start = kind == "sphere" and r0 is None
            if r0 is None:
                if init_radius <= 0:
                    raise ValueError("r0: got None, but the model's own initialisation has radius 0; "
                                     "give r0 > 0")
                r0 = init_radius
            self.r0 = r0
            self.register_buffer("a", None)
            theta = init.clone() if own_start else _gaussian(d, gen, dtype, device)
            self.theta = nn.Parameter(theta)
            self.constraint = SphereConstraint(self.theta, r0, self.P)
            self.constraint.project_()

    # ---- the parameter vector r ------------------------------------------------------------------------
    def flat_params(self) -> torch.Tensor:
        """r (D,), differentiable with respect to theta."""
        if self.kind == "sphere":
            return self.theta
        if self.constraint is not None or self.a is None:
            r = self.P(self.theta)
            if self.constraint is not None:  # its next before_step needs P theta: this one, if theta stays
                self.constraint.remember_image(r)
            return r
        # in place: a fresh D-vector costs a pass and page faults (P's backward saves nothing).  On P's
        # (1, D) output itself, not on the (D,) view of it: an in-place op on a view makes autograd record
        # CopySlices, whose backward copies the D-vector gradient three times (measured: 4 copies a step)
        return self.P(self.theta.unsqueeze(0)).add_(self.a).view(-1)

    def radius(self) -> float:
        """|r| now."""
        with torch.no_grad():
            return float(torch.linalg.vector_norm(self.flat_params(), dtype=torch.float64))

    def params_dict(self, r: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{name: tensor} views of r (default flat_params()) shaped like the model's parameters."""
        return self.layout.split(self.flat_params() if r is None else r)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """model(*args, **kwargs) with its parameters replaced by r (its own buffers are used).

        hypersphere / sphere: raises OffSphereError if |r| has left r0 (an optimizer stepped theta
        without sub.constrain(optimizer)); see the module docstring."""
        r = self.flat_params()
        if self.constraint is not None:
            self._check_on_sphere(r)
        return torch.func.functional_call(self.model, self.params_dict(r), args, kwargs, strict=False)

    def _check_on_sphere(self, r: torch.Tensor) -> None:
        rad = float(torch.linalg.vector_norm(r.detach(), dtype=torch.float64))
        if not abs(rad - self.r0) <= SPHERE_RTOL.get(r.dtype, 1e-4) * self.r0:
            raise OffSphereError(
                f"Subspace(kind={self.kind!r}): |r| = {rad:.9g}, expected r0 = {self.r0:.9g}: theta was changed "
                f"off the sphere, most likely by an optimizer step without the constraint.  Call "
                f"sub.constrain(optimizer) once after building the optimizer (or sub.constraint.project_() "
                f"after editing theta by hand)")

    @torch.no_grad()
    def load_into_model(self) -> nn.Module:
        """Copy r into the model's own parameters (in place) and return the model."""
        self.layout.load(self.model, self.flat_params())
        return self.model

    # ---- training helpers -----------------------------------------------------------------------------
    def constrain(self, optimizer: torch.optim.Optimizer):
        """hypersphere / sphere: attach the SphereConstraint to `optimizer` (returns a handle with
        remove()).  hyperplane: nothing to hold; returns None."""
        if self.constraint is None:
            return None
        return self.constraint.attach(optimizer)

    # ---- module plumbing ------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Subspace:
        super().train(mode)
        self.model.train(mode)
        return self

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self.model._apply(fn, *args, **kwargs)
        if self.P is not None and self.P.device != self.theta.device:
            self.P = self.P.to(self.theta.device)
        if self.constraint is not None:
            self.constraint.theta = self.theta
            self.constraint.P = self.P
            self.constraint.project_()  # e.g. float32 -> float64: back on the sphere to the new rounding
        return self

    def extra_repr(self) -> str:
        return (f"kind={self.kind!r}, D={self.D}, d={self.d}, r0={self.r0:.6g}, "
                f"model={type(self.model).__name__}")


def _gaussian(n: int, gen: torch.Generator, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """n standard normals drawn on the CPU from `gen` (so the draw is the same on every device)."""
    return torch.randn(n, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
