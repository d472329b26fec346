"""Observability in the core: stats snapshots, latency percentiles, progress reporting."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import pytest

import mppool
from mppool._dispatcher._latency import LatencyWindow, percentiles

from . import tasks
from .conftest import PoolTracker

T = 60


def test_percentiles_of_known_durations() -> None:
    assert percentiles(deque(float(i) for i in range(100, 0, -1))) == (100, 50.0, 95.0, 99.0)
    assert percentiles(deque([0.5])) == (1, 0.5, 0.5, 0.5)
    assert percentiles(deque()) == (0, None, None, None)


def test_latency_window_keeps_only_recent_tasks() -> None:
    window = LatencyWindow(size=10)
    for i in range(100):
        window.add(float(i), 1.0, float(i) + 1.0)
    snap = window.snapshot()
    count, p50, _, _ = snap["queue_wait"]
    assert (count, p50) == (10, 94.0)  # of 90..99
    assert snap["run_time"][3] == 1.0


def test_stats_fields_after_work(make_pool: PoolTracker) -> None:
    pool = make_pool(2)
    futs = [pool.submit(tasks.spin, 0.02) for _ in range(20)]
    for f in futs:
        f.result(timeout=T)
    s = pool.stats()
    assert s.submitted == 20 and s.completed == 20 and s.succeeded == 20
    assert s.started >= 20
    assert s.uptime > 0
    lat = s.latency
    assert isinstance(lat, mppool.LatencyStats) and isinstance(lat.run_time, mppool.Percentiles)
    assert lat.run_time.count == 20
    assert 0.015 < lat.run_time.p50 < 0.5  # type: ignore[operator]
    assert lat.end_to_end.p50 >= lat.run_time.p50  # type: ignore[operator]
    # 20 tasks of 20 ms on 2 workers, submitted at once: the last ones waited for at least
    # eight others on their worker, and every task's end-to-end time covers its run.
    assert lat.queue_wait.count == 20
    assert lat.queue_wait.p99 >= 8 * 0.015  # type: ignore[operator]
    assert lat.end_to_end.p99 >= lat.queue_wait.p99 + 0.015  # type: ignore[operator]
    for w in s.workers:
        assert w.rss_bytes and w.rss_bytes > 1_000_000
        assert w.cpu_percent is not None and w.cpu_percent >= 0
        assert 0 <= w.busy_fraction <= 1
        assert w.current_task is None and w.state == "idle"
    assert sum(w.busy_seconds for w in s.workers) >= 20 * 0.015


def test_queue_depth_by_priority_and_kind_and_current_task(
    make_pool: PoolTracker, fifos: Any
) -> None:
    pool = make_pool(1)
    started, gate = fifos("started"), fifos("gate")
    blocker = pool.submit(tasks.gated, started.path, gate.path)
    started.take(1)
    for _ in range(3):
        pool.options(priority=5, kind="hash").submit(tasks.square, 1)
    for _ in range(2):
        pool.submit(tasks.square, 1)
    s = pool.stats()
    assert s.queue_by_priority == {5.0: 3, 0.0: 2}
    assert s.queue_by_kind == {"hash": 3, "": 2}
    (worker,) = s.workers
    assert worker.state == "busy" and worker.current_task == blocker.task_id  # type: ignore[attr-defined]
    gate.post(1)
    blocker.result(timeout=T)


def test_counters_are_consistent_in_every_snapshot_under_load(make_pool: PoolTracker) -> None:
    pool = make_pool(2)
    stop = threading.Event()
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            while not stop.is_set():
                batch = [pool.submit(tasks.square, i) for i in range(200)]
                if batch[-1].result(timeout=T) != 199 * 199:
                    raise AssertionError("wrong result")
                batch[0].cancel()  # already done or cancelled: either way counted once
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        for _ in range(30):
            s = pool.stats()
            settled = s.queued + s.running + s.completed + s.failed + s.cancelled
            assert s.submitted == settled, s
            assert sum(w.tasks_done for w in s.workers) == s.completed + s.failed
    finally:
        stop.set()
        producer.join(T)
    assert not errors


def test_map_progress_bar_on_stderr(pool: mppool.Pool, capsys: pytest.CaptureFixture[str]) -> None:
    assert list(pool.map(tasks.square, range(500), progress=True, timeout=T)) == [
        x * x for x in range(500)
    ]
    err = capsys.readouterr().err
    assert "500/500" in err and "100%" in err


def test_progress_hook_sees_every_item(pool: mppool.Pool) -> None:
    seen: list[tuple[int, int | None]] = []
    out = sorted(
        pool.imap_unordered(
            tasks.square, range(300), progress=lambda d, t: seen.append((d, t)), timeout=T
        )
    )
    assert out == sorted(x * x for x in range(300))
    assert seen[-1] == (300, 300)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    unknown: list[tuple[int, int | None]] = []
    list(
        pool.map(
            tasks.square,
            (x for x in range(50)),
            progress=lambda d, t: unknown.append((d, t)),
            timeout=T,
        )
    )
    assert unknown[-1] == (50, None)
    with pytest.raises(TypeError):
        pool.map(tasks.square, [1], progress="yes", timeout=T)  # type: ignore[arg-type]
