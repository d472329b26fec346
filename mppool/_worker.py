"""The worker process: forked by the dispatcher, runs tasks, sends results back.

A worker reads frames of ``Run`` messages from its task pipe, runs them in order and writes
``WorkerResult`` messages to its result pipe. It is the only place where task payloads are
unpickled and user code runs. Results are batched: a frame goes back when the batch it
received is done, or sooner once ``FLUSH_SECONDS`` have passed since the last write, so many
tiny tasks cost one write while a long batch still reports progress. A timed task is
bracketed: pending results are flushed and ``Started`` is sent before it runs, and its result
is flushed right after, so the dispatcher's timeout clock is accurate.
"""

from __future__ import annotations

import gc
import os
import pickle
import random
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import cloudpickle

from . import _messages as m

FLUSH_SECONDS = 0.001  # a worker holds finished results at most this long while it keeps busy
# The interpreter's collector settings, read when the dispatcher imports this module (before it
# tunes its own); a forked worker runs user code and goes back to them.
_GC_THRESHOLD = gc.get_threshold()
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _set_parent_death_signal() -> None:
    """On Linux, have the kernel SIGKILL this worker when the dispatcher dies.

    Safe here because the dispatcher is single-threaded: the signal is tied to the thread
    that forked us, which is the dispatcher's only thread.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except OSError:
        import psutil

        return int(psutil.Process().memory_info().rss)


def dumps(obj: object) -> bytes:
    """Pickle with the standard pickler, falling back to cloudpickle (lambdas, closures)."""
    try:
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    except Exception:
        return bytes(cloudpickle.dumps(obj, pickle.HIGHEST_PROTOCOL))


def _describe(exc: BaseException) -> str:
    try:
        return repr(exc)
    except Exception:
        return f"<{type(exc).__name__} (repr failed)>"


def _error_payload(exc: BaseException) -> tuple[int, bytes]:
    """Status and payload for an exception raised by a task."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if not isinstance(exc, Exception):
        # SystemExit, KeyboardInterrupt, GeneratorExit: report, never re-raise as themselves.
        return m.ABORTED, pickle.dumps((f"task raised {_describe(exc)}", tb))
    try:
        return m.ERROR, dumps((exc, tb))
    except Exception as pickling_error:
        message = (
            f"task raised {_describe(exc)}, which could not be pickled to send back: "
            f"{_describe(pickling_error)}"
        )
        return m.SERIAL_ERROR, pickle.dumps((message, tb))


class _Runner:
    """State of one worker: known functions and retry classes, and the task loop."""

    def __init__(self, rfd: int, wfd: int, max_memory: int) -> None:
        self.rfd = rfd
        self.wfd = wfd
        self.max_memory = max_memory
        self.blobs: dict[int, bytes] = {}
        self.functions: dict[int, Callable[..., Any]] = {}
        self.retry_on: dict[int, tuple[type[BaseException], ...]] = {}
        self.out: list[tuple[Any, ...]] = []
        self.last_flush = time.perf_counter()

    def flush(self) -> None:
        if self.out:
            m.write_all(self.wfd, m.encode(self.out))
            self.out = []
        self.last_flush = time.perf_counter()

    def function(self, fn_id: int) -> Callable[..., Any]:
        fn = self.functions.get(fn_id)
        if fn is None:
            fn = pickle.loads(self.blobs[fn_id])
            self.functions[fn_id] = fn
        return fn

    def run(
        self, fn_id: int, opts_id: int, n_items: int, flags: int, payload: bytes
    ) -> tuple[int, bytes]:
        """Run one task; return (status, payload) for its result message."""
        try:
            fn = self.function(fn_id)
            data = pickle.loads(payload)
        except BaseException as exc:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            return m.SERIAL_ERROR, pickle.dumps(
                (f"could not unpickle the task in the worker: {_describe(exc)}", tb)
            )
        if n_items == m.SINGLE:
            args, kwargs = data
            try:
                value = fn(*args, **kwargs) if kwargs else fn(*args)
            except BaseException as exc:
                status, body = _error_payload(exc)
                if status == m.ERROR:
                    classes = self.retry_on.get(opts_id)
                    if classes and isinstance(exc, classes):
                        status = m.ERROR_RETRYABLE
                return status, body
            try:
                return m.OK, dumps(value)
            except Exception as exc:
                tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                return m.SERIAL_ERROR, pickle.dumps(
                    (f"the task's result could not be pickled: {_describe(exc)}", tb)
                )
        return self._run_chunk(fn, opts_id, flags, data)

    def _run_chunk(
        self, fn: Callable[..., Any], opts_id: int, flags: int, items: list[Any]
    ) -> tuple[int, bytes]:
        # A chunk reports the results of the items before a failing one, then the error, so
        # an ordered map yields exactly the items it would have yielded serially. Each item
        # runs once: nothing is re-run to locate a failure.
        results: list[Any] = []
        append = results.append
        error: tuple[int, bytes] | None = None
        try:
            if flags & m.FLAG_STAR:
                for item in items:
                    append(fn(*item))
            else:
                for item in items:
                    append(fn(item))
        except BaseException as exc:
            error = _error_payload(exc)
            if error[0] == m.ERROR:
                classes = self.retry_on.get(opts_id)
                if classes and isinstance(exc, classes):
                    return m.ERROR_RETRYABLE, error[1]
        try:
            return m.OK, dumps((results, error))
        except Exception as exc:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            return m.SERIAL_ERROR, pickle.dumps(
                (f"a result in the map chunk could not be pickled: {_describe(exc)}", tb)
            )

    def loop(self) -> None:
        reader = m.BlockingReader(self.rfd)
        perf = time.perf_counter
        while True:
            msgs = reader.read()
            if msgs is None:
                return  # the dispatcher closed our pipe: leave
            for msg in msgs:
                tag = msg[0]
                if tag == m.W_RUN:
                    _, task_id, attempt, fn_id, opts_id, n_items, flags, payload = msg
                    timed = flags & m.FLAG_TIMED
                    if timed:
                        self.out.append((m.R_STARTED, task_id, attempt))
                        self.flush()
                    t0 = perf()
                    status, body = self.run(fn_id, opts_id, n_items, flags, payload)
                    now = perf()
                    self.out.append((m.R_RESULT, task_id, attempt, status, now - t0, body))
                    if timed or now - self.last_flush >= FLUSH_SECONDS:
                        self.flush()
                    if self.max_memory and _rss_bytes() > self.max_memory:
                        self.out.append((m.R_RETIRE, "max_memory_per_child"))
                        self.flush()
                        return
                elif tag == m.W_FUNCTION:
                    self.blobs[msg[1]] = msg[2]
                elif tag == m.W_RETRY_ON:
                    self.retry_on[msg[1]] = pickle.loads(msg[2])
            self.flush()


def worker_main(rfd: int, wfd: int, initializer: bytes | None, max_memory: int) -> int:
    """Entry point of a freshly forked worker. Returns the exit status."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the user process's business
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _set_parent_death_signal()
    random.seed()  # forked siblings would otherwise share one random stream
    gc.set_threshold(*_GC_THRESHOLD)
    if initializer is not None:
        try:
            fn, args = pickle.loads(initializer)
            fn(*args)
        except BaseException as exc:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            m.write_all(wfd, m.encode([(m.R_INIT_FAILED, _describe(exc), tb)]))
            return 3
    m.write_all(wfd, m.encode([(m.R_HELLO, os.getpid())]))
    _Runner(rfd, wfd, max_memory).loop()
    return 0
