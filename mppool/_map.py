"""Lazy, bounded, adaptively chunked ``map`` and ``imap_unordered``.

The input is cut into chunks, one task each. The iterator keeps at most
``WINDOW_PER_WORKER * workers`` chunks submitted and not yet consumed, and reads the input
only to refill that window, so memory is bounded whatever the input's length.

Chunk sizes come from :class:`ChunkPlanner`: it aims at ``CHUNK_TARGET_SECONDS`` of work
per chunk from the run times the workers report (weighted by item count, so one large chunk
outweighs many small ones), starts at one item, grows at most ``GROWTH`` times per step, and,
when the input's length is known, never takes more than ``remaining / (TAIL_SPLIT * workers)``
items, so the last part of the input is spread over every worker instead of landing in one
chunk behind a slow one.
"""

from __future__ import annotations

import itertools
import operator
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from . import _protocol as p
from ._errors import PoolClosedError, SerializationError
from ._serial import decode_error, decode_value, dumps

if TYPE_CHECKING:
    from ._core import _Core, _Options

CHUNK_TARGET_SECONDS = 0.020  # work per chunk the planner aims at
MAX_CHUNK_ITEMS = 16384  # cap on items per chunk (bounds memory and result latency)
GROWTH = 8.0  # a chunk is at most this many times larger than the largest so far
TAIL_SPLIT = 4  # near the end, chunks are at most remaining / (TAIL_SPLIT * workers)
WINDOW_PER_WORKER = 8  # chunks in flight (submitted, not consumed) per worker
WINDOW_SECONDS_PER_WORKER = 0.1  # ... and at most this much estimated work per worker
DECAY = 0.5  # weight kept by older measurements at each new one

ProgressHook = Callable[[int, "int | None"], None]
Progress = bool | ProgressHook | None


class _Reporter:
    """Progress of one map: a tqdm bar (``progress=True``) or a user hook ``(done, total)``."""

    def __init__(self, progress: Progress, total: int | None, name: str) -> None:
        self.done = 0
        self.total = total
        self.hook: ProgressHook | None = None
        self.bar: Any = None
        if progress is True:
            from tqdm import tqdm

            class _Bar(tqdm):  # type: ignore[misc]
                # tqdm's monitor thread would outlive the map (and the pool); our bar is
                # updated on every chunk, so it needs no monitor.
                monitor_interval = 0

            self.bar = _Bar(total=total, desc=name, unit="item", dynamic_ncols=True)
        elif callable(progress):
            self.hook = progress
        elif progress not in (None, False):
            raise TypeError("progress must be True, False, None or a callable(done, total)")

    def advance(self, count: int) -> None:
        if not count:
            return
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
        elif self.hook is not None:
            self.hook(self.done, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class ChunkPlanner:
    """Decides how many items go into the next chunk (pure; no I/O).

    Args:
        workers: number of workers sharing the work.
        fixed: a fixed chunk size, or ``None`` to adapt.
    """

    def __init__(self, workers: int, fixed: int | None = None) -> None:
        if fixed is not None and fixed < 1:
            raise ValueError(f"chunksize must be >= 1, not {fixed!r}")
        self.workers = workers
        self.fixed = fixed
        self._mean: float | None = None
        self._last = 0.0
        self._largest = 1

    def observe(self, items: int, seconds: float) -> None:
        """Record that a chunk of ``items`` items took ``seconds`` in a worker."""
        # Averaged per chunk, not per item: weighting by items would let a big chunk of light
        # items drown a small chunk of heavy ones, the very signal that costs are rising.
        rate = seconds / max(1, items)
        self._last = rate
        self._mean = rate if self._mean is None else self._mean + (1 - DECAY) * (rate - self._mean)

    @property
    def per_item(self) -> float | None:
        """Estimated seconds per item, or ``None`` before any measurement.

        The larger of the running mean and the latest chunk: when costs rise (a skewed input
        whose heavy items come last) chunks shrink at once; when they fall, they grow back
        smoothly with the mean.
        """
        if self._mean is None:
            return None
        return max(self._mean, self._last)

    def next_size(self, remaining: int | None) -> int:
        """Items for the next chunk, given how many are left (``None`` if unknown)."""
        if self.fixed is not None:
            return self.fixed
        per_item = self.per_item
        if per_item is None:
            size = 1
        elif per_item <= 0:
            size = MAX_CHUNK_ITEMS
        else:
            size = int(CHUNK_TARGET_SECONDS / per_item)
        size = max(1, min(size, MAX_CHUNK_ITEMS, int(self._largest * GROWTH)))
        if remaining is not None and per_item is not None:
            # Spread the tail over every worker, but do not cut chunks below a quarter of the
            # target: splitting work that short only adds messages.
            tail = -(-remaining // (TAIL_SPLIT * self.workers))
            floor = int(CHUNK_TARGET_SECONDS / 4 / per_item) if per_item > 0 else size
            size = min(size, max(1, tail, floor))
        self._largest = max(self._largest, size)
        return size


class _Chunk:
    """One submitted chunk: resolved by the reader thread, consumed by the iterator."""

    __slots__ = (
        "attempts",
        "estimate",
        "event",
        "n_items",
        "owner",
        "payload",
        "result",
        "status",
        "task_id",
    )

    def __init__(self, owner: MapIterator, task_id: int, n_items: int) -> None:
        self.owner = owner
        self.task_id = task_id
        self.n_items = n_items
        self.status = -1
        self.estimate = 0.0
        self.attempts = 0
        self.payload = b""
        self.result: p.ChunkResult | None = None
        self.event: threading.Event | None = threading.Event() if owner.ordered else None

    def _mppool_chunk(self, result: p.ChunkResult) -> None:
        """The chunk ran (in one or more parts): its pieces of results and any error."""
        self.result = result
        self.status = p.OK
        self.attempts = result.attempts
        if result.err_status == p.OK:
            self.owner.planner.observe(self.n_items, result.duration)
        self._wake()

    def _mppool_resolve(self, status: int, attempts: int, duration: float, payload: bytes) -> None:
        """The chunk never ran to an outcome: cancelled, or the pool ended."""
        self.status = status
        self.attempts = attempts
        self.payload = payload
        self._wake()

    def _wake(self) -> None:
        if self.event is not None:
            self.event.set()
        else:
            self.owner.done.put(self)

    def outcome(self) -> tuple[list[Any], BaseException | None]:
        """The chunk's results, and the error that stopped it (if any)."""
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
            from concurrent.futures import CancelledError

            return [], CancelledError()
        return [], decode_error(self.status, self.attempts, self.payload)


def _picklable_prefix(items: list[Any]) -> int:
    """How many leading items pickle on their own (only on the error path)."""
    for index, item in enumerate(items):
        try:
            dumps(item, "an input item")
        except SerializationError:
            return index
    return len(items)


def _length(iterables: tuple[Iterable[Any], ...]) -> int | None:
    hints = [operator.length_hint(it, -1) for it in iterables]
    if any(h < 0 for h in hints):
        return None
    return min(hints)


class MapIterator:
    """State of one ``Pool.map`` or ``Pool.imap_unordered`` call; see :meth:`results`."""

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
        self.fn_id = core.function_id(fn)
        self.opts_id = core.register_options(opts)
        self.fn_name = getattr(fn, "__qualname__", repr(fn))
        self.star = len(iterables) > 1
        self.flags = p.FLAG_STAR if self.star else 0
        self.total = _length(iterables)
        self.source: Iterator[Any] = (
            zip(*iterables, strict=False) if self.star else iter(iterables[0])
        )
        if chunksize is None:
            # One planner per function and pool: a second map of the same function starts
            # with chunks sized from what the first one measured.
            self.planner = core.planners.get(self.fn_id) or ChunkPlanner(core.workers)
            core.planners[self.fn_id] = self.planner
        else:
            self.planner = ChunkPlanner(core.workers, chunksize)
        self.window = WINDOW_PER_WORKER * core.workers
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.read = 0  # items taken from the input
        self.in_flight: deque[_Chunk] = deque()  # ordered: submission order
        self.outstanding = 0
        self.outstanding_work = 0.0  # estimated seconds of the outstanding chunks
        self.work_window = WINDOW_SECONDS_PER_WORKER * core.workers
        self.done: queue.SimpleQueue[_Chunk] = queue.SimpleQueue()
        self.exhausted = False
        self.finished = False
        self.progress = _Reporter(progress, self.total, self.fn_name)
        # An error from the input (it raised, or an item did not pickle) is raised after every
        # earlier item has been yielded, where the built-in map would raise it.
        self.input_error: BaseException | None = None
        try:
            self._fill()
        except PoolClosedError:
            self.progress.close()
            raise
        except BaseException as exc:
            self.input_error, self.exhausted = exc, True

    def _fill(self) -> None:
        core = self.core
        batch: list[tuple[int, Any, tuple[Any, ...]]] = []
        try:
            while self.outstanding < self.window and not self.exhausted:
                core.check_open()
                per_item = self.planner.per_item
                if per_item is None and self.outstanding >= core.workers:
                    break  # unmeasured: one probe chunk per worker until a result comes back
                if self.outstanding and self.outstanding_work >= self.work_window:
                    # Enough estimated work is in flight. Planning further ahead would size
                    # many chunks on an estimate that the coming results may prove stale.
                    break
                remaining = None if self.total is None else max(0, self.total - self.read)
                size = self.planner.next_size(remaining)
                items: list[Any] = []
                pull_error: BaseException | None = None
                try:
                    # extend() keeps the items pulled before the input raised: they are sent,
                    # and the error is raised after their results.
                    items.extend(itertools.islice(self.source, size))
                except BaseException as exc:
                    pull_error = exc
                if len(items) < size:
                    self.exhausted = True
                if not items:
                    if pull_error is not None:
                        raise pull_error
                    break
                self.read += len(items)
                try:
                    payload = dumps(items, f"an input item of map({self.fn_name})")
                except SerializationError as exc:
                    # Send the items before the one that does not pickle, then raise: the
                    # caller gets every result up to the bad item, as with the built-in map.
                    good = _picklable_prefix(items)
                    if not good:
                        raise
                    items, pull_error = items[:good], exc
                    self.exhausted = True
                    payload = dumps(items, f"an input item of map({self.fn_name})")
                task_id = next(core.ids)
                chunk = _Chunk(self, task_id, len(items))
                chunk.estimate = (per_item or 0.0) * len(items)
                self.outstanding_work += chunk.estimate
                msg = p.submit(
                    task_id, self.fn_id, self.opts_id, len(items), self.flags, 0.0, payload, ""
                )
                batch.append((task_id, chunk, msg))
                if self.ordered:
                    self.in_flight.append(chunk)
                self.outstanding += 1
                if pull_error is not None:
                    raise pull_error
        finally:
            # Chunks planned before an error (the input raised, an item did not pickle) are
            # still sent: their results come before the error. Written from this thread, not
            # by waking the sender thread: a thread switch per refill is time taken from the
            # workers on a busy machine.
            if batch:
                core.register_batch(batch)

    def _wait(self) -> _Chunk:
        timeout = None
        if self.deadline is not None:
            timeout = max(0.0, self.deadline - time.monotonic())
        if self.ordered:
            chunk = self.in_flight[0]
            assert chunk.event is not None
            if not chunk.event.wait(timeout):
                raise TimeoutError("map() did not finish within its timeout")
            self.in_flight.popleft()
            return chunk
        try:
            return self.done.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("imap_unordered() did not finish within its timeout") from None

    def results(self) -> Iterator[Any]:
        """The results, as a generator (iterating a generator runs in C between chunks)."""
        try:
            while self.outstanding or not self.exhausted:
                chunk = self._wait()
                self.outstanding -= 1
                self.outstanding_work -= chunk.estimate
                results, error = chunk.outcome()
                if error is None and self.input_error is None:
                    try:
                        self._fill()  # refill before yielding, so workers stay busy
                    except BaseException as exc:  # the input raised, or an item did not pickle
                        self.input_error, self.exhausted = exc, True
                self.progress.advance(len(results))
                yield from results
                if error is not None:
                    raise error
            if self.input_error is not None:
                raise self.input_error
        finally:
            self.progress.close()
            self.close()

    def close(self) -> None:
        """Stop early: cancel chunks not yet run and forget the rest."""
        if self.finished:
            return
        self.finished = True
        self.owner = None  # the map is over: it no longer keeps the pool alive
        core = self.core
        for task_id in [c.task_id for c in self.in_flight] if self.ordered else []:
            core.cancel_task(task_id, kill=False)
        if not self.ordered:
            for task_id, entry in list(core.entries.items()):
                if isinstance(entry, _Chunk) and entry.owner is self:
                    core.cancel_task(task_id, kill=False)
        self.in_flight.clear()


def keyed_results(
    core: _Core,
    fn: Callable[..., Any],
    iterables: tuple[Iterable[Any], ...],
    opts: _Options,
    ordered: bool,
    timeout: float | None,
    progress: Progress = None,
    owner: Any = None,
) -> Iterator[Any]:
    """``map`` with ``options(key=callable)``: one task per item, deduplicated by its key.

    Items whose key is already queued or running (from this map or any ``submit``) share
    that task's result instead of running again. Items are not chunked (a shared result
    belongs to one item), but the window of unconsumed items stays bounded.
    """
    import concurrent.futures

    keyfn = opts.key
    assert callable(keyfn)
    star = len(iterables) > 1
    source: Iterator[Any] = zip(*iterables, strict=False) if star else iter(iterables[0])
    window = WINDOW_PER_WORKER * core.workers
    deadline = None if timeout is None else time.monotonic() + timeout
    pending: deque[concurrent.futures.Future[Any]] = deque()
    mine: set[int] = set()  # tasks this map created (others' tasks it joined are not its own)
    exhausted = False
    reporter = _Reporter(progress, _length(iterables), getattr(fn, "__qualname__", "map"))

    def refill() -> None:
        nonlocal exhausted
        while not exhausted and len(pending) < window:
            try:
                item = next(source)
            except StopIteration:
                exhausted = True
                return
            args = tuple(item) if star else (item,)
            key = str(keyfn(*args))
            pending.append(core.submit(fn, args, {}, opts, key=key, created=mine))

    def left() -> float | None:
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    try:
        refill()
        while pending:
            if ordered:
                fut = pending.popleft()
            else:
                done, _ = concurrent.futures.wait(
                    pending, timeout=left(), return_when=concurrent.futures.FIRST_COMPLETED
                )
                if not done:
                    raise TimeoutError("imap_unordered() did not finish within its timeout")
                fut = next(f for f in pending if f in done)
                pending.remove(fut)
            value = fut.result(timeout=left())
            refill()
            reporter.advance(1)
            yield value
    finally:
        reporter.close()
        for fut in pending:
            # Leaving early cancels only this map's own tasks: a task it shares with another
            # submit or map (same key) still has someone waiting for it.
            if getattr(fut, "task_id", None) in mine:
                fut.cancel()
