"""What runs inside each Dask worker for a cluster pool (``Pool(cluster=...)``).

A Dask worker runs its tasks in threads of its own process: it cannot kill one that hangs,
and a segfault takes the whole Dask worker down. So a cluster pool registers
:class:`NodePlugin` on every Dask worker, and the plugin starts an ordinary mppool pool there
(a dispatcher and one worker process per Dask thread). Each Dask task the cluster pool
submits (:func:`run_call`, :func:`run_chunk`) hands its payload to that pool and waits: a
timeout kills only the node's mppool worker, a crash is retried on the node, and a retry's
backoff waits in the node's dispatcher. For the node's pool, the Dask worker process is
the user process; this module is imported there by reference (Dask unpickles the calls).
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import pickle
import threading
import time
import traceback
from collections.abc import Iterable
from typing import Any, cast

from distributed.diagnostics.plugin import WorkerPlugin

# The attribute a task's own exception carries across Dask with the node worker's traceback
# (an exception's __dict__ survives pickling; its __cause__ does not).
TRACEBACK_ATTR = "_mppool_node_traceback"


class NodePlugin(WorkerPlugin):
    """A Dask worker plugin: one mppool pool per Dask worker, for one cluster pool.

    Args:
        name: the plugin's name, unique per cluster pool (several may share a cluster).
        config: keyword arguments for the node's ``mppool.Pool`` (``workers`` defaults to
            the Dask worker's threads).
    """

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        self.name = name
        self.config = config
        self.pool: Any = None

    def setup(self, worker: Any) -> None:
        # Made here, on the Dask worker: the plugin travels there pickled.
        self.running: dict[str, Any] = {}  # Dask key -> how to kill its node-pool task(s)
        self.lock = threading.Lock()
        self.start(worker)

    def start(self, worker: Any) -> None:
        """Start the node pool (at setup, and again if it broke)."""
        from ._pool import Pool

        config = dict(self.config)
        config.setdefault("workers", max(1, int(worker.state.nthreads)))
        self.pool = Pool(**config)

    def teardown(self, worker: Any) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True, timeout=0.0)

    def kill(self, keys: Iterable[str]) -> int:
        """Kill the node-pool tasks behind these Dask keys (cancelled, or past the shutdown
        deadline): their workers are replaced and the Dask tasks end with ``CancelledError``."""
        with self.lock:
            kills = [self.running[k] for k in keys if k in self.running]
        for kill in kills:
            kill()
        return len(kills)


def _plugin(name: str) -> NodePlugin:
    """This Dask worker's plugin of the cluster pool ``name``, its node pool running: one
    that broke (its dispatcher killed, say) is replaced by a new one first."""
    from distributed import get_worker

    plugin = cast(NodePlugin, get_worker().plugins[name])
    with plugin.lock:
        pool = plugin.pool
        if pool is None:
            raise RuntimeError("the cluster pool's node pool is not running on this Dask worker")
        if pool.state == "broken":
            pool.shutdown(wait=True, cancel_futures=True, timeout=0.0)
            plugin.start(get_worker())
    return plugin


def _mark(exc: BaseException) -> BaseException:
    """Keep the node worker's traceback on a task's exception when it crosses Dask."""
    cause = exc.__cause__
    text = str(cause) if cause is not None and type(cause).__name__ == "RemoteTraceback" else ""
    if not text:
        text = "".join(traceback.format_exception(exc))
    try:
        setattr(exc, TRACEBACK_ATTR, text)
    except Exception:
        pass
    return exc


def _call(blob: bytes) -> tuple[Any, float]:
    """In the node's mppool worker: run the user's call, pickled once in the user process;
    its value and the seconds it ran (the user process learns each function's cost)."""
    fn, args, kwargs = pickle.loads(blob)
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, float(time.perf_counter() - start)


def _watch(plugin: NodePlugin, kill: Any) -> str:
    """Register how to kill the running Dask task (by its key); returns the key."""
    from distributed import get_worker

    key = str(get_worker().get_current_task())
    with plugin.lock:
        plugin.running[key] = kill
    return key


def _unwatch(plugin: NodePlugin, key: str) -> None:
    with plugin.lock:
        plugin.running.pop(key, None)


def run_call(name: str, blob: bytes, options: dict[str, Any]) -> tuple[Any, float]:
    """A Dask task: one call, run by this node's pool: the call's value and run time."""
    plugin = _plugin(name)
    pool = plugin.pool
    fut = pool.options(**options).submit(_call, blob)
    key = _watch(plugin, lambda: pool.cancel(fut, kill=True))
    try:
        return fut.result()
    except BaseException as exc:
        raise _mark(exc) from exc.__cause__
    finally:
        _unwatch(plugin, key)


def run_chunk(
    name: str, fn_blob: bytes, items_blob: bytes, options: dict[str, Any]
) -> tuple[list[Any], BaseException | None, float]:
    """A Dask task: one chunk of a map, run by this node's pool (which chunks it again for
    its workers). Returns the results in order up to the first error, that error (or
    None), and the seconds the chunk took here (for the user process's chunk planner)."""
    from ._map import MapIterator

    start = time.perf_counter()
    plugin = _plugin(name)
    fn = functools.partial(_star, pickle.loads(fn_blob))
    items: list[tuple[Any, ...]] = pickle.loads(items_blob)
    view = plugin.pool.options(**options)
    mapping = MapIterator(view._core, fn, (items,), view._opts, True, None, None, None, view)
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        mapping.close(kill=True)

    key = _watch(plugin, kill)
    results: list[Any] = []
    error: BaseException | None = None
    try:
        for value in mapping.results():
            results.append(value)
    except BaseException as exc:
        error = _mark(exc)
    finally:
        _unwatch(plugin, key)
    if killed.is_set() and error is None and len(results) < len(items):
        error = concurrent.futures.CancelledError()
    return results, error, time.perf_counter() - start


def _star(fn: Any, args: tuple[Any, ...]) -> Any:
    return fn(*args)


def node_stats(name: str, dask_worker: Any = None) -> Any:
    """Run by ``client.run`` on every Dask worker (which passes ``dask_worker``): the node
    pool's ``stats()`` and the Dask worker's pid, or None."""
    plugin = cast("NodePlugin | None", dask_worker.plugins.get(name))
    if plugin is None or plugin.pool is None:
        return None
    stats = plugin.pool.stats()
    return stats, os.getpid()


def kill(name: str, keys: list[str], dask_worker: Any = None) -> int:
    """Run by ``client.run`` on every Dask worker: kill the tasks behind ``keys`` there."""
    plugin = cast("NodePlugin | None", dask_worker.plugins.get(name))
    if plugin is None or plugin.pool is None:
        return 0
    return plugin.kill(keys)
