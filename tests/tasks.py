"""Task functions for the tests, importable by reference from the workers."""

from __future__ import annotations

import os
import select
import time
from typing import Any


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def getpid(_: Any = None) -> int:
    return os.getpid()


def spin(seconds: float) -> float:
    """Busy CPU work for about ``seconds`` (wall clock); returns the argument."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return seconds


def raise_value_error(message: str) -> None:
    raise ValueError(message)


def fifo_post(path: str, count: int = 1) -> None:
    """Write ``count`` tokens to the FIFO at ``path`` (never blocks: opened read-write)."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.write(fd, b"x" * count)
    finally:
        os.close(fd)


def fifo_take(path: str, timeout: float = 30.0) -> None:
    """Block until one token can be read from the FIFO at ``path``, at most ``timeout`` s."""
    fd = os.open(path, os.O_RDWR)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise TimeoutError(f"no token on {path} within {timeout} s")
        os.read(fd, 1)
    finally:
        os.close(fd)


def gated(started: str, gate: str, value: Any = None, timeout: float = 30.0) -> Any:
    """Announce the start on FIFO ``started``, then block until the test opens ``gate``."""
    fifo_post(started)
    fifo_take(gate, timeout)
    return os.getpid() if value is None else value


def record(path: str, label: Any, work: float = 0.0) -> Any:
    """Append ``label`` and this pid to a file (order of execution), then spin ``work`` s."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()} {label}\n")
    spin(work)
    return label


def fail_at(x: int, bad: int) -> int:
    if x == bad:
        raise KeyError(f"item {x}")
    return x


class CustomError(Exception):
    """An exception type the caller must get back as itself."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def raise_custom(code: int) -> None:
    raise CustomError(code)


def kwargs_echo(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def now(_: Any = None) -> float:
    """The worker's wall clock when the task runs."""
    return time.time()


def append_line(path: str, text: str) -> str:
    with open(path, "a") as f:
        f.write(text + "\n")
    return text


_calls = 0


def fail_times(times: int, value: Any) -> Any:
    """Fail the first ``times`` calls in this worker process, then return ``value``."""
    global _calls
    _calls += 1
    if _calls <= times:
        raise ConnectionError(f"attempt {_calls}")
    return value


def gc_threshold(_: Any = None) -> tuple[int, int, int]:
    import gc

    return gc.get_threshold()


def exit_now(code: int = 7) -> None:
    os._exit(code)


class ShutsDownWhenPickled:
    """An argument whose pickling shuts the pool down: a submit racing a shutdown, made exact."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    def __reduce__(self) -> tuple[Any, ...]:
        self.pool.shutdown(wait=True)
        return (int, (0,))


def started_at(*tag: Any) -> tuple[Any, float, int]:
    """When and where the task started: ``(tag, monotonic time, pid)``."""
    return tag, time.monotonic(), os.getpid()


def spin_then_wait(cpu_seconds: float, started: str, gate: str, timeout: float = 30.0) -> float:
    """Use ``cpu_seconds`` of CPU, post ``started``, then keep spinning until ``gate`` has a
    token (or ``timeout``); returns the CPU time used."""
    t0 = time.process_time()
    while time.process_time() - t0 < cpu_seconds:
        pass
    fifo_post(started)
    fd = os.open(gate, os.O_RDONLY | os.O_NONBLOCK)
    try:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if os.read(fd, 1):
                    break
            except BlockingIOError:
                pass
    finally:
        os.close(fd)
    return time.process_time() - t0


def flaky_first(folder: str, x: int) -> int:
    """Log a run of item ``x`` in ``folder``; items divisible by 7 fail their first run with a
    ConnectionError. Returns ``x * x``."""
    with open(os.path.join(folder, f"{x}.runs"), "a") as f:
        f.write("x")
    first = os.path.join(folder, f"{x}.failed")
    if x % 7 == 0 and not os.path.exists(first):
        open(first, "w").close()
        raise ConnectionError(f"item {x}: first run fails")
    return x * x


def spawn_sleeper(started: str, seconds: int = 37) -> None:
    """Start ``sleep`` as a child process, post its pid on ``started``, then wait for it."""
    import subprocess

    child = subprocess.Popen(["sleep", str(seconds)])
    fd = os.open(started, os.O_RDWR)
    try:
        os.write(fd, f"{child.pid:010d}".encode())
    finally:
        os.close(fd)
    child.wait()


class ExitsWhenUnpickled:
    """A result whose unpickling (in the user process) raises SystemExit."""

    def __reduce__(self) -> tuple[Any, ...]:
        import sys

        return (sys.exit, (3,))


def exits_when_unpickled(_: Any = None) -> ExitsWhenUnpickled:
    return ExitsWhenUnpickled()


def add_one(x: int) -> int:
    return x + 1


def spin_and_append(seconds: float, path: str, text: str) -> str:
    spin(seconds)
    return append_line(path, text)


def crash_first_time(marker: str, value: Any) -> Any:
    """Kill the worker the first time it is called (per marker file), then return ``value``."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(9)
    return value


def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x * x


def logged_square(log: str, x: int, fail_unless: str = "") -> int:
    """Append ``x`` to ``log`` (one line per real execution); items ``x % 7 == 3`` fail
    while the file ``fail_unless`` (if given) does not exist."""
    append_line(log, str(x))
    if fail_unless and x % 7 == 3 and not os.path.exists(fail_unless):
        raise ValueError(f"item {x} failed")
    return x * x


def unpicklable_result(_: Any = None) -> Any:
    """Return a value that cannot be pickled back to the caller."""
    import threading

    return threading.Lock()


def blas_threads(_: Any = None) -> dict[str, int]:
    """The thread pools loaded in this worker and their sizes (threadpoolctl), after numpy."""
    import numpy  # noqa: F401
    from threadpoolctl import threadpool_info

    return {pool["internal_api"]: pool["num_threads"] for pool in threadpool_info()}


def modules_loaded(names: list[str]) -> dict[str, bool]:
    import sys

    return {name: name in sys.modules for name in names}


def affinity(_: Any = None) -> tuple[int, list[int]]:
    return os.getpid(), sorted(os.sched_getaffinity(0))


def array_sum(a: Any) -> tuple[float, bool]:
    """The sum of an array and whether the worker may write to it."""
    return float(a.sum()), bool(a.flags.writeable)


def same(x: Any) -> Any:
    return x


def scribble(a: Any) -> float:
    """Write into the argument (a copy-on-write mapping: the caller's array is untouched)."""
    a[:] = -1
    return float(a.sum())


def mapped_segments(prefix: str) -> list[str]:
    """The shared-memory segments of this pool mapped into this worker (from /proc)."""
    with open("/proc/self/maps") as f:
        return sorted(os.path.basename(line.split()[-1]) for line in f if prefix in line)


def crash_first_time_with(marker: str, a: Any) -> float:
    """Kill the worker the first time (per marker file), then return the array's sum."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(9)
    return float(a.sum())


def many_arrays(n: int, size: int = 8192) -> list[Any]:
    """``n`` float64 arrays of ``size`` values (64 KiB each by default), i-th filled with i."""
    import numpy as np

    return [np.full(size, float(i)) for i in range(n)]


def tuple_with(text: str) -> tuple[str, list[int]]:
    """A small result that contains the text it is given."""
    return (text, [42])


def counted(path: str, value: Any) -> Any:
    """Append a line to ``path`` (one per real run) and return ``value``."""
    with open(path, "a") as f:
        f.write("ran\n")
    return value


def gated_array(started: str, gate: str, n: int) -> Any:
    """Announce, wait for the gate, then return a large array."""
    import numpy as np

    fifo_post(started)
    fifo_take(gate)
    return np.ones(n)


def fail_with_array(a: Any) -> None:
    raise ValueError(f"bad input of {len(a)} values")


def array_len(a: Any) -> int:
    return len(a)


def spin_pid(seconds: float) -> int:
    """Busy CPU work for about ``seconds``; returns the worker's pid."""
    spin(seconds)
    return os.getpid()


def wait_if_marked(marker: str, gate: str) -> None:
    """An initializer: a worker started once ``marker`` exists waits for ``gate`` (a FIFO)."""
    if os.path.exists(marker):
        fifo_take(gate, 60.0)


def raise_if_marked(marker: str) -> None:
    """An initializer: a worker started once ``marker`` exists fails to start."""
    if os.path.exists(marker):
        raise RuntimeError("this worker may not start")


def gated_exit(started: str, gate: str, code: int = 9) -> None:
    """Announce the start on FIFO ``started``, wait for ``gate``, then kill the worker."""
    fifo_post(started)
    fifo_take(gate, 30.0)
    os._exit(code)


def stamp_then_hold(seconds: float, _: Any = None) -> tuple[float, int]:
    """Hold the worker ``seconds`` without using CPU (a task waiting on I/O, say); return
    when it started (wall clock) and the parent's pid (the dispatcher of this worker)."""
    start = time.time()
    time.sleep(seconds)
    return start, os.getppid()


def call(fn: Any) -> Any:
    """Call ``fn`` (a lambda, say, sent by value)."""
    return fn()


def spin_then_stamp_value(seconds: float, value: Any) -> Any:
    spin(seconds)
    return value


def total(values: Any, *more: Any) -> float:
    """The sum of every value in ``values`` (arrays and lists included) plus ``more``."""
    import numpy as np

    return float(sum(float(np.sum(v)) for v in values) + sum(more))


def post_then_square(path: str, x: int) -> int:
    """Square ``x`` after posting a token on the FIFO at ``path``."""
    fifo_post(path)
    return x * x


def post_then_sum(path: str, *values: float) -> float:
    """Post a token on the FIFO at ``path``, then return the sum of ``values``."""
    fifo_post(path)
    return sum(values)


def post_then_raise(path: str, message: str) -> None:
    """Post a token on the FIFO at ``path``, then raise ``ValueError(message)``."""
    fifo_post(path)
    raise ValueError(message)
