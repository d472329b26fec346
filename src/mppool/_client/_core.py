"""A pool's machinery in the user process: its state, its tasks in flight, its ending.

The public ``Pool`` (``_pool``) checks arguments and delegates here. ``_Core`` registers each
task's future (or map chunk) under its id, queues its message on the :class:`Connection`,
and resolves it when the dispatcher's answer comes back on the reader thread. It also holds
the dedup keys, the bounded queue's slots, the open maps, and the pool's state::

    running ──shutdown()──▶ closing ──(dispatcher says bye)──▶ closed
       │                       │
       └──── the dispatcher died, or the initializer failed ────▶ broken

Every state change happens under ``lock``, with the check that goes with it.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import functools
import itertools
import os
import pickle
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from .. import _protocol as p
from .._errors import BrokenPoolError, PoolClosedError, QueueFullError, RemoteTraceback
from .._stats import PoolStats
from . import _future
from ._connection import Connection
from ._future import Future, report_resolve_failure
from ._interned import FunctionTable, OptionsTable
from ._options import _Options
from ._serial import dumps

START_TIMEOUT = 60.0  # seconds to wait for a new dispatcher to report ready
STATS_TIMEOUT = 30.0  # seconds to wait for a stats reply
EXIT_TIMEOUT = 10.0  # seconds the atexit hook waits for a pool to end before killing it
EXIT_POLL_SECONDS = 0.1  # an exit waiting for a closing pool wakes this often (for Ctrl-C)

_RUNNING, _CLOSING, _CLOSED, _BROKEN = "running", "closing", "closed", "broken"


class _Core:
    """Everything a pool's threads share: futures in flight, keys, slots, maps, state."""

    def __init__(
        self,
        workers: int,
        defaults: _Options,
        *,
        rate_limits: dict[str, tuple[float, float, int]],
        max_queue: int,
        max_tasks_per_child: int,
        max_memory_per_child: int,
        initializer: Callable[..., Any] | None,
        initargs: tuple[Any, ...],
        aging_rate: float,
        init_timeout: float,
    ) -> None:
        self.workers = workers
        self.defaults = defaults
        self.state = _RUNNING
        self.broken_reason: BaseException | None = None
        self.lock = threading.Lock()
        self.entries: dict[int, Any] = {}  # task id -> Future, map chunk, or schedule run
        self.stats_waiters: dict[int, concurrent.futures.Future[Any]] = {}
        self.list_waiters: dict[int, concurrent.futures.Future[Any]] = {}
        self.ids = itertools.count(1)
        self.functions = FunctionTable()
        self.options_table = OptionsTable()
        self.planners: dict[int, Any] = {}  # fn id -> ChunkPlanner of its maps
        self.keys: dict[str, Future[Any]] = {}  # dedup: key -> the unfinished task holding it
        self.deduplicated = 0
        self.schedules: dict[int, Any] = {}  # schedule id -> Schedule handle
        self.schedule_refs: dict[int, tuple[int, int]] = {}  # its function and options ids
        self.maps: set[Any] = set()  # open maps (MapIterator)
        self.feeding: set[Any] = set()  # maps still reading their input
        self.shutdown_request: tuple[bool, float] | None = None  # sent once maps are fed
        self.ready = threading.Event()
        self.finished = threading.Event()
        self.pids: list[int] = []
        # At most max_queue tasks wait besides the (at most one per worker) running ones.
        self.slots = threading.BoundedSemaphore(max_queue + workers) if max_queue else None
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be callable")
        blob = None if initializer is None else dumps((initializer, initargs), "the initializer")
        config = p.Config(
            p.C_CONFIG,
            workers,
            list(sys.path),
            os.getcwd(),
            blob,
            max_tasks_per_child,
            max_memory_per_child,
            aging_rate,
            rate_limits,
            init_timeout,
        )
        try:
            self.conn = Connection(self.lock, self.deliver, self.ended)
        except OSError as exc:
            raise BrokenPoolError(f"could not start the dispatcher process: {exc!r}") from exc
        self._start(config)

    def _start(self, config: p.Config) -> None:
        """Send the configuration and wait for the dispatcher to report ready.

        Whatever interrupts this (an error, Ctrl-C) ends the dispatcher and its workers and
        the threads before it propagates: a pool that was not made leaves nothing behind.
        """
        try:
            self.conn.pending.append(config)
            self.register_options(self.defaults)
            self.conn.start_threads()
            ok = self.ready.wait(START_TIMEOUT)
        except BaseException:
            self.conn.abort()
            raise
        # Broken after D_READY (pids known) is a failed initializer: the pool exists and
        # reports it through its futures. Broken before it: the dispatcher never started.
        if not ok or (self.state == _BROKEN and not self.pids):
            if ok:  # it answered: let it end its workers and exit, as a shutdown does
                self.shutdown(wait=False, cancel_futures=True, timeout=0.0)
            if not ok or not self.join(EXIT_TIMEOUT):
                self.conn.kill()
            reason = self.broken_reason
            raise BrokenPoolError(f"the pool could not start: {reason or 'no answer'}") from reason

    # --- registering work ----------------------------------------------------------------------
    def _register(self, batch: list[tuple[int, Any, Any]]) -> int:
        """Record entries and queue their messages, unless the pool ended meanwhile.

        Pickling arguments or waiting for queue room can take long; the pool may have shut
        down since ``check_open``. The check and the registration happen under the lock that
        the reader thread takes to end the pool, so no entry is ever left unresolved: if the
        pool has ended they fail at once. Returns the pending count, or -1 if they failed.
        """
        with self.lock:
            if self.state in (_RUNNING, _CLOSING):
                for task_id, entry, msg in batch:
                    self.entries[task_id] = entry
                    self.conn.pending.append(msg)
                self.conn.in_flight = len(self.entries)
                return len(self.conn.pending)
        status = p.BROKEN if self.state == _BROKEN else p.CLOSED
        payload = pickle.dumps(("the pool is broken", None))
        for _, entry, _ in batch:
            entry._mppool_resolve(status, 0, 0.0, payload)
        return -1

    def register_entry(self, task_id: int, entry: Any, msg: Any) -> None:
        """Register one task; the connection's rule decides who writes it."""
        count = self._register([(task_id, entry, msg)])
        if count >= 0:
            self.conn.after_queueing(count)

    def register_batch(self, batch: list[tuple[int, Any, Any]]) -> None:
        """Register entries and write their messages from this thread, waking nobody (a map
        refilling its window: waking the sender would cost a thread switch per refill)."""
        if self._register(batch) >= 0:
            self.conn.flush()

    def send(self, msg: Any) -> None:
        self.conn.send(msg)

    def register_options(self, opts: _Options) -> int:
        """The id of ``opts``, counting one more user (see :meth:`release`).

        Interned by value: ``pool.options(priority=1)`` called a million times (or once per
        HTTP request) is one options set in the dispatcher and the workers, not a million.
        """

        def publish(opts_id: int) -> None:
            self.conn.send(opts.message(opts_id))

        opts_id = self.options_table.acquire(opts.signature(), publish)
        self._send_forgets()
        return opts_id

    def function_id(self, fn: Callable[..., Any]) -> int:
        """The id of ``fn``, counting one more user (see :meth:`release`)."""

        def publish(fn_id: int, blob: bytes) -> None:
            self.conn.send(p.Function(p.C_FUNCTION, fn_id, blob))

        fn_id = self.functions.acquire(fn, publish)
        self._send_forgets()
        return fn_id

    def release(self, fn_id: int, opts_id: int) -> None:
        """A task, map or schedule no longer needs this function and these options."""
        if fn_id:
            self.functions.release(fn_id)
        if opts_id:
            self.options_table.release(opts_id)

    def _send_forgets(self) -> None:
        if self.functions.forgotten or self.options_table.forgotten:
            fn_ids = tuple(self.functions.take_forgotten())
            opts_ids = tuple(self.options_table.take_forgotten())
            if fn_ids or opts_ids:
                self.conn.send(p.Forget(p.C_FORGET, fn_ids, opts_ids))
                for fn_id in fn_ids:
                    self.planners.pop(fn_id, None)

    def check_open(self) -> None:
        if self.state == _RUNNING:
            return
        if self.state == _BROKEN:
            raise BrokenPoolError(f"the pool is broken: {self.broken_reason}") from (
                self.broken_reason
            )
        raise PoolClosedError("the pool is shut down and accepts no new tasks")

    # --- tasks ---------------------------------------------------------------------------------
    def submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        opts: _Options,
        block: bool = True,
        timeout: float | None = None,
        key: str | None = None,
        created: set[int] | None = None,
        closing_ok: bool = False,
    ) -> Future[Any]:
        if not (closing_ok and self.state == _CLOSING):
            self.check_open()
        if key is None:
            if callable(opts.key):
                raise TypeError("a callable key is for map(); submit() needs a string key")
            key = opts.key
        if isinstance(key, str):
            holder = self._holder(key)
            if holder is not None:
                return holder  # a task with this key is queued or running: share it
        fn_id = self.function_id(fn)
        opts_id = self.register_options(opts)
        try:
            what = f"the arguments of {getattr(fn, '__qualname__', fn)!r}"
            payload = dumps((args, kwargs or None), what)
            self._acquire_slot(block, timeout)
        except BaseException:
            self.release(fn_id, opts_id)
            raise
        fut: Future[Any] = Future()
        task_id = next(self.ids)
        fut._core, fut._task_id, fut._fn_id, fut._opts_id = self, task_id, fn_id, opts_id
        if self.slots is not None:
            fut.add_done_callback(self._release_slot)
        if isinstance(key, str):
            with self.lock:
                holder = self._holder(key)
                if holder is not None:  # another thread won the race
                    if self.slots is not None:
                        self.slots.release()
                    self.release(fn_id, opts_id)
                    return holder
                self.keys[key] = fut
            fut.add_done_callback(functools.partial(self._free_key, key))
        if created is not None:
            created.add(task_id)  # the caller owns this task (it did not join another's)
        msg = p.submit(task_id, fn_id, opts_id, p.SINGLE, 0, opts.not_before(), payload, key or "")
        self.register_entry(task_id, fut, msg)
        return fut

    def _holder(self, key: str) -> Future[Any] | None:
        holder = self.keys.get(key)
        if holder is not None and not holder.done():
            self.deduplicated += 1
            return holder
        return None

    def _acquire_slot(self, block: bool, timeout: float | None) -> None:
        if self.slots is not None and not self.slots.acquire(block, timeout if block else None):
            raise QueueFullError("the pool's queue is full (max_queue tasks are waiting)")

    def _release_slot(self, _fut: concurrent.futures.Future[Any]) -> None:
        if self.slots is not None:
            self.slots.release()

    def _free_key(self, key: str, fut: concurrent.futures.Future[Any]) -> None:
        # The key is free again once its task is finished: a later submit runs anew.
        with self.lock:
            if self.keys.get(key) is fut:
                del self.keys[key]

    def cancel_task(self, task_id: int, kill: bool) -> None:
        if self.state in (_RUNNING, _CLOSING):
            self.conn.send(p.Cancel(p.C_CANCEL, task_id, kill))

    def on_result_thread(self) -> bool:
        return self.conn.on_reader_thread()

    # --- requests ------------------------------------------------------------------------------
    def request(self, msg: Any, waiters: dict[int, Any], request_id: int) -> Any:
        """Send a request and wait for the dispatcher's reply to it."""
        if self.conn.on_reader_thread():
            # The reply would be delivered by this very thread: it would wait for itself.
            raise RuntimeError(
                "stats(), tasks() and task() cannot be called from a future's done callback"
            )
        if self.state == _CLOSED:
            raise PoolClosedError("the pool is shut down")
        if self.state == _BROKEN:
            raise BrokenPoolError(f"the pool is broken: {self.broken_reason}") from (
                self.broken_reason
            )
        waiter: concurrent.futures.Future[Any] = concurrent.futures.Future()
        waiters[request_id] = waiter
        self.conn.send(msg)
        try:
            return waiter.result(STATS_TIMEOUT)
        finally:
            waiters.pop(request_id, None)

    def list_tasks(self, task_id: int = 0) -> list[dict[str, Any]]:
        request_id = next(self.ids)
        msg = p.ListTasks(p.C_LIST, request_id, task_id)
        rows: list[dict[str, Any]] = self.request(msg, self.list_waiters, request_id)
        return rows

    def stats(self) -> PoolStats:
        request_id = next(self.ids)
        msg = p.StatsRequest(p.C_STATS, request_id)
        snap = self.request(msg, self.stats_waiters, request_id)
        snap["deduplicated"] = self.deduplicated
        return PoolStats.from_snapshot(snap)

    # --- schedules -----------------------------------------------------------------------------
    def schedule(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        opts: _Options,
        interval: float,
        cron: str,
        description: str,
    ) -> Any:
        from ._schedule import Schedule, first_run

        self.check_open()
        fn_id = self.function_id(fn)
        opts_id = self.register_options(opts)
        try:
            payload = dumps((args, kwargs or None), "the arguments of a scheduled task")
        except BaseException:
            self.release(fn_id, opts_id)
            raise
        schedule_id = next(self.ids)
        handle = Schedule(self, schedule_id, description)
        handle._next_run = first_run(interval, cron, time.time())
        self.schedules[schedule_id] = handle
        self.schedule_refs[schedule_id] = (fn_id, opts_id)
        self.conn.send(
            p.Schedule(p.C_SCHEDULE, schedule_id, fn_id, opts_id, interval, cron, payload)
        )
        return handle

    def unschedule(self, schedule_id: int) -> None:
        self.schedules.pop(schedule_id, None)
        refs = self.schedule_refs.pop(schedule_id, None)
        if self.state in (_RUNNING, _CLOSING):
            self.conn.send(p.Unschedule(p.C_UNSCHEDULE, schedule_id))
        if refs is not None:
            self.release(*refs)

    # --- what the dispatcher says --------------------------------------------------------------
    def deliver(self, msgs: list[p.Message]) -> bool:
        """Handle messages on the reader thread; False once the dispatcher said goodbye."""
        entries = self.entries
        for msg in msgs:
            tag = msg[0]
            if tag == p.D_RESULT or tag == p.D_CHUNK:
                entry = entries.pop(msg[1], None)
                if entry is None:
                    continue
                try:
                    if tag == p.D_RESULT:
                        entry._mppool_resolve(msg[2], msg[3], msg[4], msg[5])
                    else:
                        entry._mppool_chunk(p.ChunkResult.view(msg))
                except BaseException as exc:  # a callback that raised (even SystemExit):
                    report_resolve_failure(entry, exc)  # it ends no other future
            elif tag == p.D_STATS or tag == p.D_LIST:
                waiters = self.stats_waiters if tag == p.D_STATS else self.list_waiters
                waiter = waiters.get(msg[1])
                if waiter is not None:
                    waiter.set_result(msg[2])
            elif tag == p.D_FIRED:
                handle = self.schedules.get(msg[1])
                if handle is not None:
                    entries[msg[2]] = handle._fired(msg[2], msg[3], msg[4])
            elif tag == p.D_READY:
                self.pids = list(msg[1])
                self.ready.set()
            elif tag == p.D_BROKEN:
                err = BrokenPoolError(msg[1])
                err.__cause__ = RemoteTraceback(msg[2]) if msg[2] else None
                self._go_broken(err)
            elif tag == p.D_BYE:
                with self.lock:
                    self.state = _CLOSED
                return False
        return True

    def _go_broken(self, reason: BaseException) -> None:
        with self.lock:
            if self.state == _CLOSED:
                return
            if self.state != _BROKEN:  # keep the first reason (the initializer's error)
                self.state = _BROKEN
                self.broken_reason = reason
            first = self.broken_reason
            failed = [self.entries.pop(t) for t in list(self.entries)]
        self.ready.set()
        # Futures failed here rather than by the dispatcher (the broken notice overtook their
        # submission) keep the worker's traceback as their cause all the same.
        cause = first.__cause__ if first is not None else None
        tb = cause.tb if isinstance(cause, RemoteTraceback) else None
        payload = pickle.dumps((str(first if first is not None else reason), tb))
        for entry in failed:
            try:
                entry._mppool_resolve(p.BROKEN, 0, 0.0, payload)
            except BaseException as exc:
                report_resolve_failure(entry, exc)
        for waiters in (self.stats_waiters, self.list_waiters):
            for waiter in list(waiters.values()):
                if not waiter.done():
                    waiter.set_exception(BrokenPoolError(str(reason)))

    def ended(self) -> None:
        """The reader thread is ending (the pipe closed): settle everything still open."""
        if self.state in (_BROKEN, _RUNNING, _CLOSING):
            reason = self.conn.broken_reason or self.broken_reason
            self._go_broken(reason or BrokenPoolError("the dispatcher process died"))
        with self.lock:
            if self.state != _BROKEN:
                self.state = _CLOSED
            leftovers = [self.entries.pop(t) for t in list(self.entries)]
            waiters = [*self.stats_waiters.values(), *self.list_waiters.values()]
        # Anything still registered never reached the dispatcher in time (a map refilling its
        # window as the pool closed): fail it rather than leave someone waiting forever.
        for entry in leftovers:
            try:
                entry._mppool_resolve(p.CLOSED, 0, 0.0, b"")
            except BaseException as exc:
                report_resolve_failure(entry, exc)
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(PoolClosedError("the pool is shut down"))
        self.finished.set()
        _live_cores.discard(self)

    # --- maps ----------------------------------------------------------------------------------
    def add_map(self, mapping: Any) -> None:
        with self.lock:
            self.check_open()
            self.maps.add(mapping)
            self.feeding.add(mapping)

    def remove_map(self, mapping: Any) -> None:
        with self.lock:
            present = mapping in self.maps
            self.maps.discard(mapping)
            self.feeding.discard(mapping)
        if present and not mapping.keyed:
            self.release(mapping.fn_id, mapping.opts_id)
        self._send_shutdown_if_fed()

    def map_fed(self, mapping: Any) -> None:
        """A map has read all of its input (or stopped): a pending shutdown may go out."""
        with self.lock:
            self.feeding.discard(mapping)
        self._send_shutdown_if_fed()

    def _send_shutdown_if_fed(self) -> None:
        with self.lock:
            request = self.shutdown_request
            if request is None or self.feeding:
                return
            self.shutdown_request = None
        self.conn.send(p.Shutdown(p.C_SHUTDOWN, *request))
        self.conn.flush()

    # --- ending --------------------------------------------------------------------------------
    def shutdown(self, wait: bool, cancel_futures: bool, timeout: float | None) -> None:
        """Stop accepting work; end when the work is done (see Pool.shutdown).

        Open maps are part of the work already asked for: a graceful shutdown feeds their
        whole input first (the dispatcher is told to end only once they are fed). With
        ``cancel_futures`` they are cancelled; with a deadline they stop reading.
        """
        with self.lock:
            first = self.state == _RUNNING
            if first:
                self.state = _CLOSING
            maps = list(self.maps)
            # A broken pool's dispatcher may still be alive (failed initializer): end it too.
            broken_alive = self.state == _BROKEN and self.conn.reader.is_alive()
            again = timeout is not None and self.state == _CLOSING
        if first or broken_alive or again:
            for mapping in maps:
                if cancel_futures or timeout is not None or broken_alive:
                    mapping.close()
                else:
                    mapping.eager()
            deadline = -1.0 if timeout is None else max(0.0, float(timeout))
            with self.lock:
                self.shutdown_request = (bool(cancel_futures), deadline)
            self._send_shutdown_if_fed()
        if wait:
            self.join()

    def join(self, timeout: float | None = None) -> bool:
        return self.conn.join(timeout)

    def forked(self) -> None:
        """In a child forked from this process: make this copy of the pool inert.

        The dispatcher, its pipes and the futures belong to the parent. The child closes its
        copies of the pipes (the parent's pool is untouched, and its dispatcher still sees the
        parent's exit), fails its copies of the pending futures, and refuses every use with a
        BrokenPoolError that says why. The threads did not survive the fork, and a lock one
        of them held would stay held: the locks are new.
        """
        self.lock = threading.Lock()
        self.conn.forked(self.lock)
        reason = BrokenPoolError(
            f"this pool belongs to process {self.conn.owner_pid}; a process forked from it "
            "cannot use it (make a new Pool in the child)"
        )
        self.state = _BROKEN
        self.broken_reason = reason
        self.ready.set()
        self.finished.set()
        entries, self.entries = self.entries, {}
        payload = pickle.dumps((str(reason), None))
        for entry in entries.values():
            try:
                entry._mppool_resolve(p.BROKEN, 0, 0.0, payload)
            except BaseException as exc:
                report_resolve_failure(entry, exc)
        for waiters in (self.stats_waiters, self.list_waiters):
            for waiter in waiters.values():
                if not waiter.done():
                    waiter.set_exception(reason)

    def kill(self) -> None:
        """End the dispatcher (and so its workers) now."""
        self.conn.kill()


_live_cores: weakref.WeakSet[_Core] = weakref.WeakSet()


def _end_all_at_exit() -> None:
    """At interpreter exit: a pool told to shut down (``shutdown(wait=False)``, or dropped)
    finishes its work first, as ProcessPoolExecutor does; a pool left open is ended at once,
    its running tasks killed, so that the exit never hangs on it. Ctrl-C ends any wait."""
    for core in list(_live_cores):
        try:
            if core.state == _CLOSING:
                while not core.join(EXIT_POLL_SECONDS):
                    pass
            else:
                core.shutdown(wait=False, cancel_futures=True, timeout=0.0)
                if not core.join(EXIT_TIMEOUT):
                    core.kill()
        except KeyboardInterrupt:
            core.kill()
        except Exception:
            pass


atexit.register(_end_all_at_exit)


def _after_fork_in_child() -> None:
    """The pools of the parent are the parent's: their copies here become inert."""
    global _live_cores
    cores = list(_live_cores)
    _live_cores = weakref.WeakSet()  # the exit hook must not end the parent's pools
    _future.reset_after_fork()
    for core in cores:
        core.forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _finalize(core: _Core) -> None:
    if core.state == _RUNNING:
        core.shutdown(wait=False, cancel_futures=False, timeout=None)
