"""Regression tests for bugs found in review: each failed (or hung) before its fix."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

import mppool

from . import tasks
from .conftest import PoolTracker

T = 60


def run_with_deadline(fn: Any, seconds: float = 30.0) -> Any:
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it does not finish."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "hung"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def test_lazy_map_consumed_after_the_pool_closed_runs_to_the_end_without_hanging(
    make_pool: PoolTracker,
) -> None:
    # The map was asked for before the shutdown: the graceful shutdown feeds all of it.
    with make_pool(2) as pool:
        it = pool.map(tasks.square, range(20_000), chunksize=100, timeout=T)
    assert run_with_deadline(lambda: sum(it)) == sum(x * x for x in range(20_000))


def test_a_temporary_pool_lives_as_long_as_its_map_view_or_schedule(leak_check: None) -> None:
    squares = run_with_deadline(
        lambda: list(mppool.Pool(2).map(tasks.square, range(3000), timeout=T))
    )
    assert squares == [x * x for x in range(3000)]
    view = mppool.Pool(1).options(priority=1)
    assert view.submit(tasks.square, 7).result(timeout=T) == 49
    view._owner.shutdown()
    handle = mppool.Pool(1).schedule_every(0.05, tasks.square, 3)
    assert handle.wait_for_runs(2, timeout=T) and handle.results()[:2] == [9, 9]
    handle.cancel()
    handle._owner.shutdown()


def test_submit_racing_a_shutdown_resolves(make_pool: PoolTracker) -> None:
    pool = make_pool(1)
    fut = pool.submit(tasks.square, tasks.ShutsDownWhenPickled(pool))
    with pytest.raises(mppool.PoolClosedError):
        fut.result(timeout=T)


def test_crash_in_a_batch_blames_only_the_crasher(make_pool: PoolTracker) -> None:
    pool = make_pool(1, crash_retries=0)
    list(
        pool.map(tasks.square, range(100), chunksize=1, timeout=T)
    )  # tiny, measured: batched in pipes
    before = [pool.submit(tasks.square, i) for i in range(60)]
    crasher = pool.submit(tasks.exit_now)
    after = [pool.submit(tasks.square, i) for i in range(60)]
    with pytest.raises(mppool.WorkerCrashedError):
        crasher.result(timeout=T)
    assert [f.result(timeout=T) for f in before + after] == [i * i for i in range(60)] * 2


def test_map_yields_every_item_before_an_input_error(pool: mppool.Pool) -> None:
    def source() -> Iterator[int]:
        yield from range(10)
        raise LookupError("input ran dry")

    got: list[int] = []
    with pytest.raises(LookupError, match="ran dry"):
        for x in pool.map(tasks.square, source(), timeout=T):
            got.append(x)
    assert got == [x * x for x in range(10)]
    items: list[Any] = [*range(20), threading.Lock(), 21]
    got = []
    with pytest.raises(mppool.SerializationError):
        for x in pool.map(tasks.square, items, timeout=T):
            got.append(x)
    assert got == [x * x for x in range(20)]
    assert not pool._core.entries  # nothing left registered


def test_an_unpicklable_item_first_in_its_chunk_raises_its_own_error(pool: mppool.Pool) -> None:
    # With one item per chunk the bad item always opens a chunk: its place must carry the
    # SerializationError, not a CancelledError (seen when chunk sizes happened to line up).
    items: list[Any] = [*range(5), threading.Lock(), 6]
    got: list[int] = []
    with pytest.raises(mppool.SerializationError, match="pickle"):
        for x in pool.map(tasks.square, items, chunksize=1, timeout=T):
            got.append(x)
    assert got == [x * x for x in range(5)]
    assert pool.submit(tasks.square, 7).result(timeout=T) == 49  # the pool keeps serving


def test_options_are_interned_by_value(pool: mppool.Pool) -> None:
    futs = [pool.options(priority=1, kind="k").submit(tasks.square, i) for i in range(500)]
    keyed = [pool.options(key=f"key-{i}").submit(tasks.square, i) for i in range(500)]
    assert [f.result(timeout=T) for f in futs + keyed] == [i * i for i in range(500)] * 2
    assert len(pool._core.catalog.options.ids) <= 3  # defaults, (priority 1, kind k), default again


def test_stats_from_a_done_callback_is_refused_not_stalled(pool: mppool.Pool) -> None:
    box: dict[str, Any] = {}
    done = threading.Event()

    def callback(_: Any) -> None:
        try:
            pool.stats()
        except BaseException as exc:
            box["error"] = exc
        done.set()

    pool.submit(tasks.square, 2).add_done_callback(callback)
    assert done.wait(T)
    assert isinstance(box.get("error"), RuntimeError)
    assert pool.submit(tasks.square, 3).result(timeout=T) == 9


def test_leaving_a_keyed_map_early_keeps_shared_tasks(make_pool: PoolTracker, fifos: Any) -> None:
    # The map's item 5 joins a task submitted before it with the same key; leaving the map
    # early cancels the map's own work, never the task it shares with the rest of the program.
    pool = make_pool(2)
    started, gate = fifos("started"), fifos("gate")
    shared = pool.options(key="shared").submit(tasks.gated, started.path, gate.path, 25)
    started.take(1)  # running on one worker; the other is free
    keys = pool.options(key=lambda x: "shared" if x == 5 else f"own-{x}")
    it = keys.map(tasks.square, [6, 5, 7], chunksize=1, timeout=T)
    assert next(it) == 36  # the map has started and joined "shared"
    it.close()  # type: ignore[attr-defined]
    assert not shared.cancelled()
    gate.post(1)
    assert shared.result(timeout=T) == 25


def test_breaking_while_shutting_down_ends_broken_not_closing(make_pool: PoolTracker) -> None:
    # The reader thread breaks the pool just as shutdown() has read the state and is about
    # to set it: shutdown must not overwrite "broken" with "closing" (and so hide the cause).
    pool = make_pool(1)
    core = pool._core
    base = type(core)
    broken_done = threading.Event()
    shutting_down = threading.current_thread()

    class Racy(base):  # type: ignore[valid-type,misc]
        raced = False

        @property
        def state(self) -> str:
            value = self.__dict__["state"]
            if threading.current_thread() is shutting_down and not Racy.raced:
                Racy.raced = True
                reason = mppool.BrokenPoolError("the dispatcher process died")

                def go_broken() -> None:
                    self._go_broken(reason)
                    broken_done.set()

                threading.Thread(target=go_broken).start()
                broken_done.wait(0.5)  # blocks on the core's lock, if it takes it
            return str(value)

        @state.setter
        def state(self, value: str) -> None:
            self.__dict__["state"] = value

    core.__class__ = Racy
    try:
        pool.shutdown(wait=False)
        assert broken_done.wait(T)
        assert core.state == "broken"
        with pytest.raises(mppool.BrokenPoolError):
            pool.submit(tasks.square, 2)
    finally:
        core.__class__ = base
        core.conn.kill()
