"""In-process stand-in for lscape.executor (the `exec` branch builds the real one; replaced at merge)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


class LocalExecutor:
    def map_chunks(self, fn, chunks: Sequence[int], *, shared: Any = None,
                   on_result: Callable[[int, Any], None], label: str = "", progress: bool = False) -> None:
        for i in chunks:
            on_result(i, fn(i, shared))


def get_executor(executor=None, *, ray_address: str | None = None, num_cpus: int | None = None):
    if executor is None or executor == "local":
        return LocalExecutor()
    if hasattr(executor, "map_chunks"):
        return executor
    raise ValueError(f"executor: got {executor!r}, expected None, 'local' or an Executor")
