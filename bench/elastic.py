"""An elastic pool on a bursty load: ``Autoscale`` against fixed pools of its min and max size.

    python -m bench.elastic                       # 5 rounds: min 1, max 2 workers
    python -m bench.elastic --rounds 9 --max 2 --json elastic.json

The load: the pool sits idle for ``IDLE`` seconds, then a burst of ``BURST`` tasks that
each burn ``TASK`` seconds of CPU arrives at once, then the pool sits idle again for
``IDLE`` seconds. Three pools meet it, each in a child interpreter of its own:

* ``min``: ``Pool(1)``; ``max``: ``Pool(max)``;
* ``auto``: ``Pool(Autoscale(min=1, max=max, idle_after=IDLE_AFTER))``, other knobs default.

Measured per cell: the burst's time (first submit to last result), and the worker-seconds
the pool held over the whole run (``stats().worker_seconds``: every worker process's
lifetime, summed; what memory an idle worker holds is held for that long). Within a round
the three cells run back to back, the order reversed every other round. Reported: per round,
the autoscaled pool's burst time over the max pool's (target at most 1.2) and its
worker-seconds over the min pool's (target at most 1.3); median and range over the rounds.

For CPU-bound tasks, more workers than cores buy nothing, so ``--max`` defaults to the
number of cores.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from typing import Any

from bench import child
from bench import workloads as wl

IDLE = 3.0  # seconds idle before and after the burst
BURST = 40  # tasks in the burst
TASK = 0.1  # CPU seconds per task
IDLE_AFTER = 1.0  # the autoscaled pool's knob: retire a worker idle this long
VARIANTS = ("min", "max", "auto")
TARGETS = {"time": 1.2, "worker_seconds": 1.3}


def cell(variant: str, most: int) -> dict[str, float]:
    """One pool through idle, burst, idle (here, in a child): seconds and worker-seconds."""
    import mppool

    size: Any = {
        "min": 1,
        "max": most,
        "auto": mppool.Autoscale(min=1, max=most, idle_after=IDLE_AFTER),
    }[variant]
    with mppool.Pool(size) as pool:
        idle = threading.Event()
        idle.wait(IDLE)  # the pool sits idle (nothing to do: nothing polls it)
        started = time.perf_counter()
        futures = [pool.submit(wl.spin, TASK) for _ in range(BURST)]
        for f in futures:
            f.result(timeout=600)
        burst = time.perf_counter() - started
        idle.wait(IDLE)
        stats = pool.stats()
        return {
            "burst": burst,
            "worker_seconds": stats.worker_seconds,
            "peak": max([e.to_workers for e in stats.scaling_events] or [stats.target_workers]),
            "end": stats.target_workers,
        }


def main(argv: list[str] | None = None) -> int:
    parser = child.arguments(__doc__ or "", ("VARIANT", "MAX", "UNUSED"), rounds=5)
    parser.add_argument("--max", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    if args.cell:
        variant, most, _ = args.cell
        print(json.dumps(cell(variant, int(most))))
        return 0
    print(
        f"bursty load: idle {IDLE:g} s, {BURST} x {TASK:g} s CPU, idle {IDLE:g} s; "
        f"pools of 1, of {args.max}, and Autoscale(1..{args.max}, idle_after={IDLE_AFTER:g}); "
        f"{os.cpu_count()} cores, {args.rounds} rounds"
    )
    cells: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}

    def run(workload: str, variant: str) -> float:
        got = child.run_cell("bench.elastic", variant, args.max, 0, timeout=600)
        cells[variant].append(got)
        return got["burst"]

    child.interleave(args.rounds, ["burst"], VARIANTS, run)
    time_ratio = [a["burst"] / m["burst"] for a, m in zip(cells["auto"], cells["max"], strict=True)]
    held_ratio = [
        a["worker_seconds"] / m["worker_seconds"]
        for a, m in zip(cells["auto"], cells["min"], strict=True)
    ]
    print()
    for variant in VARIANTS:
        rows = cells[variant]
        print(
            f"{variant:5} burst {child.spread([r['burst'] for r in rows], 3)} s, worker-seconds "
            f"{child.spread([r['worker_seconds'] for r in rows], 3)}, peak "
            f"{max(r['peak'] for r in rows):.0f}, end {max(r['end'] for r in rows):.0f} workers"
        )
    ok = True
    for label, ratios, target in (
        ("burst time, auto / max", time_ratio, TARGETS["time"]),
        ("worker-seconds, auto / min", held_ratio, TARGETS["worker_seconds"]),
    ):
        passed = statistics.median(ratios) <= target
        ok = ok and passed
        verdict = "PASS" if passed else "FAIL"
        print(f"{label:27} {child.spread(ratios, 3)}  {verdict} (target <= {target})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"max": args.max, "rounds": args.rounds, "cells": cells}, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
