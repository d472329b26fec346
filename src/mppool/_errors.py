"""Every exception mppool raises, rooted at :class:`MppoolError`.

The tree::

    MppoolError
    ├── PoolClosedError          submit after shutdown started
    ├── BrokenPoolError          the dispatcher died, or the initializer failed
    ├── QueueFullError           a bounded queue refused a task
    ├── SerializationError       a function, argument, result or exception did not pickle
    ├── RemoteError              a task's exception could not be rebuilt in the caller
    ├── WorkerCrashedError       a task kept killing the worker running it
    ├── TaskTimeoutError         a task ran past its timeout (also a TimeoutError)
    ├── DeadlineExceededError    a task could not start before its deadline
    ├── CircuitOpenError         a task's kind had its circuit open: it failed fast
    ├── DependencyFailedError    a task it depended on failed or was cancelled: it did not run
    ├── TaskAbortedError         a task raised SystemExit or KeyboardInterrupt
    ├── CancelledByShutdownError a running task was killed by a shutdown deadline
    └── StoreError               a job store cannot be opened, read or written

A task's own exception is never wrapped: it is re-raised in the caller as itself, with
:class:`RemoteTraceback` (the worker's formatted traceback) as its ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "BrokenPoolError",
    "CancelledByShutdownError",
    "CircuitOpenError",
    "DeadlineExceededError",
    "DependencyFailedError",
    "MppoolError",
    "PoolClosedError",
    "QueueFullError",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "StoreError",
    "TaskAbortedError",
    "TaskTimeoutError",
    "WorkerCrashedError",
]


class MppoolError(Exception):
    """Base class of every error raised by mppool itself."""


class PoolClosedError(MppoolError, RuntimeError):
    """The pool is shut down (or shutting down) and accepts no new work."""


class BrokenPoolError(MppoolError, RuntimeError):
    """The pool cannot run tasks any more.

    Raised when the dispatcher process died, or when the worker initializer failed (then
    ``__cause__`` carries the initializer's error). Every pending future fails with it and
    later submits raise it.
    """


class QueueFullError(MppoolError):
    """A bounded queue (``Pool(max_queue=...)``) was full and the caller chose not to wait."""


class SerializationError(MppoolError, TypeError):
    """A function, its arguments, its result or its exception could not be (un)pickled.

    The original pickling error is the ``__cause__``. Nothing was lost: the pool keeps serving.
    """


class StoreError(MppoolError):
    """A job store (``Pool(store=...)``) cannot be used: not a store, from a newer mppool,
    corrupt, or not writable. Raised by ``Pool(...)``, before any task runs."""


class RemoteError(MppoolError):
    """A task raised an exception that could not be rebuilt as itself in the caller.

    That happens when the exception does not survive pickling: an ``__init__`` that takes
    other arguments than the ones it passes on to ``Exception``, an attribute that does not
    pickle, or a class the caller cannot import. What could be kept is kept: the worker's
    traceback is the ``__cause__`` (a :class:`RemoteTraceback`).

    Attributes:
        type_name: the qualified name of the original exception's class
            (``"module.Class"``).
        message: ``str()`` of the original exception.
        traceback: the worker's formatted traceback.
    """

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.type_name, self.message, self.traceback))


class WorkerCrashedError(MppoolError):
    """A task's worker process died while running it, more often than allowed.

    Attributes:
        pid: process id of the last worker that died running the task.
        exitcode: its exit status if it exited, else ``None``.
        signal: the name of the signal that killed it (``"SIGKILL"``, ``"SIGSEGV"``), or ``None``.
        attempts: how many times the task was started.
    """

    def __init__(
        self,
        message: str,
        *,
        pid: int | None = None,
        exitcode: int | None = None,
        signal: str | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.signal = signal
        self.attempts = attempts

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_crash,
            (str(self), self.pid, self.exitcode, self.signal, self.attempts),
        )


def _rebuild_crash(
    message: str, pid: int | None, exitcode: int | None, signal: str | None, attempts: int
) -> WorkerCrashedError:
    return WorkerCrashedError(message, pid=pid, exitcode=exitcode, signal=signal, attempts=attempts)


class TaskTimeoutError(MppoolError, TimeoutError):
    """A task was still running when its timeout passed; its worker was killed and replaced."""


class DeadlineExceededError(MppoolError):
    """A task with ``options(deadline=...)`` had not started when its deadline came.

    It did not run (or, after failures, did not run again): a late result is worth nothing
    to whoever set the deadline. A task already running at its deadline goes on; use
    ``timeout`` to bound its run. ``options(run_late=True)`` keeps the deadline for ordering
    only.

    Attributes:
        waited: seconds the task waited in the pool before its deadline came.
        attempts: times the task had been started before (after failures that were retried).
    """

    def __init__(self, message: str, *, waited: float = 0.0, attempts: int = 0) -> None:
        super().__init__(message)
        self.waited = waited
        self.attempts = attempts

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_deadline, (str(self), self.waited, self.attempts))


def _rebuild_deadline(message: str, waited: float, attempts: int) -> DeadlineExceededError:
    return DeadlineExceededError(message, waited=waited, attempts=attempts)


class CircuitOpenError(MppoolError):
    """The task's kind has its circuit open (``Pool(circuit_breakers=...)``): its recent
    tasks kept failing, so this one failed at once instead of running.

    Attributes:
        kind: the task's kind.
        retry_in: seconds until the circuit lets a probe task through (0.0: it is half-open,
            and another task is the probe).
    """

    def __init__(self, message: str, *, kind: str = "", retry_in: float = 0.0) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_in = retry_in

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_circuit, (str(self), self.kind, self.retry_in))


def _rebuild_circuit(message: str, kind: str, retry_in: float) -> CircuitOpenError:
    return CircuitOpenError(message, kind=kind, retry_in=retry_in)


class DependencyFailedError(MppoolError):
    """A task this one depended on (a future passed as an argument, or ``options(after=)``)
    failed, was cancelled, or could not run; so this one did not run. The dependency's own
    error is the ``__cause__`` (for a chain, a ``DependencyFailedError`` in turn).

    Attributes:
        dependency: the task id of the dependency that failed.
    """

    def __init__(self, message: str, *, dependency: int = 0) -> None:
        super().__init__(message)
        self.dependency = dependency

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_dependency, (str(self), self.dependency))


def _rebuild_dependency(message: str, dependency: int) -> DependencyFailedError:
    return DependencyFailedError(message, dependency=dependency)


class TaskAbortedError(MppoolError):
    """A task raised ``SystemExit`` or ``KeyboardInterrupt`` inside the worker.

    These are not re-raised as themselves in the caller, where they would end the program or
    look like the user's own Ctrl-C. The worker survives; the original is described in the
    message and the worker's traceback is the ``__cause__``.
    """


class CancelledByShutdownError(MppoolError):
    """A running task was killed because ``shutdown(timeout=...)`` passed its deadline."""


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in a worker.

    Attached as ``__cause__`` of the re-raised exception, so a traceback printed in the
    caller shows where the error happened in the worker.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'
