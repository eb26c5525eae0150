"""A run's folder: atomic files, the config check on resume, and checkpointed chunks.

A run folder holds
    config.json        the resolved config (a resumed run must have the same one)
    checkpoints/*.npz  one file per finished chunk or stage, written atomically (temp file, fsync, replace)
    results.npz        every number the figures are drawn from
    summary.json       the headline numbers
    *.png              the figures
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..executor import Executor


class RunInterrupted(RuntimeError):
    """Raised by a run told to stop early (stop_after_chunks): its checkpoints are on disk, resume it."""


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """write(file) into a temp file next to path, fsync, then os.replace: path is never half-written."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_savez(path: str | os.PathLike, arrays: Mapping[str, Any]) -> None:
    """np.savez(path, **arrays), atomically."""
    _atomic_write(Path(path), lambda f: np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()}))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    _atomic_write(Path(path), lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True, default=_jsonable)
                                                + "\n"), mode="w")


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """The arrays of an .npz file as a dict (read fully, file closed), or None if it does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class RunDir:
    """The output folder of one run.

    resume=False refuses a folder that already holds checkpoints (so nothing is overwritten by
    accident); resume=True requires config.json there to equal `config` (else the checkpoints would be
    of another run) and picks up every stage from its checkpoint.
    """

    def __init__(self, out: str | os.PathLike, config: Mapping[str, Any], *, resume: bool) -> None:
        self.path = Path(out)
        self.ckpt = self.path / "checkpoints"
        self.ckpt.mkdir(parents=True, exist_ok=True)
        cfg = json.loads(json.dumps(dict(config), default=_jsonable))
        cfg_path = self.path / "config.json"
        if resume:
            if cfg_path.exists():
                old = json.loads(cfg_path.read_text())
                if old != cfg:
                    diff = sorted(k for k in set(old) | set(cfg) if old.get(k) != cfg.get(k))
                    raise ValueError(f"resume: {cfg_path} was written for another config (differs in "
                                     f"{', '.join(diff)}); use the same --scale or a new --out")
        elif any(self.ckpt.glob("*.npz")):
            raise FileExistsError(f"out: {self.path} already holds a run's checkpoints; pass --resume to "
                                  f"continue it (resume=True), or choose an empty folder")
        atomic_write_json(cfg_path, cfg)
        self.config = cfg

    def file(self, name: str) -> Path:
        return self.path / name

    def load(self, stage: str) -> dict[str, np.ndarray] | None:
        return load_npz(self.ckpt / f"{stage}.npz")

    def save(self, stage: str, arrays: Mapping[str, Any]) -> None:
        atomic_savez(self.ckpt / f"{stage}.npz", arrays)


class ChunkBudget:
    """Counts finished chunks across a run; raises RunInterrupted after `limit` of them (tests use it to
    stop a run the way Ctrl-C would, right after a checkpoint).  limit None: never."""

    def __init__(self, limit: int | None) -> None:
        self.limit, self.done = limit, 0

    def tick(self) -> None:
        self.done += 1
        if self.limit is not None and self.done >= self.limit:
            raise RunInterrupted(f"stopped after {self.done} chunk(s), as asked; resume to continue")


def checkpointed_chunks(rd: RunDir, names: Sequence[str], fn: Callable[[int, Any], Mapping[str, Any]],
                        executor: Executor, budget: ChunkBudget, *, shared: Any = None, label: str = "",
                        progress: bool = False) -> list[dict[str, np.ndarray]]:
    """The arrays of every chunk in `names`: chunk i is fn(i, shared), run on `executor` unless its file
    checkpoints/<names[i]>.npz exists; each result is saved as it arrives (the budget ticking after each
    save), and every chunk is read back from its file, so fresh and resumed runs continue from the same
    arrays.  The one loop behind every checkpointed stage of every experiment."""
    todo = [i for i, n in enumerate(names) if rd.load(n) is None]

    def save(i: int, result: Mapping[str, Any]) -> None:
        rd.save(names[i], result)
        budget.tick()

    executor.map_chunks(fn, todo, shared=shared, on_result=save, label=label, progress=progress)
    return [rd.load(n) for n in names]


def config_dict(cfg) -> dict[str, Any]:
    """A dataclass config as a plain dict (for config.json)."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in dataclasses.asdict(cfg).items()}
