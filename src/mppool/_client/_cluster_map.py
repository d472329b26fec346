"""A cluster pool's ``map`` and schedules (user process).

``map`` cuts its input into chunks sized by the same :class:`ChunkPlanner` as a local pool,
aiming at ``CLUSTER_CHUNK_SECONDS`` of work per chunk: each chunk is one Dask task, and a
Dask task costs around a millisecond, so tiny items are carried many to a task. Each node
runs its chunk through its own pool's ``map``. At most ``WINDOW_PER_THREAD`` chunks per Dask
thread are in flight; the input is read as results are consumed (lazy, bounded).

Schedules fire on the cluster pool's timer thread and submit like any call; a run never
overlaps the previous one (a firing while it is unfinished is skipped).
"""

from __future__ import annotations

import concurrent.futures
import logging
import pickle
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ._cluster import ClusterCore
from ._cluster_tasks import Task, cost_key, with_node_traceback
from ._options import _Options
from ._planner import ChunkPlanner, Progress, Reporter
from ._schedule import Run, Schedule, first_run
from ._serial import dumps

CLUSTER_CHUNK_SECONDS = 0.1  # work per Dask task a map aims at
WINDOW_PER_THREAD = 2  # chunks in flight per Dask thread
FED_CHUNK = 1024  # items per chunk of an input of unknown length fed with nothing measured


class ClusterMap:
    """One ``map`` or ``imap_unordered`` over a cluster pool.

    The input is read on the consumer's thread, a window of chunks ahead. A graceful
    shutdown, or dropping the map before iterating it, feeds the rest of the input at once
    (:meth:`feed_all`), so every item runs, as on a local pool.
    """

    def __init__(
        self,
        core: ClusterCore,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        opts: _Options,
        ordered: bool,
        chunksize: int | None,
        timeout: float | None,
        progress: Progress,
        owner: Any,
    ) -> None:
        if opts.key is not None:
            raise ValueError("options(key=...) is not available for map on a cluster pool")
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        core.check_open()
        self.core, self.opts, self.ordered = core, opts, ordered
        self.owner = owner  # keeps the pool alive while the map is used
        self.name = getattr(fn, "__qualname__", repr(fn))
        self.fn_blob = dumps(fn, f"the function of map({self.name})")
        self.cost_key = "map " + cost_key(fn)  # a chunk's cost, not a call's
        self.node_options = core.node_options(opts)
        self.input: Iterator[tuple[Any, ...]] = zip(*iterables, strict=False)
        total = _length(iterables)
        self.remaining = total
        self.planner = ChunkPlanner(core.workers, chunksize, target=CLUSTER_CHUNK_SECONDS)
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.inflight: deque[Task] = deque()
        self.lock = threading.Lock()  # the input and the chunks in flight
        self.input_error: BaseException | None = None
        self.exhausted = False
        self.started = False
        self.closed = threading.Event()
        self.progress = Reporter(progress, total, self.name)
        core.maps.add(self)

    def results(self) -> Iterator[Any]:
        gen = self._consume()
        weakref.finalize(gen, ClusterMap._dropped, self)
        return gen

    def _dropped(self) -> None:
        """The results were dropped: if never iterated, the map runs in the background, fed
        by a thread of its own (failures are logged, as a local pool's are)."""
        if not self.started and not self.closed.is_set():
            name = f"mppool-cluster-map-{self.core.tag}"
            feeder = threading.Thread(target=self._run_unread, name=name, daemon=True)
            self.core.feeders.append(feeder)
            feeder.start()

    def _run_unread(self) -> None:
        self.feed_all(None)
        with self.lock:
            tasks = list(self.inflight)
        for task in tasks:
            task.future.add_done_callback(self._log_failure)
        self.core.maps.discard(self)

    def _log_failure(self, future: concurrent.futures.Future[Any]) -> None:
        if future.cancelled():
            return
        error = future.exception() or future.result()[1]
        if error is not None:
            logging.getLogger("mppool.map").error(
                "map(%s) was never iterated; it ran in the background and a part failed: %r",
                self.name,
                error,
            )

    def _consume(self) -> Iterator[Any]:
        self.started = True
        try:
            while not self.closed.is_set():
                self._fill(self.window())
                task = self._next_done()
                if task is None:
                    break
                try:
                    results, error, seconds = task.future.result(0)
                except concurrent.futures.CancelledError:
                    if self.closed.is_set():
                        return
                    raise
                self.planner.observe(max(1, task.items), seconds)
                self.progress.advance(len(results))
                yield from results
                if error is not None:
                    raise with_node_traceback(error)
            if self.input_error is not None and not self.closed.is_set():
                raise self.input_error
        finally:
            self.progress.close()
            self.close()

    def window(self) -> int:
        """Chunks in flight at most: ``WINDOW_PER_THREAD`` per Dask thread (counted anew, so
        a cluster that grows during the map is used)."""
        workers = self.core.workers
        self.planner.workers = workers
        return WINDOW_PER_THREAD * workers

    def _next_done(self) -> Task | None:
        """The next chunk to consume (in order, or the first to finish); None at the end."""
        with self.lock:
            tasks = list(self.inflight)
        if not tasks:
            return None
        left = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
        if self.ordered:
            done, _ = concurrent.futures.wait([tasks[0].future], left)
        else:
            done, _ = concurrent.futures.wait([t.future for t in tasks], left, "FIRST_COMPLETED")
        if not done:
            raise TimeoutError(f"map({self.name}) did not finish within its timeout")
        with self.lock:
            for i, t in enumerate(self.inflight):
                if t.future in done:
                    del self.inflight[i]
                    return t
        raise AssertionError("a finished chunk is not in flight")  # pragma: no cover

    def feed_all(self, deadline: float | None) -> None:
        """Send the rest of the input now (a graceful shutdown, or a map nobody reads), in
        chunks of a quarter of the input per worker while none has been measured; reading
        stops at ``deadline`` (a shutdown's hard deadline)."""
        self._fill(None, fed=True, deadline=deadline)

    def _fill(self, window: int | None, fed: bool = False, deadline: float | None = None) -> None:
        """Send chunks until ``window`` are in flight or the input is exhausted."""
        from ._cluster_node import run_chunk

        with self.lock:
            while not self.exhausted and (window is None or len(self.inflight) < window):
                if self.closed.is_set() or (deadline is not None and time.monotonic() > deadline):
                    return
                size = self.planner.next_size(self.remaining)
                if fed and self.planner.per_item is None and self.planner.fixed is None:
                    # Nothing measured (nobody reads the results): do not send item by item.
                    left, workers = self.remaining, self.core.workers
                    size = FED_CHUNK if left is None else max(1, -(-left // (4 * workers)))
                items = self._read(size)
                if not items:
                    return
                blob = self._pack(items)
                call = (self.core.name, self.fn_blob, blob, self.node_options)
                task = Task(self.core, run_chunk, call, f"map-{self.name}")
                task.items, task.cost_key = len(items), self.cost_key
                self.inflight.append(self.core.add(task, self.opts, fed=fed))

    def _read(self, size: int) -> list[tuple[Any, ...]]:
        items: list[tuple[Any, ...]] = []
        try:
            for item in self.input:
                items.append(item)
                if len(items) >= size:
                    break
            else:
                self.exhausted = True
        except Exception as exc:
            self.input_error, self.exhausted = exc, True
        if self.remaining is not None:
            self.remaining -= len(items)
        return items

    def _pack(self, items: list[tuple[Any, ...]]) -> bytes:
        try:
            blob = pickle.dumps(items, pickle.HIGHEST_PROTOCOL)
            if b"__main__" not in blob:
                return blob
        except Exception:
            pass
        return dumps(items, f"the items of map({self.name})")  # cloudpickle: lambdas too

    def close(self) -> None:
        """Stop early: cancel the chunks in flight (running ones finish on their node)."""
        if self.closed.is_set():
            return
        self.closed.set()
        self.owner = None
        with self.lock:
            tasks = list(self.inflight)
            self.inflight.clear()
        for task in tasks:
            task.future.cancel()
        self.core.maps.discard(self)


def _length(iterables: tuple[Iterable[Any], ...]) -> int | None:
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except TypeError:
        return None


class ClusterSchedules:
    """A cluster pool's schedules, fired by its timer thread."""

    def __init__(self, core: ClusterCore) -> None:
        self.core = core
        self.lock = threading.Lock()
        self.handles: dict[int, Schedule] = {}

    def add(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        opts: _Options,
        interval: float,
        cron: str,
        description: str,
    ) -> Schedule:
        core = self.core
        core.check_open()
        dumps((fn, args, kwargs), "a scheduled call")  # a call that cannot be sent fails here
        handle = Schedule(core, -next(core.ids), description)  # type: ignore[arg-type]
        with self.lock:
            self.handles[handle.id] = handle
        run_opts = opts.replace(delay=None, at=None, key=None)
        state: dict[str, Any] = {"last": None, "skipped": 0}

        def fire(due: float) -> None:
            """A firing due at wall-clock ``due``; the next is counted from ``due``, not from
            now (a fixed rate; cron's next time after this one), skipping times missed."""
            with self.lock:
                if handle.id not in self.handles or core.state != "running":
                    return
            now = time.time()
            next_run = first_run(interval, cron, due)
            while next_run <= now:
                next_run = first_run(interval, cron, next_run)
            last = state["last"]
            handle._next_run = next_run
            if last is not None and not last.done():
                state["skipped"] += 1
                handle._skipped = state["skipped"]
            else:
                try:
                    future = core.submit(fn, args, kwargs, run_opts)
                except Exception as exc:  # the run fails visibly; the schedule goes on
                    handle._fired(0, next_run, state["skipped"])
                    handle._record(Run(0, False, error=exc))
                else:
                    state["last"] = future
                    handle._fired(future.task_id, next_run, state["skipped"])
                    future.add_done_callback(lambda f: _record(handle, f))
            core.timers.add(time.monotonic() + (next_run - now), lambda: fire(next_run))

        first = first_run(interval, cron, time.time())
        handle._next_run = first
        core.timers.add(time.monotonic() + (first - time.time()), lambda: fire(first))
        return handle

    def cancel(self, schedule_id: int) -> None:
        with self.lock:
            self.handles.pop(schedule_id, None)

    def stop(self) -> None:
        with self.lock:
            handles, self.handles = list(self.handles.values()), {}
        for handle in handles:
            handle._cancelled = True


def _record(handle: Schedule, future: concurrent.futures.Future[Any]) -> None:
    task_id = getattr(future, "task_id", 0)
    if future.cancelled():
        return
    error = future.exception()
    if error is None:
        handle._record(Run(task_id, True, value=future.result()))
    else:
        handle._record(Run(task_id, False, error=error))
