"""The dispatcher process: one thread, one event loop, all scheduling state.

It is started by the client as a fresh interpreter (``python -c``, not a fork of the user's
possibly multi-threaded process) and forks the workers itself, so a respawn is a fork of a
small single-threaded process: milliseconds, not an interpreter start.

The loop waits, with one ``epoll`` (or the platform's selector), on:

* the client pipe (tasks, options, functions, cancels, stats requests, shutdown);
* each worker's result pipe (results, "started" notes, init failures, retirements);
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

from . import _messages as m
from . import _scheduler as s
from ._procs import Outbox as _Outbox
from ._procs import WorkerSlot as _Worker
from ._procs import fork_worker, open_pidfd, reap, set_nonblocking
from ._ratelimit import RateLimit
from ._recurring import Recurring
from ._stats import LatencyWindow
from ._tasklist import TaskTable

EXIT_GRACE_SECONDS = 2.0  # a worker told to leave is killed if it has not left by then
MAX_EARLY_DEATHS = 5  # workers dying before they are ready, in a row, before giving up
GC_THRESHOLD = 50_000  # allocations between the dispatcher's (rare) cyclic collections


class Dispatcher:
    """The event loop. Created by :func:`main` from the client's ``Config`` message."""

    def __init__(
        self, rfd: int, wfd: int, config: m.Config, frames: m.FrameBuffer | None = None
    ) -> None:
        self.clock: Callable[[], float] = time.monotonic
        self.client_in = rfd
        self.client_frames = frames if frames is not None else m.FrameBuffer()
        self.client_out = _Outbox(wfd)
        self.config = config
        limits = {k: RateLimit(*v) for k, v in config.rate_limits.items()}
        self.sched = s.Scheduler(
            config.workers, self.clock, aging_rate=config.aging_rate, rate_limits=limits
        )
        self.table = TaskTable()
        self.latency = LatencyWindow()
        self.started_at = self.clock()
        self.procs: dict[int, Any] = {}  # pid -> psutil.Process, for RSS and CPU%
        self.schedules: dict[int, Recurring] = {}
        self.fired_ids = -1  # runs of schedules get negative ids: the client's are positive
        self.selector = selectors.DefaultSelector()
        self.functions: dict[int, bytes] = {}
        self.options: dict[int, s.TaskOptions] = {}
        self.retry_on: dict[int, bytes] = {}
        self.workers = [_Worker(i) for i in range(config.workers)]
        self.by_fd: dict[int, tuple[str, _Worker | None]] = {}
        self.results: list[tuple[Any, ...]] = []
        self.closing = False
        self.kill_at: float | None = None
        self.broken: tuple[str, str | None] | None = None
        self.client_gone = False
        self.early_deaths = 0
        self.counters = {
            "submitted": 0,
            "completed": 0,
            "failed": 0,
            "retried": 0,
            "crashed": 0,
            "timed_out": 0,
            "cancelled": 0,
            "respawns": 0,
        }
        set_nonblocking(rfd)
        set_nonblocking(wfd)
        self.selector.register(rfd, selectors.EVENT_READ)
        self.by_fd[rfd] = ("client", None)

    # --- workers -------------------------------------------------------------------------------
    def spawn(self, w: _Worker) -> None:
        pid, task_fd, result_fd = fork_worker(
            self.config.initializer, self.config.max_memory_per_child
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
            if fd in self.by_fd:
                del self.by_fd[fd]
                try:
                    self.selector.unregister(fd)
                except (KeyError, ValueError):
                    pass
            elif w.outbox.registered and fd == w.task_fd:
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
                data = os.read(fd, m.READ_SIZE)
            except BlockingIOError:
                break
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
        pid = w.pid
        w.pid = 0
        if w.retired or (w.draining and not self.sched.sent[w.index]):
            self.sched.worker_retired(w.index)
        elif w.kill_reason:
            self.sched.worker_lost(w.index, blame=False)
        else:
            was_ready = w.ready
            culprit, outcome = self.sched.worker_lost(w.index, blame=was_ready)
            if not was_ready and not self.closing:
                self.early_deaths += 1
            if culprit is not None and outcome is not None:
                self.counters["crashed"] += 1
                if isinstance(outcome, s.Fail):
                    self.counters["failed"] += 1
                    self.table.finished(culprit, "failed", self.clock(), 0.0, pid)
                    self.results.append(
                        (
                            m.D_RESULT,
                            culprit.id,
                            m.CRASHED,
                            culprit.failures,
                            0.0,
                            pickle.dumps((pid, exitcode, signame)),
                        )
                    )
                else:
                    self.counters["retried"] += 1
        w.ready = False
        if self.early_deaths >= MAX_EARLY_DEATHS and self.broken is None:
            self.go_broken(
                f"{MAX_EARLY_DEATHS} workers in a row died before becoming ready "
                f"(last: exit code {exitcode}, signal {signame})",
                None,
            )
        if (
            self.broken is None
            and not self.client_gone
            and not (self.closing and self.sched.idle())
        ):
            self.counters["respawns"] += 1
            self.spawn(w)

    def kill(self, w: _Worker, reason: str) -> None:
        if w.pid and not w.kill_reason:
            w.kill_reason = reason
            try:
                os.kill(w.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def go_broken(self, message: str, tb: str | None) -> None:
        """Nothing can run any more: fail every task, tell the client, stop the workers."""
        self.broken = (message, tb)
        payload = pickle.dumps((message, tb))
        for task in self.sched.abort_all():
            self.results.append((m.D_RESULT, task.id, m.BROKEN, task.attempts, 0.0, payload))
        self.results.append((m.D_BROKEN, message, tb))
        for w in self.workers:
            self.kill(w, "broken")

    # --- messages from workers -----------------------------------------------------------------
    def _on_worker_messages(self, w: _Worker, msgs: list[tuple[Any, ...]]) -> None:
        sched = self.sched
        results = self.results
        idx = w.index
        for msg in msgs:
            tag = msg[0]
            if tag == m.R_RESULT:
                _, task_id, attempt, status, duration, payload = msg
                if status == m.OK:
                    task = sched.complete(idx, task_id, attempt, duration)
                    if task is not None:
                        now = self.clock()
                        self.table.finished(task, "done", now, duration, w.pid)
                        self.latency.add(
                            max(0.0, task.started_at - task.submitted_at),
                            duration,
                            now - task.submitted_at,
                        )
                        results.append(
                            (m.D_RESULT, task_id, m.OK, task.failures + 1, duration, payload)
                        )
                        self.counters["completed"] += 1
                    continue
                outcome = sched.fail(idx, task_id, attempt, duration, status == m.ERROR_RETRYABLE)
                if outcome is None:
                    continue
                if isinstance(outcome, s.Retry):
                    self.counters["retried"] += 1
                    continue
                self.counters["failed"] += 1
                self.table.finished(outcome.task, "failed", self.clock(), duration, w.pid)
                if status == m.ERROR_RETRYABLE:
                    status = m.ERROR
                results.append(
                    (m.D_RESULT, task_id, status, outcome.task.failures, duration, payload)
                )
            elif tag == m.R_STARTED:
                sched.started(idx, msg[1], msg[2])
            elif tag == m.R_HELLO:
                w.ready = True
                w.ready_at = time.time()
                self.early_deaths = 0
                sched.worker_up(idx)
            elif tag == m.R_INIT_FAILED:
                if self.broken is None:
                    self.go_broken(f"the worker initializer raised {msg[1]}", msg[2])
            elif tag == m.R_RETIRE:
                w.retired = True

    # --- messages from the client --------------------------------------------------------------
    def _on_client_messages(self, msgs: list[tuple[Any, ...]]) -> None:
        sched = self.sched
        options = self.options
        for msg in msgs:
            tag = msg[0]
            if tag == m.C_SUBMIT:
                _, task_id, fn_id, opts_id, n_items, flags, not_before, payload, key = msg
                self.counters["submitted"] += 1
                if self.broken is not None:
                    self.results.append(
                        (m.D_RESULT, task_id, m.BROKEN, 0, 0.0, pickle.dumps(self.broken))
                    )
                    continue
                opts = options[opts_id]
                if opts.timeout > 0:
                    flags |= m.FLAG_TIMED
                task = s.Task(
                    task_id,
                    fn_id,
                    opts_id,
                    opts,
                    payload,
                    n_items=n_items,
                    dedup_key=key,
                    flags=flags,
                    not_before=not_before,
                )
                sched.submit(task)
            elif tag == m.C_FUNCTION:
                self.functions[msg[1]] = msg[2]
            elif tag == m.C_OPTIONS:
                o = m.Options(*msg)
                options[o.opts_id] = s.TaskOptions(
                    priority=o.priority,
                    timeout=o.timeout,
                    max_attempts=o.max_attempts,
                    initial_delay=o.initial_delay,
                    factor=o.factor,
                    max_delay=o.max_delay,
                    jitter=o.jitter,
                    crash_retries=o.crash_retries,
                    kind=o.kind,
                    retry_timeouts=o.retry_timeouts,
                )
                if o.retry_on is not None:
                    self.retry_on[o.opts_id] = o.retry_on
            elif tag == m.C_CANCEL:
                removed = sched.cancel(msg[1])
                if removed is None and msg[2]:
                    removed = self._kill_running(msg[1])
                if removed is not None:
                    self.table.finished(removed, "cancelled", self.clock())
                    self.counters["cancelled"] += 1
                    self.results.append(
                        (m.D_RESULT, removed.id, m.CANCELLED, removed.attempts, 0.0, b"")
                    )
            elif tag == m.C_LIST:
                pids = [w.pid for w in self.workers]
                rows = self.table.listing(sched, pids, self.clock(), msg[2])
                self.results.append((m.D_LIST, msg[1], rows))
            elif tag == m.C_SCHEDULE:
                _, sid, fn_id, opts_id, interval, cron, payload = msg
                rec = Recurring(sid, fn_id, opts_id, payload, interval=interval, cron=cron)
                rec.first(self.clock(), time.time())
                self.schedules[sid] = rec
            elif tag == m.C_UNSCHEDULE:
                self.schedules.pop(msg[1], None)
            elif tag == m.C_STATS:
                self.results.append((m.D_STATS, msg[1], self.snapshot()))
            elif tag == m.C_SHUTDOWN:
                _, cancel_queued, deadline = msg
                self.closing = True
                self.schedules.clear()  # a closing pool starts no new runs
                if cancel_queued:
                    for task in sched.drop_queued():
                        self.counters["cancelled"] += 1
                        self.results.append(
                            (m.D_RESULT, task.id, m.CANCELLED, task.attempts, 0.0, b"")
                        )
                if deadline >= 0:
                    self.kill_at = self.clock() + deadline

    def _kill_running(self, task_id: int) -> s.Task | None:
        """Cancel a task in a worker's pipe, killing (and replacing) the worker running it."""
        cancelled = self.sched.cancel_sent(task_id)
        if cancelled is None:
            return None
        task, running = cancelled
        if running:
            self.kill(self.workers[task.worker], "cancel")
        return task

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
            flags = m.FLAG_TIMED if opts.timeout > 0 else 0
            task = s.Task(task_id, rec.fn_id, rec.opts_id, opts, rec.payload, flags=flags)
            self.results.append(
                (m.D_FIRED, rec.schedule_id, task_id, rec.next_wall(now), rec.skipped)
            )
            self.counters["submitted"] += 1
            self.sched.submit(task)

    def _next_schedule(self) -> float | None:
        if not self.schedules:
            return None
        return min(rec.next_at for rec in self.schedules.values())

    # --- stats ---------------------------------------------------------------------------------
    def _process_usage(self, pid: int) -> tuple[int | None, float | None]:
        """RSS and CPU% of a worker (CPU% since the previous snapshot; first call gives 0)."""
        if not pid:
            return None, None
        import psutil

        try:
            proc = self.procs.get(pid)
            if proc is None:
                proc = self.procs[pid] = psutil.Process(pid)
            return int(proc.memory_info().rss), float(proc.cpu_percent(None))
        except psutil.Error:
            return None, None

    def snapshot(self) -> dict[str, Any]:
        sched = self.sched
        now = self.clock()
        uptime = max(1e-9, now - self.started_at)
        live = {w.pid for w in self.workers}
        for pid in [p for p in self.procs if p not in live]:
            del self.procs[pid]
        by_priority: dict[float, int] = {}
        by_kind: dict[str, int] = {}
        for task in sched.tasks.values():
            if task.state != s.SENT:
                prio, kind = task.opts.priority, task.opts.kind
                by_priority[prio] = by_priority.get(prio, 0) + 1
                by_kind[kind] = by_kind.get(kind, 0) + 1
        workers = []
        for w in self.workers:
            sent = sched.sent[w.index]
            rss, cpu = self._process_usage(w.pid)
            if not w.pid or not w.ready:
                state = "starting"
            elif sent:
                state = "busy"
            else:
                state = "idle"
            workers.append(
                {
                    "index": w.index,
                    "pid": w.pid,
                    "state": state,
                    "current_task": sent[0].id if sent and w.ready else None,
                    "busy_fraction": min(1.0, sched.busy_by[w.index] / uptime),
                    "rss_bytes": rss,
                    "cpu_percent": cpu,
                    "started_at": w.started_at,
                    "ready_at": w.ready_at,
                    "tasks_done": sched.done_by[w.index],
                    "busy_seconds": sched.busy_by[w.index],
                    "in_pipe": len(sent),
                    "local_queue": len(sched.local[w.index]),
                }
            )
        snap: dict[str, Any] = dict(self.counters)
        snap.update(
            queued=sched.queued,
            running=sched.in_pipes,
            steals=sched.steals,
            stolen_tasks=sched.stolen_tasks,
            rate_limited_waits=sched.rate_limited_waits,
            started=sched.starts,
            queue_by_priority=by_priority,
            queue_by_kind=by_kind,
            uptime=uptime,
            latency=self.latency.snapshot(),
            workers=workers,
        )
        return snap

    # --- the loop ------------------------------------------------------------------------------
    def _send_work(self) -> None:
        sched = self.sched
        limit = self.config.max_tasks_per_child
        for w in self.workers:
            if not w.ready or w.kill_reason or w.draining:
                continue
            # Never send a worker more tasks than it may still run (max_tasks_per_child).
            tasks = sched.assign(w.index, limit - w.sent_total if limit else s.MAX_IN_PIPE)
            if not tasks:
                continue
            msgs: list[tuple[Any, ...]] = []
            for task in tasks:
                if task.fn_id not in w.fns:
                    w.fns.add(task.fn_id)
                    msgs.append((m.W_FUNCTION, task.fn_id, self.functions[task.fn_id]))
                if task.opts_id not in w.opts:
                    w.opts.add(task.opts_id)
                    blob = self.retry_on.get(task.opts_id)
                    if blob is not None:
                        msgs.append((m.W_RETRY_ON, task.opts_id, blob))
                msgs.append(
                    (
                        m.W_RUN,
                        task.id,
                        task.attempt,
                        task.fn_id,
                        task.opts_id,
                        task.n_items,
                        task.flags,
                        task.payload,
                    )
                )
            w.sent_total += len(tasks)
            if limit and w.sent_total >= limit:
                w.draining = True
                sched.up[w.index] = False
            self._write(w.outbox, m.encode(msgs))

    def _write(self, outbox: _Outbox, data: bytes) -> None:
        if outbox.fd < 0:
            return
        outbox.chunks.append(data)
        if outbox.registered:
            return
        try:
            done = outbox.flush()
        except (BrokenPipeError, OSError):
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
            if w.draining and w.pid and not self.sched.sent[w.index] and w.task_fd >= 0:
                if w.outbox.registered:
                    continue
                os.close(w.task_fd)
                w.task_fd = -1
                w.outbox = _Outbox(-1)

    def _all_workers_gone(self) -> bool:
        return all(w.pid == 0 for w in self.workers)

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

    def run(self) -> None:
        sched = self.sched
        pids = []
        for w in self.workers:
            self.spawn(w)
            pids.append(w.pid)
        self.results.append((m.D_READY, pids))
        # Report ready now, not after the first event: a worker's initializer may take long.
        self._flush_results()
        select = self.selector.select
        while True:
            timeout: float | None = None
            at = sched.next_timer()
            rec_at = self._next_schedule()
            if rec_at is not None and (at is None or rec_at < at):
                at = rec_at
            if at is not None:
                timeout = max(0.0, at - self.clock())
            if self.kill_at is not None:
                left = max(0.0, self.kill_at - self.clock())
                timeout = left if timeout is None else min(timeout, left)
            if self.closing and (sched.idle() or self.broken):
                timeout = 0.05 if timeout is None else min(timeout, 0.05)
            for key, _mask in select(timeout):
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
            for timeout_event in sched.fire_timers():
                self._on_timeout(timeout_event)
            if self.schedules and self.broken is None:
                self._fire_schedules()
            if self.kill_at is not None and self.clock() >= self.kill_at:
                self._kill_at_deadline()
            if self.broken is None:
                self._send_work()
                self._finish_draining()
            self._flush_results()
            if self.closing and (sched.idle() or self.broken is not None):
                self._begin_exit()
                if self._all_workers_gone():
                    self.results.append((m.D_BYE,))
                    self._flush_results()
                    self._drain_client_out()
                    return

    def _on_timeout(self, event: s.Timeout) -> None:
        w = self.workers[event.worker]
        outcome = event.outcome
        self.counters["timed_out"] += 1
        if isinstance(outcome, s.Fail):
            self.counters["failed"] += 1
            task = outcome.task
            self.table.finished(task, "failed", self.clock(), task.opts.timeout, w.pid)
            self.results.append(
                (
                    m.D_RESULT,
                    task.id,
                    m.TIMEOUT,
                    task.failures,
                    task.opts.timeout,
                    pickle.dumps((task.opts.timeout, w.pid)),
                )
            )
        else:
            self.counters["retried"] += 1
        self.kill(w, "timeout")

    def _kill_at_deadline(self) -> None:
        self.kill_at = None
        for task in self.sched.abort_all():
            self.results.append((m.D_RESULT, task.id, m.KILLED, task.attempts, 0.0, b""))
        for w in self.workers:
            self.kill(w, "shutdown")

    def _read_client(self) -> None:
        try:
            data = os.read(self.client_in, m.READ_SIZE)
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
            data = os.read(w.result_fd, m.READ_SIZE)
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
            data = m.encode(self.results)
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
                m.write_all(out.fd, bytes(chunk))
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
    reader = m.BlockingReader(rfd)
    first = reader.read()
    if not first or first[0][0] != m.C_CONFIG:
        os._exit(2)
    config = m.Config(*first[0])
    sys.path[:] = config.sys_path
    try:
        os.chdir(config.cwd)
    except OSError:
        pass
    # Imported before forking so that each worker starts with them loaded.
    import ctypes  # noqa: F401  (the workers' parent-death signal)

    import cloudpickle  # noqa: F401

    from . import _worker  # noqa: F401

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
