"""A cluster pool against plain Dask and a local pool, on one ``LocalCluster``.

    python -m bench.cluster                         # 5 rounds
    python -m bench.cluster --rounds 7 --json cluster.json

One ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` serves every cell.
Three variants meet three workloads, interleaved round by round (the order reversed every
other round, so the machine's drift hits them alike):

* ``dask``: plain ``client.submit`` / ``client.map`` and ``client.gather``;
* ``cluster``: ``mppool.Pool(cluster=client)`` (a pool on each Dask worker);
* ``local``: ``mppool.Pool(2)`` on this machine, no Dask (for scale).

Workloads:

* ``submit``: ``N_SUBMIT`` no-op calls submitted one by one, then all results: the
  per-task overhead. Target: the cluster pool within 1.5x of plain Dask.
* ``tiny-map``: a map over ``N_MAP`` tiny items (``square``). Plain ``client.map`` makes a
  task per item; the cluster pool carries many items per Dask task. Target: at least 10x
  faster than ``client.map``.
* ``cpu``: ``N_CPU`` tasks of ``CPU_SECONDS`` of CPU each: real work, where the three
  should be close (the cluster's two workers are this machine's cores).

Each cell's pool or client is made before its clock starts and closed after it stops.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

from bench import child
from bench import workloads as wl

N_SUBMIT = 2000
N_MAP = 5000
N_CPU = 40
CPU_SECONDS = 0.05
WORKLOADS = ("submit", "tiny-map", "cpu")
VARIANTS = ("dask", "cluster", "local")


def _dask(client: Any, workload: str) -> float:
    started = time.perf_counter()
    if workload == "submit":
        futures = [client.submit(wl.noop, i, pure=False) for i in range(N_SUBMIT)]
    elif workload == "tiny-map":
        futures = client.map(wl.square, range(N_MAP), pure=False)
    else:
        futures = [client.submit(wl.spin, CPU_SECONDS, pure=False) for _ in range(N_CPU)]
    client.gather(futures)
    return time.perf_counter() - started


def _pool(pool: Any, workload: str) -> float:
    started = time.perf_counter()
    if workload == "submit":
        futures = [pool.submit(wl.noop, i) for i in range(N_SUBMIT)]
        for f in futures:
            f.result(timeout=600)
    elif workload == "tiny-map":
        for _ in pool.map(wl.square, range(N_MAP), timeout=600):
            pass
    else:
        futures = [pool.submit(wl.spin, CPU_SECONDS) for _ in range(N_CPU)]
        for f in futures:
            f.result(timeout=600)
    return time.perf_counter() - started


def measure(cluster: Any, workload: str, variant: str) -> float:
    """One cell: seconds for ``workload`` by ``variant``."""
    import distributed

    import mppool

    if variant == "local":
        with mppool.Pool(2) as pool:
            pool.submit(wl.noop).result(timeout=600)  # started before the clock
            return _pool(pool, workload)
    with distributed.Client(cluster, set_as_default=False) as client:
        if variant == "dask":
            client.submit(wl.noop, pure=False).result()
            return _dask(client, workload)
        with mppool.Pool(cluster=client) as pool:
            pool.submit(wl.noop).result(timeout=600)
            return _pool(pool, workload)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="also write the raw figures to this file")
    args = parser.parse_args(argv)
    import distributed

    print(
        f"LocalCluster(2 workers x 1 thread, processes); submit {N_SUBMIT} no-ops, map "
        f"{N_MAP} tiny items, {N_CPU} x {CPU_SECONDS:g} s CPU; {os.cpu_count()} cores, "
        f"{args.rounds} rounds"
    )
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        times = child.interleave(
            args.rounds, WORKLOADS, VARIANTS, lambda w, v: measure(cluster, w, v)
        )
    print()
    for workload in WORKLOADS:
        line = ", ".join(f"{v} {child.spread(times[workload][v])} s" for v in VARIANTS)
        print(f"{workload:9} {line}")
    checks = [
        ("submit: cluster / dask", "submit", "cluster", "dask", "<=", 1.5),
        ("tiny-map: dask / cluster", "tiny-map", "dask", "cluster", ">=", 10.0),
        ("cpu: cluster / dask", "cpu", "cluster", "dask", None, None),
        ("cpu: cluster / local", "cpu", "cluster", "local", None, None),
    ]
    ok = True
    print()
    for label, workload, top, bottom, op, target in checks:
        ratios = [a / b for a, b in zip(times[workload][top], times[workload][bottom], strict=True)]
        median = statistics.median(ratios)
        verdict = ""
        if op is not None and target is not None:
            passed = median <= target if op == "<=" else median >= target
            ok = ok and passed
            verdict = f"  {'PASS' if passed else 'FAIL'} (target {op} {target:g})"
        print(f"{label:25} {child.spread(ratios)}{verdict}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rounds": args.rounds, "times": times}, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
