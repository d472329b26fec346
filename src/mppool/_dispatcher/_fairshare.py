"""Weighted fair share of the workers' time between kinds (pure: no I/O, no clock).

With ``Pool(shares={"etl": 3, "adhoc": 1})`` the heap is split by kind, and the next task
comes from the kind furthest behind its share: the one with the least *virtual time*,
``used / weight``, among the kinds with work queued (a kind not listed weighs 1). Within a
kind, the usual rank decides (priority, aging, deadline, arrival).

``used`` is run time: a task is charged its estimated run time when it is handed to a worker
(so that two idle workers are not both given the same kind on the same account), and the
charge is replaced by the measured run time when it reports, or refunded when it comes back
unrun. Over a saturated run the measured busy time of the kinds is split by their weights,
whatever their tasks' sizes.

No kind banks credit while idle: a kind that gets work again starts at the least virtual time
of the kinds that have work (or keeps its own, if that is more), so an idle kind's share goes
to the others meanwhile, and it cannot take the workers over when it comes back.
"""

from __future__ import annotations

import itertools
import random

from ._runqueue import RunQueue, rank
from ._tasks import Task

DEFAULT_WEIGHT = 1.0  # the weight of a kind that ``shares`` does not list


class FairQueue:
    """Runnable tasks per kind; the kind furthest behind its share goes first.

    It has :class:`RunQueue`'s interface, so the scheduler uses either.

    Args:
        aging_rate: as for :class:`RunQueue` (within each kind).
        shares: kind -> weight (> 0).
    """

    def __init__(self, aging_rate: float, shares: dict[str, float]) -> None:
        self.aging_rate = aging_rate
        self.weights = dict(shares)
        self._seq = itertools.count(1)  # one arrival order across kinds
        self._queues: dict[str, RunQueue] = {}
        self.used: dict[str, float] = {}  # virtual usage: seconds charged, caught up
        self.busy: dict[str, float] = {}  # measured run time per kind (for stats)
        self.live = 0
        self.arrivals = 0

    def weight(self, kind: str) -> float:
        return self.weights.get(kind, DEFAULT_WEIGHT)

    def vtime(self, kind: str) -> float:
        return self.used.get(kind, 0.0) / self.weight(kind)

    def _queue(self, kind: str) -> RunQueue:
        queue = self._queues.get(kind)
        if queue is None:
            queue = self._queues[kind] = RunQueue(self.aging_rate, self._seq)
        return queue

    # --- RunQueue's interface --------------------------------------------------------------
    def place(self, task: Task, now: float) -> None:
        self._queue(task.opts.kind).place(task, now)

    def push(self, task: Task, now: float) -> None:
        kind = task.opts.kind
        queue = self._queue(kind)
        if not queue.live:
            self._catch_up(kind)
        queue.push(task, now)
        self.live += 1
        self.arrivals += 1
        task.arrived = self.arrivals

    def _catch_up(self, kind: str) -> None:
        """``kind`` gets work after being idle: it starts no further behind than the least
        served of the kinds that have work (no credit is banked while idle)."""
        active = [self.vtime(k) for k, q in self._queues.items() if q.live and k != kind]
        if active:
            floor = min(active) * self.weight(kind)
            if self.used.get(kind, 0.0) < floor:
                self.used[kind] = floor

    def _pick(self) -> RunQueue | None:
        best: RunQueue | None = None
        best_key: tuple[float, tuple[float, float, int]] | None = None
        for kind, queue in self._queues.items():
            if not queue.live:
                continue
            top = queue.peek()
            if top is None:
                continue
            key = (self.vtime(kind), rank(top))
            if best_key is None or key < best_key:
                best, best_key = queue, key
        return best

    def peek(self) -> Task | None:
        queue = self._pick()
        return None if queue is None else queue.peek()

    def pop(self) -> Task | None:
        queue = self._pick()
        task = None if queue is None else queue.pop()
        if task is not None:
            self.live -= 1
        return task

    def discard(self, task: Task) -> None:
        self._queues[task.opts.kind].discard(task)
        self.live -= 1

    def sample(self, k: int, rng: random.Random) -> list[Task]:
        out: list[Task] = []
        for queue in self._queues.values():
            if queue.live:
                out.extend(queue.sample(k, rng))
        return out if len(out) <= k else rng.sample(out, k)

    def level(self, priority: float) -> int:
        return sum(q.level(priority) for q in self._queues.values() if q.live)

    def clear(self) -> None:
        for queue in self._queues.values():
            queue.clear()
        self.live = 0

    # --- accounting ------------------------------------------------------------------------
    def charge(self, task: Task, seconds: float) -> None:
        """``task`` is handed to a worker: charge its kind ``seconds`` (an estimate)."""
        kind = task.opts.kind
        self.used[kind] = self.used.get(kind, 0.0) + seconds - task.charged
        task.charged = seconds

    def settle(self, task: Task, measured: float) -> None:
        """``task`` ran ``measured`` seconds (0.0: it came back unrun): replace its charge."""
        kind = task.opts.kind
        self.used[kind] = self.used.get(kind, 0.0) + measured - task.charged
        task.charged = 0.0
        if measured:
            self.busy[kind] = self.busy.get(kind, 0.0) + measured

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Per kind seen: its weight, measured busy seconds, and tasks queued."""
        kinds = set(self._queues) | set(self.weights)
        return {
            kind: {
                "weight": self.weight(kind),
                "busy_seconds": self.busy.get(kind, 0.0),
                "queued": self._queues[kind].live if kind in self._queues else 0,
            }
            for kind in sorted(kinds)
        }
