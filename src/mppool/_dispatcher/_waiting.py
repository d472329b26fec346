"""Tasks that may not run yet, and the timers that end their wait (pure; time passed in).

Three kinds of wait, one timer heap:

* a *delay* (``options(delay=...)``, ``at=``) or a retry's *backoff*: a release timer puts
  the task into the heap when it is due;
* a *timeout*: armed when a task starts, it fires if the task is still running then;
* a *deadline*: armed when a task arrives, it fires if the task has not started by then;
* a *rate limit*: a task of a limited kind waits in its kind's queue (in priority order)
  until the kind's token bucket has a token; a bucket timer wakes the kind when the next
  token is due.

A timer is never removed: one whose task moved on (another attempt, another state) is
skipped when it comes up.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator

from .._ratelimit import TokenBucket
from ._tasks import BACKOFF, DELAYED, LOCAL_STATES, RATE_LIMITED, SENT, Task

RELEASE = 0  # a delayed or backing-off task becomes runnable
TIMEOUT = 1  # a running task's timeout
BUCKET = 2  # a kind's token bucket has a token again
DEADLINE = 3  # a task must have started by now
CIRCUIT = 4  # an open circuit lets a probe through

COMPACT_AT = 4096  # timers beyond four per live task before ended ones are dropped


class Waiting:
    """The timer heap, and the queues of rate-limited kinds.

    Args:
        rate_limits: per kind, ``(rate, per seconds, burst)`` of its token bucket.
        now: the current time.
    """

    def __init__(self, rate_limits: dict[str, tuple[float, float, int]], now: float) -> None:
        self._timers: list[tuple[float, int, int, Task | str, int]] = []
        self._seq = itertools.count(1)
        self._buckets = {k: TokenBucket(*v, now) for k, v in rate_limits.items()}
        self._limited: dict[str, list[tuple[tuple[float, float, int], int, int, Task]]] = {
            k: [] for k in self._buckets
        }
        self._bucket_timer: dict[str, float] = {}
        self.delayed = 0  # tasks waiting for a release timer
        self.limited = 0  # tasks waiting for a token
        self.rate_limited_waits = 0  # times a kind found its bucket empty

    # --- delays, backoffs and timeouts ---------------------------------------------------------
    def hold(self, task: Task, at: float, state: str) -> None:
        """``task`` waits until ``at`` (``state``: DELAYED or BACKOFF)."""
        task.state = state
        task.worker = -1
        task.batch = None
        self.delayed += 1
        self._push(at, RELEASE, task, task.attempt)

    def arm_timeout(self, task: Task, at: float) -> None:
        self._push(at, TIMEOUT, task, task.attempt)

    def arm_deadline(self, task: Task, live: int) -> None:
        """``task`` must start by its deadline. ``live``: tasks in the pool now (timers of
        tasks that ended are dropped once they outnumber those by far: a far deadline would
        keep an ended task, and its payload, until it comes)."""
        self._push(task.deadline, DEADLINE, task, 0)
        if len(self._timers) > 4 * live + COMPACT_AT:
            self._timers = [
                e for e in self._timers if isinstance(e[3], str) or self._live(e[2], e[3], e[4])
            ]
            heapq.heapify(self._timers)

    def arm_circuit(self, kind: str, at: float) -> None:
        self._push(at, CIRCUIT, kind, 0)

    def _push(self, at: float, kind: int, obj: Task | str, attempt: int) -> None:
        heapq.heappush(self._timers, (at, next(self._seq), kind, obj, attempt))

    @staticmethod
    def _live(kind: int, task: Task, attempt: int) -> bool:
        if kind == DEADLINE:  # for every attempt: live until the task (or its chunk) ends
            return task.state in LOCAL_STATES or (task.job is not None and bool(task.job.parts))
        if task.attempt != attempt:
            return False
        if kind == RELEASE:
            return task.state in (DELAYED, BACKOFF)
        return task.state == SENT

    def next_timer(self) -> float | None:
        """Time of the earliest pending timer, or ``None``."""
        timers = self._timers
        while timers:
            at, _, kind, obj, attempt = timers[0]
            if isinstance(obj, str) or self._live(kind, obj, attempt):
                return at
            heapq.heappop(timers)
        return None

    def due(self, now: float) -> Iterator[tuple[int, Task | str]]:
        """The timers due at ``now``, as ``(RELEASE, task)``, ``(TIMEOUT, task)``,
        ``(DEADLINE, task)``, ``(BUCKET, kind)`` or ``(CIRCUIT, kind)``; stale ones are
        skipped."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, kind, obj, attempt = heapq.heappop(timers)
            if isinstance(obj, str):
                if kind == BUCKET:
                    self._bucket_timer.pop(obj, None)
                yield kind, obj
            elif self._live(kind, obj, attempt):
                if kind == RELEASE:
                    self.delayed -= 1
                yield kind, obj

    # --- rate limits ---------------------------------------------------------------------------
    def needs_token(self, task: Task) -> bool:
        return not task.has_token and task.opts.kind in self._buckets

    def park(self, task: Task, rank: tuple[float, float, int]) -> None:
        """``task`` waits in its kind's queue (by ``rank``) for a token."""
        task.state = RATE_LIMITED
        task.worker = -1
        task.gen = gen = next(self._seq)
        heapq.heappush(self._limited[task.opts.kind], (rank, task.order, gen, task))
        self.limited += 1

    def release(self, kind: str, now: float) -> list[Task]:
        """Tasks of ``kind`` that got a token, most urgent first (they may run now)."""
        waiting = self._limited[kind]
        bucket = self._buckets[kind]
        out: list[Task] = []
        while waiting:
            task = waiting[0][3]
            if task.state != RATE_LIMITED or task.gen != waiting[0][2]:
                heapq.heappop(waiting)  # it left meanwhile (cancelled, swept by a circuit)
                continue
            if not bucket.take(now):
                self.rate_limited_waits += 1
                at = bucket.next_token_at(now)
                if self._bucket_timer.get(kind) != at:
                    self._bucket_timer[kind] = at
                    self._push(at, BUCKET, kind, 0)
                break
            heapq.heappop(waiting)
            self.limited -= 1
            task.has_token = True
            out.append(task)
        return out

    # --- leaving -------------------------------------------------------------------------------
    def forget(self, task: Task) -> None:
        """``task`` (DELAYED, BACKOFF or RATE_LIMITED) is cancelled: its entry is skipped."""
        if task.state in (DELAYED, BACKOFF):
            self.delayed -= 1
        elif task.state == RATE_LIMITED:
            self.limited -= 1

    def clear(self) -> None:
        self._timers.clear()
        self.delayed = 0
        for waiting in self._limited.values():
            waiting.clear()
        self.limited = 0
        self._bucket_timer.clear()
