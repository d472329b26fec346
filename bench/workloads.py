"""Workload functions and duration generators shared by every benchmark in this folder.

Every function here is defined at module level so that all pools, including those that use the
standard pickler, can send it by reference (``bench.workloads.spin``) instead of by value.

CPU work is simulated with :func:`spin`, a busy loop of pure-Python arithmetic sized by an
iterations-per-second constant calibrated once per process. It deliberately does *not* spin on the
wall clock (``while perf_counter() < end``): a wall-clock spinner finishes on time even when it is
starved of CPU, so contention from the pool's own processes (the user process, a dispatcher,
result readers) would be hidden. With a fixed amount of work, every CPU cycle the pool machinery
steals from the workers shows up as a longer run.
"""

from __future__ import annotations

import heapq
import os
import random
import statistics
import time
from collections.abc import Sequence

#: Environment variable through which a parent process hands its calibration to its children, so
#: that every process in one run performs the same amount of work for the same ``seconds`` and no
#: worker pays for its own calibration in the middle of a timed section.
SPIN_RATE_ENV = "MPPOOL_BENCH_SPIN_RATE"

_rate: float | None = None


def noop(x: object = None) -> object:
    """Return ``x`` unchanged: the cheapest possible task, used to measure pool overhead.

    Args:
        x: Any picklable value.

    Returns:
        ``x`` itself.
    """
    return x


def square(x: int) -> int:
    """Return ``x * x``: a tiny task used for ``map`` throughput.

    Args:
        x: An integer.

    Returns:
        The square of ``x``.
    """
    return x * x


def getpid(_: object = None) -> int:
    """Return the id of the process that ran the task.

    Args:
        _: Ignored; present so the function can be used with ``map``.

    Returns:
        ``os.getpid()`` of the executing process.
    """
    return os.getpid()


def spin_getpid(seconds: float) -> int:
    """Burn about ``seconds`` of CPU, then return the executing process id.

    Holding each worker busy for a moment makes it likely that a batch of these tasks spreads
    across all workers, which is how the respawn benchmark finds out that a new worker runs tasks.

    Args:
        seconds: Approximate CPU time to burn.

    Returns:
        ``os.getpid()`` of the executing process.
    """
    spin(seconds)
    return os.getpid()


def _burn(iterations: int) -> int:
    # A small linear-congruential update: integer arithmetic the interpreter cannot skip, with a
    # bounded accumulator so the cost per iteration stays constant (no big-int growth).
    acc = 1
    for i in range(iterations):
        acc = (acc * 1103515245 + i) & 0xFFFFFFFF
    return acc


def calibrate(rounds: int = 5, probe_iterations: int = 200_000) -> float:
    """Measure how many :func:`_burn` iterations this process runs per CPU-second.

    CPU time (``process_time``) is used instead of wall time so that a calibration taken while
    another process competes for the core is not skewed low. The median of several probes is
    used to ignore one-off disturbances (page faults, frequency changes).

    Args:
        rounds: Number of probes.
        probe_iterations: Iterations per probe (about 10-20 ms on a typical core).

    Returns:
        Iterations per CPU-second.
    """
    _burn(probe_iterations // 10)  # warm the code path before measuring
    rates = []
    for _ in range(rounds):
        start = time.process_time()
        _burn(probe_iterations)
        elapsed = time.process_time() - start
        rates.append(probe_iterations / max(elapsed, 1e-9))
    return statistics.median(rates)


def iterations_per_second() -> float:
    """Return this process's spin rate, calibrating once and caching the result.

    A rate published by a parent through :data:`SPIN_RATE_ENV` takes precedence, so all
    processes of one run agree on what ``spin(seconds)`` means.

    Returns:
        Iterations of the busy loop per CPU-second.
    """
    global _rate
    if _rate is None:
        published = os.environ.get(SPIN_RATE_ENV)
        _rate = float(published) if published else calibrate()
    return _rate


def publish_calibration() -> float:
    """Calibrate (if needed) and export the rate to child processes started from now on.

    Call this in the parent before creating any pool.

    Returns:
        The published iterations-per-second rate.
    """
    rate = iterations_per_second()
    os.environ[SPIN_RATE_ENV] = repr(rate)
    return rate


def spin(seconds: float) -> float:
    """Do roughly ``seconds`` of real CPU work (a pure-Python arithmetic loop).

    Args:
        seconds: Intended CPU time of the task on an uncontended core.

    Returns:
        ``seconds``, so that results can be checked for order.
    """
    _burn(int(seconds * iterations_per_second()))
    return seconds


def spin_cpu(seconds: float) -> tuple[float, float]:
    """Run :func:`spin` and measure, inside the executing thread, the CPU time it took.

    The measurement is taken where the work happens, so the harness can compute the ideal
    parallel time of a run from the work actually done in that very run (``sum / workers``)
    instead of from a serial baseline measured at another moment. Thread CPU time excludes the
    time the worker spent waiting for a core, so a pool whose own processes compete with its
    workers shows up as a longer wall time, not as more work.

    Args:
        seconds: Intended CPU time of the task on an uncontended core.

    Returns:
        ``(seconds, cpu_seconds)``: the argument echoed back, so that the caller can check the
        order of results exactly, and the thread CPU time the spin took.
    """
    start = time.thread_time()
    spin(seconds)
    return seconds, time.thread_time() - start


def wait_for_file(path: str, timeout: float = 120.0) -> bool:
    """Block until ``path`` exists, polling every millisecond, for at most ``timeout`` seconds.

    Used by the memory benchmark to hold a worker busy while tasks pile up behind it. A bounded
    poll is acceptable in a benchmark script; it keeps the blocker free of any shared state that
    would need its own process (such as a ``multiprocessing.Manager``).

    Args:
        path: File whose creation releases the task.
        timeout: Upper bound on the wait, so a forgotten blocker cannot hang forever.

    Returns:
        True if the file appeared, False if the wait timed out.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return True
        time.sleep(0.001)
    return False


def skewed_durations(n: int, total_seconds: float, seed: int = 1234) -> list[float]:
    """Heavy-tailed task durations, sorted ascending so that the heaviest tasks come last.

    Durations follow a lognormal distribution (sigma 1.25), which resembles real batch jobs: many
    cheap inputs and a few that cost a hundred times the median. Putting the heaviest tasks at the
    end is the worst case for static chunking: the last chunk holds much of the work and lands on
    one worker while the others sit idle.

    The tail is heavy but no single task dominates (with 2,000 tasks the longest is about 1% of
    the total), so a perfect greedy scheduler fed in input order gets within about 1% of
    :func:`lower_bound`. A Pareto tail with shape <= 1.5 was avoided on purpose: its longest task
    can hold 10-20% of all work, and then no scheduler that respects input order can come close to
    the bound, which would measure the seed rather than the pool.

    Args:
        n: Number of tasks.
        total_seconds: The durations are scaled to sum to exactly this.
        seed: Seed for a private random generator, so every run uses the same list.

    Returns:
        ``n`` durations in seconds, ascending.
    """
    rng = random.Random(seed)
    raw = sorted(rng.lognormvariate(0.0, 1.25) for _ in range(n))
    scale = total_seconds / sum(raw)
    return [d * scale for d in raw]


def pareto_durations(
    n: int,
    total_seconds: float,
    workers: int,
    alpha: float = 1.16,
    cap_share: float = 0.1,
    seed: int = 1234,
) -> list[float]:
    """Capped Pareto task durations, sorted ascending so that the heaviest tasks come last.

    Shape ``alpha`` = 1.16 is the "80/20" Pareto. Uncapped, the single largest of 1,000 draws
    (seed 1234) would hold two thirds of all the work, so the list is capped: no task exceeds
    ``cap_share`` of one worker's fair share, ``total_seconds / workers``. The cap trims only the
    largest draw; the tail below it stays Pareto (with 1,000 tasks the top fifth holds about two
    thirds of the work and the top 1 % about a fifth).

    Why 0.1 and not more: with the heaviest task last, any pool that starts tasks in input order
    cannot start it before about ``(total - longest) / workers``, so even a perfect in-order
    scheduler ends near ``1 + cap_share * (workers - 1)`` times the lower bound (see
    :func:`greedy_makespan`). A cap of a third of the share would put that floor at 1.16 on two
    workers, above the 1.15 target, whatever the pool does; 0.1 puts it near 1.04.

    Args:
        n: Number of tasks.
        total_seconds: The durations are scaled to sum to exactly this.
        workers: Worker count the cap refers to.
        alpha: Pareto shape (smaller is heavier-tailed).
        cap_share: Largest task as a fraction of ``total_seconds / workers``.
        seed: Seed for a private random generator, so every run uses the same list.

    Returns:
        ``n`` durations in seconds, ascending.
    """
    rng = random.Random(seed)
    raw = sorted(rng.paretovariate(alpha) for _ in range(n))
    # Find the cap c (in raw units) with c == cap_share * sum(min(x, c)) / workers. The right-hand
    # side grows with c at slope cap_share * (count above c) / workers, below 1 for any sensible
    # cap, so the iteration contracts towards the fixed point from above.
    factor = cap_share / workers
    cap = raw[-1]
    for _ in range(1_000):
        nxt = min(raw[-1], factor * sum(min(x, cap) for x in raw))
        if abs(nxt - cap) <= 1e-12 * cap:
            break
        cap = nxt
    capped = [min(x, cap) for x in raw]
    scale = total_seconds / sum(capped)
    return [d * scale for d in capped]


def tail_durations(tiny_n: int, tiny: float, huge_n: int, total_seconds: float) -> list[float]:
    """Thousands of tiny tasks followed by a handful of huge ones.

    The tiny tasks make per-task overhead visible; the huge ones, all at the end, are where a pool
    that hands out fixed chunks puts most of the work on one worker.

    Args:
        tiny_n: Number of tiny tasks, first.
        tiny: Duration of each tiny task in seconds.
        huge_n: Number of huge tasks, last.
        total_seconds: Total work; the huge tasks share what the tiny ones leave.

    Returns:
        ``tiny_n + huge_n`` durations in seconds, ascending.
    """
    huge = (total_seconds - tiny_n * tiny) / huge_n
    if huge <= tiny:
        raise ValueError("the tiny tasks leave no room for huge ones")
    return [tiny] * tiny_n + [huge] * huge_n


def uniform_durations(n: int, each: float) -> list[float]:
    """``n`` identical durations.

    Args:
        n: Number of tasks.
        each: Duration of every task in seconds.

    Returns:
        A list of ``n`` copies of ``each``.
    """
    return [each] * n


def lower_bound(durations: Sequence[float], workers: int) -> float:
    """Shortest possible makespan of ``durations`` on ``workers`` identical workers.

    No schedule can beat the total work spread evenly, nor the single longest task.

    Args:
        durations: Task durations in seconds.
        workers: Number of workers.

    Returns:
        ``max(sum(durations) / workers, max(durations))``.
    """
    return max(sum(durations) / workers, max(durations))


def greedy_makespan(durations: Sequence[float], workers: int) -> float:
    """Makespan of an ideal pool that starts tasks in input order, each on the first free worker.

    This is the best any pool achieves without knowing durations in advance and without
    reordering tasks, with zero overhead. Divided by :func:`lower_bound`, it shows how much of a
    measured ratio is due to the task list rather than to the pool.

    Args:
        durations: Task durations in seconds, in input order.
        workers: Number of workers.

    Returns:
        The time at which the last task ends.
    """
    free_at = [0.0] * workers
    for d in durations:
        heapq.heapreplace(free_at, free_at[0] + d)
    return max(free_at)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, without interpolation (what a latency SLO usually means).

    Args:
        values: Samples (need not be sorted).
        q: Percentile in [0, 100].

    Returns:
        The smallest sample such that at least ``q`` percent of samples are less or equal.
    """
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of an empty sequence")
    rank = max(1, -(-len(ordered) * q // 100))  # ceil without floats drifting
    return ordered[int(rank) - 1]
