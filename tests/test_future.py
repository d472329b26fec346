"""mppool.Future against the private parts of concurrent.futures.Future it relies on.

Future skips the base class's ``__init__`` (its Condition is made on first use) and sets the
finished state directly when nobody waits. That uses ``_state``, ``_result``, ``_exception``,
``_waiters``, ``_done_callbacks``, ``_condition`` and ``_invoke_callbacks`` of
``concurrent.futures.Future``, and its state names. These tests pin them: a Python release
that changes them fails here, not in users' programs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import concurrent.futures._base as base
import threading
from typing import Any

import pytest

import mppool
from mppool._client._future import Future

from .conftest import wait_until

T = 30


def test_the_base_class_still_has_what_the_fast_paths_use() -> None:
    plain: concurrent.futures.Future[Any] = concurrent.futures.Future()
    for name in ("_state", "_result", "_exception", "_waiters", "_done_callbacks", "_condition"):
        assert hasattr(plain, name), name
    assert callable(plain._invoke_callbacks)  # type: ignore[attr-defined]
    assert (base.PENDING, base.FINISHED) == ("PENDING", "FINISHED")
    assert {base.CANCELLED, base.CANCELLED_AND_NOTIFIED} == {"CANCELLED", "CANCELLED_AND_NOTIFIED"}
    assert plain._state == "PENDING"  # type: ignore[attr-defined]


def test_finished_without_a_waiter_reads_like_any_future() -> None:
    fut: Future[int] = Future()
    fut._finish(42, None)
    assert "_lazy_condition" not in fut.__dict__  # nobody waited: no Condition was made
    assert fut.done() and not fut.cancelled() and not fut.running()
    assert fut.result(timeout=0) == 42 and fut.exception(timeout=0) is None
    watched: Future[int] = Future()
    seen: list[Any] = []
    watched.add_done_callback(lambda f: seen.append(f.result()))
    watched._finish(43, None)
    assert seen == [43]
    late: list[Any] = []
    fut.add_done_callback(lambda f: late.append(f.result()))  # added after: runs at once
    assert late == [42]
    err: Future[int] = Future()
    err._finish(None, ValueError("boom"))
    with pytest.raises(ValueError, match="boom"):
        err.result(timeout=0)


def test_a_waiting_thread_is_woken() -> None:
    fut: Future[str] = Future()
    got: list[str] = []
    waiter = threading.Thread(target=lambda: got.append(fut.result(timeout=T)))
    waiter.start()
    assert wait_until(lambda: "_lazy_condition" in fut.__dict__, T)  # made by the waiter
    fut._finish("done", None)
    waiter.join(T)
    assert got == ["done"]


def test_wait_as_completed_and_asyncio_see_it_finish() -> None:
    futs: list[Future[int]] = [Future() for _ in range(3)]
    resolver = threading.Timer(0.05, lambda: [f._finish(i, None) for i, f in enumerate(futs)])
    resolver.start()
    done, pending = concurrent.futures.wait(futs, timeout=T)
    assert len(done) == 3 and not pending
    assert sorted(f.result() for f in concurrent.futures.as_completed(futs, timeout=T)) == [0, 1, 2]

    async def awaited() -> int:
        fut: Future[int] = Future()
        asyncio.get_running_loop().call_later(0.01, fut._finish, 7, None)
        return await asyncio.wrap_future(fut)

    assert asyncio.run(awaited()) == 7


def test_cancel_before_it_finishes() -> None:
    fut: Future[int] = Future()
    assert fut.cancel()
    assert fut.cancelled() and fut.done()
    with pytest.raises(concurrent.futures.CancelledError):
        fut.result(timeout=0)
    with pytest.raises(concurrent.futures.InvalidStateError):
        fut._finish(1, None)


def test_it_is_the_public_type() -> None:
    assert mppool.Future is Future
    assert issubclass(Future, concurrent.futures.Future)


def test_finishing_it_twice_raises_instead_of_deadlocking() -> None:
    # The second outcome of a task (a stale delivery, a race with shutdown) must be refused
    # with InvalidStateError; formatting that error once took the lock it was holding.
    fut: Future[int] = Future()
    fut._finish(1, None)
    raised: list[BaseException] = []

    def again() -> None:
        try:
            fut._finish(2, None)
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=again, daemon=True)
    thread.start()
    thread.join(10.0)
    assert not thread.is_alive(), "finishing a finished future deadlocked"
    assert [type(e) for e in raised] == [concurrent.futures.InvalidStateError]
    assert fut.result(0) == 1


def test_cancelling_twice_is_harmless() -> None:
    fut: Future[int] = Future()
    assert fut.cancel()
    assert fut.cancel()  # once raised "Future in unexpected state" (a second notice)
    assert fut.cancelled()
