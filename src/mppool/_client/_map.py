"""Lazy, bounded, adaptively chunked ``map`` and ``imap_unordered`` (user process).

The input is cut into chunks, one task each (or, for a keyed map, one keyed task per item).
At most ``WINDOW_PER_WORKER * workers`` of them are submitted and not yet consumed, so
memory is bounded whatever the input's length.

Who reads the input::

    sized input (list, range, ...)  the consumer, between results: a read never waits
    any other iterator              a reader thread per map: a slow or blocking input (one
                                    that waits for the consumer, say) never holds back
                                    results that are ready; items it has read are sent as
                                    a partial chunk when nothing else is in flight or
                                    they have waited ``PARTIAL_SECONDS``

The rules of a map's life (README, "map"):

* A map that is never iterated runs all of its items, as ``Executor.map`` does: when its
  iterator is dropped unstarted, a background thread feeds the rest and discards the
  results (logging a failure count on the ``mppool.map`` logger).
* Once iteration has started, the consumer owns it: leaving early (``break``, ``close()``,
  dropping the iterator) cancels what has not run.
* A graceful ``shutdown()`` lets every open map finish: its whole input is fed (without the
  window: the consumer may not be reading), and the pool ends after that. With
  ``cancel_futures`` (or a deadline) maps stop instead.
"""

from __future__ import annotations

import collections.abc
import concurrent.futures
import itertools
import logging
import operator
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .. import _protocol as p
from .._errors import SerializationError
from ._planner import MAX_CHUNK_ITEMS, ChunkPlanner, Progress, Reporter
from ._serial import decode_error, decode_value, dumps

if TYPE_CHECKING:
    from ._core import _Core
    from ._options import _Options

WINDOW_PER_WORKER = 8  # chunks in flight (submitted, not consumed) per worker
WINDOW_SECONDS_PER_WORKER = 0.1  # ... and at most this much estimated work per worker
PARTIAL_SECONDS = 0.002  # items read from a slow input wait at most this long to be sent

log = logging.getLogger("mppool.map")

# How a map feeds its input.
_OPEN = "open"  # within its window, as its consumer reads
_EAGER = "eager"  # everything, now: the pool is shutting down gracefully
_DROPPED = "dropped"  # never iterated: everything, results discarded
_CLOSED = "closed"  # no more input: the consumer left, or the pool is ending


class _Unit:
    """One submitted piece of a map: a chunk task, or one keyed item's future."""

    __slots__ = ("estimate", "n_items", "owner", "ready", "task_id")

    def __init__(self, owner: MapIterator, task_id: int, n_items: int) -> None:
        self.owner = owner
        self.task_id = task_id
        self.n_items = n_items
        self.estimate = 0.0
        self.ready = False

    def _wake(self) -> None:
        owner = self.owner
        with owner.cond:
            self.ready = True
            if not owner.ordered:
                owner.ready_q.append(self)
            owner.cond.notify_all()

    def outcome(self) -> tuple[list[Any], BaseException | None]:
        raise NotImplementedError


class _Chunk(_Unit):
    """A chunk task: resolved by the pool's reader thread, consumed by the iterator."""

    __slots__ = ("attempts", "payload", "result", "status")

    def __init__(self, owner: MapIterator, task_id: int, n_items: int) -> None:
        super().__init__(owner, task_id, n_items)
        self.status = -1
        self.attempts = 0
        self.payload = b""
        self.result: p.ChunkResult | None = None

    def _mppool_chunk(self, result: p.ChunkResult) -> None:
        """The chunk ran (in one or more parts): its pieces of results and any error."""
        self.result = result
        self.status = p.OK
        self.attempts = result.attempts
        if result.err_status == p.OK:
            self.owner.planner.observe(self.n_items, result.duration)
        self._wake()

    def _mppool_resolve(self, status: int, attempts: int, duration: float, payload: bytes) -> None:
        """The chunk never ran to an outcome: cancelled, failed to send, or the pool ended."""
        self.status = status
        self.attempts = attempts
        self.payload = payload
        self._wake()

    def outcome(self) -> tuple[list[Any], BaseException | None]:
        result = self.result
        if result is not None:
            pieces = result.pieces
            results: list[Any] = decode_value(pieces[0]) if len(pieces) == 1 else []
            if len(pieces) > 1:
                for piece in pieces:
                    results.extend(decode_value(piece))
            if result.err_status == p.OK:
                return results, None
            return results, decode_error(result.err_status, self.attempts, result.err_payload)
        if self.status == p.CANCELLED:
            return [], concurrent.futures.CancelledError()
        return [], decode_error(self.status, self.attempts, self.payload)


class _Failed(_Unit):
    """An item that could not even be sent (it does not pickle): its error, in its place."""

    __slots__ = ("error",)

    def __init__(self, owner: MapIterator, error: BaseException) -> None:
        super().__init__(owner, 0, 0)
        self.error = error
        self.ready = True

    def outcome(self) -> tuple[list[Any], BaseException | None]:
        return [], self.error


class _Keyed(_Unit):
    """One item of a keyed map: a task shared by every submit of the same key."""

    __slots__ = ("future",)

    def __init__(self, owner: MapIterator, future: concurrent.futures.Future[Any]) -> None:
        super().__init__(owner, getattr(future, "task_id", 0), 1)
        self.future = future

    def done(self, _future: concurrent.futures.Future[Any]) -> None:
        self._wake()

    def outcome(self) -> tuple[list[Any], BaseException | None]:
        try:
            return [self.future.result(timeout=0)], None
        except BaseException as exc:
            return [], exc


def _length(iterables: tuple[Iterable[Any], ...]) -> int | None:
    hints = [operator.length_hint(it, -1) for it in iterables]
    if any(h < 0 for h in hints):
        return None
    return min(hints)


def _picklable_prefix(items: list[Any]) -> int:
    """How many leading items pickle on their own (only on the error path)."""
    for index, item in enumerate(items):
        try:
            dumps(item, "an input item")
        except SerializationError:
            return index
    return len(items)


class MapIterator:
    """State of one ``map`` / ``imap_unordered`` call; :meth:`results` is its iterator."""

    def __init__(
        self,
        core: _Core,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        opts: _Options,
        ordered: bool,
        chunksize: int | None,
        timeout: float | None,
        progress: Progress = None,
        owner: Any = None,
    ) -> None:
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        core.check_open()
        self.core = core
        self.owner = owner  # keeps the pool alive while the results are being consumed
        self.ordered = ordered
        self.fn, self.opts = fn, opts
        self.keyed = callable(opts.key)
        self.fn_name = getattr(fn, "__qualname__", repr(fn))
        self.star = len(iterables) > 1
        self.flags = p.FLAG_STAR if self.star else 0
        self.fn_id = self.opts_id = 0
        if not self.keyed:
            self.fn_id = core.function_id(fn)
            self.opts_id = core.register_options(opts)
        self.total = _length(iterables)
        self.sized = all(isinstance(it, collections.abc.Sized) for it in iterables)
        self.source: Iterator[Any] = (
            zip(*iterables, strict=False) if self.star else iter(iterables[0])
        )
        if chunksize is not None or self.keyed:
            self.planner = ChunkPlanner(core.workers, 1 if self.keyed else chunksize)
        else:
            # One planner per function and pool: a second map of the same function starts
            # with chunks sized from what the first one measured.
            self.planner = core.planners.get(self.fn_id) or ChunkPlanner(core.workers)
            core.planners[self.fn_id] = self.planner
        self.window = WINDOW_PER_WORKER * core.workers
        self.work_window = WINDOW_SECONDS_PER_WORKER * core.workers
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.cond = threading.Condition()
        self.feed_lock = threading.Lock()  # one reader of the input at a time
        self.mode = _OPEN
        self.started = False
        self.feeding = True  # until the input is exhausted and every item sent
        self.read = 0  # items taken from the input
        self.pending: list[Any] = []  # read by the reader thread, not yet sent
        self.pending_since = 0.0
        self.target = 0  # size of the chunk being gathered in ``pending``
        self.in_flight: deque[_Unit] = deque()  # ordered: sent and not consumed, in order
        self.ready_q: deque[_Unit] = deque()  # unordered: finished, not consumed
        self.units: dict[int, _Unit] = {}  # sent and not consumed, by task id
        self.mine: set[int] = set()  # keyed: tasks this map created (not joined)
        self.outstanding = 0
        self.outstanding_work = 0.0
        self.exhausted = False
        # An error from the input (it raised, or an item did not pickle) is raised after every
        # earlier item has been yielded, where the built-in map would raise it.
        self.input_error: BaseException | None = None
        try:
            self.progress = Reporter(progress, self.total, self.fn_name)
            core.add_map(self)
        except BaseException:
            core.release(self.fn_id, self.opts_id)
            raise
        if self.sized:
            self.fill()
        else:
            threading.Thread(target=self._read_loop, name="mppool-map-input", daemon=True).start()

    # --- the consumer --------------------------------------------------------------------------
    def results(self) -> Iterator[Any]:
        """The results, as a generator (iterating a generator runs in C between chunks)."""
        gen = self._consume()
        # Never started and dropped: run everything anyway (see the module docstring).
        weakref.finalize(gen, MapIterator._dropped, self)
        return gen

    def _consume(self) -> Iterator[Any]:
        self.started = True
        try:
            while True:
                unit = self.next_unit()
                if unit is None:
                    break
                results, error = unit.outcome()
                self.progress.advance(len(results))
                yield from results
                if error is not None:
                    raise error
            if self.input_error is not None:
                raise self.input_error
        finally:
            self.progress.close()
            self.close()

    def next_unit(self) -> _Unit | None:
        """The next unit to consume (in order, or as they finish); ``None`` at the end."""
        cond = self.cond
        with cond:
            while True:
                unit = self._pop_ready()
                if unit is not None:
                    break
                if self.exhausted and not self.pending and not self.outstanding:
                    return None
                items = self._flushable()
                if items:
                    self._send_outside_lock(items)
                    continue
                if self._feeds_here() and self._room():
                    cond.release()
                    try:
                        self.fill()
                    finally:
                        cond.acquire()
                    if self._ready_or_done():
                        continue
                woke = cond.wait(self._wait_time())
                if not woke and self.deadline is not None and time.monotonic() >= self.deadline:
                    raise TimeoutError(f"map({self.fn_name}) did not finish within its timeout")
        if self._feeds_here():
            self.fill()  # before the results are yielded: a sized input never makes them wait
        return unit

    def _feeds_here(self) -> bool:
        """Whether the consumer reads the input (a sized one, within the window)."""
        return self.sized and self.mode in (_OPEN, _DROPPED)

    def _pop_ready(self) -> _Unit | None:
        if self.ordered:
            if not self.in_flight or not self.in_flight[0].ready:
                return None
            unit = self.in_flight.popleft()
        elif self.ready_q:
            unit = self.ready_q.popleft()
        else:
            return None
        if unit.task_id:
            self.units.pop(unit.task_id, None)
        if unit.n_items:
            self.outstanding -= 1
            self.outstanding_work -= unit.estimate
        self.cond.notify_all()  # room in the window for the reader thread
        return unit

    def _ready_or_done(self) -> bool:
        if self.ordered:
            ready = bool(self.in_flight) and self.in_flight[0].ready
        else:
            ready = bool(self.ready_q)
        return ready or (self.exhausted and not self.pending and not self.outstanding)

    def _flushable(self) -> list[Any]:
        """Items the reader thread gathered that should go now: nothing else is in flight
        (the consumer would wait for nothing), or they have waited ``PARTIAL_SECONDS``."""
        if not self.pending:
            return []
        idle = not self.outstanding or (self.ordered and not self.in_flight)
        if idle or self.exhausted or time.monotonic() - self.pending_since >= PARTIAL_SECONDS:
            items, self.pending = self.pending, []
            return items
        return []

    def _wait_time(self) -> float | None:
        waits = []
        if self.deadline is not None:
            waits.append(max(0.0, self.deadline - time.monotonic()))
        if self.pending:
            waits.append(PARTIAL_SECONDS)
        return min(waits) if waits else None

    # --- feeding -------------------------------------------------------------------------------
    def _room(self) -> bool:
        if self.mode in (_EAGER, _CLOSED):
            return self.mode == _EAGER
        if self.outstanding >= self.window:
            return False
        if self.outstanding and self.outstanding_work >= self.work_window:
            # Enough estimated work is in flight. Planning further ahead would size many
            # chunks on an estimate that the coming results may prove stale.
            return False
        # Unmeasured (and sizes not fixed): one probe chunk per worker until a result is back.
        planner = self.planner
        return (
            planner.fixed is not None
            or planner.per_item is not None
            or self.outstanding < self.core.workers
        )

    def fill(self) -> None:
        """Read a sized input and send chunks while the window has room (never blocks)."""
        with self.feed_lock:
            while True:
                with self.cond:
                    if self.exhausted or not self._room():
                        return
                    remaining = None if self.total is None else max(0, self.total - self.read)
                    size = self.planner.next_size(remaining)
                items: list[Any] = []
                try:
                    # extend() keeps the items pulled before the input raised.
                    items.extend(itertools.islice(self.source, size))
                except BaseException as exc:
                    self._input_failed(exc)
                with self.cond:
                    self.read += len(items)
                    if len(items) < size:
                        self.exhausted = True
                    if items:
                        self._send_outside_lock(items)
                    if self.exhausted:
                        self._fed()
                        return

    def fill_all(self) -> None:
        """Feed everything that is left (a graceful shutdown: the consumer may not read)."""
        try:
            self.fill()
        except BaseException as exc:  # never leave the pool waiting for this map
            self._input_failed(exc)
            with self.cond:
                self._fed()

    def _read_loop(self) -> None:
        """The reader thread of an unsized input: one item at a time (the input may wait for
        the consumer, so the reader must never hold back an item it has)."""
        cond = self.cond
        try:
            while True:
                with cond:
                    while self.mode != _CLOSED and self.pending and self._pending_full():
                        if self._room():
                            items, self.pending = self.pending, []
                            self._send_outside_lock(items)
                        else:
                            cond.wait()  # a full chunk waits for room in the window
                    if self.mode == _CLOSED:
                        return
                try:
                    item = next(self.source)
                except StopIteration:
                    return
                with cond:
                    if self.mode == _CLOSED:
                        return
                    self.read += 1
                    if not self.pending:
                        remaining = None if self.total is None else max(0, self.total - self.read)
                        self.target = self.planner.next_size(remaining)
                        self.pending_since = time.monotonic()
                    self.pending.append(item)
                    if not self.outstanding or (self._pending_full() and self._room()):
                        items, self.pending = self.pending, []
                        self._send_outside_lock(items)
                    else:
                        cond.notify_all()  # the consumer may flush a partial chunk
        except BaseException as exc:
            self._input_failed(exc)
        finally:
            with cond:
                self.exhausted = True
                if self.pending and self.mode != _CLOSED:
                    items, self.pending = self.pending, []
                    self._send_outside_lock(items)
                self._fed()
                cond.notify_all()

    def _pending_full(self) -> bool:
        return len(self.pending) >= max(1, self.target) or len(self.pending) >= MAX_CHUNK_ITEMS

    def _input_failed(self, exc: BaseException) -> None:
        with self.cond:
            if self.input_error is None:
                self.input_error = exc
            self.exhausted = True
            self.cond.notify_all()

    def _send_outside_lock(self, items: list[Any]) -> None:
        """Reserve the units' places (under the lock, so the order holds), then pickle and
        submit them without it. Called with ``cond`` held; returns with it held."""
        if self.keyed:
            for item in items:
                self._submit_keyed(item)
            return
        chunk = _Chunk(self, next(self.core.ids), len(items))
        chunk.estimate = (self.planner.per_item or 0.0) * len(items)
        self._track(chunk)
        self.cond.release()
        try:
            self._submit_chunk(chunk, items)
        finally:
            self.cond.acquire()

    def _track(self, unit: _Unit) -> None:
        if self.ordered:
            self.in_flight.append(unit)
        if unit.task_id:
            self.units[unit.task_id] = unit
        self.outstanding += 1
        self.outstanding_work += unit.estimate

    def _submit_chunk(self, chunk: _Chunk, items: list[Any]) -> None:
        what = f"an input item of map({self.fn_name})"
        try:
            payload = dumps(items, what)
        except SerializationError as exc:
            # Send the items before the one that does not pickle, then stop there: the caller
            # gets every result up to the bad item, as with the built-in map.
            good = _picklable_prefix(items)
            self._input_failed(exc)
            if not good:
                chunk._mppool_resolve(p.CANCELLED, 0, 0.0, b"")  # an empty place, skipped
                return
            items = items[:good]
            chunk.n_items = good
            payload = dumps(items, what)
        msg = p.submit(
            chunk.task_id, self.fn_id, self.opts_id, len(items), self.flags, 0.0, payload, ""
        )
        self.core.register_batch([(chunk.task_id, chunk, msg)])

    def _submit_keyed(self, item: Any) -> None:
        """A keyed item: one task, shared with any unfinished task of the same key."""
        args = tuple(item) if self.star else (item,)
        keyfn = self.opts.key
        assert callable(keyfn)
        self.cond.release()
        try:
            key = str(keyfn(*args))
            fut = self.core.submit(
                self.fn, args, {}, self.opts, key=key, created=self.mine, closing_ok=True
            )
            unit: _Unit = _Keyed(self, fut)
        except BaseException as exc:
            unit = _Failed(self, exc)
            self._input_failed(exc)
        finally:
            self.cond.acquire()
        self._track(unit)
        if isinstance(unit, _Keyed):
            unit.future.add_done_callback(unit.done)
        elif not self.ordered:
            self.ready_q.append(unit)

    def _fed(self) -> None:
        """The input is exhausted (or abandoned) and everything read was sent."""
        if self.feeding:
            self.feeding = False
            self.core.map_fed(self)

    # --- the map's life ------------------------------------------------------------------------
    def eager(self) -> None:
        """The pool is shutting down gracefully: feed everything now, without the window."""
        with self.cond:
            if self.mode != _OPEN:
                return
            self.mode = _EAGER
            self.cond.notify_all()
        if self.sized:
            threading.Thread(target=self.fill_all, name="mppool-map-feed", daemon=True).start()

    @staticmethod
    def _dropped(self: MapIterator) -> None:
        """The iterator was garbage collected. Unstarted: run everything (in a thread)."""
        if self.started:
            return
        with self.cond:
            if self.mode == _CLOSED:
                return
            if self.mode == _OPEN:
                self.mode = _DROPPED
        threading.Thread(target=self._drain, name="mppool-map-drain", daemon=True).start()

    def _drain(self) -> None:
        """Consume a dropped map: every item runs; failures are counted and logged."""
        self.started = True
        failures = 0
        first: BaseException | None = None
        try:
            while True:
                unit = self.next_unit()
                if unit is None:
                    break
                _, error = unit.outcome()
                if error is not None:
                    failures += 1
                    first = first or error
        except BaseException as exc:
            failures += 1
            first = first or exc
        finally:
            self.close()
        if first is None and self.input_error is not None:
            first = self.input_error
        if first is not None:
            log.warning(
                "map(%s) was never iterated; it ran in the background and %d part(s) "
                "failed; the first error: %r",
                self.fn_name,
                failures,
                first,
            )

    def close(self) -> None:
        """Stop early: no more input; cancel what was sent and has not run."""
        with self.cond:
            if self.mode == _CLOSED:
                return
            self.mode = _CLOSED
            self.owner = None  # the map is over: it no longer keeps the pool alive
            unfinished = [u for u in self.units.values() if not u.ready]
            self.pending = []
            self.cond.notify_all()
            self._fed()
        core = self.core
        for unit in unfinished:
            if isinstance(unit, _Keyed):
                # Only this map's own tasks: one it shares with another submit (same key)
                # still has someone waiting for it.
                if unit.task_id in self.mine:
                    unit.future.cancel()
            else:
                core.cancel_task(unit.task_id, kill=False)
        core.remove_map(self)
