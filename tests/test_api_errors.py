"""Every public entry point refuses malformed input by the argument's name.

The public API is enumerated, not listed: every function and class in lscape.__all__ and in the __all__ of
lscape.probes, lscape.directions, lscape.plot, lscape.data and lscape.executor, and every experiment's run().
Each needs an entry in CALLS (a valid call, and which of its arguments are tensors or batches) or in
RECORDS (a result type lscape builds, never a user): a new public name with neither fails
test_every_public_name_is_covered, so it cannot slip in without checks.  Then every required argument is
given a string and None, every tensor argument an empty, an integer, a NaN and a wrong-length tensor, and
every batch a wrong-shape one; each must raise a TypeError or ValueError that names the argument and says
what was expected, before any work is done."""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys
from collections.abc import Callable
from typing import Any

import lscape
import numpy as np
import pytest
import torch
from lscape import _backend, experiments
from torch import nn

MODULES = ("probes", "directions", "plot", "data", "executor", "checkpoints")

# Result and record types: lscape builds them and hands them back (a user never calls their constructor).
RECORDS = {"lscape.BackendInfo", "lscape.NEBResult", "lscape.TrainResult", "lscape.TrainState",
           "lscape.RandomWalkFit", "lscape.OffSphereError", "lscape.Surface", "lscape.probes.BasinResult",
           "lscape.probes.WalkResult", "lscape.data.Split", "lscape.executor.ExecutorLost",
           "lscape.executor.Executor", "lscape.IntrinsicDimension",
           "lscape.checkpoints.CheckpointMismatchError", "lscape.checkpoints.CheckpointNotFound"}
# Public names that are not callables to check (modules, constants, the version).
NOT_CALLABLE = {"lscape.data", "lscape.probes", "lscape.checkpoints", "lscape.__version__", "lscape.executor.EXECUTORS"}


def public_names() -> dict[str, Any]:
    names = {f"lscape.{n}": getattr(lscape, n) for n in lscape.__all__}
    for m in MODULES:
        mod = importlib.import_module(f"lscape.{m}")
        names.update({f"lscape.{m}.{n}": getattr(mod, n) for n in mod.__all__})
    names["lscape.experiments.run"] = experiments.run
    for exp in experiments.EXPERIMENTS:
        names[f"lscape.experiments.{exp}.run"] = experiments.get(exp).run
    return names


# ---- valid calls -----------------------------------------------------------------------------------------
def _landscape() -> lscape.Landscape:
    return lscape.Landscape(3, lambda T: (T ** 2).sum(1), dtype=torch.float64)


def _theta() -> torch.Tensor:
    return torch.tensor([0.5, -0.3, 0.2], dtype=torch.float64)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 3, generator=g), torch.randint(0, 2, (16,), generator=g)


def _surface() -> lscape.Surface:
    x, y = np.linspace(-1, 1, 4), np.linspace(-1, 1, 3)
    v = np.add.outer(x ** 2, y ** 2) + 0.1
    return lscape.Surface(x, y, {"train_loss": v}, np.ones(v.shape, bool), np.zeros((2, 5)), np.zeros(5))


def _curve() -> lscape.Surface:
    x = np.linspace(-1, 1, 5)
    return lscape.Surface(x, None, {"train_loss": x ** 2 + 0.1}, np.ones(5, bool), np.zeros((1, 5)), np.zeros(5))


def _spec() -> lscape.TinyMLP:
    return lscape.TinyMLP(depth=2, width=3)


def _mlp_xy():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, generator=g)
    return x, torch.sin(3 * x)


def _neb_result():
    return lscape.neb(_landscape(), torch.tensor([1.0, 0.0, 0.0]), torch.tensor([-1.0, 0.0, 0.0]), n_images=5,
                      steps=2)


def _checkpoint_folder() -> str:
    """A folder holding one checkpoint (the test runs in its tmp_path)."""
    import os
    os.makedirs("ckpt", exist_ok=True)
    torch.save(_model().state_dict(), "ckpt/step_1.pt")
    return "ckpt"


def _intrinsic():
    return lscape.intrinsic_dimension(_model(), nn.functional.cross_entropy, _batch(), dims=[2], batch_size=8)


@dataclasses.dataclass
class Call:
    """A valid call (kwargs()) and the kinds of its arguments: tensors {name: expected length or None for a
    matrix}, batches (an (X, Y) pair), checked (further arguments to feed a string and None though they
    have defaults)."""
    kwargs: Callable[[], dict[str, Any]]
    tensors: dict[str, int | None] = dataclasses.field(default_factory=dict)
    batches: tuple[str, ...] = ()
    checked: tuple[str, ...] = ()
    none_ok: tuple[str, ...] = ()  # arguments for which None is a valid value
    int_ok: tuple[str, ...] = ()  # tensor arguments whose integer form is a valid value (times, coordinates)


CALLS: dict[str, Call] = {
    "lscape.Landscape": Call(lambda: {"dim": 3, "torch_loss": lambda T: (T ** 2).sum(1)}),
    "lscape.NEBConfig": Call(lambda: {}, checked=("k", "method", "fmax")),
    "lscape.RadiusRecorder": Call(lambda: {"model": _model()}, checked=("every",)),
    "lscape.SparseSignProjection": Call(lambda: {"D": 50, "d": 5}),
    "lscape.FastfoodProjection": Call(lambda: {"D": 50, "d": 5}),
    "lscape.SphereConstraint": Call(lambda: {"theta": torch.ones(5) * 0.2, "r0": 1.0,
                                             "P": lscape.SparseSignProjection(50, 5)}, tensors={"theta": 5}),
    "lscape.Subspace": Call(lambda: {"model": _model(), "d": 4}, checked=("kind",), none_ok=("d",)),
    "lscape.TinyMLP": Call(lambda: {}, checked=("depth", "width")),
    "lscape.backends": Call(lambda: {}),
    "lscape.fit_random_walk": Call(lambda: {"t": np.arange(1.0, 30.0), "r": np.sqrt(np.arange(1.0, 30.0))},
                                   tensors={"t": 29, "r": 29}, int_ok=("t", "r")),
    "lscape.mlp_loss": Call(lambda: {"spec": _spec(), "params": _spec().init(2), "x": _mlp_xy()[0],
                                     "y": _mlp_xy()[1]}, tensors={"params": None, "x": 8, "y": 8}),
    "lscape.mlp_loss_grad": Call(lambda: {"spec": _spec(), "params": _spec().init(2), "x": _mlp_xy()[0],
                                          "y": _mlp_xy()[1]}, tensors={"params": None, "x": 8, "y": 8}),
    "lscape.neb": Call(lambda: {"landscape": _landscape(), "start": torch.tensor([1.0, 0, 0]),
                                "end": torch.tensor([-1.0, 0, 0]), "n_images": 5, "steps": 2},
                       tensors={"start": 3, "end": 3}, checked=("n_images", "optimizer")),
    "lscape.r_x": Call(lambda: {"model": _model()}, checked=("init",)),
    "lscape.radius": Call(lambda: {"model": _model()}),
    "lscape.token_cross_entropy": Call(lambda: {"outputs": torch.randn(2, 3, 5),
                                                "targets": torch.zeros(2, 3, dtype=torch.long)}),
    "lscape.surface": Call(lambda: {"model": _model(), "loss_fn": nn.functional.cross_entropy, "data": _batch(),
                                    "directions": "filter", "grid": 3}, batches=("data",),
                           checked=("bn", "grid", "compile")),
    "lscape.train_ensemble": Call(lambda: {"spec": _spec(), "params": _spec().init(2), "x": _mlp_xy()[0],
                                           "y": _mlp_xy()[1], "steps": 2, "lr": 0.01},
                                  tensors={"params": None, "x": 8, "y": 8}, checked=("optimizer",)),
    "lscape.use_backend": Call(lambda: {"name": "torch"}),
    "lscape.probes.basin_volume": Call(lambda: {"landscape": _landscape(), "theta": _theta(), "threshold": 1.0,
                                                "n_rays": 4}, tensors={"theta": 3}),
    "lscape.probes.classify_stationary": Call(lambda: {"eigs": torch.tensor([[1.0, 2.0]])},
                                              tensors={"eigs": None}, int_ok=("eigs",)),
    "lscape.probes.hessian": Call(lambda: {"landscape": _landscape(), "thetas": _theta()[None]},
                                  tensors={"thetas": None}),
    "lscape.probes.hessian_eigs": Call(lambda: {"landscape": _landscape(), "theta": _theta(), "k": 2},
                                       tensors={"theta": 3}, checked=("method", "start", "stop")),
    "lscape.probes.hutchinson_trace": Call(lambda: {"landscape": _landscape(), "theta": _theta(), "n_samples": 4},
                                           tensors={"theta": 3}),
    "lscape.probes.hvp": Call(lambda: {"landscape": _landscape(), "theta": _theta(), "vs": torch.eye(3)},
                              tensors={"theta": 3, "vs": None}),
    "lscape.probes.interpolate": Call(lambda: {"landscape": _landscape(), "theta0": _theta(), "theta1": -_theta(),
                                               "alphas": torch.linspace(0, 1, 5)},
                                      tensors={"theta0": 3, "theta1": 3, "alphas": None}, int_ok=("alphas",)),
    "lscape.probes.plane": Call(lambda: {"landscape": _landscape(), "center": _theta(),
                                         "u": torch.tensor([1.0, 0, 0]), "v": torch.tensor([0, 1.0, 0]),
                                         "grid": 3}, tensors={"center": 3, "u": 3, "v": 3}),
    "lscape.probes.progressive_walk": Call(lambda: {"landscape": _landscape(), "starts": _theta()[None],
                                                    "steps": 2, "step_bound": 0.1}, tensors={"starts": None}),
    "lscape.probes.project_trajectory": Call(lambda: {"thetas": torch.randn(4, 3), "theta_i": _theta(),
                                                      "theta_f": -_theta()},
                                             tensors={"thetas": None, "theta_i": 3, "theta_f": 3}),
    "lscape.probes.random_direction": Call(lambda: {"model": _model()}),
    "lscape.probes.spectral_density": Call(lambda: {"landscape": _landscape(), "theta": _theta(), "n_vectors": 2,
                                                    "steps": 3, "grid": 20}, tensors={"theta": 3}),
    "lscape.directions.Directions": Call(lambda: {"vectors": np.eye(2, 5)}),
    "lscape.directions.random_directions": Call(lambda: {"model": _model()}, checked=("k", "norm"),
                                                 none_ok=("norm",)),
    "lscape.directions.plane_through": Call(
        lambda: {"theta0": torch.zeros(26), "theta1": torch.ones(26), "theta2": torch.arange(26.0),
                 "model": _model()}, tensors={"theta0": 26, "theta1": 26, "theta2": 26}),
    "lscape.directions.pca_directions": Call(lambda: {"checkpoints": torch.randn(4, 26), "model": _model()},
                                             tensors={"checkpoints": None}),
    "lscape.plot.contour": Call(lambda: {"surface": _surface()}, checked=("quantity", "scale")),
    "lscape.plot.filled_contour": Call(lambda: {"surface": _surface()}, checked=("quantity", "scale")),
    "lscape.plot.heatmap": Call(lambda: {"surface": _surface()}, checked=("quantity", "scale")),
    "lscape.plot.surface3d": Call(lambda: {"surface": _surface()}, checked=("quantity", "scale")),
    "lscape.plot.curve": Call(lambda: {"surface": _curve()}, checked=("scale",)),
    "lscape.plot.trajectory": Call(lambda: {"surface": _surface(), "path": np.zeros((3, 2))},
                                   checked=("quantity", "scale")),
    "lscape.plot.spectral_density": Call(lambda: {"grid": np.linspace(0, 1, 10), "density": np.ones(10)},
                                         tensors={"grid": 10, "density": 10}, int_ok=("grid", "density")),
    "lscape.plot.neb_profile": Call(lambda: {"result": _neb_result()}, checked=("scale",)),
    "lscape.plot.plot_all": Call(lambda: {"surface": _surface(), "out_dir": "unused"}, checked=("scale",)),
    "lscape.data.cifar10": Call(lambda: {"data_dir": "unused"}),
    "lscape.data.digits": Call(lambda: {}, checked=("test_fraction", "seed")),
    # data_dir: an empty folder (the test's working directory): the checks run, no data set is read
    "lscape.data.fashion_mnist": Call(lambda: {"data_dir": "."}),
    "lscape.data.load": Call(lambda: {"name": "digits"}),
    "lscape.data.mnist": Call(lambda: {"data_dir": "."}),
    "lscape.data.modular_arithmetic": Call(lambda: {"p": 5}, checked=("p", "op", "train_fraction", "seed")),
    "lscape.data.two_moons": Call(lambda: {}, checked=("n", "noise", "test_fraction")),
    "lscape.data.xor": Call(lambda: {}),
    "lscape.executor.RayExecutor": Call(lambda: {}, checked=("num_cpus",), none_ok=("num_cpus",)),
    "lscape.executor.LocalExecutor": Call(lambda: {}, checked=("workers",), none_ok=("workers",)),
    "lscape.executor.get_executor": Call(lambda: {}, checked=("executor",), none_ok=("executor",)),
    "lscape.experiments.run": Call(lambda: {"name": "bosman"}),
    "lscape.intrinsic_dimension": Call(lambda: {"model": _model(), "loss_fn": nn.functional.cross_entropy,
                                                "data": _batch(), "dims": [2], "batch_size": 8},
                                       batches=("data",), checked=("dims", "threshold", "metric", "optimizer"),
                                       none_ok=("dims",)),
    "lscape.plot.intrinsic_dimension": Call(lambda: {"result": _intrinsic()}),
    "lscape.plot.interactive": Call(lambda: {"surface": _surface()}, checked=("quantity",)),
    "lscape.checkpoints.load_checkpoint": Call(lambda: {"checkpoint": torch.zeros(26), "model": _model()},
                                               tensors={"checkpoint": 26}),
    "lscape.checkpoints.load_checkpoints": Call(lambda: {"checkpoints": torch.randn(3, 26), "model": _model()},
                                                tensors={"checkpoints": None}),
    "lscape.checkpoints.checkpoint_files": Call(lambda: {"checkpoints": _checkpoint_folder()}),
}
for _exp in experiments.EXPERIMENTS:
    CALLS[f"lscape.experiments.{_exp}.run"] = Call(lambda: {}, checked=("scale", "out"))

# Arguments whose type is not fixed by a string/None test: a string is valid for them (a path, a name).
STRING_OK = {"out", "out_dir", "data_dir", "name", "directions", "file", "executor", "init", "norm", "address"}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


def _bad_values(name: str, call: Call, params: dict[str, inspect.Parameter]) -> list[tuple[str, str, Any]]:
    """(argument, what, bad value) for every malformed input this entry point must refuse."""
    bad = []
    required = [p for p, par in params.items() if par.default is inspect.Parameter.empty
                and par.kind not in (par.VAR_POSITIONAL, par.VAR_KEYWORD)]
    for p in dict.fromkeys([*required, *call.checked, *call.tensors, *call.batches]):
        if p not in STRING_OK:
            bad.append((p, "a string", "not-a-valid-value"))
        if p not in call.none_ok:
            bad.append((p, "None", None))
    for p, n in call.tensors.items():
        bad += [(p, "an empty tensor", torch.empty(0)),
                (p, "a NaN tensor", torch.full((n,), float("nan")) if n else torch.full((2, 3), float("nan")))]
        if p not in call.int_ok:
            bad.append((p, "an integer tensor", torch.ones(n or 3, dtype=torch.long)))
        if n:
            bad.append((p, "a wrong-length tensor", torch.ones(n + 1)))
    for p in call.batches:
        bad += [(p, "a wrong-shape batch", (torch.randn(16, 5), torch.randint(0, 2, (16,)))),
                (p, "a batch of mismatched lengths", (torch.randn(16, 3), torch.randint(0, 2, (9,))))]
    return bad


def _cases():
    out = []
    for qual, obj in public_names().items():
        if qual in NOT_CALLABLE or qual in RECORDS or qual not in CALLS:
            continue
        params = dict(inspect.signature(obj).parameters)
        for p, what, value in _bad_values(qual, CALLS[qual], params):
            out.append(pytest.param(qual, p, value, id=f"{qual}-{p}-{what.replace(' ', '_')}"))
    return out


def test_every_public_name_is_covered():
    """A new public name needs a valid call in CALLS (so its checks are tested below), or a place in RECORDS."""
    names = public_names()
    missing = [q for q in names if q not in CALLS and q not in RECORDS and q not in NOT_CALLABLE]
    assert not missing, f"public names without an entry in CALLS (or RECORDS): {missing}"
    stale = [q for q in [*CALLS, *RECORDS, *NOT_CALLABLE] if q not in names]
    assert not stale, f"entries for names that are no longer public: {stale}"


@pytest.mark.parametrize("qual", sorted(CALLS))
def test_the_valid_call_of_every_public_name_is_accepted(qual, tmp_path, monkeypatch):
    """The baseline of the bad-input test: each valid call passes the checks (calls that would start real
    work are stopped at their first kernel, or only their argument checks are reached)."""
    monkeypatch.chdir(tmp_path)
    kwargs = CALLS[qual].kwargs()
    _call_checked(qual, kwargs)


def _call_checked(qual: str, kwargs: dict[str, Any]):
    obj = public_names()[qual]
    if qual.startswith("lscape.experiments."):
        # a run does hours of work: stop it right after its checks, where it would take the run folder
        import lscape.experiments.common as common

        class Checked(Exception):
            pass

        def stop(*a, **k):
            raise Checked

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(common, "RunDir", stop)
            try:
                return obj(**kwargs, progress=False, figures=False)
            except Checked:
                return None
    if qual in ("lscape.data.cifar10", "lscape.data.mnist", "lscape.data.fashion_mnist"):
        try:  # no data set on disk here: a FileNotFoundError after the checks is the valid outcome
            return obj(**kwargs)
        except (FileNotFoundError, ImportError, OSError):
            return None
    if qual == "lscape.executor.RayExecutor":
        pytest.importorskip("ray", reason="RayExecutor needs Ray (pip install '.[ray]')")
        from lscape.executor import RayExecutor

        with pytest.MonkeyPatch.context() as mp:  # the checks, without starting a Ray in this process
            mp.setattr(RayExecutor, "_connect", lambda self: None)
            return obj(**kwargs)
    result = obj(**kwargs)
    if qual == "lscape.use_backend":
        with result:
            pass
    return result


@pytest.mark.parametrize(("qual", "arg", "value"), _cases())
def test_malformed_input_is_refused_by_the_arguments_name(qual, arg, value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kwargs = CALLS[qual].kwargs()
    kwargs[arg] = value

    def no_kernel(op, *a, **k):  # every compiled kernel is reached through lscape._backend.kernel
        raise AssertionError(f"{qual}({arg}=...): the {op} kernel was reached before the checks")

    monkeypatch.setattr(_backend, "kernel", no_kernel)
    # the argument's name, as a word of its own (so "theta" is not found inside "theta_i")
    with pytest.raises((TypeError, ValueError), match=rf"(?<![\w-]){re.escape(arg)}\b") as info:
        _call_checked(qual, kwargs)
    msg = str(info.value)
    assert "expected" in msg or "expects" in msg, f"{qual}({arg}=...): says not what was expected: {msg!r}"
