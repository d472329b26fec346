"""Task graphs: mppool's dependencies against Dask's local scheduler and resolving by hand.

    python -m bench.graphs                      # 5 rounds
    python -m bench.graphs --rounds 7 --json graphs.json

Three variants meet two graphs, interleaved round by round (the order reversed every other
round, so the machine's drift hits them alike), each with two worker processes:

* ``mppool``: ``pool.submit(f, fut)``, futures as arguments: the dispatcher holds each task
  until its inputs are done and forwards their results worker to worker;
* ``dask``: ``dask.delayed`` graphs computed with ``scheduler="processes"`` on a
  ``ProcessPoolExecutor(2)`` made once per cell (Dask's local scheduler, in this process,
  sends each ready task to the pool and gets each result back);
* ``by-hand``: ``concurrent.futures.ProcessPoolExecutor(2)``, each task submitted from this
  process once the results it needs have come back here.

Graphs:

* ``chain``: ``CHAIN`` tasks, each adding one to the previous result: all overhead, no
  parallelism (the latency of one hop after another).
* ``fan``: one root, ``FAN`` middle tasks that each take the root's result and do
  ``FAN_SECONDS`` of CPU, and a sink that takes all their results.

Target: mppool fastest on both. Each cell's pool is made (and warmed up) before its clock
starts and closed after it stops; a cell runs in a child interpreter of its own.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from bench import child
from bench import workloads as wl

CHAIN = 1000
FAN = 2000
FAN_SECONDS = 0.0005
GRAPHS = ("chain", "fan")
VARIANTS = ("mppool", "dask", "by-hand")


def step(x: int) -> int:
    return x + 1


def middle(root: int, i: int) -> int:
    wl.spin(FAN_SECONDS)
    return root + i


def sink(*values: int) -> int:
    return sum(values)


def expected(graph: str) -> int:
    return CHAIN if graph == "chain" else sum(1 + i for i in range(FAN))


def _mppool(graph: str) -> float:
    import mppool

    with mppool.Pool(2) as pool:
        pool.submit(wl.spin, 0.01).result(timeout=600)  # workers up, spin calibrated
        pool.submit(middle, 0, 0).result(timeout=600)
        started = time.perf_counter()
        if graph == "chain":
            fut = pool.submit(step, 0)
            for _ in range(CHAIN - 1):
                fut = pool.submit(step, fut)
        else:
            root = pool.submit(step, 0)
            fut = pool.submit(sink, *[pool.submit(middle, root, i) for i in range(FAN)])
        value = fut.result(timeout=600)
        elapsed = time.perf_counter() - started
    assert value == expected(graph), value
    return elapsed


def _dask(graph: str) -> float:
    import concurrent.futures

    import dask

    with concurrent.futures.ProcessPoolExecutor(2) as ex:
        list(ex.map(wl.spin, [0.01, 0.01]))
        dask.compute(dask.delayed(middle)(0, 0), scheduler="processes", pool=ex)
        started = time.perf_counter()
        if graph == "chain":
            node = dask.delayed(step)(0)
            for _ in range(CHAIN - 1):
                node = dask.delayed(step)(node)
        else:
            root = dask.delayed(step)(0)
            node = dask.delayed(sink)(*[dask.delayed(middle)(root, i) for i in range(FAN)])
        (value,) = dask.compute(node, scheduler="processes", pool=ex)
        elapsed = time.perf_counter() - started
    assert value == expected(graph), value
    return elapsed


def _by_hand(graph: str) -> float:
    import concurrent.futures

    with concurrent.futures.ProcessPoolExecutor(2) as ex:
        list(ex.map(wl.spin, [0.01, 0.01]))
        ex.submit(middle, 0, 0).result()
        started = time.perf_counter()
        if graph == "chain":
            value = 0
            for _ in range(CHAIN):
                value = ex.submit(step, value).result()
        else:
            root = ex.submit(step, 0).result()
            mids = [ex.submit(middle, root, i) for i in range(FAN)]
            value = ex.submit(sink, *[m.result() for m in mids]).result()
        elapsed = time.perf_counter() - started
    assert value == expected(graph), value
    return elapsed


def measure(graph: str, variant: str) -> float:
    """One cell: seconds for ``graph`` by ``variant`` (in this process)."""
    run = {"mppool": _mppool, "dask": _dask, "by-hand": _by_hand}[variant]
    return run(graph)


def main(argv: list[str] | None = None) -> int:
    parser = child.arguments(__doc__ or "", ("GRAPH", "VARIANT", "WORKERS"), 5)
    args = parser.parse_args(argv)
    if args.cell:
        graph, variant, _ = args.cell
        print(json_line(measure(graph, variant)))
        return 0
    wl.publish_calibration()  # one CPU rate for every worker of every variant
    print(
        f"chain of {CHAIN} tasks; fan-out/fan-in of {FAN} x {FAN_SECONDS:g} s; 2 workers; "
        f"{os.cpu_count()} cores, {args.rounds} rounds"
    )
    times = child.interleave(
        args.rounds,
        GRAPHS,
        VARIANTS,
        lambda g, v: float(child.run_cell("bench.graphs", g, v, 2)["seconds"]),
    )
    print()
    for graph in GRAPHS:
        line = ", ".join(f"{v} {child.spread(times[graph][v])} s" for v in VARIANTS)
        print(f"{graph:6} {line}")
    ok = True
    print()
    for graph in GRAPHS:
        for other in ("dask", "by-hand"):
            ratios = [
                a / b for a, b in zip(times[graph][other], times[graph]["mppool"], strict=True)
            ]
            passed = statistics.median(ratios) > 1.0
            ok = ok and passed
            label = f"{graph}: {other} / mppool"
            print(f"{label:24} {child.spread(ratios)}  {'PASS' if passed else 'FAIL'} (target > 1)")
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump({"rounds": args.rounds, "times": times}, f, indent=1)
    return 0 if ok else 1


def json_line(seconds: float) -> str:
    import json

    return json.dumps({"seconds": seconds})


if __name__ == "__main__":
    sys.exit(main())
