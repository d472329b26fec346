"""Latency of recent tasks: queue wait, run time, end to end (in the dispatcher, pure).

Recording a task costs three appends to bounded deques; sorting happens only when a stats
snapshot asks for percentiles, which travel as plain ``(count, p50, p95, p99)`` tuples (the
client makes ``mppool.Percentiles`` of them).
"""

from __future__ import annotations

from collections import deque
from typing import Any

LATENCY_WINDOW = 2048  # recent tasks the latency percentiles are computed over


def percentiles(values: deque[float]) -> tuple[int, float | None, float | None, float | None]:
    n = len(values)
    if not n:
        return (0, None, None, None)
    ordered = sorted(values)

    def at(q: float) -> float:
        # Nearest-rank: the smallest value with at least q of the samples at or below it.
        return ordered[max(0, min(n - 1, -(-int(q * n * 1000) // 1000) - 1))]

    return (n, at(0.50), at(0.95), at(0.99))


class LatencyWindow:
    """The last ``size`` tasks' queue wait, run time and end-to-end time.

    Recording is three appends to bounded deques; sorting happens only when a snapshot
    is asked for, so a task costs a few numbers and nothing more.
    """

    __slots__ = ("e2e", "run", "wait")

    def __init__(self, size: int = LATENCY_WINDOW) -> None:
        self.wait: deque[float] = deque(maxlen=size)
        self.run: deque[float] = deque(maxlen=size)
        self.e2e: deque[float] = deque(maxlen=size)

    def add(self, wait: float, run: float, e2e: float) -> None:
        self.wait.append(wait)
        self.run.append(run)
        self.e2e.append(e2e)

    def snapshot(self) -> dict[str, Any]:
        return {
            "queue_wait": percentiles(self.wait),
            "run_time": percentiles(self.run),
            "end_to_end": percentiles(self.e2e),
        }
