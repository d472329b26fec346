"""asyncio: await a task, iterate a map, cancel from the event loop."""

from __future__ import annotations

import asyncio
from typing import Any

import psutil
import pytest

import mppool

from . import tasks
from .conftest import PoolTracker, wait_until

T = 60


def test_asubmit_and_amap(pool: mppool.Pool) -> None:
    async def main() -> tuple[Any, ...]:
        one = await pool.asubmit(tasks.square, 7)
        many = await asyncio.gather(
            *(pool.options(priority=1).asubmit(tasks.add, i, 1) for i in range(20))
        )
        ordered = [r async for r in pool.amap(tasks.square, range(500), timeout=T)]
        unordered = [r async for r in pool.aimap_unordered(tasks.square, range(500), timeout=T)]
        with pytest.raises(ValueError, match="bad item 3"):
            await pool.asubmit(tasks.fail_on, 3, 3)
        return one, many, ordered, sorted(unordered)

    one, many, ordered, unordered = asyncio.run(asyncio.wait_for(main(), T))
    assert one == 49
    assert many == list(range(1, 21))
    assert ordered == unordered == [x * x for x in range(500)]


def test_the_loop_keeps_running_while_tasks_run(pool: mppool.Pool, fifos: Any) -> None:
    started, gate = fifos("started"), fifos("gate")

    async def main() -> list[str]:
        seen: list[str] = []
        held = asyncio.ensure_future(pool.asubmit(tasks.gated, started.path, gate.path, "held"))
        await asyncio.get_running_loop().run_in_executor(None, started.take)
        seen.append("loop ran while the task was held")  # the loop was not blocked
        gate.post()
        seen.append(await held)
        return seen

    assert asyncio.run(asyncio.wait_for(main(), T)) == ["loop ran while the task was held", "held"]


def test_cancelling_the_awaiting_coroutine_kills_the_running_task(
    make_pool: PoolTracker, fifos: Any
) -> None:
    pool = make_pool(1)
    started, gate = fifos("started"), fifos("gate")
    (worker,) = pool.stats().workers

    async def main() -> None:
        waiter = asyncio.ensure_future(pool.asubmit(tasks.gated, started.path, gate.path))
        await asyncio.get_running_loop().run_in_executor(None, started.take)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(asyncio.wait_for(main(), T))

    def gone() -> bool:
        try:
            return psutil.Process(worker.pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    assert wait_until(gone, T)  # the running task's worker was killed
    assert pool.submit(tasks.square, 3).result(timeout=T) == 9  # a new worker took its place
    assert pool.stats().cancelled == 1


def test_cancelling_a_queued_task_means_it_never_runs(make_pool: PoolTracker, fifos: Any) -> None:
    pool = make_pool(1)
    started, gate = fifos("started"), fifos("gate")
    blocker = pool.submit(tasks.gated, started.path, gate.path)
    started.take()

    async def main() -> None:
        queued = asyncio.ensure_future(pool.asubmit(tasks.gated, started.path, gate.path))
        await asyncio.sleep(0)  # let it submit
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued

    asyncio.run(asyncio.wait_for(main(), T))
    assert pool.stats().cancelled == 1  # the cancel went out before this request
    gate.post()
    assert blocker.result(timeout=T) > 0
    assert pool.submit(tasks.square, 2).result(timeout=T) == 4  # FIFO: after the cancelled one
    with pytest.raises(TimeoutError):
        started.take(timeout=0)  # so the cancelled one would have started by now: it never did


def test_leaving_an_async_map_early_cancels_the_rest(pool: mppool.Pool) -> None:
    async def main() -> list[int]:
        got = []
        async for r in pool.amap(tasks.spin, [0.001] * 10_000, chunksize=1, timeout=T):
            got.append(r)
            if len(got) == 5:
                break
        return got

    got = asyncio.run(asyncio.wait_for(main(), T))
    assert len(got) == 5
    assert pool.submit(tasks.square, 4).result(timeout=T) == 16
    stats = pool.stats()
    assert stats.completed < 1000  # the rest did not run
