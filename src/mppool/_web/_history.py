"""The last few minutes of what the dashboard charts, kept by the server.

A page opened late (or reloaded) loads them from ``GET /api/history`` and shows the past at
once instead of starting from empty charts. The server takes one sample per
``SAMPLE_SECONDS`` from ``pool.stats()``; each sample is what the page itself would compute
from two consecutive polls:

    {"t": wall-clock seconds, "queued": n, "running": n,
     "util": [per-worker busy fraction 0..1], "done": completed/s, "failed": failed/s,
     "p50": s, "p95": s, "p99": s}

Rates and utilisation need a previous sample; the first sample has ``null`` there.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from .._stats import PoolStats

SAMPLE_SECONDS = 1.0  # one sample per second, as the page polls
HISTORY_SECONDS = 300.0  # five minutes of samples


class History:
    """A bounded window of chart samples, oldest first."""

    def __init__(self, seconds: float | None = None, interval: float | None = None) -> None:
        self.interval = SAMPLE_SECONDS if interval is None else interval
        span = HISTORY_SECONDS if seconds is None else seconds
        self.samples: deque[dict[str, Any]] = deque(maxlen=max(1, round(span / self.interval)))
        self._prev: tuple[float, PoolStats] | None = None

    def record(self, stats: PoolStats, now: float) -> dict[str, Any]:
        """Add the sample for ``stats`` taken at wall-clock time ``now``; return it."""
        lat = stats.latency.end_to_end
        sample: dict[str, Any] = {
            "t": now,
            "queued": stats.queued,
            "running": stats.running,
            "util": {},  # worker slot (as a JSON key) -> busy share
            "done": None,
            "failed": None,
            "p50": lat.p50,
            "p95": lat.p95,
            "p99": lat.p99,
        }
        if self._prev is not None and now > self._prev[0]:
            then, before = self._prev
            dt = now - then
            sample["done"] = max(0, stats.completed - before.completed) / dt
            sample["failed"] = max(0, stats.failed - before.failed) / dt
            busy_before = {w.index: w.busy_seconds for w in before.workers}
            for w in stats.workers:
                delta = max(0.0, w.busy_seconds - busy_before.get(w.index, w.busy_seconds)) / dt
                # busy_seconds grows only when a task ends: a worker busy right now counts as
                # fully used, or a long task would show as idle until it finishes.
                busy = min(1.0, max(1.0 if w.state == "busy" else 0.0, delta))
                sample["util"][str(w.index)] = busy  # by slot: a resize adds and removes
        self._prev = (now, stats)
        self.samples.append(sample)
        return sample

    def as_json(self) -> dict[str, Any]:
        return {"interval": self.interval, "samples": list(self.samples)}
