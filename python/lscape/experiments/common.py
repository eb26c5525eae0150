"""What every experiment shares: scales, the output folder (config.json, results.npz, figures),
atomic checkpoints with resume, chunked ensemble training that checkpoints after every chunk, and a
throttled progress bar on stderr.

A run folder holds
    config.json        the resolved config (a resumed run must have the same one)
    checkpoints/*.npz  one file per stage, rewritten atomically (temp file, fsync, os.replace)
    results.npz        every number the figures are drawn from
    summary.json       the headline numbers
    *.png              the figures
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .._progress import ProgressBar

SCALES = ("smoke", "default", "paper")


class RunInterrupted(RuntimeError):
    """Raised by a run told to stop early (stop_after_chunks): its checkpoints are on disk, resume it."""


@contextlib.contextmanager
def torch_threads(n: int):
    """torch on n threads inside the block: tiny networks only lose to a thread pool, badly so on a
    busy machine (measured: 36 ms per backward of a 2-16-16-2 net on 2 loaded threads)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def finish_run(rd: "RunDir", res: Mapping[str, Any], summary: dict[str, Any], t0: float, plots: str | None,
               cfg, plt) -> dict[str, Any]:
    """The end of every experiment's run(): results.npz, the session's seconds, the figures (module
    `plots` of this package, None: none) and summary.json; returns the summary."""
    import importlib
    import time

    atomic_savez(rd.file("results.npz"), res)
    summary["seconds_this_session"] = time.perf_counter() - t0
    if plots is not None:
        summary["figures"] = importlib.import_module(f"{__package__}.{plots}").plot_all(res, rd.path, cfg, plt)
    atomic_write_json(rd.file("summary.json"), summary)
    return summary


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


def resolve_device(device: str) -> torch.device:
    """"auto": cuda when lscape's CUDA backend can run, else cpu; otherwise torch.device(device)."""
    if device == "auto":
        from .. import _backend

        return torch.device("cuda" if _backend.backends()["cuda"].available else "cpu")
    return torch.device(device)


# ---- files ------------------------------------------------------------------------------------------------
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
    """Counts training chunks across a run; raises RunInterrupted after `limit` of them (tests use it
    to stop a run the way Ctrl-C would, right after a checkpoint).  limit None: never."""

    def __init__(self, limit: int | None) -> None:
        self.limit, self.done = limit, 0

    def tick(self) -> None:
        self.done += 1
        if self.limit is not None and self.done >= self.limit:
            raise RunInterrupted(f"stopped after {self.done} chunk(s), as asked; resume to continue")


def checkpointed_stages(rd: "RunDir", names: Sequence[str], compute: Callable[[int], Mapping[str, Any]],
                        budget: ChunkBudget, bar: Callable[[int, int], None] | None) -> list[dict[str, np.ndarray]]:
    """The arrays of every stage in `names`: read from its checkpoint, or computed by compute(i), saved and
    read back (so fresh and resumed runs continue from the same arrays), the budget ticking after each
    save; the bar advances after each stage."""
    rows = []
    for i, name in enumerate(names):
        ck = rd.load(name)
        if ck is None:
            rd.save(name, compute(i))
            ck = rd.load(name)
            budget.tick()
        rows.append(ck)
        if bar is not None:
            bar(i + 1, len(names))
    return rows


def progress_bar(label: str, enabled: bool) -> Callable[[int, int], None] | None:
    """A ProgressBar on stderr (redrawn at most 4 times a second) or None."""
    return ProgressBar(label, stream=sys.stderr) if enabled else None


def train_stage(run: RunDir, stage: str, spec, params0: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *,
                optimizer: str, opt_kwargs: Mapping[str, Any], steps: int, chunk_steps: int,
                record_every: int, budget: ChunkBudget, progress: bool) -> dict[str, np.ndarray]:
    """Train params0 (M, D) for `steps` steps in chunks of chunk_steps, checkpointing after each chunk in
    checkpoints/<stage>.npz (params, optimizer state, history so far).  A stage found complete is
    returned from its checkpoint; a partial one continues exactly where it stopped (the optimizer state
    goes back in as `state`).  -> {"params" (M, D), "loss" (M,), "history" (M, steps // record_every),
    "diverged" (M,)} as numpy arrays."""
    from ..ensemble import TrainState, train_ensemble

    if chunk_steps % record_every or steps % record_every:
        raise ValueError(f"{stage}: steps ({steps}) and chunk_steps ({chunk_steps}) must be multiples of "
                         f"record_every ({record_every})")
    dev = params0.device
    ck = run.load(stage)
    if ck is not None and int(ck["done"]) >= steps:
        return {k: ck[k] for k in ("params", "loss", "history", "diverged")}
    if ck is None:
        params, state, done = params0, None, 0
        history = np.full((params0.shape[0], steps // record_every), np.nan, dtype=np.float32)
    else:
        params, done, history = torch.from_numpy(ck["params"]).to(dev), int(ck["done"]), ck["history"]
        state = TrainState.from_dict({k[6:]: v for k, v in ck.items() if k.startswith("state_")}, device=dev)
    bar = progress_bar(f"{stage:<16}", progress)
    while done < steps:
        c = min(chunk_steps, steps - done)
        cb = None if bar is None else (lambda d, t, base=done: bar(base + d, steps))
        res = train_ensemble(spec, params, x, y, optimizer=optimizer, steps=c, record_every=record_every,
                             state=state, progress=cb or False, **opt_kwargs)
        params, state = res.params, res.state
        j = done // record_every
        history[:, j:j + c // record_every] = res.history.cpu().numpy()
        done += c
        arrays = {"params": params.cpu().numpy(), "done": done, "history": history,
                  "loss": res.loss.cpu().numpy(), "diverged": res.diverged.cpu().numpy()}
        arrays.update({f"state_{k}": v for k, v in state.to_dict().items()})
        run.save(stage, arrays)
        budget.tick()
    ck = run.load(stage)
    return {k: ck[k] for k in ("params", "loss", "history", "diverged")}


def config_dict(cfg) -> dict[str, Any]:
    """A dataclass config as a plain dict (for config.json)."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in dataclasses.asdict(cfg).items()}
