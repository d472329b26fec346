"""What the reader thread does with the dispatcher's messages (user process).

Results resolve their futures (a callback that raises, even ``SystemExit``, fails only its
own future), answers go to their requests, events to the logs; a broken notice or the end of
the pipe settles everything still open, so nobody waits forever. A pool's states::

    running ──shutdown()──▶ closing ──(the dispatcher says bye)──▶ closed
       │                       │
       └──── the dispatcher died, or a worker could not start ────▶ broken
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any

from .. import _protocol as p
from .. import _shm
from .._errors import BrokenPoolError, PoolClosedError, RemoteTraceback
from . import _dependencies, _events, _sizing
from ._future import report_resolve_failure

if TYPE_CHECKING:
    from ._core import _Core

_RUNNING, _CLOSING, _CLOSED, _BROKEN = "running", "closing", "closed", "broken"


def deliver(core: _Core, msgs: list[p.Message]) -> bool:
    """Handle messages on the reader thread; False once the dispatcher said goodbye."""
    entries = core.entries
    for msg in msgs:
        tag = msg[0]
        if tag == p.D_RESULT or tag == p.D_CHUNK:
            if tag == p.D_RESULT and msg[2] == p.DEP_GONE:
                _dependencies.gone(core, msg[1])
                continue
            if core.dep_waiting:
                core.dep_waiting.pop(msg[1], None)
            entry = entries.pop(msg[1], None)
            if entry is not None:
                try:
                    if tag == p.D_RESULT:
                        entry._mppool_resolve(msg[2], msg[3], msg[4], msg[5])
                    else:
                        entry._mppool_chunk(p.ChunkResult.view(msg))
                except BaseException as exc:  # a callback that raised (even SystemExit):
                    report_resolve_failure(entry, exc)  # it ends no other future
            if core.segments:  # after: freeing a large segment's pages takes a while
                core.release_segments(msg[1])
        elif tag == p.D_STATS or tag == p.D_LIST:
            core.requests.answer(msg[1], msg[2])
        elif tag == p.D_FIRED:
            run = core.schedules.fired(msg[1], msg[2], msg[3], msg[4])
            if run is not None:
                entries[msg[2]] = run
        elif tag == p.D_READY:
            core.pids = list(msg[1])
            core.ready.set()
        elif tag == p.D_BROKEN:
            err = BrokenPoolError(msg[1])
            err.__cause__ = RemoteTraceback(msg[2]) if msg[2] else None
            go_broken(core, err)
        elif tag == p.D_RESIZED:
            _sizing.follow(core, msg[2])
            if msg[1]:
                core.requests.answer(msg[1], (msg[2], msg[3]))
        elif tag == p.D_UNLINK:
            _shm.remove(msg[1])  # a result that tasks depending on it read too (see _deps)
        elif tag == p.D_EVENT:
            _events.log(p.Event(*msg))
        elif tag == p.D_BYE:
            with core.lock:
                core.state = _CLOSED
            return False
    return True


def go_broken(core: _Core, reason: BaseException) -> None:
    with core.lock:
        if core.state == _CLOSED:
            return
        if core.state != _BROKEN:  # keep the first reason (the initializer's error)
            core.state = _BROKEN
            core.broken_reason = reason
        first = core.broken_reason
        failed = [core.entries.pop(t) for t in list(core.entries)]
    core.ready.set()
    # Futures failed here rather than by the dispatcher (the broken notice overtook their
    # submission) keep the worker's traceback as their cause all the same.
    cause = first.__cause__ if first is not None else None
    tb = cause.tb if isinstance(cause, RemoteTraceback) else None
    payload = pickle.dumps((str(first if first is not None else reason), tb))
    settle(failed, p.BROKEN, payload)
    core.requests.fail_all(BrokenPoolError(str(reason)))


def ended(core: _Core) -> None:
    """The reader thread is ending (the pipe closed): settle everything still open."""
    if core.state in (_BROKEN, _RUNNING, _CLOSING):
        reason = core.conn.broken_reason or core.broken_reason
        go_broken(core, reason or BrokenPoolError("the dispatcher process died"))
    with core.lock:
        if core.state != _BROKEN:
            core.state = _CLOSED
        leftovers = [core.entries.pop(t) for t in list(core.entries)]
    # Anything still registered never reached the dispatcher in time (a map refilling its
    # window as the pool closed): fail it rather than leave someone waiting forever.
    settle(leftovers, p.CLOSED, b"")
    core.requests.fail_all(PoolClosedError("the pool is shut down"))
    # Every outcome is in: no segment of this pool is needed any more (one a worker wrote
    # before it was killed, or any, if the dispatcher died).
    core.segments.clear()
    _shm.remove_all(core.shm_prefix)
    if core.store is not None:  # every keyed task is settled: write the journal out
        assert core.waits is not None
        core.waits.close()
        core.store.close()
    core.finished.set()


def settle(entries: list[Any], status: int, payload: bytes) -> None:
    """Resolve entries the dispatcher will not answer; a raising callback ends no other."""
    for entry in entries:
        try:
            entry._mppool_resolve(status, 0, 0.0, payload)
        except BaseException as exc:
            report_resolve_failure(entry, exc)
