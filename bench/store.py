"""The job store's cost: keyed ``map`` with and without ``Pool(store=...)``, interleaved.

    python -m bench.store                     # 5 rounds, 2 workers
    python -m bench.store --rounds 9 --json store.json

Workloads, all ``pool.options(key=lambda x: f"sq:{x}").map(fn, range(n))``:

* ``tiny``: 200,000 calls of ``square`` — the journal's cost per task at its worst;
* ``2ms``: 1,000 calls that each burn 2 ms of CPU — its cost on work worth a process;
* ``rerun``: the ``tiny`` batch again, on the store the ``store`` cell just filled, in a new
  pool: every result comes from the store, nothing runs.

Each cell (round, workload, with or without a store) runs in a child interpreter of its own on
a fresh pool, warmed up with a short unkeyed map before the clock starts; a store cell starts
from an empty file. Within a round the two variants run back to back, the order flipped every
round. The cost is the per-round ratio of the store's time to the plain time (1.10: 10% more),
reported as the median over rounds with its range. Targets: at most 1.15 on ``tiny``, at most
1.02 on ``2ms``, and a rerun at 500,000 results/s or more.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

from bench import child
from bench import workloads as wl

SIZES = {"tiny": 200_000, "2ms": 1_000}
VARIANTS = ("plain", "store")
TARGETS = {"tiny": 1.15, "2ms": 1.02}
RERUN_TARGET = 500_000.0  # results per second


def _key(x: int) -> str:
    return f"sq:{x}"


def _timed_map(workers: int, workload: str, store: str | None) -> float:
    import mppool

    n = SIZES[workload]
    with mppool.Pool(workers, store=store) as pool:
        list(pool.map(wl.square, range(1000)))  # warm: workers up, functions known
        fn: Any = wl.square if workload == "tiny" else wl.spin
        items: Any = range(n) if workload == "tiny" else [0.002] * n
        keyed = pool.options(key=_key) if workload == "tiny" else pool.options(key=_spin_key())
        started = time.perf_counter()
        for _ in keyed.map(fn, items):
            pass
        return time.perf_counter() - started


def _spin_key() -> Any:
    counter = iter(range(1 << 60))
    return lambda _: f"spin:{next(counter)}"  # one key per item, though the items are equal


def cell(workload: str, variant: str, workers: int) -> dict[str, float]:
    """One cell, here (in a child): seconds, and for a ``tiny`` store cell the rerun's."""
    if variant == "plain":
        return {"seconds": _timed_map(workers, workload, None)}
    with tempfile.TemporaryDirectory(prefix="mppool-bench-") as folder:
        db = os.path.join(folder, "jobs.db")
        out = {"seconds": _timed_map(workers, workload, db)}
        if workload == "tiny":
            out["rerun"] = _timed_map(workers, workload, db)
        return out


def run_cell(workload: str, variant: str, workers: int) -> dict[str, float]:
    return child.run_cell("bench.store", workload, variant, workers, timeout=900)


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def main(argv: list[str] | None = None) -> int:
    parser = child.arguments(__doc__ or "", ("WORKLOAD", "VARIANT", "WORKERS"), rounds=5)
    args = parser.parse_args(argv)
    if args.cell:
        workload, variant, workers = args.cell
        print(json.dumps(cell(workload, variant, int(workers))))
        return 0
    reruns: list[float] = []
    print(
        f"keyed map with and without a job store: {args.workers} workers, "
        f"{os.cpu_count()} cores, {args.rounds} rounds, variants alternating"
    )

    def run(workload: str, variant: str) -> float:
        got = run_cell(workload, variant, args.workers)
        if "rerun" in got:
            reruns.append(SIZES[workload] / got["rerun"])
        return got["seconds"]

    times = child.interleave(args.rounds, list(SIZES), VARIANTS, run)
    print()
    ok = True
    report: dict[str, Any] = {"workers": args.workers, "rounds": args.rounds, "workloads": {}}
    for workload, by in times.items():
        ratios = [s / p for s, p in zip(by["store"], by["plain"], strict=True)]
        median = statistics.median(ratios)
        passed = median <= TARGETS[workload]
        ok = ok and passed
        print(
            f"{workload:5}  plain {statistics.median(by['plain']):.3f} s, store "
            f"{statistics.median(by['store']):.3f} s; store time / plain time {_spread(ratios)}  "
            f"{'PASS' if passed else 'FAIL'} (target <= {TARGETS[workload]})"
        )
        report["workloads"][workload] = {"times": by, "ratios": ratios}
    passed = statistics.median(reruns) >= RERUN_TARGET
    ok = ok and passed
    print(
        f"rerun  {statistics.median(reruns):,.0f} results/s "
        f"[{min(reruns):,.0f}, {max(reruns):,.0f}]  {'PASS' if passed else 'FAIL'} "
        f"(target >= {RERUN_TARGET:,.0f})"
    )
    report["rerun_results_per_second"] = reruns
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
