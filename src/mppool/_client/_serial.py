"""Client-side serialisation: functions once, arguments fast, results decoded into outcomes."""

from __future__ import annotations

import pickle
from concurrent.futures import CancelledError
from typing import Any

import cloudpickle

from .. import _protocol as p
from .. import _shm
from .._errors import (
    BrokenPoolError,
    CancelledByShutdownError,
    CircuitOpenError,
    DeadlineExceededError,
    DependencyFailedError,
    PoolClosedError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    TaskAbortedError,
    TaskTimeoutError,
    WorkerCrashedError,
)
from .._shm import MAGIC, loads, out_of_band


def dumps(obj: object, what: str, buffers: list[memoryview] | None = None) -> bytes:
    """Pickle ``obj`` with the standard pickler, else cloudpickle (lambdas, closures).

    The standard pickler refers to classes and functions by module and name. Those defined in
    the user's ``__main__`` do not exist in the workers (which never run the user's script),
    so a pickle that names ``__main__`` is redone with cloudpickle, which sends them by value.
    The check is a substring search over the bytes: a false positive only costs speed.

    With ``buffers``, large buffers (numpy arrays, ...) are left out of the pickle and put
    there, for :func:`mppool._shm.place`.

    Raises:
        SerializationError: if neither can pickle it.
    """
    oob = None if buffers is None else out_of_band(buffers)
    try:
        blob = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL, buffer_callback=oob)
        if b"__main__" not in blob:
            return blob
    except Exception:
        pass
    if buffers:
        buffers.clear()  # the first attempt's; cloudpickle finds them again
    try:
        return bytes(cloudpickle.dumps(obj, pickle.HIGHEST_PROTOCOL, buffer_callback=oob))
    except Exception as exc:
        raise SerializationError(f"{what} could not be pickled: {exc!r}") from exc


def _name(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _with_cause(exc: BaseException, tb: str | None) -> BaseException:
    if tb:
        exc.__cause__ = RemoteTraceback(tb)
    return exc


def _note_attempts(exc: BaseException, attempts: int) -> None:
    if attempts > 1:
        try:
            exc.add_note(f"(mppool: the task failed {attempts} times; this is the last error)")
        except Exception:
            pass
    try:
        exc.mppool_attempts = attempts  # type: ignore[attr-defined]
    except Exception:
        pass


def decode_error(status: int, attempts: int, payload: bytes) -> BaseException:
    """Turn a non-OK result into the exception the caller sees."""
    try:
        if status == p.ERROR:
            return _rebuild(payload, attempts)
        if status == p.ABORTED:
            message, tb = pickle.loads(payload)
            return _with_cause(TaskAbortedError(message), tb)
        if status == p.SERIAL_ERROR:
            message, tb = pickle.loads(payload)
            return _with_cause(SerializationError(message), tb)
        if status == p.CRASHED:
            pid, exitcode, signame = pickle.loads(payload)
            how = f"signal {signame}" if signame else f"exit code {exitcode}"
            return WorkerCrashedError(
                f"the worker (pid {pid}) running this task died ({how}); "
                f"the task was tried {attempts} times",
                pid=pid,
                exitcode=exitcode,
                signal=signame,
                attempts=attempts,
            )
        if status == p.TIMEOUT:
            timeout, pid = pickle.loads(payload)
            exc = TaskTimeoutError(
                f"the task ran longer than its timeout of {timeout:g} s; "
                f"its worker (pid {pid}) was killed and replaced"
            )
            _note_attempts(exc, attempts)
            return exc
        if status == p.EXPIRED:
            waited, failures = pickle.loads(payload)
            before = f" (it had failed {failures} times)" if failures else ""
            return DeadlineExceededError(
                f"the task could not start before its deadline, {waited:.3g} s after it was "
                f"submitted{before}; it did not run",
                waited=waited,
                attempts=failures,
            )
        if status == p.CIRCUIT_OPEN:
            kind, retry_in = pickle.loads(payload)
            when = f"a probe may run in {retry_in:.3g} s" if retry_in else "a probe is running"
            return CircuitOpenError(
                f"the circuit of kind {kind!r} is open after repeated failures ({when}); "
                "the task did not run",
                kind=kind,
                retry_in=retry_in,
            )
        if status == p.DEP_FAILED:
            dep_id, dep_status, dep_attempts, dep_payload = pickle.loads(payload)
            if dep_status == p.CANCELLED:
                cause: BaseException = CancelledError(f"task {dep_id} was cancelled")
            else:
                cause = decode_error(dep_status, dep_attempts, dep_payload)
            dep_err = DependencyFailedError(
                f"dependency {dep_id} failed ({type(cause).__name__}: {cause}); "
                "this task did not run",
                dependency=dep_id,
            )
            dep_err.__cause__ = cause
            return dep_err
        if status == p.CLOSED:
            return PoolClosedError("the pool was shut down before this task could run")
        if status == p.KILLED:
            return CancelledByShutdownError("the task was killed at the shutdown deadline")
        if status == p.BROKEN:
            message, tb = pickle.loads(payload)
            return _with_cause(BrokenPoolError(message), tb)
    except Exception as exc:  # the exception itself did not unpickle here
        err = SerializationError(f"the task's error could not be unpickled: {exc!r}")
        err.__cause__ = exc
        return err
    return RuntimeError(f"unknown result status {status}")


def _rebuild(payload: bytes, attempts: int) -> BaseException:
    """A task's own exception, as itself if it unpickles here, else as a ``RemoteError``."""
    blob, type_name, message, tb = pickle.loads(payload)
    exc: BaseException | None = None
    if blob is not None:
        try:
            exc = pickle.loads(blob)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = RemoteError(type_name, message, tb)
    _note_attempts(exc, attempts)
    return _with_cause(exc, tb)


def decode_value(payload: bytes) -> Any:
    """Unpickle a result payload.

    Raises:
        SerializationError: if it does not unpickle in this process.
    """
    try:
        return loads(payload) if payload.startswith(MAGIC) else pickle.loads(payload)
    except (Exception, SystemExit) as exc:  # even SystemExit from a __reduce__: contained
        raise SerializationError(f"the task's result could not be unpickled: {exc!r}") from exc


def release(kept: tuple[str | None, list[Any]] | None) -> None:
    """Remove a task's argument segment (its ``Shared`` handles go with the tuple)."""
    if kept is not None and kept[0] is not None:
        _shm.remove(kept[0])


def pack(obj: Any, what: str, prefix: str) -> tuple[bytes, Any]:
    """A task's payload; large buffers go into a shared-memory segment named from ``prefix``.
    Also returns what must live until the task's outcome (the segment, ``Shared`` handles),
    or None."""
    buffers: list[memoryview] = []
    body = dumps(obj, what, buffers)
    handles = _shm.handles_in(body, dumps, obj, what) if _shm.SHARED in body else []
    if not buffers and len(body) <= _shm.INBAND_MAX:  # the common case: all in the pipe
        return body, (None, handles) if handles else None
    payload, segment = _shm.place(body, buffers, prefix, lambda: dumps(obj, what), consume=False)
    return payload, (segment, handles) if segment or handles else None
