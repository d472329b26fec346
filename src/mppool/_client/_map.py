"""Lazy, bounded, adaptively chunked ``map`` and ``imap_unordered`` (user process).

The input is cut into chunks, one task each (or, for a keyed map, one keyed task per item).
At most ``WINDOW_PER_WORKER * workers`` of them are submitted and not yet consumed, so
memory is bounded whatever the input's length.

The input side (reading, chunking, submitting) is ``_map_feed``; the pieces submitted are
``_map_units``; this module is the consumer's side and the map's life.

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

import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .. import _protocol as p
from ._map_feed import CLOSED, DROPPED, EAGER, OPEN, Feeder, reacquire
from ._map_units import Keyed, Unit
from ._planner import ChunkPlanner, Progress, Reporter

if TYPE_CHECKING:
    from ._core import _Core
    from ._options import _Options

WINDOW_PER_WORKER = 8  # chunks in flight (submitted, not consumed) per worker
WINDOW_SECONDS_PER_WORKER = 0.1  # ... and at most this much estimated work per worker
KEYED_BLOCK = 256  # keyed items read (and claimed in a job store) together; each is a task

log = logging.getLogger("mppool.map")


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
        if opts.after:
            raise ValueError("options(after=...) is for submit(): a map's items wait for nothing")
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
            self.fn_id = core.catalog.function_id(fn)
            self.opts_id = core.catalog.options_id(opts)
        if chunksize is not None or self.keyed:
            self.planner = ChunkPlanner(core.workers, KEYED_BLOCK if self.keyed else chunksize)
        else:
            # One planner per function and pool: a second map of the same function starts
            # with chunks sized from what the first one measured.
            self.planner = core.catalog.planners.get(self.fn_id) or ChunkPlanner(core.workers)
            core.catalog.planners[self.fn_id] = self.planner
        self.window = WINDOW_PER_WORKER * core.workers
        self.work_window = WINDOW_SECONDS_PER_WORKER * core.workers
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.cond = threading.Condition()
        self.mode = OPEN
        self.started = False
        self.in_flight: deque[Unit] = deque()  # ordered: sent and not consumed, in order
        self.ready_q: deque[Unit] = deque()  # unordered: finished, not consumed
        self.units: dict[int, Unit] = {}  # sent and not consumed, by task id
        self.mine: set[int] = set()  # keyed: tasks this map created (not joined)
        self.outstanding = 0
        self.outstanding_work = 0.0
        self.feed = Feeder(self, iterables)
        try:
            self.progress = Reporter(progress, self.feed.total, self.fn_name)
            core.maps.add(self)
        except BaseException:
            core.catalog.release(self.fn_id, self.opts_id)
            raise
        self.feed.start()

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
            if self.feed.input_error is not None:
                raise self.feed.input_error
        finally:
            self.progress.close()
            self.close()

    def next_unit(self) -> Unit | None:
        """The next unit to consume (in order, or as they finish); ``None`` at the end."""
        cond, feed = self.cond, self.feed
        with cond:
            while True:
                unit = self._pop_ready()
                if unit is not None:
                    break
                if self._finished() or (self.mode == CLOSED and not self.outstanding):
                    return None  # the end, or closed from another thread with nothing left
                items = feed.flushable()
                if items:
                    feed.send(items)
                    continue
                if feed.feeds_on_consumer() and self.room():
                    cond.release()
                    try:
                        feed.fill()
                    finally:
                        reacquire(cond)
                    if self._ready_or_done():
                        continue
                woke = cond.wait(self._wait_time())
                if not woke and self.deadline is not None and time.monotonic() >= self.deadline:
                    raise TimeoutError(f"map({self.fn_name}) did not finish within its timeout")
        if feed.feeds_on_consumer():
            feed.fill()  # before the results are yielded: a sized input never makes them wait
        return unit

    def _finished(self) -> bool:
        return self.feed.exhausted and not self.feed.pending and not self.outstanding

    def _pop_ready(self) -> Unit | None:
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
        return ready or self._finished()

    def _wait_time(self) -> float | None:
        from ._map_feed import PARTIAL_SECONDS

        waits = []
        if self.deadline is not None:
            waits.append(max(0.0, self.deadline - time.monotonic()))
        if self.feed.pending:
            waits.append(PARTIAL_SECONDS)
        return min(waits) if waits else None

    # --- the window ----------------------------------------------------------------------------
    def room(self) -> bool:
        """Whether another unit may be submitted (called with ``cond`` held)."""
        if self.mode in (EAGER, CLOSED):
            return self.mode == EAGER
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

    def resized(self, workers: int) -> None:
        """The pool has ``workers`` workers now: the window follows."""
        with self.cond:
            self.window = WINDOW_PER_WORKER * workers
            self.work_window = WINDOW_SECONDS_PER_WORKER * workers
            self.planner.workers = workers
            self.cond.notify_all()  # a larger window has room now

    def track(self, unit: Unit) -> None:
        """A unit was submitted: it takes its place in the window (``cond`` held)."""
        if self.ordered:
            self.in_flight.append(unit)
        if unit.task_id:
            self.units[unit.task_id] = unit
        self.outstanding += 1
        self.outstanding_work += unit.estimate

    # --- the map's life ------------------------------------------------------------------------
    def eager(self) -> None:
        """The pool is shutting down gracefully: feed everything now, without the window."""
        with self.cond:
            if self.mode != OPEN:
                return
            self.mode = EAGER
            self.cond.notify_all()
        if self.feed.sized:
            threading.Thread(target=self.feed.fill_all, name="mppool-map-feed", daemon=True).start()

    @staticmethod
    def _dropped(self: MapIterator) -> None:
        """The iterator was garbage collected. Unstarted: run everything (in a thread)."""
        if self.started:
            return
        with self.cond:
            if self.mode == CLOSED:
                return
            if self.mode == OPEN:
                self.mode = DROPPED
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
        if first is None and self.feed.input_error is not None:
            first = self.feed.input_error
        if first is not None:
            log.warning(
                "map(%s) was never iterated; it ran in the background and %d part(s) "
                "failed; the first error: %r",
                self.fn_name,
                failures,
                first,
            )

    def close(self, kill: bool = False) -> None:
        """Stop early: no more input; cancel what was sent and has not run (and, with
        ``kill``, kill what runs)."""
        with self.cond:
            if self.mode == CLOSED:
                return
            self.mode = CLOSED
            self.owner = None  # the map is over: it no longer keeps the pool alive
            unfinished = [u for u in self.units.values() if not u.ready]
            self.feed.pending = []
            self.cond.notify_all()
            self.feed.fed()
        core = self.core
        for unit in unfinished:
            if isinstance(unit, Keyed):
                # Only this map's own tasks: one it shares with another submit (same key)
                # still has someone waiting for it.
                if unit.task_id in self.mine:
                    unit.future.cancel()
            else:
                core.cancel_task(unit.task_id, kill=kill)
        core.maps.remove(self)
