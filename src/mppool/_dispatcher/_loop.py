"""The dispatcher process: one thread, one event loop, all scheduling state.

It is started by the client as a fresh interpreter (``python -c``, not a fork of the user's
possibly multi-threaded process) and forks the workers itself, so a respawn is a fork of a
small single-threaded process: milliseconds, not an interpreter start.

The loop waits, with one ``epoll`` (or the platform's selector), on:

* the client pipe (tasks, options, functions, cancels, stats requests, shutdown);
* each worker's result pipe (results, "started" notes, cuts, init failures, retirements);
* each worker's pidfd, which becomes readable when that worker dies (on Linux; elsewhere
  end-of-file on its result pipe plays that role);
* write-readiness of any pipe whose outgoing buffer did not fit (writes never block);
* the nearest timer of the scheduler (delays, backoffs, timeouts), as the wait's timeout.

Every decision is made by :class:`mppool._scheduler.Scheduler`; this module only moves bytes
and processes. Payloads are never unpickled here.
"""

from __future__ import annotations

import faulthandler
import gc
import os
import pickle
import selectors
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from .. import _protocol as p
from . import _scheduler as s
from ._claims import Claims
from ._latency import LatencyWindow
from ._procs import Outbox as _Outbox
from ._procs import WorkerSlot as _Worker
from ._procs import fork_worker, open_pidfd, reap, set_nonblocking
from ._snapshot import ProcessUsage, snapshot
from ._tasklist import TaskTable
from ._tasks import Fail, JobDone, Retry, Task, TaskOptions, Timeout

EXIT_GRACE_SECONDS = 2.0  # a worker told to leave is killed if it has not left by then
MAX_EARLY_DEATHS = 5  # workers dying before they are ready, in a row, before giving up
GC_THRESHOLD = 50_000  # allocations between the dispatcher's (rare) cyclic collections
MAX_WAIT_SECONDS = 3600.0  # longest single wait of the loop: far timers are re-checked


class Dispatcher:
    """The event loop. Created by :func:`main` from the client's ``Config`` message."""

    def __init__(
        self, rfd: int, wfd: int, config: p.Config, frames: p.FrameBuffer | None = None
    ) -> None:
        self.clock: Callable[[], float] = time.monotonic
        self.client_in = rfd
        self.client_frames = frames if frames is not None else p.FrameBuffer()
        self.client_out = _Outbox(wfd)
        self.config = config
        self.claims = Claims(config.workers)
        self.sched = s.Scheduler(
            config.workers,
            self.clock,
            self.claims,
            aging_rate=config.aging_rate,
            rate_limits=config.rate_limits,
        )
        self.table = TaskTable()
        self.latency = LatencyWindow()
        self.started_at = self.clock()
        self.usage = ProcessUsage()
        self.schedules: dict[int, Any] = {}  # schedule id -> Recurring
        self.fired_ids = -1  # runs of schedules get negative ids: the client's are positive
        self.selector = selectors.DefaultSelector()
        self.functions: dict[int, bytes] = {}
        self.options: dict[int, TaskOptions] = {}
        self.retry_on: dict[int, bytes] = {}
        # Forgotten by the client, kept while a live task still uses them (see _on_forget).
        self.doomed_fns: set[int] = set()
        self.doomed_opts: set[int] = set()
        self.workers = [_Worker(i) for i in range(config.workers)]
        self.by_fd: dict[int, tuple[str, _Worker | None]] = {}
        self.results: list[p.Message] = []
        self.closing = False
        self.kill_at: float | None = None
        self.broken: tuple[str, str | None] | None = None
        self.client_gone = False
        self.early_deaths = 0
        self.respawns = 0
        set_nonblocking(rfd)
        set_nonblocking(wfd)
        self.selector.register(rfd, selectors.EVENT_READ)
        self.by_fd[rfd] = ("client", None)

    # --- workers -------------------------------------------------------------------------------
    def spawn(self, w: _Worker) -> None:
        pid, task_fd, result_fd = fork_worker(
            self.config.initializer, self.config.max_memory_per_child, self.claims.rings[w.index]
        )
        w.reset(pid, task_fd, result_fd)
        self.selector.register(result_fd, selectors.EVENT_READ)
        self.by_fd[result_fd] = ("result", w)
        w.pidfd = open_pidfd(pid)
        if w.pidfd >= 0:
            self.selector.register(w.pidfd, selectors.EVENT_READ)
            self.by_fd[w.pidfd] = ("pidfd", w)

    def _forget_fds(self, w: _Worker) -> None:
        for fd in (w.result_fd, w.pidfd, w.task_fd):
            if fd < 0:
                continue
            if fd in self.by_fd or (w.outbox.registered and fd == w.task_fd):
                self.by_fd.pop(fd, None)
                try:
                    self.selector.unregister(fd)
                except (KeyError, ValueError):
                    pass
            try:
                os.close(fd)
            except OSError:
                pass
        w.result_fd = w.pidfd = w.task_fd = -1
        w.outbox = _Outbox(-1)

    def _drain_results(self, w: _Worker) -> None:
        """Read everything left in a dead worker's result pipe, then handle it."""
        fd = w.result_fd
        while fd >= 0:
            try:
                data = os.read(fd, p.READ_SIZE)
            except OSError:
                break
            if not data:
                break
            w.frames.feed(data)
        for frame in w.frames.frames():
            self._on_worker_messages(w, frame)

    def worker_died(self, w: _Worker) -> None:
        self._drain_results(w)
        exitcode, signame = reap(w.pid)
        self._forget_fds(w)
        pid, w.pid = w.pid, 0
        blame = not (w.retired or w.draining or w.kill_reason) and w.ready
        if not w.ready and not w.kill_reason and not self.closing:
            self.early_deaths += 1
        crash = pickle.dumps((pid, exitcode, signame))
        for task, outcome in self.sched.worker_lost(w.index, blame=blame, crash=crash, pid=pid):
            self._report_recovered(task, outcome, pid, crash)
        w.ready = False
        if self.early_deaths >= MAX_EARLY_DEATHS and self.broken is None:
            self.go_broken(
                f"{MAX_EARLY_DEATHS} workers in a row died before becoming ready "
                f"(last: exit code {exitcode}, signal {signame})",
                None,
            )
        if self.broken is None and not self.client_gone and not (self.closing and self._done()):
            self.respawns += 1
            self.spawn(w)

    def _report_recovered(
        self, task: Task, outcome: Retry | Fail | JobDone | None, pid: int, crash: bytes
    ) -> None:
        now = self.clock()
        if isinstance(outcome, Fail):
            self.table.finished(task, "failed", now, 0.0, pid)
            self.results.append(p.result(task.id, p.CRASHED, task.failures, 0.0, crash))
        elif isinstance(outcome, JobDone):
            self._job_done(outcome, pid)

    def kill(self, w: _Worker, reason: str) -> None:
        if w.pid and not w.kill_reason:
            w.kill_reason = reason
            self.sched.worker_down(w.index)
            try:
                os.kill(w.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def go_broken(self, message: str, tb: str | None) -> None:
        """Nothing can run any more: fail every task, tell the client, stop the workers."""
        self.broken = (message, tb)
        payload = pickle.dumps((message, tb))
        for task_id in self.sched.abort_all():
            self.results.append(p.result(task_id, p.BROKEN, 0, 0.0, payload))
        self.results.append(p.Broken(p.D_BROKEN, message, tb))
        for w in self.workers:
            self.kill(w, "broken")

    # --- messages from workers -----------------------------------------------------------------
    def _on_worker_messages(self, w: _Worker, msgs: list[p.Message]) -> None:
        sched = self.sched
        idx = w.index
        for msg in msgs:
            tag = msg[0]
            if tag == p.R_RESULT:
                self._on_result(w, p.WorkerResult.view(msg))
            elif tag == p.R_PART:
                done = sched.part_done(idx, p.PartResult.view(msg))
                if done is not None:
                    self._job_done(done, w.pid)
            elif tag == p.R_CUT:
                sched.cut(idx, msg[1])
            elif tag == p.R_STARTED:
                sched.started(idx, msg[1], msg[2], msg[3])
            elif tag == p.R_HELLO:
                w.ready = True
                w.ready_at = time.time()
                self.early_deaths = 0
                if not w.kill_reason:
                    sched.worker_up(idx)
            elif tag == p.R_INIT_FAILED:
                if self.broken is None:
                    self.go_broken(f"the worker initializer raised {msg[1]}", msg[2])
            elif tag == p.R_RETIRE:
                w.retired = True
                sched.worker_down(idx)

    def _on_result(self, w: _Worker, r: p.WorkerResult) -> None:
        sched = self.sched
        if r.status == p.OK:
            task = sched.complete(w.index, r.run_id, r.attempt, r.duration)
            if task is not None:
                now = self.clock()
                self.table.finished(task, "done", now, r.duration, w.pid)
                self.latency.add(
                    max(0.0, task.started_at - task.submitted_at),
                    r.duration,
                    now - task.submitted_at,
                )
                self.results.append(
                    p.result(task.id, p.OK, task.failures + 1, r.duration, r.payload)
                )
            return
        retryable = r.status == p.ERROR_RETRYABLE
        outcome = sched.fail(w.index, r.run_id, r.attempt, r.duration, retryable)
        if isinstance(outcome, Fail):
            task = outcome.task
            self.table.finished(task, "failed", self.clock(), r.duration, w.pid)
            status = p.ERROR if retryable else r.status
            self.results.append(p.result(task.id, status, task.failures, r.duration, r.payload))

    def _job_done(self, done: JobDone, pid: int) -> None:
        job = done.job
        now = self.clock()
        state = "done" if job.err is None else "failed"
        self.table.finished(done.task, state, now, job.duration, pid, job=job)
        if job.err is None:
            task = done.task
            self.latency.add(
                max(0.0, task.started_at - task.submitted_at), job.duration, now - task.submitted_at
            )
        self.results.append(job.message())

    # --- messages from the client --------------------------------------------------------------
    def _on_client_messages(self, msgs: list[p.Message]) -> None:
        for msg in msgs:
            tag = msg[0]
            if tag == p.C_SUBMIT:
                self._on_submit(p.Submit.view(msg))
            elif tag == p.C_FUNCTION:
                self.functions[msg[1]] = msg[2]
            elif tag == p.C_OPTIONS:
                o: p.Options = msg  # type: ignore[assignment]
                self.options[o.opts_id] = TaskOptions.from_message(o)
                if o.retry_on is not None:
                    self.retry_on[o.opts_id] = o.retry_on
            elif tag == p.C_CANCEL:
                self._on_cancel(msg[1], msg[2])
            elif tag == p.C_FORGET:
                self._on_forget(msg)  # type: ignore[arg-type]
            elif tag == p.C_LIST:
                pids = [w.pid for w in self.workers]
                rows = self.table.listing(self.sched, pids, self.clock(), msg[2])
                self.results.append(p.TaskList(p.D_LIST, msg[1], rows))
            elif tag == p.C_SCHEDULE:
                self._on_schedule(msg)  # type: ignore[arg-type]
            elif tag == p.C_UNSCHEDULE:
                self.schedules.pop(msg[1], None)
            elif tag == p.C_STATS:
                self.results.append(p.StatsReply(p.D_STATS, msg[1], self.snapshot()))
            elif tag == p.C_SHUTDOWN:
                self._on_shutdown(msg[1], msg[2])

    def _on_submit(self, m: p.Submit) -> None:
        if self.broken is not None:
            self.sched.counts["submitted"] += 1
            self.results.append(p.result(m.task_id, p.BROKEN, 0, 0.0, pickle.dumps(self.broken)))
            return
        opts = self.options[m.opts_id]
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
        )
        self.sched.submit(task)

    def _on_cancel(self, task_id: int, kill: bool) -> None:
        cancelled, kills = self.sched.cancel(task_id, kill)
        if not cancelled:
            return
        for worker in kills:
            self.kill(self.workers[worker], "cancel")
        self.table.cancelled(task_id, self.clock())
        self.results.append(p.result(task_id, p.CANCELLED, 0, 0.0, b""))

    def _on_forget(self, msg: p.Forget) -> None:
        """The client dropped functions and option sets; tasks still queued or running may
        use them (a cancelled task finishing, a schedule's last run), so those wait."""
        self.doomed_fns.update(msg.fn_ids)
        self.doomed_opts.update(msg.opts_ids)
        self._forget_unused()

    def _forget_unused(self) -> None:
        live_fns = {t.fn_id for t in self.sched.tasks.values()}
        live_opts = {t.opts_id for t in self.sched.tasks.values()}
        live_fns.update(rec.fn_id for rec in self.schedules.values())
        live_opts.update(rec.opts_id for rec in self.schedules.values())
        fn_ids = tuple(self.doomed_fns - live_fns)
        opts_ids = tuple(self.doomed_opts - live_opts)
        if not fn_ids and not opts_ids:
            return
        self.doomed_fns.difference_update(fn_ids)
        self.doomed_opts.difference_update(opts_ids)
        for fn_id in fn_ids:
            self.functions.pop(fn_id, None)
            self.sched.forget_function(fn_id)
        for opts_id in opts_ids:
            self.options.pop(opts_id, None)
            self.retry_on.pop(opts_id, None)
        note = p.WorkerForget(p.W_FORGET, fn_ids, opts_ids)
        for w in self.workers:
            if w.task_fd < 0:
                continue
            if w.fns.intersection(fn_ids) or w.opts.intersection(opts_ids):
                w.fns.difference_update(fn_ids)
                w.opts.difference_update(opts_ids)
                self._write(w.outbox, p.encode([note]))

    def _on_schedule(self, m: p.Schedule) -> None:
        from ._recurring import Recurring

        rec = Recurring(
            m.schedule_id, m.fn_id, m.opts_id, m.payload, interval=m.interval, cron=m.cron
        )
        rec.first(self.clock(), time.time())
        self.schedules[m.schedule_id] = rec

    def _on_shutdown(self, cancel_queued: bool, deadline: float) -> None:
        self.closing = True
        self.schedules.clear()  # a closing pool starts no new runs
        if cancel_queued:
            now = self.clock()
            for task_id in self.sched.drop_queued():
                self.table.cancelled(task_id, now)
                self.results.append(p.result(task_id, p.CANCELLED, 0, 0.0, b""))
        if deadline >= 0:
            self.kill_at = self.clock() + deadline

    def _fire_schedules(self) -> None:
        now = self.clock()
        wall = time.time()
        for rec in list(self.schedules.values()):
            if rec.next_at > now:
                continue
            rec.advance(now, wall)
            if rec.running and rec.running in self.sched.tasks:
                rec.skipped += 1  # the previous run is still going: never two at once
                continue
            task_id = self.fired_ids
            self.fired_ids -= 1
            rec.running = task_id
            rec.runs += 1
            opts = self.options[rec.opts_id]
            flags = p.FLAG_TIMED if opts.timeout > 0 else 0
            task = Task(task_id, rec.fn_id, rec.opts_id, opts, rec.payload, flags=flags)
            self.results.append(
                p.Fired(p.D_FIRED, rec.schedule_id, task_id, rec.next_wall(now, wall), rec.skipped)
            )
            self.sched.submit(task)

    def _next_schedule(self) -> float | None:
        if not self.schedules:
            return None
        return float(min(rec.next_at for rec in self.schedules.values()))

    def snapshot(self) -> dict[str, Any]:
        return snapshot(self)

    # --- the loop ------------------------------------------------------------------------------
    def _send_work(self) -> None:
        sched = self.sched
        sched.tick()
        limit = self.config.max_tasks_per_child
        for w in self.workers:
            if not w.ready or w.kill_reason or w.draining:
                continue
            if not sched.has_work():
                break
            while True:
                # Never send a worker more tasks than it may still run (max_tasks_per_child).
                batch = sched.assign(w.index, limit - w.sent_total if limit else s.MAX_IN_PIPE)
                if batch is None:
                    break
                msgs: list[p.Message] = []
                for task in batch.tasks:
                    if task.fn_id not in w.fns:
                        w.fns.add(task.fn_id)
                        msgs.append(
                            p.WorkerFunction(p.W_FUNCTION, task.fn_id, self.functions[task.fn_id])
                        )
                    if task.opts_id not in w.opts:
                        w.opts.add(task.opts_id)
                        blob = self.retry_on.get(task.opts_id)
                        if blob is not None:
                            msgs.append(p.WorkerRetryOn(p.W_RETRY_ON, task.opts_id, blob))
                    msgs.append(
                        p.run(
                            task.id,
                            task.attempt,
                            task.fn_id,
                            task.opts_id,
                            task.flags,
                            task.payload,
                            batch.id,
                            batch.slot,
                            task.start,
                            task.stop,
                            task.block,
                        )
                    )
                w.sent_total += len(batch.tasks)
                self._write(w.outbox, p.encode(msgs))
                if limit and w.sent_total >= limit:
                    w.draining = True
                    sched.worker_down(w.index)
                    break

    def _write(self, outbox: _Outbox, data: bytes) -> None:
        if outbox.fd < 0:
            return
        outbox.chunks.append(data)
        if outbox.registered:
            return
        try:
            done = outbox.flush()
        except OSError:
            outbox.chunks.clear()  # the reader is gone; its death is handled elsewhere
            return
        if not done:
            outbox.registered = True
            self.selector.register(outbox.fd, selectors.EVENT_WRITE)
            self.by_fd[outbox.fd] = ("write", None)

    def _on_writable(self, fd: int) -> None:
        outbox = self.client_out if fd == self.client_out.fd else None
        if outbox is None:
            for w in self.workers:
                if w.outbox.fd == fd:
                    outbox = w.outbox
                    break
        if outbox is None:
            return
        try:
            done = outbox.flush()
        except OSError:
            outbox.chunks.clear()
            done = True
        if done:
            outbox.registered = False
            self.selector.unregister(fd)
            del self.by_fd[fd]

    def _finish_draining(self) -> None:
        """Close the task pipe of workers that reached max_tasks_per_child and are empty."""
        for w in self.workers:
            if w.draining and w.pid and not self.sched.pipes.busy(w.index) and w.task_fd >= 0:
                if w.outbox.registered:
                    continue
                os.close(w.task_fd)
                w.task_fd = -1
                w.outbox = _Outbox(-1)

    def _done(self) -> bool:
        return self.sched.empty() or self.broken is not None

    def _begin_exit(self) -> None:
        """Tell idle workers to leave by closing their task pipes."""
        now = self.clock()
        for w in self.workers:
            if w.pid and w.task_fd >= 0 and not w.outbox.registered:
                os.close(w.task_fd)
                w.task_fd = -1
                w.outbox = _Outbox(-1)
                w.closing_since = now
            elif w.pid and w.closing_since and now - w.closing_since > EXIT_GRACE_SECONDS:
                self.kill(w, "exit")

    def _timeout(self) -> float | None:
        """How long the loop may wait: until the nearest timer, clamped to a sane range."""
        at = self.sched.next_timer()
        rec_at = self._next_schedule()
        if rec_at is not None and (at is None or rec_at < at):
            at = rec_at
        if self.kill_at is not None and (at is None or self.kill_at < at):
            at = self.kill_at
        wait = None if at is None else max(0.0, at - self.clock())
        if self.closing and self._done():
            wait = 0.05 if wait is None else min(wait, 0.05)
        if self.sched.recheck:  # a worker waits to see whether a peer starts its next task
            wait = s.RECHECK_SECONDS if wait is None else min(wait, s.RECHECK_SECONDS)
        if wait is not None and not wait <= MAX_WAIT_SECONDS:  # far (or infinite) timers
            wait = MAX_WAIT_SECONDS
        return wait

    def run(self) -> None:
        pids = []
        for w in self.workers:
            self.spawn(w)
            pids.append(w.pid)
        self.results.append(p.Ready(p.D_READY, pids))
        # Report ready now, not after the first event: a worker's initializer may take long.
        self._flush_results()
        select = self.selector.select
        while True:
            for key, _mask in select(self._timeout()):
                fd = key.fd
                kind, slot = self.by_fd.get(fd, ("", None))
                if kind == "client":
                    self._read_client()
                elif kind == "result" and slot is not None:
                    self._read_worker(slot)
                elif kind == "pidfd" and slot is not None:
                    self.worker_died(slot)
                elif kind == "write":
                    self._on_writable(fd)
            if self.client_gone:
                self._abandon()
                return
            if self._step():
                return

    def _step(self) -> bool:
        """Everything after the wait; True when the dispatcher is done."""
        for event in self.sched.fire_timers():
            self._on_timeout(event)
        if self.schedules and self.broken is None:
            self._fire_schedules()
        if self.kill_at is not None and self.clock() >= self.kill_at:
            self._kill_at_deadline()
        if self.broken is None:
            self._send_work()
            self._finish_draining()
        if (self.doomed_fns or self.doomed_opts) and self.sched.empty():
            self._forget_unused()
        self._flush_results()
        if self.closing and self._done():
            self._begin_exit()
            if all(w.pid == 0 for w in self.workers):
                self.results.append(p.Bye(p.D_BYE))
                self._flush_results()
                self._drain_client_out()
                return True
        return False

    def _on_timeout(self, event: Timeout) -> None:
        w = self.workers[event.worker]
        outcome = event.outcome
        task = event.task
        if isinstance(outcome, Fail):
            self.table.finished(task, "failed", self.clock(), task.opts.timeout, w.pid)
            payload = pickle.dumps((task.opts.timeout, w.pid))
            self.results.append(
                p.result(task.id, p.TIMEOUT, task.failures, task.opts.timeout, payload)
            )
        self.kill(w, "timeout")

    def _kill_at_deadline(self) -> None:
        self.kill_at = None
        for task_id in self.sched.abort_all():
            self.results.append(p.result(task_id, p.KILLED, 0, 0.0, b""))
        for w in self.workers:
            self.kill(w, "shutdown")

    def _read_client(self) -> None:
        try:
            data = os.read(self.client_in, p.READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.client_gone = True
            return
        self.client_frames.feed(data)
        for frame in self.client_frames.frames():
            self._on_client_messages(frame)

    def _read_worker(self, w: _Worker) -> None:
        try:
            data = os.read(w.result_fd, p.READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if w.pidfd < 0:  # no pidfd: end of file is how we learn of the death
                self.worker_died(w)
            else:  # the pidfd will fire; stop polling the closed pipe meanwhile
                self.selector.unregister(w.result_fd)
                del self.by_fd[w.result_fd]
            return
        w.frames.feed(data)
        for frame in w.frames.frames():
            self._on_worker_messages(w, frame)

    def _flush_results(self) -> None:
        if self.results and not self.client_gone:
            data = p.encode(self.results)
            self.results = []
            self._write(self.client_out, data)
        else:
            self.results = []

    def _drain_client_out(self) -> None:
        """Before exiting, finish writing to the client (blocking is fine now)."""
        out = self.client_out
        if not out.chunks:
            return
        os.set_blocking(out.fd, True)
        try:
            for chunk in out.chunks:
                p.write_all(out.fd, bytes(chunk))
        except OSError:
            pass
        out.chunks.clear()

    def _abandon(self) -> None:
        """The client is gone (its process died or closed the pipe): stop everything now."""
        for w in self.workers:
            if w.pid:
                try:
                    os.kill(w.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for w in self.workers:
            if w.pid:
                try:
                    os.waitpid(w.pid, 0)
                except ChildProcessError:
                    pass
                self._forget_fds(w)
                w.pid = 0


def main(rfd: int, wfd: int) -> None:
    """Entry point of the dispatcher process (see ``mppool._core``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the user process
    # `kill -USR1 <dispatcher pid>` prints where the loop is, for diagnosing a stuck pool.
    faulthandler.register(signal.SIGUSR1, all_threads=False)
    reader = p.BlockingReader(rfd)
    first = reader.read()
    if not first or first[0][0] != p.C_CONFIG:
        os._exit(2)
    config: p.Config = first[0]  # type: ignore[assignment]
    sys.path[:] = config.sys_path
    try:
        os.chdir(config.cwd)
    except OSError:
        pass
    from .. import _worker  # noqa: F401  (imported before forking: each worker starts with it)

    dispatcher = Dispatcher(rfd, wfd, config, reader.buffer)
    # The loop's objects (tasks in dicts, heaps and deques) form no reference cycles, so the
    # cyclic collector only adds pauses to the tail latency: move what exists now out of its
    # reach and make it run rarely. (Workers keep the default: they run user code.)
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 50, 100)
    dispatcher._on_client_messages(first[1:])  # whatever came in the same read as the config
    try:
        dispatcher.run()
    except BaseException:
        dispatcher._abandon()
        raise
