"""Scheduling policies with real processes: deadlines, fair share, circuit breakers.

The pure decisions are tested in ``test_policies`` on a fake clock; these check that the
pool carries them end to end (options, messages, errors, stats) and keeps serving.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest

import mppool

from . import tasks
from .conftest import PoolTracker, hold, wait_until

T = 60


def test_deadlines_order_a_level_and_fail_what_cannot_start_in_time(
    make_pool: PoolTracker, fifos: Any
) -> None:
    pool = make_pool(1)
    gate, (blocker,) = hold(pool, fifos)  # the only worker is held: everything below waits
    later = pool.options(deadline=60).submit(tasks.started_at, "later")
    sooner = pool.options(deadline=datetime.datetime.now() + datetime.timedelta(seconds=30))
    early = sooner.submit(tasks.started_at, "sooner")
    plain = pool.submit(tasks.started_at, "none")
    doomed = pool.options(deadline=0.3).submit(tasks.square, 2)
    doomed_map = pool.options(deadline=0.3).map(tasks.square, range(10))
    relaxed = pool.options(deadline=0.3, run_late=True).submit(tasks.started_at, "relaxed")
    err = doomed.exception(timeout=T)
    assert isinstance(err, mppool.DeadlineExceededError) and err.waited > 0.2
    with pytest.raises(mppool.DeadlineExceededError):
        next(iter(doomed_map))
    gate.post()
    blocker.result(timeout=T)
    starts = [f.result(timeout=T) for f in (later, early, plain, relaxed)]
    order = [tag for (tag,), _, _ in sorted(starts, key=lambda s: s[1])]
    # The earliest deadline first; relaxed (deadline passed, run_late) is the earliest.
    assert order == ["relaxed", "sooner", "later", "none"]
    assert pool.submit(tasks.square, 7).result(timeout=T) == 49  # the pool serves on
    stats = pool.stats()
    assert stats.expired == 2 and stats.failed == 2
    with pytest.raises(ValueError, match="deadline"):
        pool.options(deadline=0)
    with pytest.raises(TypeError, match="run_late"):
        pool.options(run_late="yes")  # type: ignore[arg-type]


def test_a_circuit_breaker_fails_fast_probes_and_closes(make_pool: PoolTracker) -> None:
    breaker = mppool.CircuitBreaker(failures=2, within=30, reset_after=0.5)
    pool = make_pool(2, circuit_breakers={"io": breaker})
    io = pool.options(kind="io")
    for _ in range(2):
        with pytest.raises(ValueError):
            io.submit(tasks.raise_value_error, "down").result(timeout=T)
    assert wait_until(lambda: pool.stats().circuits["io"].state == "open", T)
    err = io.submit(tasks.square, 3).exception(timeout=T)
    assert isinstance(err, mppool.CircuitOpenError) and err.kind == "io"
    assert 0 < err.retry_in <= 0.5
    assert pool.submit(tasks.square, 4).result(timeout=T) == 16  # other kinds run on
    stats = pool.stats()
    assert stats.refused == 1 and stats.circuits["io"].opened == 1
    assert stats.circuits["io"].retry_at is not None
    assert "circuit" in str(stats)
    # After reset_after the next task probes; its success closes the circuit.
    assert wait_until(lambda: pool.stats().circuits["io"].state == "half-open", T)
    assert io.submit(tasks.square, 5).result(timeout=T) == 25
    assert pool.stats().circuits["io"].state == "closed"
    assert io.submit(tasks.square, 6).result(timeout=T) == 36


def test_a_waiting_circuit_breaker_holds_tasks_until_a_probe_succeeds(
    make_pool: PoolTracker,
) -> None:
    breaker = mppool.CircuitBreaker(failures=1, within=30, reset_after=0.3, wait=True)
    pool = make_pool(2, circuit_breakers={"io": breaker})
    io = pool.options(kind="io")
    with pytest.raises(ValueError):
        io.submit(tasks.raise_value_error, "down").result(timeout=T)
    held = [io.submit(tasks.square, x) for x in range(5)]
    # They wait (held, not failed), then run once the first of them has probed.
    assert [f.result(timeout=T) for f in held] == [x * x for x in range(5)]
    stats = pool.stats()
    assert stats.circuits["io"].state == "closed" and stats.refused == 0
    assert stats.circuits["io"].rejected >= 1


def test_policy_arguments_are_checked(make_pool: PoolTracker) -> None:
    with pytest.raises(TypeError, match="CircuitBreaker"):
        make_pool(1, circuit_breakers={"io": 5})
    with pytest.raises(ValueError, match="failures"):
        mppool.CircuitBreaker(failures=0)
    with pytest.raises(ValueError, match="reset_after"):
        mppool.CircuitBreaker(reset_after=float("inf"))
    with pytest.raises(ValueError, match="shares"):
        make_pool(1, shares={"etl": 0})
    with pytest.raises(TypeError, match="shares"):
        make_pool(1, shares=[("etl", 1)])


def test_fair_share_pool_runs_every_kind_and_reports_shares(make_pool: PoolTracker) -> None:
    pool = make_pool(2, shares={"etl": 3, "adhoc": 1})
    etl = [pool.options(kind="etl").submit(tasks.spin, 0.002) for _ in range(30)]
    adhoc = [pool.options(kind="adhoc").submit(tasks.spin, 0.002) for _ in range(10)]
    plain = pool.submit(tasks.square, 3)
    assert all(f.result(timeout=T) >= 0.0 for f in etl + adhoc)
    assert plain.result(timeout=T) == 9
    shares = pool.stats().shares
    assert shares["etl"].weight == 3.0 and shares["adhoc"].weight == 1.0
    assert shares[""].weight == 1.0  # a kind not listed (here: none) weighs 1
    assert all(s.busy_seconds > 0 for s in shares.values())
    assert "share" in str(pool.stats())
