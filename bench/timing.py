"""Fair timing of contenders for the bench scripts: every round times each contender once, in turn, the
order alternating between rounds, so all of them meet the same load on a shared machine; each one's time is
the least over the rounds, all on one clock (wall seconds, time.perf_counter)."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any


def least_interleaved(contenders: Sequence[Callable[[], Any]], rounds: int, calls: int = 1) -> list[float]:
    """Seconds a call of each contender takes, the least over `rounds` rounds of `calls` calls each (after
    one untimed warm-up call each), in the order given."""
    if rounds < 1 or calls < 1:
        raise ValueError(f"rounds, calls: got {rounds}, {calls}, expected both >= 1")
    for fn in contenders:
        fn()
    best = [float("inf")] * len(contenders)
    order = list(range(len(contenders)))
    for _ in range(rounds):
        for i in order:
            t0 = time.perf_counter()
            for _ in range(calls):
                contenders[i]()
            best[i] = min(best[i], (time.perf_counter() - t0) / calls)
        order.reverse()
    return best
