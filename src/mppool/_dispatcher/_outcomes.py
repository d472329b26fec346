"""What becomes of work that ends: results, errors, retries, crashes and timeouts (pure).

A single task that raises is retried after its backoff while its policy allows, else it
fails. A map chunk is judged item by item: a failed item is split out and retried alone
(the items after it run meanwhile), or ends the chunk there. A worker that dies is blamed
only for the unit it was running (known exactly from the claim counters); what it had
claimed before ran, but its results were lost, so it runs again (at-least-once); what it
had not claimed simply moves.
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING

from .. import _protocol as p
from ._pipes import Claimed
from ._runqueue import rank
from ._tasks import (
    BACKOFF,
    DELAYED,
    DONE,
    LOCAL_STATES,
    QUEUED,
    RATE_LIMITED,
    SENT,
    ChunkJob,
    Fail,
    JobDone,
    Retry,
    Task,
    Timeout,
    Unstarted,
)

if TYPE_CHECKING:
    from ._scheduler import Scheduler

Outcome = Retry | Fail | JobDone | None
_COUNTER = {p.EXPIRED: "expired", p.CIRCUIT_OPEN: "refused"}  # statuses with their own count


class Outcomes:
    """Results, failures and deaths, applied to the scheduler's state."""

    def __init__(self, sched: Scheduler) -> None:
        self.s = sched
        self.forgotten: dict[int, Task] = {}  # cancelled while running: results dropped
        self.expired_parts: set[int] = set()  # chunk parts killed at a timeout
        self.dropped: list[bytes] = []  # result payloads nobody will read (their segments go)

    def _take(self, w: int, run_id: int, attempt: int) -> Task | None:
        """The live task a result is about, or ``None`` if the result is stale."""
        s = self.s
        task = s.tasks.get(run_id)
        if task is None or task.state != SENT or task.worker != w or task.attempt != attempt:
            forgotten = self.forgotten.pop(run_id, None)
            if forgotten is not None:
                s.pipes.reported(forgotten)
                if s.circuits.by_kind:
                    s.circuits.ended(forgotten)  # cancelled while running: it judges nothing
            return None
        s.pipes.reported(task)
        s.ran[w] = (rank(task), task.given)  # the last task w surely started
        nxt = s.pipes.first_live(w)
        if nxt is not None and nxt.started_at <= task.started_at:
            nxt.started_at = s.clock()  # the next one starts now
        return task

    # --- single tasks --------------------------------------------------------------------------
    def _ran(self, w: int, run_id: int, attempt: int, duration: float) -> Task | None:
        """A single task ran on ``w`` for ``duration``: the live task, or ``None`` if stale."""
        task = self._take(w, run_id, attempt)
        if task is not None:
            s = self.s
            s.estimates.learn(task, duration, 1)
            s.done_by[w] += 1
            s.busy_by[w] += duration
            if s.fair is not None:
                s.fair.settle(task, duration)
        return task

    def complete(self, w: int, run_id: int, attempt: int, duration: float) -> Task | None:
        """A single task succeeded. Returns it, or ``None`` if the result is stale (drop it)."""
        task = self._ran(w, run_id, attempt, duration)
        if task is None:
            return None
        task.state = DONE
        s = self.s
        del s.tasks[run_id]
        s.counts["completed"] += 1
        if s.circuits.by_kind:
            s.circuits.judge(task, True, s.clock())
        return task

    def unchained(self, w: int, run_id: int, attempt: int) -> None:
        """A chained task was not run: the task before it did not succeed on that worker."""
        task = self._take(w, run_id, attempt)
        if task is not None:
            self.s.dependencies.unchain(task)

    def fail(
        self, w: int, run_id: int, attempt: int, duration: float, retryable: bool
    ) -> Retry | Fail | None:
        """A single task raised. Retry it after its backoff if allowed, else fail it."""
        task = self._ran(w, run_id, attempt, duration)
        if task is None:
            return None
        return self._after_failure(task, retryable)

    def _after_failure(self, task: Task, retryable: bool, cause: str = "error") -> Retry | Fail:
        s = self.s
        task.failures += 1
        task.attempt += 1
        if s.circuits.by_kind:
            s.circuits.judge(task, False, s.clock())
        if retryable and task.failures < task.opts.max_attempts:
            now = s.clock()
            at = now + task.opts.backoff(task.failures, s.rng)
            s.waiting.hold(task, at, BACKOFF)
            s.counts["retried"] += 1
            self._retried(task, at - now, cause)
            return Retry(task, at)
        task.state = DONE
        s.tasks.pop(task.id, None)
        s.counts["failed"] += 1
        return Fail(task)

    def _retried(self, task: Task, delay: float, cause: str) -> None:
        self.s.note(
            p.LOG_INFO,
            "task_retried",
            f"task {task.client_id} failed ({cause}); attempt {task.failures + 1} in {delay:.3g} s",
            task_id=task.client_id,
            attempt=task.failures + 1,
            delay=delay,
            cause=cause,
        )

    # --- map chunks ----------------------------------------------------------------------------
    def part_done(self, w: int, msg: p.PartResult) -> JobDone | None:
        """A run of chunk items reported. Returns the finished chunk, once no part is left."""
        task = self._take(w, msg.run_id, msg.attempt)
        if task is None:
            if msg.results:
                self.dropped.append(msg.results)
            return None
        s = self.s
        items = msg.n_done + (msg.err_status != p.OK)
        s.estimates.learn(task, msg.duration, items)
        if task.job is not None and task.id == task.job.task_id:
            s.done_by[w] += 1  # a chunk counts once, for its first part
        s.busy_by[w] += msg.duration
        if s.fair is not None:
            s.fair.settle(task, msg.duration)
        job = task.job
        assert job is not None
        job.duration += msg.duration
        job.attempts = max(job.attempts, task.attempts)
        job.add_piece(task.start, msg.n_done, msg.results)
        at = task.start + msg.n_done
        now = s.clock()
        if s.circuits.by_kind:
            if msg.err_status == p.OK:
                s.circuits.judge(task, True, now)
            else:
                s.circuits.judge(task, False, now)
        if msg.err_status == p.OK:
            if at < task.stop:  # stopped early without an error: run the rest elsewhere
                s.requeue(task.split(at, s.part_id()), now)
        else:
            self._item_failed(task, at, msg.err_status, msg.err_payload, now)
        return self._part_finished(task)

    def _item_failed(self, task: Task, at: int, status: int, payload: bytes, now: float) -> None:
        """Item ``at`` of ``task`` failed: retry that item alone, or end the chunk there."""
        s = self.s
        rest = task.split(at + 1, s.part_id()) if at + 1 < task.stop else None
        item = task.split(at, s.part_id()) if at > task.start else task
        item.failures = task.failures
        if status == p.ERROR_RETRYABLE and self._retry_part(item):
            if rest is not None:
                s.requeue(rest, now)  # the items after it run meanwhile
            if item is not task:
                s.tasks[item.id] = item
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
        s = self.s
        part.failures += 1
        part.attempt += 1
        if part.failures >= part.opts.max_attempts:
            return False
        now = s.clock()
        at = now + part.opts.backoff(part.failures, s.rng)
        s.waiting.hold(part, at, BACKOFF)
        s.counts["retried"] += 1
        self._retried(part, at - now, "error")
        return True

    def _drop_parts_after(self, job: ChunkJob, at: int) -> None:
        """Queued parts beyond a failed item would run for nothing: cancel them."""
        s = self.s
        for part in list(job.parts):
            if part.start > at and part.state in (QUEUED, DELAYED, BACKOFF, RATE_LIMITED):
                s.leave_queue(part)
                job.parts.discard(part)
                s.tasks.pop(part.id, None)

    def _part_finished(self, task: Task) -> JobDone | None:
        s = self.s
        job = task.job
        assert job is not None
        if task.state not in (BACKOFF,):
            task.state = DONE
            s.tasks.pop(task.id, None)
            job.parts.discard(task)
        if job.parts:
            return None
        s.jobs.pop(job.task_id, None)
        s.counts["completed" if job.err is None else "failed"] += 1
        return JobDone(job, task)

    # --- deadlines and open circuits: failing work that has not started -----------------------
    def deadline_passed(self, task: Task, now: float) -> None:
        """``task``'s deadline came: whatever of it has not started fails (``EXPIRED``).

        A task in a worker's pipe that the worker has not claimed is taken back and fails;
        one already running goes on. For a map chunk, that holds for each of its parts: the
        chunk ends with the error at the first item that had not started.
        """
        payload = pickle.dumps((now - task.submitted_at, task.failures))
        units = [task] if task.job is None else sorted(task.job.parts, key=lambda t: t.start)
        for unit in units:
            self.refuse_unstarted(unit, p.EXPIRED, payload, now)

    def refuse_unstarted(self, unit: Task, status: int, payload: bytes, now: float) -> None:
        """Fail ``unit`` with ``status`` unless it has started (or ended); from a worker's
        pipe, take back what it has not started."""
        s = self.s
        job = unit.job
        if unit.state == SENT:
            moved = s.pipes.take_task(unit)
            if moved is None and job is not None and unit.batch is not None:
                # The worker is on this part: take back its items it has not started.
                moved = s.pipes.take_back(unit.batch, s.pipes.unclaimed(unit.batch))
            moved = moved or []
            for other in moved:
                if other is not unit and (job is None or other.job is not job):
                    s.requeue(other, now)  # other work behind it in that batch
                elif other is not unit:
                    self.refuse(other, status, payload)  # the unstarted end of this chunk
            if not moved or moved[0] is not unit:
                return  # it has started: it runs
        elif unit.state not in LOCAL_STATES:
            return
        else:
            s.leave_queue(unit)
        self.refuse(unit, status, payload)

    def refuse(self, unit: Task, status: int, payload: bytes) -> None:
        """``unit``, which is not running and holds no place, fails with ``status``."""
        s = self.s
        s.tasks.pop(unit.id, None)
        if s.circuits.by_kind:
            s.circuits.ended(unit)
        if s.fair is not None:
            s.fair.settle(unit, 0.0)  # it never ran: its charge is refunded
        job = unit.job
        unit.state = DONE
        unit.batch = None
        counter = _COUNTER.get(status)
        if job is None:
            s.counts["failed"] += 1
            if counter:
                s.counts[counter] += 1
            s.unstarted.append(Unstarted(unit, Fail(unit), status, payload))
            return
        if job.task_id not in s.jobs:
            return  # the chunk has already been reported
        if job.err is None and counter:
            s.counts[counter] += 1
        job.add_error(unit.start, status, payload)
        job.parts.discard(unit)
        self._drop_parts_after(job, unit.start)
        if job.parts:
            return  # its running parts report first; the last one ends the chunk
        s.jobs.pop(job.task_id, None)
        s.counts["failed"] += 1
        s.unstarted.append(Unstarted(unit, JobDone(job, unit), status, payload))

    # --- timeouts and deaths -------------------------------------------------------------------
    def timed_out(self, task: Task, now: float) -> Timeout:
        s = self.s
        w = task.worker
        s.busy_by[w] += now - task.started_at
        if s.fair is not None:
            s.fair.settle(task, now - task.started_at)
        s.counts["timed_out"] += 1
        if task.job is not None:
            # Decided when the worker is gone, from how far it got (see worker_lost).
            self.expired_parts.add(task.id)
            return Timeout(w, task, None)
        s.pipes.reported(task)
        return Timeout(w, task, self._after_failure(task, task.opts.retry_timeouts, "timeout"))

    def worker_lost(
        self, w: int, *, blame: bool, crash: bytes = b"", pid: int = 0
    ) -> list[tuple[Task, Outcome]]:
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
        s = self.s
        s.worker_down(w)
        now = s.clock()
        events: list[tuple[Task, Outcome]] = []
        for run_id in [i for i, t in self.forgotten.items() if t.worker == w]:
            forgotten = self.forgotten.pop(run_id)  # no result will come
            if s.circuits.by_kind:
                s.circuits.ended(forgotten)
        for entry in s.pipes.lost(w):
            task = entry.task
            if task.state != SENT or task.worker != w:
                continue
            task.attempt += 1  # whatever that worker wrote is stale now
            timed_out = task.id in self.expired_parts
            self.expired_parts.discard(task.id)
            if not entry.running or not (blame or timed_out):
                s.requeue(task, now)
            elif task.job is not None:
                payload = pickle.dumps((task.opts.timeout, pid)) if timed_out else crash
                events.append(self._recover_part(entry, timed_out, payload, now))
            else:
                events.append((task, self._crashed(task, now)))
        return events

    def _crashed(self, task: Task, now: float) -> Retry | Fail:
        s = self.s
        task.crashes += 1
        task.failures += 1
        if s.circuits.by_kind:
            s.circuits.judge(task, False, now)
        s.counts["crashed"] += 1
        if task.crashes > task.opts.crash_retries:
            task.state = DONE
            s.tasks.pop(task.id, None)
            s.counts["failed"] += 1
            return Fail(task)
        s.counts["retried"] += 1
        s.requeue(task, now)
        self._retried(task, 0.0, "crash")
        return Retry(task, now)

    def _recover_part(
        self, entry: Claimed, timed_out: bool, payload: bytes, now: float
    ) -> tuple[Task, Outcome]:
        """The unit a chunk part was running is one block: split it out, judge only it."""
        s = self.s
        task = entry.task
        run_start = task.start + (entry.claimed - 1) * task.block
        if timed_out and task.start <= task.running_item < task.stop:
            run_start = task.running_item
        run_stop = min(task.stop, run_start + task.block)
        if run_stop < task.stop:
            s.requeue(task.split(run_stop, s.part_id()), now)
        unit = task
        if run_start > task.start:
            unit = task.split(run_start, s.part_id())
            unit.attempt = task.attempt
            s.requeue(task, now)  # the blocks before it ran; their results were lost
        unit.block = 1  # if it fails again, the failure names its item
        unit.failures = task.failures + 1
        if s.circuits.by_kind:
            s.circuits.judge(task, False, now)
        if timed_out:
            retry = unit.opts.retry_timeouts and unit.failures < unit.opts.max_attempts
        else:
            unit.crashes = task.crashes + 1
            s.counts["crashed"] += 1
            retry = unit.crashes <= unit.opts.crash_retries
        if retry:
            s.counts["retried"] += 1
            self._retried(unit, 0.0, "timeout" if timed_out else "crash")
            if timed_out:
                at = now + unit.opts.backoff(unit.failures, s.rng)
                s.tasks[unit.id] = unit
                s.waiting.hold(unit, at, BACKOFF)
                return unit, Retry(unit, at)
            s.requeue(unit, now)
            return unit, Retry(unit, now)
        return unit, self._fail_unit(unit, run_start, timed_out, payload)

    def _fail_unit(self, unit: Task, at: int, timed_out: bool, payload: bytes) -> Outcome:
        """A chunk's unit is out of tries: its chunk ends with an error at item ``at``."""
        s = self.s
        job = unit.job
        assert job is not None
        job.attempts = max(job.attempts, unit.attempts)
        job.add_error(at, p.TIMEOUT if timed_out else p.CRASHED, payload)
        unit.state = DONE
        s.tasks.pop(unit.id, None)
        job.parts.discard(unit)
        self._drop_parts_after(job, at)
        if job.parts:
            return None
        s.jobs.pop(job.task_id, None)
        s.counts["failed"] += 1
        return JobDone(job, unit)
