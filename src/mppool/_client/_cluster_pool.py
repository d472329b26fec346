"""``mppool.Pool(cluster=...)``: the same pool, its tasks run on a Dask cluster.

:class:`ClusterPool` is what ``Pool(cluster=...)`` returns (a ``Pool``): the same methods,
with a :class:`ClusterCore` in place of the local dispatcher. Options that configure worker
processes go to each Dask worker's own pool; those that must hold across the cluster are
kept in this process (see ``_cluster``). What cannot mean the same on a cluster is refused
with a clear error (see README, "Beyond one machine", for the table).
"""

from __future__ import annotations

import atexit
import statistics
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .._backoff import CRASH_RETRIES
from .._errors import PoolClosedError
from .._ratelimit import RateLimit
from .._retry import RetryPolicy
from .._stats import LatencyStats, Percentiles, PoolStats, TaskInfo, WorkerStats
from ._cluster import ClusterCore
from ._cluster_map import ClusterMap, ClusterSchedules
from ._future import Future
from ._options import _check, _init_timeout, _Options
from ._pool import DEFAULT_AGING_RATE, DEFAULT_INIT_TIMEOUT, Pool, PoolView

_NOT_ON_A_CLUSTER = "is not available with cluster= (see README, 'Beyond one machine')"


class _OnCluster:
    """How a cluster pool and its views make maps and views."""

    _core: Any
    _opts: _Options
    _owner: Any

    def _view(self, opts: _Options) -> ClusterView:
        if opts.deadline is not None or opts.deadline_at is not None:
            raise ValueError("options(deadline=...) " + _NOT_ON_A_CLUSTER)
        if opts.after:
            raise ValueError("options(after=...) " + _NOT_ON_A_CLUSTER)
        if opts.batch:
            raise ValueError("batch() " + _NOT_ON_A_CLUSTER)
        return ClusterView(self._core, opts, self._owner)

    def _mapping(
        self,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        ordered: bool,
        chunksize: int | None,
        timeout: float | None,
        progress: Any,
    ) -> ClusterMap:
        return ClusterMap(
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


class ClusterView(_OnCluster, PoolView):
    """A cluster pool with other per-task options (from ``options()``)."""


class ClusterPool(_OnCluster, Pool):
    """A pool whose tasks run on a Dask cluster (made by ``mppool.Pool(cluster=...)``)."""

    def __init__(
        self,
        workers: Any = None,
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
        store: Any = None,
        threads_per_worker: int | str | None = "auto",
        preload: Iterable[str] = (),
        cpu_affinity: bool | Sequence[Iterable[int]] | None = None,
        shares: dict[str, float] | None = None,
        circuit_breakers: dict[str, Any] | None = None,
    ) -> None:
        if cluster is None:
            raise TypeError("ClusterPool needs cluster=")
        for name, value in (("shares", shares), ("circuit_breakers", circuit_breakers)):
            if value:
                raise ValueError(f"{name}= " + _NOT_ON_A_CLUSTER)
        if workers is not None:
            raise ValueError(
                "workers= " + _NOT_ON_A_CLUSTER + ": a cluster pool runs one worker process "
                "per Dask thread; size the Dask cluster instead"
            )
        if max_queue:
            raise ValueError("max_queue= " + _NOT_ON_A_CLUSTER)
        if store is not None:
            raise ValueError("store= " + _NOT_ON_A_CLUSTER)
        if aging_rate != DEFAULT_AGING_RATE:
            raise ValueError("aging_rate= " + _NOT_ON_A_CLUSTER + ": nothing ages there")
        if cpu_affinity:
            raise ValueError(
                "cpu_affinity= " + _NOT_ON_A_CLUSTER + ": Dask workers sharing a machine would "
                "pin their pools to the same cores"
            )
        _check(0, max_tasks_per_child, max_memory_per_child, aging_rate, retry)
        limits = {
            str(kind): (lim.rate, lim.per, lim.burst)
            for kind, lim in ((k, RateLimit.parse(v)) for k, v in (rate_limits or {}).items())
        }
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be callable")
        node: dict[str, Any] = {
            "max_tasks_per_child": max_tasks_per_child,
            "max_memory_per_child": max_memory_per_child,
            "initializer": initializer,
            "initargs": tuple(initargs),
            "init_timeout": None if _init_timeout(init_timeout) == 0.0 else init_timeout,
            "threads_per_worker": threads_per_worker,
            "preload": tuple(preload),
        }
        self._autoscale = None
        self._opts = _Options(
            0.0, timeout, retry or RetryPolicy.none(), crash_retries, "", None, None
        )
        core = ClusterCore(cluster, node, self._opts, limits)
        core.schedules = ClusterSchedules(core)
        self._core = core
        # Dropped: shut down gracefully, as a local pool is; still open at exit: ended at once
        # (the node pools on the cluster would otherwise outlive this process).
        self._finalizer = weakref.finalize(self, _drop, core)  # type: ignore[arg-type]
        self._finalizer.atexit = False
        _live.add(core)

    @property
    def _owner(self) -> ClusterPool:
        return self

    @property
    def client(self) -> Any:
        """The ``dask.distributed.Client`` the pool submits through."""
        return self._core.client

    @property
    def workers(self) -> int:
        """Dask threads in the cluster now: one worker process each, in the node pools."""
        return int(self._core.workers)

    def resize(self, workers: int) -> None:
        raise NotImplementedError(
            "resize() " + _NOT_ON_A_CLUSTER + "; scale the Dask cluster (cluster.scale(n))"
        )

    @property
    def state(self) -> str:
        return str(self._core.state)

    @property
    def dispatcher_pid(self) -> int:
        raise NotImplementedError("a cluster pool has a dispatcher on every Dask worker")

    def share(self, obj: Any) -> Any:
        raise NotImplementedError("share() " + _NOT_ON_A_CLUSTER + ": memory is per machine")

    def cancel(self, future: Any, *, kill: bool = False) -> bool:
        task = getattr(future, "_task", None)
        if not isinstance(future, Future) or task is None or task.core is not self._core:
            raise ValueError("not a future of this pool")
        return future._cancel(kill=kill)

    def stats(self) -> PoolStats:
        """Counters of this process (submitted, completed, failed, ...) with those of every
        node pool (crashes, timeouts, retries, workers); one round trip to each Dask worker."""
        return cluster_stats(self._core)

    def tasks(self, state: str | None = None) -> list[TaskInfo]:
        rows = task_rows(self._core)
        return rows if state is None else [r for r in rows if r.state == state]

    def task(self, task_id: int) -> TaskInfo:
        for row in task_rows(self._core):
            if row.id == task_id:
                return row
        raise KeyError(task_id)

    def retry_failed(self, keys: Iterable[str] | None = None) -> list[Future[Any]]:
        raise ValueError("the pool has no job store (store= " + _NOT_ON_A_CLUSTER + ")")

    def __repr__(self) -> str:
        return f"<mppool.Pool cluster={self._core.address} state={self.state}>"


_live: weakref.WeakSet[ClusterCore] = weakref.WeakSet()


def _drop(core: ClusterCore) -> None:
    """A cluster pool nobody holds: its work runs to the end, then it closes."""
    core.shutdown(False, False, None)


@atexit.register
def _end_all() -> None:
    """At exit, a cluster pool still open ends at once, its node pools with it."""
    for core in list(_live):
        core.shutdown(True, True, 0.0)


def task_rows(core: ClusterCore) -> list[TaskInfo]:
    running = core.running_keys()
    with core.lock:
        live = list(core.live.values())
        done = list(core.history)
    return [t.info(t.dask_key in running) for t in live] + done


def cluster_stats(core: ClusterCore) -> PoolStats:
    from ._cluster_node import node_stats

    if core.state == "closed":
        raise PoolClosedError("the pool has been shut down")
    nodes = core.client.run(node_stats, core.name, on_error="return")
    merged = [v for v in nodes.values() if isinstance(v, tuple)]
    running = core.running_keys()
    with core.lock:
        counts = dict(core.counts)
        live = list(core.live.values())
        waits = core.rate_limited_waits
        end_to_end = list(core.end_to_end)
    active = sum(1 for t in live if t.dask_key in running)
    by_priority: dict[float, int] = {}
    by_kind: dict[str, int] = {}
    for t in live:
        if t.dask_key not in running:
            by_priority[t.priority] = by_priority.get(t.priority, 0) + 1
            by_kind[t.kind] = by_kind.get(t.kind, 0) + 1
    workers: list[WorkerStats] = []
    for stats, _pid in merged:
        for w in stats.workers:
            workers.append(_reindexed(w, len(workers)))

    def total(name: str) -> int:
        return sum(int(getattr(s, name)) for s, _ in merged)

    import time

    return PoolStats(
        submitted=counts["submitted"],
        started=counts["started"],
        queued=len(live) - active,
        running=active,
        completed=counts["completed"],
        failed=counts["failed"],
        retried=total("retried"),
        crashed=total("crashed"),
        timed_out=total("timed_out"),
        cancelled=counts["cancelled"],
        respawns=total("respawns"),
        steals=total("steals"),
        stolen_tasks=total("stolen_tasks"),
        deduplicated=counts["deduplicated"],
        rate_limited_waits=waits,
        queue_by_priority=by_priority,
        queue_by_kind=by_kind,
        uptime=time.monotonic() - core.started,
        latency=LatencyStats(_EMPTY, _EMPTY, _percentiles(end_to_end)),
        workers=tuple(workers),
        target_workers=total("target_workers"),
        live_workers=total("live_workers"),
        worker_seconds=sum(s.worker_seconds for s, _ in merged),
        resizes=0,
        scaling_events=(),
    )


_EMPTY = Percentiles(0, None, None, None)


def _percentiles(values: list[float]) -> Percentiles:
    if len(values) < 2:
        return Percentiles(len(values), *(values * 3)) if values else _EMPTY
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return Percentiles(len(values), cuts[49], cuts[94], cuts[98])


def _reindexed(w: WorkerStats, index: int) -> WorkerStats:
    import dataclasses

    return dataclasses.replace(w, index=index)
