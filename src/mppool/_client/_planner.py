"""How big each chunk of a ``map`` is, and how its progress is shown (user process).

:class:`ChunkPlanner` aims at ``CHUNK_TARGET_SECONDS`` (or its ``target``) of work per chunk
from the run times the workers report, starts at one item, grows at most ``GROWTH`` times per
step, and, when the input's length is known, never takes more than
``remaining / (TAIL_SPLIT * workers)`` items, so the last part of the input is spread over
every worker instead of landing in one chunk behind a slow one. It is pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

CHUNK_TARGET_SECONDS = 0.020  # work per chunk the planner aims at
MAX_CHUNK_ITEMS = 16384  # cap on items per chunk (bounds memory and result latency)
GROWTH = 8.0  # a chunk is at most this many times larger than the largest so far
TAIL_SPLIT = 4  # near the end, chunks are at most remaining / (TAIL_SPLIT * workers)
DECAY = 0.5  # weight kept by older measurements at each new one

ProgressHook = Callable[[int, "int | None"], None]
Progress = bool | ProgressHook | None


class Reporter:
    """Progress of one map: a tqdm bar (``progress=True``) or a user hook ``(done, total)``."""

    def __init__(self, progress: Progress, total: int | None, name: str) -> None:
        self.done = 0
        self.total = total
        self.hook: ProgressHook | None = None
        self.bar: Any = None
        if progress is True:
            from tqdm import tqdm

            class _Bar(tqdm):  # type: ignore[misc]
                # tqdm's monitor thread would outlive the map (and the pool); our bar is
                # updated on every chunk, so it needs no monitor.
                monitor_interval = 0

            self.bar = _Bar(total=total, desc=name, unit="item", dynamic_ncols=True)
        elif callable(progress):
            self.hook = progress
        elif progress not in (None, False):
            raise TypeError("progress must be True, False, None or a callable(done, total)")

    def advance(self, count: int) -> None:
        if not count:
            return
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
        elif self.hook is not None:
            self.hook(self.done, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class ChunkPlanner:
    """Decides how many items go into the next chunk (pure; no I/O).

    Args:
        workers: number of workers sharing the work.
        fixed: a fixed chunk size, or ``None`` to adapt.
        target: seconds of work per chunk to aim at (a cluster pool aims higher: each chunk
            is a Dask task, which costs far more than a message on a pipe).
    """

    def __init__(
        self, workers: int, fixed: int | None = None, target: float = CHUNK_TARGET_SECONDS
    ) -> None:
        if fixed is not None and fixed < 1:
            raise ValueError(f"chunksize must be >= 1, not {fixed!r}")
        self.workers = workers
        self.fixed = fixed
        self.target = target
        self._mean: float | None = None
        self._last = 0.0
        self._largest = 1

    def observe(self, items: int, seconds: float) -> None:
        """Record that a chunk of ``items`` items took ``seconds`` in a worker."""
        # Averaged per chunk, not per item: weighting by items would let a big chunk of light
        # items drown a small chunk of heavy ones, the very signal that costs are rising.
        rate = seconds / max(1, items)
        self._last = rate
        self._mean = rate if self._mean is None else self._mean + (1 - DECAY) * (rate - self._mean)

    @property
    def per_item(self) -> float | None:
        """Estimated seconds per item, or ``None`` before any measurement.

        The larger of the running mean and the latest chunk: when costs rise (a skewed input
        whose heavy items come last) chunks shrink at once; when they fall, they grow back
        smoothly with the mean.
        """
        if self._mean is None:
            return None
        return max(self._mean, self._last)

    def next_size(self, remaining: int | None) -> int:
        """Items for the next chunk, given how many are left (``None`` if unknown)."""
        if self.fixed is not None:
            return self.fixed
        per_item = self.per_item
        if per_item is None:
            size = 1
        elif per_item <= 0:
            size = MAX_CHUNK_ITEMS
        else:
            size = int(self.target / per_item)
        size = max(1, min(size, MAX_CHUNK_ITEMS, int(self._largest * GROWTH)))
        if remaining is not None and per_item is not None:
            # Spread the tail over every worker, but do not cut chunks below a quarter of the
            # target: splitting work that short only adds messages.
            tail = -(-remaining // (TAIL_SPLIT * self.workers))
            floor = int(self.target / 4 / per_item) if per_item > 0 else size
            size = min(size, max(1, tail, floor))
        self._largest = max(self._largest, size)
        return size
