"""How long work takes: per function, a running estimate of the time per item (pure).

Every result carries its measured run time; the estimate is an exponentially weighted mean
of the time per item, so it follows a function whose items get slower (or faster). A task
of a function never measured has no estimate (``None``): the scheduler treats it as long.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .. import _protocol as p
from ._tasks import Task

if TYPE_CHECKING:
    from ._fairshare import FairQueue
    from ._runqueue import RunQueue

EWMA_ALPHA = 0.3  # weight of the newest duration in a function's estimate
BLOCKS_PER_CHUNK = 64  # claim tokens a chunk is cut into at most
MIN_BLOCK_SECONDS = 0.0001  # ... but a block is at least this much estimated work
UNKNOWN_SECONDS = 1.0  # what a task of a function never measured counts as in a backlog


class Estimates:
    """Seconds per item, per function id."""

    def __init__(self) -> None:
        self.per_item: dict[int, float] = {}

    def of(self, task: Task) -> float | None:
        """Estimated run time of ``task`` in seconds, or ``None`` if its function is unmeasured."""
        per_item = self.per_item.get(task.fn_id)
        if per_item is None:
            return None
        return per_item * (task.n_items or 1)

    def total(self, tasks: Iterable[Task]) -> float | None:
        """Estimated run time of all of ``tasks``; ``None`` if any is unmeasured."""
        total = 0.0
        for task in tasks:
            est = self.of(task)
            if est is None:
                return None
            total += est
        return total

    def backlog(self, queue: RunQueue | FairQueue, rng: random.Random, sample: int = 64) -> float:
        """Estimated run time of the tasks in ``queue``, from a random sample of them; a task
        of a function never measured counts as ``UNKNOWN_SECONDS``."""
        tasks = queue.sample(sample, rng)
        if not tasks:
            return 0.0
        known = [self.of(task) for task in tasks]
        total = sum(UNKNOWN_SECONDS if est is None else est for est in known)
        return total * queue.live / len(tasks)

    def learn(self, task: Task, duration: float, items: int) -> None:
        per_item = duration / max(1, items)
        old = self.per_item.get(task.fn_id)
        if old is None:
            self.per_item[task.fn_id] = per_item
        else:
            self.per_item[task.fn_id] = old + EWMA_ALPHA * (per_item - old)

    def forget(self, fn_id: int) -> None:
        self.per_item.pop(fn_id, None)

    def block_for(self, task: Task) -> int:
        """Items per claim token for a chunk part: small enough to share, big enough to pay."""
        if task.flags & p.FLAG_TIMED:
            return 1  # each item announces its start: its timeout is its own
        n = task.n_items
        block = max(1, n // BLOCKS_PER_CHUNK)
        per_item = self.per_item.get(task.fn_id)
        if per_item and per_item > 0:
            block = max(block, math.ceil(MIN_BLOCK_SECONDS / per_item))
        return min(block, max(1, n))
