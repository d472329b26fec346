"""Dependencies between tasks with real processes: futures as arguments and
``options(after=...)``: diamonds, a 1,000-task chain, failures and cancels propagating, a
crashing dependency retried first, large results forwarded through shared memory, and a
dependency that finishes just before its dependent arrives."""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any

import pytest

import mppool
from mppool._client import _dependencies

from . import tasks
from .conftest import PoolTracker, hold

T = 60


def test_a_diamond_passes_results_and_waiting_holds_no_worker(
    make_pool: PoolTracker, fifos: Any
) -> None:
    pool = make_pool(2)
    started, gate = fifos("started"), fifos("gate")
    top = pool.submit(tasks.gated, started.path, gate.path, 3)
    started.take(1)  # one worker holds `top`
    left = pool.submit(tasks.square, top)
    right = pool.submit(tasks.add, top, 10)
    bottom = pool.submit(tasks.add, left, b=right)
    # The three waiting tasks hold no worker: independent work runs on the other one.
    assert pool.submit(tasks.square, 7).result(timeout=T) == 49
    assert not any(f.done() for f in (left, right, bottom))
    assert pool.stats().queued == 3
    gate.post()
    assert bottom.result(timeout=T) == 9 + 13
    assert (left.result(timeout=T), right.result(timeout=T)) == (9, 13)


def test_a_thousand_task_chain(make_pool: PoolTracker) -> None:
    pool = make_pool(2)
    fut = pool.submit(tasks.add_one, 0)
    for _ in range(999):
        fut = pool.submit(tasks.add_one, fut)
    assert fut.result(timeout=T) == 1000
    stats = pool.stats()
    assert stats.completed == 1000 and stats.failed == 0


def test_a_failure_propagates_down_the_graph_with_its_cause(make_pool: PoolTracker) -> None:
    pool = make_pool(2)
    bad = pool.submit(tasks.raise_value_error, "no input")
    child = pool.submit(tasks.square, bad)
    grandchild = pool.options(after=[child]).submit(tasks.square, 2)
    with pytest.raises(mppool.DependencyFailedError) as info:
        child.result(timeout=T)
    assert isinstance(info.value.__cause__, ValueError)
    assert info.value.dependency == bad.task_id
    with pytest.raises(mppool.DependencyFailedError) as info2:
        grandchild.result(timeout=T)
    # Down a chain the cause is the failure that started it, not a wrapper per level.
    assert isinstance(info2.value.__cause__, ValueError)
    assert info2.value.dependency == child.task_id
    # A dependency that has already failed fails the task at once, without running it.
    late = pool.submit(tasks.square, bad)
    with pytest.raises(mppool.DependencyFailedError):
        late.result(timeout=T)
    assert pool.submit(tasks.square, 3).result(timeout=T) == 9  # the pool serves on


def test_a_cancelled_dependency_fails_its_dependents(make_pool: PoolTracker, fifos: Any) -> None:
    pool = make_pool(1)
    gate, (blocker,) = hold(pool, fifos)
    queued = pool.submit(tasks.square, 4)  # waits behind the blocker
    dependent = pool.submit(tasks.add, queued, 1)
    assert queued.cancel()
    err = dependent.exception(timeout=T)
    assert isinstance(err, mppool.DependencyFailedError)
    assert isinstance(err.__cause__, concurrent.futures.CancelledError)
    gate.post()
    blocker.result(timeout=T)


def test_a_crashing_dependency_is_retried_before_its_dependent_runs(
    make_pool: PoolTracker, tmp_path: Any
) -> None:
    pool = make_pool(2)
    parent = pool.submit(tasks.crash_first_time, str(tmp_path / "crashed"), 6)
    child = pool.submit(tasks.square, parent)
    assert child.result(timeout=T) == 36
    assert pool.stats().crashed == 1


def test_after_waits_without_passing_results(make_pool: PoolTracker, fifos: Any) -> None:
    pool = make_pool(2)
    started, gate = fifos("started"), fifos("gate")
    first = pool.submit(tasks.gated, started.path, gate.path, "first")
    started.take(1)
    second = pool.options(after=first).submit(tasks.now)
    assert pool.submit(tasks.square, 2).result(timeout=T) == 4  # the other worker is free
    assert not second.done()
    gate.post()
    assert first.result(timeout=T) == "first"
    assert second.result(timeout=T) > 0
    with pytest.raises(TypeError, match="future"):
        pool.options(after=[42])


def test_a_large_result_goes_to_its_dependents_through_shared_memory(
    make_pool: PoolTracker,
) -> None:
    pytest.importorskip("numpy")
    pool = make_pool(2)
    arrays = pool.submit(tasks.many_arrays, 40)  # 40 x 64 KiB: a result in shared memory
    sums = [pool.submit(tasks.total, arrays, k) for k in range(3)]
    expected = float(sum(i * 8192 for i in range(40)))
    assert [f.result(timeout=T) for f in sums] == [expected + k for k in range(3)]
    assert len(arrays.result(timeout=T)) == 40  # this process reads it too
    # The leak check (fixture) sees the segment removed once all three have ended.


def test_futures_of_another_pool_are_refused(make_pool: PoolTracker) -> None:
    one, other = make_pool(1), make_pool(1)
    fut = one.submit(tasks.square, 2)
    with pytest.raises(TypeError, match="another pool"):
        other.submit(tasks.square, fut)
    assert fut.result(timeout=T) == 4


def test_a_dependency_finished_before_its_dependent_arrives_still_gives_its_result(
    make_pool: PoolTracker, fifos: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dispatcher no longer knows the dependency (its result is on its way to this
    process): the task comes back and is submitted again with the value."""
    gone: list[int] = []
    real_gone = _dependencies.gone
    monkeypatch.setattr(_dependencies, "gone", lambda core, i: (gone.append(i), real_gone(core, i)))
    pool = make_pool(1)
    hold_reader, reader_held = threading.Event(), threading.Event()
    first = pool.submit(tasks.square, 1)

    def block(_: Any) -> None:  # runs on the reader thread: results queue up behind it
        reader_held.set()
        hold_reader.wait(T)

    first.add_done_callback(block)
    assert reader_held.wait(T)
    done = fifos("done")
    parent = pool.submit(tasks.post_then_square, done.path, 5)
    done.take(1)
    # With one worker, this next task starts only once the dispatcher has taken the parent's
    # result (nothing is queued behind a function never measured): then it posts.
    marker = pool.submit(tasks.post_then_square, done.path, 0)
    done.take(1)
    assert not parent.done()  # its result waits behind the held reader
    child = pool.submit(tasks.add, parent, 1)
    grandchild = pool.submit(tasks.add, child, 1)  # arrives after the child was sent back
    hold_reader.set()
    assert child.result(timeout=T) == 26
    assert grandchild.result(timeout=T) == 27  # it waited for the child's second coming
    assert marker.result(timeout=T) == 0
    assert gone == [child.task_id]


def test_a_chain_behind_a_failing_head_waits_for_its_retry(
    make_pool: PoolTracker, fifos: Any, tmp_path: Any
) -> None:
    pool = make_pool(1)
    gate, (blocker,) = hold(pool, fifos)
    # Queued behind the blocker, so they go out together: the dependents chained behind
    # their head, which fails once (and is retried) before it succeeds.
    head = pool.options(retries=mppool.RetryPolicy(max_attempts=2, initial_delay=0.01)).submit(
        tasks.flaky_first,
        str(tmp_path),
        7,  # 7: fails its first run
    )
    middle = pool.submit(tasks.square, head)
    tail = pool.submit(tasks.add, middle, 1)
    gate.post()
    blocker.result(timeout=T)
    assert tail.result(timeout=T) == 49**2 + 1
    assert middle.result(timeout=T) == 49**2 and head.result(timeout=T) == 49
    assert pool.stats().retried == 1


def test_a_long_chain_runs_as_fast_as_it_is_submitted_and_fails_down_from_a_bad_link(
    make_pool: PoolTracker,
) -> None:
    pool = make_pool(2)
    fut = pool.submit(tasks.add_one, 0)
    chain = [fut]
    for i in range(1, 300):
        fut = pool.submit(tasks.fail_on, fut, 150) if i == 150 else pool.submit(tasks.add_one, fut)
        chain.append(fut)
    assert chain[149].result(timeout=T) == 150
    with pytest.raises(ValueError):
        chain[150].result(timeout=T)
    with pytest.raises(mppool.DependencyFailedError):
        chain[-1].result(timeout=T)
    assert pool.submit(tasks.square, 2).result(timeout=T) == 4


def test_a_thousand_link_chain_failing_at_its_head_fails_every_link_with_the_root_cause(
    make_pool: PoolTracker,
) -> None:
    pool = make_pool(2)
    fut = pool.submit(tasks.raise_value_error, "bad start")
    for _ in range(999):
        fut = pool.submit(tasks.add_one, fut)
    err = fut.exception(timeout=T)
    assert isinstance(err, mppool.DependencyFailedError)
    assert isinstance(err.__cause__, ValueError)  # decoded without recursing 1,000 levels
    assert pool.stats().failed == 1000


def test_a_task_chained_behind_one_of_two_dependencies_gets_both_values(
    make_pool: PoolTracker, fifos: Any
) -> None:
    pool = make_pool(1)
    gate, (blocker,) = hold(pool, fifos)
    a = pool.submit(tasks.square, 3)
    b = pool.options(priority=5).submit(tasks.square, 4)  # runs before a
    c = pool.submit(tasks.add, a, b)  # once b is done, it waits for a alone
    gate.post()
    blocker.result(timeout=T)
    assert c.result(timeout=T) == 9 + 16


def test_a_shared_result_outlives_its_dependents_until_this_process_read_it(
    make_pool: PoolTracker, fifos: Any
) -> None:
    pytest.importorskip("numpy")
    pool = make_pool(1)
    hold_reader, reader_held = threading.Event(), threading.Event()
    first = pool.submit(tasks.square, 1)
    first.add_done_callback(lambda _: (reader_held.set(), hold_reader.wait(T)))
    assert reader_held.wait(T)  # results now queue up behind the held reader
    done = fifos("done")
    arrays = pool.submit(tasks.many_arrays, 40)  # a result in shared memory
    two = pool.submit(tasks.square, 2)  # total waits for it too: it takes the arrays' bytes
    total = pool.submit(tasks.total, arrays, two)
    # Released by the dispatcher once it has taken total's end (it needs two results, so
    # it is not chained behind total on the worker): it posts when it starts.
    marker = pool.submit(tasks.post_then_sum, done.path, total, two)
    done.take(1)
    hold_reader.set()
    assert len(arrays.result(timeout=T)) == 40  # mapped after its dependent had ended
    expected = float(sum(i * 8192 for i in range(40))) + 4
    assert total.result(timeout=T) == expected
    assert marker.result(timeout=T) == expected + 4


def test_a_failed_dependency_that_ended_before_its_dependent_arrived_fails_the_chain_with_it(
    make_pool: PoolTracker, fifos: Any
) -> None:
    """As above, with a dependency that failed: the task sent back fails here, and the
    dispatcher hears why, for the task that waits for it there."""
    pool = make_pool(1)
    hold_reader, reader_held = threading.Event(), threading.Event()
    first = pool.submit(tasks.square, 1)
    first.add_done_callback(lambda _: (reader_held.set(), hold_reader.wait(T)))
    assert reader_held.wait(T)
    done = fifos("done")
    parent = pool.submit(tasks.post_then_raise, done.path, "no data")
    done.take(1)
    marker = pool.submit(tasks.post_then_square, done.path, 0)  # once the parent has ended
    done.take(1)
    child = pool.submit(tasks.add, parent, 1)  # sent back: the parent is gone
    grandchild = pool.submit(tasks.add, child, 1)  # waits there for the child
    hold_reader.set()
    for fut in (child, grandchild):
        err = fut.exception(timeout=T)
        assert isinstance(err, mppool.DependencyFailedError)
        assert isinstance(err.__cause__, ValueError) and "no data" in str(err.__cause__)
    assert marker.result(timeout=T) == 0
