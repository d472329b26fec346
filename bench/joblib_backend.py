"""joblib on mppool against joblib's default (loky), interleaved round by round.

    python -m bench.joblib_backend                 # 5 rounds, 2 workers
    python -m bench.joblib_backend --rounds 9 --workers 4

Two workloads, both through ``joblib.Parallel(n_jobs=N)`` with its default (auto) batching:

* ``tiny``: 20,000 calls of ``square`` — per-call overhead and joblib's batching;
* ``2ms``: 600 calls that each burn 2 ms of CPU — scheduling of real work.

Each cell (round, workload, backend) runs in a child interpreter of its own, so neither
backend's kept workers outlive their cell; inside it one warm-up call, then the median of
three timed calls. The backends alternate within every round, the order flipped each round;
the per-round ratio is loky's time over mppool's (above 1: mppool is faster), reported as the
median with its range.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any

from bench import child
from bench import workloads as wl

WORKLOADS = {"tiny": (20_000, None), "2ms": (600, 0.002)}
BACKENDS = ("mppool", "loky")
REPEATS = 3


def cell(backend: str, workload: str, workers: int) -> float:
    """Time one workload on one backend here (in a child); the median of ``REPEATS`` calls."""
    import joblib

    if backend == "mppool":
        import mppool.joblib  # noqa: F401  (registers the backend)
    n, seconds = WORKLOADS[workload]
    if seconds is None:
        calls = [joblib.delayed(wl.square)(i) for i in range(n)]
    else:
        calls = [joblib.delayed(wl.spin)(seconds) for _ in range(n)]
    times = []
    with joblib.parallel_config(backend=backend, n_jobs=workers):
        joblib.Parallel()(calls[: max(10, n // 10)])  # warm up the workers and the batching
        for _ in range(REPEATS):
            started = time.perf_counter()
            joblib.Parallel()(calls)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def run_cell(backend: str, workload: str, workers: int) -> float:
    return float(child.run_cell("bench.joblib_backend", backend, workload, workers)["seconds"])


def main(argv: list[str] | None = None) -> int:
    parser = child.arguments(__doc__ or "", ("BACKEND", "WORKLOAD", "WORKERS"), rounds=5)
    args = parser.parse_args(argv)
    if args.cell:
        backend, workload, workers = args.cell
        print(json.dumps({"seconds": cell(backend, workload, int(workers))}))
        return 0
    print(
        f"joblib.Parallel on mppool vs loky: {args.workers} workers, {os.cpu_count()} cores, "
        f"{args.rounds} rounds, backends alternating"
    )
    figures = child.interleave(
        args.rounds, list(WORKLOADS), BACKENDS, lambda w, b: run_cell(b, w, args.workers)
    )
    print()
    ok = True
    report: dict[str, Any] = {"workers": args.workers, "rounds": args.rounds, "workloads": {}}
    for workload, by in figures.items():
        ratios = [loky / mine for loky, mine in zip(by["loky"], by["mppool"], strict=True)]
        median = statistics.median(ratios)
        verdict = "PASS" if median >= 1.0 else "FAIL"
        ok = ok and median >= 1.0
        print(
            f"{workload:5}  mppool {statistics.median(by['mppool']):.3f} s, "
            f"loky {statistics.median(by['loky']):.3f} s; loky time / mppool time "
            f"{median:.2f} [{min(ratios):.2f}, {max(ratios):.2f}]  {verdict} (target >= 1)"
        )
        report["workloads"][workload] = {"times": by, "ratios": ratios}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
