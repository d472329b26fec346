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
import collections
import itertools
import os
import pickle
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import _protocol as p
from .. import _shm
from .._errors import BrokenPoolError, PoolClosedError
from . import _delivery, _dependencies, _events, _future
from ._admission import Keys, Slots
from ._connection import Connection
from ._delivery import _BROKEN, _CLOSED, _CLOSING, _RUNNING
from ._future import Future
from ._interned import Catalog
from ._open_maps import OpenMaps
from ._options import _Options
from ._requests import Requests
from ._schedule import Schedules
from ._serial import dumps, pack, release
from ._setup import WorkerSetup

if TYPE_CHECKING:
    from ._store import Store

START_TIMEOUT = 60.0  # seconds to wait for a new dispatcher to report ready
EXIT_TIMEOUT = 10.0  # seconds the atexit hook waits for a pool to end before killing it
EXIT_POLL_SECONDS = 0.1  # an exit waiting for a closing pool wakes this often (for Ctrl-C)


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
        store: Store | None = None,
        setup: WorkerSetup | None = None,
        autoscale: tuple[Any, ...] | None = None,
        slots: int = 0,
        shares: dict[str, float] | None = None,
        circuit_breakers: dict[str, tuple[int, float, float, bool]] | None = None,
    ) -> None:
        self.workers = workers  # the current target (an elastic pool changes it)
        self.policy: Any = None  # the thread of a user's autoscale policy, if any
        self.autoscaled = autoscale is not None
        # The dispatcher's own rules decide (no user policy): maps report what they hold back.
        self.autoscale_rules = autoscale is not None and bool(autoscale[6])
        self.store = store
        self.waits = None
        if store is not None:
            from ._stored import Waits  # the job store's code loads only for a pool with one

            self.waits = Waits(self, store)
        self.defaults = defaults
        self.state = _RUNNING
        self.broken_reason: BaseException | None = None
        self.lock = threading.Lock()
        self.entries: dict[int, Any] = {}  # task id -> Future, map chunk, or schedule run
        self.requests = Requests(self)
        self.ids = itertools.count(1)
        self.catalog = Catalog(self.send)
        self.keys = Keys(self.lock)
        self.schedules = Schedules(self)
        self.maps = OpenMaps(self)
        self.ready = threading.Event()
        self.finished = threading.Event()
        self.pids: list[int] = []
        self.slots = Slots(max_queue, slots or workers) if max_queue else None
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be callable")
        blob = None if initializer is None else dumps((initializer, initargs), "the initializer")
        self.shm_prefix = _shm.new_prefix()
        # task id -> what a task with dependencies needs to be submitted again (DEP_GONE)
        self.dep_waiting: dict[int, _dependencies.Waiting] = {}
        self.dep_again: collections.deque[tuple[int, _dependencies.Waiting]] = collections.deque()
        self.dep_lock = threading.Lock()
        self.dep_draining = False
        self.batch_handles: dict[str, weakref.WeakSet[Any]] = {}  # name -> live Batch handles
        # task id -> (segment, Shared handles) its arguments use, released at its outcome
        self.segments: dict[int, tuple[str | None, list[_shm.Shared]]] = {}
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
            _events.wanted_level(),
            *(setup or WorkerSetup({}, [], [])),
            self.shm_prefix,
            autoscale,
            shares or {},
            circuit_breakers or {},
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
            self.catalog.options_id(self.defaults)
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
        for task_id, entry, _ in batch:
            entry._mppool_resolve(status, 0, 0.0, payload)
            self.release_segments(task_id)  # written after the pool's last clean-up
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

    def alive(self) -> bool:
        """Whether the dispatcher still takes messages (running or shutting down)."""
        return self.state in (_RUNNING, _CLOSING)

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
        decision: tuple[str, Any] | None = None,
    ) -> Future[Any]:
        if not (closing_ok and self.state == _CLOSING):
            self.check_open()
        if key is None:
            if callable(opts.key):
                raise TypeError("a callable key is for map(); submit() needs a string key")
            key = opts.key
        if isinstance(key, str):
            holder = self.keys.holder(key)
            if holder is not None:
                return holder  # type: ignore[return-value]  # queued or running: share it
            if self.store is not None:
                from . import _stored

                def run() -> Future[Any]:
                    return self._submit_new(fn, args, kwargs, opts, block, timeout, key, created)

                return _stored.submit_keyed(self, key, decision, run)
        return self._submit_new(fn, args, kwargs, opts, block, timeout, key, created)

    def _submit_new(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        opts: _Options,
        block: bool,
        timeout: float | None,
        key: str | None,
        created: set[int] | None,
    ) -> Future[Any]:
        found = None
        if opts.after or _dependencies.has_future(args, kwargs):
            found = _dependencies.find(self, args, kwargs, opts.after)
            if found.failed is not None:  # already failed: this task cannot run
                failed: Future[Any] = Future()
                failed.set_exception(found.failed)
                return failed
            if key is not None and self.store is not None and (found.needs or found.after):
                raise TypeError("a keyed task of a pool with a job store cannot wait for futures")
            args, kwargs = found.args, found.kwargs
        catalog = self.catalog
        fn_id = catalog.function_id(fn)
        opts_id = catalog.options_id(opts)
        kept = None
        what = f"the arguments of {getattr(fn, '__qualname__', fn)!r}"
        try:
            payload, kept = pack((args, kwargs or None), what, self.shm_prefix)
            if self.slots is not None:
                self.slots.acquire(block, timeout)
        except BaseException:
            catalog.release(fn_id, opts_id)
            release(kept)
            raise
        fut: Future[Any] = Future()
        task_id = next(self.ids)
        fut._core, fut._task_id, fut._fn_id, fut._opts_id = self, task_id, fn_id, opts_id
        if self.slots is not None:
            fut.add_done_callback(self.slots.release)
        if isinstance(key, str):
            holder = self.keys.claim(key, fut)
            if holder is not None:  # another thread won the race
                if self.slots is not None:
                    self.slots.release()
                catalog.release(fn_id, opts_id)
                release(kept)
                return holder  # type: ignore[return-value]
        if created is not None:
            created.add(task_id)  # the caller owns this task (it did not join another's)
        if key is not None and self.store is not None:
            fut._stored = (self.store, key, fn, payload, time.time())
        if kept is not None:
            self.segments[task_id] = kept
        not_before, deadline = opts.not_before(), opts.deadline_time()
        needs: tuple[int, ...] = ()
        after: tuple[int, ...] = ()
        if found is not None and (found.needs or found.after):
            needs = tuple(f._task_id for f in found.needs)
            after = tuple(f._task_id for f in found.after)
            self.dep_waiting[task_id] = _dependencies.Waiting(
                fn_id, opts_id, args, kwargs, found.needs, found.after, not_before, deadline,
                key or "", what,
            )  # fmt: skip
        msg = p.submit(
            task_id, fn_id, opts_id, p.SINGLE, 0, not_before, payload, key or "", deadline,
            needs, after,
        )  # fmt: skip
        self.register_entry(task_id, fut, msg)
        return fut

    def release_segments(self, task_id: int) -> None:
        """The task has its outcome: remove its argument segment, drop its handles."""
        release(self.segments.pop(task_id, None))

    def cancel_task(self, task_id: int, kill: bool) -> None:
        if self.alive():
            self.conn.send(p.Cancel(p.C_CANCEL, task_id, kill))

    def cancel_batch(self, batch: str, kill: bool) -> None:
        if self.alive():
            self.conn.send(p.CancelBatch(p.C_CANCEL_BATCH, batch, kill))

    # --- requests ------------------------------------------------------------------------------
    def check_answering(self) -> None:
        """Raise unless the dispatcher can still answer requests."""
        if self.state == _CLOSED:
            raise PoolClosedError("the pool is shut down")
        if self.state == _BROKEN:
            raise BrokenPoolError(f"the pool is broken: {self.broken_reason}") from (
                self.broken_reason
            )

    # --- what the dispatcher says (on the reader thread: see _delivery) -------------------------
    def deliver(self, msgs: list[p.Message]) -> bool:
        return _delivery.deliver(self, msgs)

    def _go_broken(self, reason: BaseException) -> None:
        _delivery.go_broken(self, reason)

    def ended(self) -> None:
        """The reader thread is ending (the pipe closed): settle everything still open."""
        _delivery.ended(self)
        _live_cores.discard(self)
        if self.policy is not None:
            self.policy.close(wait=False)  # on the reader thread: never wait for user code

    # --- ending --------------------------------------------------------------------------------
    def shutdown(self, wait: bool, cancel_futures: bool, timeout: float | None) -> None:
        """Stop accepting work; end when the work is done (see Pool.shutdown).

        Open maps are part of the work already asked for: a graceful shutdown feeds their
        whole input first (the dispatcher is told to end only once they are fed). With
        ``cancel_futures`` they are cancelled; with a deadline they stop reading.
        """
        if self.policy is not None:
            self.policy.close(wait=False)  # the user's policy decides no more
        with self.lock:
            first = self.state == _RUNNING
            if first:
                self.state = _CLOSING
            maps = self.maps.all()
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
            self.maps.shut_down_when_fed(bool(cancel_futures), deadline)
        if wait:
            self.join()
            if self.policy is not None and not self.conn.on_reader_thread():
                self.policy.close(wait=True)  # a call under way ends before shutdown does

    def join(self, timeout: float | None = None) -> bool:
        return self.conn.join(timeout)

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


def _make_inert(core: _Core) -> None:
    """In a child forked from this process: make this copy of the pool inert.

    The dispatcher, its pipes and the futures belong to the parent. The child closes its
    copies of the pipes (the parent's pool is untouched, and its dispatcher still sees the
    parent's exit), fails its copies of the pending futures, and refuses every use with a
    BrokenPoolError that says why. The threads did not survive the fork, and a lock one of
    them held would stay held: the locks are new.
    """
    core.lock = threading.Lock()
    core.keys = Keys(core.lock)
    core.store = None  # the parent's: its connection and threads are not the child's
    core.conn.forked(core.lock)
    reason = BrokenPoolError(
        f"this pool belongs to process {core.conn.owner_pid}; a process forked from it "
        "cannot use it (make a new Pool in the child)"
    )
    core.state = _BROKEN
    core.broken_reason = reason
    core.ready.set()
    core.finished.set()
    entries, core.entries = core.entries, {}
    _delivery.settle(list(entries.values()), p.BROKEN, pickle.dumps((str(reason), None)))
    core.requests.fail_all(reason)


def _after_fork_in_child() -> None:
    """The pools of the parent are the parent's: their copies here become inert."""
    global _live_cores
    cores = list(_live_cores)
    _live_cores = weakref.WeakSet()  # the exit hook must not end the parent's pools
    _future.reset_after_fork()
    for core in cores:
        _make_inert(core)


os.register_at_fork(after_in_child=_after_fork_in_child)


def _finalize(core: _Core) -> None:
    if core.state == _RUNNING:
        core.shutdown(wait=False, cancel_futures=False, timeout=None)
