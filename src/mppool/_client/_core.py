"""The pool's machinery in the user process: its pipes, its two threads, its futures.

Data flow in the user process::

    submit()/map() ──▶ pending messages ──(sender thread, or inline when the batch is full)──▶
        dispatcher pipe
    dispatcher pipe ──▶ reader thread ──▶ futures resolved / map chunks filled

The threads hold a reference to :class:`_Core`, never to the public ``Pool``, so a pool that
is dropped without ``shutdown()`` is garbage collected and its finaliser starts a graceful
shutdown. An ``atexit`` hook ends any pool still open when the interpreter exits, killing
running tasks, so the exit never hangs and no process is left behind.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import datetime
import functools
import itertools
import math
import os
import pickle
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from .. import _protocol as p
from .._errors import BrokenPoolError, PoolClosedError, QueueFullError, RemoteTraceback
from .._retry import RetryPolicy
from .._stats import PoolStats
from ._interned import FunctionTable, OptionsTable
from ._serial import decode_error, decode_value, dumps

SEND_BATCH = 512  # messages after which a submitting thread writes the batch itself
QUIET_SECONDS = 0.0002  # after this long without a write, a message is written at once
START_TIMEOUT = 60.0  # seconds to wait for a new dispatcher to report ready
STATS_TIMEOUT = 30.0  # seconds to wait for a stats reply
EXIT_TIMEOUT = 10.0  # seconds the atexit hook waits for a pool to end before killing it
EXIT_POLL_SECONDS = 0.1  # an exit waiting for a closing pool wakes this often (for Ctrl-C)
# The folder that holds the mppool package (src/ in a checkout): the dispatcher imports this
# very copy of mppool, whatever its sys.path would find first.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[3]); "
    "from mppool._dispatcher._loop import main; main(int(sys.argv[1]), int(sys.argv[2]))"
)

_RUNNING, _CLOSING, _CLOSED, _BROKEN = "running", "closing", "closed", "broken"
_UNSET: Any = object()


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {value!r}")
    number = float(value)
    if math.isnan(number):
        raise ValueError(f"{name} must be a number, not nan")
    return number


def _priority(value: Any) -> float:
    number = _number("priority", value)
    if not math.isfinite(number):
        raise ValueError(f"priority must be finite, not {value!r}")
    return number


def _timeout(value: Any) -> float | None:
    """A task timeout in seconds: None or ``inf`` mean no limit."""
    if value is None:
        return None
    number = _number("timeout", value)
    if not number > 0:
        raise ValueError(f"timeout must be > 0 seconds, not {value!r}")
    return None if math.isinf(number) else number


def _delay(value: Any) -> float | None:
    if value is None:
        return None
    number = _number("delay", value)
    if not 0 <= number < math.inf:
        raise ValueError(f"delay must be a finite number of seconds >= 0, not {value!r}")
    return number


def _at(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        value = value.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"at must be a datetime or a time.time() value, not {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"at must be a finite time, not {value!r}")
    return number


class _Options:
    """A set of per-task options; interned per pool and sent to the dispatcher once.

    Every value is checked here, where the caller set it (``Pool(...)`` or ``options()``),
    with an error that names the option: nothing malformed reaches the dispatcher.
    """

    __slots__ = (
        "_signature",
        "at",
        "crash_retries",
        "delay",
        "key",
        "kind",
        "priority",
        "retry",
        "timeout",
    )

    def __init__(
        self,
        priority: float,
        timeout: float | None,
        retry: RetryPolicy,
        crash_retries: int,
        kind: str,
        key: str | Callable[..., Any] | None,
        delay: float | None,
        at: float | None = None,
    ) -> None:
        if isinstance(crash_retries, bool) or not isinstance(crash_retries, int):
            raise TypeError(f"crash_retries must be an int, not {crash_retries!r}")
        if crash_retries < 0:
            raise ValueError("crash_retries must be >= 0")
        if not isinstance(kind, str):
            raise TypeError(f"kind must be a string, not {kind!r}")
        if key is not None and not (isinstance(key, str) or callable(key)):
            raise TypeError("key must be a string, a callable (for map) or None")
        self.priority = _priority(priority)
        self.timeout = _timeout(timeout)
        self.retry = retry
        self.crash_retries = crash_retries
        self.kind = kind
        self.key = key
        self.delay = _delay(delay)
        self.at = _at(at)
        if self.delay is not None and self.at is not None:
            raise ValueError("give delay or at, not both")
        # What the dispatcher sees of these options: equal signatures share one id.
        self._signature = (self.priority, self.timeout, retry, crash_retries, kind)

    def message(self, opts_id: int) -> p.Options:
        retry = self.retry
        retry_on = dumps(retry.retry_on, "retry_on") if retry.max_attempts > 1 else None
        from .._errors import TaskTimeoutError

        retry_timeouts = retry.max_attempts > 1 and issubclass(TaskTimeoutError, retry.retry_on)
        return p.Options(
            p.C_OPTIONS,
            opts_id,
            self.priority,
            self.timeout or 0.0,
            retry.max_attempts,
            retry.initial_delay,
            retry.factor,
            retry.max_delay,
            retry.jitter,
            self.crash_retries,
            self.kind,
            retry_on,
            retry_timeouts,
        )

    def signature(self) -> tuple[Any, ...]:
        return self._signature

    def not_before(self) -> float:
        """Dispatcher-clock time before which the task must not run (0.0: now)."""
        if self.delay:
            return time.monotonic() + self.delay
        if self.at is not None:
            return time.monotonic() + (self.at - time.time())
        return 0.0

    def replace(self, **changes: Any) -> _Options:
        values = {name: getattr(self, name) for name in self.__slots__ if name != "_signature"}
        values.update(changes)
        return _Options(**values)


_CONDITION_LOCK = threading.Lock()
# concurrent.futures.Future's private states, which _PoolFuture's fast paths rely on
# (tests/test_regressions.py pins them).
_FINISHED = "FINISHED"
_ENDED = frozenset({"CANCELLED", "CANCELLED_AND_NOTIFIED", _FINISHED})


class _PoolFuture(concurrent.futures.Future[Any]):
    """A Future whose ``cancel()`` also removes the task from the pool's queue.

    Its ``threading.Condition`` is created on first use instead of in ``__init__``: a
    condition with its lock and waiter deque is about half the memory of a queued task, and
    most futures of a large batch are only touched once, when they are resolved. The base
    class reads ``self._condition`` everywhere, so a property serves it.
    """

    _core: _Core | None = None
    _task_id = 0
    _fn_id = 0  # the function and options it holds (released when it is resolved)
    _opts_id = 0

    def __init__(self) -> None:  # deliberately not calling super().__init__ (see above)
        self._state = "PENDING"
        self._result = None
        self._exception = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Any] = []

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        cond: threading.Condition | None = self.__dict__.get("_lazy_condition")
        if cond is None:
            with _CONDITION_LOCK:  # two threads must never create two conditions
                cond = self.__dict__.get("_lazy_condition")
                if cond is None:
                    cond = self.__dict__["_lazy_condition"] = threading.Condition()
        return cond

    @property
    def task_id(self) -> int:
        """The pool's id for this task (as in ``Pool.tasks()``)."""
        return self._task_id

    # Fast paths. Most futures of a batch are resolved by the reader thread before anyone
    # waits on them, and read once when they are done: neither needs a condition. A waiter
    # always creates the condition (under _CONDITION_LOCK) before it waits, so "no
    # condition yet" means "nobody to wake", and the state can be set directly.
    def _finish(self, result: Any, exception: BaseException | None) -> None:
        with _CONDITION_LOCK:
            direct = "_lazy_condition" not in self.__dict__
            if direct:
                if self._state in _ENDED:
                    raise concurrent.futures.InvalidStateError(f"{self._state}: {self!r}")
                self._result = result
                self._exception = exception
                self._state = _FINISHED
        if not direct:
            if exception is not None:
                super().set_exception(exception)
            else:
                super().set_result(result)
            return
        self._invoke_callbacks()  # type: ignore[attr-defined]

    def result(self, timeout: float | None = None) -> Any:
        if self._state == _FINISHED:  # set once, never changed after: safe to read bare
            if self._exception is not None:
                try:
                    raise self._exception
                finally:
                    self = None  # type: ignore[assignment]  # no cycle via the traceback
            return self._result
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state == _FINISHED:
            return self._exception
        return super().exception(timeout)

    def done(self) -> bool:
        return self._state in _ENDED

    def cancel(self) -> bool:
        return self._cancel(kill=False)

    def _cancel(self, kill: bool) -> bool:
        cancelled = super().cancel()
        if cancelled:
            # Future.cancel() wakes result() callers but not wait()/as_completed() waiters;
            # only this call does. The pool never marks its futures RUNNING, so it is safe.
            self.set_running_or_notify_cancel()
            core = self._core
            if core is not None:
                core.cancel_task(self._task_id, kill=kill)
        return cancelled

    def _mppool_resolve(self, status: int, attempts: int, duration: float, payload: bytes) -> None:
        try:
            if status == p.OK:
                try:
                    value = decode_value(payload)
                except Exception as exc:
                    self._finish(None, exc)
                else:
                    self._finish(value, None)
            elif status == p.CANCELLED:
                if not self.cancelled():  # the user may have cancelled (and notified) it
                    concurrent.futures.Future.cancel(self)
                    self.set_running_or_notify_cancel()
            else:
                self._finish(None, decode_error(status, attempts, payload))
        except concurrent.futures.InvalidStateError:
            pass  # cancelled by the user meanwhile: the result is dropped
        finally:
            core = self._core
            if core is not None and self._fn_id:
                core.release(self._fn_id, self._opts_id)
                self._fn_id = self._opts_id = 0


class _Core:
    """Everything a pool's threads share: pipes, pending messages, futures, state."""

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
        init_timeout: float = 60.0,
    ) -> None:
        self.workers = workers
        self.defaults = defaults
        self.state = _RUNNING
        self.broken_reason: BaseException | None = None
        self.lock = threading.Lock()
        self.write_lock = threading.Lock()
        self.pending: list[tuple[Any, ...]] = []
        self.wake = threading.Event()
        self.last_write = 0.0
        self.stop_sender = False
        self.entries: dict[int, Any] = {}  # task id -> _PoolFuture or map chunk
        self.stats_waiters: dict[int, concurrent.futures.Future[dict[str, Any]]] = {}
        self.ids = itertools.count(1)
        self.functions = FunctionTable()
        self.options_table = OptionsTable()
        self.planners: dict[int, Any] = {}  # fn id -> ChunkPlanner of its maps
        self.keys: dict[str, _PoolFuture] = {}  # dedup: key -> the unfinished task holding it
        self.deduplicated = 0
        self.list_waiters: dict[int, concurrent.futures.Future[list[dict[str, Any]]]] = {}
        self.schedules: dict[int, Any] = {}  # schedule id -> Schedule handle
        self.schedule_refs: dict[int, tuple[int, int]] = {}  # its function and options ids
        self.maps: set[Any] = set()  # open maps (MapIterator)
        self.feeding: set[Any] = set()  # maps still reading their input
        self.shutdown_request: tuple[bool, float] | None = None  # sent once maps are fed
        self.ready = threading.Event()
        self.finished = threading.Event()
        self.pids: list[int] = []
        self.slots = threading.BoundedSemaphore(max_queue) if max_queue else None
        initializer_blob = None
        if initializer is not None:
            if not callable(initializer):
                raise TypeError("initializer must be callable")
            initializer_blob = dumps((initializer, tuple(initargs)), "the initializer")
        c2d_r, c2d_w = os.pipe()
        d2c_r, d2c_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(c2d_r), str(d2c_w), _PACKAGE_PARENT],
                pass_fds=(c2d_r, d2c_w),
                stdin=subprocess.DEVNULL,
                # Its own process group: a terminal's Ctrl-C (SIGINT to the foreground group)
                # reaches the user process only, even while the dispatcher is still starting.
                # It still ends with the user process: it sees end-of-file on its pipe.
                process_group=0,
            )
        except BaseException:
            for fd in (c2d_r, c2d_w, d2c_r, d2c_w):
                os.close(fd)
            raise
        os.close(c2d_r)
        os.close(d2c_w)
        self.out_fd = c2d_w
        self.in_fd = d2c_r
        config = p.Config(
            p.C_CONFIG,
            workers,
            list(sys.path),
            os.getcwd(),
            initializer_blob,
            max_tasks_per_child,
            max_memory_per_child,
            aging_rate,
            rate_limits,
            init_timeout,
        )
        self.pending.append(config)
        self.register_options(defaults)
        self.reader = threading.Thread(target=self._read_loop, name="mppool-reader", daemon=True)
        self.sender = threading.Thread(target=self._send_loop, name="mppool-sender", daemon=True)
        self.reader.start()
        self.sender.start()
        self.wake.set()
        # Broken after D_READY (pids known) is a failed initializer: the pool exists and
        # reports it through its futures. Broken before it: the dispatcher never started.
        if not self.ready.wait(START_TIMEOUT) or (self.state == _BROKEN and not self.pids):
            self.kill()
            reason = self.broken_reason
            raise BrokenPoolError("the dispatcher process did not start") from reason

    # --- sending -------------------------------------------------------------------------------
    def send(self, msg: tuple[Any, ...]) -> None:
        with self.lock:
            pending = self.pending
            pending.append(msg)
            count = len(pending)
        self._after_queueing(count)

    def _after_queueing(self, count: int) -> None:
        """Decide who writes, now that ``count`` messages are pending."""
        if count >= SEND_BATCH:
            self.flush()
        elif count == 1:
            if len(self.entries) <= 1 or time.perf_counter() - self.last_write > QUIET_SECONDS:
                # An isolated message (nothing else in flight, or nothing written lately)
                # goes out from this thread now, saving a thread hand-off of latency. In a
                # burst the sender thread collects the messages into one batch.
                self.flush()
            else:
                self.wake.set()

    def _register(self, batch: list[tuple[int, Any, tuple[Any, ...]]]) -> int:
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
                    self.pending.append(msg)
                return len(self.pending)
        status = p.BROKEN if self.state == _BROKEN else p.CLOSED
        payload = pickle.dumps(("the pool is broken", None))
        for _, entry, _ in batch:
            entry._mppool_resolve(status, 0, 0.0, payload)
        return -1

    def register_entry(self, task_id: int, entry: Any, msg: tuple[Any, ...]) -> None:
        """Register one task; the usual rule decides who writes it (see :meth:`send`)."""
        count = self._register([(task_id, entry, msg)])
        if count >= 0:
            self._after_queueing(count)

    def register_batch(self, batch: list[tuple[int, Any, tuple[Any, ...]]]) -> None:
        """Register entries and write their messages from this thread, waking nobody.

        For a map refilling its window: going through :meth:`send` would wake the sender
        thread for nothing, a thread switch per refill.
        """
        if self._register(batch) >= 0:
            self.flush()

    def flush(self) -> None:
        with self.write_lock:
            with self.lock:
                msgs = self.pending
                self.pending = []
            if msgs and self.out_fd >= 0:
                self.last_write = time.perf_counter()
                try:
                    p.write_all(self.out_fd, p.encode(msgs))
                except OSError as exc:  # the dispatcher is gone; the reader reports it
                    if self.broken_reason is None:
                        self.broken_reason = exc

    def _send_loop(self) -> None:
        wake = self.wake
        while True:
            wake.wait()
            wake.clear()
            if self.out_fd < 0:
                return
            self.flush()
            if self.stop_sender:
                return

    def register_options(self, opts: _Options) -> int:
        """The id of ``opts``, counting one more user (see :meth:`release`).

        Interned by value: ``pool.options(priority=1)`` called a million times (or once per
        HTTP request) is one options set in the dispatcher and the workers, not a million.
        """

        def publish(opts_id: int) -> None:
            self.send(opts.message(opts_id))

        opts_id = self.options_table.acquire(opts.signature(), publish)
        self._send_forgets()
        return opts_id

    def function_id(self, fn: Callable[..., Any]) -> int:
        """The id of ``fn``, counting one more user (see :meth:`release`)."""

        def publish(fn_id: int, blob: bytes) -> None:
            self.send(p.Function(p.C_FUNCTION, fn_id, blob))

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
                self.send(p.Forget(p.C_FORGET, fn_ids, opts_ids))
                for fn_id in fn_ids:
                    self.planners.pop(fn_id, None)

    def check_open(self) -> None:
        if self.state == _RUNNING:
            return
        if self.state == _BROKEN:
            raise BrokenPoolError("the pool is broken") from self.broken_reason
        raise PoolClosedError("the pool is shut down and accepts no new tasks")

    def acquire_slot(self, block: bool, timeout: float | None) -> None:
        if self.slots is None:
            return
        if not self.slots.acquire(block, timeout if block else None):
            raise QueueFullError("the pool's queue is full (max_queue reached)")

    def release_slot(self) -> None:
        if self.slots is not None:
            self.slots.release()

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
    ) -> _PoolFuture:
        if not (closing_ok and self.state == _CLOSING):
            self.check_open()
        if key is None:
            if callable(opts.key):
                raise TypeError("a callable key is for map(); submit() needs a string key")
            key = opts.key
        if isinstance(key, str):
            with self.lock:
                holder = self.keys.get(key)
                if holder is not None and not holder.done():
                    self.deduplicated += 1
                    return holder  # a task with this key is queued or running: share it
        fn_id = self.function_id(fn)
        opts_id = self.register_options(opts)
        try:
            payload = dumps(
                (args, kwargs or None), f"the arguments of {getattr(fn, '__qualname__', fn)!r}"
            )
            self.acquire_slot(block, timeout)
        except BaseException:
            self.release(fn_id, opts_id)
            raise
        fut = _PoolFuture()
        task_id = next(self.ids)
        fut._core = self
        fut._task_id = task_id
        fut._fn_id = fn_id
        fut._opts_id = opts_id
        if self.slots is not None:
            fut.add_done_callback(self._release_on_done)
        if isinstance(key, str):
            with self.lock:
                holder = self.keys.get(key)
                if holder is not None and not holder.done():  # another thread won the race
                    self.deduplicated += 1
                    self.release_slot()
                    self.release(fn_id, opts_id)
                    return holder
                self.keys[key] = fut
            fut.add_done_callback(functools.partial(self._free_key, key))
        if created is not None:
            created.add(task_id)  # the caller owns this task (it did not join another's)
        not_before = opts.not_before()
        msg = p.submit(task_id, fn_id, opts_id, p.SINGLE, 0, not_before, payload, key or "")
        self.register_entry(task_id, fut, msg)
        return fut

    def _release_on_done(self, _fut: concurrent.futures.Future[Any]) -> None:
        self.release_slot()

    def _free_key(self, key: str, fut: concurrent.futures.Future[Any]) -> None:
        # The key is free again once its task is finished: a later submit runs anew.
        with self.lock:
            if self.keys.get(key) is fut:
                del self.keys[key]

    def cancel_task(self, task_id: int, kill: bool) -> None:
        if self.state in (_RUNNING, _CLOSING):
            self.send(p.Cancel(p.C_CANCEL, task_id, kill))

    def request(self, msg: tuple[Any, ...], waiters: dict[int, Any], request_id: int) -> Any:
        """Send a request and wait for the dispatcher's reply to it."""
        if threading.current_thread() is self.reader:
            # The reply would be delivered by this very thread: it would wait for itself.
            raise RuntimeError(
                "stats(), tasks() and task() cannot be called from a future's done callback"
            )
        if self.state == _CLOSED:
            raise PoolClosedError("the pool is shut down")
        if self.state == _BROKEN:
            raise BrokenPoolError("the pool is broken") from self.broken_reason
        waiter: concurrent.futures.Future[Any] = concurrent.futures.Future()
        waiters[request_id] = waiter
        self.send(msg)
        try:
            return waiter.result(STATS_TIMEOUT)
        finally:
            waiters.pop(request_id, None)

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
        from ._schedule import Schedule

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
        self.schedules[schedule_id] = handle
        self.schedule_refs[schedule_id] = (fn_id, opts_id)
        self.send(p.Schedule(p.C_SCHEDULE, schedule_id, fn_id, opts_id, interval, cron, payload))
        return handle

    def unschedule(self, schedule_id: int) -> None:
        self.schedules.pop(schedule_id, None)
        refs = self.schedule_refs.pop(schedule_id, None)
        if self.state in (_RUNNING, _CLOSING):
            self.send(p.Unschedule(p.C_UNSCHEDULE, schedule_id))
        if refs is not None:
            self.release(*refs)

    def list_tasks(self, task_id: int = 0) -> list[dict[str, Any]]:
        request_id = next(self.ids)
        rows: list[dict[str, Any]] = self.request(
            p.ListTasks(p.C_LIST, request_id, task_id), self.list_waiters, request_id
        )
        return rows

    def stats(self) -> PoolStats:
        request_id = next(self.ids)
        snap = self.request(p.StatsRequest(p.C_STATS, request_id), self.stats_waiters, request_id)
        snap["deduplicated"] = self.deduplicated
        return PoolStats.from_snapshot(snap)

    # --- receiving -----------------------------------------------------------------------------
    def _read_loop(self) -> None:
        reader = p.BlockingReader(self.in_fd)
        entries = self.entries
        try:
            while True:
                try:
                    msgs = reader.read()
                except OSError:
                    msgs = None
                if msgs is None:
                    if self.state != _CLOSED:
                        self._go_broken(BrokenPoolError("the dispatcher process died"))
                    return
                for msg in msgs:
                    tag = msg[0]
                    if tag == p.D_RESULT:
                        entry = entries.pop(msg[1], None)
                        if entry is not None:
                            try:
                                entry._mppool_resolve(msg[2], msg[3], msg[4], msg[5])
                            except Exception as exc:  # never let one result stop the reader
                                _report_resolve_failure(entry, exc)
                    elif tag == p.D_CHUNK:
                        entry = entries.pop(msg[1], None)
                        if entry is not None:
                            try:
                                entry._mppool_chunk(p.ChunkResult.view(msg))
                            except Exception as exc:
                                _report_resolve_failure(entry, exc)
                    elif tag == p.D_STATS:
                        waiter = self.stats_waiters.get(msg[1])
                        if waiter is not None:
                            waiter.set_result(msg[2])
                    elif tag == p.D_LIST:
                        list_waiter = self.list_waiters.get(msg[1])
                        if list_waiter is not None:
                            list_waiter.set_result(msg[2])
                    elif tag == p.D_FIRED:
                        handle = self.schedules.get(msg[1])
                        if handle is not None:
                            entries[msg[2]] = handle._fired(msg[2], msg[3], msg[4])
                    elif tag == p.D_READY:  # (tag, pids)
                        self.pids = list(msg[1])
                        self.ready.set()
                    elif tag == p.D_BROKEN:
                        cause = RemoteTraceback(msg[2]) if msg[2] else None
                        err = BrokenPoolError(msg[1])
                        err.__cause__ = cause
                        self._go_broken(err)
                    elif tag == p.D_BYE:
                        with self.lock:
                            self.state = _CLOSED
                        return
                # Drop the last entry and batch before blocking in read(): an idle reader
                # must not keep a finished map (and through it an abandoned pool) alive.
                entry, msg, msgs = None, (), None
        finally:
            self._cleanup()

    def _go_broken(self, reason: BaseException) -> None:
        if self.state == _CLOSED:
            return
        if self.state != _BROKEN:  # keep the first reason (the initializer's error)
            self.state = _BROKEN
            self.broken_reason = reason
        self.ready.set()
        # Futures failed here rather than by the dispatcher (the broken notice overtook their
        # submission) keep the worker's traceback as their cause all the same.
        first = self.broken_reason
        cause = first.__cause__ if first is not None else None
        tb = cause.tb if isinstance(cause, RemoteTraceback) else None
        payload = pickle.dumps((str(first if first is not None else reason), tb))
        for task_id in list(self.entries):
            entry = self.entries.pop(task_id, None)
            if entry is not None:
                entry._mppool_resolve(p.BROKEN, 0, 0.0, payload)
        all_waiters: tuple[dict[int, Any], ...] = (self.stats_waiters, self.list_waiters)
        for waiters in all_waiters:
            for waiter in list(waiters.values()):
                if not waiter.done():
                    waiter.set_exception(BrokenPoolError(str(reason)))

    def _cleanup(self) -> None:
        """Runs on the reader thread as it ends: stop the sender, reap the dispatcher."""
        self.stop_sender = True
        self.wake.set()
        if threading.current_thread() is not self.sender:
            self.sender.join()
        if self.state == _BROKEN or self.state == _RUNNING:
            self._go_broken(self.broken_reason or BrokenPoolError("the dispatcher process died"))
        try:
            self.proc.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with self.lock:
            if self.state not in (_BROKEN, _CLOSED):
                self.state = _CLOSED
            leftovers = [self.entries.pop(t, None) for t in list(self.entries)]
            waiters: list[concurrent.futures.Future[Any]] = [
                *self.stats_waiters.values(),
                *self.list_waiters.values(),
            ]
        # Anything still registered never reached the dispatcher in time (a map refilling its
        # window as the pool closed): fail it rather than leave someone waiting forever.
        for entry in leftovers:
            if entry is not None:
                try:
                    entry._mppool_resolve(p.CLOSED, 0, 0.0, b"")
                except Exception as exc:
                    _report_resolve_failure(entry, exc)
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(PoolClosedError("the pool is shut down"))
        with self.write_lock:  # no flush may write to a closed (or reused) descriptor
            for attr in ("out_fd", "in_fd"):
                fd = getattr(self, attr)
                if fd >= 0:
                    setattr(self, attr, -1)
                    os.close(fd)
        self.finished.set()
        _live_cores.discard(self)

    # --- ending --------------------------------------------------------------------------------
    # --- maps ------------------------------------------------------------------------------
    def add_map(self, mapping: Any) -> None:
        with self.lock:
            if self.state != _RUNNING:
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
        self.send(p.Shutdown(p.C_SHUTDOWN, *request))
        self.flush()

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
        deadline = -1.0 if timeout is None else max(0.0, float(timeout))
        # A broken pool's dispatcher may still be alive (failed initializer): ask it to end.
        broken_alive = self.state == _BROKEN and self.reader.is_alive()
        if first or broken_alive or (timeout is not None and self.state == _CLOSING):
            for mapping in maps:
                if cancel_futures or timeout is not None or broken_alive:
                    mapping.close()
                else:
                    mapping.eager()
            with self.lock:
                self.shutdown_request = (bool(cancel_futures), deadline)
            self._send_shutdown_if_fed()
        if wait:
            self.join()

    def join(self, timeout: float | None = None) -> bool:
        if threading.current_thread() is self.reader:
            return False
        self.reader.join(timeout)
        return not self.reader.is_alive()

    def kill(self) -> None:
        """End the dispatcher (and so its workers) now."""
        try:
            self.proc.kill()
        except OSError:
            pass
        self.join(EXIT_TIMEOUT)


def _report_resolve_failure(entry: Any, exc: Exception) -> None:
    """Give a resolution failure to whoever waits on the entry, else print it."""
    if isinstance(entry, concurrent.futures.Future) and not entry.done():
        try:
            entry.set_exception(exc)
            return
        except concurrent.futures.InvalidStateError:
            pass
    import traceback

    print("mppool: error while resolving a task result:", file=sys.stderr)
    traceback.print_exception(exc, file=sys.stderr)


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


def _finalize(core: _Core) -> None:
    if core.state == _RUNNING:
        core.shutdown(wait=False, cancel_futures=False, timeout=None)
