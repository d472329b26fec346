"""asyncio front doors: ``await pool.asubmit(...)`` and ``async for r in pool.amap(...)``.

Neither blocks the event loop. ``asubmit`` submits at once (pickling its arguments on the
loop's thread, as any call does); only when a bounded queue is full does it wait for room,
on a thread. The result comes back through ``loop.call_soon_threadsafe`` from the pool's
reader thread. Cancelling the awaiting coroutine cancels the task: removed if it has not
started, its worker killed (and replaced) if it runs — CPU-bound code cannot be interrupted
any other way, and nobody is left to want its result.

``amap`` runs an ordinary (lazy, bounded) ``map`` and hands its results to the loop from a
thread of its own, at most ``AHEAD`` results ahead of the consumer. Leaving the ``async
for`` early (``break``, an exception, cancellation) closes the map: what has not run is
cancelled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from .._errors import QueueFullError

if TYPE_CHECKING:
    from ._future import Future
    from ._map import MapIterator
    from ._pool import _Submitter

T = TypeVar("T")

AHEAD = 1024  # results handed to the loop and not yet consumed, at most
_ITEM, _END, _ERROR = 0, 1, 2


async def asubmit(view: _Submitter, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
    core = view._core
    try:
        fut: Future[T] = core.submit(fn, args, kwargs, view._opts, block=False)
    except QueueFullError:  # a bounded queue: wait for room on a thread, not on the loop
        loop = asyncio.get_running_loop()
        submit = functools.partial(core.submit, fn, args, kwargs, view._opts)
        fut = await loop.run_in_executor(None, submit)
    return await wait(fut)


async def wait(fut: Future[T]) -> T:
    """The result of a pool future, awaited; cancelling the waiter cancels (kills) the task."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[T] = loop.create_future()

    def resolved(_: concurrent.futures.Future[Any]) -> None:
        try:
            loop.call_soon_threadsafe(_settle, waiter, fut)
        except RuntimeError:
            pass  # the loop has closed: nobody waits any more

    fut.add_done_callback(resolved)
    try:
        return await waiter
    except asyncio.CancelledError:
        if not fut.done():
            fut._cancel(kill=True)
        raise


def _settle(waiter: asyncio.Future[T], fut: concurrent.futures.Future[T]) -> None:
    if waiter.done():
        return
    if fut.cancelled():
        waiter.cancel()
        return
    exc = fut.exception()
    if exc is not None:
        waiter.set_exception(exc)
    else:
        waiter.set_result(fut.result())


class AsyncResults(AsyncIterator[T]):
    """The results of a map, as an async iterator (see the module docstring)."""

    def __init__(self, mapping: MapIterator) -> None:
        self._mapping = mapping
        self._results: Iterator[T] = mapping.results()
        self._queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self._room = threading.Semaphore(AHEAD)
        self._closed = threading.Event()
        self._started = False
        # Dropped without being closed (a ``break`` out of ``async for``): close the map.
        weakref.finalize(self, _close, self._closed, self._room, mapping)

    def __aiter__(self) -> AsyncResults[T]:
        return self

    async def __anext__(self) -> T:
        if not self._started:
            self._started = True
            put = functools.partial(_put, asyncio.get_running_loop(), self._queue)
            feed = threading.Thread(
                target=_feed,
                args=(self._results, put, self._room, self._closed),
                name="mppool-amap",
                daemon=True,
            )
            feed.start()
        try:
            kind, value = await self._queue.get()
        except asyncio.CancelledError:
            await self.aclose()
            raise
        if kind == _ITEM:
            self._room.release()
            return value  # type: ignore[no-any-return]
        await self.aclose()
        if kind == _END:
            raise StopAsyncIteration
        raise value

    async def aclose(self) -> None:
        """Stop early: no more input is read, and what has not run is cancelled."""
        _close(self._closed, self._room, self._mapping)


def _close(closed: threading.Event, room: threading.Semaphore, mapping: MapIterator) -> None:
    if closed.is_set():
        return
    closed.set()
    room.release()  # a feeder waiting for room wakes, and sees it must stop
    mapping.close()


def _put(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any], item: Any) -> None:
    try:
        loop.call_soon_threadsafe(queue.put_nowait, item)
    except RuntimeError:
        pass  # the loop has closed


def _feed(
    results: Iterator[Any],
    put: Callable[[tuple[int, Any]], None],
    room: threading.Semaphore,
    closed: threading.Event,
) -> None:
    """On the feeder thread: consume the map, hand each result to the loop."""
    try:
        for value in results:
            room.acquire()
            if closed.is_set():
                return
            put((_ITEM, value))
    except BaseException as exc:
        if not closed.is_set():
            put((_ERROR, exc))
        return
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()
    put((_END, None))
