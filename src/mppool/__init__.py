"""mppool: a multiprocessing pool for CPU-bound work that does not fall over.

A dispatcher process keeps a priority heap and per-worker deques and feeds exactly N worker
processes over pipes; idle workers steal queued work from busy peers; a crashed worker is
replaced and its task retried; a hung task is killed at its timeout.

    import mppool

    with mppool.Pool(workers=4) as pool:
        fut = pool.submit(pow, 2, 10)
        squares = list(pool.map(lambda x: x * x, range(1000)))
        urgent = pool.options(priority=10, timeout=2.0, retries=3)
        urgent.submit(pow, 3, 4)
        print(pool.stats())
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._breaker import CircuitBreaker
    from ._client._batch import Batch
    from ._client._future import Future
    from ._client._pool import Pool, PoolView
    from ._client._schedule import Run, Schedule
    from ._errors import (
        BrokenPoolError,
        CancelledByShutdownError,
        CircuitOpenError,
        DeadlineExceededError,
        DependencyFailedError,
        MppoolError,
        PoolClosedError,
        QueueFullError,
        RemoteError,
        RemoteTraceback,
        SerializationError,
        StoreError,
        TaskAbortedError,
        TaskTimeoutError,
        WorkerCrashedError,
    )
    from ._ratelimit import RateLimit
    from ._retry import RetryPolicy
    from ._scaling import Autoscale, ScalingEvent
    from ._shm import Shared
    from ._stats import (
        BatchStats,
        CircuitStats,
        LatencyStats,
        Percentiles,
        PoolStats,
        ShareStats,
        TaskInfo,
        WorkerStats,
    )
    from ._web._prometheus import MetricsServer, PoolCollector, metrics_registry, serve_metrics
    from ._web._registry import Registry, register
    from ._web._server import Server, serve

__version__ = "0.1.0"

# Every public name, and the private module that defines it. They are imported on first
# use: mppool runs in three processes, and the dispatcher and the workers, which import
# this package too, need none of the user-facing machinery (the pool's threads, the HTTP
# server, Prometheus). ``import mppool`` itself costs almost nothing.
_WHERE = {
    "Future": "_client._future",
    "Pool": "_client._pool",
    "PoolView": "_client._pool",
    "BrokenPoolError": "_errors",
    "CancelledByShutdownError": "_errors",
    "CircuitOpenError": "_errors",
    "CircuitBreaker": "_breaker",
    "DeadlineExceededError": "_errors",
    "DependencyFailedError": "_errors",
    "MppoolError": "_errors",
    "PoolClosedError": "_errors",
    "QueueFullError": "_errors",
    "RemoteError": "_errors",
    "RemoteTraceback": "_errors",
    "SerializationError": "_errors",
    "StoreError": "_errors",
    "TaskAbortedError": "_errors",
    "TaskTimeoutError": "_errors",
    "WorkerCrashedError": "_errors",
    "Server": "_web._server",
    "serve": "_web._server",
    "MetricsServer": "_web._prometheus",
    "PoolCollector": "_web._prometheus",
    "metrics_registry": "_web._prometheus",
    "serve_metrics": "_web._prometheus",
    "RateLimit": "_ratelimit",
    "Autoscale": "_scaling",
    "ScalingEvent": "_scaling",
    "Registry": "_web._registry",
    "register": "_web._registry",
    "RetryPolicy": "_retry",
    "Shared": "_shm",
    "Run": "_client._schedule",
    "Schedule": "_client._schedule",
    "CircuitStats": "_stats",
    "BatchStats": "_stats",
    "Batch": "_client._batch",
    "LatencyStats": "_stats",
    "Percentiles": "_stats",
    "PoolStats": "_stats",
    "ShareStats": "_stats",
    "TaskInfo": "_stats",
    "WorkerStats": "_stats",
}


def __getattr__(name: str) -> object:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'mppool' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{where}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "Autoscale",
    "Batch",
    "BatchStats",
    "BrokenPoolError",
    "CancelledByShutdownError",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitStats",
    "DeadlineExceededError",
    "DependencyFailedError",
    "Future",
    "LatencyStats",
    "MetricsServer",
    "MppoolError",
    "Percentiles",
    "Pool",
    "PoolClosedError",
    "PoolCollector",
    "PoolStats",
    "PoolView",
    "QueueFullError",
    "RateLimit",
    "Registry",
    "RemoteError",
    "RemoteTraceback",
    "RetryPolicy",
    "Run",
    "ScalingEvent",
    "Schedule",
    "SerializationError",
    "Server",
    "ShareStats",
    "Shared",
    "StoreError",
    "TaskAbortedError",
    "TaskInfo",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "WorkerStats",
    "__version__",
    "metrics_registry",
    "register",
    "serve",
    "serve_metrics",
]
