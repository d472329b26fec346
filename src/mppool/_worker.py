"""The worker process: forked by the dispatcher, runs tasks, sends results back.

A worker reads frames of ``Run`` messages from its task pipe and runs them in order. Before
each unit of work (a single task, or a block of a chunk's items) it takes a token from the
batch's claim counter (see ``mppool._dispatcher._claims``); when the counter is empty the
rest of that batch was taken back by the dispatcher, so it skips it and reports the cut. It
is the only place where task payloads are unpickled and user code runs.

Results are batched: a frame goes back when the frame of work it received is done, or sooner
once ``FLUSH_SECONDS`` have passed since the last write, so many tiny tasks cost one write
while a long batch still reports progress. A timed task (or item) is bracketed: pending
results are flushed and ``Started`` is sent before it runs, and its result is flushed right
after, so the dispatcher's timeout clock is accurate.

This module imports the protocol and the standard library only; cloudpickle is imported when
a result needs it.
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
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from . import _deps, _shm
from . import _protocol as p

FLUSH_SECONDS = 0.001  # a worker holds finished results at most this long while it keeps busy
# The interpreter's collector settings, read when the dispatcher imports this module (before it
# tunes its own); a forked worker runs user code and goes back to them.
_GC_THRESHOLD = gc.get_threshold()
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class _Semaphore(Protocol):
    def acquire(self, block: bool = ...) -> bool: ...


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


def dumps(obj: object, buffers: list[memoryview] | None = None) -> bytes:
    """Pickle with the standard pickler, falling back to cloudpickle (lambdas, closures);
    with ``buffers``, large buffers are left out and put there."""
    oob = None if buffers is None else _shm.out_of_band(buffers)
    try:
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL, buffer_callback=oob)
    except Exception:
        import cloudpickle

        if buffers:
            buffers.clear()
        return bytes(cloudpickle.dumps(obj, pickle.HIGHEST_PROTOCOL, buffer_callback=oob))


def dumps_result(obj: object) -> bytes:
    """A result's payload: large buffers (and a large pickle) go through shared memory, in a
    segment the user process removes as it reads it."""
    buffers: list[memoryview] = []
    body = dumps(obj, buffers)
    if not buffers and len(body) <= _shm.INBAND_MAX:  # the common case: all in the pipe
        return body
    return _shm.place(body, buffers, _segments, lambda: dumps(obj), consume=True)[0]


_segments = ""  # the start of this pool's segment names (set by the dispatcher, inherited)


def _describe(exc: BaseException) -> str:
    try:
        return repr(exc)
    except Exception:
        return f"<{type(exc).__name__} (repr failed)>"


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return "(str() failed)"


def _traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def error_payload(exc: BaseException) -> tuple[int, bytes]:
    """Status and payload for an exception raised by a task.

    The exception travels pickled, with its type's qualified name, its text and the formatted
    traceback beside it. If it does not survive a pickle round trip here (an ``__init__``
    that takes other arguments than ``args``, an attribute that does not pickle), the blob is
    left out and the caller gets a ``RemoteError`` with the rest.
    """
    tb = _traceback(exc)
    if not isinstance(exc, Exception):
        # SystemExit, KeyboardInterrupt, GeneratorExit: report, never re-raise as themselves.
        return p.ABORTED, pickle.dumps((f"task raised {_describe(exc)}", tb))
    cls = type(exc)
    name = f"{cls.__module__}.{cls.__qualname__}"
    blob: bytes | None
    try:
        blob = dumps(exc)
        pickle.loads(blob)
    except BaseException:
        blob = None
    return p.ERROR, pickle.dumps((blob, name, _text(exc), tb))


def _serial_error(what: str, exc: BaseException) -> tuple[int, bytes]:
    return p.SERIAL_ERROR, pickle.dumps((f"{what}: {_describe(exc)}", _traceback(exc)))


class _Runner:
    """State of one worker: known functions and retry classes, and the task loop."""

    def __init__(self, rfd: int, wfd: int, max_memory: int, sems: Sequence[_Semaphore]) -> None:
        self.rfd = rfd
        self.wfd = wfd
        self.max_memory = max_memory
        self.sems = sems
        self.blobs: dict[int, bytes] = {}
        self.functions: dict[int, Callable[..., Any]] = {}
        self.retry_on: dict[int, tuple[type[BaseException], ...]] = {}
        self.out: list[p.Message] = []
        self.last_flush = time.perf_counter()
        self.cut_batch = 0  # the last batch whose counter was found empty
        self.held: Any = None  # the last task's arguments from shared memory, until sent
        self.last: tuple[int, int, Any] | None = None  # (run id, attempt, value) to chain on

    def flush(self) -> None:
        if self.out:
            p.write_all(self.wfd, p.encode(self.out))
            self.out = []
        self.last_flush = time.perf_counter()

    def function(self, fn_id: int) -> Callable[..., Any]:
        fn = self.functions.get(fn_id)
        if fn is None:
            fn = pickle.loads(self.blobs[fn_id])
            self.functions[fn_id] = fn
        return fn

    def _classify(self, exc: BaseException, opts_id: int) -> tuple[int, bytes]:
        status, body = error_payload(exc)
        if status == p.ERROR:
            classes = self.retry_on.get(opts_id)
            if classes and isinstance(exc, classes):
                status = p.ERROR_RETRYABLE
        return status, body

    def _announce(self, run_id: int, attempt: int, item: int) -> None:
        self.out.append(p.Started(p.R_STARTED, run_id, attempt, item))
        self.flush()

    def run_single(self, r: p.Run) -> tuple[int, bytes]:
        """Run one call; return (status, payload) for its result message."""
        try:
            fn = self.function(r.fn_id)
            payload = r.payload
            if payload.startswith(_deps.BUNDLE):  # with the results of the tasks it waited for
                args, kwargs = _deps.unbundle_call(payload)
            elif r.flags & p.FLAG_CHAINED:  # with the value of the task just before it
                call = _deps.unchain_call(payload, self.last)
                self.last = None
                if call is None:
                    return p.UNCHAINED, b""  # that task did not succeed here: the dispatcher
                args, kwargs = call  # gives this one its result another way
            else:
                args, kwargs = (
                    _shm.loads(payload) if payload.startswith(_shm.MAGIC) else pickle.loads(payload)
                )
        except BaseException as exc:
            return _serial_error("could not unpickle the task in the worker", exc)
        if _shm.names_segment(r.payload):
            self.held = args  # unmapping a large argument waits until its result is sent
        if r.flags & p.FLAG_TIMED:
            self._announce(r.run_id, r.attempt, 0)
        self.last = None
        try:
            value = fn(*args, **kwargs) if kwargs else fn(*args)
        except BaseException as exc:
            return self._classify(exc, r.opts_id)
        try:
            body = dumps_result(value)
        except Exception as exc:
            return _serial_error("the task's result could not be pickled", exc)
        if r.flags & p.FLAG_KEEP:  # a task chained to this one is next in the batch
            self.last = (r.run_id, r.attempt, value)
        return p.OK, body

    def run_part(self, r: p.Run, acquire: Callable[[bool], bool]) -> tuple[p.Message, bool]:
        """Run items ``r.start`` to ``r.stop`` of a chunk, a block per claim token.

        Returns the ``PartResult`` and whether the batch was found cut. After a failing item
        the rest of the part's tokens are still taken (and their items not run), so the
        tokens this worker takes keep matching the dispatcher's count.
        """
        t0 = time.perf_counter()
        results: list[Any] = []
        err: tuple[int, bytes] = (p.OK, b"")
        cut = False
        try:
            fn = self.function(r.fn_id)
            items = _shm.loads(r.payload)
        except BaseException as exc:
            fn, items = None, None
            err = _serial_error("could not unpickle the chunk in the worker", exc)
        at, stop, block = r.start, r.stop, r.block
        timed = r.flags & p.FLAG_TIMED
        star = r.flags & p.FLAG_STAR
        append = results.append
        while at < stop:
            if not acquire(False):
                cut = True
                break
            end = min(at + block, stop)
            if fn is None or err[0] != p.OK:
                at = end  # taken, not run: the part stopped at an earlier item
                continue
            try:
                if timed:
                    for index in range(at, end):
                        self._announce(r.run_id, r.attempt, index)
                        append(fn(*items[index]) if star else fn(items[index]))
                elif star:
                    for item in items[at:end]:
                        append(fn(*item))
                else:
                    for item in items[at:end]:
                        append(fn(item))
            except BaseException as exc:
                err = self._classify(exc, r.opts_id)
            at = end
        try:
            body = dumps_result(results)
        except Exception as exc:
            body = pickle.dumps([])
            results.clear()
            err = _serial_error("a result in the map chunk could not be pickled", exc)
        msg = p.part_result(
            r.run_id, r.attempt, time.perf_counter() - t0, len(results), body, err[0], err[1]
        )
        return msg, cut

    def loop(self) -> None:
        reader = p.BlockingReader(self.rfd)
        perf = time.perf_counter
        view = p.Run.view
        while True:
            msgs = reader.read()
            if msgs is None:
                return  # the dispatcher closed our pipe: leave
            for msg in msgs:
                tag = msg[0]
                if tag == p.W_RUN:
                    if not self.run(view(msg), perf):
                        return
                elif tag == p.W_FUNCTION:
                    self.blobs[msg[1]] = msg[2]
                elif tag == p.W_RETRY_ON:
                    self.retry_on[msg[1]] = pickle.loads(msg[2])
                elif tag == p.W_FORGET:
                    for fn_id in msg[1]:
                        self.blobs.pop(fn_id, None)
                        self.functions.pop(fn_id, None)
                    for opts_id in msg[2]:
                        self.retry_on.pop(opts_id, None)
            self.flush()
            self.held = None

    def run(self, r: p.Run, perf: Callable[[], float]) -> bool:
        """Claim and run one ``Run``; False when the worker must leave (memory limit)."""
        if r.batch == self.cut_batch:
            return True  # taken back before this worker got to it
        acquire = self.sems[r.slot].acquire
        if r.stop:
            result, cut = self.run_part(r, acquire)
            self.out.append(result)
            if cut:
                self.cut_batch = r.batch
                self.out.append(p.Cut(p.R_CUT, r.batch))
        elif not acquire(False):
            self.cut_batch = r.batch
            self.out.append(p.Cut(p.R_CUT, r.batch))
            return True
        else:
            t0 = perf()
            status, body = self.run_single(r)
            self.out.append(p.worker_result(r.run_id, r.attempt, status, perf() - t0, body))
        if r.flags & p.FLAG_TIMED or perf() - self.last_flush >= FLUSH_SECONDS:
            self.flush()
        if self.max_memory:
            self.flush()
            self.held = None  # a mapped argument is not the worker's own memory
        if self.max_memory and _rss_bytes() > self.max_memory:
            self.out.append(p.Retire(p.R_RETIRE))
            self.flush()
            return False
        return True


def worker_main(
    rfd: int, wfd: int, initializer: bytes | None, max_memory: int, sems: Sequence[_Semaphore]
) -> int:
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
            failed = p.InitFailed(p.R_INIT_FAILED, _describe(exc), _traceback(exc))
            p.write_all(wfd, p.encode([failed]))
            return 3
    p.write_all(wfd, p.encode([p.Hello(p.R_HELLO)]))
    _Runner(rfd, wfd, max_memory, sems).loop()
    return 0
