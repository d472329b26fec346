"""Time from SIGKILL of an mppool worker until its replacement is ready (target <= 50 ms)."""

from __future__ import annotations

from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench import respawn
from bench import workloads as wl

ROUNDS = 10


@pytest.mark.benchmark(group="respawn")
def test_respawn_after_sigkill(benchmark: BenchmarkFixture, mppool_pool: Any) -> None:
    """Each round kills one worker (alternating slots) and polls ``stats()`` until it is replaced.

    Before each round (untimed), all workers must be ready and the previous replacement must
    have run a task, so every round starts from a healthy pool.
    """
    samples: list[dict[str, Any]] = []

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        if samples:
            respawn.confirm_runs_tasks(mppool_pool, samples[-1]["new_pid"])
        respawn.wait_all_ready(mppool_pool)
        return (mppool_pool,), {"slot": len(samples)}

    def kill(pool: Any, slot: int) -> None:
        samples.append(respawn.kill_and_wait_ready(pool, slot=slot))

    benchmark.pedantic(kill, setup=setup, rounds=ROUNDS, iterations=1)
    respawn.confirm_runs_tasks(mppool_pool, samples[-1]["new_pid"])
    ready_ms = [s["ready_ms"] for s in samples]
    benchmark.extra_info["ready_p50_ms"] = round(wl.percentile(ready_ms, 50), 2)
    benchmark.extra_info["ready_max_ms"] = round(max(ready_ms), 2)
    benchmark.extra_info["state_reported"] = all(s["state_reported"] for s in samples)
