"""The global priority heap, with aging folded into a static key (pure).

Highest priority first, FIFO among equals. A task's effective priority at time ``t`` is
``priority + rate * (t - enqueued)``; since ``rate * t`` is the same for every task at any
instant, ordering by effective priority is ordering by ``rate * enqueued - priority``. So aging
costs nothing per tick, and a task of priority ``p`` waits at most ``(P - p) / rate`` behind
work of priority ``P`` that arrives after it (plus the work already queued ahead of it).

A task's key and arrival order are fixed the first time it is queued (for a delayed task:
when its delay ends) and kept when it comes back after a retry, a crash or being taken back
from a worker, so it never loses its place to newer work.

**Deadlines** (earliest deadline first within a priority level). Among equal keys, the
earlier deadline goes first (no deadline counts as infinitely late), then arrival order. With
aging on, two tasks of one level rarely have equal keys (they arrived at different times), so
a task with a deadline does not take the key of its own arrival: it takes the key of the
oldest task of its level still queued, if that is older. It takes that task's place in line
(the level's oldest place), and among the tasks holding it the earliest deadline runs first.
So deadlines reorder work only within a level, aging still bounds the wait across levels,
and the level as a whole is served no later than without deadlines.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Iterator

from ._tasks import QUEUED, Task

Rank = tuple[float, float, int]


def rank(task: Task) -> Rank:
    """Smaller ranks run first: key (priority and aging), deadline, arrival order."""
    return (task.heap_key, task.deadline, task.order)


class RunQueue:
    """Runnable tasks in priority order, with a count per priority level."""

    def __init__(self, aging_rate: float, seq: Iterator[int] | None = None) -> None:
        self.aging_rate = aging_rate
        self._heap: list[tuple[float, float, int, int, Task]] = []
        # From 1: an order of 0 means "not yet placed". Queues of one pool may share it.
        self._seq = seq if seq is not None else itertools.count(1)
        self.live = 0  # entries whose task is still queued
        self.arrivals = 0  # entries made so far (a task's ``arrived`` is its entry's number)
        self._levels: dict[float, int] = {}
        # Per level, the queued tasks by key: kept only once a task with a deadline arrives
        # while aging is on (it takes the oldest key of its level; see the module's docstring).
        self._by_level: dict[float, list[tuple[float, int, Task]]] | None = None

    def place(self, task: Task, now: float) -> None:
        """Fix ``task``'s key and order on its first entry (kept on later entries)."""
        if not task.order:
            key = self.aging_rate * now - task.opts.priority
            if task.deadline != math.inf and self.aging_rate:
                oldest = self._oldest_key(task.opts.priority)
                if oldest is not None and oldest < key:
                    key = oldest
            task.heap_key = key
            task.order = next(self._seq)

    def _oldest_key(self, level: float) -> float | None:
        """The smallest key of a queued task of this priority level."""
        by_level = self._by_level
        if by_level is None:  # the first deadline: index what is queued now, once
            by_level = self._by_level = {}
            for key, _, order, _, task in self._heap:
                if task.state == QUEUED:
                    by_level.setdefault(task.opts.priority, []).append((key, order, task))
            for found in by_level.values():
                heapq.heapify(found)
        entries = by_level.get(level)
        while entries:
            key, _, task = entries[0]
            if task.state == QUEUED:
                return key
            heapq.heappop(entries)
        return None

    def push(self, task: Task, now: float) -> None:
        self.place(task, now)
        task.state = QUEUED
        task.worker = -1
        self.arrivals += 1
        task.arrived = self.arrivals
        # (key, first-arrival order, unique tiebreak): a requeued task keeps its place among
        # equals, and two entries never get as far as comparing Task objects.
        task.gen = gen = next(self._seq)
        heapq.heappush(self._heap, (task.heap_key, task.deadline, task.order, gen, task))
        self.live += 1
        level = task.opts.priority
        self._levels[level] = self._levels.get(level, 0) + 1
        if self._by_level is not None:
            entries = self._by_level.setdefault(level, [])
            heapq.heappush(entries, (task.heap_key, task.order, task))
            if len(entries) > 2 * self._levels[level] + 64:  # mostly tasks that left: compact
                entries[:] = [e for e in entries if e[2].state == QUEUED]
                heapq.heapify(entries)

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
            entry = heap[0]
            task = entry[4]
            if task.state == QUEUED and task.gen == entry[3]:
                return task
            heapq.heappop(heap)
        return None

    def pop(self) -> Task | None:
        heap = self._heap
        while heap:
            entry = heapq.heappop(heap)
            task = entry[4]
            if task.state == QUEUED and task.gen == entry[3]:
                self.live -= 1
                self._drop_level(task)
                return task
        return None

    def sample(self, k: int, rng: random.Random) -> list[Task]:
        """Up to ``k`` queued tasks picked at random (to estimate the queue's work cheaply)."""
        heap = self._heap
        if len(heap) <= k:
            picked = list(heap)
        else:
            picked = [heap[i] for i in rng.sample(range(len(heap)), k)]
        return [e[4] for e in picked if e[4].state == QUEUED and e[4].gen == e[3]]

    def level(self, priority: float) -> int:
        """Queued tasks of this priority."""
        return self._levels.get(priority, 0)

    def clear(self) -> None:
        self._heap.clear()
        self.live = 0
        self._levels.clear()
        self._by_level = None
