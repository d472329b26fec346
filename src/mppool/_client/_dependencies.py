"""Futures as arguments (user process): a task that depends on others.

``pool.submit(fn, fut_a, x=fut_b)`` with futures of the same pool: the task runs once both
have succeeded, and receives their results in their places; ``options(after=[f, g])`` waits
for ``f`` and ``g`` without passing their results. The results go worker → dispatcher →
worker (``mppool._deps``): a dependent never waits for this process (which gets every result
too, for its futures). Futures already done when the task is submitted are replaced by their
values here. If a dependency fails or is cancelled, the task fails with
``DependencyFailedError`` (its cause: the failure that started it) without running.

Only top-level arguments are looked at. A task can only name futures that exist when it is
submitted, so dependencies never form a cycle.
"""

from __future__ import annotations

import concurrent.futures
import pickle
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import _protocol as p
from .._deps import DepRef
from .._errors import DependencyFailedError
from ._future import Future
from ._serial import pack, release

if TYPE_CHECKING:
    from ._core import _Core


class Found(NamedTuple):
    """A call's arguments with its pending dependencies replaced by ``DepRef``s."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    needs: list[Future[Any]]  # in DepRef order
    after: list[Future[Any]]
    failed: DependencyFailedError | None  # a dependency that has already failed


class Waiting(NamedTuple):
    """What the client keeps of a task with dependencies, to submit it again if the
    dispatcher answers ``DEP_GONE``."""

    fn_id: int
    opts_id: int
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    needs: list[Future[Any]]
    after: list[Future[Any]]
    not_before: float
    deadline: float
    key: str
    what: str


def check_after(futures: Any) -> tuple[Future[Any], ...]:
    """``options(after=...)``: mppool futures (one, or an iterable of them)."""
    if futures is None:
        return ()
    if isinstance(futures, concurrent.futures.Future):
        futures = [futures]
    if not isinstance(futures, Iterable):
        raise TypeError(f"after must be a future or an iterable of futures, not {futures!r}")
    out = tuple(futures)
    for f in out:
        if not isinstance(f, Future):
            raise TypeError(f"after: {f!r} is not a future of an mppool pool")
    return out


def failure(future: Future[Any]) -> DependencyFailedError | None:
    """The error a dependent gets from a done ``future``, or ``None`` if it succeeded."""
    if future.cancelled():
        cause: BaseException = concurrent.futures.CancelledError(
            f"task {future.task_id} was cancelled"
        )
    else:
        exc = future.exception()
        if exc is None:
            return None
        cause = exc
        if isinstance(exc, DependencyFailedError) and exc.__cause__ is not None:
            cause = exc.__cause__  # the failure that started the chain
    err = DependencyFailedError(
        f"dependency {future.task_id} failed ({type(cause).__name__}: {cause}); "
        "this task did not run",
        dependency=future.task_id,
    )
    err.__cause__ = cause
    return err


def find(
    core: _Core, args: tuple[Any, ...], kwargs: dict[str, Any], after: tuple[Future[Any], ...]
) -> Found:
    """Replace the pending futures among the top-level arguments by ``DepRef``s; done ones
    by their values. Raises ``TypeError`` for a future of another pool."""
    needs: list[Future[Any]] = []
    failed: DependencyFailedError | None = None

    def place(value: Any) -> Any:
        nonlocal failed
        if not isinstance(value, Future):
            return value
        _own(core, value)
        if not value.done():
            needs.append(value)
            return DepRef(len(needs) - 1)
        err = failure(value)
        if err is not None:
            failed = failed or err
            return None
        return value.result()

    new_args = tuple(place(a) for a in args)
    new_kwargs = {k: place(v) for k, v in kwargs.items()} if kwargs else kwargs
    pending_after: list[Future[Any]] = []
    for f in after:
        _own(core, f)
        if not f.done():
            pending_after.append(f)
        elif failed is None:
            failed = failure(f)
    return Found(new_args, new_kwargs, needs, pending_after, failed)


def _encoded(exc: BaseException | None) -> tuple[int, bytes]:
    """An error decided here as the dispatcher carries one: ``(status, payload)``."""
    if exc is None or isinstance(exc, concurrent.futures.CancelledError):
        return p.CANCELLED, b""
    cls = type(exc)
    try:
        blob: bytes | None = pickle.dumps(exc)
    except Exception:
        blob = None
    tb = getattr(exc.__cause__, "tb", None) or ""
    return p.ERROR, pickle.dumps((blob, f"{cls.__module__}.{cls.__qualname__}", str(exc), tb))


def has_future(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if any(isinstance(a, Future) for a in args):
        return True
    return bool(kwargs) and any(isinstance(v, Future) for v in kwargs.values())


def _own(core: _Core, future: Future[Any]) -> None:
    if future._core is not core:
        raise TypeError(
            f"task {future.task_id} belongs to another pool: only a future of this pool can "
            "be a dependency (pass its result instead)"
        )


# --- the dispatcher no longer knew a dependency (on the reader thread) -------------------------
def gone(core: _Core, task_id: int) -> None:
    """The dispatcher did not take task ``task_id``: a dependency had finished by then. Its
    outcome reached this process first, so submit the task again with the values now here
    (or, for a dependency submitted here but not yet there, once it is done)."""
    waiting = core.dep_waiting.get(task_id)
    if waiting is None:
        return
    pending = [f for f in (*waiting.needs, *waiting.after) if not f.done()]
    if not pending:
        _later(core, task_id, waiting)
        return
    left = [len(pending)]
    lock = threading.Lock()

    def one_done(_: Any) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            _later(core, task_id, waiting)

    for f in pending:
        f.add_done_callback(one_done)


def _later(core: _Core, task_id: int, waiting: Waiting) -> None:
    """Run :func:`_again` for the task, one at a time: failing a task runs its dependents'
    callbacks, which would otherwise recurse once per link of a long chain."""
    with core.dep_lock:
        core.dep_again.append((task_id, waiting))
        if core.dep_draining:
            return  # the call draining the queue, further up this stack or in another thread
        core.dep_draining = True
    while True:
        with core.dep_lock:
            if not core.dep_again:
                core.dep_draining = False
                return
            task_id, waiting = core.dep_again.popleft()
        _again(core, task_id, waiting)


def _again(core: _Core, task_id: int, w: Waiting) -> None:
    entry = core.entries.get(task_id)
    if entry is None or entry.cancelled():  # (a cancel told the dispatcher already)
        core.dep_waiting.pop(task_id, None)
        return
    for f in (*w.needs, *w.after):
        err = failure(f)
        if err is not None:
            core.entries.pop(task_id, None)
            core.dep_waiting.pop(task_id, None)
            core.release_segments(task_id)
            status, payload = _encoded(err.__cause__)  # for the tasks waiting for it there
            core.send(p.Ended(p.C_ENDED, task_id, f.task_id, status, payload))
            entry._mppool_fail(err)
            return
    values = [f.result() for f in w.needs]
    args = tuple(values[a.index] if isinstance(a, DepRef) else a for a in w.args)
    kwargs = {k: values[v.index] if isinstance(v, DepRef) else v for k, v in w.kwargs.items()}
    try:
        payload, kept = pack((args, kwargs or None), w.what, core.shm_prefix)
    except BaseException as exc:
        core.entries.pop(task_id, None)
        core.dep_waiting.pop(task_id, None)
        status, payload = _encoded(exc)
        core.send(p.Ended(p.C_ENDED, task_id, task_id, status, payload))
        entry._mppool_fail(exc)
        return
    release(core.segments.pop(task_id, None))
    if kept is not None:
        core.segments[task_id] = kept
    core.dep_waiting.pop(task_id, None)
    msg = p.submit(
        task_id, w.fn_id, w.opts_id, p.SINGLE, 0, w.not_before, payload, w.key, w.deadline
    )
    core.send(msg)
