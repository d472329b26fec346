"""Picklable fault injection for the fault-tolerance tests.

Everything here is importable by reference, so a worker can unpickle it. The objects whose
names say *AtPickle* / *AtUnpickle* misbehave while being (un)pickled: used as an argument
they fire when the worker unpickles the task (or, for *AtPickle*, when ``submit`` pickles it);
returned as a result they fire when the worker pickles it (or the caller unpickles it).
The same faults fire whichever process runs them, so never pickle an *AtPickle* object or
unpickle an *AtUnpickle* one in the test process itself unless it only raises.
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct
import sys
import threading
import time
from typing import Any

# --- plain faulty behaviours -----------------------------------------------------------------


def segfault() -> None:
    """Dereference NULL from C: the process dies of SIGSEGV."""
    # faulthandler, when a test runner enabled it, only prints and re-raises the signal.
    ctypes.string_at(0)


def abort() -> None:
    """Call C ``abort()``: the process dies of SIGABRT."""
    os.abort()


def kill_self() -> None:
    """SIGKILL our own process (what the OOM killer does)."""
    os.kill(os.getpid(), signal.SIGKILL)


def exit_now(code: int = 3) -> None:
    """Leave without unwinding or flushing anything."""
    os._exit(code)


def sys_exit(code: int = 4) -> None:
    sys.exit(code)


def raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


def raise_error(message: str = "boom") -> None:
    raise ValueError(message)


def raise_in_c() -> None:
    """An exception raised by C code, of a class defined by an extension module."""
    struct.unpack("i", b"")


def recurse(depth: int = 0) -> int:
    return recurse(depth + 1)


def raise_memory_error() -> None:
    raise MemoryError("synthetic")


def allocate_huge() -> bytearray:
    """Ask for far more memory than exists: the allocation fails with MemoryError."""
    return bytearray(1 << 62)


def hang(pid_path: str | None = None) -> None:
    """Spin forever in pure Python, after writing our pid to ``pid_path``."""
    if pid_path is not None:
        _write_pid(pid_path)
    while True:
        pass


def _write_pid(path: str) -> None:
    # Written to a temporary name and renamed, so a reader never sees half a number.
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, path)


# --- faults that depend on the attempt (state kept in files) ---------------------------------


def _count_attempt(path: str) -> int:
    """Append a line to ``path`` and return how many attempts (lines) there are now."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    with open(path) as f:
        return len(f.read().splitlines())


def attempts_in(path: str) -> int:
    """How many attempts were recorded in ``path`` (0 if none)."""
    try:
        with open(path) as f:
            return len(f.read().splitlines())
    except FileNotFoundError:
        return 0


def crash_once(path: str, value: Any = "survived") -> Any:
    """Kill the worker on the first attempt only; later attempts return ``value``."""
    if _count_attempt(path) == 1:
        os._exit(5)
    return value


def exit_counting(path: str, code: int = 6) -> None:
    """Record the attempt, then kill the worker (every time)."""
    _count_attempt(path)
    os._exit(code)


def fail_until(path: str, failures: int, value: Any = "ok") -> Any:
    """Raise ValueError on the first ``failures`` attempts, then return ``value``."""
    attempt = _count_attempt(path)
    if attempt <= failures:
        raise ValueError(f"attempt {attempt} fails")
    return value


def raise_counting(path: str) -> None:
    """Record the attempt, then raise ValueError (every time)."""
    attempt = _count_attempt(path)
    raise ValueError(f"attempt {attempt} fails")


def hang_once(path: str, value: Any = "finished") -> Any:
    """Hang on the first attempt only (to be killed by a timeout); then return ``value``."""
    if _count_attempt(path) == 1:
        hang()
    return value


def hang_counting(path: str) -> None:
    """Record the attempt, then hang (every time)."""
    _count_attempt(path)
    hang()


# --- objects that misbehave when (un)pickled --------------------------------------------------


def _explode(message: str) -> None:
    raise ValueError(message)


class ErrorAtPickle:
    """Raises when pickled."""

    def __reduce__(self) -> tuple[Any, ...]:
        raise ValueError("error at pickle")


class ErrorAtUnpickle:
    """Pickles fine; raises when unpickled."""

    def __reduce__(self) -> tuple[Any, ...]:
        return _explode, ("error at unpickle",)


class ExitAtPickle:
    """Ends the process that pickles it."""

    def __reduce__(self) -> tuple[Any, ...]:
        os._exit(7)


class ExitAtUnpickle:
    """Ends the process that unpickles it."""

    def __reduce__(self) -> tuple[Any, ...]:
        return os._exit, (8,)


class CrashAtPickle:
    """Segfaults the process that pickles it."""

    def __reduce__(self) -> tuple[Any, ...]:
        segfault()
        raise AssertionError("unreachable")


class CrashAtUnpickle:
    """Segfaults the process that unpickles it."""

    def __reduce__(self) -> tuple[Any, ...]:
        return segfault, ()


class _FaultyCallable:
    """Base of callables whose own pickling misbehaves (a faulty *function*)."""

    def __call__(self, *args: Any) -> Any:
        return "called"


class FunctionErrorAtUnpickle(_FaultyCallable):
    def __reduce__(self) -> tuple[Any, ...]:
        return _explode, ("function error at unpickle",)


class FunctionExitAtUnpickle(_FaultyCallable):
    def __reduce__(self) -> tuple[Any, ...]:
        return os._exit, (9,)


def identity(value: Any) -> Any:
    return value


def make(cls: type[Any]) -> Any:
    """Return a new instance of ``cls`` as the task's result (pickled by the worker)."""
    return cls()


def return_lock() -> threading.Lock:
    """A result that cannot be pickled."""
    return threading.Lock()


# --- exceptions that misbehave crossing back -------------------------------------------------


class LockedError(Exception):
    """An exception that cannot be pickled: it holds a lock."""

    def __init__(self) -> None:
        super().__init__("holding a lock")
        self.lock = threading.Lock()


class TwoArgError(Exception):
    """Pickles, but cannot be unpickled: ``__init__`` needs two arguments, ``args`` has one."""

    def __init__(self, first: str, second: str) -> None:
        super().__init__(first)
        self.second = second


class ExitAtPickleError(Exception):
    """Ends the worker while it pickles the exception to send it back."""

    def __reduce__(self) -> tuple[Any, ...]:
        os._exit(10)


def raise_locked() -> None:
    raise LockedError


def raise_two_arg() -> None:
    raise TwoArgError("first", "second")


def raise_exit_at_pickle() -> None:
    raise ExitAtPickleError("bye")


# --- healthy work --------------------------------------------------------------------------


def spin_square(x: int, seconds: float) -> int:
    """Busy for about ``seconds``, then return ``x * x``."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return x * x


def square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


_held: list[bytes] = []


def hold_memory(x: int, megabytes: int) -> tuple[int, int]:
    """Keep ``megabytes`` of touched memory alive in this worker; return (x*x, pid)."""
    _held.append(b"\x01" * (megabytes << 20))
    return x * x, os.getpid()


def length(data: bytes) -> int:
    return len(data)


def make_bytes(size: int) -> bytes:
    """``size`` bytes whose first and last bytes are recognisable."""
    return b"<" + b"\x00" * (size - 2) + b">"


# --- initializers ------------------------------------------------------------------------------


def init_fail() -> None:
    """Initializer that raises at once."""
    raise RuntimeError("initializer exploded")


def init_fail_after(gate: str, timeout: float = 5.0) -> None:
    """Initializer: wait until the test opens ``gate`` (a FIFO) or ``timeout`` passes, then raise.

    The bound keeps a pool whose construction waits for its workers from hanging the test.
    """
    import select

    fd = os.open(gate, os.O_RDWR)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        if ready:
            os.read(fd, 1)
    finally:
        os.close(fd)
    init_fail()


def segfault_once(path: str, value: Any = "survived") -> Any:
    """Segfault on the first attempt only; later attempts return ``value``."""
    if _count_attempt(path) == 1:
        segfault()
    return value


def fail_until_timed(path: str, failures: int, value: Any = "ok") -> Any:
    """Like :func:`fail_until`, also appending each attempt's wall-clock time to
    ``path + ".times"``."""
    with open(path + ".times", "a") as f:
        f.write(f"{time.time()}\n")
    return fail_until(path, failures, value)


# --- a result that unpickles in the workers but not in the test's own process ---------------

REFUSE_HERE = False  # a test sets it in its own process only


class RefusedHere:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_refused_here, ())


def _refused_here() -> RefusedHere:
    if REFUSE_HERE:
        raise ValueError("this object cannot be unpickled in this process")
    return RefusedHere()


def make_refused_here(_: Any = None) -> RefusedHere:
    return RefusedHere()
