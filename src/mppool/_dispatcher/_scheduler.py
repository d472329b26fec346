"""The scheduling core: every decision of the dispatcher, with no I/O, threads or real time.

Where a task can be::

    submit ──▶ DELAYED (timer) ──┐       ┌───────── taken back (more urgent work) ◀──┐
       │                         ▼       ▼                                            │
       └─────────────────────▶ QUEUED (global heap) ───▶ SENT (a batch in worker w's pipe)
                                   ▲                        │  ▲    │
                                   │                        │  └────┘ unstarted end taken
                                   └── BACKOFF (timer) ◀── retryable error / crash      by an idle
                                                                                      worker (steal)

* **Heap** (``_runqueue``): highest priority first, FIFO among equals, aging folded into the
  key.
* **Local queues** (``_pipes``): what each worker has been handed and not reported on. It
  sits in the worker's pipe, yet stays within reach: through a claim counter per batch the
  dispatcher can take back any unit the worker has not started, at once.
* **Choosing work** (:meth:`Scheduler.assign`): an idle worker gets the most urgent work
  anywhere: the heap's top, or the unstarted end of a busy peer's batch when that is more
  urgent (a higher priority, or work stuck behind a worker that has not got to it), or, when
  the heap is empty, half of a busy peer's unstarted work (load balancing; for a map chunk
  that means half its remaining items). A busy worker whose current work is known to be short
  gets one more batch behind it (prefetch), so it does not wait a round trip between tasks.
* **Batching**: tasks measured as tiny go out together, one priority level per batch, up to
  ``PIPE_WINDOW_SECONDS`` of work and a fair share of that level's queue.
* **Taking back**: when a task enters the heap while every worker is busy, unstarted work in
  pipes that ranks behind it goes back to the heap, so nothing less urgent starts before it.
* **Estimates**: per function, an exponentially weighted mean of the measured run time per
  item; a chunk part of ``n`` items is estimated at ``n`` times that.

All times are seconds on an injected clock, so tests drive it by hand.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
from collections.abc import Callable
from typing import Any

from .. import _protocol as p
from ._cancelling import Cancelling
from ._circuits import Circuits
from ._claims import ClaimCounters
from ._dependencies import Dependencies
from ._estimates import Estimates
from ._fairshare import FairQueue
from ._outcomes import Outcomes
from ._pipes import Pipes
from ._runqueue import Rank, RunQueue, rank
from ._stealing import UNKNOWN_COST, Stealing
from ._tasks import (
    CANCELLED,
    DELAYED,
    HELD,
    PART_IDS_FROM,
    QUEUED,
    SENT,
    WAITING,
    Batch,
    ChunkJob,
    Task,
    Timeout,
    Unstarted,
)
from ._waiting import BUCKET, CIRCUIT, DEADLINE, RELEASE, Waiting

# --- tunables (module constants so tests can change them) ------------------------------------
PIPE_WINDOW_SECONDS = 0.001  # estimated work of tiny tasks batched into one write
PREFETCH_MAX_SECONDS = 0.010  # a batch is prefetched only behind this little known work
MAX_IN_PIPE = 256  # tasks in one batch at most

COUNTERS = (
    "submitted",
    "completed",
    "failed",
    "retried",
    "crashed",
    "timed_out",
    "cancelled",
    "expired",
    "refused",
)


class Scheduler:
    """The dispatcher's decisions: what each worker runs next, and what becomes of it.

    Its parts: the heap (``queue``), the workers' pipes (``pipes``), what waits for a time or a
    token (``waiting``), run-time estimates (``estimates``), moving unstarted work between
    pipes (``stealing``), and what becomes of work that ends (``outcomes``).

    Args:
        workers: number of worker slots.
        clock: returns the current time in seconds (monotonic).
        claims: the claim counters of the workers' batches.
        aging_rate: priority levels a queued task gains per second of waiting (0: off).
        rng: random source for backoff jitter.
        rate_limits: per kind, ``(rate, per seconds, burst)`` of its token bucket.
        circuit_breakers: per kind, ``CircuitBreaker.knobs()``.
        shares: per kind, its weight in a fair share of the workers' time (None: one heap).
    """

    def __init__(
        self,
        workers: int,
        clock: Callable[[], float],
        claims: ClaimCounters,
        *,
        aging_rate: float,
        rng: random.Random | None = None,
        rate_limits: dict[str, tuple[float, float, int]] | None = None,
        circuit_breakers: dict[str, tuple[int, float, float, bool]] | None = None,
        shares: dict[str, float] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.workers = workers
        self.clock = clock
        self.rng = rng or random.Random()
        # With shares, the heap is split by kind (``_fairshare``); it has the same interface.
        self.fair = FairQueue(aging_rate, shares) if shares else None
        self.queue: RunQueue | FairQueue = self.fair or RunQueue(aging_rate)
        # A new run id for a part split off a map chunk.
        self.part_id: Callable[[], int] = functools.partial(next, itertools.count(PART_IDS_FROM))
        self.pipes = Pipes(workers, claims, self.part_id)
        self.waiting = Waiting(rate_limits or {}, clock())
        self.estimates = Estimates()
        self.stealing = Stealing(self)
        self.outcomes = Outcomes(self)
        self.cancelling = Cancelling(self)
        self.circuits = Circuits(self, circuit_breakers or {})
        self.dependencies = Dependencies(self)
        self.tasks: dict[int, Task] = {}  # live tasks and parts by run id
        self.jobs: dict[int, ChunkJob] = {}  # live map chunks by client id
        self._up = [False] * workers
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.starts = 0
        self.done_by = [0] * workers
        self.busy_by = [0.0] * workers
        # Per worker, the rank and queue position of the last task it surely started.
        self.ran: list[tuple[Rank, int]] = [((-math.inf, -math.inf, 0), 0)] * workers
        self.max_given: Rank = (-math.inf, -math.inf, 0)  # least urgent rank ever handed out
        self.recheck = False  # a worker was left without work, to be reconsidered shortly
        # Events for the user's logs, at or above ``note_level`` (see ``Dispatcher.event``).
        self.note_level = p.LOG_WARNING
        self.notes: list[tuple[int, str, str, dict[str, Any]]] = []
        # Tasks failed without running (deadline passed, circuit open), for the dispatcher.
        self.unstarted: list[Unstarted] = []

    def note(self, level: int, name: str, message: str, **fields: Any) -> None:
        """Record an event for the user's logs, if anyone listens at ``level``."""
        if level >= self.note_level:
            self.notes.append((level, name, message, fields))

    # --- workers -------------------------------------------------------------------------------
    def worker_up(self, w: int) -> None:
        """Worker ``w`` is ready for work."""
        self._up[w] = True

    def worker_down(self, w: int) -> None:
        """Worker ``w`` takes no new work (it is leaving, or not yet there)."""
        self._up[w] = False

    def add_worker(self) -> int:
        """One more worker slot (down until ``worker_up``); its index."""
        self.workers += 1
        self.pipes.add_worker()
        self._up.append(False)
        self.done_by.append(0)
        self.busy_by.append(0.0)
        self.ran.append(((-math.inf, -math.inf, 0), 0))
        return self.workers - 1

    def is_up(self, w: int) -> bool:
        return self._up[w]

    def n_up(self) -> int:
        return max(1, sum(self._up))

    def idle(self, w: int) -> bool:
        """Worker ``w`` is ready and has nothing in hand."""
        return self._up[w] and not self.pipes.busy(w)

    def tick(self) -> None:
        """A new round of the dispatcher's loop: apply the outcomes circuit breakers judge
        (noted while results and deaths were handled), clear ``recheck``."""
        if self.circuits.pending or self.circuits.probe_wanted:
            self.circuits.apply(self.clock())
        self.recheck = False

    # --- entering ------------------------------------------------------------------------------
    def submit(self, task: Task, needs: tuple[int, ...] = (), after: tuple[int, ...] = ()) -> None:
        """Accept a new task: queue it now, hold it until ``task.not_before``, or until the
        tasks it depends on have succeeded (``needs``: their results are its arguments;
        ``after``: only their success; all live, see ``Dependencies.missing``)."""
        now = self.clock()
        task.submitted_at = now
        self.tasks[task.id] = task
        self.counts["submitted"] += 1
        if task.job is not None:
            self.jobs[task.id] = task.job
            task.job.parts.add(task)
        if task.deadline != math.inf and not task.opts.run_late:
            self.waiting.arm_deadline(task, len(self.tasks))
        if needs or after:
            self.dependencies.wait(task, needs, after)
        else:
            self.enter(task, now)

    def enter(self, task: Task, now: float) -> None:
        """``task`` may run (as far as its dependencies go): queue it, or wait for its time."""
        if task.not_before > now:
            self.waiting.hold(task, task.not_before, DELAYED)
        else:
            self._enqueue(task, now)

    def _enqueue(self, task: Task, now: float, take_back: bool = True) -> None:
        circuits = self.circuits
        if circuits.by_kind and task.opts.kind in circuits.by_kind and not circuits.gate(task, now):
            return  # failed, or held until the circuit closes
        waiting = self.waiting
        if waiting.needs_token(task):
            self.queue.place(task, now)
            waiting.park(task, rank(task))
            self._release(task.opts.kind, now)
            return
        self.queue.push(task, now)
        if take_back:
            self.stealing.take_back_behind(task)

    def _release(self, kind: str, now: float) -> None:
        """Queue the tasks of a rate-limited ``kind`` that get a token now."""
        waits = self.waiting.rate_limited_waits
        for ready in self.waiting.release(kind, now):
            self._enqueue(ready, now)
        if self.waiting.rate_limited_waits > waits:
            self.note(p.LOG_DEBUG, "rate_limited", f"kind {kind!r} is out of tokens", kind=kind)

    def release_held(self, task: Task, now: float) -> None:
        """A task held by its kind's circuit may run (it closed, or the task probes)."""
        self._enqueue(task, now)

    def requeue(self, task: Task, now: float) -> None:
        """Put a task taken back from a pipe (or a new part of one) into the heap."""
        if task.job is not None and task not in task.job.parts:
            task.job.parts.add(task)
        if self.fair is not None:
            self.fair.settle(task, 0.0)  # it comes back unrun: its charge is refunded
        self.tasks[task.id] = task
        task.batch = None
        if task.chained_to is not None:
            self.dependencies.unchain(task)  # it no longer follows its dependency
            return
        self._enqueue(task, now, take_back=False)

    # --- choosing work -------------------------------------------------------------------------
    def assign(self, w: int, limit: int = MAX_IN_PIPE) -> Batch | None:
        """A batch to write to worker ``w`` now, or ``None``. Its counter is already armed."""
        if not self._up[w] or limit <= 0 or not self.pipes.room(w):
            return None
        busy = self.pipes.busy(w)
        if busy:
            if not self.queue.live:
                return None  # nothing to prefetch (moving work between busy workers gains nothing)
            remaining = self.estimates.total(self.pipes.live(w))
            if remaining is None or remaining > PREFETCH_MAX_SECONDS:
                return None  # behind long or unknown work a prefetch would only wait
        tasks = self._pick(w, prefetch=busy)
        if not tasks:
            return None
        self._extend(tasks, min(limit, MAX_IN_PIPE))
        if self.dependencies.dependents:
            self.dependencies.chain_behind(tasks, min(limit, MAX_IN_PIPE))
        now = self.clock()
        if self.fair is not None:
            for task in tasks:
                est = self.estimates.of(task)
                self.fair.charge(task, UNKNOWN_COST if est is None else est)
        for task in tasks:
            task.has_token = False  # spent: a retry or requeue needs a new one
            task.running_item = -1
            if task.job is not None:
                task.block = self.estimates.block_for(task)
        batch = self.pipes.open(w, tasks)
        batch.written_at = now
        arrivals = self.queue.arrivals
        for task in tasks:
            task.given = arrivals
        last = rank(tasks[-1])
        if last > self.max_given:
            self.max_given = last
        if not busy:
            tasks[0].started_at = now  # it starts as soon as it arrives
        self.starts += len(tasks)
        return batch

    def has_work(self) -> bool:
        """Whether :meth:`assign` could give any worker anything: queued work, or a pipe
        holding more than the unit its worker is on (cheap; the loop asks every round)."""
        if self.queue.live:
            return True
        for batches in self.pipes.batches:
            units = 0
            for batch in batches:
                units += batch.cut - batch.begin(batch.reported)
            if units > 1:
                return True
        return False

    def _pick(self, w: int, prefetch: bool) -> list[Task]:
        """The most urgent work for ``w``: unstarted work in a peer's pipe, or the heap's top."""
        best = self.queue.peek()
        stolen = self.stealing.urgent(w, best)
        if stolen is None:
            return []  # more urgent work is about to start elsewhere: look again next round
        if stolen:
            return stolen
        if best is not None:
            task = self.queue.pop()
            return [task] if task is not None else []
        if prefetch:
            return []  # moving work from one busy worker to another gains nothing
        return self.stealing.half(w)

    def _extend(self, tasks: list[Task], limit: int) -> None:
        """Add tiny tasks of the same priority level from the heap behind ``tasks``."""
        if not self.queue.live:
            return
        cost = self.estimates.total(tasks)
        if cost is None:
            return  # unknown work travels alone
        level = tasks[0].opts.priority
        # A fair share of the level's queue: with few tasks waiting, each worker gets its own,
        # so a batch never makes its peers start later work first.
        share = max(len(tasks), (self.queue.level(level) + len(tasks)) // self.n_up())
        queue = self.queue
        while len(tasks) < min(limit, share):
            top = queue.peek()
            if top is None or top.opts.priority != level:
                return
            est = self.estimates.of(top)
            if est is None or cost + est > PIPE_WINDOW_SECONDS:
                return
            queue.pop()
            tasks.append(top)
            cost += est

    # --- what workers report (results and deaths: ``outcomes``) ------------------------------
    def started(self, w: int, run_id: int, attempt: int, item: int) -> None:
        """Worker ``w`` announced that it started a (timed) task or item: arm its timeout."""
        task = self.tasks.get(run_id)
        if task is None or task.state != SENT or task.worker != w or task.attempt != attempt:
            return
        now = self.clock()
        task.started_at = now
        task.running_item = item
        if task.opts.timeout > 0:
            self.waiting.arm_timeout(task, now + task.opts.timeout)

    def cut(self, w: int, batch_id: int) -> None:
        """Worker ``w`` reached the end of what it could claim of a batch."""
        self.pipes.cut(w, batch_id)

    # --- timers --------------------------------------------------------------------------------
    def next_timer(self) -> float | None:
        """Clock time of the earliest pending timer, or ``None``."""
        return self.waiting.next_timer()

    def fire_timers(self) -> list[Timeout]:
        """Release due delayed/backoff tasks into the heap; report expired timeouts (and
        put tasks that missed their deadline on ``unstarted``)."""
        now = self.clock()
        out: list[Timeout] = []
        for kind, obj in self.waiting.due(now):
            if kind == BUCKET:
                assert isinstance(obj, str)
                self._release(obj, now)
                continue
            if kind == CIRCUIT:
                assert isinstance(obj, str)
                self.circuits.wake(obj, now)
                continue
            assert isinstance(obj, Task)
            if kind == RELEASE:
                self._enqueue(obj, now)
            elif kind == DEADLINE:
                self.outcomes.deadline_passed(obj, now)
            elif obj.started_at + obj.opts.timeout <= now + 1e-9:
                out.append(self.outcomes.timed_out(obj, now))
        return out

    # --- cancelling ----------------------------------------------------------------------------
    def cancel(self, client_id: int, kill: bool) -> tuple[bool, list[int]]:
        """Cancel a task or a map chunk by its client id (see :meth:`Cancelling.cancel`)."""
        return self.cancelling.cancel(client_id, kill)

    def drop_queued(self) -> list[int]:
        """Cancel every task nothing has started (shutdown with ``cancel_futures``)."""
        return self.cancelling.drop_queued()

    def leave_queue(self, task: Task) -> None:
        """``task`` is cancelled before it ran: its place in the heap or a wait is skipped."""
        if task.state == QUEUED:
            self.queue.discard(task)
        elif task.state == HELD:
            self.circuits.leave(task)
        elif task.state == WAITING:
            self.dependencies.leave(task)
        else:
            self.waiting.forget(task)
        if self.circuits.by_kind:
            self.circuits.ended(task)
        task.state = CANCELLED

    def abort_all(self) -> list[int]:
        """Forget every task, wherever it is (pool broken, or killed at a deadline).

        Returns the client ids of everything that was live.
        """
        ids = {t.client_id for t in self.tasks.values()} | set(self.jobs)
        for task in self.tasks.values():
            task.state = CANCELLED
        self.tasks.clear()
        self.jobs.clear()
        self.outcomes.forgotten.clear()
        self.outcomes.expired_parts.clear()
        self.queue.clear()
        self.waiting.clear()
        self.circuits.clear()
        self.dependencies.clear()
        return sorted(ids)

    # --- introspection -------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        """Tasks waiting for a worker (heap, delays, backoffs, rate limits)."""
        waiting = self.waiting
        return (
            self.queue.live
            + waiting.delayed
            + waiting.limited
            + self.circuits.held
            + self.dependencies.waiting
        )

    def empty(self) -> bool:
        """No task anywhere: nothing queued, delayed or running."""
        return not self.tasks and not self.jobs
