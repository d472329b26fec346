"""Keyed tasks and the job store, in the user process: what a submit does with a key that
the store knows, and what the store keeps when a keyed task ends.

* A key the store has *done*: the submit returns a finished future holding the stored
  result; nothing runs.
* A key *running elsewhere* (another pool, maybe another process, holds a live claim): the
  submit returns a future that :class:`Waits` resolves when that run ends — with its result,
  or, if it failed or its owner died, by claiming the key and running it here.
* Otherwise the key is claimed and the task runs; its future carries ``_stored`` and, when it
  ends, :func:`record` journals the result (pickle bytes as the worker sent them: nothing is
  pickled twice) or the failure (type, message, traceback, and the function and arguments,
  so a dead letter can be run again). A task that does not run to an outcome (cancelled, the
  pool ended) gives its claim back.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import cloudpickle

from .. import _protocol as p
from .._errors import RemoteTraceback
from .._shm import inline
from .._stats import TaskInfo
from ._future import Future
from ._serial import decode_error, decode_value
from ._store import DONE, ELSEWHERE, Store

if TYPE_CHECKING:
    from ._core import _Core

POLL_SECONDS = 0.05  # how often keys running elsewhere are looked at
_FAILED = frozenset({p.ERROR, p.ERROR_RETRYABLE, p.CRASHED, p.TIMEOUT, p.SERIAL_ERROR, p.ABORTED})


def finished(payload: bytes) -> Future[Any]:
    """A future that already holds a stored result."""
    fut: Future[Any] = Future()
    try:
        fut._finish(decode_value(payload), None)
    except Exception as exc:
        fut._finish(None, exc)
    return fut


def record(fut: Future[Any], status: int, attempts: int, duration: float, payload: bytes) -> None:
    """A journaled task ended (called as its future resolves): keep what the store keeps."""
    store, key, fn, args, submitted = fut._stored
    fut._stored = None
    try:
        if status == p.OK:
            payload = inline(payload)  # a result in shared memory is kept whole, not by name
            store.journal.done(key, payload, attempts, duration, submitted)
        elif status in _FAILED:
            exc = decode_error(status, attempts, payload)
            cause = exc.__cause__
            tb = cause.tb if isinstance(cause, RemoteTraceback) else None
            fields = (type(exc).__qualname__, str(exc), tb, attempts, duration, submitted)
            store.journal.failed(key, (*fields, *_call(fn, args)))
        else:  # cancelled, or the pool ended before it ran: not an outcome
            store.journal.released(key)
    except Exception as exc:  # the result does not rebuild here, its segment is gone, ...
        note = f"the outcome could not be kept in the job store: {exc!r}"
        row = (type(exc).__qualname__, note, None, attempts, duration, submitted, None, None)
        store.journal.failed(key, row)  # a dead letter: the key runs again next time


def _call(fn: Any, args: bytes) -> tuple[bytes | None, bytes | None]:
    """The function and arguments of a dead letter, self-contained (arguments in shared
    memory are copied out: their segment goes with the task); None if they cannot be kept."""
    try:
        return cloudpickle.dumps(fn, pickle.HIGHEST_PROTOCOL), inline(args)
    except Exception:
        return None, None  # kept as a dead letter all the same, but it cannot be run again


class Waits:
    """Futures of keys that run elsewhere, looked at every ``POLL_SECONDS`` by one thread."""

    def __init__(self, core: _Core, store: Store) -> None:
        self._core = core
        self._store = store
        self._waiting: dict[str, list[tuple[Future[Any], Callable[[], Future[Any]]]]] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def wait(self, key: str, run_here: Callable[[], Future[Any]]) -> Future[Any]:
        """A future for ``key``; ``run_here`` submits it here if the other run fails or dies."""
        fut: Future[Any] = Future()
        with self._cond:
            self._waiting.setdefault(key, []).append((fut, run_here))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="mppool-store-wait", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        return fut

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                keys = list(self._waiting)
            for key in keys:
                try:
                    self._look(key)
                except Exception as exc:  # the store cannot be read: say so to the waiters
                    self._fail(key, exc)
            with self._cond:
                if self._closed:
                    return
                self._cond.wait(POLL_SECONDS)

    def _look(self, key: str) -> None:
        state = self._store.state(key)
        if state is not None and state[0] == "running" and self._store.owner_alive(key):
            return  # still running elsewhere
        with self._cond:
            waiters = self._waiting.pop(key, [])
        for fut, run_here in waiters:
            if fut.done():
                continue
            if state is not None and state[0] == "done":
                _chain(finished(state[1]), fut)
            else:  # it failed there, or its owner died: run it here (claiming it again)
                try:
                    _chain(run_here(), fut)
                except BaseException as exc:
                    fut._finish(None, exc)

    def _fail(self, key: str, exc: BaseException) -> None:
        with self._cond:
            waiters = self._waiting.pop(key, [])
        for fut, _ in waiters:
            if not fut.done():
                fut._finish(None, exc)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            waiters = [w for ws in self._waiting.values() for w in ws]
            self._waiting.clear()
            self._cond.notify_all()
        from .._errors import PoolClosedError

        for fut, _ in waiters:
            if not fut.done():
                fut._finish(None, PoolClosedError("the pool shut down before the key was free"))


def _chain(source: Future[Any], target: Future[Any]) -> None:
    def copy(src: Any) -> None:
        if target.done():
            return
        if src.cancelled():
            target.cancel()
        elif src.exception() is not None:
            target._finish(None, src.exception())
        else:
            target._finish(src.result(), None)

    source.add_done_callback(copy)


def submit_keyed(
    core: _Core,
    key: str,
    decision: tuple[str, Any] | None,
    run: Callable[[], Future[Any]],
) -> Future[Any]:
    """A keyed submit against the store: the stored result, a wait, or a run (``run()``)."""
    store = core.store
    assert store is not None
    if decision is None:
        decision = store.claim([key])[key]
    if decision[0] == DONE:
        return finished(decision[1])
    if decision[0] == ELSEWHERE:
        assert core.waits is not None
        return core.waits.wait(key, lambda: submit_keyed(core, key, None, run))
    try:
        return run()
    except BaseException:
        store.journal.released(key)  # claimed, but it will not run (its arguments did not pickle)
        raise


def stored_failures(store: Store, seen: set[str | None]) -> list[TaskInfo]:
    """The store's dead letters as task rows (those not listed live already)."""
    return [
        TaskInfo(
            0,
            r["key"],
            None,
            0.0,
            "failed",
            r["attempts"],
            0,
            r["submitted_at"],
            None,
            r["finished_at"],
            r["duration"],
            None,
            r["error"],
            True,
        )
        for r in store.failures()
        if r["key"] not in seen
    ]


def retry_failed(core: _Core, opts: Any, keys: Any) -> list[Future[Any]]:
    """Submit the store's failed tasks again, each under its key."""
    store = core.store
    if store is None:
        raise ValueError("this pool has no job store (Pool(store=...))")
    futures: list[Future[Any]] = []
    for key, fn_blob, args_blob in store.dead_letters(keys):
        try:
            fn = cloudpickle.loads(fn_blob)
            args, kwargs = pickle.loads(args_blob)
        except Exception as exc:  # this one cannot be rebuilt here: its future says why
            failed: Future[Any] = Future()
            failed._finish(None, exc)
            futures.append(failed)
            continue
        futures.append(core.submit(fn, args, kwargs or {}, opts, key=key))
    return futures
