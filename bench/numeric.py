"""numpy work on mppool against multiprocessing.Pool, ProcessPoolExecutor, joblib and a loop.

    python -m bench.numeric                   # 3 rounds, 2 workers
    python -m bench.numeric --rounds 5 --json numeric.json

Workloads (numpy; data made before the clock starts):

* ``matmul``: 100 chains of five 400x400 matrix products (BLAS threads matter);
* ``rows``: per-row statistics (mean, deviation, percentiles) of a 4000x4000 array (128 MB)
  sent in 100 slices;
* ``arg200``: one task whose argument is a 200 MB array (its sum);
* ``shared200``: 100 tasks reading one 200 MB array (the trimmed mean of a strided sample
  each, a bootstrap-style statistic): mppool passes a
  ``pool.share()`` handle, the others pass the array (joblib memory-maps it on its own).

Every library keeps its defaults (start method, thread limits, joblib's auto-memmapping); the
serial loop uses all cores' BLAS threads. Each cell (round, workload, library) runs in a child
interpreter on a pool started and warmed up before the clock; the libraries take turns within
a round, the order reversed every other round. A cell's figure is the median of its repeats.
Ratios are the other's time over mppool's, per round, as a median with its range (above 1:
mppool is faster). Targets: mppool fastest on each workload, ``shared200`` at least 10x
faster than multiprocessing.Pool, ``arg200`` no slower than multiprocessing.Pool.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from bench import child
from bench import numeric_work as nw

LIBS = ("mppool", "multiprocessing", "ppe", "joblib", "serial")
WORKLOADS = ("matmul", "rows", "arg200", "shared200")
REPEATS = {"matmul": 3, "rows": 5, "arg200": 3, "shared200": 1}


def _data(workload: str) -> tuple[Callable[..., Any], list[Any], Any]:
    """(function, list of per-task arguments, the array they share or None)."""
    if workload == "matmul":
        return nw.matmul_chain, list(range(100)), None
    if workload == "rows":
        array = nw.array(4000 * 4000).reshape(4000, 4000)
        return nw.row_stats, [array[i * 40 : (i + 1) * 40] for i in range(100)], None
    if workload == "arg200":
        return nw.total, [nw.array(25_000_000)], None
    return nw.trimmed_mean, list(range(100)), nw.array(25_000_000)


def _runner(lib: str, workers: int) -> tuple[Callable[..., list[Any]], Callable[[], None]]:
    """A function running ``fn`` over argument tuples on ``lib``, and how to close it."""
    if lib == "mppool":
        import mppool

        pool = mppool.Pool(workers)

        def run_mppool(fn: Any, calls: list[tuple[Any, ...]], shared: Any) -> list[Any]:
            if shared is not None:
                handle = pool.share(shared)
                calls = [(handle, *c) for c in calls]
            return list(pool.map(fn, *zip(*calls, strict=True)))

        return run_mppool, pool.shutdown
    if lib == "multiprocessing":
        import multiprocessing

        mp = multiprocessing.Pool(workers)
        return (lambda fn, calls, shared: mp.starmap(fn, _with(calls, shared))), mp.terminate
    if lib == "ppe":
        import concurrent.futures

        ex = concurrent.futures.ProcessPoolExecutor(workers)

        def run_ppe(fn: Any, calls: list[tuple[Any, ...]], shared: Any) -> list[Any]:
            return [f.result() for f in [ex.submit(fn, *c) for c in _with(calls, shared)]]

        return run_ppe, ex.shutdown
    if lib == "joblib":
        import joblib

        par = joblib.Parallel(n_jobs=workers)

        def run_joblib(fn: Any, calls: list[tuple[Any, ...]], shared: Any) -> list[Any]:
            return list(par(joblib.delayed(fn)(*c) for c in _with(calls, shared)))

        return run_joblib, lambda: None
    return (lambda fn, calls, shared: [fn(*c) for c in _with(calls, shared)]), lambda: None


def _with(calls: list[tuple[Any, ...]], shared: Any) -> list[tuple[Any, ...]]:
    return calls if shared is None else [(shared, *c) for c in calls]


def cell(lib: str, workload: str, workers: int) -> float:
    """Time one workload on one library, here (in a child): the median of its repeats."""
    fn, args, shared = _data(workload)
    calls = [(a,) for a in args]
    run, close = _runner(lib, workers)
    try:
        run(nw.total, [(nw.array(1000),)] * (2 * workers), None)  # start and warm the workers
        times = []
        for _ in range(REPEATS[workload]):
            started = time.perf_counter()
            run(fn, calls, shared)
            times.append(time.perf_counter() - started)
    finally:
        close()
    return statistics.median(times)


def run_cell(lib: str, workload: str, workers: int) -> float:
    return float(child.run_cell("bench.numeric", lib, workload, workers, timeout=1800)["seconds"])


def _report(times: dict[str, dict[str, list[float]]]) -> tuple[bool, dict[str, Any]]:
    ok = True
    ratios: dict[str, dict[str, list[float]]] = {}
    for workload, by in times.items():
        ratios[workload] = {}
        mine = by["mppool"]
        fastest = True
        cells = [f"mppool {statistics.median(mine):.3f} s"]
        for lib in LIBS[1:]:
            r = [theirs / m for theirs, m in zip(by[lib], mine, strict=True)]
            ratios[workload][lib] = r
            fastest = fastest and statistics.median(r) > 1.0
            cells.append(f"{lib} {statistics.median(r):.2f}x [{min(r):.2f}, {max(r):.2f}]")
        target = {"shared200": 10.0, "arg200": 1.0}.get(workload)
        passed = fastest and (
            target is None or statistics.median(ratios[workload]["multiprocessing"]) >= target
        )
        ok = ok and passed
        goal = f"; vs multiprocessing >= {target:g}x" if target else ""
        print(f"{workload:9}  {', '.join(cells)}  {'PASS' if passed else 'FAIL'} (fastest{goal})")
    return ok, ratios


def main(argv: list[str] | None = None) -> int:
    parser = child.arguments(__doc__ or "", ("LIB", "WORKLOAD", "WORKERS"), rounds=3)
    parser.add_argument("--only", help="comma-separated workloads")
    args = parser.parse_args(argv)
    if args.cell:
        lib, workload, workers = args.cell
        print(json.dumps({"seconds": cell(lib, workload, int(workers))}))
        return 0
    workloads = args.only.split(",") if args.only else list(WORKLOADS)
    print(
        f"numpy work: {args.workers} workers, {os.cpu_count()} cores, {args.rounds} rounds, "
        "libraries taking turns"
    )
    times = child.interleave(
        args.rounds, workloads, LIBS, lambda w, lib: run_cell(lib, w, args.workers)
    )
    print()
    ok, ratios = _report(times)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"workers": args.workers, "times": times, "ratios": ratios}, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
