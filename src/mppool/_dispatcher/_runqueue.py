"""The global priority heap, with aging folded into a static key (pure).

Highest priority first, FIFO among equals. A task's effective priority at time ``t`` is
``priority + rate * (t - enqueued)``; since ``rate * t`` is the same for every task at any
instant, ordering by effective priority is ordering by ``rate * enqueued - priority``. So aging
costs nothing per tick, and a task of priority ``p`` waits at most ``(P - p) / rate`` behind
work of priority ``P`` that arrives after it (plus the work already queued ahead of it).

A task's key and arrival order are fixed the first time it is queued (for a delayed task:
when its delay ends) and kept when it comes back after a retry, a crash or being taken back
from a worker, so it never loses its place to newer work.
"""

from __future__ import annotations

import heapq
import itertools
import random

from ._tasks import QUEUED, Task


def rank(task: Task) -> tuple[float, int]:
    """Smaller ranks run first."""
    return (task.heap_key, task.order)


class RunQueue:
    """Runnable tasks in priority order, with a count per priority level."""

    def __init__(self, aging_rate: float) -> None:
        self.aging_rate = aging_rate
        self._heap: list[tuple[float, int, int, Task]] = []
        self._seq = itertools.count(1)  # from 1: an order of 0 means "not yet placed"
        self.live = 0  # entries whose task is still queued
        self.arrivals = 0  # entries made so far (a task's ``arrived`` is its entry's number)
        self._levels: dict[float, int] = {}

    def place(self, task: Task, now: float) -> None:
        """Fix ``task``'s key and order on its first entry (kept on later entries)."""
        if not task.order:
            task.heap_key = self.aging_rate * now - task.opts.priority
            task.order = next(self._seq)

    def push(self, task: Task, now: float) -> None:
        self.place(task, now)
        task.state = QUEUED
        task.worker = -1
        self.arrivals += 1
        task.arrived = self.arrivals
        # (key, first-arrival order, unique tiebreak): a requeued task keeps its place among
        # equals, and two entries never get as far as comparing Task objects.
        heapq.heappush(self._heap, (task.heap_key, task.order, next(self._seq), task))
        self.live += 1
        level = task.opts.priority
        self._levels[level] = self._levels.get(level, 0) + 1

    def discard(self, task: Task) -> None:
        """``task`` left the queue otherwise than by ``pop`` (its entry is skipped later)."""
        self.live -= 1
        self._drop_level(task)

    def _drop_level(self, task: Task) -> None:
        level = task.opts.priority
        left = self._levels.get(level, 0) - 1
        if left > 0:
            self._levels[level] = left
        else:
            self._levels.pop(level, None)

    def peek(self) -> Task | None:
        heap = self._heap
        while heap:
            task = heap[0][3]
            if task.state == QUEUED:
                return task
            heapq.heappop(heap)
        return None

    def pop(self) -> Task | None:
        heap = self._heap
        while heap:
            task = heapq.heappop(heap)[3]
            if task.state == QUEUED:
                self.live -= 1
                self._drop_level(task)
                return task
        return None

    def sample(self, k: int, rng: random.Random) -> list[Task]:
        """Up to ``k`` queued tasks picked at random (to estimate the queue's work cheaply)."""
        heap = self._heap
        if len(heap) <= k:
            picked = [entry[3] for entry in heap]
        else:
            picked = [heap[i][3] for i in rng.sample(range(len(heap)), k)]
        return [task for task in picked if task.state == QUEUED]

    def level(self, priority: float) -> int:
        """Queued tasks of this priority."""
        return self._levels.get(priority, 0)

    def clear(self) -> None:
        self._heap.clear()
        self.live = 0
        self._levels.clear()
