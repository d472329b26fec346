"""A cluster pool's pieces (user process): its tasks and futures, its timer thread, the
client it talks through, and the costs it learns.

See ``_cluster`` for how they work together.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._stats import TaskInfo
from ._cluster_node import TRACEBACK_ATTR
from ._future import Future

if TYPE_CHECKING:
    from ._cluster import ClusterCore

QUEUED, DELAYED, RUNNING, DONE, FAILED, CANCELLED = (
    "queued",
    "delayed",
    "running",
    "done",
    "failed",
    "cancelled",
)
UNKNOWN_COST = 1.0  # seconds a task of a function never measured is assumed to take
DECAY = 0.7  # weight an old cost keeps at each new measurement


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
        if self.cancelled():
            return True
        cancelled = concurrent.futures.Future.cancel(self)
        if cancelled:
            self.set_running_or_notify_cancel()
            self._task.core.cancelled(self._task, kill)
        return cancelled

    def _refuse_on_result_thread(self) -> None:
        """Every future of a cluster pool is resolved on its collector thread: a done
        callback there that waited for another would wait forever."""
        core = self._task.core
        here = threading.current_thread()
        if not self.done() and here in (core.collector, core.closing_thread):
            raise RuntimeError(
                "a done callback cannot wait for another result of the same pool: it runs on "
                "the thread that delivers results (use add_done_callback on that future)"
            )


class Task:
    """One call or map chunk of a cluster pool, from submission to its outcome."""

    __slots__ = (
        "args",
        "core",
        "cost",
        "cost_key",
        "dask",
        "dask_key",
        "ended",
        "fn",
        "future",
        "id",
        "items",
        "key",
        "kill",
        "kind",
        "name",
        "priority",
        "sent",
        "state",
        "submitted_at",
    )

    def __init__(
        self, core: ClusterCore, fn: Callable[..., Any], args: tuple[Any, ...], name: str
    ) -> None:
        self.core = core
        self.fn = fn  # the node function Dask runs (run_call or run_chunk) and its arguments
        self.args = args
        self.name = name  # the function's name: its Dask key prefix and its cost's key
        self.id = 0
        self.key: str | None = None
        self.kind = ""
        self.priority = 0.0
        self.items = 0
        self.state = QUEUED
        self.ended = False  # an outcome was claimed (the first of several racing wins)
        self.sent = False  # taken for Dask (its Dask future follows once submitted)
        self.kill = False  # cancelled with kill while being submitted
        self.cost = 0.0  # its estimated seconds, counted in the window while in Dask
        self.cost_key = name  # what its cost is learned under (see cost_key)
        self.dask: Any = None
        self.dask_key = ""
        self.future = ClusterFuture()
        self.future._task = self
        self.submitted_at = time.time()

    def info(self, running: bool, finished_at: float | None = None) -> TaskInfo:
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
            finished_at=finished_at,
            duration=None,
            pid=None,
        )


def cost_key(fn: Any) -> str:
    """What a function's cost is learned under: its module, qualified name and first line
    (two lambdas, or two partials, are not one function)."""
    target = getattr(fn, "func", fn)  # functools.partial: the function it wraps
    code = getattr(target, "__code__", None)
    name = getattr(target, "__qualname__", type(target).__qualname__)
    where = f":{code.co_firstlineno}" if code is not None else ""
    return f"{getattr(target, '__module__', '')}.{name}{where}"


class Costs:
    """Seconds a task of each function takes on a node, learned from what the nodes report
    (a decaying mean; ``UNKNOWN_COST`` for a function not seen yet)."""

    def __init__(self) -> None:
        self._mean: dict[str, float] = {}

    def of(self, name: str) -> float:
        return self._mean.get(name, UNKNOWN_COST)

    def observe(self, name: str, seconds: float) -> None:
        old = self._mean.get(name)
        self._mean[name] = seconds if old is None else DECAY * old + (1 - DECAY) * seconds


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
                logging.getLogger("mppool.cluster").exception("error in a cluster pool timer")

    def stop(self, timeout: float | None) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)


def with_node_traceback(exc: BaseException) -> BaseException:
    """A task's exception from a node, with the node worker's traceback as its cause (as a
    local pool gives it)."""
    text = exc.__dict__.pop(TRACEBACK_ATTR, None) if hasattr(exc, "__dict__") else None
    if text:
        from .._errors import RemoteTraceback

        exc.__cause__ = RemoteTraceback(text)
    return exc
