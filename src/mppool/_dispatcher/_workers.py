"""The worker processes of a dispatcher: starting, feeding, watching, killing, replacing.

There is one slot per worker. A slot whose process dies is refilled by a fork (milliseconds),
unless the pool is broken or ending, or the worker was leaving because the pool shrank. What a
dead worker held goes back to the scheduler, which decides about the unit it was running (see
``Scheduler.worker_lost``).

A worker retired as the pool shrinks (``leaving``, see ``_sizing``) finishes its current task,
then finds its task pipe closed (``finish_draining``) and leaves; its slot stays vacant until
the pool grows again.
"""

from __future__ import annotations

import os
import pickle
from typing import TYPE_CHECKING

from .. import _protocol as p
from . import _inbox
from ._procs import Outbox, WorkerSlot, fork_worker, kill_group, open_pidfd, reap
from ._tasks import Batch

if TYPE_CHECKING:
    from ._loop import Dispatcher

EXIT_GRACE_SECONDS = 2.0  # a worker told to leave is killed if it has not left by then
MAX_EARLY_DEATHS = 5  # workers dying before they are ready, in a row, before giving up


class Workers:
    """Every worker slot of one dispatcher, and the descriptors that watch them."""

    def __init__(self, d: Dispatcher, count: int) -> None:
        self.d = d
        self.slots = [WorkerSlot(i) for i in range(count)]
        self.early_deaths = 0
        self.respawns = 0
        self.draining = False  # some slot reached max_tasks_per_child, or is leaving
        self.spawn_error = ""

    # --- starting ------------------------------------------------------------------------------
    def spawn(self, w: WorkerSlot, fatal: bool = True) -> bool:
        """Fork a worker into slot ``w``. False if that fails: the pool is broken if
        ``fatal``, else (a pool growing) the error is left in ``spawn_error``."""
        d = self.d
        config = d.config
        title = f"mppool: worker {w.index}"
        pin = self._pin(w)
        try:
            pid, task_fd, result_fd = fork_worker(
                config.initializer,
                config.max_memory_per_child,
                d.claims.rings[w.index],
                title,
                config.affinity[pin] if pin >= 0 else None,
            )
        except OSError as exc:  # out of descriptors, processes or memory
            import traceback

            self.spawn_error = f"could not start a worker process: {exc}"
            if fatal:
                d.go_broken(self.spawn_error, traceback.format_exc())
            return False
        w.reset(pid, task_fd, result_fd, d.clock(), d.wall())
        w.pin = pin
        d.poller.watch(result_fd, lambda: self.read(w, result_fd))
        w.pidfd = open_pidfd(pid)
        if w.pidfd >= 0:
            pidfd = w.pidfd
            d.poller.watch(pidfd, lambda: self.died(w) if w.pidfd == pidfd else None)
        return True

    def _pin(self, w: WorkerSlot) -> int:
        """Which of the configured core sets worker ``w`` runs on (-1: none configured): its
        slot's own, unless a live worker has it (the pool was resized); then a free one."""
        sets = len(self.d.config.affinity)
        if not sets:
            return -1
        taken = {v.pin for v in self.slots if v.pid and v is not w}
        own = w.index % sets
        if own not in taken:
            return own
        return next((i for i in range(sets) if i not in taken), own)

    def start_all(self) -> list[int]:
        for w in self.slots:
            if not self.spawn(w):
                break
        return [w.pid for w in self.slots]

    def hello(self, w: WorkerSlot) -> None:
        w.ready = True
        w.ready_at = self.d.wall()
        self.d.event(
            p.LOG_DEBUG,
            "worker_started",
            f"worker {w.index} (pid {w.pid}) is ready after {w.ready_at - w.started_at:.3f} s",
            worker=w.index,
            pid=w.pid,
            startup=w.ready_at - w.started_at,
        )
        self.early_deaths = 0
        if not w.kill_reason and not w.leaving:
            self.d.sched.worker_up(w.index)

    def _starting(self) -> list[WorkerSlot]:
        """Workers still starting that are meant to start (not killed, not leaving)."""
        return [
            w for w in self.slots if w.pid and not w.ready and not w.kill_reason and not w.leaving
        ]

    def init_deadline(self) -> float | None:
        """When the slowest worker still starting runs out of ``init_timeout``."""
        starting = [w.forked_at for w in self._starting()]
        if not starting or not self.d.config.init_timeout:  # 0.0: no limit
            return None
        return min(starting) + self.d.config.init_timeout

    def check_init(self, now: float) -> None:
        """Workers past ``init_timeout`` have failed to start (see ``start_failed``)."""
        limit = self.d.config.init_timeout
        if not limit:
            return
        for w in self._starting():
            if now - w.forked_at >= limit and self.d.broken is None:
                why = f"a worker did not finish its initializer within init_timeout={limit:g} s"
                self.start_failed(w, why, None)

    def start_failed(self, w: WorkerSlot, why: str, tb: str | None) -> None:
        """Worker ``w`` could not start. One forked to grow a pool that has ready workers is
        given up (the pool stays smaller); any other breaks the pool, which could not run."""
        d = self.d
        others = any(v.ready and not v.leaving for v in self.slots if v is not w)
        if w.grown and others:
            self.kill(w, "start failed")
            d.sizing.given_up(w, why)
        else:
            d.go_broken(why, tb)

    # --- reading -------------------------------------------------------------------------------
    def read(self, w: WorkerSlot, fd: int) -> None:
        if w.result_fd != fd:
            return  # a handler of a slot since refilled
        try:
            data = os.read(fd, p.READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if w.pidfd < 0:  # no pidfd: end of file is how we learn of the death
                self.died(w)
            else:  # the pidfd will fire; stop polling the closed pipe meanwhile
                self.d.poller.unwatch(fd)
            return
        w.frames.feed(data)
        for frame in w.frames.frames():
            _inbox.worker_messages(self.d, w, frame)

    def _drain_results(self, w: WorkerSlot) -> None:
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
            _inbox.worker_messages(self.d, w, frame)

    # --- writing -------------------------------------------------------------------------------
    def send(self, w: WorkerSlot, batch: Batch) -> None:
        """Write a batch (and the functions and retry classes it needs) to worker ``w``."""
        d = self.d
        msgs: list[p.Message] = []
        for task in batch.tasks:
            if task.fn_id not in w.fns:
                w.fns.add(task.fn_id)
                msgs.append(p.WorkerFunction(p.W_FUNCTION, task.fn_id, d.functions[task.fn_id]))
            if task.opts_id not in w.opts:
                w.opts.add(task.opts_id)
                blob = d.retry_on.get(task.opts_id)
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
        d.write(w.outbox, p.encode(msgs))

    def send_work(self) -> None:
        """Offer every ready worker work until it takes no more (see ``Scheduler.assign``)."""
        sched = self.d.sched
        limit = self.d.config.max_tasks_per_child
        for w in self.slots:
            if not w.ready or w.kill_reason or w.draining:
                continue
            if not sched.has_work():
                return
            while True:
                # Never send a worker more tasks than it may still run (max_tasks_per_child).
                batch = sched.assign(w.index, limit - w.sent_total if limit else 1 << 30)
                if batch is None:
                    break
                self.send(w, batch)
                if limit and w.sent_total >= limit:
                    w.draining = self.draining = True
                    sched.worker_down(w.index)
                    break

    def finish_draining(self) -> None:
        """Close the task pipe of workers that reached max_tasks_per_child, or are leaving a
        shrinking pool, once they hold nothing: they read end-of-file and exit."""
        if not self.draining:
            return
        waiting = False  # a worker that must leave still holds work (or unsent bytes)
        for w in self.slots:
            if not (w.draining or w.leaving) or not w.pid or w.task_fd < 0:
                continue
            if self.d.sched.pipes.busy(w.index) or w.outbox.registered:
                waiting = True
                continue
            self._close_task_pipe(w)
        self.draining = waiting

    def _close_task_pipe(self, w: WorkerSlot) -> None:
        os.close(w.task_fd)
        w.task_fd = -1
        w.outbox = Outbox(-1)

    # --- ending --------------------------------------------------------------------------------
    def kill(self, w: WorkerSlot, reason: str) -> None:
        if w.pid and not w.kill_reason:
            w.kill_reason = reason
            self.d.sched.worker_down(w.index)
            kill_group(w.pid)

    def kill_all(self, reason: str) -> None:
        for w in self.slots:
            self.kill(w, reason)

    def died(self, w: WorkerSlot) -> None:
        """Worker ``w`` is gone: recover what it held, and refill the slot."""
        d = self.d
        self._drain_results(w)
        exitcode, signame = reap(w.pid)
        self._forget_fds(w)
        pid, w.pid = w.pid, 0
        blame = not (w.retired or w.draining or w.kill_reason) and w.ready
        if not w.ready and not w.kill_reason and not w.leaving and not d.closing:
            self.early_deaths += 1
        crash = pickle.dumps((pid, exitcode, signame))
        why = w.kill_reason or ("retired" if w.retired or w.draining else "")
        if not why and w.leaving and exitcode == 0:
            why = "resized"  # the pool shrank: the worker left once its work was done
        if not why and w.closing_since and exitcode == 0:
            why = "exit"  # the pool is ending: it closed the task pipe and the worker left
        how = f"signal {signame}" if signame else f"exit code {exitcode}"
        d.event(
            p.LOG_INFO if why else p.LOG_WARNING,
            "worker_died",
            f"worker {w.index} (pid {pid}) ended: {how}" + (f" ({why})" if why else ""),
            worker=w.index,
            pid=pid,
            exitcode=exitcode,
            signal=signame,
            reason=why or "crashed",
        )
        for task, outcome in d.sched.outcomes.worker_lost(
            w.index, blame=blame, crash=crash, pid=pid
        ):
            d.report_recovered(task, outcome, pid, crash)
        w.ready = False
        if self.early_deaths >= MAX_EARLY_DEATHS and d.broken is None:
            d.go_broken(
                f"{MAX_EARLY_DEATHS} workers in a row died before becoming ready "
                f"(last: exit code {exitcode}, signal {signame})",
                None,
            )
        d.sizing.worker_gone(w, self.d.clock())
        if w.leaving:
            return  # the pool shrank: the slot stays vacant
        if d.broken is None and not d.client_gone and not (d.closing and d.done()):
            self.respawns += 1
            if self.spawn(w):
                d.event(
                    p.LOG_INFO,
                    "worker_respawned",
                    f"worker {w.index} replaced: pid {pid} -> {w.pid}",
                    worker=w.index,
                    old_pid=pid,
                    pid=w.pid,
                )

    def _forget_fds(self, w: WorkerSlot) -> None:
        poller = self.d.poller
        for fd in (w.result_fd, w.pidfd, w.task_fd):
            if fd < 0:
                continue
            poller.unwatch(fd)
            try:
                os.close(fd)
            except OSError:
                pass
        w.result_fd = w.pidfd = w.task_fd = -1
        w.outbox = Outbox(-1)

    def begin_exit(self, now: float) -> None:
        """Tell idle workers to leave by closing their task pipes; kill the slow ones."""
        for w in self.slots:
            if w.pid and w.task_fd >= 0 and not w.outbox.registered:
                self._close_task_pipe(w)
                w.closing_since = now
            elif w.pid and w.closing_since and now - w.closing_since > EXIT_GRACE_SECONDS:
                self.kill(w, "exit")

    def all_gone(self) -> bool:
        return all(w.pid == 0 for w in self.slots)

    def abandon(self) -> None:
        """The client is gone (its process died or closed the pipe): stop everything now."""
        for w in self.slots:
            if w.pid:
                kill_group(w.pid)
        for w in self.slots:
            if w.pid:
                try:
                    os.waitpid(w.pid, 0)
                except ChildProcessError:
                    pass
                self._forget_fds(w)
                w.pid = 0
