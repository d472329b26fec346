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

import heapq
import itertools
import math
import pickle
import random
from collections.abc import Callable, Iterator

from .. import _protocol as p
from ._buckets import TokenBucket
from ._claims import ClaimCounters
from ._pipes import Claimed, Pipes
from ._runqueue import RunQueue, rank
from ._tasks import (
    BACKOFF,
    CANCELLED,
    DELAYED,
    DONE,
    PART_IDS_FROM,
    QUEUED,
    RATE_LIMITED,
    SENT,
    Batch,
    ChunkJob,
    Fail,
    JobDone,
    Retry,
    Task,
    Timeout,
)

# --- tunables (module constants so tests can change them) ------------------------------------
PIPE_WINDOW_SECONDS = 0.001  # estimated work of tiny tasks batched into one write
PREFETCH_MAX_SECONDS = 0.010  # a batch is prefetched only behind this little known work
MAX_IN_PIPE = 256  # tasks in one batch at most
UNKNOWN_COST = 1.0  # what a never-measured task counts as when weighing work
EWMA_ALPHA = 0.3  # weight of the newest duration in a function's estimate
WAKE_SECONDS = 0.001  # a peer's untouched next task is taken only after this long
RECHECK_SECONDS = 0.0002  # how soon a worker left waiting for that is reconsidered
CROWDED_PER_WORKER = 4  # a level with this many tasks queued per worker keeps its batches put
BLOCKS_PER_CHUNK = 64  # claim tokens a chunk is cut into at most
MIN_BLOCK_SECONDS = 0.0001  # ... but a block is at least this much estimated work

# --- timer kinds ------------------------------------------------------------------------------
_T_RELEASE = 0  # a delayed or backing-off task becomes runnable
_T_TIMEOUT = 1  # a running task's timeout
_T_BUCKET = 2  # a kind's token bucket has a token again

COUNTERS = ("submitted", "completed", "failed", "retried", "crashed", "timed_out", "cancelled")


class Scheduler:
    """Heap, local queues, stealing, batching, timers, rate limits and outcomes.

    Args:
        workers: number of worker slots.
        clock: returns the current time in seconds (monotonic).
        claims: the claim counters of the workers' batches.
        aging_rate: priority levels a queued task gains per second of waiting (0: off).
        rng: random source for backoff jitter.
        rate_limits: per kind, ``(rate, per seconds, burst)`` of its token bucket.
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
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.workers = workers
        self.clock = clock
        self.rng = rng or random.Random()
        self.queue = RunQueue(aging_rate)
        self._part_ids = itertools.count(PART_IDS_FROM)
        self.pipes = Pipes(workers, claims, lambda: next(self._part_ids))
        self.tasks: dict[int, Task] = {}  # live tasks and parts by run id
        self.jobs: dict[int, ChunkJob] = {}  # live map chunks by client id
        self._forgotten: dict[int, Task] = {}  # cancelled while running: results dropped
        self._expired_parts: set[int] = set()  # chunk parts killed at a timeout
        self._up = [False] * workers
        self._timers: list[tuple[float, int, int, Task | str, int]] = []
        self._seq = itertools.count(1)
        now = clock()
        self._buckets = {k: TokenBucket(*v, now) for k, v in (rate_limits or {}).items()}
        self._limited: dict[str, list[tuple[float, int, int, Task]]] = {
            k: [] for k in self._buckets
        }
        self._limited_live = 0
        self._bucket_timer: dict[str, float] = {}
        self._delayed = 0
        self._per_item: dict[int, float] = {}
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.rate_limited_waits = 0
        self.starts = 0
        self.done_by = [0] * workers
        self.busy_by = [0.0] * workers
        self._ran: list[tuple[tuple[float, int], int]] = [((-math.inf, 0), 0)] * workers
        self._max_given = (-math.inf, 0)  # the rank of the least urgent task ever handed out
        self.recheck = False  # a worker was left without work, to be reconsidered shortly

    # --- workers -------------------------------------------------------------------------------
    def worker_up(self, w: int) -> None:
        """Worker ``w`` is ready for work."""
        self._up[w] = True

    def worker_down(self, w: int) -> None:
        """Worker ``w`` takes no new work (it is leaving, or not yet there)."""
        self._up[w] = False

    def is_up(self, w: int) -> bool:
        return self._up[w]

    def idle(self, w: int) -> bool:
        """Worker ``w`` is ready and has nothing in hand."""
        return self._up[w] and not self.pipes.busy(w)

    def tick(self) -> None:
        """A new round of the dispatcher's loop (clears ``recheck``)."""
        self.recheck = False

    # --- estimates -----------------------------------------------------------------------------
    def estimate(self, task: Task) -> float | None:
        """Estimated run time of ``task`` in seconds, or ``None`` if its function is unmeasured."""
        per_item = self._per_item.get(task.fn_id)
        if per_item is None:
            return None
        return per_item * (task.n_items or 1)

    def _learn(self, task: Task, duration: float, items: int) -> None:
        per_item = duration / max(1, items)
        old = self._per_item.get(task.fn_id)
        if old is None:
            self._per_item[task.fn_id] = per_item
        else:
            self._per_item[task.fn_id] = old + EWMA_ALPHA * (per_item - old)

    def forget_function(self, fn_id: int) -> None:
        self._per_item.pop(fn_id, None)

    def _block_for(self, task: Task) -> int:
        """Items per claim token for a chunk part: small enough to share, big enough to pay."""
        if task.flags & p.FLAG_TIMED:
            return 1  # each item announces its start: its timeout is its own
        n = task.n_items
        block = max(1, n // BLOCKS_PER_CHUNK)
        per_item = self._per_item.get(task.fn_id)
        if per_item and per_item > 0:
            block = max(block, math.ceil(MIN_BLOCK_SECONDS / per_item))
        return min(block, max(1, n))

    # --- entering ------------------------------------------------------------------------------
    def submit(self, task: Task) -> None:
        """Accept a new task: queue it now, or hold it until ``task.not_before``."""
        now = self.clock()
        task.submitted_at = now
        self.tasks[task.id] = task
        self.counts["submitted"] += 1
        if task.job is not None:
            self.jobs[task.id] = task.job
            task.job.parts.add(task)
        if task.not_before > now:
            task.state = DELAYED
            self._delayed += 1
            self._push_timer(task.not_before, _T_RELEASE, task, task.attempt)
        else:
            self._enqueue(task, now)

    def _enqueue(self, task: Task, now: float, take_back: bool = True) -> None:
        kind = task.opts.kind
        if kind in self._buckets and not task.has_token:
            self.queue.place(task, now)
            task.state = RATE_LIMITED
            task.worker = -1
            heapq.heappush(self._limited[kind], (task.key, task.order, next(self._seq), task))
            self._limited_live += 1
            self._release_kind(kind, now)
            return
        self.queue.push(task, now)
        if take_back:
            self._take_back_behind(task)

    def _release_kind(self, kind: str, now: float) -> None:
        """Move waiting tasks of a rate-limited kind to the heap while tokens last."""
        waiting = self._limited[kind]
        bucket = self._buckets[kind]
        while waiting:
            task = waiting[0][3]
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

    def _take_back_behind(self, task: Task) -> None:
        """Unstarted work in pipes that ranks behind ``task`` goes back to the heap.

        Not needed while some worker is idle: ``task`` goes to it in this same round. Cheap
        in the common case (a stream of equal tasks): each pipe ends with earlier work.
        """
        mine = rank(task)
        if mine > self._max_given:
            return  # ranks behind everything ever handed out (a stream of equal tasks)
        behind: list[int] = []
        for w in range(self.workers):
            last = self.pipes.last_live(w)
            if last is None:
                if self._up[w]:
                    return  # an idle worker: task goes there
            elif rank(last) > mine:
                behind.append(w)
        now = self.clock()
        for w in behind:
            for batch in reversed(self.pipes.batches[w]):
                while True:
                    back = self.pipes.back(batch)
                    if back is None or rank(back) <= mine:
                        break
                    index = batch.tasks.index(back)
                    moved = self.pipes.take_back(batch, batch.cut - batch.begin(index))
                    for t in moved:
                        self._requeue(t, now)
                    if not moved or moved[0] is not back:
                        break  # the worker had started it

    def _requeue(self, task: Task, now: float) -> None:
        """Put a task taken back from a pipe (or a new part of one) into the heap."""
        if task.job is not None and task not in task.job.parts:
            task.job.parts.add(task)
        self.tasks[task.id] = task
        task.batch = None
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
            remaining = self._remaining(w)
            if remaining is None or remaining > PREFETCH_MAX_SECONDS:
                return None  # behind long or unknown work a prefetch would only wait
        tasks = self._pick(w, prefetch=busy)
        if not tasks:
            return None
        self._extend(tasks, min(limit, MAX_IN_PIPE))
        now = self.clock()
        for task in tasks:
            task.has_token = False  # spent: a retry or requeue needs a new one
            task.running_item = -1
            if task.job is not None:
                task.block = self._block_for(task)
        batch = self.pipes.open(w, tasks)
        batch.written_at = now
        arrivals = self.queue.arrivals
        for task in tasks:
            task.given = arrivals
        last = rank(tasks[-1])
        if last > self._max_given:
            self._max_given = last
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

    def _remaining(self, w: int) -> float | None:
        total = 0.0
        for task in self.pipes.live(w):
            est = self.estimate(task)
            if est is None:
                return None
            total += est
        return total

    def _pick(self, w: int, prefetch: bool) -> list[Task]:
        """The most urgent work for ``w``: unstarted work in a peer's pipe, or the heap's top."""
        best = self.queue.peek()
        stolen = self._steal_urgent(w, best)
        if stolen is None:
            return []  # more urgent work is about to start elsewhere: look again next round
        if stolen:
            return stolen
        if best is not None:
            task = self.queue.pop()
            return [task] if task is not None else []
        if prefetch:
            return []  # moving work from one busy worker to another gains nothing
        return self._steal_half(w)

    def _eligible(self, w: int, task: Task) -> bool:
        """Whether ``w`` may take ``task`` from a peer without starting tasks out of order.

        ``w`` must not start a task that ranks before the last one it holds (or ran), unless
        that task came into the queue after it was given to ``w`` (new work may be more
        urgent, rightly so).
        """
        last = self.pipes.last_live(w)
        kept_rank, kept_seq = (rank(last), last.given) if last is not None else self._ran[w]
        # Equal ranks are parts of one map chunk, whose items have no order among them.
        return rank(task) >= kept_rank or task.arrived > kept_seq

    def _steal_urgent(self, w: int, best: Task | None) -> list[Task] | None:
        """Unstarted work in peers' pipes that must start before ``best``.

        A peer that has not started its next task gives up everything it holds, in order
        (else it would start later work first); a busy peer gives up what it has not started
        of a batch queued behind its current task. The most urgent candidate that ranks
        before ``best`` goes to ``w``, if ``w`` may take it (see :meth:`_eligible`).

        A peer's next task written less than ``WAKE_SECONDS`` ago is not taken (its worker
        is waking up); ``w`` then gets nothing and is reconsidered shortly (returns ``None``)
        rather than start something less urgent first. Past that, the peer is taken to be
        stalled (not scheduled by the OS) and its work moves. Within one priority level with plenty
        queued, batches are left where they are: the level's order is kept batch by batch,
        and moving work between pipes would only write it twice.
        """
        if best is None:
            return []
        crowded = self.queue.level(best.opts.priority) >= CROWDED_PER_WORKER * self._n_up()
        chosen: tuple[int, Batch | None, Task] | None = None
        wait = False
        for v in range(self.workers):
            if v == w:
                continue
            for batch, cand in self._candidates(v):
                if rank(cand) >= rank(best) or not self._eligible(w, cand):
                    continue
                if crowded and cand.opts.priority == best.opts.priority:
                    continue
                if batch is None and self._fresh(self._head_batch(v)):
                    wait = True
                elif chosen is None or rank(cand) < rank(chosen[2]):
                    chosen = (v, batch, cand)
        if chosen is None:
            if wait:
                self.recheck = True
                return None
            return []
        v, batch, cand = chosen
        # Everything the peer has not started from there on: the peer would otherwise start
        # its later work before ``w`` gets to this.
        return self._moved_to(w, self._take_tail(v, batch))

    def _take_tail(self, v: int, first: Batch | None = None) -> list[Task]:
        """Take back all unstarted work of ``v`` from batch ``first`` on (``None``: all)."""
        moved: list[Task] = []
        for other in reversed(self.pipes.batches[v]):
            moved[:0] = self.pipes.take_back(other, other.cut)
            if other is first:
                break
        return moved

    def _fresh(self, batch: Batch) -> bool:
        """Written so recently that its worker may simply not have woken up yet."""
        return self.clock() - batch.written_at < WAKE_SECONDS

    def _head_batch(self, v: int) -> Batch:
        head = self.pipes.first_live(v)
        assert head is not None and head.batch is not None
        return head.batch

    def _candidates(self, v: int) -> list[tuple[Batch | None, Task]]:
        """What could be taken from worker ``v``: ``(None, next task)`` if it has not
        started it, else ``(batch, its first unstarted task)`` for each batch behind what
        runs."""
        head = self.pipes.first_live(v)
        if head is None or head.batch is None:
            return []
        batch = head.batch
        index = batch.tasks.index(head)
        unclaimed = self.pipes.claims.unclaimed(v, batch.slot)
        if unclaimed is not None and unclaimed >= batch.cut - batch.begin(index):
            return [(None, head)]
        out: list[tuple[Batch | None, Task]] = []
        for other in self.pipes.batches[v]:
            first = self.pipes.first_unclaimed(other)
            if first is not None and first is not head:
                out.append((other, first))
        return out

    def _steal_half(self, w: int) -> list[Task]:
        """Load balancing when the heap is empty: the unstarted work of the busiest peer.

        All of it, in order, so that the peer does not start later work while ``w`` holds
        earlier work (they will share it again as each runs dry); only the blocks of one
        chunk, which rank alike, are shared by halves.
        """
        best: tuple[float, int, int] | None = None
        for v in range(self.workers):
            if v == w:
                continue
            work, unclaimed = self._unstarted_work(w, v)
            if unclaimed and (best is None or work > best[0]):
                best = (work, v, unclaimed)
        if best is None:
            return []
        _, v, unclaimed = best
        tail = [(b, t) for b in self.pipes.batches[v] for t in b.live()]
        unstarted = [t for b, t in tail if self.pipes.first_unclaimed(b) is not None]
        if len({t.client_id for t in unstarted}) == 1 and unstarted[0].job is not None:
            batch = self.pipes.batches[v][-1]
            return self._moved_to(w, self.pipes.take_back(batch, (unclaimed + 1) // 2))
        return self._moved_to(w, self._take_tail(v))

    def _unstarted_work(self, w: int, v: int) -> tuple[float, int]:
        """Estimated seconds and claim tokens of what ``v`` holds and ``w`` could take."""
        candidates = self._candidates(v)
        if candidates and candidates[0][0] is None:
            if self._fresh(self._head_batch(v)):
                # Just written: v is waking up. Look again shortly, unless v holds a single
                # unit: taking a waking worker's only work would just swap the two.
                if sum(b.cut - b.begin(b.reported) for b in self.pipes.batches[v]) > 1:
                    self.recheck = True
                return 0.0, 0
            if not self._eligible(w, candidates[0][1]):
                return 0.0, 0
        work = 0.0
        total = 0
        for batch in self.pipes.batches[v]:
            unclaimed = self.pipes.unclaimed(batch)
            back = self.pipes.back(batch)
            if back is None or unclaimed <= 0 or not self._eligible(w, back):
                continue
            est = self.estimate(back)
            work += unclaimed * (UNKNOWN_COST if est is None else est / max(1, back.tokens()))
            total += unclaimed
        return work, total

    def _moved_to(self, w: int, moved: list[Task]) -> list[Task]:
        if moved:
            self.pipes.steals += 1
            self.pipes.stolen_tasks += len(moved)
            for task in moved:
                if task.job is not None and task not in task.job.parts:
                    task.job.parts.add(task)
                self.tasks[task.id] = task
        return moved

    def _extend(self, tasks: list[Task], limit: int) -> None:
        """Add tiny tasks of the same priority level from the heap behind ``tasks``."""
        if not self.queue.live:
            return
        costs = [self.estimate(t) for t in tasks]
        if any(c is None for c in costs):
            return  # unknown work travels alone
        cost = sum(c for c in costs if c is not None)
        level = tasks[0].opts.priority
        # A fair share of the level's queue: with few tasks waiting, each worker gets its own,
        # so a batch never makes its peers start later work first.
        share = max(len(tasks), (self.queue.level(level) + len(tasks)) // self._n_up())
        queue = self.queue
        while len(tasks) < min(limit, share):
            top = queue.peek()
            if top is None or top.opts.priority != level:
                return
            est = self.estimate(top)
            if est is None or cost + est > PIPE_WINDOW_SECONDS:
                return
            queue.pop()
            tasks.append(top)
            cost += est

    def _n_up(self) -> int:
        return max(1, sum(self._up))

    # --- results -------------------------------------------------------------------------------
    def _take(self, w: int, run_id: int, attempt: int) -> Task | None:
        """The live task a result is about, or ``None`` if the result is stale."""
        task = self.tasks.get(run_id)
        if task is None or task.state != SENT or task.worker != w or task.attempt != attempt:
            forgotten = self._forgotten.pop(run_id, None)
            if forgotten is not None:
                self.pipes.reported(forgotten)
            return None
        self.pipes.reported(task)
        self._ran[w] = (rank(task), task.given)  # the last task w surely started
        nxt = self.pipes.first_live(w)
        if nxt is not None and nxt.started_at <= task.started_at:
            nxt.started_at = self.clock()  # the next one starts now
        return task

    def complete(self, w: int, run_id: int, attempt: int, duration: float) -> Task | None:
        """A single task succeeded. Returns it, or ``None`` if the result is stale (drop it)."""
        task = self._take(w, run_id, attempt)
        if task is None:
            return None
        self._learn(task, duration, 1)
        self.done_by[w] += 1
        self.busy_by[w] += duration
        task.state = DONE
        del self.tasks[run_id]
        self.counts["completed"] += 1
        return task

    def fail(
        self, w: int, run_id: int, attempt: int, duration: float, retryable: bool
    ) -> Retry | Fail | None:
        """A single task raised. Retry it after its backoff if allowed, else fail it."""
        task = self._take(w, run_id, attempt)
        if task is None:
            return None
        self._learn(task, duration, 1)
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
            task.batch = None
            self._delayed += 1
            self._push_timer(at, _T_RELEASE, task, task.attempt)
            self.counts["retried"] += 1
            return Retry(task, at)
        task.state = DONE
        self.tasks.pop(task.id, None)
        self.counts["failed"] += 1
        return Fail(task)

    def part_done(self, w: int, msg: p.PartResult) -> JobDone | None:
        """A run of chunk items reported. Returns the finished chunk, once no part is left."""
        task = self._take(w, msg.run_id, msg.attempt)
        if task is None:
            return None
        items = msg.n_done + (msg.err_status != p.OK)
        self._learn(task, msg.duration, items)
        if task.job is not None and task.id == task.job.task_id:
            self.done_by[w] += 1  # a chunk counts once, for its first part
        self.busy_by[w] += msg.duration
        job = task.job
        assert job is not None
        job.duration += msg.duration
        job.attempts = max(job.attempts, task.attempts)
        job.add_piece(task.start, msg.n_done, msg.results)
        at = task.start + msg.n_done
        now = self.clock()
        if msg.err_status == p.OK:
            if at < task.stop:  # stopped early without an error: run the rest elsewhere
                self._requeue(task.split(at, next(self._part_ids)), now)
        else:
            self._item_failed(task, at, msg.err_status, msg.err_payload, now)
        return self._part_finished(task)

    def _item_failed(self, task: Task, at: int, status: int, payload: bytes, now: float) -> None:
        """Item ``at`` of ``task`` failed: retry that item alone, or end the chunk there."""
        rest = task.split(at + 1, next(self._part_ids)) if at + 1 < task.stop else None
        item = task.split(at, next(self._part_ids)) if at > task.start else task
        item.failures = task.failures
        if status == p.ERROR_RETRYABLE and self._retry_part(item):
            if rest is not None:
                self._requeue(rest, now)  # the items after it run meanwhile
            if item is not task:
                self.tasks[item.id] = item
            return
        job = task.job
        assert job is not None
        job.add_error(at, p.ERROR if status == p.ERROR_RETRYABLE else status, payload)
        if rest is not None:
            job.parts.discard(rest)  # nothing after a failed item is reported
        if item is not task:
            job.parts.discard(item)
        self._drop_parts_after(job, at)

    def _retry_part(self, part: Task) -> bool:
        """Count a failure of a chunk part; back it off for another try if it has one left."""
        part.failures += 1
        part.attempt += 1
        if part.failures >= part.opts.max_attempts:
            return False
        at = self.clock() + part.opts.backoff(part.failures, self.rng)
        part.state = BACKOFF
        part.worker = -1
        part.batch = None
        self._delayed += 1
        self._push_timer(at, _T_RELEASE, part, part.attempt)
        self.counts["retried"] += 1
        return True

    def _drop_parts_after(self, job: ChunkJob, at: int) -> None:
        """Queued parts beyond a failed item would run for nothing: cancel them."""
        for part in list(job.parts):
            if part.start > at and part.state in (QUEUED, DELAYED, BACKOFF, RATE_LIMITED):
                self._leave_queue(part)
                job.parts.discard(part)
                self.tasks.pop(part.id, None)

    def _part_finished(self, task: Task) -> JobDone | None:
        job = task.job
        assert job is not None
        if task.state not in (BACKOFF,):
            task.state = DONE
            self.tasks.pop(task.id, None)
            job.parts.discard(task)
        if job.parts:
            return None
        self.jobs.pop(job.task_id, None)
        self.counts["completed" if job.err is None else "failed"] += 1
        return JobDone(job, task)

    def started(self, w: int, run_id: int, attempt: int, item: int) -> None:
        """Worker ``w`` announced that it started a (timed) task or item: arm its timeout."""
        task = self.tasks.get(run_id)
        if task is None or task.state != SENT or task.worker != w or task.attempt != attempt:
            return
        now = self.clock()
        task.started_at = now
        task.running_item = item
        if task.opts.timeout > 0:
            self._push_timer(now + task.opts.timeout, _T_TIMEOUT, task, attempt)

    def cut(self, w: int, batch_id: int) -> None:
        """Worker ``w`` reached the end of what it could claim of a batch."""
        self.pipes.cut(w, batch_id)

    # --- workers dying -------------------------------------------------------------------------
    def worker_lost(
        self, w: int, *, blame: bool, crash: bytes = b"", pid: int = 0
    ) -> list[tuple[Task, Retry | Fail | JobDone | None]]:
        """Worker ``w`` died: put back what it held, and decide about what it was running.

        Args:
            w: the worker slot.
            blame: whether it died of something a task did (not killed by us, not retiring).
                Only the unit it was running is blamed (known exactly from the claim counters:
                it had claimed it and not reported it); units it had claimed before that ran
                but their results were lost, and are run again; unclaimed ones just move.
            crash: the error payload for a chunk item that fails by crashing.
            pid: the dead worker's process id (for the error of a timed-out chunk item).

        Returns:
            ``(task, outcome)`` for the blamed or timed-out unit, if any: ``Retry`` (it runs
            again), ``Fail`` (a single task failed), ``JobDone`` (its chunk is finished), or
            ``None`` (its chunk has other parts still running).
        """
        self._up[w] = False
        now = self.clock()
        events: list[tuple[Task, Retry | Fail | JobDone | None]] = []
        for run_id in [i for i, t in self._forgotten.items() if t.worker == w]:
            del self._forgotten[run_id]  # no result will come
        for entry in self.pipes.lost(w):
            task = entry.task
            if task.state != SENT or task.worker != w:
                continue
            task.attempt += 1  # whatever that worker wrote is stale now
            timed_out = task.id in self._expired_parts
            self._expired_parts.discard(task.id)
            if not entry.running or not (blame or timed_out):
                self._requeue(task, now)
            elif task.job is not None:
                payload = pickle.dumps((task.opts.timeout, pid)) if timed_out else crash
                events.append(self._recover_part(entry, timed_out, payload, now))
            else:
                events.append((task, self._crashed(task, now)))
        return events

    def _crashed(self, task: Task, now: float) -> Retry | Fail:
        task.crashes += 1
        task.failures += 1
        self.counts["crashed"] += 1
        if task.crashes > task.opts.crash_retries:
            task.state = DONE
            self.tasks.pop(task.id, None)
            self.counts["failed"] += 1
            return Fail(task)
        self.counts["retried"] += 1
        self._requeue(task, now)
        return Retry(task, now)

    def _recover_part(
        self, entry: Claimed, timed_out: bool, payload: bytes, now: float
    ) -> tuple[Task, Retry | Fail | JobDone | None]:
        """The unit a chunk part was running is one block: split it out, judge only it."""
        task = entry.task
        run_start = task.start + (entry.claimed - 1) * task.block
        if timed_out and task.start <= task.running_item < task.stop:
            run_start = task.running_item
        run_stop = min(task.stop, run_start + task.block)
        if run_stop < task.stop:
            self._requeue(task.split(run_stop, next(self._part_ids)), now)
        unit = task
        if run_start > task.start:
            unit = task.split(run_start, next(self._part_ids))
            unit.attempt = task.attempt
            self._requeue(task, now)  # the blocks before it ran; their results were lost
        unit.block = 1  # if it fails again, the failure names its item
        unit.failures = task.failures + 1
        if timed_out:
            retry = unit.opts.retry_timeouts and unit.failures < unit.opts.max_attempts
        else:
            unit.crashes = task.crashes + 1
            self.counts["crashed"] += 1
            retry = unit.crashes <= unit.opts.crash_retries
        if retry:
            self.counts["retried"] += 1
            if timed_out:
                at = now + unit.opts.backoff(unit.failures, self.rng)
                unit.state = BACKOFF
                self.tasks[unit.id] = unit
                self._delayed += 1
                self._push_timer(at, _T_RELEASE, unit, unit.attempt)
                return unit, Retry(unit, at)
            self._requeue(unit, now)
            return unit, Retry(unit, now)
        job = unit.job
        assert job is not None
        job.attempts = max(job.attempts, unit.attempts)
        job.add_error(run_start, p.TIMEOUT if timed_out else p.CRASHED, payload)
        unit.state = DONE
        self.tasks.pop(unit.id, None)
        job.parts.discard(unit)
        self._drop_parts_after(job, run_start)
        if job.parts:
            return unit, None
        self.jobs.pop(job.task_id, None)
        self.counts["failed"] += 1
        return unit, JobDone(job, unit)

    # --- cancelling ----------------------------------------------------------------------------
    def cancel(self, client_id: int, kill: bool) -> tuple[bool, list[int]]:
        """Cancel a task (or a whole map chunk) by the id the client knows.

        Returns whether it was cancelled, and the workers to kill: those running it, when
        ``kill`` is set. Without ``kill`` a running task is forgotten: it finishes, and its
        result is dropped.
        """
        job = self.jobs.get(client_id)
        parts = list(job.parts) if job is not None else []
        single = self.tasks.get(client_id) if job is None else None
        if single is not None and single.job is None:
            parts = [single]
        if not parts:
            return False, []
        kills: list[int] = []
        now = self.clock()
        for part in parts:
            worker = self._cancel_one(part, now)
            if worker is not None and kill:
                kills.append(worker)
        if job is not None:
            job.parts.clear()
            self.jobs.pop(client_id, None)
        self.counts["cancelled"] += 1
        return True, kills

    def _cancel_one(self, task: Task, now: float) -> int | None:
        """Remove one task; return the worker running it, if it could not be taken back."""
        running_on: int | None = None
        if task.state == SENT:
            moved = self.pipes.take_task(task) or []
            if not moved or moved[0] is not task:
                running_on = task.worker
                self._forgotten[task.id] = task
            for other in moved:
                if other.job is not None and other.job is task.job:
                    other.state = CANCELLED  # the rest of this very chunk: cancelled too
                    self.tasks.pop(other.id, None)
                elif other is not task:
                    self._requeue(other, now)
        else:
            self._leave_queue(task)
        task.state = CANCELLED
        self.tasks.pop(task.id, None)
        return running_on

    def _leave_queue(self, task: Task) -> None:
        if task.state == QUEUED:
            self.queue.discard(task)  # its heap entry is skipped when popped
        elif task.state in (DELAYED, BACKOFF):
            self._delayed -= 1  # its timer is skipped when it fires
        elif task.state == RATE_LIMITED:
            self._limited_live -= 1  # skipped when its kind's queue reaches it
        task.state = CANCELLED

    def drop_queued(self) -> list[int]:
        """Cancel every task nothing has started (shutdown with ``cancel_futures``)."""
        dropped = []
        for task in list(self.tasks.values()):
            if task.state == SENT or task.state == CANCELLED:
                continue
            job = task.job
            if job is not None and any(t.state == SENT for t in job.parts):
                continue  # a chunk with a running part finishes
            if self.cancel(task.client_id, kill=False)[0]:
                dropped.append(task.client_id)
        return dropped

    def abort_all(self) -> list[int]:
        """Forget every task, wherever it is (pool broken, or killed at a deadline).

        Returns the client ids of everything that was live.
        """
        ids = {t.client_id for t in self.tasks.values()} | set(self.jobs)
        for task in self.tasks.values():
            task.state = CANCELLED
        self.tasks.clear()
        self.jobs.clear()
        self._forgotten.clear()
        self._expired_parts.clear()
        self.queue.clear()
        self._timers.clear()
        self._delayed = 0
        for waiting in self._limited.values():
            waiting.clear()
        self._limited_live = 0
        self._bucket_timer.clear()
        return sorted(ids)

    # --- timers --------------------------------------------------------------------------------
    def _push_timer(self, at: float, kind: int, task: Task, attempt: int) -> None:
        heapq.heappush(self._timers, (at, next(self._seq), kind, task, attempt))

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
            elif task.started_at + task.opts.timeout <= now + 1e-9:
                out.append(self._timed_out(task, now))
        return out

    def _timed_out(self, task: Task, now: float) -> Timeout:
        w = task.worker
        self.busy_by[w] += now - task.started_at
        self.counts["timed_out"] += 1
        if task.job is not None:
            # Decided when the worker is gone, from how far it got (see worker_lost).
            self._expired_parts.add(task.id)
            return Timeout(w, task, None)
        self.pipes.reported(task)
        return Timeout(w, task, self._after_failure(task, task.opts.retry_timeouts))

    # --- introspection -------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        """Tasks waiting for a worker (heap, delays, backoffs, rate limits)."""
        return self.queue.live + self._delayed + self._limited_live

    @property
    def in_pipes(self) -> int:
        """Tasks handed to a worker and not yet reported."""
        return sum(1 for w in range(self.workers) for _ in self.pipes.live(w))

    def live_tasks(self) -> Iterator[Task]:
        return iter(list(self.tasks.values()))

    def empty(self) -> bool:
        """No task anywhere: nothing queued, delayed or running."""
        return not self.tasks and not self.jobs
