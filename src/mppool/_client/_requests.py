"""Questions the user process asks its dispatcher (stats, the task table), and the answers.

A request goes out with an id; the reader thread hands the answer to the waiter of that id.
Asking from the reader thread itself (a future's done callback) would wait for the very
thread that delivers the answer: it raises ``RuntimeError`` instead.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import _protocol as p
from .._stats import PoolStats

if TYPE_CHECKING:
    from ._core import _Core

TIMEOUT = 30.0  # seconds to wait for an answer


class Requests:
    """The requests of one pool that wait for an answer, by request id."""

    def __init__(self, core: _Core) -> None:
        self._core = core
        self._waiting: dict[int, concurrent.futures.Future[Any]] = {}

    def ask(self, message: Callable[[int], Any]) -> Any:
        """Send ``message(request_id)`` and wait for the dispatcher's answer to it."""
        core = self._core
        if core.conn.on_reader_thread():
            raise RuntimeError(
                "stats(), tasks(), task() and resize() cannot be called from a future's "
                "done callback"
            )
        request_id = next(core.ids)
        waiter: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._waiting[request_id] = waiter
        # Checked after the waiter is in place: a pool that ends now either fails it
        # (``fail_all``) or is seen ended here, never neither.
        try:
            core.check_answering()
        except BaseException:
            self._waiting.pop(request_id, None)
            raise
        core.send(message(request_id))
        try:
            return waiter.result(TIMEOUT)
        finally:
            self._waiting.pop(request_id, None)

    def answer(self, request_id: int, value: Any) -> None:
        """On the reader thread: the dispatcher answered."""
        waiter = self._waiting.get(request_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(value)

    def fail_all(self, error: BaseException) -> None:
        """No answer will come (the pool ended or broke)."""
        for waiter in list(self._waiting.values()):
            if not waiter.done():
                waiter.set_exception(error)

    def stats(self) -> PoolStats:
        snap = self.ask(lambda request_id: p.StatsRequest(p.C_STATS, request_id))
        snap["deduplicated"] = self._core.keys.deduplicated
        return PoolStats.from_snapshot(snap)

    def tasks(self, task_id: int = 0) -> list[dict[str, Any]]:
        """Rows of the task table: all of them, or the one of ``task_id``."""
        rows: list[dict[str, Any]] = self.ask(
            lambda request_id: p.ListTasks(p.C_LIST, request_id, task_id)
        )
        return rows
