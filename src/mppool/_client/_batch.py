"""Batches: a named group of related tasks, followed and ended together (user process).

``pool.batch("nightly")`` returns a :class:`Batch`. Its tasks carry the batch's name to the
dispatcher (as part of their options), which counts them by state (``pool.stats().batches``,
the HTTP API, the dashboard, Prometheus), lists it with each of them (``TaskInfo.batch``),
and cancels them together (``Batch.cancel``). This process keeps the batch's futures, for
:meth:`Batch.wait` and :meth:`Batch.results`.

A batch's ``map`` keeps its results for :meth:`Batch.results`: it returns a future of the
list, and the input is read in the background (``pool.map`` is the one to stream results in
bounded memory).
"""

from __future__ import annotations

import concurrent.futures
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .._errors import PoolClosedError

if TYPE_CHECKING:
    from .._stats import BatchStats
    from ._pool import PoolView


def cancel_by_name(core: Any, name: str, kill: bool) -> None:
    """Cancel batch ``name`` through every live handle of it (their maps stop reading),
    and whatever of it the dispatcher holds."""
    handles = list(core.batch_handles.get(name, ()))
    for handle in handles:
        handle.cancel(kill)  # (each tells the dispatcher too)
    if not handles:
        core.cancel_batch(name, kill)


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"a batch needs a name (a non-empty string), not {name!r}")
    return name


class Batch:
    """A named group of tasks: submitted through it, followed and ended together.

    Made by ``pool.batch(name)`` (or ``pool.options(...).batch(name)``, whose options its
    tasks take). As a context manager, leaving the block waits for every task of the batch,
    or cancels them if the block raised.

    Attributes:
        name: the batch's name (several ``pool.batch`` calls with one name share counters).
    """

    def __init__(self, view: PoolView, name: str) -> None:
        self.name = name
        self._view = view
        self._lock = threading.Lock()
        self._futures: list[concurrent.futures.Future[Any]] = []
        self._maps: list[Any] = []
        self._cancelled = False
        handles = view._core.batch_handles.setdefault(name, weakref.WeakSet())
        handles.add(self)  # so that a cancel by name (HTTP) reaches its maps too

    # --- submitting ----------------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Submit ``fn(*args, **kwargs)`` as a task of this batch; its future.

        Raises:
            PoolClosedError: after :meth:`cancel`, or once the pool is shut down.
        """
        self._check_open()
        fut = self._view.submit(fn, *args, **kwargs)
        with self._lock:
            self._futures.append(fut)
        return fut

    def try_submit(
        self, fn: Callable[..., Any], /, *args: Any, timeout: float | None = 0.0, **kwargs: Any
    ) -> Any:
        """Like :meth:`submit`, for a pool with a bounded queue: wait at most ``timeout``
        seconds for room, then raise ``QueueFullError`` (see ``Pool.try_submit``)."""
        self._check_open()
        fut = self._view.try_submit(fn, *args, timeout=timeout, **kwargs)
        with self._lock:
            self._futures.append(fut)
        return fut

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        chunksize: int | None = None,
        progress: bool | Callable[[int, int | None], None] | None = None,
    ) -> concurrent.futures.Future[list[Any]]:
        """Run ``fn`` over the items, as tasks of this batch; a future of the results' list
        (in input order; its exception is the first item's error).

        The input is read and run in the background, in the pool's map chunks.
        """
        self._check_open()
        mapping = self._view._mapping(fn, iterables, True, chunksize, None, progress)
        results = mapping.results()
        done: concurrent.futures.Future[list[Any]] = concurrent.futures.Future()
        with self._lock:
            self._futures.append(done)
            self._maps.append(mapping)  # its close() may be called from any thread

        def collect() -> None:
            try:
                values = list(results)
            except BaseException as exc:
                outcome: tuple[Any, BaseException | None] = (None, exc)
            else:
                outcome = (values, None)
            try:
                if self._cancelled:  # closed early: what it has is not the whole list
                    done.cancel()
                elif outcome[1] is not None:
                    done.set_exception(outcome[1])
                else:
                    done.set_result(outcome[0])
            except concurrent.futures.InvalidStateError:
                pass  # cancelled meanwhile

        threading.Thread(target=collect, name=f"mppool-batch-{self.name}", daemon=True).start()
        return done

    def _check_open(self) -> None:
        if self._cancelled:
            raise PoolClosedError(f"batch {self.name!r} was cancelled")

    # --- following and ending ------------------------------------------------------------------
    @property
    def futures(self) -> list[concurrent.futures.Future[Any]]:
        """The batch's futures in submission order (a ``map`` is one, of its list)."""
        with self._lock:
            return list(self._futures)

    def done(self) -> bool:
        """Whether every task submitted through this handle has finished."""
        return all(f.done() for f in self.futures)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every task submitted through this handle has finished (succeeded,
        failed or been cancelled); False if ``timeout`` seconds passed first."""
        _, pending = concurrent.futures.wait(self.futures, timeout)
        return not pending

    def results(self, timeout: float | None = None) -> list[Any]:
        """The results in submission order (a ``map`` gives its list), once all are in.

        Raises:
            TimeoutError: if they are not all in within ``timeout`` seconds.
            Exception: the first failed task's error (in submission order).
        """
        if not self.wait(timeout):
            raise TimeoutError(f"batch {self.name!r} did not finish within {timeout} s")
        return [f.result() for f in self.futures]

    def cancel(self, kill: bool = False) -> None:
        """Cancel the batch: its tasks that have not started are cancelled (their futures
        too), its maps read no more input; with ``kill``, running ones are killed (their
        workers replaced). Later submits raise ``PoolClosedError``."""
        with self._lock:
            self._cancelled = True
            maps = list(self._maps)
            futures = list(self._futures)
        for m in maps:
            m.close()
        self._view._core.cancel_batch(self.name, kill)
        for f in futures:
            f.cancel()  # any the dispatcher had not seen yet

    def stats(self) -> BatchStats | None:
        """The dispatcher's counts for this batch (None before its first task arrives)."""
        stats: BatchStats | None = self._view._owner.stats().batches.get(self.name)
        return stats

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.wait()
        else:
            self.cancel()

    def __repr__(self) -> str:
        futures = self.futures
        finished = sum(1 for f in futures if f.done())
        return f"<mppool.Batch {self.name!r} {finished}/{len(futures)} done>"
