"""The futures a pool returns: ``concurrent.futures.Future`` with a task id and fast paths.

Most futures of a large batch are resolved by the pool's reader thread before anyone waits
on them, and read once when they are done. Neither needs the ``threading.Condition`` that
``concurrent.futures.Future`` creates in ``__init__`` (half the memory of a queued task, and
a few microseconds each), so it is created on first use: a waiter always creates it (under
``_CONDITION_LOCK``) before it waits, so "no condition yet" means "nobody to wake", and the
reader can set the state directly. This relies on private fields of
``concurrent.futures.Future`` (``_state``, ``_result``, ``_exception``, ``_waiters``,
``_done_callbacks``, ``_invoke_callbacks``); ``tests/test_future.py`` pins them.
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .. import _protocol as p
from ._serial import decode_error, decode_value

if TYPE_CHECKING:
    from ._core import _Core

T = TypeVar("T")

_CONDITION_LOCK = threading.Lock()
# concurrent.futures.Future's private states, which the fast paths rely on.
_FINISHED = "FINISHED"
_ENDED = frozenset({"CANCELLED", "CANCELLED_AND_NOTIFIED", _FINISHED})


def reset_after_fork() -> None:
    """In a forked child: a lock another thread held at the fork would stay held."""
    global _CONDITION_LOCK
    _CONDITION_LOCK = threading.Lock()


class Future(concurrent.futures.Future[T], Generic[T]):
    """The result of a task: a ``concurrent.futures.Future`` that knows its task.

    Returned by ``Pool.submit``. It works everywhere a ``concurrent.futures.Future`` does
    (``wait``, ``as_completed``, ``asyncio.wrap_future``). Besides, ``task_id`` names the task
    in ``Pool.tasks()`` and the HTTP API, and ``cancel()`` also removes the task from the
    pool's queue (``Pool.cancel(future, kill=True)`` kills it if it runs).

    Done callbacks run on the pool's result thread: they must not wait for another result of
    the same pool (``result()`` there raises ``RuntimeError`` instead of waiting forever).
    """

    _core: _Core | None = None
    _task_id = 0
    _fn_id = 0  # the function and options it holds (released when it is resolved)
    _opts_id = 0
    _stored: Any = None  # (store, key, fn, args, submitted at) of a journaled keyed task

    def __init__(self) -> None:  # deliberately not calling super().__init__ (see above)
        self._state = "PENDING"
        self._result = None
        self._exception = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Any] = []

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        cond: threading.Condition | None = self.__dict__.get("_lazy_condition")
        if cond is None:
            with _CONDITION_LOCK:  # two threads must never create two conditions
                cond = self.__dict__.get("_lazy_condition")
                if cond is None:
                    cond = self.__dict__["_lazy_condition"] = threading.Condition()
        return cond

    @property
    def task_id(self) -> int:
        """The pool's id for this task (as in ``Pool.tasks()``)."""
        return self._task_id

    # Fast paths (see the module docstring).
    def _finish(self, result: Any, exception: BaseException | None) -> None:
        ended = None
        with _CONDITION_LOCK:
            direct = "_lazy_condition" not in self.__dict__
            if direct:
                ended = self._state if self._state in _ENDED else None
                if ended is None:
                    self._result = result
                    self._exception = exception
                    self._state = _FINISHED
        if ended is not None:  # repr() takes the lock: never under it
            raise concurrent.futures.InvalidStateError(f"{ended}: {self!r}")
        if not direct:
            if exception is not None:
                super().set_exception(exception)
            else:
                super().set_result(result)
            return
        self._invoke_callbacks()  # type: ignore[attr-defined]

    def result(self, timeout: float | None = None) -> T:
        if self._state == _FINISHED:  # set once, never changed after: safe to read bare
            if self._exception is not None:
                try:
                    raise self._exception
                finally:
                    self = None  # type: ignore[assignment]  # no cycle via the traceback
            value: T = self._result  # type: ignore[assignment]
            return value
        self._refuse_on_result_thread()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state == _FINISHED:
            return self._exception
        self._refuse_on_result_thread()
        return super().exception(timeout)

    def _refuse_on_result_thread(self) -> None:
        """Waiting on the thread that delivers results would wait forever."""
        core = self._core
        if core is not None and not self.done() and core.conn.on_reader_thread():
            raise RuntimeError(
                "a done callback cannot wait for another result of the same pool: it runs on "
                "the thread that delivers results (use add_done_callback on that future)"
            )

    def done(self) -> bool:
        return self._state in _ENDED

    def cancel(self) -> bool:
        return self._cancel(kill=False)

    def _cancel(self, kill: bool) -> bool:
        if self.cancelled():
            return True  # already: waiters were notified then (a second notice would raise)
        cancelled = super().cancel()
        if cancelled:
            # Future.cancel() wakes result() callers but not wait()/as_completed() waiters;
            # only this call does. The pool never marks its futures RUNNING, so it is safe.
            self.set_running_or_notify_cancel()
            core = self._core
            if core is not None:
                core.cancel_task(self._task_id, kill=kill)
        return cancelled

    def _mppool_resolve(self, status: int, attempts: int, duration: float, payload: bytes) -> None:
        if self._stored is not None:
            from ._stored import record

            record(self, status, attempts, duration, payload)
        try:
            if status == p.OK:
                try:
                    value = decode_value(payload)
                except Exception as exc:
                    self._finish(None, exc)
                else:
                    self._finish(value, None)
            elif status == p.CANCELLED:
                if not self.cancelled():  # the user may have cancelled (and notified) it
                    concurrent.futures.Future.cancel(self)
                    self.set_running_or_notify_cancel()
            else:
                self._finish(None, decode_error(status, attempts, payload))
        except concurrent.futures.InvalidStateError:
            pass  # cancelled by the user meanwhile: the result is dropped
        finally:
            core = self._core
            if core is not None and self._fn_id:
                core.catalog.release(self._fn_id, self._opts_id)
                self._fn_id = self._opts_id = 0

    def _mppool_fail(self, exc: BaseException) -> None:
        """Fail with ``exc``, decided in this process (the dispatcher will not answer)."""
        try:
            self._finish(None, exc)
        except concurrent.futures.InvalidStateError:
            pass  # cancelled by the user meanwhile
        finally:
            core = self._core
            if core is not None and self._fn_id:
                core.catalog.release(self._fn_id, self._opts_id)
                self._fn_id = self._opts_id = 0


def report_resolve_failure(entry: Any, exc: BaseException) -> None:
    """Give a resolution failure to whoever waits on the entry, else log it (mppool.futures)."""
    if isinstance(entry, concurrent.futures.Future) and not entry.done():
        try:
            entry.set_exception(exc)
            return
        except concurrent.futures.InvalidStateError:
            pass
    import logging

    logging.getLogger("mppool.futures").error(
        "error in a done callback or while resolving a task result", exc_info=exc
    )
