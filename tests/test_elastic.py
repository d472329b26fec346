"""An elastic pool: ``resize(n)`` under load, and ``Autoscale`` (rules on a fake clock, then
on a real pool)."""

from __future__ import annotations

import os
import random
import threading
from typing import Any

import psutil
import pytest

import mppool
from mppool._dispatcher._autoscale import Autoscaler, Knobs

from . import tasks
from .conftest import PoolTracker, wait_until, worker_pids

T = 60


def knobs(**kw: Any) -> Knobs:
    """The dispatcher's knobs for ``Autoscale(max=8)`` (its defaults otherwise), changed by
    ``kw``."""
    return Knobs(*mppool.Autoscale(max=8).knobs())._replace(**kw)


# --- the rules, on a fake clock ----------------------------------------------------------------
def test_a_burst_grows_the_pool_once_its_backlog_has_lasted_grow_after() -> None:
    a = Autoscaler(knobs(max=6, grow_after=0.2))
    # 3 s of queued work for 1 worker: above 0.5 s per worker, but not yet for 0.2 s.
    assert a.decide(0.0, 1, 3.0, (), None) is None
    assert a.decide(0.1, 1, 3.0, (), None) is None
    decision = a.decide(0.2, 1, 3.0, (), None)
    # As many workers as the backlog needs at 0.5 s each, at once.
    assert decision is not None and decision.target == 6 and decision.reason == "backlog"
    # Capped at max.
    b = Autoscaler(knobs(max=4, grow_after=0.2))
    b.decide(0.0, 1, 30.0, (), None)
    grown = b.decide(0.3, 1, 30.0, (), None)
    assert grown is not None and grown.target == 4
    assert b.decide(1.0, 4, 30.0, (), None) is None  # at max: nothing more


def test_a_backlog_that_comes_and_goes_does_not_grow_the_pool() -> None:
    a = Autoscaler(knobs(grow_after=0.2))
    for step in range(100):
        now = step * 0.05
        backlog = 3.0 if step % 3 else 0.0  # never above the threshold for 0.2 s in a row
        assert a.decide(now, 2, backlog, (), None) is None


def test_idle_workers_retire_after_idle_after_down_to_min() -> None:
    a = Autoscaler(knobs(min=2, idle_after=10.0))
    assert a.decide(0.0, 5, 0.0, (0, 1, 2), None) is None  # idle from 0.0
    assert a.decide(4.0, 5, 0.0, (0, 1, 2, 3, 4), None) is None  # 3 and 4 idle from 4.0
    assert a.decide(9.9, 5, 0.0, (0, 1, 2, 3, 4), None) is None
    first = a.decide(10.0, 5, 0.0, (0, 1, 2, 3, 4), None)
    # The three idle since 0.0 may go, but only down to min.
    assert first is not None and first.target == 2 and first.reason == "idle"
    assert len(first.retire) == 3 and set(first.retire) <= {0, 1, 2}
    assert a.decide(20.0, 2, 0.0, (3, 4), None) is None  # at min


def test_a_worker_that_gets_work_starts_its_idle_time_again() -> None:
    a = Autoscaler(knobs(idle_after=10.0))
    a.decide(0.0, 2, 0.0, (1,), None)
    a.decide(9.0, 2, 0.0, (), None)  # worker 1 ran something
    assert a.decide(12.0, 2, 0.0, (1,), None) is None
    later = a.decide(22.0, 2, 0.0, (1,), None)
    assert later is not None and later.retire == (1,)


def test_a_loaded_machine_holds_growth_back() -> None:
    a = Autoscaler(knobs(max_load=1.5))
    a.decide(0.0, 1, 5.0, (), 3.0)
    assert a.decide(1.0, 1, 5.0, (), 3.0) is None  # 3 per core > 1.5
    grown = a.decide(1.05, 1, 5.0, (), 1.0)
    assert grown is not None and grown.target > 1


def _steady_load(a: Autoscaler, minutes: float, seed: int) -> list[tuple[float, int, int]]:
    """A fluid model of a load just past what 2 workers do: 1.7 to 2.7 workers' worth of
    work arrives per second (2.2 on average), the pool runs it with ``target`` workers, and
    the autoscaler looks every 50 ms. Two workers fall behind; three keep up with a worker
    idle now and then. Returns the size changes."""
    rng = random.Random(seed)
    dt, target, backlog, changes = 0.05, 2, 0.0, []
    for step in range(int(minutes * 60 / dt)):
        now = step * dt
        demand = rng.uniform(1.7, 2.7)  # workers' worth of work arriving
        backlog = max(0.0, backlog + (demand - target) * dt)
        busy = target if backlog > 0 else min(target, int(-(-demand // 1)))
        idle = tuple(range(busy, target))
        decision = a.decide(now, target, backlog, idle, None)
        if decision is not None:
            changes.append((now, target, decision.target))
            target = decision.target
    return changes


def test_a_steady_load_at_the_threshold_does_not_flap() -> None:
    changes = _steady_load(Autoscaler(knobs(min=1, max=8)), minutes=10, seed=1)
    assert [(old, new) for _, old, new in changes] == [(2, 3)]  # grows once and stays
    # The same load without the waits flaps: the hysteresis is what holds it.
    eager = _steady_load(
        Autoscaler(knobs(min=1, max=8, grow_after=0.0, idle_after=0.0)), minutes=10, seed=1
    )
    assert len(eager) > 100


# --- resize ------------------------------------------------------------------------------------
def test_resize_up_and_down_under_load_loses_and_repeats_nothing(
    make_pool: PoolTracker, tmp_path: Any
) -> None:
    log = str(tmp_path / "ran.log")
    pool = make_pool(2)
    futures = [pool.submit(tasks.spin_and_append, 0.004, log, str(i)) for i in range(600)]
    for n in (4, 1, 3, 2, 5, 1):
        pool.resize(n)
        assert pool.workers == n
        make_pool.note(pool)
        # Leaving workers finish their current task, then exit; none is replaced.
        assert wait_until(lambda n=n: len(worker_pids(pool)) == n, T), worker_pids(pool)
        assert pool.stats().target_workers == n
    assert sorted(f.result(timeout=T) for f in futures) == sorted(str(i) for i in range(600))
    with open(log) as f:
        ran = f.read().split()
    assert sorted(ran, key=int) == [str(i) for i in range(600)]  # each exactly once
    stats = pool.stats()
    assert stats.crashed == stats.retried == stats.failed == 0
    assert [(e.from_workers, e.to_workers) for e in stats.scaling_events] == [
        (2, 4),
        (4, 1),
        (1, 3),
        (3, 2),
        (2, 5),
        (5, 1),
    ]
    assert {e.reason for e in stats.scaling_events} == {"resize"}


def test_shrinking_lets_busy_workers_finish_their_task(make_pool: PoolTracker, fifos: Any) -> None:
    pool = make_pool(3)
    started, gate = fifos("started"), fifos("gate")
    running = [pool.submit(tasks.gated, started.path, gate.path, i) for i in range(3)]
    started.take(3)
    queued = [pool.submit(tasks.square, i) for i in range(20)]
    before = set(worker_pids(pool))
    pool.resize(1)  # every worker is busy: two of them must leave after their task
    leaving = [w for w in pool.stats().workers if w.state == "leaving"]
    assert len(leaving) == 2 and all(w.current_task is not None for w in leaving)
    assert set(worker_pids(pool)) == before  # nobody was killed
    gate.post(3)
    assert [f.result(timeout=T) for f in running] == [0, 1, 2]
    assert [f.result(timeout=T) for f in queued] == [i * i for i in range(20)]
    assert wait_until(lambda: len(worker_pids(pool)) == 1, T)
    assert set(worker_pids(pool)) <= before  # the one left was there all along
    stats = pool.stats()
    assert stats.crashed == stats.retried == stats.respawns == 0


def test_growing_again_keeps_a_leaving_worker_instead_of_forking(
    make_pool: PoolTracker, fifos: Any
) -> None:
    pool = make_pool(2)
    started, gate = fifos("started"), fifos("gate")
    running = [pool.submit(tasks.gated, started.path, gate.path, i) for i in range(2)]
    started.take(2)
    before = set(worker_pids(pool))
    pool.resize(1)
    pool.resize(2)
    assert set(worker_pids(pool)) == before
    assert [w.state for w in pool.stats().workers].count("leaving") == 0
    gate.post(2)
    assert [f.result(timeout=T) for f in running] == [0, 1]
    assert pool.stats().live_workers == 2


def test_a_crash_during_a_resize_is_retried_and_replaced(
    make_pool: PoolTracker, tmp_path: Any, fifos: Any
) -> None:
    pool = make_pool(2)
    started, gate = fifos("started"), fifos("gate")
    holders = [pool.submit(tasks.gated, started.path, gate.path, i) for i in range(2)]
    started.take(2)
    marker = str(tmp_path / "crashed")
    crash = pool.submit(tasks.crash_first_time, marker, "survived")
    pool.resize(4)  # the crashing task starts on a new worker, which dies
    pool.resize(3)
    gate.post(2)
    assert crash.result(timeout=T) == "survived"
    assert [f.result(timeout=T) for f in holders] == [0, 1]
    assert wait_until(lambda: len(worker_pids(pool)) == 3, T)
    stats = pool.stats()
    assert stats.crashed == 1 and stats.respawns == 1 and stats.target_workers == 3


def test_resize_refuses_bad_sizes_and_keeps_serving(make_pool: PoolTracker) -> None:
    pool = make_pool(2)
    for bad in (0, -1, 2.5, "3", True):
        with pytest.raises(ValueError):
            pool.resize(bad)  # type: ignore[arg-type]
    assert pool.submit(tasks.square, 4).result(timeout=T) == 16
    assert pool.workers == 2
    pool.shutdown()
    with pytest.raises(mppool.PoolClosedError):
        pool.resize(3)


def test_a_map_plans_for_the_new_size(make_pool: PoolTracker) -> None:
    pool = make_pool(1)
    results = pool.imap_unordered(tasks.square, range(3000))
    first = next(results)
    pool.resize(3)
    rest = list(results)
    assert sorted([first, *rest]) == [i * i for i in range(3000)]
    planners = pool._core.catalog.planners.values()
    assert planners and all(planner.workers == 3 for planner in planners)


# --- autoscale on a real pool -------------------------------------------------------------------
def test_an_autoscaled_pool_grows_for_a_burst_and_shrinks_back_to_min(
    make_pool: PoolTracker, fifos: Any
) -> None:
    pool = make_pool(mppool.Autoscale(min=1, max=3, grow_after=0.0, idle_after=0.3))
    assert pool.workers == 1 and len(worker_pids(pool)) == 1
    started, gate = fifos("started"), fifos("gate")
    # Never measured: each queued task counts as a second of work, so the pool grows to 3.
    burst = [pool.submit(tasks.gated, started.path, gate.path, i) for i in range(6)]
    started.take(3)  # three run at once: the pool has grown
    make_pool.note(pool)
    assert pool.stats().target_workers == 3
    gate.post(6)
    assert [f.result(timeout=T) for f in burst] == list(range(6))
    assert wait_until(lambda: len(worker_pids(pool)) == 1, T)
    stats = pool.stats()
    assert stats.target_workers == 1 == pool.workers
    reasons = [(e.from_workers, e.to_workers, e.reason) for e in stats.scaling_events]
    grown = [new for old, new, why in reasons if why == "backlog" and new > old]
    assert grown and max(grown) == 3 and reasons[0][2] == "backlog"
    assert reasons[-1][1:] == (1, "idle")


def test_a_user_policy_decides_the_size(make_pool: PoolTracker) -> None:
    seen: list[int] = []
    grown = threading.Event()

    def policy(stats: mppool.PoolStats) -> int:
        seen.append(stats.target_workers)
        if stats.target_workers == 2:
            grown.set()  # a later call sees the size the first one asked for
        return 3  # clamped to max=2

    pool = make_pool(mppool.Autoscale(min=1, max=2, policy=policy, interval=0.01))
    assert grown.wait(T)
    assert pool.workers == 2
    assert wait_until(lambda: len(worker_pids(pool)) == 2, T)
    assert pool.stats().scaling_events[-1].reason == "policy"
    assert seen and seen[0] == 1
    with pytest.raises(ValueError, match="max=2"):
        pool.resize(5)


def test_autoscale_rejects_bad_knobs() -> None:
    for kw in (
        {"min": 0},
        {"min": 3, "max": 2},
        {"backlog": 0},
        {"idle_after": -1},
        {"grow_after": float("inf")},
        {"max_load": 0},
    ):
        with pytest.raises(ValueError):
            mppool.Autoscale(**kw)
    with pytest.raises(TypeError):
        mppool.Autoscale(policy=3)  # type: ignore[arg-type]
    assert mppool.Autoscale(min=2).max == max(2, os.cpu_count() or 1)


def test_a_task_that_hangs_on_a_leaving_worker_still_times_out(
    make_pool: PoolTracker, fifos: Any
) -> None:
    pool = make_pool(2)
    started, gate = fifos("started"), fifos("gate")
    hung = pool.options(timeout=1.0).submit(tasks.gated, started.path, gate.path, "never")
    held = pool.submit(tasks.gated, started.path, gate.path, "held")
    started.take(2)
    pool.resize(1)  # one of the two busy workers leaves after its task
    with pytest.raises(mppool.TaskTimeoutError):
        hung.result(timeout=T)
    gate.post(1)
    assert held.result(timeout=T) == "held"
    # The timed-out worker was killed; whether it was the leaving one or not, one is left.
    assert wait_until(lambda: len(worker_pids(pool)) == 1, T)
    assert pool.submit(tasks.square, 5).result(timeout=T) == 25
    assert pool.stats().live_workers == 1


def test_recycling_and_resizing_together_keep_the_size(make_pool: PoolTracker) -> None:
    pool = make_pool(2, max_tasks_per_child=5)
    first = [pool.submit(tasks.square, i) for i in range(40)]
    pool.resize(3)
    second = [pool.submit(tasks.square, i) for i in range(40)]
    pool.resize(1)
    third = [pool.submit(tasks.square, i) for i in range(40)]
    assert [f.result(timeout=T) for f in first + second + third] == [i * i for i in range(40)] * 3
    assert wait_until(lambda: len(worker_pids(pool)) == 1, T)
    stats = pool.stats()
    assert stats.crashed == stats.failed == 0 and stats.target_workers == 1


def test_priorities_hold_after_the_pool_grows(make_pool: PoolTracker, fifos: Any) -> None:
    pool = make_pool(1)
    started, gate = fifos("started"), fifos("gate")
    blocker = pool.submit(tasks.gated, started.path, gate.path, "blocker")
    started.take(1)
    order = [
        pool.options(priority=p).submit(tasks.started_at, p, i) for i, p in enumerate([0, 5, 1, 9])
    ]
    pool.resize(2)  # the new worker takes the most urgent task first
    gate.post(1)
    assert blocker.result(timeout=T) == "blocker"
    starts = sorted((f.result(timeout=T) for f in order), key=lambda s: s[1])
    assert starts[0][0][0] == 9


# --- what the review of the first version found ----------------------------------------------
def test_an_autoscaled_pool_grows_for_a_long_map(make_pool: PoolTracker) -> None:
    pool = make_pool(mppool.Autoscale(min=1, max=2, grow_after=0.0, idle_after=60))
    assert list(pool.map(tasks.spin, [0.005])) == [0.005]  # measured: 5 ms an item
    assert pool.stats().resizes == 0
    # 300 items of 5 ms: 1.5 s of work, far more than a map keeps in the queue at a time.
    results = list(pool.map(tasks.spin, [0.005] * 300, timeout=T))
    assert results == [0.005] * 300
    events = pool.stats().scaling_events
    assert [(e.from_workers, e.to_workers, e.reason) for e in events] == [(1, 2, "backlog")]


def test_an_autoscaled_pool_still_grows_after_shutdown_is_called(make_pool: PoolTracker) -> None:
    pool = make_pool(mppool.Autoscale(min=1, max=2, grow_after=0.0, idle_after=60))
    futures = [pool.submit(tasks.spin_pid, 0.01) for _ in range(150)]
    pool.shutdown(wait=False)  # as a with-block left at once: the work is still queued
    pids = {f.result(timeout=T) for f in futures}
    make_pool.pids.update(pids)
    assert len(pids) == 2  # the pool grew for its backlog while shutting down
    pool.shutdown(wait=True)
    assert pool.state == "closed"


def test_a_fork_that_fails_while_growing_leaves_the_pool_serving(
    make_pool: PoolTracker,
) -> None:
    pool = make_pool(2)
    dispatcher = psutil.Process(pool.dispatcher_pid)
    soft, hard = dispatcher.rlimit(psutil.RLIMIT_NOFILE)
    # No room for another worker's pipes in the dispatcher.
    dispatcher.rlimit(psutil.RLIMIT_NOFILE, (dispatcher.num_fds(), hard))
    try:
        with pytest.raises(mppool.MppoolError, match="could not start a worker"):
            pool.resize(4)
        assert pool.workers == 2 and pool.state == "running"
        assert pool.submit(tasks.square, 6).result(timeout=T) == 36
    finally:
        dispatcher.rlimit(psutil.RLIMIT_NOFILE, (soft, hard))
    pool.resize(4)  # with descriptors again, it grows
    assert len(worker_pids(pool)) == 4
    assert pool.submit(tasks.square, 7).result(timeout=T) == 49


def test_max_queue_follows_a_resize(make_pool: PoolTracker, fifos: Any) -> None:
    pool = make_pool(1, max_queue=1)
    started, gate = fifos("started"), fifos("gate")
    pool.resize(3)  # now 1 waiting + 3 running
    held = [pool.submit(tasks.gated, started.path, gate.path, i) for i in range(3)]
    started.take(3)  # all three run at once: the bound let them in
    extra = pool.submit(tasks.square, 2)
    with pytest.raises(mppool.QueueFullError):
        pool.try_submit(tasks.square, 3)
    gate.post(3)
    assert [f.result(timeout=T) for f in held] == [0, 1, 2]
    assert extra.result(timeout=T) == 4
    pool.resize(1)  # back to 1 waiting + 1 running
    blocker = pool.submit(tasks.gated, started.path, gate.path, "b")
    started.take(1)
    queued = pool.submit(tasks.square, 5)
    with pytest.raises(mppool.QueueFullError):
        pool.try_submit(tasks.square, 3)
    gate.post(1)
    assert blocker.result(timeout=T) == "b" and queued.result(timeout=T) == 25


def test_pinned_workers_added_by_a_resize_take_free_cores(make_pool: PoolTracker) -> None:
    cores = os.sched_getaffinity(0)
    pool = make_pool(1, cpu_affinity=True)  # one core per worker, round robin
    pool.resize(len(cores))
    pinned = sorted(tuple(psutil.Process(pid).cpu_affinity()) for pid in worker_pids(pool))
    assert pinned == [(core,) for core in sorted(cores)]


def test_a_policy_that_fails_is_logged_and_the_pool_keeps_its_size(
    make_pool: PoolTracker, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []
    third = threading.Event()

    def policy(stats: mppool.PoolStats) -> int:
        calls.append(stats.target_workers)
        if len(calls) == 3:
            third.set()
        raise RuntimeError("policy bug")

    pool = make_pool(mppool.Autoscale(min=1, max=2, policy=policy, interval=0.01))
    assert third.wait(T)  # it is called again after it raised
    assert pool.workers == 1
    assert pool.submit(tasks.square, 3).result(timeout=T) == 9
    pool.shutdown(wait=True)
    left = [t for t in threading.enumerate() if t.name == "mppool-autoscale"]
    assert not left  # stopped and joined by shutdown(wait=True)
    assert any("policy bug" in r.getMessage() or r.exc_info for r in caplog.records)


# --- what the second review found ---------------------------------------------------------------
def test_work_held_back_by_maps_grows_the_pool_but_never_keeps_it_large() -> None:
    a = Autoscaler(knobs(grow_after=0.0, idle_after=10.0))
    grown = a.decide(0.0, 1, 0.0, (), None, held_back=5.0)
    assert grown is not None and grown.target == 8  # ceil(5.0 / 0.5), capped at max
    a.decide(1.0, 8, 0.0, (6, 7), None, held_back=5.0)  # two idle despite the held work
    shrunk = a.decide(11.0, 8, 0.0, (6, 7), None, held_back=5.0)
    assert shrunk is not None and set(shrunk.retire) == {6, 7}  # held work does not block it


def test_a_grown_worker_that_fails_to_start_leaves_the_pool_serving(
    make_pool: PoolTracker, tmp_path: Any
) -> None:
    marker = str(tmp_path / "no-more")
    pool = make_pool(1, initializer=tasks.raise_if_marked, initargs=(marker,))
    open(marker, "w").close()
    pool.resize(2)  # the fork succeeds; the initializer then raises
    assert wait_until(lambda: len(worker_pids(pool)) == 1, T)
    assert pool.submit(tasks.square, 8).result(timeout=T) == 64
    stats = pool.stats()
    assert pool.state == "running" and stats.target_workers == 1 == pool.workers
    assert stats.scaling_events[-1].reason == "start failed"


def test_a_grown_worker_past_init_timeout_is_given_up(
    make_pool: PoolTracker, tmp_path: Any, fifos: Any
) -> None:
    marker, gate = str(tmp_path / "slow"), fifos("gate")
    pool = make_pool(
        1, initializer=tasks.wait_if_marked, initargs=(marker, gate.path), init_timeout=0.5
    )
    open(marker, "w").close()
    pool.resize(2)  # the new worker never finishes its initializer
    assert pool.submit(tasks.square, 9).result(timeout=T) == 81
    assert wait_until(lambda: len(worker_pids(pool)) == 1, T)
    assert pool.state == "running"
    assert pool.stats().target_workers == 1


def test_a_leaving_worker_that_crashes_is_logged_as_a_crash(
    make_pool: PoolTracker, fifos: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="mppool")
    pool = make_pool(2)
    started, gate = fifos("started"), fifos("gate")
    crashing = pool.options(crash_retries=0)
    doomed = [crashing.submit(tasks.gated_exit, started.path, gate.path) for _ in range(2)]
    started.take(2)
    pool.resize(1)  # one of the two busy workers is leaving
    gate.post(2)
    for f in doomed:
        with pytest.raises(mppool.WorkerCrashedError):
            f.result(timeout=T)
    # Each death is logged before the outcome of its task is delivered (one message stream).
    deaths = [r for r in caplog.records if r.__dict__.get("exitcode") == 9]
    assert [(r.levelno, r.__dict__["reason"]) for r in deaths] == [(logging.WARNING, "crashed")] * 2
