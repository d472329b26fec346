"""A cluster pool's machinery in the user process (``Pool(cluster=...)``).

Tasks run on a Dask cluster, each Dask worker running an ordinary mppool pool
(``_cluster_node``), so timeouts, crash retries and backoff work there as they do locally.
What must hold across the whole cluster is decided here, in the user process, before a task
reaches Dask:

* dedup keys: a key in flight returns its future (``keys``);
* delays and ``at`` times, rate limits per kind and schedules: one timer thread
  (:class:`Timers`) releases a task to Dask when it is due and its kind's token bucket
  (``mppool._ratelimit``) has a token; tasks waiting for a token go by priority;
* priorities order a heap here; only about ``WINDOW_SECONDS`` of work per Dask thread (at
  least ``MIN_PER_THREAD`` tasks) is in Dask at a time, so the order holds across the cluster
  (the tasks also carry Dask priorities);
* keys and function names become Dask keys.

Dask's futures are followed by one collector thread (``distributed.as_completed``, results
gathered as they finish), which resolves mppool's futures. Two threads in all, both ended by
``shutdown``, plus Dask's own client threads.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import itertools
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from .._errors import BrokenPoolError, CancelledByShutdownError, PoolClosedError
from .._ratelimit import TokenBucket
from .._stats import TaskInfo
from ._cluster_node import TRACEBACK_ATTR
from ._future import Future
from ._options import _Options
from ._serial import dumps

HISTORY = 1000  # finished tasks kept for tasks()
END_TO_END_SAMPLES = 2048  # recent end-to-end times kept for stats()
COLLECT_IDLE_SECONDS = 0.5  # the collector's wait for new work when none is in Dask
WINDOW_SECONDS = 0.05  # work per Dask thread kept in Dask (what an urgent task may wait behind)
MIN_PER_THREAD = 2  # tasks per Dask thread in Dask at least (one running, one next)
MAX_PER_THREAD = 64  # and at most
REVIEW_SECONDS = 0.2  # how often the window and the Dask threads are looked at again

QUEUED, DELAYED, RUNNING, DONE, FAILED, CANCELLED = (
    "queued",
    "delayed",
    "running",
    "done",
    "failed",
    "cancelled",
)


def connect(cluster: Any) -> tuple[Any, bool]:
    """A Dask client for ``cluster`` (a Client, a Cluster object or a scheduler address), and
    whether this pool made it (and must close it)."""
    try:
        from distributed import Client
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            "Pool(cluster=...) needs Dask distributed: pip install 'mppool[dask]'"
        ) from exc
    if isinstance(cluster, Client):
        return cluster, False
    if isinstance(cluster, str) or hasattr(cluster, "scheduler_address"):
        return Client(cluster, set_as_default=False), True
    raise TypeError(
        "cluster must be a dask.distributed Client, a Cluster (e.g. LocalCluster) or a "
        f"scheduler address such as 'tcp://host:8786', not {cluster!r}"
    )


class ClusterFuture(Future[Any]):
    """A cluster pool's future: cancelling it cancels its Dask task (and can kill it)."""

    _task: Task

    def _cancel(self, kill: bool) -> bool:
        cancelled = concurrent.futures.Future.cancel(self)
        if cancelled:
            self.set_running_or_notify_cancel()
            self._task.core.cancelled(self._task, kill)
        return cancelled


class Task:
    """One call or map chunk of a cluster pool, from submission to its outcome."""

    __slots__ = (
        "args",
        "core",
        "dask",
        "dask_key",
        "ended",
        "finished_at",
        "fn",
        "future",
        "id",
        "items",
        "key",
        "kind",
        "priority",
        "seconds",
        "sent",
        "state",
        "submitted_at",
    )

    def __init__(self, core: ClusterCore, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.core = core
        self.fn = fn  # the node function Dask runs (run_call or run_chunk) and its arguments
        self.args = args
        self.id = 0
        self.key: str | None = None
        self.kind = ""
        self.priority = 0.0
        self.items = 0
        self.state = QUEUED
        self.ended = False  # an outcome was claimed (the first of several racing wins)
        self.sent = False
        self.dask: Any = None
        self.dask_key = ""
        self.future = ClusterFuture()
        self.future._task = self
        self.submitted_at = time.time()
        self.finished_at: float | None = None
        self.seconds: float | None = None

    def info(self, running: bool) -> TaskInfo:
        state = RUNNING if running and self.state == QUEUED and self.dask else self.state
        return TaskInfo(
            id=self.id,
            key=self.key,
            kind=self.kind or None,
            priority=self.priority,
            state=state,
            attempts=1 if self.sent else 0,
            items=self.items,
            submitted_at=self.submitted_at,
            started_at=None,
            finished_at=self.finished_at,
            duration=self.seconds,
            pid=None,
        )


class Timers:
    """One thread that runs callbacks when they are due (monotonic clock)."""

    def __init__(self, name: str) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def add(self, due: float, action: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._seq), action))
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._heap)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        action = heapq.heappop(self._heap)[2]
                        break
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
                else:
                    return
            try:
                action()
            except Exception:  # an action resolves its own futures; never kill the clock
                import logging

                logging.getLogger("mppool.cluster").exception("error in a cluster pool timer")

    def stop(self, timeout: float | None) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)


class ClusterCore:
    """What a cluster pool's threads share: tasks in flight, keys, buckets, counters, state.

    Args:
        cluster: a Dask ``Client``, a ``Cluster`` or a scheduler address.
        node: keyword arguments for each Dask worker's mppool pool.
        defaults: the pool's default per-task options.
        rate_limits: kind -> (rate, per, burst).
    """

    def __init__(
        self,
        cluster: Any,
        node: dict[str, Any],
        defaults: _Options,
        rate_limits: dict[str, tuple[float, float, int]],
    ) -> None:
        from ._cluster_node import NodePlugin

        self.defaults = defaults
        self.client, self.owns_client = connect(cluster)
        self.tag = uuid.uuid4().hex[:8]
        self.name = f"mppool-{self.tag}"
        self.lock = threading.Lock()
        self.state = "running"
        self.started = time.monotonic()
        self.ids = itertools.count(1)
        self.live: dict[int, Task] = {}
        self.by_key: dict[str, Task] = {}  # Dask key -> task, while in Dask
        self.keys: dict[str, ClusterFuture] = {}
        self.history: deque[Task] = deque(maxlen=HISTORY)
        self.end_to_end: deque[float] = deque(maxlen=END_TO_END_SAMPLES)
        self.counts = dict.fromkeys(
            ("submitted", "started", "completed", "failed", "cancelled", "deduplicated"), 0
        )
        self.rate_limited_waits = 0
        now = time.monotonic()
        self.buckets = {kind: TokenBucket(*spec, now) for kind, spec in rate_limits.items()}
        # Runnable tasks of each rate-limited kind, by priority (the others are in ``ready``).
        self.held: dict[str, list[tuple[float, int, Task]]] = {k: [] for k in self.buckets}
        self.token_timers: set[str] = set()  # kinds whose next token has a timer
        self.all_done = threading.Condition(self.lock)
        self.schedules: Any = None
        try:
            self.client.register_plugin(NodePlugin(self.name, node), name=self.name)
        except BaseException as exc:
            if self.owns_client:
                self.client.close()
            raise BrokenPoolError(f"the node pools could not start: {exc!r}") from exc
        from distributed import as_completed

        self.collecting = as_completed(with_results=True, raise_errors=False, loop=self.client.loop)
        self.in_dask = 0  # tasks handed to Dask and not yet collected
        self.ready: list[tuple[float, int, Task]] = []  # runnable, by priority, not in Dask
        self.threads = max(1, sum(self.client.nthreads().values()))
        self.timers = Timers(f"mppool-cluster-timers-{self.tag}")
        self.per_thread = MIN_PER_THREAD  # tasks per Dask thread the window holds (_review)
        self.collected = self.collected_then = 0
        self.reviewed_at = time.monotonic()
        self.timers.add(self.reviewed_at + REVIEW_SECONDS, self._review)
        self.collector = threading.Thread(
            target=self._collect, name=f"mppool-cluster-results-{self.tag}", daemon=True
        )
        self.collector.start()

    @property
    def workers(self) -> int:
        """Dask threads in the cluster (one node-pool worker each; counted every second)."""
        return self.threads

    # --- submitting -------------------------------------------------------------------------
    def check_open(self) -> None:
        if self.state != "running":
            if self.state == "broken":
                raise BrokenPoolError("the cluster pool is broken")
            raise PoolClosedError("the pool has been shut down")

    def node_options(self, opts: _Options) -> dict[str, Any]:
        return {
            "timeout": opts.timeout,
            "retries": opts.retry,
            "crash_retries": opts.crash_retries,
        }

    def submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        opts: _Options,
        block: bool = True,
        timeout: float | None = None,
    ) -> Future[Any]:
        """Submit one call (``block`` and ``timeout`` are accepted for a local pool's
        signature: a cluster pool has no bounded queue)."""
        from ._cluster_node import run_call

        if opts.key is not None and not isinstance(opts.key, str):
            raise TypeError("a key for submit must be a string (a callable key is for map)")
        self.check_open()
        with self.lock:
            known = self.keys.get(opts.key) if opts.key is not None else None
            if known is not None and not known.done():
                self.counts["deduplicated"] += 1
                return known
        blob = dumps((fn, args, kwargs), f"the call of {getattr(fn, '__qualname__', fn)!r}")
        task = Task(self, run_call, (self.name, blob, self.node_options(opts)))
        name = str(opts.key or getattr(fn, "__name__", "task"))
        return self.add(task, opts, name).future

    def add(self, task: Task, opts: _Options, name: str) -> Task:
        """Register ``task`` and release it to Dask now or when it is due."""
        task.kind, task.priority = opts.kind, opts.priority
        with self.lock:
            self.check_open()
            if opts.key is not None and isinstance(opts.key, str):
                known = self.keys.get(opts.key)
                if known is not None and not known.done():
                    self.counts["deduplicated"] += 1
                    return known._task
                self.keys[opts.key] = task.future
                task.key = opts.key
            task.id = task.future._task_id = next(self.ids)
            task.dask_key = f"{name}-{self.tag}{task.id}"
            self.live[task.id] = task
            self.counts["submitted"] += 1
        wait = opts.delay or (opts.at - time.time() if opts.at is not None else 0.0)
        if wait and wait > 0:
            task.state = DELAYED
            self.timers.add(time.monotonic() + wait, lambda: self.release(task))
        else:
            self.release(task)
        return task

    def release(self, task: Task) -> None:
        """The task is due: queue it by priority (with its kind's, if the kind is limited);
        it goes to Dask when the window has room (and its kind a token)."""
        if task.future.done():
            return
        task.state = QUEUED
        with self.lock:
            queue = self.held.get(task.kind, self.ready)
            heapq.heappush(queue, (-task.priority, task.id, task))
        self.pump()

    def _next(self) -> Task | None:
        """Under ``lock``: the most urgent task that may go to Dask now, taken off its queue.

        A task of a rate-limited kind takes its kind's token here, as it leaves, and leaves
        only while a Dask thread is idle (fewer of this pool's tasks in Dask than threads):
        Dask then starts it at once, so starts on the nodes keep the rate, give or take the
        network's latency. A kind without a token wakes the pump when its next one is due.
        """
        room = self.per_thread * self.threads - self.in_dask
        best: list[tuple[float, int, Task]] | None = self.ready if self.ready else None
        now = time.monotonic()
        for kind, held in self.held.items():
            while held and held[0][2].ended:
                heapq.heappop(held)
            if not held or self.in_dask >= self.threads:
                continue
            if best is not None and best[0] <= held[0]:
                continue
            bucket = self.buckets[kind]
            if bucket.tokens_now(now):
                best = held
            elif kind not in self.token_timers:
                self.rate_limited_waits += 1  # the kind found its bucket empty
                self.token_timers.add(kind)
                self.timers.add(bucket.next_token_at(now), self._token_due(kind))
        if best is None or room <= 0:
            return None
        task = heapq.heappop(best)[2]
        if best is not self.ready:
            self.buckets[task.kind].take(now)
        return task

    def _token_due(self, kind: str) -> Callable[[], None]:
        def due() -> None:
            with self.lock:
                self.token_timers.discard(kind)
            self.pump()

        return due

    def pump(self) -> None:
        """Hand the most urgent runnable tasks to Dask while its window has room. Dask orders
        what it holds by priority too, but it assigns a new task to an idle worker at once and
        queues only some kinds of tasks, so the order across the cluster is kept here, as the
        dispatcher keeps it on one machine."""
        while True:
            with self.lock:
                if self.state == "broken":
                    return
                task = self._next()
                if task is None:
                    return
                if task.ended:
                    continue
                self.in_dask += 1
                task.sent = True
                self.by_key[task.dask_key] = task
                self.counts["started"] += 1
            try:
                dask_future = self.client.submit(
                    task.fn, *task.args, key=task.dask_key, priority=task.priority, pure=False
                )
            except Exception as exc:
                with self.lock:
                    self.in_dask -= 1
                    del self.by_key[task.dask_key]
                self.finish(task, None, exc)
                continue
            with self.lock:
                task.dask = dask_future
                self.all_done.notify_all()
            self.collecting.add(dask_future)

    def _review(self) -> None:
        """Every ``REVIEW_SECONDS`` (timer thread): count the Dask threads (the cluster may
        have grown) and size the window.

        The window holds about ``WINDOW_SECONDS`` of work per thread: enough tasks that a
        thread never waits for the round trip to this process between two of them, few
        enough that an urgent task waits behind little. A task's cost is measured by the
        throughput while work is waiting here (threads x interval / tasks collected); while
        the window is too small the throughput is held back by the round trip, the measured
        cost looks larger than it is, and the window grows each review until it no longer
        does."""
        try:
            self.threads = max(1, sum(self.client.nthreads().values()))
        except Exception:
            pass
        now = time.monotonic()
        with self.lock:
            collected, self.collected_then = self.collected - self.collected_then, self.collected
            waiting = bool(self.ready) or any(self.held.values())
            if collected and waiting:
                cost = self.threads * (now - self.reviewed_at) / collected
                wanted = math.ceil(WINDOW_SECONDS / cost)
                self.per_thread = max(MIN_PER_THREAD, min(MAX_PER_THREAD, wanted))
            self.reviewed_at = now
        if self.state != "closed":
            self.timers.add(now + REVIEW_SECONDS, self._review)
        self.pump()

    # --- outcomes ---------------------------------------------------------------------------
    def _collect(self) -> None:
        """The collector thread: resolve each task as Dask finishes it."""
        while True:
            with self.lock:
                while self.in_dask == 0:
                    if self.state in ("closed", "broken"):
                        return
                    self.all_done.wait(COLLECT_IDLE_SECONDS)
            got = 0
            for batch in self.collecting.batches():
                got += len(batch)
                for dask_future, outcome in batch:
                    self._outcome(dask_future, outcome)
            if not got:  # counted, not yet handed to as_completed: a moment away
                with self.lock:
                    self.all_done.wait(0.01)

    def _outcome(self, dask_future: Any, outcome: Any) -> None:
        with self.lock:
            task = self.by_key.pop(dask_future.key, None)
            self.in_dask -= 1
            self.collected += 1
        self.pump()
        if task is None:
            return
        task.dask = None
        status = dask_future.status
        if status == "finished":
            self.finish(task, outcome, None)
        elif status == "error" and isinstance(outcome, tuple):  # (type, exception, traceback)
            self.finish(task, None, with_node_traceback(outcome[1]))
        elif isinstance(outcome, BaseException):
            self.finish(task, None, outcome)
        else:
            self.finish(task, None, RuntimeError(f"the Dask task ended as {status!r}"))

    def finish(self, task: Task, value: Any, error: BaseException | None) -> None:
        """Resolve ``task``'s future (unless it was cancelled) and forget the task. Only the
        first outcome counts: the shutdown deadline and Dask's answer may race."""
        with self.lock:
            if task.ended:
                return
            task.ended = True
        try:
            task.future._finish(value, error)
            state = DONE if error is None else FAILED
        except concurrent.futures.InvalidStateError:
            state = CANCELLED  # cancelled meanwhile; counted there
        self._forget(task, state)

    def _forget(self, task: Task, state: str) -> None:
        with self.lock:
            if self.live.pop(task.id, None) is None:
                return
            task.state = state
            task.finished_at = time.time()
            self.end_to_end.append(task.finished_at - task.submitted_at)
            if state == DONE:
                self.counts["completed"] += 1
            elif state == FAILED:
                self.counts["failed"] += 1
            else:
                self.counts["cancelled"] += 1
            if task.key is not None and self.keys.get(task.key) is task.future:
                del self.keys[task.key]
            self.history.append(task)
            self.all_done.notify_all()

    def cancelled(self, task: Task, kill: bool) -> None:
        """``task``'s future was cancelled: cancel its Dask task and, with ``kill``, kill it
        where it runs (a Dask worker cannot stop a running task; its node pool can)."""
        with self.lock:
            task.ended = True
            dask_future = task.dask
        self._forget(task, CANCELLED)
        if dask_future is not None:
            self.client.cancel([dask_future], asynchronous=False)
            if kill:
                self.kill([task.dask_key])

    def kill(self, keys: list[str]) -> None:
        from ._cluster_node import kill

        try:
            self.client.run(kill, self.name, keys, on_error="ignore")
        except Exception:
            pass  # a worker that left has nothing of ours to kill

    def cancel_task(self, task_id: int, *, kill: bool = False) -> None:
        with self.lock:
            task = self.live.get(task_id)
        if task is not None:
            task.future._cancel(kill)

    # --- ending -----------------------------------------------------------------------------
    def shutdown(self, wait: bool, cancel_futures: bool, timeout: float | None) -> None:
        with self.lock:
            first = self.state == "running"
            if first:
                self.state = "closing"
        if first and self.schedules is not None:
            self.schedules.stop()
        if cancel_futures:
            with self.lock:
                waiting = [t for t in self.live.values() if t.dask is None]
            for task in waiting:
                task.future.cancel()
        if not wait:
            threading.Thread(target=self._close, args=(timeout,), daemon=True).start()
            return
        self._close(timeout)

    def _close(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            self.all_done.wait_for(
                lambda: not self.live or self.state == "closed",
                None if deadline is None else max(0.0, deadline - time.monotonic()),
            )
            if self.state == "closed":
                return
            left = list(self.live.values())
        running = [t.dask_key for t in left if t.dask is not None]
        for task in left:
            if task.dask is not None:
                self.client.cancel([task.dask], asynchronous=False)
            self.finish(task, None, CancelledByShutdownError("killed at the shutdown deadline"))
        if running:
            self.kill(running)
        self.end()

    def end(self) -> None:
        with self.lock:
            if self.state == "closed":
                return
            self.state = "closed"
            self.all_done.notify_all()
        self.timers.stop(10.0)
        try:
            self.client.unregister_worker_plugin(self.name)
        except Exception:
            pass  # the cluster is gone already: so are the node pools
        if threading.current_thread() is not self.collector:
            self.collector.join(10.0)
        if self.owns_client:
            self.client.close()


def with_node_traceback(exc: BaseException) -> BaseException:
    """A task's exception from a node, with the node worker's traceback as its cause (as a
    local pool gives it)."""
    text = exc.__dict__.pop(TRACEBACK_ATTR, None) if hasattr(exc, "__dict__") else None
    if text:
        from .._errors import RemoteTraceback

        exc.__cause__ = RemoteTraceback(text)
    return exc
