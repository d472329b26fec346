"""One cell of the peer comparison: one library running one workload, in its own interpreter.

``python -m bench.compare`` starts ``python -m bench.cells`` once per (round, workload, library).
The child creates a fresh pool, warms it up, times the workload, shuts the pool down, writes its
figures as JSON and exits. Nothing a pool leaves behind (threads, signal handlers, processes,
a broken state) can reach the next cell, and a pool that hangs costs only its own cell.

Every workload function here is defined at module level in :mod:`bench.workloads`, so every pool
can pickle it by reference.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script (python bench/cells.py): make the ``bench`` package importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import workloads as wl
from bench.adapters import ADAPTERS, PoolAdapter, prepare_environment, reap_descendants

#: The skewed shapes: workload name -> short description used in tables.
SKEW_SHAPES = {
    "skew-lognormal": "lognormal (sigma 1.25)",
    "skew-pareto": "capped Pareto",
    "skew-tail": "tiny tasks, then a few huge ones",
}


class WorkloadTimeout(Exception):
    """Raised in the main thread when a workload exceeds its time budget."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`WorkloadTimeout` in the main thread if the block runs longer than ``seconds``.

    A real timer signal is used because a pool that hangs is usually blocked in a lock or pipe
    read in the main thread, which a signal handler can interrupt but a watchdog thread cannot.
    Limits nest: an enclosing limit that is still running is re-armed on exit with what is left
    of it.

    Args:
        seconds: Time budget of the block.
    """

    def _expire(signum: int, frame: object) -> None:
        raise WorkloadTimeout(f"no result within {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, _expire)
    outer_left, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left > 0:
            left = outer_left - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))


@contextmanager
def open_pool(adapter_cls: type[PoolAdapter], workers: int) -> Iterator[PoolAdapter]:
    """Create a pool; shut it down gracefully after the block, or abort it if the block fails.

    Args:
        adapter_cls: The library's adapter.
        workers: Worker processes.

    Yields:
        The pool adapter.
    """
    pool = adapter_cls(workers)
    done = False
    try:
        yield pool
        pool.shutdown()
        done = True
    finally:
        if not done:
            # The reaper run after every cell is the last resort if even an abort fails or hangs.
            with suppress(Exception), time_limit(15):
                pool.abort()


# Warm-up: a few short CPU tasks per worker, issued at once, make lazily-started pools (such as
# ProcessPoolExecutor) start every worker and let each import the workload module. Each warm-up
# uses only the kind of call that is about to be timed: mpire, for one, breaks when a kept-alive
# pool that served apply_async is then given a map (arguments arrive mangled).


def _warm_submit(pool: PoolAdapter) -> None:
    handles = [pool.submit(wl.spin, 0.01) for _ in range(2 * pool.workers)]
    for handle in handles:
        pool.result(handle)
    for i in range(200):
        pool.result(pool.submit(wl.noop, i))


def _warm_map(pool: PoolAdapter, fn: Callable[[Any], Any], sample: list[Any]) -> None:
    pool.map(wl.spin, [0.01] * (2 * pool.workers))
    pool.map(fn, sample)


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise RuntimeError(f"wrong results: {what}")


#: A timed section is repeated until this much time has been spent on it (or MAX_REPEATS is
#: reached), and the cell reports the median. Fast pools finish a workload in milliseconds, where
#: one scheduler hiccup would dominate a single sample; slow ones (an executor's chunksize=1 map
#: takes seconds) run once and cost no extra time.
MIN_TIMED_SECONDS = 1.0
MAX_REPEATS = 5


def _repeat(run: Callable[[], Any]) -> list[tuple[float, Any]]:
    """Run ``run`` as :data:`MIN_TIMED_SECONDS` asks; return (wall seconds, result) per run."""
    samples: list[tuple[float, Any]] = []
    while len(samples) < MAX_REPEATS and sum(s for s, _ in samples) < MIN_TIMED_SECONDS:
        start = time.perf_counter()
        value = run()
        samples.append((time.perf_counter() - start, value))
    return samples


def run_submit(pool: PoolAdapter, cfg: dict[str, Any]) -> dict[str, Any]:
    """Per-task submit throughput: submit N no-op tasks one by one, then collect every result."""
    n = cfg["submit_n"]
    _warm_submit(pool)

    def run() -> None:
        handles = [pool.submit(wl.noop, i) for i in range(n)]
        results = [pool.result(h) for h in handles]
        _check(results[-1] == n - 1 and len(results) == n, "submit results")

    times = [s for s, _ in _repeat(run)]
    seconds = statistics.median(times)
    return {"n": n, "seconds": seconds, "tasks_per_s": n / seconds, "repeats": times}


def run_map(pool: PoolAdapter, cfg: dict[str, Any]) -> dict[str, Any]:
    """``map`` of many tiny items with the library's default chunking."""
    n = cfg["map_n"]
    items = list(range(n))
    _warm_map(pool, wl.square, list(range(2_000)))

    def run() -> None:
        results = pool.map(wl.square, items)
        _check(len(results) == n and results[-1] == (n - 1) ** 2, "map results")

    times = [s for s, _ in _repeat(run)]
    seconds = statistics.median(times)
    return {"n": n, "seconds": seconds, "items_per_s": n / seconds, "repeats": times}


def _spin_map(pool: PoolAdapter, durations: list[float]) -> list[dict[str, float]]:
    """Time ``map(spin_cpu, durations)``; per run, the wall time and the tasks' own CPU times.

    Returns:
        Per timed run: ``seconds`` (wall), ``cpu_total`` and ``cpu_max`` (from the CPU time each
        task measured in its worker), ``bound`` (:func:`~bench.workloads.lower_bound` of those
        CPU times) and ``greedy`` (what an overhead-free in-order pool would need for them).
    """
    _warm_map(pool, wl.spin_cpu, [0.0005] * 20)
    workers = pool.workers

    def run() -> list[float]:
        results = pool.map(wl.spin_cpu, durations)
        _check([r[0] for r in results] == durations, "spin map results or order")
        return [r[1] for r in results]

    runs = []
    for seconds, cpu in _repeat(run):
        runs.append(
            {
                "seconds": seconds,
                "cpu_total": sum(cpu),
                "cpu_max": max(cpu),
                "bound": wl.lower_bound(cpu, workers),
                "greedy": wl.greedy_makespan(cpu, workers),
            }
        )
    return runs


def skew_durations(name: str, cfg: dict[str, Any]) -> list[float]:
    """The task list of one skewed shape (see :data:`SKEW_SHAPES`), heaviest last.

    Args:
        name: Workload name, a key of :data:`SKEW_SHAPES`.
        cfg: The run's configuration.

    Returns:
        Durations in seconds, ascending.
    """
    total, seed = cfg["skew_total"], cfg["seed"]
    if name == "skew-lognormal":
        return wl.skewed_durations(cfg["lognormal_n"], total, seed)
    if name == "skew-pareto":
        return wl.pareto_durations(
            cfg["pareto_n"],
            total,
            cfg["workers"],
            alpha=cfg["pareto_alpha"],
            cap_share=cfg["pareto_cap_share"],
            seed=seed,
        )
    if name == "skew-tail":
        return wl.tail_durations(cfg["tail_tiny_n"], cfg["tail_tiny"], cfg["tail_huge_n"], total)
    raise ValueError(f"unknown skewed shape {name!r}")


def _median_of(runs: list[dict[str, float]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def run_skew(pool: PoolAdapter, cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """``map`` over one skewed shape; ratio = wall time / lower bound of the same run."""
    durations = skew_durations(name, cfg)
    runs = _spin_map(pool, durations)
    for r in runs:
        r["ratio"] = r["seconds"] / r["bound"]
        r["ideal_ratio"] = r["greedy"] / r["bound"]
    return {
        "n": len(durations),
        "seconds": _median_of(runs, "seconds"),
        "bound": _median_of(runs, "bound"),
        "ratio": _median_of(runs, "ratio"),
        "ideal_ratio": _median_of(runs, "ideal_ratio"),
        "cpu_total": _median_of(runs, "cpu_total"),
        "cpu_max": _median_of(runs, "cpu_max"),
        "repeats": runs,
    }


def run_uniform(pool: PoolAdapter, cfg: dict[str, Any]) -> dict[str, Any]:
    """``map`` over identical ~2 ms CPU tasks; efficiency = (task CPU / workers) / wall time."""
    durations = wl.uniform_durations(cfg["uniform_n"], cfg["uniform_each"])
    runs = _spin_map(pool, durations)
    for r in runs:
        r["efficiency"] = r["cpu_total"] / pool.workers / r["seconds"]
    return {
        "n": len(durations),
        "seconds": _median_of(runs, "seconds"),
        "efficiency": _median_of(runs, "efficiency"),
        "cpu_total": _median_of(runs, "cpu_total"),
        "repeats": runs,
    }


def run_latency(pool: PoolAdapter, cfg: dict[str, Any]) -> dict[str, Any]:
    """Round trip of one no-op task at a time on an otherwise idle pool."""
    n = cfg["latency_n"]
    _warm_submit(pool)
    samples = []
    clock = time.perf_counter
    for i in range(n):
        start = clock()
        value = pool.result(pool.submit(wl.noop, i))
        samples.append(clock() - start)
        _check(value == i, "latency result")
    us = [s * 1e6 for s in samples]
    return {
        "n": n,
        "p50_us": wl.percentile(us, 50),
        "p99_us": wl.percentile(us, 99),
        "max_us": max(us),
        "mean_us": sum(us) / n,
        "samples_us": [round(x, 1) for x in us],
    }


def run_startup(adapter_cls: type[PoolAdapter], cfg: dict[str, Any]) -> dict[str, Any]:
    """Time from the pool constructor to the first result of a no-op task, on fresh pools.

    The library is imported first: that cost is paid once per program, not per pool. Each
    repetition builds a new pool; its shutdown is not timed.
    """
    for module in adapter_cls.modules:
        importlib.import_module(module)
    samples = []
    for i in range(cfg["startup_repeats"]):
        start = time.perf_counter()
        with open_pool(adapter_cls, cfg["workers"]) as pool:
            value = pool.result(pool.submit(wl.noop, i))
            samples.append(time.perf_counter() - start)
            _check(value == i, "startup result")
    ms = [s * 1e3 for s in samples]
    return {"n": len(ms), "ms": statistics.median(ms), "samples_ms": ms}


#: Workloads that run on one warmed-up pool, in the order of the tables.
POOL_RUNNERS: dict[str, Callable[[PoolAdapter, dict[str, Any]], dict[str, Any]]] = {
    "submit": run_submit,
    "map": run_map,
    **{name: functools.partial(run_skew, name=name) for name in SKEW_SHAPES},
    "uniform": run_uniform,
    "latency": run_latency,
}

#: Every workload name, in table order.
WORKLOADS: tuple[str, ...] = (*POOL_RUNNERS, "startup")


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run_cell(lib: str, workload: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one workload for one library on a fresh, warmed-up pool, within ``cfg["timeout"]``.

    Errors and timeouts are returned, not raised, so that one failure costs one cell.

    Args:
        lib: Adapter key from :data:`bench.adapters.ADAPTERS`.
        workload: A name from :data:`WORKLOADS`.
        cfg: The run's configuration (see ``bench.compare.build_config``).

    Returns:
        The workload's figures, or ``error`` (plus ``traceback``, and ``timed_out`` for a
        timeout); ``leftover_processes`` lists processes still alive 2 s after the shutdown.
    """
    adapter_cls = ADAPTERS[lib]
    result: dict[str, Any]
    try:
        with time_limit(cfg["timeout"]):
            if workload == "startup":
                result = run_startup(adapter_cls, cfg)
            else:
                with open_pool(adapter_cls, cfg["workers"]) as pool:
                    result = POOL_RUNNERS[workload](pool, cfg)
    except Exception as exc:  # any failure of a peer becomes a table cell
        result = {"error": _error_text(exc), "traceback": traceback.format_exc()}
        if isinstance(exc, WorkloadTimeout):
            result["timed_out"] = True
    # Anything still alive after a graceful shutdown is worth knowing about, except the resource
    # trackers, which by design live until this process exits.
    leftovers = reap_descendants(timeout=2.0, ignore=("resource_tracker",))
    if leftovers:
        result["leftover_processes"] = leftovers
    return result


def main(argv: list[str] | None = None) -> None:
    """Entry point of the child interpreter: run one cell, write its JSON, exit hard."""
    parser = argparse.ArgumentParser(description="one cell of bench.compare (internal)")
    parser.add_argument("--lib", required=True, choices=list(ADAPTERS))
    parser.add_argument("--workload", required=True, choices=list(WORKLOADS))
    parser.add_argument("--config", required=True, help="JSON configuration file")
    parser.add_argument("--out", required=True, help="where to write the cell's JSON")
    args = parser.parse_args(argv)
    prepare_environment()
    try:
        cfg = json.loads(Path(args.config).read_text())
        result = run_cell(args.lib, args.workload, cfg)
    except BaseException as exc:  # report, never hang the parent
        result = {"error": _error_text(exc), "traceback": traceback.format_exc()}
    Path(args.out).write_text(json.dumps(result))
    reap_descendants(timeout=0.5)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: a misbehaving pool's non-daemon threads must not keep this
    # process (and with it the whole comparison) alive.
    os._exit(0)


if __name__ == "__main__":
    main()
