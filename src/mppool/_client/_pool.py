"""The public pool: :class:`Pool`, the option views of :meth:`Pool.options`, and their methods.

Everything here validates arguments and delegates to :class:`mppool._core._Core`, which
owns the pipes and threads.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import os
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .._backoff import CRASH_RETRIES
from .._breaker import CircuitBreaker
from .._ratelimit import RateLimit
from .._retry import RetryPolicy
from .._scaling import Autoscale
from .._shm import Shared
from .._stats import PoolStats, TaskInfo
from ._core import _Core, _finalize, _live_cores
from ._future import Future
from ._options import (
    UNSET,
    _check,
    _circuit_breakers,
    _init_timeout,
    _open_store,
    _Options,
    _shares,
    option_changes,
)
from ._schedule import Schedule, check_interval, validate_cron
from ._setup import WorkerSetup, core_placement, preload_modules, thread_environment
from ._sizing import PolicyThread, check_size, send_resize, sizes

if TYPE_CHECKING:
    from .._web._registry import Registry
    from .._web._server import Server
    from ._batch import Batch

T = TypeVar("T")
DEFAULT_AGING_RATE = 0.1  # priority levels a waiting task gains per second
DEFAULT_INIT_TIMEOUT = 300.0  # seconds a worker may take to start and run its initializer


class _Submitter:
    """Methods shared by :class:`Pool` and the views returned by :meth:`Pool.options`."""

    _core: _Core
    _opts: _Options
    # What keeps the pool alive while a view, a map or a schedule is still in use. Without
    # it, `Pool(2).map(...)` would let the pool be collected (and shut down) mid-iteration.
    _owner: Any

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` and return a Future for its result.

        Args:
            fn: any callable; lambdas, closures and functions defined in ``__main__`` work.
            *args: positional arguments (pickled; cloudpickle is used when pickle fails).
            **kwargs: keyword arguments.

        Returns:
            A :class:`mppool.Future`: a ``concurrent.futures.Future`` with a ``task_id``.
            Its exception, if the task raised, is the task's
            own, with the worker's traceback as ``__cause__``.

        Raises:
            PoolClosedError: after ``shutdown()``.
            BrokenPoolError: if the pool is broken.
            SerializationError: if the function or its arguments cannot be pickled.
            QueueFullError: never here (``submit`` waits for room); see :meth:`try_submit`.
        """
        return self._core.submit(fn, args, kwargs, self._opts)

    def try_submit(
        self, fn: Callable[..., T], /, *args: Any, timeout: float | None = 0.0, **kwargs: Any
    ) -> Future[T]:
        """Like :meth:`submit`, but wait at most ``timeout`` seconds for room in a bounded queue.

        Raises:
            QueueFullError: if ``max_queue`` tasks are still unfinished after ``timeout``.
        """
        block = timeout is None or timeout > 0
        return self._core.submit(fn, args, kwargs, self._opts, block=block, timeout=timeout)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: bool | Callable[[int, int | None], None] | None = None,
    ) -> Iterator[T]:
        """Apply ``fn`` to every item, yielding results in input order.

        Lazy and bounded: the input is read only as results are consumed, within a window of
        a few chunks per worker, so an endless generator works in constant memory. Chunk
        sizes adapt to measured run times (a few milliseconds of work per chunk) and shrink as
        the input runs out, unless ``chunksize`` fixes them.

        Args:
            fn: the function; with several iterables it gets one item of each.
            *iterables: the inputs.
            timeout: seconds from this call after which waiting raises ``TimeoutError``.
            chunksize: a fixed number of items per chunk instead of adaptive sizing.
            progress: ``True`` shows a tqdm progress bar (rate and ETA) on stderr; a callable
                is called as ``progress(done, total)`` after each chunk (``total`` is None when
                the input's length is unknown). Silent by default.

        Returns:
            An iterator of results. A task's exception is raised when its position is reached;
            iteration stops there and unfinished chunks are cancelled.
        """
        results: Iterator[T] = self._mapping(
            fn, iterables, True, chunksize, timeout, progress
        ).results()
        return results

    def imap_unordered(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: bool | Callable[[int, int | None], None] | None = None,
    ) -> Iterator[T]:
        """Like :meth:`map`, but yield results as they complete (in completion order)."""
        results: Iterator[T] = self._mapping(
            fn, iterables, False, chunksize, timeout, progress
        ).results()
        return results

    async def asubmit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``await`` the result of ``fn(*args, **kwargs)`` without blocking the event loop.

        Cancelling the awaiting coroutine cancels the task: it is removed if it has not
        started, and its worker is killed (and replaced) if it runs.

        Raises:
            the task's own exception, or mppool's errors as :meth:`submit` and its future do.
        """
        from ._aio import asubmit

        return await asubmit(self, fn, args, kwargs)

    def amap(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
    ) -> AsyncIterator[T]:
        """:meth:`map` for ``async for``: results in input order, lazy and bounded, and the
        event loop never blocks. Leaving the loop early cancels what has not run."""
        from ._aio import AsyncResults

        return AsyncResults(self._mapping(fn, iterables, True, chunksize, timeout, None))

    def aimap_unordered(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
    ) -> AsyncIterator[T]:
        """Like :meth:`amap`, in completion order."""
        from ._aio import AsyncResults

        return AsyncResults(self._mapping(fn, iterables, False, chunksize, timeout, None))

    def options(
        self,
        *,
        priority: float = UNSET,
        timeout: float | None = UNSET,
        retries: int | RetryPolicy | None = UNSET,
        crash_retries: int = UNSET,
        kind: str = UNSET,
        key: str | Callable[..., Any] | None = UNSET,
        delay: float | None = UNSET,
        at: float | datetime.datetime | None = UNSET,
        deadline: float | datetime.datetime | None = UNSET,
        run_late: bool = UNSET,
        after: Any = UNSET,
    ) -> PoolView:
        """A view of this pool whose tasks carry other options; it has the same methods.

        Args:
            priority: higher runs first; equal priorities run in submission order.
            timeout: seconds a task may run (counted from its start) before its worker is
                killed and it fails with ``TaskTimeoutError`` (or is retried by policy).
            retries: a number of retries with the default backoff, or a ``RetryPolicy``.
            crash_retries: how many times the task may kill its worker and be retried before
                it fails with ``WorkerCrashedError``.
            kind: a label: tasks of a kind share its rate limit (``Pool(rate_limits=...)``).
            key: deduplication: while a task with this key is queued or running, submitting
                another with the same key returns the existing future instead of running it
                again; once it has finished the key is free. For ``map``, a callable that gives
                each item's key (items with a key already in flight share its result).
            delay: seconds to wait before the task becomes runnable.
            at: a wall-clock time (``time.time()`` seconds or a ``datetime``) before which
                the task does not run.
            deadline: seconds after submission (for ``map``: each chunk's) or a ``datetime``
                by which the task must start: earliest deadline first within a priority; not
                started by then, it fails with ``DeadlineExceededError`` (a run goes on).
            run_late: with a deadline, only order by it: never fail for being late.
            after: futures of this pool the task waits for (``DependencyFailedError`` if
                one fails); a future passed as an argument also passes its result.

        Returns:
            A :class:`PoolView`.
        """
        changes = option_changes(
            priority, timeout, retries, crash_retries, kind, key, delay, at, deadline, run_late,
            after,
        )  # fmt: skip
        return self._view(self._opts.replace(**changes))

    def batch(self, name: str) -> Batch:
        """A :class:`mppool.Batch`: a named group of tasks (with this view's options),
        followed, waited for and cancelled together."""
        from ._batch import Batch, check_name

        return Batch(self._view(self._opts.replace(batch=check_name(name))), name)

    def _view(self, opts: _Options) -> PoolView:
        return PoolView(self._core, opts, self._owner)

    def _mapping(
        self,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        ordered: bool,
        chunksize: int | None,
        timeout: float | None,
        progress: bool | Callable[[int, int | None], None] | None,
    ) -> Any:
        """The machinery of one map (``results()``, ``close()``)."""
        from ._map import MapIterator

        return MapIterator(
            self._core,
            fn,
            iterables,
            self._opts,
            ordered,
            chunksize,
            timeout,
            progress,
            self._owner,
        )


class PoolView(_Submitter):
    """The pool with other per-task options (from :meth:`Pool.options`)."""

    def __init__(self, core: _Core, opts: _Options, owner: Any) -> None:
        self._core = core
        self._opts = opts
        self._owner = owner

    def __repr__(self) -> str:
        o = self._opts
        return f"<mppool.PoolView priority={o.priority} timeout={o.timeout} kind={o.kind!r}>"


class Pool(_Submitter, concurrent.futures.Executor):
    """A process pool for CPU-bound work: exactly ``workers`` worker processes (or as many
    as ``resize`` or an ``Autoscale`` policy sets from then on).

    Args:
        workers: number of worker processes (default ``os.cpu_count()``), or an
            ``mppool.Autoscale(min=, max=, ...)`` for a pool that grows and shrinks with
            its queue (it starts with ``min``). ``resize(n)`` changes either kind.
        max_queue: tasks that may wait besides the running ones (one per worker; for an
            autoscaled pool, one per ``max`` worker) before ``submit`` waits for room
            (0: unbounded).
        retry: default ``RetryPolicy`` for tasks that raise (default: no retry).
        timeout: default per-task timeout in seconds (default: none).
        crash_retries: default number of retries for a task whose worker dies running it.
        max_tasks_per_child: replace a worker after this many tasks (default: never).
        max_memory_per_child: replace a worker whose RSS exceeds this many bytes after a task.
        initializer: called with ``initargs`` in each worker when it starts.
        initargs: arguments for ``initializer``.
        aging_rate: priority levels a queued task gains per second of waiting.
        rate_limits: per-kind limits on task starts, e.g. ``{"hash": "200/s", "io": "10/m"}``
            or ``mppool.RateLimit(...)`` values; tasks opt in with ``options(kind=...)``.
        init_timeout: seconds a new worker may take to start and run ``initializer``; one
            that takes longer breaks the pool, as a failing initializer does (``None``: wait
            forever). A worker added by growth is given up instead, while others are ready.
        store: a job store file (SQLite; created if missing): tasks with a key are journaled,
            a key already done returns its stored result without running, failures are
            kept (see README, "Resumable batches").
        threads_per_worker: BLAS/OpenMP threads each worker may start: ``"auto"`` (its
            share of the cores, unless the variable is set in your environment), a number,
            or ``None`` to leave them alone (see README, "Numeric work").
        preload: modules imported once in the dispatcher before it forks the workers, so
            every worker, and every replacement, starts with them (a failed import breaks
            the pool at once).
        cpu_affinity: ``True`` pins worker i to core i; a list gives each worker its set of
            cores; a replacement keeps its slot's cores (Linux).
        cluster: run the tasks on a Dask cluster instead: a ``dask.distributed`` ``Client``,
            a ``Cluster`` (``LocalCluster(...)``) or a scheduler address
            (``"tcp://host:8786"``). Each Dask worker runs a pool of its own (one worker
            process per Dask thread); see README, "Beyond one machine". Needs the ``dask``
            extra.
        shares: weighted fair share of run time between kinds with work queued, e.g.
            ``{"etl": 3, "adhoc": 1}`` (a kind not listed weighs 1).
        circuit_breakers: per kind, a ``mppool.CircuitBreaker``: after repeated failures the
            kind's tasks fail fast with ``CircuitOpenError`` until a probe task succeeds.

    Raises:
        ValueError: for out-of-range arguments.
        BrokenPoolError: if the dispatcher process cannot be started.
    """

    def __new__(cls, *args: Any, cluster: Any = None, **kwargs: Any) -> Pool:
        if cluster is not None and cls is Pool:
            from ._cluster_pool import ClusterPool  # dask is imported only for a cluster

            return super().__new__(ClusterPool)
        return super().__new__(cls)

    def __init__(
        self,
        workers: int | Autoscale | None = None,
        *,
        cluster: Any = None,
        max_queue: int = 0,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        crash_retries: int = CRASH_RETRIES,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        aging_rate: float = DEFAULT_AGING_RATE,
        rate_limits: dict[str, str | RateLimit] | None = None,
        init_timeout: float | None = DEFAULT_INIT_TIMEOUT,
        store: str | os.PathLike[str] | None = None,
        threads_per_worker: int | str | None = "auto",
        preload: Iterable[str] = (),
        cpu_affinity: bool | Sequence[Iterable[int]] | None = None,
        shares: dict[str, float] | None = None,
        circuit_breakers: dict[str, CircuitBreaker] | None = None,
    ) -> None:
        if cluster is not None:
            raise TypeError("cluster= is handled by mppool.Pool itself, not by a subclass")
        autoscale, workers, most = sizes(workers)
        _check(max_queue, max_tasks_per_child, max_memory_per_child, aging_rate, retry)
        weights, breakers = _shares(shares), _circuit_breakers(circuit_breakers)
        limits = {
            str(kind): (lim.rate, lim.per, lim.burst)
            for kind, lim in ((k, RateLimit.parse(v)) for k, v in (rate_limits or {}).items())
        }
        self._autoscale = autoscale
        self._opts = _Options(
            0.0, timeout, retry or RetryPolicy.none(), crash_retries, "", None, None
        )
        setup = WorkerSetup(
            thread_environment(threads_per_worker, most),
            preload_modules(preload),
            core_placement(cpu_affinity, most),
        )
        journal = _open_store(store)  # a bad store fails here, before any process starts
        try:
            self._core = _Core(
                workers,
                self._opts,
                rate_limits=limits,
                max_queue=max_queue,
                max_tasks_per_child=max_tasks_per_child or 0,
                max_memory_per_child=max_memory_per_child or 0,
                initializer=initializer,
                initargs=tuple(initargs),
                aging_rate=aging_rate,
                init_timeout=_init_timeout(init_timeout),
                store=journal,
                setup=setup,
                autoscale=None if autoscale is None else autoscale.knobs(),
                slots=most,
                shares=weights,
                circuit_breakers=breakers,
            )
        except BaseException:
            if journal is not None:
                journal.close()
            raise
        _live_cores.add(self._core)
        if autoscale is not None and autoscale.policy is not None:
            self._core.policy = PolicyThread(self._core, autoscale)
        self._finalizer = weakref.finalize(self, _finalize, self._core)
        # At exit, a pool still referenced is ended by mppool's own exit hook (at once), not
        # shut down gracefully like one the program dropped.
        self._finalizer.atexit = False

    @property
    def _owner(self) -> Pool:
        return self

    @property
    def workers(self) -> int:
        """The number of worker processes (an elastic pool's current target)."""
        return self._core.workers

    def resize(self, workers: int) -> None:
        """From now on, run ``workers`` worker processes.

        Growing forks the new workers at once. Shrinking retires idle workers first; a busy
        worker that must go finishes its current task (nothing is failed or run twice), and
        what it had queued goes back to the pool's queue. An autoscaled pool accepts sizes
        within its ``min`` and ``max`` and scales on from there.

        Raises:
            ValueError: for a size that is not an int >= 1 (or outside the bounds).
            PoolClosedError: after ``shutdown()``.
        """
        send_resize(self._core, check_size(workers, self._autoscale), "resize")

    @property
    def state(self) -> str:
        """``"running"``, ``"closing"`` (shut down, finishing its work), ``"closed"`` or
        ``"broken"``."""
        return self._core.state

    @property
    def dispatcher_pid(self) -> int:
        """Process id of the dispatcher."""
        return self._core.conn.proc.pid

    def stats(self) -> PoolStats:
        """A consistent snapshot of counters, queue and workers (one round trip).

        Raises:
            PoolClosedError: after the pool has finished shutting down.
        """
        return self._core.requests.stats()

    def cancel(self, future: concurrent.futures.Future[Any], *, kill: bool = False) -> bool:
        """Cancel a task of this pool.

        Args:
            future: a future returned by this pool.
            kill: if the task is already running, kill (and replace) its worker. Without it,
                a running task finishes in the background and its result is discarded.

        Returns:
            False if the task had already finished, True otherwise (the future is cancelled).
        """
        if not isinstance(future, Future) or future._core is not self._core:
            raise ValueError("not a future of this pool")
        return future._cancel(kill=kill)

    def cancel_task(self, task_id: int, *, kill: bool = False) -> None:
        """Cancel a task by id (as in :meth:`tasks`), e.g. one submitted by another client.

        Args:
            task_id: the task's id.
            kill: if it is running, kill (and replace) its worker.
        """
        self._core.cancel_task(task_id, kill=kill)

    def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        registry: Registry | None = None,
    ) -> Server:
        """Serve this pool's HTTP API and live dashboard from a background thread.

        Needs the ``http`` extra (``pip install 'mppool[http]'``). See :func:`mppool.serve`.

        Args:
            host: address to bind; anything but loopback requires ``token``.
            port: TCP port (0: any free port; see ``server.port``).
            token: a bearer token every API request must carry.
            registry: the functions that may be submitted by name (default: the built-ins).

        Returns:
            The running server; ``close()`` it (or use it as a context manager).

        Raises:
            ValueError: for a non-loopback ``host`` without a ``token``.
        """
        from .._web._server import serve

        return serve(self, host, port, token=token, registry=registry)

    def share(self, obj: Any) -> Shared:
        """Place ``obj`` (a numpy array, anything with large buffers) in shared memory once;
        pass the handle to tasks instead. Each worker maps it read-only once and keeps it (an
        array arrives as a read-only view, never copied). Freed when the handle is garbage
        collected (tasks keep it alive until their outcome) or the pool ends."""
        return Shared(obj, self._core.shm_prefix)

    def tasks(self, state: str | None = None) -> list[TaskInfo]:
        """Live tasks (queued, delayed, running, retrying) and the most recent finished ones;
        with a job store, also the failures it keeps from earlier runs (``stored=True``).

        Args:
            state: only the tasks in this state (``"failed"``: the dead-letter list).
        """
        rows = [TaskInfo(**row) for row in self._core.requests.tasks()]
        store = self._core.store
        if store is not None and state in (None, "failed"):
            from ._stored import stored_failures

            rows += stored_failures(store, {r.key for r in rows})
        return rows if state is None else [r for r in rows if r.state == state]

    def retry_failed(self, keys: Iterable[str] | None = None) -> list[Future[Any]]:
        """Run the job store's failed tasks again (all, or those of ``keys``), each under its
        key; a success replaces the failure in the store.

        Raises:
            ValueError: if the pool has no job store.
        """
        from ._stored import retry_failed

        return retry_failed(self._core, self._opts, keys)

    def task(self, task_id: int) -> TaskInfo:
        """One task by id (``future.task_id``).

        Raises:
            KeyError: if the pool does not know it (never seen, or out of the history).
        """
        rows = self._core.requests.tasks(task_id)
        if not rows:
            raise KeyError(task_id)
        return TaskInfo(**rows[0])

    def schedule_every(
        self, interval: float, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Schedule:
        """Run ``fn(*args, **kwargs)`` every ``interval`` seconds until cancelled.

        The first run is ``interval`` seconds from now. Runs never overlap: a firing while
        the previous run is still queued or running is skipped (``handle.skipped``).

        Returns:
            A :class:`Schedule` handle: ``cancel()``, ``next_run``, ``history()``.
        """
        every = check_interval(interval)
        return self._schedule(fn, args, kwargs, every, "", f"every {every:g} s")

    def schedule_cron(
        self, expression: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Schedule:
        """Run ``fn(*args, **kwargs)`` at the times of a cron expression (local time).

        Args:
            expression: e.g. ``"*/5 * * * *"`` (every five minutes); parsed by croniter,
                which also accepts a sixth field for seconds.

        Raises:
            ValueError: if the expression is not valid.
        """
        validate_cron(expression)
        return self._schedule(fn, args, kwargs, 0.0, expression, f"cron {expression!r}")

    def _schedule(
        self, fn: Any, args: Any, kwargs: Any, every: float, cron: str, label: str
    ) -> Schedule:
        handle: Schedule = self._core.schedules.add(
            fn, args, kwargs, self._opts, every, cron, label
        )
        handle._owner = self  # a running schedule keeps its pool alive
        return handle

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None
    ) -> None:
        """Stop accepting tasks and end the pool when its work is done.

        Args:
            wait: block until every task is resolved and every process has exited.
            cancel_futures: cancel tasks that have not started.
            timeout: a hard deadline in seconds: tasks still running then are killed and
                fail with ``CancelledByShutdownError``. ``None`` waits for them.
        """
        self._core.shutdown(wait, cancel_futures, timeout)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.shutdown(wait=True)
        elif issubclass(exc_type, KeyboardInterrupt):
            # Ctrl-C: the user wants out now. Drop queued work and kill running tasks.
            self.shutdown(wait=True, cancel_futures=True, timeout=0.0)
        else:
            self.shutdown(wait=True, cancel_futures=True)

    def __repr__(self) -> str:
        return f"<mppool.Pool workers={self._core.workers} state={self._core.state}>"
