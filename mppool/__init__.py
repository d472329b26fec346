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

from ._client import Pool, PoolView
from ._errors import (
    BrokenPoolError,
    CancelledByShutdownError,
    MppoolError,
    PoolClosedError,
    QueueFullError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    TaskAbortedError,
    TaskTimeoutError,
    WorkerCrashedError,
)
from ._prometheus import MetricsServer, PoolCollector, metrics_registry, serve_metrics
from ._ratelimit import RateLimit
from ._registry import Registry, register
from ._retry import RetryPolicy
from ._schedule import Run, Schedule
from ._stats import LatencyStats, Percentiles, PoolStats, TaskInfo, WorkerStats

if TYPE_CHECKING:
    from ._http import Server, serve

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # The HTTP server needs the optional aiohttp; import it only when asked for.
    if name in ("Server", "serve"):
        from . import _http

        return getattr(_http, name)
    raise AttributeError(f"module 'mppool' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "BrokenPoolError",
    "CancelledByShutdownError",
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
    "Schedule",
    "SerializationError",
    "Server",
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
