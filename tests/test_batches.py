"""Batches with real processes: ``pool.batch(name)`` groups tasks (submit and map),
counts them by state in the dispatcher, lists them, waits for them and cancels them."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import pytest

import mppool

from . import tasks
from .conftest import PoolTracker, hold

T = 60


def test_a_batch_groups_submits_and_maps_and_gives_their_results(make_pool: PoolTracker) -> None:
    pool = make_pool(2)
    with pool.batch("nightly") as b:
        first = b.submit(tasks.square, 3)
        squares = b.map(tasks.square, range(100))
        b.submit(tasks.add, 1, 2)
    assert b.done() and first.result(timeout=0) == 9
    results = b.results(timeout=T)
    assert results == [9, [x * x for x in range(100)], 3]
    assert squares.result(timeout=0) == [x * x for x in range(100)]
    stats = b.stats()
    assert stats is not None and stats.failed == 0 and stats.cancelled == 0
    assert stats.completed == stats.submitted >= 3 and stats.progress == 1.0
    assert stats.live == {}
    rows = [r for r in pool.tasks() if r.batch == "nightly"]
    assert {r.id for r in rows} >= {first.task_id}
    assert all(r.batch is None for r in pool.tasks() if r.id not in {x.id for x in rows})
    assert "nightly" in str(pool.stats())


def test_a_batch_counts_its_tasks_by_state_and_its_failures(
    make_pool: PoolTracker, fifos: Any
) -> None:
    pool = make_pool(1)
    started, gate = fifos("started"), fifos("gate")
    b = pool.batch("etl")  # a handle, without `with`
    held = b.submit(tasks.gated, started.path, gate.path, "held")
    started.take(1)
    waiting = b.submit(tasks.square, held)  # a dependency: waits in the dispatcher
    queued = b.submit(tasks.square, 2)
    bad = b.submit(tasks.raise_value_error, "broken input")
    stats = b.stats()
    assert stats is not None and stats.submitted == 4
    assert stats.live == {"running": 1, "waiting": 1, "queued": 2}
    assert not b.wait(timeout=0.01)
    gate.post()
    assert b.wait(timeout=T)
    with pytest.raises(TypeError):  # "held" ** 2: the dependent's own error
        waiting.result(timeout=0)
    assert queued.result(timeout=0) == 4
    with pytest.raises(ValueError):
        bad.result(timeout=0)
    with pytest.raises(TypeError):
        b.results(timeout=0)  # the first failure in submission order: the dependent's
    stats = b.stats()
    assert stats is not None and (stats.completed, stats.failed) == (2, 2)


def test_cancelling_a_batch_cancels_what_waits_and_kills_on_request(
    make_pool: PoolTracker, fifos: Any
) -> None:
    pool = make_pool(1)
    started, gate = fifos("started"), fifos("gate")
    other = pool.submit(tasks.square, 5)
    b = pool.batch("adhoc")
    running = b.submit(tasks.gated, started.path, gate.path)
    started.take(1)
    queued = [b.submit(tasks.square, x) for x in range(5)]
    endless = b.map(tasks.square, iter(range(10**9)))
    respawns = pool.stats().respawns
    b.cancel(kill=True)
    for f in (running, *queued, endless):
        with pytest.raises(concurrent.futures.CancelledError):
            f.result(timeout=T)
    with pytest.raises(mppool.PoolClosedError, match="cancelled"):
        b.submit(tasks.square, 1)
    assert other.result(timeout=T) == 25
    assert pool.submit(tasks.square, 6).result(timeout=T) == 36  # the pool serves on
    stats = pool.stats()
    assert stats.respawns == respawns + 1  # the running task's worker was killed
    batch = stats.batches["adhoc"]
    assert batch.cancelled >= 6 and batch.completed == 0 and batch.live == {}


def test_leaving_a_batch_block_by_an_exception_cancels_it(
    make_pool: PoolTracker, fifos: Any
) -> None:
    pool = make_pool(1)
    gate, (blocker,) = hold(pool, fifos)
    with pytest.raises(RuntimeError, match="stop"), pool.batch("aborted") as b:
        pending = b.submit(tasks.square, 3)
        raise RuntimeError("stop")
    with pytest.raises(concurrent.futures.CancelledError):
        pending.result(timeout=T)
    gate.post()
    blocker.result(timeout=T)
    with pytest.raises(TypeError, match="name"):
        pool.batch("")
