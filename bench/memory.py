"""User-process memory per queued tiny task, measured with tracemalloc.

Usage (from the repository root)::

    python -m bench.memory                          # mppool, multiprocessing, ppe; 100,000 tasks
    python -m bench.memory --libs mppool --tasks 20000

Method: a pool with one worker is blocked by a task that waits for a file to appear. Tracing
starts once the pool is up, then ``--tasks`` no-op tasks are submitted; they all queue behind the
blocker. The traced (Python-allocated) memory of the user process, once it stops changing,
minus the baseline, divided by the number of tasks, is the cost per queued task. That includes
the future the caller holds for each task and the list holding those futures (8 bytes per task):
that is what a user pays. Memory held in other processes (a dispatcher, the workers) is not
counted. Target for mppool: at most 1 KB per task.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script (python bench/memory.py): make the ``bench`` package importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import workloads as wl
from bench.adapters import ADAPTERS, prepare_environment, reap_descendants

#: Pools with a per-task submit that makes sense here (mpire/pebble/loky can be added with
#: ``--libs``; they queue in the same way).
DEFAULT_LIBS = ("mppool", "multiprocessing", "ppe")


def _settled_traced_memory(max_wait: float = 3.0) -> int:
    """Return traced memory once background threads have stopped changing it.

    A pool may move submitted tasks between threads (serialising, batching) after ``submit``
    returns, so a reading taken immediately could catch a transient. Readings are taken 50 ms
    apart until two consecutive ones differ by less than 0.5 %, for at most ``max_wait`` s.
    """
    deadline = time.monotonic() + max_wait
    previous = tracemalloc.get_traced_memory()[0]
    while time.monotonic() < deadline:
        time.sleep(0.05)
        current = tracemalloc.get_traced_memory()[0]
        if abs(current - previous) <= 0.005 * max(previous, 1):
            return current
        previous = current
    return previous


def bare_future_bytes(count: int = 20_000) -> float:
    """Traced bytes of one bare ``concurrent.futures.Future``, as a reference point.

    A stock future allocates a ``threading.Condition`` (with its lock and waiter list) up front,
    so it alone takes a sizeable share of a 1 KB per-task budget.
    """
    from concurrent.futures import Future

    gc.collect()
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    futures = [Future() for _ in range(count)]
    used = tracemalloc.get_traced_memory()[0] - baseline
    tracemalloc.stop()
    del futures
    return used / count


def measure(lib: str, tasks: int, submit_budget: float = 60.0) -> dict[str, Any]:
    """Measure traced user-process memory per queued no-op task for one library.

    Args:
        lib: Adapter key from :data:`bench.adapters.ADAPTERS`.
        tasks: Number of tasks to queue behind the blocker.
        submit_budget: If submitting has not finished after this many seconds (for instance
            because a bounded queue makes ``submit`` block), the blocker is released so the run
            cannot hang; the result is then flagged.

    Returns:
        Figures in bytes, plus flags describing anything unusual.
    """
    pool = ADAPTERS[lib](1)
    try:
        with tempfile.TemporaryDirectory(prefix="mppool-mem-") as tmp:
            release = os.path.join(tmp, "release")
            blocker = pool.submit(wl.wait_for_file, release, 120.0)
            watchdog = threading.Timer(submit_budget, Path(release).touch)
            watchdog.daemon = True
            handles: list[Any] = []
            error = None
            try:
                gc.collect()
                tracemalloc.start()
                baseline = tracemalloc.get_traced_memory()[0]
                watchdog.start()
                start = time.perf_counter()
                try:
                    for i in range(tasks):
                        handles.append(pool.submit(wl.noop, i))
                except Exception as exc:  # e.g. a full queue: report it
                    error = f"{type(exc).__name__} after {len(handles):,} tasks: {exc}"
                submit_seconds = time.perf_counter() - start
                gc.collect()
                settled = _settled_traced_memory()
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                watchdog_fired = not watchdog.is_alive() and Path(release).exists()
                watchdog.cancel()
            finally:
                Path(release).touch()
                watchdog.cancel()
                if tracemalloc.is_tracing():
                    tracemalloc.stop()
            queued = len(handles)
            # Drain before shutting down, so that the pool is stopped in a clean, idle state.
            pool.result(blocker, 150.0)
            for h in handles:
                pool.result(h, 60.0)
            pool.shutdown()
    except BaseException:
        pool.abort()
        raise
    return {
        "lib": lib,
        "tasks": queued,
        "bytes_per_task": (settled - baseline) / max(queued, 1),
        "peak_bytes_per_task": (peak - baseline) / max(queued, 1),
        "total_bytes": settled - baseline,
        "submit_seconds_traced": submit_seconds,
        "blocked_submit_released_by_watchdog": watchdog_fired,
        "error": error,
    }


def main(argv: list[str] | None = None) -> None:
    """Run the memory benchmark for the selected libraries and print bytes per task."""
    parser = argparse.ArgumentParser(description="user-process memory per queued tiny task")
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument(
        "--libs", default=",".join(DEFAULT_LIBS), help=f"comma-separated subset of {list(ADAPTERS)}"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the raw results to PATH")
    args = parser.parse_args(argv)
    libs = [lib.strip() for lib in args.libs.split(",") if lib.strip()]
    unknown = [lib for lib in libs if lib not in ADAPTERS]
    if unknown:
        raise SystemExit(f"unknown library: {', '.join(unknown)}")
    prepare_environment()

    print(
        f"memory per queued no-op task (tracemalloc, user process only): cpu cores "
        f"{os.cpu_count()}, 1 worker, {args.tasks:,} tasks queued behind a blocked worker"
    )
    reference = bare_future_bytes()
    print(f"{'(reference)':<22} {reference:8.0f} B for one bare concurrent.futures.Future")
    results = []
    for lib in libs:
        try:
            r = measure(lib, args.tasks)
        except Exception as exc:  # one failure must not stop the rest
            r = {"lib": lib, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            reap_descendants(timeout=2.0, ignore=("resource_tracker",))
        results.append(r)
        label = ADAPTERS[lib].label
        if "bytes_per_task" not in r:
            print(f"{label:<22} ERROR: {r['error']}")
            continue
        target = ""
        if lib == "mppool":
            target = "  (target <= 1024: " + ("PASS)" if r["bytes_per_task"] <= 1024 else "FAIL)")
        print(
            f"{label:<22} {r['bytes_per_task']:8.0f} B/task   peak {r['peak_bytes_per_task']:8.0f}"
            f" B/task{target}"
        )
        if r["error"]:
            print(f"{'':<22} note: {r['error']}")
        if r["blocked_submit_released_by_watchdog"]:
            print(f"{'':<22} note: submit blocked; the blocker was released to let it finish")
    if args.json:
        payload = {"bare_future_bytes": reference, "results": results}
        Path(args.json).write_text(json.dumps(payload, indent=2))
    reap_descendants(timeout=2.0)


if __name__ == "__main__":
    main()
