"""The dispatcher process: one thread, one event loop, all scheduling state.

It is started by the client as a fresh interpreter (``python -c``, not a fork of the user's
possibly multi-threaded process) and forks the workers itself, so a respawn is a fork of a
small single-threaded process: milliseconds, not an interpreter start.

The loop waits (``_poller``: epoll where there is one) on:

* the client pipe (tasks, options, functions, cancels, stats requests, shutdown);
* each worker's result pipe (results, "started" notes, cuts, init failures, retirements);
* each worker's pidfd, which becomes readable when that worker dies (on Linux; elsewhere
  end-of-file on its result pipe plays that role);
* write-readiness of any pipe whose outgoing buffer did not fit (writes never block);
* the nearest timer (delays, backoffs, timeouts, schedules, a worker's start, the shutdown
  deadline), as the wait's timeout, never longer than ``MAX_WAIT_SECONDS``.

Every decision is made by :class:`mppool._dispatcher._scheduler.Scheduler`; messages are
handled in ``_inbox`` and processes managed in ``_workers``. Payloads are never unpickled
here, and no user code is ever imported.
"""

from __future__ import annotations

import faulthandler
import gc
import os
import pickle
import signal
import sys
from collections.abc import Callable
from typing import Any

from .. import _protocol as p
from .. import _shm
from . import _inbox
from . import _scheduler as s
from ._batches import Batches
from ._claims import Claims
from ._clock import Clock
from ._latency import LatencyWindow
from ._poller import Poller
from ._procs import Outbox, set_nonblocking, set_title
from ._recurring import Recurring
from ._sizing import Sizing
from ._snapshot import ProcessUsage
from ._stealing import RECHECK_SECONDS
from ._tasklist import TaskTable
from ._tasks import Fail, JobDone, Retry, Task, TaskOptions, Timeout
from ._workers import Workers

GC_THRESHOLD = 50_000  # allocations between the dispatcher's (rare) cyclic collections
MAX_WAIT_SECONDS = 3600.0  # longest single wait of the loop: far timers are re-checked
CLOSING_POLL_SECONDS = 0.05  # how often an ending dispatcher checks its workers have left


class Dispatcher:
    """The event loop. Created by :func:`main` from the client's ``Config`` message."""

    def __init__(
        self,
        rfd: int,
        wfd: int,
        config: p.Config,
        frames: p.FrameBuffer | None = None,
        clock: Clock | None = None,
    ) -> None:
        clock = clock or Clock()
        self.clock: Callable[[], float] = clock.now
        self.wall: Callable[[], float] = clock.wall
        self.client_in = rfd
        self.client_frames = frames if frames is not None else p.FrameBuffer()
        self.client_out = Outbox(wfd)
        self.config = config
        self.claims = Claims(config.workers)
        self.sched = s.Scheduler(
            config.workers,
            self.clock,
            self.claims,
            aging_rate=config.aging_rate,
            rate_limits=config.rate_limits,
            circuit_breakers=config.circuit_breakers,
            shares=config.shares,
        )
        self.sched.note_level = config.log_level
        self.table = TaskTable()
        self.latency = LatencyWindow()
        self.usage = ProcessUsage()
        self.started_at = self.clock()
        self.poller = Poller()
        self.workers = Workers(self, config.workers)
        self.sizing = Sizing(self, config.workers, config.autoscale)
        self.schedules: dict[int, Recurring] = {}
        self.fired_ids = -1  # runs of schedules get negative ids: the client's are positive
        self.functions: dict[int, bytes] = {}
        self.options: dict[int, TaskOptions] = {}
        self.retry_on: dict[int, bytes] = {}
        # Forgotten by the client, kept while a live task still uses them (see forget).
        self.doomed_fns: set[int] = set()
        self.doomed_opts: set[int] = set()
        self.results: list[p.Message] = []
        # Results in shared memory that waiting tasks took: per task, the segments it holds,
        # and per segment, how many tasks still hold it (see _forward).
        self.shared_results: dict[int, list[str]] = {}
        self.segment_readers: dict[str, int] = {}
        self._settled = 0  # results (of this round) already applied to waiting tasks
        self.batches = Batches()
        self.closing = False
        self.kill_at: float | None = None
        self.broken: tuple[str, str | None] | None = None
        self.client_gone = False
        set_nonblocking(rfd)
        set_nonblocking(wfd)
        self.poller.watch(rfd, self._read_client)

    # --- messages ------------------------------------------------------------------------------
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
            _inbox.client_messages(self, frame)

    def report_recovered(
        self, task: Task, outcome: Retry | Fail | JobDone | None, pid: int, crash: bytes
    ) -> None:
        """A dead worker's blamed (or timed-out) unit: report what became of it."""
        if isinstance(outcome, Fail):
            self.table.finished(task, "failed", self.clock(), 0.0, pid)
            self.results.append(p.result(task.id, p.CRASHED, task.failures, 0.0, crash))
        elif isinstance(outcome, JobDone):
            self.job_done(outcome, pid)

    def job_done(self, done: JobDone, pid: int) -> None:
        job, now = done.job, self.clock()
        state = "done" if job.err is None else "failed"
        self.table.finished(done.task, state, now, job.duration, pid, job=job)
        if job.err is None:
            task = done.task
            self.latency.add(
                max(0.0, task.started_at - task.submitted_at), job.duration, now - task.submitted_at
            )
        self.results.append(message := job.message())
        _inbox.discard_unsent(job, p.ChunkResult.view(message).pieces)

    def forget(self, msg: p.Forget) -> None:
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
            self.sched.estimates.forget(fn_id)
        for opts_id in opts_ids:
            self.options.pop(opts_id, None)
            self.retry_on.pop(opts_id, None)
        note = p.encode([p.WorkerForget(p.W_FORGET, fn_ids, opts_ids)])
        for w in self.workers.slots:
            if w.task_fd < 0:
                continue
            if w.fns.intersection(fn_ids) or w.opts.intersection(opts_ids):
                w.fns.difference_update(fn_ids)
                w.opts.difference_update(opts_ids)
                self.write(w.outbox, note)

    # --- ending --------------------------------------------------------------------------------
    def event(self, level: int, name: str, message: str, **fields: Any) -> None:
        """Tell the client something for its logs, if it listens at ``level``."""
        if level >= self.config.log_level:
            self.results.append(p.Event(p.D_EVENT, level, name, message, fields))

    def go_broken(self, message: str, tb: str | None) -> None:
        """Nothing can run any more: fail every task, tell the client, stop the workers."""
        self.event(p.LOG_ERROR, "pool_broken", f"the pool is broken: {message}", reason=message)
        self.broken = (message, tb)
        payload = pickle.dumps((message, tb))
        for task_id in self.sched.abort_all():
            self.results.append(p.result(task_id, p.BROKEN, 0, 0.0, payload))
        self.results.append(p.Broken(p.D_BROKEN, message, tb))
        self.workers.kill_all("broken")

    def begin_shutdown(self, cancel_queued: bool, deadline: float) -> None:
        self.closing = True
        self.schedules.clear()  # a closing pool starts no new runs
        self.sizing.demands.clear()  # every map has been fed (or stopped) by now
        if cancel_queued:
            now = self.clock()
            for task_id in self.sched.drop_queued():
                self.table.cancelled(task_id, now, self.batches.of.get(task_id, ""))
                self.results.append(p.result(task_id, p.CANCELLED, 0, 0.0, b""))
        if deadline >= 0:
            self.kill_at = self.clock() + deadline

    def done(self) -> bool:
        return self.sched.empty() or self.broken is not None

    def _kill_at_deadline(self) -> None:
        self.kill_at = None
        for task_id in self.sched.abort_all():
            self.results.append(p.result(task_id, p.KILLED, 0, 0.0, b""))
        self.workers.kill_all("shutdown")

    def _settle(self, now: float) -> bool:
        """Report tasks failed without running, and apply the outcomes on their way to the
        client to the tasks that wait for them. True if some of those may run now."""
        if self.sched.unstarted:
            self._report_unstarted(now)
        deps = self.sched.dependencies
        if not (deps.enabled or deps.dependents or self.shared_results or self.batches.of):
            return False
        released = self.sched.dependencies.released
        self._settle_dependencies(now)
        return self.sched.dependencies.released != released

    def _settle_dependencies(self, now: float) -> None:
        """Apply the final outcomes on their way to the client to the tasks that wait for
        them (failing a waiting task is such an outcome too: it cascades), and count them
        for their batches."""
        deps = self.sched.dependencies
        batches = self.batches
        results = self.results
        i = self._settled
        while True:
            while i < len(results):
                msg = results[i]
                tag = msg[0]
                if tag == p.D_RESULT or tag == p.D_CHUNK:
                    task_id = msg[1]
                    if task_id in batches.of:
                        batches.ended(msg)
                    if task_id in self.shared_results:
                        self._release_shared(task_id)
                    if tag == p.D_RESULT and msg[2] != p.DEP_GONE:  # (not an outcome)
                        if task_id in deps.dependents:
                            self._forward(i, msg)
                        if deps.enabled:
                            deps.record(task_id, msg[2], msg[3], msg[5])
                i += 1
            self._settled = i
            if not self.sched.unstarted:
                return
            self._report_unstarted(now)  # dependents failed: their outcomes cascade

    def _forward(self, i: int, msg: p.Message) -> None:
        """Give a finished task's outcome to the tasks waiting for it. A result in shared
        memory is then read by several processes: none of them removes it; once every task
        that took it has ended, the client is told to (after the result it reads)."""
        task_id, status, attempts, payload = msg[1], msg[2], msg[3], msg[5]
        name = None
        if status == p.OK and _shm.names_segment(payload):
            payload, name = _shm.kept(payload)
        readers = self.sched.dependencies.finished(task_id, status, attempts, payload)
        if name is not None and readers:
            self.results[i] = p.result(task_id, status, attempts, msg[4], payload)
            for reader in readers:
                self.shared_results.setdefault(reader.id, []).append(name)
            self.segment_readers[name] = len(readers)

    def _release_shared(self, task_id: int) -> None:
        """A task that read shared results has ended: remove those nobody else needs."""
        for name in self.shared_results.pop(task_id, ()):
            left = self.segment_readers.get(name, 0) - 1
            if left > 0:
                self.segment_readers[name] = left
            else:
                self.segment_readers.pop(name, None)
                # The client removes it, after the result it has read (same pipe, in order).
                self.results.append(p.Unlink(p.D_UNLINK, name))

    def _report_unstarted(self, now: float) -> None:
        """Tasks failed without running (past their deadline, or their circuit open)."""
        for task, outcome, status, payload in self.sched.unstarted:
            if isinstance(outcome, Fail):
                self.table.finished(task, "failed", now)
                self.results.append(p.result(task.id, status, task.failures, 0.0, payload))
            else:
                self.job_done(outcome, 0)
            if status == p.EXPIRED:
                self.event(
                    p.LOG_INFO,
                    "task_expired",
                    f"task {task.client_id} could not start before its deadline",
                    task_id=task.client_id,
                )
        self.sched.unstarted.clear()

    def _on_timeout(self, event: Timeout) -> None:
        w = self.workers.slots[event.worker]
        task = event.task
        if isinstance(event.outcome, Fail):
            self.table.finished(task, "failed", self.clock(), task.opts.timeout, w.pid)
            payload = pickle.dumps((task.opts.timeout, w.pid))
            self.results.append(
                p.result(task.id, p.TIMEOUT, task.failures, task.opts.timeout, payload)
            )
        self.event(
            p.LOG_WARNING,
            "task_timed_out",
            f"task {task.client_id} ran past its timeout of {task.opts.timeout:g} s; "
            f"worker {w.index} (pid {w.pid}) is killed",
            task_id=task.client_id,
            timeout=task.opts.timeout,
            pid=w.pid,
            worker=w.index,
        )
        self.workers.kill(w, "timeout")

    # --- output --------------------------------------------------------------------------------
    def write(self, outbox: Outbox, data: bytes) -> None:
        """Queue bytes for a pipe and write what fits now; the rest when it is writable."""
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
            self.poller.watch(outbox.fd, lambda: self._on_writable(outbox), write=True)

    def _on_writable(self, outbox: Outbox) -> None:
        fd = outbox.fd
        try:
            done = outbox.flush()
        except OSError:
            outbox.chunks.clear()
            done = True
        if done:
            outbox.registered = False
            self.poller.unwatch(fd)

    def _flush_results(self) -> None:
        self._settled = 0
        if self.results and not self.client_gone:
            data = p.encode(self.results)
            self.results = []
            self.write(self.client_out, data)
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

    # --- the loop ------------------------------------------------------------------------------
    def _timeout(self) -> float | None:
        """How long the loop may wait: until the nearest timer, clamped to a sane range."""
        deadlines = [
            self.sched.next_timer(),
            min((rec.next_at for rec in self.schedules.values()), default=None),
            self.kill_at,
            self.workers.init_deadline() if self.broken is None else None,
            self.sizing.next_check_at(),
        ]
        at = min((t for t in deadlines if t is not None), default=None)
        wait = None if at is None else max(0.0, at - self.clock())
        if self.closing and self.done():
            wait = CLOSING_POLL_SECONDS if wait is None else min(wait, CLOSING_POLL_SECONDS)
        if self.sched.recheck:  # a worker waits to see whether a peer starts its next task
            wait = RECHECK_SECONDS if wait is None else min(wait, RECHECK_SECONDS)
        if wait is not None and not wait <= MAX_WAIT_SECONDS:  # far (or infinite) timers
            wait = MAX_WAIT_SECONDS
        return wait

    def run(self) -> None:
        pids = self.workers.start_all() if self.broken is None else []
        if self.broken is None:  # a fork failed: the client sees only the broken notice
            self.results.append(p.Ready(p.D_READY, pids))
        # Report now, not after the first event: a worker's initializer may take long.
        self._flush_results()
        wait = self.poller.wait
        while True:
            for handler in wait(self._timeout()):
                handler()
            if self.client_gone:
                self.workers.abandon()
                _shm.remove_all(self.config.shm_prefix)  # nobody will read them now
                return
            if self._step():
                return

    def _step(self) -> bool:
        """Everything after the wait; True when the dispatcher is done."""
        now = self.clock()
        for event in self.sched.fire_timers():
            self._on_timeout(event)
        if self.schedules and self.broken is None:
            _inbox.fire_schedules(self, now)
        if self.kill_at is not None and now >= self.kill_at:
            self._kill_at_deadline()
        deadline = self.workers.init_deadline()
        if deadline is not None and now >= deadline and self.broken is None:
            self.workers.check_init(now)
        if self.broken is None:
            self.sched.tick()
        self._settle(now)
        if self.broken is None:
            self.workers.send_work()
            self.workers.finish_draining()
            self.sizing.check(now)  # after: what is still queued, no worker could take
        if (self.doomed_fns or self.doomed_opts) and self.sched.empty():
            self._forget_unused()
        if self._settle(now) and self.broken is None:
            self.workers.send_work()  # tasks whose dependencies just succeeded
        if self.sched.notes:
            for level, name, message, fields in self.sched.notes:
                self.event(level, name, message, **fields)
            self.sched.notes.clear()
        self._flush_results()
        if self.closing and self.done():
            self.workers.begin_exit(now)
            if self.workers.all_gone():
                self.results.append(p.Bye(p.D_BYE))
                self._flush_results()
                self._drain_client_out()
                return True
        return False


def preload(modules: list[str]) -> tuple[str, str] | None:
    """Import ``modules`` here, so every worker forked later starts with them; the first
    failure as ``(message, traceback)``."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException as exc:
            import traceback

            return f"preload: could not import {name!r}: {exc!r}", traceback.format_exc()
    return None


def main(rfd: int, wfd: int) -> None:
    """Entry point of the dispatcher process (see ``mppool._client._core``)."""
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
    set_title("mppool: dispatcher")
    os.environ.update(config.env)  # before any library reads it: workers inherit it
    from .. import _worker  # imported before forking: each worker starts with it

    _worker._segments = config.shm_prefix

    failed = preload(config.preload)
    dispatcher = Dispatcher(rfd, wfd, config, reader.buffer)
    if failed is not None:
        dispatcher.go_broken(*failed)
    # The loop's objects (tasks in dicts, heaps and deques) form no reference cycles, so the
    # cyclic collector only adds pauses to the tail latency: move what exists now out of its
    # reach and make it run rarely. (Workers keep the default: they run user code.)
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 50, 100)
    _inbox.client_messages(dispatcher, first[1:])  # whatever came in the same read as config
    try:
        dispatcher.run()
    except BaseException:
        dispatcher.workers.abandon()
        raise
