"""Round-trip latency of one no-op task on an idle pool (submit, then wait for the result)."""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench import workloads as wl
from bench.adapters import PoolAdapter
from bench.benchutil import round_times

ROUNDS = 500


@pytest.mark.benchmark(group="round-trip-latency")
def test_round_trip_latency(benchmark: BenchmarkFixture, pool: PoolAdapter) -> None:
    """One submit -> result per round; extra_info holds p50/p99 in microseconds."""

    def once() -> object:
        return pool.result(pool.submit(wl.noop, 7), 10)

    assert benchmark.pedantic(once, rounds=ROUNDS, iterations=1, warmup_rounds=50) == 7
    times = round_times(benchmark)
    if times:
        benchmark.extra_info["p50_us"] = round(wl.percentile(times, 50) * 1e6, 1)
        benchmark.extra_info["p99_us"] = round(wl.percentile(times, 99) * 1e6, 1)
