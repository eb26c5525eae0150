"""The scaffold every experiment stands on: the config of a scale, the start of a run (one Context with
its folder, executor and budget), checkpointed chunks on the executor, the end of a run, and replot.

An experiment module defines NAME, Config (a frozen dataclass whose first field is `scale`), SCALES
({scale: Config}), PLOTS (the name of its figures module, whose plot_all(res, out, cfg, plt) draws them)
and run(); config(), replot() and the run preamble come from here.  Run-folder I/O lives in `io`,
training helpers in `training`.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
import time
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import _runlock
from .._atomicfiles import atomic_savez, atomic_write_json, load_npz
from ..executor import Executor, get_executor
from .io import (
    ChunkBudget,
    DamagedCheckpointWarning,
    RunDir,
    RunInterrupted,
    RunStopped,
    checkpointed_chunks,
    config_dict,
)
from .training import resolve_device, torch_threads

__all__ = ["SCALES", "ChunkBudget", "Context", "DamagedCheckpointWarning", "RunDir", "RunInterrupted",
           "RunStopped", "atomic_savez", "config_of",
           "module_functions", "config_dict", "finish_run", "load_npz", "parse_overrides", "replot",
           "require_matplotlib",
           "resolve_device", "save_figures", "start", "torch_threads"]

SCALES = ("smoke", "default", "large", "mnist", "paper-capped", "paper")  # every scale some experiment has
# (gamst-walker: large; goldilocks: mnist; bosman: paper-capped)


def config_of(module: types.ModuleType, scale: str, **overrides: Any):
    """module.SCALES[scale] with fields replaced by overrides; a named error for an unknown scale."""
    if scale not in module.SCALES:
        raise ValueError(f"scale: got {scale!r}, expected one of {', '.join(map(repr, module.SCALES))}")
    return dataclasses.replace(module.SCALES[scale], **overrides)


def _parse_value(field: str, text: str, hint) -> Any:
    """One --set value as the Config field's type: int, float, str, bool, or a tuple of those
    (comma-separated); a named error otherwise."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        item = args[0] if args else str
        parts = [p.strip() for p in text.split(",") if p.strip()]
        return tuple(_parse_value(field, p, item) for p in parts)
    try:
        if hint is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if hint in (int, float, str):
            return hint(text)
    except ValueError:
        kind = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[hint]
        raise ValueError(f"--set: {field}={text!r}, expected {kind}") from None
    raise ValueError(f"--set: {field} is a {hint} field, which --set cannot give; use the Python API "
                     "(lscape.experiments.run(name, scale=..., out=..., **overrides))")


def parse_overrides(module: types.ModuleType, items: Sequence[str]) -> dict[str, Any]:
    """`--set FIELD=VALUE` items -> {field: value} typed as module.Config's fields (tuples comma-separated:
    `--set fc_dims=500,750,1000`); a named error for an unknown field or a value of the wrong type."""
    hints = typing.get_type_hints(module.Config)
    names = [f.name for f in dataclasses.fields(module.Config) if f.name != "scale"]
    out: dict[str, Any] = {}
    for item in items:
        field, eq, text = item.partition("=")
        field = field.strip()
        if not eq or field not in names:
            raise ValueError(f"--set: got {item!r}, expected FIELD=VALUE with FIELD one of {', '.join(names)}")
        out[field] = _parse_value(field, text.strip(), hints[field])
    return out


def module_functions(name: str) -> tuple[Callable[..., Any], Callable[[str], list[str]]]:
    """The config(scale, **overrides) and replot(out) functions of experiment module `name`, written once:
    `config, replot = common.module_functions(__name__)`."""

    def config(scale: str, **overrides: Any):
        """The Config of a scale, with fields replaced by overrides (a named error for an unknown scale)."""
        return config_of(sys.modules[name], scale, **overrides)

    def replot_run(out: str) -> list[str]:
        """Redraw the figures of a finished run from its results.npz and config.json."""
        return replot(sys.modules[name], out)

    config.__module__ = replot_run.__module__ = name
    replot_run.__name__ = replot_run.__qualname__ = "replot"
    return config, replot_run


@dataclass
class Context:
    """One run: its folder, config, executor, interruption budget, progress flag and matplotlib (or None).
    Stage functions take it and return their own arrays."""
    rd: RunDir
    cfg: Any
    executor: Executor
    budget: ChunkBudget
    progress: bool
    plt: Any
    t0: float

    def chunks(self, names: Sequence[str], fn: Callable[[int, Any], Mapping[str, Any]], *, shared: Any = None,
               label: str = "", threads: int | None = None,
               cost: Sequence[float] | None = None) -> list[dict[str, np.ndarray]]:
        """checkpointed_chunks on this run's folder, executor and budget: chunk i is fn(i, shared); threads:
        the threads each chunk pins itself to, if it does (then chunks may run side by side); cost: a rough
        cost per chunk (the costliest start first)."""
        return checkpointed_chunks(self.rd, names, fn, self.executor, self.budget, shared=shared,
                                   label=f"{label:<16}", progress=self.progress, threads=threads, cost=cost)

    def finish(self, module: types.ModuleType, res: Mapping[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
        """results.npz, the session's seconds, the figures (when matplotlib was asked for) and summary.json."""
        summary = finish_run(self.rd, res, summary, self.t0, module.PLOTS if self.plt is not None else None,
                             self.cfg, self.plt)
        _runlock.folder_lock(self.rd.path).release_held()
        return summary


def start(cfg, out, *, resume: bool, progress: bool, stop_after_chunks: int | None, figures: bool,
          executor: str | Executor | None) -> Context:
    """The preamble of every run(): matplotlib first when figures are wanted (fail before hours of work,
    not after), the executor (a bad name or an unreachable cluster fails before any work), then the run
    folder: its lock (a second live run into it is refused; released by finish(), or when this process
    ends), and its config (refusing a foreign one on resume)."""
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out: got {type(out).__name__} {out!r}, expected a folder path (str or os.PathLike)")
    plt = require_matplotlib() if figures else None
    ex = get_executor(executor)
    try:
        _runlock.folder_lock(out, "out").acquire()
        rd = RunDir(out, config_dict(cfg), resume=resume)
    except (FileExistsError, ValueError):
        raise
    except OSError as exc:  # read-only, no permission, a file in the way, a full disk
        raise type(exc)(f"out: cannot write the run folder {out} ({exc.strerror or exc}); choose a "
                        "writable folder") from exc
    return Context(rd, cfg, ex, ChunkBudget(stop_after_chunks), progress, plt, time.perf_counter())


def finish_run(rd: RunDir, res: Mapping[str, Any], summary: dict[str, Any], t0: float, plots: str | None,
               cfg, plt) -> dict[str, Any]:
    """The end of every experiment's run(): results.npz, the session's seconds, the figures (module
    `plots` of this package, None: none) and summary.json; returns the summary."""
    atomic_savez(rd.file("results.npz"), res)
    summary["seconds_this_session"] = time.perf_counter() - t0
    if plots is not None:
        summary["figures"] = importlib.import_module(f"{__package__}.{plots}").plot_all(res, rd.path, cfg, plt)
    atomic_write_json(rd.file("summary.json"), summary)
    return summary


def replot(module: types.ModuleType, out: str) -> list[str]:
    """Redraw the figures of a finished run of `module` from its results.npz and config.json."""
    plt = require_matplotlib()
    raw = json.loads((Path(out) / "config.json").read_text())
    hints = typing.get_type_hints(module.Config)
    for f in dataclasses.fields(module.Config):  # JSON gave lists back where the config holds tuples
        if isinstance(raw.get(f.name), list) and typing.get_origin(hints[f.name]) is tuple:
            raw[f.name] = tuple(raw[f.name])
    res = load_npz(Path(out) / "results.npz")
    if res is None:
        raise FileNotFoundError(f"out: no results.npz in {out}; run the experiment first")
    plots = importlib.import_module(f"{__package__}.{module.PLOTS}")
    return plots.plot_all(res, Path(out), module.Config(**raw), plt)


def save_figures(draws, res: Mapping[str, Any], out: Path, cfg, plt) -> list[str]:
    """Draw each figure (fn(res, cfg, plt) -> (figure, file name)) into out as PNG; returns the names."""
    names = []
    for fn in draws:
        fig, name = fn(res, cfg, plt)
        fig.savefig(Path(out) / name, dpi=130, bbox_inches="tight")
        plt.close(fig)
        names.append(name)
    return names


def require_matplotlib():
    """matplotlib.pyplot with the Agg backend, or an ImportError naming the `plot` extra."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("the experiment figures need matplotlib, which is not installed: "
                          "pip install 'lscape[plot]' (or pip install matplotlib)") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
