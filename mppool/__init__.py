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

from ._client import Pool, PoolView
from ._errors import (
    BrokenPoolError,
    CancelledByShutdownError,
    MppoolError,
    PoolClosedError,
    QueueFullError,
    RemoteTraceback,
    SerializationError,
    TaskAbortedError,
    TaskTimeoutError,
    WorkerCrashedError,
)
from ._ratelimit import RateLimit
from ._retry import RetryPolicy
from ._schedule import Run, Schedule
from ._stats import LatencyStats, Percentiles, PoolStats, TaskInfo, WorkerStats

__version__ = "0.1.0"

__all__ = [
    "BrokenPoolError",
    "CancelledByShutdownError",
    "LatencyStats",
    "MppoolError",
    "Percentiles",
    "Pool",
    "PoolClosedError",
    "PoolStats",
    "PoolView",
    "QueueFullError",
    "RateLimit",
    "RemoteTraceback",
    "RetryPolicy",
    "Run",
    "Schedule",
    "SerializationError",
    "TaskAbortedError",
    "TaskInfo",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "WorkerStats",
    "__version__",
]
