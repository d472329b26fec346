"""``map`` of many tiny items with default settings: mppool vs ``multiprocessing.Pool.map``."""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench import workloads as wl
from bench.adapters import PoolAdapter
from bench.benchutil import median_seconds

ITEMS = 200_000


@pytest.mark.benchmark(group="map-tiny-items")
def test_map_square_default_chunking(benchmark: BenchmarkFixture, pool: PoolAdapter) -> None:
    """``map(square, range(ITEMS))`` with each library's default chunking."""
    items = list(range(ITEMS))
    results = benchmark.pedantic(
        pool.map, args=(wl.square, items), rounds=5, iterations=1, warmup_rounds=1
    )
    assert len(results) == ITEMS and results[-1] == (ITEMS - 1) ** 2
    benchmark.extra_info["items"] = ITEMS
    median = median_seconds(benchmark)
    if median:
        benchmark.extra_info["items_per_s"] = round(ITEMS / median)
