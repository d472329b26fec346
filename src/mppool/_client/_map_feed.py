"""The input side of a map: reading items, cutting them into chunks, submitting (user process).

Who reads the input::

    sized input (list, range, ...)  the consumer, between results: a read never waits
    any other iterator              a reader thread per map: a slow or blocking input (one
                                    that waits for the consumer, say) never holds back
                                    results that are ready; items it has read are sent as
                                    a partial chunk when nothing else is in flight or
                                    they have waited ``PARTIAL_SECONDS``

Everything here runs under, or releases and retakes, the map's condition (``MapIterator.cond``):
a unit's place in the map's order is reserved under it, then the items are pickled and
submitted without it.
"""

from __future__ import annotations

import collections.abc
import itertools
import operator
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .. import _protocol as p
from .._errors import SerializationError
from ._map_units import Chunk, Failed, Keyed, Stored, Unit
from ._planner import MAX_CHUNK_ITEMS
from ._serial import dumps, pack
from ._sizing import Demand
from ._store import DONE, RUN

if TYPE_CHECKING:
    from ._map import MapIterator

PARTIAL_SECONDS = 0.002  # items read from a slow input wait at most this long to be sent

# How a map feeds its input.
OPEN = "open"  # within its window, as its consumer reads
EAGER = "eager"  # everything, now: the pool is shutting down gracefully
DROPPED = "dropped"  # never iterated: everything, results discarded
CLOSED = "closed"  # no more input: the consumer left, or the pool is ending


def reacquire(lock: Any) -> None:
    """Take ``lock`` back after a section run without it, even if Ctrl-C arrives meanwhile.

    A blocking acquire is interrupted by a signal: a ``KeyboardInterrupt`` raised while
    waiting would leave the lock free, and the ``with lock:`` around the section would then
    fail to release it (``RuntimeError``), hiding the Ctrl-C. Wait on; raise it once held.
    """
    interrupted: BaseException | None = None
    while True:
        try:
            lock.acquire()
            break
        except KeyboardInterrupt as exc:
            interrupted = exc
    if interrupted is not None:
        raise interrupted


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


class Feeder:
    """Reads one map's input and submits it, chunk by chunk, within the map's window."""

    def __init__(self, m: MapIterator, iterables: tuple[Iterable[Any], ...]) -> None:
        self.m = m
        self.total = _length(iterables)
        self.sized = all(isinstance(it, collections.abc.Sized) for it in iterables)
        self.source: Iterator[Any] = zip(*iterables, strict=False) if m.star else iter(iterables[0])
        self.lock = threading.Lock()  # one reader of the input at a time
        self.feeding = True  # until the input is exhausted and every item sent
        self.read = 0  # items taken from the input
        self.pending: list[Any] = []  # read by the reader thread, not yet sent
        self.pending_since = 0.0
        self.target = 0  # size of the chunk being gathered in ``pending``
        self.exhausted = False
        # An error from the input (it raised, or an item did not pickle) is raised after every
        # earlier item has been yielded, where the built-in map would raise it.
        self.input_error: BaseException | None = None
        # An autoscaled pool learns how much work a sized input still holds back.
        rules = m.core.autoscale_rules and self.total is not None
        self.demand = Demand(m.core) if rules else None

    def start(self) -> None:
        if self.sized:
            self.fill()
        else:
            threading.Thread(target=self.read_loop, name="mppool-map-input", daemon=True).start()

    def feeds_on_consumer(self) -> bool:
        """Whether the consumer reads the input (a sized one, within the window)."""
        return self.sized and self.m.mode in (OPEN, DROPPED)

    def fill(self) -> None:
        """Read a sized input and send chunks while the window has room (never blocks)."""
        m = self.m
        with self.lock:
            while True:
                with m.cond:
                    if self.exhausted or not m.room():
                        return
                    remaining = None if self.total is None else max(0, self.total - self.read)
                    size = m.planner.next_size(remaining)
                items: list[Any] = []
                try:
                    # extend() keeps the items pulled before the input raised.
                    items.extend(itertools.islice(self.source, size))
                except BaseException as exc:
                    self.failed(exc)
                with m.cond:
                    if m.mode == CLOSED:
                        return  # closed from another thread meanwhile: these are not sent
                    self.read += len(items)
                    if len(items) < size:
                        self.exhausted = True
                    if items:
                        self.send(items)
                    if self.exhausted:
                        self.fed()
                        return

    def fill_all(self) -> None:
        """Feed everything that is left (a graceful shutdown: the consumer may not read)."""
        try:
            self.fill()
        except BaseException as exc:  # never leave the pool waiting for this map
            self.failed(exc)
            with self.m.cond:
                self.fed()

    def read_loop(self) -> None:
        """The reader thread of an unsized input: one item at a time (the input may wait for
        the consumer, so the reader must never hold back an item it has)."""
        m = self.m
        cond = m.cond
        try:
            while True:
                with cond:
                    while m.mode != CLOSED and self.pending and self._pending_full():
                        if m.room():
                            items, self.pending = self.pending, []
                            self.send(items)
                        else:
                            cond.wait()  # a full chunk waits for room in the window
                    if m.mode == CLOSED:
                        return
                try:
                    item = next(self.source)
                except StopIteration:
                    return
                with cond:
                    if m.mode == CLOSED:
                        return
                    self._gather(item)
        except BaseException as exc:
            self.failed(exc)
        finally:
            with cond:
                self.exhausted = True
                if self.pending and m.mode != CLOSED:
                    items, self.pending = self.pending, []
                    self.send(items)
                self.fed()
                cond.notify_all()

    def _gather(self, item: Any) -> None:
        """Add an item the reader thread read; send the gathered chunk if it should go now."""
        m = self.m
        self.read += 1
        if not self.pending:
            remaining = None if self.total is None else max(0, self.total - self.read)
            self.target = m.planner.next_size(remaining)
            self.pending_since = time.monotonic()
        self.pending.append(item)
        if not m.outstanding or (self._pending_full() and m.room()):
            items, self.pending = self.pending, []
            self.send(items)
        else:
            m.cond.notify_all()  # the consumer may flush a partial chunk

    def _pending_full(self) -> bool:
        return len(self.pending) >= max(1, self.target) or len(self.pending) >= MAX_CHUNK_ITEMS

    def flushable(self) -> list[Any]:
        """Items the reader thread gathered that should go now: nothing else is in flight
        (the consumer would wait for nothing), or they have waited ``PARTIAL_SECONDS``."""
        if not self.pending:
            return []
        m = self.m
        idle = not m.outstanding or (m.ordered and not m.in_flight)
        if idle or self.exhausted or time.monotonic() - self.pending_since >= PARTIAL_SECONDS:
            items, self.pending = self.pending, []
            return items
        return []

    def failed(self, exc: BaseException) -> None:
        """The input raised (or an item did not pickle): nothing more is read."""
        with self.m.cond:
            if self.input_error is None:
                self.input_error = exc
            self.exhausted = True
            self.m.cond.notify_all()

    def fed(self) -> None:
        """The input is exhausted (or abandoned) and everything read was sent."""
        if self.feeding:
            self.feeding = False
            self.m.core.maps.fed(self.m)
            if self.demand is not None:
                self.demand.report(0.0)

    def _report_demand(self) -> None:
        """Tell an autoscaled pool the estimated work of the input not read yet."""
        per_item = self.m.planner.per_item
        if not self.feeding:
            return  # fed or closed: its last report (zero) is out
        if self.demand is not None and self.total is not None and per_item is not None:
            self.demand.report(max(0, self.total - self.read) * per_item)

    # --- submitting ----------------------------------------------------------------------------
    def send(self, items: list[Any]) -> None:
        """Reserve the units' places (under the lock, so the order holds), then pickle and
        submit them without it. Called with ``cond`` held; returns with it held."""
        m = self.m
        if m.keyed:
            self._send_keyed(items)
            return
        chunk = Chunk(m, next(m.core.ids), len(items))
        chunk.estimate = (m.planner.per_item or 0.0) * len(items)
        m.track(chunk)
        if self.demand is not None:
            self._report_demand()
        m.cond.release()
        try:
            self._submit_chunk(chunk, items)
        finally:
            reacquire(m.cond)

    def _submit_chunk(self, chunk: Chunk, items: list[Any]) -> None:
        m = self.m
        what = f"an input item of map({m.fn_name})"
        core = m.core
        try:
            payload, kept = pack(items, what, core.shm_prefix)
        except SerializationError as exc:
            # Send the items before the one that does not pickle, then stop there: the caller
            # gets every result up to the bad item, as with the built-in map.
            good = _picklable_prefix(items)
            self.failed(exc)
            if not good:
                chunk.fail(exc)  # the bad item's place: its error, after every earlier result
                return
            items = items[:good]
            chunk.n_items = good
            payload, kept = pack(items, what, core.shm_prefix)
        if kept is not None:
            core.segments[chunk.task_id] = kept
        msg = p.submit(
            chunk.task_id,
            m.fn_id,
            m.opts_id,
            len(items),
            m.flags,
            0.0,
            payload,
            "",
            m.opts.deadline_time(),  # counted from each chunk's submission
        )
        m.core.register_batch([(chunk.task_id, chunk, msg)])

    def _send_keyed(self, items: list[Any]) -> None:
        """Keyed items: one task each, shared with any unfinished task of the same key; with
        a job store, one claim for the whole block, and runs of stored results as one unit."""
        m = self.m
        m.cond.release()
        try:
            units = self._keyed_units(items)
        finally:
            reacquire(m.cond)
        for unit in units:
            m.track(unit)
            if isinstance(unit, Keyed):
                unit.future.add_done_callback(unit.done)
            elif not m.ordered:
                m.ready_q.append(unit)

    def _keyed_units(self, items: list[Any]) -> list[Unit]:
        m = self.m
        core = m.core
        keyfn = m.opts.key
        assert callable(keyfn)
        calls: list[tuple[tuple[Any, ...], str]] = []
        key_error: BaseException | None = None
        try:
            for item in items:
                args = tuple(item) if m.star else (item,)
                calls.append((args, str(keyfn(*args))))
        except BaseException as exc:  # the items before it still run; the error takes its place
            key_error = exc
        decisions = core.store.claim([k for _, k in calls]) if core.store and calls else {}
        units: list[Unit] = []
        stored: list[bytes] = []
        for n, (args, key) in enumerate(calls):
            decision = decisions.get(key)
            if decision is not None and decision[0] == DONE:
                stored.append(decision[1])
                continue
            if stored:
                units.append(Stored(m, stored))
                stored = []
            try:
                fut = core.submit(
                    m.fn,
                    args,
                    {},
                    m.opts,
                    key=key,
                    created=m.mine,
                    closing_ok=True,
                    decision=decision,
                )
            except BaseException as exc:
                key_error = exc
                self._release_claims(calls[n + 1 :], decisions)
                break
            units.append(Keyed(m, fut))
        if stored:
            units.append(Stored(m, stored))
        if key_error is not None:
            units.append(Failed(m, key_error))
            self.failed(key_error)
        return units

    def _release_claims(
        self, calls: list[tuple[tuple[Any, ...], str]], decisions: dict[str, Any]
    ) -> None:
        """Keys claimed for items that will not be submitted: give the claims back."""
        store = self.m.core.store
        if store is not None:
            for _, key in calls:
                if decisions.get(key, (None,))[0] == RUN:
                    store.journal.released(key)
