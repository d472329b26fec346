"""The Prometheus collector: metric names, types and values for a pool with known activity."""

from __future__ import annotations

import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

import mppool
from mppool._web._prometheus import metrics_registry, metrics_text, serve_metrics

from . import tasks
from .conftest import PoolTracker

TIMEOUT = 10.0


def scrape(pool: mppool.Pool) -> dict[str, Any]:
    """Metric families by name, parsed back from the text exposition format."""
    text = metrics_text(metrics_registry(pool)).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: dict[str, Any], name: str, **labels: str) -> float:
    """The value of the one sample of family ``name`` with exactly ``labels``."""
    family = families[name]
    found = [s.value for s in family.samples if s.labels == labels]
    assert len(found) == 1, (name, labels, family.samples)
    return float(found[0])


def test_counters_after_known_activity(pool: mppool.Pool) -> None:
    for x in range(3):
        assert pool.submit(tasks.square, x).result(TIMEOUT) == x * x
    failing = pool.submit(tasks.raise_value_error, "boom")
    assert isinstance(failing.exception(TIMEOUT), ValueError)

    families = scrape(pool)
    assert value(families, "mppool_up") == 1
    # The parser strips "_total" from counter family names; the samples keep it.
    assert families["mppool_tasks_submitted"].type == "counter"
    assert families["mppool_tasks_submitted"].samples[0].name == "mppool_tasks_submitted_total"
    assert value(families, "mppool_tasks_submitted") == 4
    assert value(families, "mppool_tasks_completed") == 3
    assert value(families, "mppool_tasks_failed") == 1
    assert value(families, "mppool_tasks_crashed") == 0
    assert value(families, "mppool_tasks_queued") == 0
    assert value(families, "mppool_tasks_running") == 0
    assert value(families, "mppool_workers") == 2
    assert value(families, "mppool_uptime_seconds") > 0

    done = [value(families, "mppool_worker_tasks_done", worker=str(i)) for i in range(2)]
    assert sum(done) == 4
    for i in range(2):
        assert value(families, "mppool_worker_state", worker=str(i), state="idle") == 1
        assert value(families, "mppool_worker_state", worker=str(i), state="busy") == 0
        assert value(families, "mppool_worker_pid", worker=str(i)) > 0
        assert value(families, "mppool_worker_resident_memory_bytes", worker=str(i)) > 0
        assert 0 <= value(families, "mppool_worker_busy_ratio", worker=str(i)) <= 1

    latency = families["mppool_task_latency_seconds"]
    assert latency.type == "gauge"
    for stage in ("queue_wait", "run_time", "end_to_end"):
        assert value(families, "mppool_task_latency_window_tasks", stage=stage) >= 3
        quantiles = [
            value(families, latency.name, stage=stage, quantile=q) for q in ("0.5", "0.95", "0.99")
        ]
        assert 0 <= quantiles[0] <= quantiles[1] <= quantiles[2]


def test_queue_depth_by_priority_and_kind(pool: mppool.Pool, fifos: Any) -> None:
    started, gate = fifos("started"), fifos("gate")
    blockers = [pool.submit(tasks.gated, started.path, gate.path) for _ in range(2)]
    started.take(2)  # both workers busy: everything below stays queued
    hashing = pool.options(priority=5, kind="hash")
    queued = [hashing.submit(tasks.square, 1), hashing.submit(tasks.square, 2)]
    queued.append(pool.submit(tasks.square, 3))

    families = scrape(pool)
    assert value(families, "mppool_tasks_queued") == 3
    assert value(families, "mppool_tasks_running") == 2
    assert value(families, "mppool_queue_depth_by_priority", priority="5") == 2
    assert value(families, "mppool_queue_depth_by_priority", priority="0") == 1
    assert value(families, "mppool_queue_depth_by_kind", kind="hash") == 2
    for i in range(2):
        assert value(families, "mppool_worker_state", worker=str(i), state="busy") == 1

    gate.post(2)
    for fut in blockers + queued:
        fut.result(TIMEOUT)


def test_closed_pool_reports_down(make_pool: PoolTracker) -> None:
    pool = make_pool(1)
    registry = metrics_registry(pool)
    pool.shutdown(wait=True)
    families = {f.name: f for f in text_string_to_metric_families(metrics_text(registry).decode())}
    assert value(families, "mppool_up") == 0
    assert "mppool_tasks_submitted" not in families


def test_serve_metrics_on_its_own_port(pool: mppool.Pool) -> None:
    pool.submit(tasks.square, 5).result(TIMEOUT)
    with serve_metrics(pool, port=0) as server:
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(server.url, timeout=TIMEOUT) as response:
            text = response.read().decode()
    assert "mppool_tasks_completed_total 1.0" in text


def test_registries_are_per_pool(make_pool: PoolTracker) -> None:
    first, second = make_pool(1), make_pool(1)
    first.submit(tasks.square, 1).result(TIMEOUT)
    assert value(scrape(first), "mppool_tasks_submitted") == 1
    assert value(scrape(second), "mppool_tasks_submitted") == 0


def test_size_metrics_follow_a_resize(make_pool: PoolTracker) -> None:
    pool = make_pool(2)
    before = scrape(pool)
    assert value(before, "mppool_resizes") == 0
    pool.resize(3)
    families = scrape(pool)
    assert value(families, "mppool_workers") == 3
    assert value(families, "mppool_workers_live") == 3
    assert value(families, "mppool_resizes") == 1
    assert families["mppool_worker_process_seconds"].type == "counter"
    assert value(families, "mppool_worker_process_seconds") > value(
        before, "mppool_worker_process_seconds"
    )


def test_policy_metrics_circuits_and_shares(make_pool: PoolTracker) -> None:
    breaker = mppool.CircuitBreaker(failures=1, within=30, reset_after=300)
    pool = make_pool(2, shares={"etl": 3, "adhoc": 1}, circuit_breakers={"io": breaker})
    try:
        pool.options(kind="io").submit(tasks.raise_value_error, "down").result(TIMEOUT)
    except ValueError:
        pass
    refused = pool.options(kind="io").submit(tasks.square, 2)
    assert isinstance(refused.exception(TIMEOUT), mppool.CircuitOpenError)
    for kind in ("etl", "adhoc"):
        assert pool.options(kind=kind).submit(tasks.spin, 0.01).result(TIMEOUT) >= 0.0
    families = scrape(pool)
    assert value(families, "mppool_circuit_state", kind="io", state="open") == 1.0
    assert value(families, "mppool_circuit_state", kind="io", state="closed") == 0.0
    assert value(families, "mppool_circuit_opened", kind="io") == 1.0
    assert value(families, "mppool_tasks_refused") == 1.0
    assert value(families, "mppool_share_weight", kind="etl") == 3.0
    assert value(families, "mppool_share_busy_seconds", kind="adhoc") > 0.0
    with pool.batch("nightly") as b:
        b.submit(tasks.square, 2)
        b.submit(tasks.raise_value_error, "bad")
    families = scrape(pool)
    assert value(families, "mppool_batch_tasks", batch="nightly", outcome="submitted") == 2.0
    assert value(families, "mppool_batch_tasks", batch="nightly", outcome="failed") == 1.0
