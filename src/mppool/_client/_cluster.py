"""A cluster pool's machinery in the user process (``Pool(cluster=...)``).

Tasks run on a Dask cluster, each Dask worker running an ordinary mppool pool
(``_cluster_node``), so timeouts, crash retries and backoff work there as they do locally.
What must hold across the whole cluster is decided here, in the user process, before a task
reaches Dask:

* dedup keys: a key in flight returns its future (``keys``);
* delays, ``at`` times, token waits and schedules run on one timer thread (:class:`Timers`);
* priorities order a heap of runnable tasks (one per rate-limited kind besides); only a
  window of them is in Dask at a time: about ``WINDOW_SECONDS`` of work per Dask thread by
  each function's measured cost (at least ``MIN_PER_THREAD`` tasks, at most
  ``MAX_PER_THREAD``), so the order holds across the cluster (the tasks also carry Dask
  priorities);
* a task of a rate-limited kind spends its kind's token (``mppool._ratelimit``) as it
  leaves for Dask, and leaves at once for an idle Dask thread, or into the window when it
  outranks the other work;
* keys and function names become Dask keys.

One collector thread follows Dask's futures (``distributed.as_completed``), gathers the
results of each finished batch in one call, and resolves mppool's futures. Two threads in
all, both ended by ``shutdown``, besides Dask's own client threads.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import itertools
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from .._errors import (
    BrokenPoolError,
    CancelledByShutdownError,
    PoolClosedError,
    SerializationError,
)
from .._ratelimit import TokenBucket
from .._stats import TaskInfo
from ._cluster_tasks import (
    CANCELLED,
    DELAYED,
    DONE,
    FAILED,
    QUEUED,
    ClusterFuture,
    Costs,
    Task,
    Timers,
    connect,
    cost_key,
    with_node_traceback,
)
from ._future import Future
from ._options import _Options
from ._serial import dumps

HISTORY = 1000  # finished tasks kept for tasks()
END_TO_END_SAMPLES = 2048  # recent end-to-end times kept for stats()
COLLECT_IDLE_SECONDS = 0.5  # the collector's wait for new work when none is in Dask
WINDOW_SECONDS = 0.05  # work per Dask thread kept in Dask (what an urgent task may wait behind)
MIN_PER_THREAD = 2  # tasks per Dask thread in Dask at least (one running, one next)
MAX_PER_THREAD = 64  # and at most
THREADS_SECONDS = 1.0  # how often the Dask threads are counted again
CLOSE_SECONDS = 10.0  # the longest a client this pool made may take to close


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
        from distributed import as_completed

        from ._cluster_node import NodePlugin

        self.defaults = defaults
        self.client, self.owns_client = connect(cluster)
        self.address = str(self.client.scheduler.address)
        self.tag = uuid.uuid4().hex[:8]
        self.name = f"mppool-{self.tag}"
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.state = "running"
        self.started = time.monotonic()
        self.ids = itertools.count(1)
        self.live: dict[int, Task] = {}
        self.by_key: dict[str, Task] = {}  # Dask key -> task, while in Dask
        self.keys: dict[str, ClusterFuture] = {}
        self.history: deque[TaskInfo] = deque(maxlen=HISTORY)
        self.end_to_end: deque[float] = deque(maxlen=END_TO_END_SAMPLES)
        self.counts = dict.fromkeys(
            ("submitted", "started", "completed", "failed", "cancelled", "deduplicated"), 0
        )
        self.rate_limited_waits = 0
        now = time.monotonic()
        self.buckets = {kind: TokenBucket(*spec, now) for kind, spec in rate_limits.items()}
        # Runnable tasks by priority: of each rate-limited kind, and of all the others.
        self.held: dict[str, list[tuple[float, int, Task]]] = {k: [] for k in self.buckets}
        self.ready: list[tuple[float, int, Task]] = []
        self.token_timers: set[str] = set()  # kinds whose next token has a timer
        self.costs = Costs()
        self.in_dask = 0  # tasks handed to Dask and not yet collected
        self.in_dask_work = 0.0  # their estimated seconds
        self.schedules: Any = None
        self.maps: set[Any] = set()  # open maps, fed to the end by a graceful shutdown
        self.feeders: list[threading.Thread] = []  # feeding maps nobody reads
        self.closing_thread: threading.Thread | None = None  # failing tasks at the deadline
        try:
            self.client.register_plugin(NodePlugin(self.name, node), name=self.name)
            self.threads = max(1, sum(self.client.nthreads().values()))
        except BaseException as exc:
            self._disconnect()
            raise BrokenPoolError(f"the node pools could not start: {exc!r}") from exc
        self.collecting = as_completed(loop=self.client.loop)
        self.timers = Timers(f"mppool-cluster-timers-{self.tag}")
        self.timers.add(time.monotonic() + THREADS_SECONDS, self._count_threads)
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
                raise BrokenPoolError("the cluster pool is broken: its Dask client is gone")
            raise PoolClosedError("the pool has been shut down")

    def node_options(self, opts: _Options) -> dict[str, Any]:
        return {"timeout": opts.timeout, "retries": opts.retry, "crash_retries": opts.crash_retries}

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
        name = getattr(fn, "__name__", "task")
        blob = dumps((fn, args, kwargs), f"the call of {name!r}")
        task = Task(self, run_call, (self.name, blob, self.node_options(opts)), name)
        task.cost_key = cost_key(fn)
        return self.add(task, opts).future

    def add(self, task: Task, opts: _Options, fed: bool = False) -> Task:
        """Register ``task`` and release it now or when it is due (``fed``: a map's chunk,
        which a graceful shutdown still takes)."""
        task.kind, task.priority = opts.kind, opts.priority
        with self.lock:
            if not (fed and self.state == "closing"):
                self.check_open()
            if isinstance(opts.key, str):
                known = self.keys.get(opts.key)
                if known is not None and not known.done():
                    self.counts["deduplicated"] += 1
                    return known._task
                self.keys[opts.key] = task.future
                task.key = opts.key
            task.id = task.future._task_id = next(self.ids)
            task.dask_key = f"{opts.key or task.name}-{self.tag}{task.id}"
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
        """The task is due: queue it by priority (with its kind's, if the kind is limited)."""
        if task.future.done():
            return
        task.state = QUEUED
        with self.lock:
            queue = self.held.get(task.kind, self.ready)
            heapq.heappush(queue, (-task.priority, task.id, task))
        self.pump()

    def _room(self, cost: float) -> bool:
        """Under ``lock``: whether the window takes one more task of ``cost`` seconds."""
        if self.in_dask < MIN_PER_THREAD * self.threads:
            return True
        if self.in_dask >= MAX_PER_THREAD * self.threads:
            return False
        return self.in_dask_work + cost <= WINDOW_SECONDS * self.threads

    def _next(self) -> Task | None:
        """Under ``lock``: the most urgent task that may go to Dask now, taken off its queue.

        A task of a rate-limited kind takes its kind's token as it leaves. It leaves at once
        for an idle Dask thread (fewer of this pool's tasks in Dask than threads), so Dask
        starts it within the network's latency of its token; or into the window when it
        outranks every other runnable task. A kind without a token wakes the pump when its
        next one is due.
        """
        now = time.monotonic()
        best = self.ready if self.ready else None
        for kind, held in self.held.items():
            while held and held[0][2].ended:
                heapq.heappop(held)
            if not held or (best is not None and best[0] <= held[0]):
                continue
            if not self.ready and self.in_dask >= self.threads:
                continue  # nothing else waits: wait for an idle thread, for an exact start
            bucket = self.buckets[kind]
            if bucket.tokens_now(now):
                best = held
            elif kind not in self.token_timers:
                self.rate_limited_waits += 1  # the kind found its bucket empty
                self.token_timers.add(kind)
                self.timers.add(bucket.next_token_at(now), self._token_due(kind))
        if best is None:
            return None
        task = best[0][2]
        cost = self.costs.of(task.cost_key)
        if not task.ended and not self._room(cost):
            return None
        heapq.heappop(best)
        if best is not self.ready:
            self.buckets[task.kind].take(now)
        task.cost = cost
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
                if self.state in ("broken", "closed"):
                    return
                task = self._next()
                if task is None:
                    return
                if task.ended:
                    continue
                self.in_dask += 1
                self.in_dask_work += task.cost
                task.sent = True
                self.by_key[task.dask_key] = task
                self.counts["started"] += 1
            try:
                dask_future = self.client.submit(
                    task.fn, *task.args, key=task.dask_key, priority=task.priority, pure=False
                )
            except Exception as exc:
                self._left_dask(task)
                if self.connected():
                    self.finish(task, None, exc)
                else:
                    self._lost(task, "not sent", exc)
                continue
            self.collecting.add(dask_future)
            with self.lock:
                task.dask = dask_future
                cancelled, kill = task.ended, task.kill  # cancelled while being submitted
                self.changed.notify_all()  # the collector may be waiting for work
            if cancelled:
                self._cancel_in_dask(task, dask_future, kill)

    def _left_dask(self, task: Task) -> bool:
        """The task is out of Dask: free its place in the window (once)."""
        with self.lock:
            if self.by_key.pop(task.dask_key, None) is None:
                return False
            self.in_dask -= 1
            self.in_dask_work -= task.cost
            self.changed.notify_all()
        return True

    def _count_threads(self) -> None:
        """Every ``THREADS_SECONDS`` (timer thread): the cluster may have grown or shrunk."""
        try:
            if self.connected():
                self.threads = max(1, sum(self.client.nthreads().values()))
        except Exception:
            pass
        if self.state != "closed":
            self.timers.add(time.monotonic() + THREADS_SECONDS, self._count_threads)
        self.pump()

    # --- outcomes ---------------------------------------------------------------------------
    def _collect(self) -> None:
        """The collector thread: resolve each task as Dask finishes it."""
        while True:
            with self.lock:
                while self.in_dask == 0:
                    if self.state in ("closed", "broken"):
                        return
                    self.changed.wait(COLLECT_IDLE_SECONDS)
            got = 0
            for batch in self.collecting.batches():
                got += len(batch)
                self._outcomes(batch)
            if not got:  # counted, not yet handed to as_completed: a moment away
                with self.lock:
                    self.changed.wait(0.01)

    def _outcomes(self, batch: list[Any]) -> None:
        """Resolve a batch of finished Dask futures; the results come in one gather."""
        finished = [f for f in batch if f.status == "finished"]
        values = self._gather(finished)
        for dask_future in batch:
            with self.lock:
                task = self.by_key.get(dask_future.key)
            if task is None or not self._left_dask(task):
                continue
            self.pump()
            task.dask = None
            status = dask_future.status
            if dask_future.key in values:
                ok, value = values[dask_future.key]
                if ok:
                    self._done(task, value)
                else:
                    self.finish(task, None, value)
            elif status == "error":
                self.finish(task, None, with_node_traceback(dask_future.exception()))
            else:  # cancelled by Dask itself: the client or the cluster went away
                self._lost(task, status)

    def _gather(self, finished: list[Any]) -> dict[str, tuple[bool, Any]]:
        if not finished:
            return {}
        try:
            got = self.client.gather(finished)
            return {f.key: (True, v) for f, v in zip(finished, got, strict=True)}
        except Exception:
            pass
        values: dict[str, tuple[bool, Any]] = {}
        for f in finished:  # one by one: only the ones that fail here fail
            try:
                values[f.key] = (True, self.client.gather([f])[0])
            except Exception as exc:
                err = SerializationError(f"the task's result could not be received: {exc!r}")
                err.__cause__ = exc
                values[f.key] = (False, err)
        return values

    def _done(self, task: Task, value: Any) -> None:
        """A node's answer: a call's ``(value, seconds)``, a chunk's ``(results, error,
        seconds)``; the seconds teach the window what the function costs."""
        self.costs.observe(task.cost_key, value[-1])
        self.finish(task, value if task.items else value[0], None)

    def connected(self) -> bool:
        """Whether the client still talks to the cluster (calls to a lost one would wait for
        Dask's connect timeouts)."""
        return getattr(self.client, "status", "running") in ("running", "newly-created")

    def _lost(self, task: Task, status: str, cause: BaseException | None = None) -> None:
        """Dask ended (or refused) a task we did not cancel. If the client has lost the
        cluster, the pool is broken and every task it holds fails: none is left waiting."""
        client_status = getattr(self.client, "status", "running")
        error = BrokenPoolError(f"Dask dropped the task ({status}; client {client_status})")
        error.__cause__ = cause
        broken = not self.connected() and client_status != "connecting"
        with self.lock:
            if broken and self.state in ("running", "closing"):
                self.state = "broken"
                self.changed.notify_all()
            tasks = list(self.live.values()) if broken else [task]
        for t in tasks:
            self.finish(t, None, error)

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
            task.args = ()  # the payload goes; a row of the history stays
            now = time.time()
            self.end_to_end.append(now - task.submitted_at)
            self.counts[{DONE: "completed", FAILED: "failed"}.get(state, "cancelled")] += 1
            if task.key is not None and self.keys.get(task.key) is task.future:
                del self.keys[task.key]
            self.history.append(task.info(False, now))
            self.changed.notify_all()

    def cancelled(self, task: Task, kill: bool) -> None:
        """``task``'s future was cancelled: cancel its Dask task and, with ``kill``, kill it
        where it runs (a Dask worker cannot stop a running task; its node pool can)."""
        with self.lock:
            task.ended = True
            task.kill = kill
            dask_future = task.dask  # None while being submitted: pump() cancels it then
        self._forget(task, CANCELLED)
        if dask_future is not None:
            self._cancel_in_dask(task, dask_future, kill)

    def _cancel_in_dask(self, task: Task, dask_future: Any, kill: bool) -> None:
        try:
            self.client.cancel([dask_future], asynchronous=False)
        except Exception:
            pass  # the client is closing: its tasks go with it
        if kill:
            self.kill([task.dask_key])

    def kill(self, keys: list[str]) -> None:
        from ._cluster_node import kill

        if not self.connected():
            return
        try:
            self.client.run(kill, self.name, keys, on_error="ignore")
        except Exception:
            pass  # a worker that left has nothing of ours to kill

    def cancel_task(self, task_id: int, *, kill: bool = False) -> None:
        with self.lock:
            task = self.live.get(task_id)
        if task is not None:
            task.future._cancel(kill)

    def running_keys(self) -> set[str]:
        """Dask keys of this pool that a Dask worker is processing now."""
        if not self.connected():
            return set()
        try:
            processing = self.client.processing()
        except Exception:
            return set()
        return {str(k) for keys in processing.values() for k in keys if self.tag in str(k)}

    # --- ending -----------------------------------------------------------------------------
    def shutdown(self, wait: bool, cancel_futures: bool, timeout: float | None) -> None:
        with self.lock:
            first = self.state == "running"
            if first:
                self.state = "closing"
        if first and self.schedules is not None:
            self.schedules.stop()
        deadline = None if timeout is None else time.monotonic() + timeout
        for mapping in list(self.maps):
            if cancel_futures:
                mapping.close()  # what it has not sent is dropped with the queue
            else:  # a map not consumed yet still runs to its end (or to the deadline)
                mapping.feed_all(deadline)
        if cancel_futures:
            running = self.running_keys()
            with self.lock:
                waiting = [t for t in self.live.values() if t.dask_key not in running]
            for task in waiting:
                task.future.cancel()
        if not wait:
            threading.Thread(target=self._close, args=(deadline,), daemon=True).start()
            return
        self._close(deadline)

    def _close(self, deadline: float | None) -> None:
        with self.lock:
            self.changed.wait_for(
                lambda: not self.live or self.state in ("closed", "broken"),
                None if deadline is None else max(0.0, deadline - time.monotonic()),
            )
            if self.state == "closed":
                return
            left = list(self.live.values())
        # Failed first, then cancelled in Dask: Dask's answer to the cancel must find them
        # ended. Their callbacks run on this thread, which refuses to wait for a result.
        self.closing_thread = threading.current_thread()
        for task in left:
            self.finish(task, None, CancelledByShutdownError("killed at the shutdown deadline"))
        in_dask = [t.dask for t in left if t.dask is not None]
        if in_dask:
            try:
                self.client.cancel(in_dask, asynchronous=False)
            except Exception:
                pass
        running = [t.dask_key for t in left if t.sent]
        if running:
            self.kill(running)
        self.end()

    def end(self) -> None:
        with self.lock:
            if self.state == "closed":
                return
            self.state = "closed"
            self.changed.notify_all()
        self.timers.stop(10.0)
        for thread in [self.collector, *self.feeders]:
            if thread is not threading.current_thread():
                thread.join(10.0)
        self._disconnect()

    def _disconnect(self) -> None:
        """Stop the node pools (the plugin's teardown) and close a client this pool made."""
        try:
            if self.connected():
                self.client.unregister_worker_plugin(self.name)
        except Exception:
            pass  # never registered, or the cluster is gone already: so are the node pools
        if self.owns_client:
            try:
                if self.client.status == "closed":
                    # A client that closed itself when it lost the scheduler keeps its event
                    # loop thread: Client.close() returns at once for a closed client without
                    # stopping it (distributed 2026.8), so it is stopped here.
                    runner = getattr(self.client, "_loop_runner", None)
                    if runner is not None:
                        runner.stop()
                self.client.close(timeout=CLOSE_SECONDS)
            except Exception:
                pass
