"""Progress on stderr through tqdm: the one wrapper every driver uses (progress=True | False | callable).

tqdm handles terminals, notebooks and nesting.  When stderr is not a terminal (a log file), a bar that
redraws with `\\r` would fill the log with frames, so there it redraws at most every LOG_INTERVAL seconds.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from tqdm.auto import tqdm

ProgressArg = bool | Callable[[int, int], None] | None
LOG_INTERVAL = 30.0  # seconds between lines when stderr is not a terminal


class ProgressBar:
    """Call with (done, total): a tqdm bar labelled `label`, closed when done reaches total."""

    def __init__(self, label: str, *, stream: TextIO | None = None) -> None:
        self.label, self.stream = label, stream or sys.stderr
        self._bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            tty = bool(getattr(self.stream, "isatty", lambda: False)())
            self._bar = tqdm(total=total, desc=self.label, file=self.stream, leave=True, dynamic_ncols=tty,
                             mininterval=0.25 if tty else LOG_INTERVAL, maxinterval=LOG_INTERVAL)
        self._bar.total = total
        self._bar.update(done - self._bar.n)
        if done >= total:
            self._bar.close()


def as_callback(progress: ProgressArg, label: str) -> Callable[[int, int], None] | None:
    """progress=True -> a ProgressBar; a callable (done, total) is used as is; False/None -> None."""
    if progress is True:
        return ProgressBar(label)
    if callable(progress):
        return progress
    if progress in (False, None):
        return None
    raise TypeError(f"progress: got {progress!r}, expected a bool or a callable (done, total)")
