"""A dependency-free progress bar on stderr, redrawn at most a few times a second (so it costs nothing)."""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO, Union

ProgressArg = Union[bool, Callable[[int, int], None], None]


class ProgressBar:
    """Call with (done, total); prints `label [#####.....] done/total  elapsed, eta` to `stream`."""

    def __init__(self, label: str, *, stream: TextIO | None = None, min_interval: float = 0.25) -> None:
        self.label, self.stream, self.min_interval = label, stream or sys.stderr, min_interval
        self.t0 = time.perf_counter()
        self._last = -1.0

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        final = done >= total
        if not final and now - self._last < self.min_interval:
            return
        self._last = now
        frac = done / total if total else 1.0
        elapsed = now - self.t0
        eta = elapsed / frac - elapsed if frac > 0 else float("nan")
        bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
        self.stream.write(f"\r{self.label} [{bar}] {done}/{total}  {elapsed:6.1f}s elapsed, eta {eta:6.1f}s")
        if final:
            self.stream.write("\n")
        self.stream.flush()


def as_callback(progress: ProgressArg, label: str) -> Callable[[int, int], None] | None:
    """progress=True -> a ProgressBar; a callable is used as is; False/None -> None."""
    if progress is True:
        return ProgressBar(label)
    if callable(progress):
        return progress
    if progress in (False, None):
        return None
    raise TypeError(f"progress: got {progress!r}, expected a bool or a callable (done, total)")
