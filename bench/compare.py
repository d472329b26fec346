"""Compare mppool with its peers on the same machine, in one run, with every library's defaults.

Usage (from the repository root)::

    python -m bench.compare                 # full run, 2 workers, all libraries
    python -m bench.compare --quick         # smaller sizes, about a minute on 2 cores
    python -m bench.compare --libs mppool,multiprocessing --only submit,latency
    python -m bench.compare --json results.json

Workloads (``--only``): ``submit`` (per-task throughput), ``map`` (tiny items), ``skewed``
(heavy-tailed durations, heaviest last), ``uniform`` (2 ms CPU tasks), ``latency`` (round trip).
Libraries (``--libs``): ``mppool``, ``multiprocessing``, ``ppe`` (ProcessPoolExecutor), ``loky``,
``pebble``, ``mpire``.

Each library runs in a fresh child interpreter, so no library inherits threads, signal handlers
or leftover processes from another, and a library that hangs or crashes costs only its own cells.
Inside the child each workload gets its own pool, created and warmed up before the clock starts.
Short timed sections are repeated and the median reported (see ``MIN_TIMED_SECONDS``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil

if __package__ in (None, ""):
    # Run as a script (python bench/compare.py): make the ``bench`` package importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import workloads as wl
from bench.adapters import (
    ADAPTERS,
    DEVIATIONS,
    REPO_ROOT,
    PoolAdapter,
    prepare_environment,
    reap_descendants,
)

WORKLOADS = ("submit", "map", "skewed", "uniform", "latency")

#: Seed of the skewed duration list; fixed so every run and every library sees the same tasks.
SKEW_SEED = 1234

#: Targets for mppool (from the project's performance goals), used in the summary.
TARGETS = {
    "submit": "submit throughput >= 2x multiprocessing.Pool.apply_async",
    "map": "map time <= multiprocessing.Pool.map (speed ratio >= 1x)",
    "skewed": "time / lower bound <= 1.15",
    "uniform": "efficiency >= 97% of ideal N-fold speedup",
    "latency": "p50 <= ProcessPoolExecutor p50 and p99 <= 400 us",
}


def build_config(args: argparse.Namespace) -> dict[str, Any]:
    """Translate command-line options into workload sizes.

    Args:
        args: Parsed command-line arguments.

    Returns:
        A JSON-serialisable configuration shared by the parent and the per-library children.
    """
    quick = args.quick
    return {
        "workers": args.workers,
        "quick": quick,
        "timeout": args.timeout,
        "submit_n": 5_000 if quick else 20_000,
        # 200,000 is the size the target is defined on; the quick run shrinks it because the
        # executors' default map (chunksize=1) takes tens of seconds at that size.
        "map_n": 50_000 if quick else 200_000,
        "skewed_n": 2_000,
        "skewed_total": 1.0 if quick else 2.0,
        "uniform_n": 400 if quick else 1_000,
        "uniform_each": 0.002,
        "latency_n": 300 if quick else 1_000,
    }


# --------------------------------------------------------------------------------------------
# Child side: run the workloads of one library.
# --------------------------------------------------------------------------------------------


class WorkloadTimeout(Exception):
    """Raised in the main thread when a workload exceeds its time budget."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`WorkloadTimeout` in the main thread if the block runs longer than ``seconds``.

    A real timer signal is used because a pool that hangs is usually blocked in a lock or pipe
    read in the main thread, which a signal handler can interrupt but a watchdog thread cannot.
    """

    def _expire(signum: int, frame: object) -> None:
        raise WorkloadTimeout(f"no result within {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# Warm-up: a few short CPU tasks per worker, issued at once, make lazily-started pools (such as
# ProcessPoolExecutor) start every worker and let each import the workload module. Each warm-up
# uses only the kind of call that is about to be timed: mpire, for one, breaks when a kept-alive
# pool that served apply_async is then given a map (arguments arrive mangled).


def _warm_submit(pool: PoolAdapter, fn: Callable[[Any], Any]) -> None:
    handles = [pool.submit(wl.spin, 0.01) for _ in range(2 * pool.workers)]
    for handle in handles:
        pool.result(handle)
    for i in range(200):
        pool.result(pool.submit(fn, i))


def _warm_map(pool: PoolAdapter, fn: Callable[[Any], Any], sample: list[Any]) -> None:
    pool.map(wl.spin, [0.01] * (2 * pool.workers))
    pool.map(fn, sample)


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise RuntimeError(f"wrong results: {what}")


#: A timed section is repeated until this much time has been spent on it (or MAX_REPEATS is
#: reached), and the median is reported. Fast pools finish a workload in milliseconds, where one
#: scheduler hiccup would dominate a single sample; slow ones (an executor's chunksize=1 map
#: takes seconds) run once and cost no extra time.
MIN_TIMED_SECONDS = 1.0
MAX_REPEATS = 5


def _timed_median(run: Callable[[], None]) -> tuple[float, list[float]]:
    times: list[float] = []
    while len(times) < MAX_REPEATS and sum(times) < MIN_TIMED_SECONDS:
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def run_submit(pool: PoolAdapter, cfg: dict[str, Any]) -> dict[str, Any]:
    """Per-task submit throughput: submit N no-op tasks one by one, then collect every result."""
    n = cfg["submit_n"]
    _warm_submit(pool, wl.noop)

    def run() -> None:
        handles = [pool.submit(wl.noop, i) for i in range(n)]
        results = [pool.result(h) for h in handles]
        _check(results[-1] == n - 1 and len(results) == n, "submit results")

    elapsed, times = _timed_median(run)
    return {
        "n": n,
        "seconds": elapsed,
        "tasks_per_s": n / elapsed,
        "call": pool.submit_call,
        "repeats": times,
    }


def run_map(pool: PoolAdapter, cfg: dict[str, Any]) -> dict[str, Any]:
    """``map`` of many tiny items with the library's default chunking."""
    n = cfg["map_n"]
    items = list(range(n))
    _warm_map(pool, wl.square, list(range(2_000)))

    def run() -> None:
        results = pool.map(wl.square, items)
        _check(len(results) == n and results[-1] == (n - 1) ** 2, "map results")

    elapsed, times = _timed_median(run)
    return {"n": n, "seconds": elapsed, "items_per_s": n / elapsed, "repeats": times}


def _run_spin_map(pool: PoolAdapter, durations: list[float]) -> dict[str, Any]:
    _warm_map(pool, wl.spin, [0.0005] * 20)

    def run() -> None:
        results = pool.map(wl.spin, durations)
        _check(results == durations, "spin map results or order")

    elapsed, times = _timed_median(run)
    return {"n": len(durations), "seconds": elapsed, "repeats": times}


def run_skewed(pool: PoolAdapter, cfg: dict[str, Any]) -> dict[str, Any]:
    """``map`` over heavy-tailed CPU durations sorted so that the heaviest come last."""
    return _run_spin_map(pool, wl.skewed_durations(cfg["skewed_n"], cfg["skewed_total"], SKEW_SEED))


def run_uniform(pool: PoolAdapter, cfg: dict[str, Any]) -> dict[str, Any]:
    """``map`` over identical ~2 ms CPU tasks."""
    return _run_spin_map(pool, wl.uniform_durations(cfg["uniform_n"], cfg["uniform_each"]))


def run_latency(pool: PoolAdapter, cfg: dict[str, Any]) -> dict[str, Any]:
    """Round trip of one no-op task at a time on an otherwise idle pool."""
    n = cfg["latency_n"]
    _warm_submit(pool, wl.noop)
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


RUNNERS: dict[str, Callable[[PoolAdapter, dict[str, Any]], dict[str, Any]]] = {
    "submit": run_submit,
    "map": run_map,
    "skewed": run_skewed,
    "uniform": run_uniform,
    "latency": run_latency,
}


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run_library(lib: str, cfg: dict[str, Any], only: list[str]) -> dict[str, Any]:
    """Run the selected workloads for one library, each on a fresh, warmed-up pool.

    Errors and timeouts are recorded per workload instead of propagating, so one failure
    costs one cell of the table.

    Args:
        lib: Adapter key from :data:`bench.adapters.ADAPTERS`.
        cfg: Configuration from :func:`build_config`.
        only: Workload names to run.

    Returns:
        ``{"workloads": {name: figures}}``, where figures may instead hold ``"error"`` and
        may list ``"leftover_processes"`` that were still alive after the pool's shutdown.
    """
    adapter_cls = ADAPTERS[lib]
    out: dict[str, Any] = {"workloads": {}}
    for name in only:
        pool: PoolAdapter | None = None
        try:
            with time_limit(cfg["timeout"]):
                pool = adapter_cls(cfg["workers"])
                out["workloads"][name] = RUNNERS[name](pool, cfg)
                pool.shutdown()
                pool = None
        except Exception as exc:  # any failure of a peer becomes a table cell
            out["workloads"][name] = {
                "error": _error_text(exc),
                "traceback": traceback.format_exc(),
            }
        finally:
            if pool is not None:
                # The reaper below is the last resort if even an abort fails or hangs.
                with suppress(Exception), time_limit(15):
                    pool.abort()
        # Anything still alive after a graceful shutdown is worth knowing about, except the
        # resource trackers, which by design live until this process exits.
        leftovers = reap_descendants(timeout=2.0, ignore=("resource_tracker",))
        if leftovers:
            out["workloads"][name]["leftover_processes"] = leftovers
    return out


def child_main(args: argparse.Namespace) -> None:
    """Entry point of the per-library child interpreter."""
    cfg = json.loads(Path(args.child_config).read_text())
    try:
        result = run_library(args.child, cfg, cfg["only"])
    except BaseException as exc:  # report, never hang the parent
        result = {"error": _error_text(exc), "traceback": traceback.format_exc(), "workloads": {}}
    Path(args.child_out).write_text(json.dumps(result))
    reap_descendants(timeout=0.5)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: a misbehaving pool's non-daemon threads must not keep this
    # process (and with it the whole comparison) alive.
    os._exit(0)


# --------------------------------------------------------------------------------------------
# Parent side: serial baselines, one child per library, the report.
# --------------------------------------------------------------------------------------------


def measure_serial(cfg: dict[str, Any], only: list[str]) -> dict[str, Any]:
    """Run the CPU workloads in this process, without any pool, to get the baselines.

    The skewed lower bound is computed from the *measured* duration of every task rather than
    from the nominal list, so a calibration that is a few percent off cannot flatter any pool.

    Durations are CPU time of this thread (``thread_time``), not wall time: on an idle machine
    the two agree, and on a busy one the baseline is not inflated by someone else's load (which
    would make every pool look more efficient than it is).
    """
    serial: dict[str, Any] = {}
    clock = time.thread_time
    if "skewed" in only:
        durations = wl.skewed_durations(cfg["skewed_n"], cfg["skewed_total"], SKEW_SEED)
        measured = []
        for d in durations:
            start = clock()
            wl.spin(d)
            measured.append(clock() - start)
        serial["skewed"] = {
            "serial_seconds": sum(measured),
            "longest_task": max(measured),
            "lower_bound": wl.lower_bound(measured, cfg["workers"]),
        }
    if "uniform" in only:
        durations = wl.uniform_durations(cfg["uniform_n"], cfg["uniform_each"])
        start = clock()
        for d in durations:
            wl.spin(d)
        serial["uniform"] = {"serial_seconds": clock() - start}
    return serial


#: Average number of cores used by processes outside this run above which figures are flagged.
FOREIGN_LOAD_WARNING = 0.1


def _cpu_split() -> tuple[float, float]:
    """Return (CPU seconds used machine-wide, CPU seconds used by this run so far).

    "This run" is this process plus every descendant it has waited for, which covers the
    per-library child and, transitively, the pools it started.
    """
    times = psutil.cpu_times()
    machine = sum(times) - times.idle - getattr(times, "iowait", 0.0)
    # steal/guest time are not work done on this machine's behalf
    machine -= getattr(times, "steal", 0.0) + getattr(times, "guest", 0.0)
    machine -= getattr(times, "guest_nice", 0.0)
    own = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        own += usage.ru_utime + usage.ru_stime
    return machine, own


def _foreign_cores(before: tuple[float, float], after: tuple[float, float], wall: float) -> float:
    """Average cores used by processes outside this run between two :func:`_cpu_split` calls.

    On a shared machine, someone else's build or test run silently halves a 2-core benchmark;
    this makes that visible next to the figures instead of leaving it to guesswork.
    """
    machine = after[0] - before[0]
    own = after[1] - before[1]
    return max(0.0, machine - own) / max(wall, 1e-9)


def run_child(lib: str, cfg: dict[str, Any], only: list[str]) -> dict[str, Any]:
    """Run :func:`run_library` for ``lib`` in a fresh interpreter, with a hard time limit.

    The child is started in its own session, so on timeout (or if anything it started outlives
    it) the whole process group can be killed without touching anything else.
    """
    with tempfile.TemporaryDirectory(prefix="mppool-bench-") as tmp:
        cfg_path = Path(tmp, "config.json")
        out_path = Path(tmp, "result.json")
        log_path = Path(tmp, "child.log")
        cfg_path.write_text(json.dumps({**cfg, "only": only}))
        cmd = [
            sys.executable,
            "-m",
            "bench.compare",
            "--child",
            lib,
            "--child-config",
            str(cfg_path),
            "--child-out",
            str(out_path),
        ]
        budget = cfg["timeout"] * (len(only) + 1) + 30
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=budget)
            stray = _kill_group(proc.pid)
            proc.wait()
        if out_path.exists():
            result: dict[str, Any] = json.loads(out_path.read_text())
        else:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            result = {
                "error": f"child exited with {proc.returncode} and no result: " + " | ".join(tail),
                "workloads": {},
            }
        if stray:
            result["stray_processes_killed"] = True
        return result


def _kill_group(pgid: int) -> bool:
    """SIGKILL every process left in a process group; return whether any was there."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def _fmt_ratio(ratio: float) -> str:
    if math.isnan(ratio):  # the baseline did not run or failed
        return "-"
    # Three decimals near 1, so that a ratio just short of a target does not print as "1.00x".
    return f"{ratio:.3f}x" if ratio >= 0.1 else f"{ratio:.2g}x"


def _fmt_num(value: float, unit: str = "") -> str:
    if value >= 100:
        text = f"{value:,.0f}"
    elif value >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3f}"
    return f"{text}{unit}"


def _cell(results: dict[str, Any], lib: str, name: str) -> dict[str, Any] | None:
    lib_result = results.get(lib, {})
    return lib_result.get("workloads", {}).get(name)


def _err(cell: dict[str, Any] | None, lib_result: dict[str, Any]) -> str | None:
    if cell is None:
        return "ERROR: " + lib_result.get("error", "not run")[:90]
    if "error" in cell:
        return "ERROR: " + cell["error"][:90]
    return None


def report(
    cfg: dict[str, Any],
    libs: list[str],
    only: list[str],
    serial: dict[str, Any],
    results: dict[str, Any],
) -> dict[str, Any]:
    """Print one table per workload and a target summary; return the derived ratios."""
    ratios: dict[str, dict[str, float]] = {name: {} for name in only}

    def table(title: str, columns: list[str], rows: list[list[str]]) -> None:
        print(f"\n== {title}")
        # Error rows are printed free-form, so they do not widen the columns.
        sized = [r for r in rows if not r[1].startswith("ERROR")]
        widths = [max([len(c), *(len(r[i]) for r in sized)]) for i, c in enumerate(columns)]
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
        print("  ".join("-" * w for w in widths))
        for r in rows:
            if r[1].startswith("ERROR"):
                print(f"{r[0].ljust(widths[0])}  {r[1]}")
            else:
                print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())

    def label(lib: str) -> str:
        return ADAPTERS[lib].label

    def figure(lib: str, name: str, key: str) -> float | None:
        cell = _cell(results, lib, name)
        if cell is None or "error" in cell:
            return None
        return float(cell[key])

    if "submit" in only:
        base = figure("multiprocessing", "submit", "tasks_per_s")
        rows = []
        for lib in libs:
            cell = _cell(results, lib, "submit")
            err = _err(cell, results.get(lib, {}))
            if err or cell is None:
                rows.append([label(lib), err or "", "", ""])
                continue
            ratio = cell["tasks_per_s"] / base if base else float("nan")
            if base:
                ratios["submit"][lib] = ratio
            rows.append(
                [label(lib), cell["call"], _fmt_num(cell["tasks_per_s"]), _fmt_ratio(ratio)]
            )
        table(
            f"per-task submit: {cfg['submit_n']:,} no-op tasks (higher is better)",
            ["library", "call", "tasks/s", "vs mp.apply_async"],
            rows,
        )

    if "map" in only:
        base = figure("multiprocessing", "map", "seconds")
        rows = []
        for lib in libs:
            cell = _cell(results, lib, "map")
            err = _err(cell, results.get(lib, {}))
            if err or cell is None:
                rows.append([label(lib), err or "", "", ""])
                continue
            ratio = base / cell["seconds"] if base else float("nan")
            if base:
                ratios["map"][lib] = ratio
            rows.append(
                [
                    label(lib),
                    _fmt_num(cell["seconds"], " s"),
                    _fmt_num(cell["items_per_s"]),
                    _fmt_ratio(ratio),
                ]
            )
        table(
            f"map of {cfg['map_n']:,} tiny items (square), default settings "
            "(speed ratio > 1 means faster than mp)",
            ["library", "time", "items/s", "speed vs mp.map"],
            rows,
        )

    if "skewed" in only and "skewed" in serial:
        bound = serial["skewed"]["lower_bound"]
        rows = []
        for lib in libs:
            cell = _cell(results, lib, "skewed")
            err = _err(cell, results.get(lib, {}))
            if err or cell is None:
                rows.append([label(lib), err or "", ""])
                continue
            ratio = cell["seconds"] / bound
            ratios["skewed"][lib] = ratio
            rows.append([label(lib), _fmt_num(cell["seconds"], " s"), f"{ratio:.3f}"])
        table(
            f"skewed: {cfg['skewed_n']:,} heavy-tailed CPU tasks, heaviest last, "
            f"{serial['skewed']['serial_seconds']:.2f} s of work, longest task "
            f"{serial['skewed']['longest_task'] * 1e3:.1f} ms; lower bound {bound:.3f} s "
            "(lower is better)",
            ["library", "time", "time / lower bound"],
            rows,
        )

    if "uniform" in only and "uniform" in serial:
        serial_s = serial["uniform"]["serial_seconds"]
        rows = []
        for lib in libs:
            cell = _cell(results, lib, "uniform")
            err = _err(cell, results.get(lib, {}))
            if err or cell is None:
                rows.append([label(lib), err or "", ""])
                continue
            eff = serial_s / (cfg["workers"] * cell["seconds"])
            ratios["uniform"][lib] = eff
            rows.append([label(lib), _fmt_num(cell["seconds"], " s"), f"{eff * 100:.1f}%"])
        table(
            f"uniform: {cfg['uniform_n']:,} x {cfg['uniform_each'] * 1e3:.0f} ms CPU tasks "
            "via map; "
            f"serial in-process {serial_s:.3f} s (efficiency = serial / (N x time))",
            ["library", "time", "efficiency"],
            rows,
        )

    if "latency" in only:
        base = figure("ppe", "latency", "p50_us")
        rows = []
        for lib in libs:
            cell = _cell(results, lib, "latency")
            err = _err(cell, results.get(lib, {}))
            if err or cell is None:
                rows.append([label(lib), err or "", "", "", ""])
                continue
            ratio = cell["p50_us"] / base if base else float("nan")
            if base:
                ratios["latency"][lib] = ratio
            rows.append(
                [
                    label(lib),
                    _fmt_num(cell["p50_us"], " us"),
                    _fmt_num(cell["p99_us"], " us"),
                    _fmt_num(cell["max_us"], " us"),
                    _fmt_ratio(ratio),
                ]
            )
        table(
            f"round-trip latency: {cfg['latency_n']:,} sequential submit -> result on an idle pool "
            "(lower is better)",
            ["library", "p50", "p99", "max", "p50 vs PPE"],
            rows,
        )

    if "mppool" in libs:
        print("\n== mppool targets")
        for name in only:
            print(f"{name:<8} {_verdict(name, results, ratios):<5} {TARGETS[name]}")
        noisy = {
            lib: r["foreign_cpu_cores"]
            for lib, r in results.items()
            if r.get("foreign_cpu_cores", 0.0) > FOREIGN_LOAD_WARNING
        }
        if noisy:
            detail = ", ".join(f"{lib} {cores:.2f}" for lib, cores in noisy.items())
            print(
                "caution: other processes were using the CPU (average cores during the run of "
                f"{detail}); verdicts from this run are not reliable"
            )
    for lib, lib_result in results.items():
        for name, cell in lib_result.get("workloads", {}).items():
            for proc in cell.get("leftover_processes", []):
                print(f"note: {lib}/{name}: still alive 2 s after shutdown, killed: {proc}")
    return ratios


def _verdict(name: str, results: dict[str, Any], ratios: dict[str, dict[str, float]]) -> str:
    value = ratios.get(name, {}).get("mppool")
    if value is None:
        return "n/a"
    if name == "submit":
        ok = value >= 2.0
    elif name == "map":
        ok = value >= 1.0
    elif name == "skewed":
        ok = value <= 1.15
    elif name == "uniform":
        ok = value >= 0.97
    else:
        cell = _cell(results, "mppool", "latency") or {}
        ppe = _cell(results, "ppe", "latency") or {}
        p50_ok = "p50_us" not in ppe or cell["p50_us"] <= ppe["p50_us"]
        ok = p50_ok and cell["p99_us"] <= 400
    return "PASS" if ok else "FAIL"


def _split(value: str, allowed: tuple[str, ...] | list[str], what: str) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})")
    # Keep the canonical order regardless of the order given on the command line.
    return [v for v in allowed if v in chosen]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="worker processes per pool")
    parser.add_argument("--quick", action="store_true", help="smaller sizes for a short run")
    parser.add_argument(
        "--only", default=",".join(WORKLOADS), help=f"comma-separated subset of {WORKLOADS}"
    )
    parser.add_argument(
        "--libs", default=",".join(ADAPTERS), help=f"comma-separated subset of {list(ADAPTERS)}"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the raw results to PATH")
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="seconds allowed per library and workload"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run every library in this process (for debugging; no isolation)",
    )
    # Internal: the per-library child interpreter.
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-config", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the comparison and print the report."""
    args = parse_args(argv)
    prepare_environment()
    if args.child:
        child_main(args)
        return
    only = _split(args.only, WORKLOADS, "workload")
    libs = _split(args.libs, list(ADAPTERS), "library")
    cfg = build_config(args)
    rate = wl.publish_calibration()

    print(
        f"mppool comparison  |  cpu cores: {os.cpu_count()}  |  workers: {cfg['workers']}  |  "
        f"python {platform.python_version()} ({platform.python_implementation()})  |  "
        f"{platform.system()} {platform.machine()}  |  "
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
        + ("  |  quick" if args.quick else "")
    )
    print(
        "A comparison of defaults: every library runs with its default settings (its own map "
        "chunking, start method, queues); pools are created and warmed up before timing; a "
        f"timed section repeats until {MIN_TIMED_SECONDS:.0f} s is spent (at most {MAX_REPEATS} "
        "times) and the median is shown."
    )
    for lib in libs:
        if lib in DEVIATIONS:
            print(f"  note, {lib}: {DEVIATIONS[lib]}")
    print(f"spin calibration: {rate / 1e6:.2f} M iterations per CPU-second", flush=True)
    busy = psutil.cpu_percent(interval=0.5)
    if busy > 10:
        print(
            f"warning: the CPU was {busy:.0f}% busy before the run started; other processes "
            "compete with the pools and the figures will be noisy",
            flush=True,
        )

    started = time.perf_counter()
    cpu_before = _cpu_split()
    serial = measure_serial(cfg, only)
    foreign = _foreign_cores(cpu_before, _cpu_split(), time.perf_counter() - started)
    if serial and foreign > FOREIGN_LOAD_WARNING:
        print(
            f"warning: other processes used {foreign:.2f} cores on average during the serial "
            "baselines",
            flush=True,
        )
    results: dict[str, Any] = {}
    for lib in libs:
        print(f"running {ADAPTERS[lib].label} ...", flush=True)
        lib_started = time.perf_counter()
        cpu_before = _cpu_split()
        if args.in_process:
            results[lib] = run_library(lib, {**cfg, "only": only}, only)
        else:
            results[lib] = run_child(lib, cfg, only)
        elapsed = time.perf_counter() - lib_started
        foreign = _foreign_cores(cpu_before, _cpu_split(), elapsed)
        results[lib]["foreign_cpu_cores"] = foreign
        problems = [n for n, c in results[lib].get("workloads", {}).items() if "error" in c]
        if "error" in results[lib]:
            problems.append(results[lib]["error"][:120])
        status = f" (errors: {', '.join(problems)})" if problems else ""
        print(f"  done in {elapsed:.1f} s{status}", flush=True)
        if foreign > FOREIGN_LOAD_WARNING:
            print(
                f"  warning: other processes used {foreign:.2f} cores on average meanwhile; "
                "these figures are noisy",
                flush=True,
            )

    ratios = report(cfg, libs, only, serial, results)
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")
    if args.json:
        payload = {
            "meta": {
                "cpu_count": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "date": datetime.datetime.now().astimezone().isoformat(),
                "spin_iterations_per_second": rate,
                "deviations_from_defaults": {k: v for k, v in DEVIATIONS.items() if k in libs},
            },
            "config": {**cfg, "only": only, "libs": libs},
            "serial": serial,
            "results": results,
            "ratios": ratios,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2))
        print(f"raw results written to {args.json}")
    reap_descendants(timeout=2.0)


if __name__ == "__main__":
    main()
