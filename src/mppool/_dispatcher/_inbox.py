"""What the dispatcher does with each message it receives, from the client or a worker.

Every handler turns a message into calls on the scheduler and messages out (results for
the client, notes for the workers); none of them waits or writes itself.
"""

from __future__ import annotations

import math
import pickle
from typing import TYPE_CHECKING, Any

from .. import _protocol as p
from .. import _shm
from . import _dependencies
from ._snapshot import snapshot
from ._tasks import Fail, Task, TaskOptions

if TYPE_CHECKING:
    from ._loop import Dispatcher
    from ._procs import WorkerSlot


# --- from the client -------------------------------------------------------------------------
def client_messages(d: Dispatcher, msgs: list[p.Message]) -> None:
    for msg in msgs:
        tag = msg[0]
        if tag == p.C_SUBMIT:
            submit(d, p.Submit.view(msg))
        elif tag == p.C_FUNCTION:
            d.functions[msg[1]] = msg[2]
        elif tag == p.C_OPTIONS:
            options(d, msg)  # type: ignore[arg-type]
        elif tag == p.C_CANCEL:
            cancel(d, msg[1], msg[2])
        elif tag == p.C_FORGET:
            d.forget(msg)  # type: ignore[arg-type]
        elif tag == p.C_LIST:
            pids = [w.pid for w in d.workers.slots]
            rows = d.table.listing(d.sched, pids, d.clock(), d.wall(), msg[2])
            d.results.append(p.TaskList(p.D_LIST, msg[1], rows))
        elif tag == p.C_SCHEDULE:
            schedule(d, msg)  # type: ignore[arg-type]
        elif tag == p.C_UNSCHEDULE:
            d.schedules.pop(msg[1], None)
        elif tag == p.C_STATS:
            d.results.append(p.StatsReply(p.D_STATS, msg[1], snapshot(d)))
        elif tag == p.C_SHUTDOWN:
            d.begin_shutdown(msg[1], msg[2])
        elif tag == p.C_RESIZE:
            d.sizing.resize(msg[2], msg[3], request_id=msg[1])
        elif tag == p.C_DEMAND:
            d.sizing.demand(msg[1], msg[2])
        elif tag == p.C_ENDED:
            ended(d, p.Ended(*msg))
        elif tag == p.C_CANCEL_BATCH:
            for task_id in d.batches.ids(msg[1]):
                cancel(d, task_id, msg[2])


def submit(d: Dispatcher, m: p.Submit) -> None:
    if d.broken is not None:
        d.sched.counts["submitted"] += 1
        d.results.append(p.result(m.task_id, p.BROKEN, 0, 0.0, pickle.dumps(d.broken)))
        return
    opts = d.options[m.opts_id]
    flags = m.flags | p.FLAG_TIMED if opts.timeout > 0 else m.flags
    task = Task(
        m.task_id,
        m.fn_id,
        m.opts_id,
        opts,
        m.payload,
        n_items=m.n_items,
        dedup_key=m.key,
        flags=flags,
        not_before=m.not_before,
        deadline=m.deadline or math.inf,
    )
    deps = d.sched.dependencies
    if deps.bounced:
        deps.bounced.discard(m.task_id)  # back from the client
    if m.needs or m.after:
        if deps.missing(m.needs + m.after):
            # One ended since the client looked and its outcome is not kept here; it is on
            # its way to the client, ahead of this answer: the client submits the task again
            # with the values it has (tasks naming this one wait for that).
            deps.bounced.add(m.task_id)
            d.results.append(p.result(m.task_id, p.DEP_GONE, 0, 0.0, b""))
            return
        d.sched.submit(task, m.needs, m.after)
    else:
        d.sched.submit(task)
    if opts.batch:
        d.batches.submitted(m.task_id, opts.batch)


def ended(d: Dispatcher, m: p.Ended) -> None:
    """A task answered ``DEP_GONE`` failed in the client: its outcome, for its waiters."""
    deps = d.sched.dependencies
    deps.bounced.discard(m.task_id)
    d.sched.counts["submitted"] += 1
    d.sched.counts["failed"] += 1
    payload = _dependencies.cause(m.dependency, m.status, 0, m.payload)
    d.results.append(p.result(m.task_id, p.DEP_FAILED, 0, 0.0, payload))


def options(d: Dispatcher, o: p.Options) -> None:
    d.options[o.opts_id] = TaskOptions.from_message(o)
    if o.retry_on is not None:
        d.retry_on[o.opts_id] = o.retry_on


def cancel(d: Dispatcher, task_id: int, kill: bool) -> None:
    cancelled, kills = d.sched.cancel(task_id, kill)
    if not cancelled:
        if task_id in d.sched.dependencies.bounced:  # cancelled at the client while it was
            d.sched.dependencies.bounced.discard(task_id)  # there: its waiters learn it here
            d.results.append(p.result(task_id, p.CANCELLED, 0, 0.0, b""))
        return
    for worker in kills:
        d.workers.kill(d.workers.slots[worker], "cancel")
    d.table.cancelled(task_id, d.clock(), d.batches.of.get(task_id, ""))
    d.results.append(p.result(task_id, p.CANCELLED, 0, 0.0, b""))


def schedule(d: Dispatcher, m: p.Schedule) -> None:
    from ._recurring import Recurring

    rec = Recurring(m.schedule_id, m.fn_id, m.opts_id, m.payload, interval=m.interval, cron=m.cron)
    rec.first(d.clock(), d.wall())
    d.schedules[m.schedule_id] = rec


def fire_schedules(d: Dispatcher, now: float) -> None:
    """Start a run of every schedule that is due (never two runs of one at once)."""
    wall = d.wall()
    for rec in list(d.schedules.values()):
        if rec.next_at > now:
            continue
        rec.advance(now, wall)
        if rec.running and rec.running in d.sched.tasks:
            rec.skipped += 1  # the previous run is still going: never two at once
            continue
        task_id = d.fired_ids
        d.fired_ids -= 1
        rec.running = task_id
        rec.runs += 1
        opts = d.options[rec.opts_id]
        flags = p.FLAG_TIMED if opts.timeout > 0 else 0
        task = Task(task_id, rec.fn_id, rec.opts_id, opts, rec.payload, flags=flags)
        d.results.append(
            p.Fired(p.D_FIRED, rec.schedule_id, task_id, rec.next_wall(now, wall), rec.skipped)
        )
        d.sched.submit(task)


# --- from a worker ---------------------------------------------------------------------------
def worker_messages(d: Dispatcher, w: WorkerSlot, msgs: list[p.Message]) -> None:
    sched = d.sched
    idx = w.index
    for msg in msgs:
        tag = msg[0]
        if tag == p.R_RESULT:
            result(d, w, p.WorkerResult.view(msg))
        elif tag == p.R_PART:
            done = sched.outcomes.part_done(idx, p.PartResult.view(msg))
            if done is not None:
                d.job_done(done, w.pid)
            dropped = sched.outcomes.dropped
            while dropped:
                _shm.discard(dropped.pop())
        elif tag == p.R_CUT:
            sched.cut(idx, msg[1])
        elif tag == p.R_STARTED:
            sched.started(idx, msg[1], msg[2], msg[3])
        elif tag == p.R_HELLO:
            d.workers.hello(w)
        elif tag == p.R_INIT_FAILED:
            if d.broken is None and not w.kill_reason and not w.leaving:
                d.workers.start_failed(w, f"the worker initializer raised {msg[1]}", msg[2])
        elif tag == p.R_RETIRE:
            w.retired = True
            sched.worker_down(idx)


def result(d: Dispatcher, w: WorkerSlot, r: p.WorkerResult) -> None:
    sched = d.sched
    if sched.dependencies.failed_chains:
        task = sched.tasks.get(r.run_id)
        if task is not None and task.chain_failure is not None:
            # It ran on a value its worker had, but that task's outcome is a failure here
            # (killed at its timeout as it finished, or cancelled): it fails with it.
            if r.status == p.OK:
                _shm.discard(r.payload)
            sched.outcomes.unchained(w.index, r.run_id, r.attempt)
            return
    if r.status == p.OK:
        task = sched.outcomes.complete(w.index, r.run_id, r.attempt, r.duration)
        if task is not None:
            now = d.clock()
            d.table.finished(task, "done", now, r.duration, w.pid)
            d.latency.add(
                max(0.0, task.started_at - task.submitted_at), r.duration, now - task.submitted_at
            )
            d.results.append(p.result(task.id, p.OK, task.failures + 1, r.duration, r.payload))
        else:  # stale, or its task was cancelled while it ran: nobody will read it
            _shm.discard(r.payload)
        return
    if r.status == p.UNCHAINED:
        sched.outcomes.unchained(w.index, r.run_id, r.attempt)
        return
    retryable = r.status == p.ERROR_RETRYABLE
    outcome = sched.outcomes.fail(w.index, r.run_id, r.attempt, r.duration, retryable)
    if isinstance(outcome, Fail):
        failed = outcome.task
        d.table.finished(failed, "failed", d.clock(), r.duration, w.pid)
        status = p.ERROR if retryable else r.status
        d.results.append(p.result(failed.id, status, failed.failures, r.duration, r.payload))


def discard_unsent(job: Any, sent: list[bytes]) -> None:
    """Pieces of a chunk's results after its first error go nowhere: remove their segments."""
    kept = set(sent)
    for _, piece in job.pieces.values():
        if piece not in kept:
            _shm.discard(piece)
