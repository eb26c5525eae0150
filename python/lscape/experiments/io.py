"""A run's folder: the config check on resume, and checkpointed chunks (files written by lscape._atomicfiles).

A run folder holds
    config.json        the resolved config (a resumed run must have the same one)
    checkpoints/*.npz  one file per finished chunk or stage, written atomically (temp file, fsync, replace),
                       with the SHA-256 of its arrays inside: a torn, truncated or corrupted file (a filesystem
                       without atomic rename, a bad sector, a copy cut short) is detected on resume, moved
                       aside as *.npz.damaged with a DamagedCheckpointWarning, and its chunk recomputed
    .lscape.lock       the owner's pid, host and start time while a run holds the folder (lscape._runlock)
    results.npz        every number the figures are drawn from
    summary.json       the headline numbers
    *.png              the figures
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._atomicfiles import arrays_digest, atomic_savez, atomic_write_json, jsonable, load_npz
from ..executor import Executor, ExecutorLost


class RunInterrupted(RuntimeError):
    """Raised by a run told to stop early (stop_after_chunks): its checkpoints are on disk, resume it."""


class RunStopped(RuntimeError):
    """A run stopped by a fault of the machine, not of its input (the cluster lost its tasks, the disk is
    full or read-only): every finished chunk is on disk, intact; resume the run to continue.
    out: the run folder; finished / total: the chunks of the stage on disk / in all."""

    def __init__(self, message: str, *, out: Path, finished: int, total: int) -> None:
        super().__init__(message)
        self.out, self.finished, self.total = out, finished, total


class DamagedCheckpointWarning(UserWarning):
    """A checkpoint file failed its checksum or could not be read: it is not loaded, and is recomputed."""


CHECKSUM_KEY = "__sha256__"  # inside every checkpoint: the digest of the other arrays


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
        cfg = json.loads(json.dumps(dict(config), default=jsonable))
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
        """The arrays of checkpoint `stage`; None when it is missing or damaged (a damaged file is moved
        aside to <stage>.npz.damaged with a DamagedCheckpointWarning naming it, so its chunk is recomputed)."""
        path = self.ckpt / f"{stage}.npz"
        try:
            arrays = load_npz(path)
        except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, KeyError) as exc:
            return self._damaged(path, f"unreadable: {type(exc).__name__}: {exc}")
        if arrays is None:
            return None
        stored = arrays.pop(CHECKSUM_KEY, None)
        if stored is None:
            return self._damaged(path, "no checksum inside")
        if str(stored) != arrays_digest(arrays):
            return self._damaged(path, "checksum mismatch")
        return arrays

    def _damaged(self, path: Path, why: str) -> None:
        aside = path.with_name(path.name + ".damaged")
        os.replace(path, aside)
        warnings.warn(f"checkpoint {path} is damaged ({why}); it is not loaded, its chunk is recomputed "
                      f"(the file is kept as {aside.name})", DamagedCheckpointWarning, stacklevel=3)
        return None

    def save(self, stage: str, arrays: Mapping[str, Any]) -> None:
        """Checkpoint `stage` atomically, with the checksum of its arrays inside."""
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        atomic_savez(self.ckpt / f"{stage}.npz", {**arrays, CHECKSUM_KEY: np.array(arrays_digest(arrays))})


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
                        progress: bool = False, threads: int | None = None,
                        cost: Sequence[float] | None = None) -> list[dict[str, np.ndarray]]:
    """The arrays of every chunk in `names`: chunk i is fn(i, shared), run on `executor` unless its file
    checkpoints/<names[i]>.npz exists; each result is saved as it arrives (the budget ticking after each
    save), and every chunk is read back from its file, so fresh and resumed runs continue from the same
    arrays.  The one loop behind every checkpointed stage of every experiment.  threads: the threads each
    chunk pins itself to, if it does (Executor.map_chunks), so chunks may run side by side.  cost: a rough
    cost per chunk; the costliest are handed out first, so chunks side by side end together (a chunk's
    result depends on its index only, never on the order)."""
    todo = [i for i, n in enumerate(names) if rd.load(n) is None]
    if cost is not None:
        if len(cost) != len(names):
            raise ValueError(f"cost: got {len(cost)} values, expected one per chunk ({len(names)})")
        todo.sort(key=lambda i: -cost[i])  # stable: equal costs keep their order

    def save(i: int, result: Mapping[str, Any]) -> None:
        try:
            rd.save(names[i], result)
        except OSError as exc:  # a full disk, a read-only or vanished folder: earlier files stay intact
            raise _stopped(rd, names, f"out: could not write checkpoint {rd.ckpt / names[i]}.npz "
                                      f"({exc.strerror or exc})") from exc
        budget.tick()

    try:
        executor.map_chunks(fn, todo, shared=shared, on_result=save, label=label, progress=progress,
                            threads=threads)
    except ExecutorLost as exc:
        raise _stopped(rd, names, str(exc)) from exc
    return [rd.load(n) for n in names]


def _stopped(rd: RunDir, names: Sequence[str], why: str) -> RunStopped:
    """A RunStopped naming the fault and this stage's finished chunks."""
    done = [n for n in names if (rd.ckpt / f"{n}.npz").exists()]
    shown = ", ".join(done[:8]) + (", ..." if len(done) > 8 else "")
    return RunStopped(f"{why}; {len(done)} of {len(names)} chunks of this stage are finished in {rd.ckpt}"
                      f"{f' ({shown})' if done else ''} and are kept; resume the run to continue",
                      out=rd.path, finished=len(done), total=len(names))


def config_dict(cfg) -> dict[str, Any]:
    """A dataclass config as a plain dict (for config.json)."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in dataclasses.asdict(cfg).items()}
