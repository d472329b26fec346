"""Flow control and scheduling features: bounded queue, rate limits, dedup, delays,
recurring and cron tasks, cancellation, and the task listing."""

from __future__ import annotations

import concurrent.futures
import itertools
import queue
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import mppool
from mppool._dispatcher import _tasklist

from . import tasks
from .conftest import PoolTracker, wait_until, worker_pids

T = 60  # generous bound for every blocking wait


def hold_workers(pool: mppool.Pool, fifos: Any, n: int) -> tuple[Any, list[Any]]:
    started, gate = fifos("started"), fifos("gate")
    blockers = [pool.submit(tasks.gated, started.path, gate.path) for _ in range(n)]
    started.take(n)
    return gate, blockers


# --- bounded queue -----------------------------------------------------------------------------
def test_bounded_queue_blocks_and_try_submit_raises(make_pool: PoolTracker, fifos: Any) -> None:
    # max_queue counts the tasks waiting besides the running ones: with both workers busy,
    # exactly three more are accepted.
    pool = make_pool(2, max_queue=3)
    gate, blockers = hold_workers(pool, fifos, 2)
    waiting = [pool.submit(tasks.square, x) for x in (2, 3, 4)]
    with pytest.raises(mppool.QueueFullError):
        pool.try_submit(tasks.square, 4)
    with pytest.raises(mppool.QueueFullError):
        pool.try_submit(tasks.square, 4, timeout=0.05)
    got: queue.Queue[Any] = queue.Queue()
    submitter = threading.Thread(target=lambda: got.put(pool.submit(tasks.square, 5)))
    submitter.start()
    with pytest.raises(queue.Empty):
        got.get(timeout=0.3)  # still waiting for room
    gate.post(1)
    late = got.get(timeout=T)
    submitter.join(T)
    assert [f.result(timeout=T) for f in (*waiting, late)] == [4, 9, 16, 25]
    gate.post(1)
    assert all(b.result(timeout=T) > 0 for b in blockers)


def test_map_stays_within_its_window_whatever_max_queue(make_pool: PoolTracker) -> None:
    pool = make_pool(2, max_queue=1)
    assert list(pool.map(tasks.square, range(2000), timeout=T)) == [x * x for x in range(2000)]


# --- rate limits -------------------------------------------------------------------------------
def test_rate_limit_spreads_a_kind_and_does_not_block_others(make_pool: PoolTracker) -> None:
    pool = make_pool(2, rate_limits={"slow": "50/s"})
    list(pool.map(tasks.square, range(10), timeout=T))  # warm up
    done_at: dict[str, list[float]] = {"slow": [], "free": []}
    lock = threading.Lock()

    def stamp(kind: str) -> Any:
        def cb(_: Any) -> None:
            with lock:
                done_at[kind].append(time.monotonic())

        return cb

    t0 = time.monotonic()
    slow = [pool.options(kind="slow").submit(tasks.square, i) for i in range(100)]
    free = [pool.submit(tasks.square, i) for i in range(100)]
    for f in slow:
        f.add_done_callback(stamp("slow"))
    for f in free:
        f.add_done_callback(stamp("free"))
    concurrent.futures.wait(slow + free, timeout=T)
    assert all(f.result(timeout=T) == i * i for i, f in enumerate(slow))
    span = max(done_at["slow"]) - t0
    assert 1.5 <= span <= 8.0, span  # 100 starts at 50/s with burst 1: about 2 s
    assert max(done_at["free"]) < max(done_at["slow"])  # unlimited work was not held back
    assert pool.stats().queued == 0


def test_rate_limit_parsing() -> None:
    assert mppool.RateLimit.parse("10/m").per_second == pytest.approx(10 / 60)
    assert mppool.RateLimit.parse("5/10s").per_second == pytest.approx(0.5)
    assert mppool.RateLimit.parse(" 3 / h ").per == 3600
    for bad in ("fast", "10/x", "-1/s", "0/s"):
        with pytest.raises(ValueError):
            mppool.RateLimit.parse(bad)
    with pytest.raises(ValueError):
        mppool.Pool(1, rate_limits={"x": "lots"})


# --- dedup -------------------------------------------------------------------------------------
def test_thousand_submits_with_ten_keys_run_ten_times(
    make_pool: PoolTracker, fifos: Any, tmp_path: Path
) -> None:
    pool = make_pool(2)
    gate, blockers = hold_workers(pool, fifos, 2)
    log = str(tmp_path / "runs.log")
    futs = [
        pool.options(key=f"k{i % 10}").submit(tasks.append_line, log, f"k{i % 10}")
        for i in range(1000)
    ]
    assert len({id(f) for f in futs}) == 10
    gate.post(2)
    for f in futs + blockers:
        f.result(timeout=T)
    assert sorted(Path(log).read_text().split()) == sorted(f"k{i}" for i in range(10))
    assert pool.stats().deduplicated == 990
    # Once finished, a key is free again: the same key runs anew.
    again = pool.options(key="k0").submit(tasks.append_line, log, "k0")
    assert again.result(timeout=T) == "k0" and again not in futs
    assert Path(log).read_text().split().count("k0") == 2


def test_map_with_a_key_function_shares_in_flight_results(
    make_pool: PoolTracker, fifos: Any, tmp_path: Path
) -> None:
    pool = make_pool(1)
    gate, blockers = hold_workers(pool, fifos, 1)
    log = str(tmp_path / "runs.log")
    pre = pool.options(key="x").submit(tasks.append_line, log, "x")
    items = ["x", "y", "x", "z", "y"]
    results = pool.options(key=lambda path, text: text).map(
        tasks.append_line, [log] * 5, items, timeout=T
    )
    gate.post(1)
    assert list(results) == items
    assert pre.result(timeout=T) == "x" and blockers[0].result(timeout=T) > 0
    assert sorted(Path(log).read_text().split()) == ["x", "y", "z"]
    with pytest.raises(TypeError):
        pool.options(key=lambda: "k").submit(tasks.square, 1)


# --- delays ------------------------------------------------------------------------------------
def test_delay_and_absolute_time(pool: mppool.Pool) -> None:
    pool.submit(tasks.square, 1).result(timeout=T)
    t0 = time.time()
    delayed = pool.options(delay=0.3).submit(tasks.now)
    at = pool.options(at=t0 + 0.4).submit(tasks.now)
    quick = pool.submit(tasks.now)
    assert quick.result(timeout=T) < t0 + 0.3
    assert delayed.result(timeout=T) >= t0 + 0.3
    assert at.result(timeout=T) >= t0 + 0.4
    with pytest.raises(ValueError):
        pool.options(delay=-1)


# --- recurring and cron ------------------------------------------------------------------------
def test_schedule_every_fires_and_stops_when_cancelled(pool: mppool.Pool) -> None:
    handle = pool.schedule_every(0.1, tasks.now)
    assert isinstance(handle, mppool.Schedule)
    assert handle.wait_for_runs(5, timeout=T)
    stamps = handle.results()
    assert len(stamps) >= 5 and stamps == sorted(stamps)
    assert all(0.05 < b - a < 1.0 for a, b in itertools.pairwise(stamps))
    assert handle.next_run is not None and handle.next_run > time.time() - 1
    assert handle.cancel() and not handle.cancel()
    settled = handle.runs
    assert not handle.wait_for_runs(settled + 3, timeout=0.5)  # no more firings
    assert handle.runs <= settled + 1  # at most one firing was already on its way
    assert handle.next_run is None


def test_schedule_keeps_errors_and_never_overlaps(pool: mppool.Pool) -> None:
    failing = pool.schedule_every(0.05, tasks.raise_value_error, "scheduled boom")
    assert failing.wait_for_runs(2, timeout=T)
    failing.cancel()
    assert all(isinstance(e, ValueError) for e in failing.errors())
    slow = pool.schedule_every(0.02, tasks.spin, 0.15)
    assert slow.wait_for_runs(2, timeout=T)
    slow.cancel()
    assert slow.skipped >= 1  # firings during a run are skipped, not queued up


def test_schedule_cron_with_seconds_field(pool: mppool.Pool) -> None:
    handle = pool.schedule_cron("* * * * * */1", tasks.now)  # croniter's sixth field: seconds
    assert handle.wait_for_runs(2, timeout=T)
    handle.cancel()
    a, b = handle.results()[:2]
    assert 0.5 < b - a < 2.5
    with pytest.raises(ValueError):
        pool.schedule_cron("every tuesday", tasks.now)
    with pytest.raises(ValueError):
        pool.schedule_every(0, tasks.now)


# --- cancellation ------------------------------------------------------------------------------
def test_cancel_delayed_and_backing_off_tasks(pool: mppool.Pool) -> None:
    delayed = pool.options(delay=30).submit(tasks.square, 2)
    assert delayed.cancel()
    retrying = pool.options(
        retries=mppool.RetryPolicy(max_attempts=3, initial_delay=30, retry_on=(ConnectionError,))
    ).submit(tasks.fail_times, 5, "never")
    assert wait_until(lambda: pool.task(retrying.task_id).state == "retrying")
    assert retrying.cancel()
    assert wait_until(lambda: pool.stats().cancelled == 2)
    assert pool.stats().queued == 0
    assert pool.task(retrying.task_id).state == "cancelled"
    assert pool.submit(tasks.square, 3).result(timeout=T) == 9


def test_cancel_running_task_with_kill(make_pool: PoolTracker) -> None:
    pool = make_pool(2)
    fut = pool.submit(tasks.spin, 60.0)
    assert wait_until(lambda: pool.task(fut.task_id).state == "running")
    pid = pool.task(fut.task_id).pid
    assert pool.cancel(fut, kill=True)
    assert fut.cancelled()
    assert wait_until(lambda: pid not in worker_pids(pool) and len(worker_pids(pool)) == 2)
    assert pool.submit(tasks.square, 5).result(timeout=T) == 25
    finished = pool.submit(tasks.square, 1)
    assert finished.result(timeout=T) == 1
    assert not pool.cancel(finished)  # already finished: nothing to cancel


# --- listing -----------------------------------------------------------------------------------
def test_task_listing_and_lookup(pool: mppool.Pool, fifos: Any) -> None:
    gate, blockers = hold_workers(pool, fifos, 2)
    queued = pool.options(priority=3, kind="k", key="kk").submit(tasks.square, 7)
    delayed = pool.options(delay=30).submit(tasks.square, 1)
    rows = {t.id: t for t in pool.tasks()}
    assert all(isinstance(t, mppool.TaskInfo) for t in rows.values())
    assert {rows[b.task_id].state for b in blockers} == {"running"}
    assert rows[queued.task_id].state == "queued"
    assert (rows[queued.task_id].kind, rows[queued.task_id].key) == ("k", "kk")
    assert rows[queued.task_id].priority == 3
    assert rows[delayed.task_id].state == "delayed"
    gate.post(2)
    assert queued.result(timeout=T) == 49
    info = pool.task(queued.task_id)
    assert info.state == "done" and info.duration is not None and info.pid
    assert info.submitted_at <= info.started_at <= info.finished_at  # type: ignore[operator]
    failed = pool.submit(tasks.raise_value_error, "x")
    with pytest.raises(ValueError):
        failed.result(timeout=T)
    assert pool.task(failed.task_id).state == "failed"
    with pytest.raises(KeyError):
        pool.task(10**9)
    delayed.cancel()


def test_history_is_bounded(pool: mppool.Pool) -> None:
    futs = [pool.submit(tasks.square, i) for i in range(_tasklist.HISTORY_SIZE + 200)]
    for f in futs:
        f.result(timeout=T)
    finished = [t for t in pool.tasks() if t.state == "done"]
    assert len(finished) == _tasklist.HISTORY_SIZE
    ends = [t.finished_at for t in finished]
    assert ends == sorted(ends, reverse=True)  # newest first
    assert {t.id for t in finished} <= {f.task_id for f in futs}


def test_listing_counts_attempts(pool: mppool.Pool) -> None:
    once = pool.submit(tasks.raise_value_error, "no retry")
    thrice = pool.options(
        retries=mppool.RetryPolicy(max_attempts=3, initial_delay=0.01, retry_on=(ValueError,))
    ).submit(tasks.raise_value_error, "retried")
    ok = pool.submit(tasks.square, 2)
    for fut in (once, thrice):
        with pytest.raises(ValueError):
            fut.result(timeout=T)
    assert ok.result(timeout=T) == 4
    assert pool.task(once.task_id).attempts == 1
    assert pool.task(thrice.task_id).attempts == 3
    assert pool.task(ok.task_id).attempts == 1
