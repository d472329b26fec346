"""The pieces a map submits, as the pool's reader thread resolves them (user process).

A unit is a chunk task (``_Chunk``), one item of a keyed map (``_Keyed``: a task shared with
every submit of the same key), or an item that could not even be sent (``_Failed``). The
reader thread resolves a unit and wakes its map; the map's consumer turns it into results.
"""

from __future__ import annotations

import concurrent.futures
import pickle
from typing import TYPE_CHECKING, Any

from .. import _protocol as p
from .._errors import SerializationError
from .._shm import names_segment
from ._serial import decode_error, decode_value

if TYPE_CHECKING:
    from ._map import MapIterator


class Unit:
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


class Chunk(Unit):
    """A chunk task: resolved by the pool's reader thread, consumed by the iterator."""

    __slots__ = ("attempts", "early", "error", "payload", "result", "status")

    def __init__(self, owner: MapIterator, task_id: int, n_items: int) -> None:
        super().__init__(owner, task_id, n_items)
        self.status = -1
        self.attempts = 0
        self.payload = b""
        self.result: p.ChunkResult | None = None
        self.error: BaseException | None = None
        self.early: list[Any] | None = None  # results decoded as they came (shared memory)

    def _mppool_chunk(self, result: p.ChunkResult) -> None:
        """The chunk ran (in one or more parts): its pieces of results and any error."""
        if any(names_segment(piece) for piece in result.pieces):
            # Results in shared memory are mapped now, while their segments exist: the
            # pool may end before the consumer reads them.
            try:
                self.early = [value for piece in result.pieces for value in decode_value(piece)]
            except Exception:
                pass  # outcome() decodes again and reports it
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

    def fail(self, error: BaseException) -> None:
        """The chunk was never sent: its first item does not pickle."""
        self.error = error
        self._wake()

    def outcome(self) -> tuple[list[Any], BaseException | None]:
        result = self.result
        if result is not None:
            pieces = result.pieces
            if self.early is not None:
                results: list[Any] = self.early
            else:
                results = decode_value(pieces[0]) if len(pieces) == 1 else []
                if len(pieces) > 1:
                    for piece in pieces:
                        results.extend(decode_value(piece))
            if result.err_status == p.OK:
                return results, None
            return results, decode_error(result.err_status, self.attempts, result.err_payload)
        if self.error is not None:
            return [], self.error
        if self.status == p.CANCELLED:
            return [], concurrent.futures.CancelledError()
        return [], decode_error(self.status, self.attempts, self.payload)


class Stored(Unit):
    """A run of consecutive items whose keys the job store has done: their stored results."""

    __slots__ = ("payloads",)

    def __init__(self, owner: MapIterator, payloads: list[bytes]) -> None:
        super().__init__(owner, 0, len(payloads))
        self.payloads = payloads
        self.ready = True

    def outcome(self) -> tuple[list[Any], BaseException | None]:
        try:  # kept whole in the store (never by segment): plain pickles
            return [pickle.loads(payload) for payload in self.payloads], None
        except (Exception, SystemExit):  # a stored result that no longer unpickles here
            results: list[Any] = []
            for payload in self.payloads:
                try:
                    results.append(decode_value(payload))
                except SerializationError as exc:
                    return results, exc
            return results, None


class Failed(Unit):
    """An item that could not even be sent (it does not pickle): its error, in its place."""

    __slots__ = ("error",)

    def __init__(self, owner: MapIterator, error: BaseException) -> None:
        super().__init__(owner, 0, 0)
        self.error = error
        self.ready = True

    def outcome(self) -> tuple[list[Any], BaseException | None]:
        return [], self.error


class Keyed(Unit):
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
