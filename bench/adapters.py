"""A uniform face over mppool and its peers, plus process-environment helpers for benchmarks.

Each adapter creates its library's pool with that library's *default* settings; the only
departures are the ones needed to measure at all, and they are listed in :data:`DEVIATIONS`
so that the comparison output can state them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil

#: The repository root, i.e. the folder that contains the ``bench`` package.
REPO_ROOT = Path(__file__).resolve().parent.parent

#: Non-default settings the adapters use, and why. Printed with every comparison.
DEVIATIONS: dict[str, str] = {
    "mpire": "keep_alive=True, so the warmed-up workers survive between calls and worker startup "
    "is excluded like for every other pool",
    "loky": "get_reusable_executor(max_workers=N), the library's recommended entry point",
}


def prepare_environment() -> None:
    """Make ``bench.workloads`` importable in every process a pool may start.

    Pools pickle workload functions by reference. A pool that starts fresh interpreters (spawn,
    forkserver, or a helper process of its own) does not necessarily inherit ``sys.path``, so the
    repository root is exported through ``PYTHONPATH`` as well. Call before creating any pool.
    """
    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)
    current = os.environ.get("PYTHONPATH", "")
    parts = [p for p in current.split(os.pathsep) if p]
    if root not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *parts])


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return "?"


def reap_descendants(timeout: float = 3.0, ignore: tuple[str, ...] = ()) -> list[str]:
    """Wait briefly for this process's descendants to exit, then kill any that remain.

    A benchmark must never leave processes behind, even when a pool under test misbehaves.

    Args:
        timeout: Seconds to let descendants finish on their own.
        ignore: Substrings of command lines to leave alone, for helpers that legitimately live as
            long as their parent (``multiprocessing``'s and loky's resource trackers, which exit
            by themselves when this process does).

    Returns:
        A short description (pid and command line) of every descendant that was still alive
        after ``timeout`` and had to be killed.
    """
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    children = [p for p in children if not any(s in _cmdline(p) for s in ignore)]
    _, alive = psutil.wait_procs(children, timeout=timeout)
    killed = []
    for proc in alive:
        cmdline = _cmdline(proc)
        try:
            proc.kill()
        except psutil.Error:
            continue
        killed.append(f"{proc.pid} {cmdline[:120]}")
    psutil.wait_procs(alive, timeout=timeout)
    return killed


class PoolAdapter:
    """Common operations on a process pool, implemented per library by subclasses.

    Attributes:
        name: Short key used on the command line (``--libs``).
        label: Human-readable name for tables.
        submit_call: The per-task call this adapter uses, shown in output.
        modules: Modules the pool's constructor needs, imported before timing a pool's startup
            (importing a library is paid once per program, not once per pool).
    """

    name = "base"
    label = "base"
    submit_call = "submit"
    modules: tuple[str, ...] = ()

    def __init__(self, workers: int) -> None:
        """Create the pool.

        Args:
            workers: Number of worker processes.
        """
        self.workers = workers

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Schedule one call and return the library's handle for its result."""
        raise NotImplementedError

    def result(self, handle: Any, timeout: float | None = None) -> Any:
        """Block until ``handle`` (from :meth:`submit`) has a result and return it."""
        return handle.result(timeout)

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        """Run the library's default ``map`` and return all results in input order."""
        raise NotImplementedError

    def shutdown(self) -> None:
        """Stop the pool gracefully, waiting for its processes."""
        raise NotImplementedError

    def abort(self) -> None:
        """Stop the pool as fast as possible (after a timeout or failure). Best effort."""
        self.shutdown()


class ExecutorAdapter(PoolAdapter):
    """A pool with the ``concurrent.futures.Executor`` interface in ``self.pool``."""

    pool: Any

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.pool.submit(fn, *args)

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        return list(self.pool.map(fn, items))

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True)


class MppoolAdapter(ExecutorAdapter):
    """mppool with default settings."""

    name = "mppool"
    label = "mppool"
    submit_call = "Pool.submit"
    # mppool imports its public names on first use: the module behind Pool is what a program
    # that uses the pool has loaded by the time it makes one.
    modules = ("mppool", "mppool._client._pool")

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        import mppool

        self.pool = mppool.Pool(workers=workers)

    def abort(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class MultiprocessingAdapter(PoolAdapter):
    """``multiprocessing.Pool`` with the platform's default start method."""

    name = "multiprocessing"
    label = "multiprocessing.Pool"
    submit_call = "apply_async"
    modules = ("multiprocessing.pool",)

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        import multiprocessing

        self.pool = multiprocessing.Pool(processes=workers)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.pool.apply_async(fn, args)

    def result(self, handle: Any, timeout: float | None = None) -> Any:
        return handle.get(timeout)

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        return self.pool.map(fn, items)

    def shutdown(self) -> None:
        self.pool.close()
        self.pool.join()

    def abort(self) -> None:
        self.pool.terminate()
        self.pool.join()


class ProcessPoolExecutorAdapter(ExecutorAdapter):
    """``concurrent.futures.ProcessPoolExecutor`` (map uses its default chunksize=1)."""

    name = "ppe"
    label = "ProcessPoolExecutor"
    submit_call = "submit"
    modules = ("concurrent.futures.process",)

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(max_workers=workers)

    def abort(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class LokyAdapter(ExecutorAdapter):
    """loky's reusable executor (map uses its default chunksize=1)."""

    name = "loky"
    label = "loky"
    submit_call = "submit"
    modules = ("loky",)

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        import loky

        self.pool = loky.get_reusable_executor(max_workers=workers)

    def abort(self) -> None:
        self.pool.shutdown(wait=False, kill_workers=True)


class PebbleAdapter(PoolAdapter):
    """pebble's ``ProcessPool`` (map uses its default chunksize=1)."""

    name = "pebble"
    label = "pebble"
    submit_call = "schedule"
    modules = ("pebble",)

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        import pebble

        self.pool = pebble.ProcessPool(max_workers=workers)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.pool.schedule(fn, args=args)

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        return list(self.pool.map(fn, items).result())

    def shutdown(self) -> None:
        self.pool.close()
        self.pool.join()

    def abort(self) -> None:
        self.pool.stop()
        self.pool.join()


class MpireAdapter(PoolAdapter):
    """mpire's ``WorkerPool`` (fork start method, the default on Linux; see DEVIATIONS)."""

    name = "mpire"
    label = "mpire"
    submit_call = "apply_async"
    modules = ("mpire",)

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        import mpire

        start_method = "fork" if sys.platform.startswith("linux") else "spawn"
        self.pool = mpire.WorkerPool(n_jobs=workers, start_method=start_method, keep_alive=True)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.pool.apply_async(fn, args=args)

    def result(self, handle: Any, timeout: float | None = None) -> Any:
        return handle.get(timeout)

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        return self.pool.map(fn, items)

    def shutdown(self) -> None:
        self.pool.stop_and_join()

    def abort(self) -> None:
        self.pool.terminate()


#: All adapters, in the order they appear in tables.
ADAPTERS: dict[str, type[PoolAdapter]] = {
    cls.name: cls
    for cls in (
        MppoolAdapter,
        MultiprocessingAdapter,
        ProcessPoolExecutorAdapter,
        LokyAdapter,
        PebbleAdapter,
        MpireAdapter,
    )
}
