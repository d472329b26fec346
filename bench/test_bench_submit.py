"""Per-task submit throughput of no-op tasks: mppool ``submit`` vs ``Pool.apply_async``."""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench import workloads as wl
from bench.adapters import PoolAdapter
from bench.benchutil import median_seconds

TASKS = 5_000


@pytest.mark.benchmark(group="submit-throughput")
def test_submit_noop_throughput(benchmark: BenchmarkFixture, pool: PoolAdapter) -> None:
    """Submit TASKS no-op tasks one by one, then wait for every result."""

    def run() -> list[object]:
        handles = [pool.submit(wl.noop, i) for i in range(TASKS)]
        return [pool.result(h, 60) for h in handles]

    results = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    assert results == list(range(TASKS))
    benchmark.extra_info["tasks"] = TASKS
    median = median_seconds(benchmark)
    if median:
        benchmark.extra_info["tasks_per_s"] = round(TASKS / median)
