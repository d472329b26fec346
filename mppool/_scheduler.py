"""The scheduling core: every decision of the dispatcher, with no I/O, threads or real time.

Where a task can be::

    submit ──▶ DELAYED (timer) ──┐
       │                         ▼
       └──────────────────▶ QUEUED (global heap) ──▶ LOCAL (worker w's deque) ──▶ SENT (w's pipe)
                                  ▲       ▲  spill back        ▲   steal (tail)        │
                                  │       └────────────────────┘   from a busy peer    │
                                  └── BACKOFF (timer) ◀── retryable error / crash ◀────┘

* **Heap.** Highest priority first, FIFO among equals. Aging is folded into a static key:
  a task's effective priority at time ``t`` is ``priority + rate * (t - enqueued)``, and since
  ``rate * t`` is the same for every task at any instant, ordering by effective priority is
  ordering by ``rate * enqueued - priority``. So aging costs nothing per tick, and a task of
  priority ``p`` waits at most ``(P - p) / rate`` behind work of priority ``P`` that arrives
  after it (plus the work already queued ahead of it).
* **Local deques.** Each worker has a deque of tasks taken from the heap, up to about
  ``LOCAL_TARGET_SECONDS`` of estimated work. They are kept sorted (they are filled by popping
  the heap), and a task entering the heap with a better key than a deque's tail pushes that
  tail back into the heap ("spill"), so a deque never holds work that should wait behind
  something still in the heap.
* **Stealing.** A worker whose deque runs dry takes the most urgent queued work, wherever it
  is: from the heap, or, when the front of a busy peer's deque is more urgent than the heap's
  top (or the heap is empty), the front half of that peer's deque. Taking the front half, not
  the back, keeps priority order across workers: an idle worker never starts a less urgent
  task while a more urgent one waits behind a busy peer. Only deque work can be stolen: a
  task written to a worker's pipe belongs to that worker.
* **Pipe window.** Little sits in a pipe: tiny tasks are batched up to
  ``PIPE_WINDOW_SECONDS`` of estimated work, one medium task (``PREFETCH_MAX_SECONDS``) may
  wait behind the running one to hide the round trip, and a task of unknown or long duration
  is sent only to an idle worker.
* **Estimates.** Per function, an exponentially weighted mean of the measured run time per
  item; a map chunk of ``n`` items is estimated at ``n`` times that.

All times are seconds on an injected clock, so tests drive it by hand.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ._ratelimit import RateLimit, TokenBucket

# --- tunables (module constants so tests can change them) ------------------------------------
LOCAL_TARGET_SECONDS = 0.004  # estimated work a worker's deque is topped up to
PIPE_WINDOW_SECONDS = 0.001  # estimated work of tiny tasks batched into one worker's pipe
PREFETCH_MAX_SECONDS = 0.010  # a task this short may wait in the pipe behind the running one
MAX_IN_PIPE = 256  # tasks in one worker's pipe at most
UNKNOWN_COST = 1.0  # what a task of a never-measured function counts as in the pipe window
EWMA_ALPHA = 0.3  # weight of the newest duration in a function's estimate
DEFAULT_AGING_RATE = 0.1  # priority levels gained per second of waiting

# --- task states ------------------------------------------------------------------------------
DELAYED: Final = "delayed"
QUEUED: Final = "queued"
LOCAL: Final = "local"
SENT: Final = "sent"
BACKOFF: Final = "retrying"
RATE_LIMITED: Final = "rate-limited"
DONE: Final = "done"
CANCELLED: Final = "cancelled"

# --- timer kinds ------------------------------------------------------------------------------
_T_RELEASE = 0  # a delayed or backing-off task becomes runnable
_T_TIMEOUT = 1  # a running task's timeout
_T_BUCKET = 2  # a kind's token bucket has a token again


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """Options shared by many tasks (interned by the client, named by an id)."""

    priority: float = 0.0
    timeout: float = 0.0  # 0: none
    max_attempts: int = 1
    initial_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.0
    crash_retries: int = 2
    kind: str = ""
    retry_timeouts: bool = False

    def backoff(self, failures: int, rng: random.Random) -> float:
        """Seconds to wait before the attempt that follows ``failures`` failures (>= 1)."""
        delay = min(self.max_delay, self.initial_delay * self.factor ** (failures - 1))
        if self.jitter:
            delay *= 1.0 + rng.uniform(-self.jitter, self.jitter)
        return max(0.0, delay)


class Task:
    """One unit of work as the dispatcher sees it: a header and opaque payload bytes."""

    __slots__ = (
        "attempt",
        "blamed_start",
        "cost",
        "crashes",
        "dedup_key",
        "failures",
        "flags",
        "fn_id",
        "has_token",
        "id",
        "isolate",
        "key",
        "n_items",
        "not_before",
        "opts",
        "opts_id",
        "order",
        "payload",
        "started_at",
        "state",
        "submitted_at",
        "worker",
    )

    def __init__(
        self,
        task_id: int,
        fn_id: int,
        opts_id: int,
        opts: TaskOptions,
        payload: bytes,
        *,
        n_items: int = 0,
        flags: int = 0,
        not_before: float = 0.0,
        dedup_key: str = "",
    ) -> None:
        self.id = task_id
        self.fn_id = fn_id
        self.opts_id = opts_id
        self.opts = opts
        self.n_items = n_items
        self.flags = flags
        self.payload = payload
        self.attempt = 1  # dispatch generation: a result from another attempt is stale
        self.failures = 0  # errors, crashes and timeouts so far
        self.crashes = 0
        self.key = 0.0  # heap key, fixed at first enqueue (aging folded in)
        self.state = QUEUED
        self.worker = -1
        self.cost = 0.0  # estimate counted into the deque/pipe totals it sits in
        self.submitted_at = 0.0
        self.started_at = 0.0
        self.not_before = not_before
        self.blamed_start = False
        self.has_token = False
        self.dedup_key = dedup_key
        self.order = 0  # arrival order among equal keys, fixed at first entry
        self.isolate = False  # suspected of a crash: send it alone so any blame is exact

    @property
    def attempts(self) -> int:
        """Times the task was started (failures so far, plus the current or last try)."""
        return self.failures + 1

    def __repr__(self) -> str:
        return f"Task(id={self.id}, state={self.state}, attempt={self.attempt})"


@dataclass(frozen=True, slots=True)
class Retry:
    """Outcome: the task will run again at ``at`` (dispatcher clock)."""

    task: Task
    at: float


@dataclass(frozen=True, slots=True)
class Fail:
    """Outcome: the task is finished with an error."""

    task: Task


@dataclass(frozen=True, slots=True)
class Timeout:
    """A running task passed its timeout: kill ``worker``; ``outcome`` says what to report."""

    worker: int
    outcome: Retry | Fail


class Scheduler:
    """Heap, per-worker deques, stealing, pipe windows, timers and estimates.

    Args:
        workers: number of worker slots.
        clock: returns the current time in seconds (monotonic).
        aging_rate: priority levels a queued task gains per second of waiting (0: off).
        rng: random source for backoff jitter.
    """

    def __init__(
        self,
        workers: int,
        clock: Callable[[], float],
        *,
        aging_rate: float = DEFAULT_AGING_RATE,
        rng: random.Random | None = None,
        rate_limits: dict[str, RateLimit] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.workers = workers
        self.clock = clock
        self.aging_rate = aging_rate
        self.rng = rng or random.Random()
        self.tasks: dict[int, Task] = {}
        self._heap: list[tuple[float, int, int, Task]] = []
        self._seq = itertools.count(1)  # from 1: an order of 0 means "not yet set"
        self._heap_live = 0  # heap entries not cancelled
        self.local: list[deque[Task]] = [deque() for _ in range(workers)]
        self.local_cost = [0.0] * workers
        self.sent: list[deque[Task]] = [deque() for _ in range(workers)]
        self.sent_cost = [0.0] * workers
        self.up = [False] * workers
        self._timers: list[tuple[float, int, int, Task | str, int]] = []
        # Rate-limited kinds: tasks wait here, not in the heap, until their bucket has a token.
        now = clock()
        self._buckets = {k: TokenBucket(v, now) for k, v in (rate_limits or {}).items()}
        self._limited: dict[str, list[tuple[float, int, Task]]] = {k: [] for k in self._buckets}
        self._limited_live = 0
        self._bucket_timer: dict[str, float] = {}
        self.rate_limited_waits = 0
        self._delayed = 0
        self._per_item: dict[int, float] = {}
        # counters
        self.steals = 0
        self.stolen_tasks = 0
        self.starts = 0
        self.done_by = [0] * workers
        self.busy_by = [0.0] * workers

    # --- estimates ----------------------------------------------------------------------------
    def estimate(self, task: Task) -> float | None:
        """Estimated run time of ``task`` in seconds, or ``None`` if its function is unmeasured."""
        per_item = self._per_item.get(task.fn_id)
        if per_item is None:
            return None
        return per_item * (task.n_items or 1)

    def _learn(self, task: Task, duration: float) -> None:
        per_item = duration / (task.n_items or 1)
        old = self._per_item.get(task.fn_id)
        if old is None:
            self._per_item[task.fn_id] = per_item
        else:
            self._per_item[task.fn_id] = old + EWMA_ALPHA * (per_item - old)

    # --- entering ----------------------------------------------------------------------------
    def submit(self, task: Task) -> None:
        """Accept a new task: queue it now, or hold it until ``task.not_before``."""
        now = self.clock()
        task.submitted_at = now
        self.tasks[task.id] = task
        if task.not_before > now:
            task.state = DELAYED
            self._delayed += 1
            self._push_timer(task.not_before, _T_RELEASE, task)
        else:
            self._enqueue(task, now)

    def _enqueue(self, task: Task, now: float) -> None:
        if task.state in (QUEUED, DELAYED) and task.failures == 0 and task.attempt == 1:
            # First entry (or release from a delay): fix the aging key now. Re-entries after
            # a crash or a retry keep theirs, so they do not fall behind newer work.
            task.key = self.aging_rate * now - task.opts.priority
        kind = task.opts.kind
        if kind in self._buckets and not task.has_token:
            task.state = RATE_LIMITED
            task.worker = -1
            heapq.heappush(self._limited[kind], (task.key, next(self._seq), task))
            self._limited_live += 1
            self._release_kind(kind, now)
            return
        task.state = QUEUED
        task.worker = -1
        if not task.order:
            task.order = next(self._seq)
        # (key, first-arrival order, unique tiebreak): a requeued task keeps its place among
        # equals, and two entries never get as far as comparing Task objects.
        heapq.heappush(self._heap, (task.key, task.order, next(self._seq), task))
        self._heap_live += 1
        self._spill(task.key, task.order)

    def _release_kind(self, kind: str, now: float) -> None:
        """Move waiting tasks of a rate-limited kind to the heap while tokens last."""
        waiting = self._limited[kind]
        bucket = self._buckets[kind]
        while waiting:
            task = waiting[0][2]
            if task.state != RATE_LIMITED:
                heapq.heappop(waiting)  # cancelled meanwhile
                continue
            if not bucket.take(now):
                self.rate_limited_waits += 1
                at = bucket.next_token_at(now)
                if self._bucket_timer.get(kind) != at:
                    self._bucket_timer[kind] = at
                    heapq.heappush(self._timers, (at, next(self._seq), _T_BUCKET, kind, 0))
                return
            heapq.heappop(waiting)
            self._limited_live -= 1
            task.has_token = True
            self._enqueue(task, now)

    def _spill(self, key: float, order: int) -> None:
        """Move deque tasks that rank behind ``(key, order)`` back to the heap."""
        for w in range(self.workers):
            dq = self.local[w]
            while dq and (dq[-1].key > key or (dq[-1].key == key and dq[-1].order > order)):
                t = dq.pop()
                self.local_cost[w] -= t.cost
                t.state = QUEUED
                heapq.heappush(self._heap, (t.key, t.order, next(self._seq), t))
                self._heap_live += 1
            if not dq:
                self.local_cost[w] = 0.0

    # --- leaving the queue ---------------------------------------------------------------------
    def cancel(self, task_id: int) -> Task | None:
        """Remove a task that has not been sent to a worker. Returns it, or ``None``."""
        task = self.tasks.get(task_id)
        if task is None or task.state in (SENT, DONE, CANCELLED):
            return None
        if task.state == LOCAL:
            w = task.worker
            self.local[w].remove(task)
            self.local_cost[w] -= task.cost
        elif task.state == QUEUED:
            self._heap_live -= 1  # its heap entry is skipped when popped
        elif task.state in (DELAYED, BACKOFF):
            self._delayed -= 1  # its timer is skipped when it fires
        elif task.state == RATE_LIMITED:
            self._limited_live -= 1  # skipped when its kind's queue reaches it
        task.state = CANCELLED
        del self.tasks[task_id]
        return task

    def cancel_sent(self, task_id: int) -> tuple[Task, bool] | None:
        """Cancel a task already written to a worker's pipe.

        Returns the task and whether it was running (first in its pipe: the caller kills that
        worker), or ``None`` if the task is not in a pipe. A task waiting behind another
        cannot be taken back from the pipe; it is forgotten, so its result is discarded.
        """
        task = self.tasks.get(task_id)
        if task is None or task.state != SENT:
            return None
        running = self.sent[task.worker][0] is task
        self._take_sent(task.worker, task.id, task.attempt)
        task.state = CANCELLED
        del self.tasks[task.id]
        return task, running

    def drop_queued(self) -> list[Task]:
        """Cancel every task not yet sent to a worker (shutdown with ``cancel_futures``)."""
        return [t for t in list(self.tasks.values()) if self.cancel(t.id) is not None]

    def abort_all(self) -> list[Task]:
        """Forget every task, wherever it is (pool broken, or killed at a deadline)."""
        tasks = list(self.tasks.values())
        for task in tasks:
            task.state = CANCELLED
        self.tasks.clear()
        self._heap.clear()
        self._heap_live = 0
        self._timers.clear()
        self._delayed = 0
        for waiting in self._limited.values():
            waiting.clear()
        self._limited_live = 0
        self._bucket_timer.clear()
        for w in range(self.workers):
            self.local[w].clear()
            self.local_cost[w] = 0.0
            self.sent[w].clear()
            self.sent_cost[w] = 0.0
        return tasks

    def _pop_heap(self) -> Task | None:
        heap = self._heap
        while heap:
            task = heapq.heappop(heap)[3]
            if task.state == QUEUED:
                self._heap_live -= 1
                return task
        return None

    def _peek_heap(self) -> Task | None:
        heap = self._heap
        while heap:
            task = heap[0][3]
            if task.state == QUEUED:
                return task
            heapq.heappop(heap)
        return None

    def _refill(self, w: int, steal: bool = True) -> None:
        dq = self.local[w]
        if not dq and steal:
            # Running dry: the most urgent queued work may sit at the front of a busy peer's
            # deque rather than in the heap; take it from there if so.
            victim = self._steal_candidate(w)
            top = self._peek_heap()
            if victim >= 0 and (top is None or self.local[victim][0].key < top.key):
                self._steal(w, victim)
                return
        # A deque holds one priority level at a time: it is not topped up with less urgent
        # work while it still holds more urgent work.
        level = dq[0].opts.priority if dq else None
        while self.local_cost[w] < LOCAL_TARGET_SECONDS:
            top = self._peek_heap()
            if top is None or (level is not None and top.opts.priority != level):
                return
            level = top.opts.priority
            task = self._pop_heap()
            if task is None:
                return
            est = self.estimate(task)
            task.cost = LOCAL_TARGET_SECONDS if est is None else est
            task.state = LOCAL
            task.worker = w
            dq.append(task)
            self.local_cost[w] += task.cost

    def _steal_candidate(self, thief: int) -> int:
        """The peer to steal from: the one whose next task is most urgent, or -1."""
        victim = -1
        best: tuple[float, float] | None = None
        for v in range(self.workers):
            if v == thief or not self.local[v]:
                continue
            # An idle live peer takes its own deque this round; steal only from busy or dead.
            if self.up[v] and not self.sent[v]:
                continue
            rank = (self.local[v][0].key, -self.local_cost[v])  # most urgent, then busiest
            if best is None or rank < best:
                victim, best = v, rank
        return victim

    def _steal(self, thief: int, victim: int) -> None:
        src = self.local[victim]
        count = max(1, len(src) // 2)
        # The thief takes the front half: the most urgent of the victim's work. Taking the
        # back half would have the idle worker run the least urgent tasks while better ones
        # wait behind the victim's running task.
        taken = [src.popleft() for _ in range(count)]
        dst = self.local[thief]
        for t in taken:
            self.local_cost[victim] -= t.cost
            t.worker = thief
            dst.append(t)
            self.local_cost[thief] += t.cost
        if not src:
            self.local_cost[victim] = 0.0
        self.steals += 1
        self.stolen_tasks += count

    def assign(self, w: int, limit: int = MAX_IN_PIPE) -> list[Task]:
        """Tasks to write to worker ``w``'s pipe now (moved to its sent list)."""
        if not self.up[w]:
            return []
        out: list[Task] = []
        sent = self.sent[w]
        dq = self.local[w]
        now = self.clock()
        while len(sent) < MAX_IN_PIPE and len(out) < limit:
            # Once no tiny task fits, only a first prefetch behind a short task could.
            full = len(sent) > 1 or self.sent_cost[w] > PREFETCH_MAX_SECONDS
            if sent and self.sent_cost[w] >= PIPE_WINDOW_SECONDS and full:
                self._refill(w, steal=False)  # top up from the heap; never steal for later
                break
            self._refill(w)
            if not dq:
                break
            task = dq[0]
            est = self.estimate(task)
            if sent:
                if task.isolate or sent[-1].isolate:
                    break  # a crash suspect travels alone
                if est is None or task.opts.priority != sent[-1].opts.priority:
                    break  # unknown cost, or another priority level: not behind this batch
                tiny = self.sent_cost[w] + est <= PIPE_WINDOW_SECONDS
                # One medium task may wait behind a running task of known, short duration, so
                # the worker finds it as soon as it is done instead of after a round trip.
                prefetch = len(sent) == 1 and est <= PREFETCH_MAX_SECONDS
                prefetch = prefetch and self.sent_cost[w] <= PREFETCH_MAX_SECONDS
                if not (tiny or prefetch):
                    break
            dq.popleft()
            self.local_cost[w] -= task.cost
            if not dq:
                self.local_cost[w] = 0.0
            task.cost = UNKNOWN_COST if est is None else est
            task.state = SENT
            task.worker = w
            task.has_token = False  # spent: a retry or requeue needs a new one
            task.blamed_start = False
            if not sent:
                task.started_at = now  # first in the pipe: it starts as soon as it arrives
            sent.append(task)
            self.sent_cost[w] += task.cost
            out.append(task)
        self.starts += len(out)
        return out

    # --- results -------------------------------------------------------------------------------
    def _take_sent(self, w: int, task_id: int, attempt: int) -> Task | None:
        task = self.tasks.get(task_id)
        if task is None or task.state != SENT or task.worker != w or task.attempt != attempt:
            return None  # stale: an earlier attempt, or already resolved
        sent = self.sent[w]
        if sent[0] is task:
            sent.popleft()
            if sent:
                sent[0].started_at = self.clock()  # the next one starts now
        else:
            sent.remove(task)
        self.sent_cost[w] -= task.cost
        if not sent:
            self.sent_cost[w] = 0.0
        return task

    def started(self, w: int, task_id: int, attempt: int) -> None:
        """Worker ``w`` announced that it started a (timed) task: arm its timeout."""
        task = self.tasks.get(task_id)
        if task is None or task.state != SENT or task.worker != w or task.attempt != attempt:
            return
        now = self.clock()
        task.started_at = now
        task.blamed_start = True
        if task.opts.timeout > 0:
            self._push_timer(now + task.opts.timeout, _T_TIMEOUT, task)

    def complete(self, w: int, task_id: int, attempt: int, duration: float) -> Task | None:
        """A task succeeded. Returns it, or ``None`` if the result is stale (drop it)."""
        task = self._take_sent(w, task_id, attempt)
        if task is None:
            return None
        self._learn(task, duration)
        self.done_by[w] += 1
        self.busy_by[w] += duration
        task.state = DONE
        del self.tasks[task_id]
        return task

    def fail(
        self, w: int, task_id: int, attempt: int, duration: float, retryable: bool
    ) -> Retry | Fail | None:
        """A task raised. Retry it after its backoff if allowed, else fail it."""
        task = self._take_sent(w, task_id, attempt)
        if task is None:
            return None
        self._learn(task, duration)
        self.done_by[w] += 1
        self.busy_by[w] += duration
        return self._after_failure(task, retryable)

    def _after_failure(self, task: Task, retryable: bool) -> Retry | Fail:
        task.failures += 1
        task.attempt += 1
        if retryable and task.failures < task.opts.max_attempts:
            at = self.clock() + task.opts.backoff(task.failures, self.rng)
            task.state = BACKOFF
            task.worker = -1
            self._delayed += 1
            self._push_timer(at, _T_RELEASE, task)
            return Retry(task, at)
        task.state = DONE
        self.tasks.pop(task.id, None)
        return Fail(task)

    # --- workers -------------------------------------------------------------------------------
    def worker_up(self, w: int) -> None:
        self.up[w] = True

    def worker_lost(self, w: int, *, blame: bool) -> tuple[Task | None, Retry | Fail | None]:
        """Worker ``w`` died. Its unsent deque stays; its pipe contents go back to the heap.

        Args:
            w: the worker slot.
            blame: whether the worker died of something a task did (not killed by us, not
                retiring). The first task in its pipe is blamed only when it surely was
                running: it was alone there, or it had announced its start. Otherwise (a batch,
                whose earlier tasks may have finished with their results not yet written)
                nobody is blamed and every task of the batch is sent alone from then on.

        Returns:
            The blamed task and what happens to it (retry at once, or fail), or ``(None, None)``.
        """
        self.up[w] = False
        sent = self.sent[w]
        self.sent[w] = deque()
        self.sent_cost[w] = 0.0
        culprit: Task | None = None
        outcome: Retry | Fail | None = None
        now = self.clock()
        certain = blame and bool(sent) and (len(sent) == 1 or sent[0].blamed_start)
        for i, task in enumerate(sent):
            task.attempt += 1  # whatever that worker wrote is stale now
            if blame and not certain:
                task.isolate = True
            if i == 0 and certain:
                culprit = task
                task.crashes += 1
                task.failures += 1
                if task.crashes > task.opts.crash_retries:
                    task.state = DONE
                    self.tasks.pop(task.id, None)
                    outcome = Fail(task)
                    continue
                outcome = Retry(task, now)
            task.state = QUEUED
            self._enqueue(task, now)
        return culprit, outcome

    def worker_retired(self, w: int) -> None:
        """Worker ``w`` left cleanly between tasks: requeue what it held, blaming nobody."""
        self.worker_lost(w, blame=False)

    # --- timers --------------------------------------------------------------------------------
    def _push_timer(self, at: float, kind: int, task: Task) -> None:
        heapq.heappush(self._timers, (at, next(self._seq), kind, task, task.attempt))

    def next_timer(self) -> float | None:
        """Clock time of the earliest pending timer, or ``None``."""
        timers = self._timers
        while timers:
            at, _, kind, obj, attempt = timers[0]
            if isinstance(obj, str) or self._timer_live(kind, obj, attempt):
                return at
            heapq.heappop(timers)
        return None

    @staticmethod
    def _timer_live(kind: int, task: Task, attempt: int) -> bool:
        if task.attempt != attempt:
            return False
        if kind == _T_RELEASE:
            return task.state in (DELAYED, BACKOFF)
        return task.state == SENT

    def fire_timers(self) -> list[Timeout]:
        """Release due delayed/backoff tasks into the heap; report expired timeouts."""
        now = self.clock()
        timers = self._timers
        out: list[Timeout] = []
        while timers and timers[0][0] <= now:
            _, _, kind, obj, attempt = heapq.heappop(timers)
            if isinstance(obj, str):  # a kind's bucket has a token again
                self._bucket_timer.pop(obj, None)
                self._release_kind(obj, now)
                continue
            task = obj
            if not self._timer_live(kind, task, attempt):
                continue
            if kind == _T_RELEASE:
                self._delayed -= 1
                self._enqueue(task, now)
            else:
                w = task.worker
                self._take_sent(w, task.id, task.attempt)
                self.busy_by[w] += now - task.started_at
                out.append(Timeout(w, self._after_failure(task, task.opts.retry_timeouts)))
        return out

    # --- introspection -------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        """Tasks waiting to be sent to a worker (heap, deques, delays and backoffs)."""
        return (
            self._heap_live + sum(len(d) for d in self.local) + self._delayed + self._limited_live
        )

    @property
    def in_pipes(self) -> int:
        """Tasks written to a worker and not yet resolved."""
        return sum(len(s) for s in self.sent)

    def idle(self) -> bool:
        """No task anywhere: nothing queued, delayed or running."""
        return not self.tasks
