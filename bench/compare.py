"""Compare mppool with its peers on the same machine, in one run, with every library's defaults.

Usage (from the repository root)::

    python -m bench.compare                 # full run: 5 rounds, 2 workers, all libraries
    python -m bench.compare --quick         # smaller sizes
    python -m bench.compare --libs mppool,multiprocessing --only submit,latency --rounds 3
    python -m bench.compare --json results.json
    python -m bench.compare --readme        # also rewrite the table in the root README.md

Workloads (``--only``): ``submit`` (per-task throughput), ``map`` (tiny items), three skewed
shapes ``skew-lognormal``, ``skew-pareto`` and ``skew-tail`` (heaviest last), ``uniform`` (2 ms
CPU tasks), ``latency`` (round trip) and ``startup`` (new pool to first result). Libraries
(``--libs``): ``mppool``, ``multiprocessing``, ``ppe`` (ProcessPoolExecutor), ``loky``,
``pebble``, ``mpire``.

Method: the run is made of rounds. In every round, for every workload, every library runs the
workload back to back with the others, in an order that is reversed every other round (ABC, then
CBA), so that a slow moment of the machine hits the libraries being compared alike and no library
always runs first or last. A ratio between two libraries is formed within a round only; the
report gives its median over rounds and its [min, max] range. Each cell (round, workload,
library) runs in its own child interpreter (:mod:`bench.cells`) on a fresh, warmed-up pool.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import psutil

if __package__ in (None, ""):
    # Run as a script (python bench/compare.py): make the ``bench`` package importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import workloads as wl
from bench.adapters import ADAPTERS, DEVIATIONS, REPO_ROOT, prepare_environment, reap_descendants
from bench.cells import MIN_TIMED_SECONDS, WORKLOADS, run_cell
from bench.readme_table import find_section, write_readme
from bench.report import (
    FOREIGN_LOAD_WARNING,
    SLOW_CELL_SECONDS,
    Cell,
    Figures,
    evaluate_targets,
    peer_ratios,
    print_summary,
    print_tables,
    required_libs,
)

#: Seconds the parent waits beyond ``--timeout`` before it kills a child that did not stop itself.
KILL_GRACE_SECONDS = 30.0


def build_config(args: argparse.Namespace) -> dict[str, Any]:
    """Translate command-line options into workload sizes.

    Args:
        args: Parsed command-line arguments.

    Returns:
        A JSON-serialisable configuration shared by the parent and every cell's child.
    """
    quick = args.quick
    return {
        "workers": args.workers,
        "quick": quick,
        "timeout": args.timeout,
        "seed": 1234,  # fixed, so every run and every library sees the same task lists
        "submit_n": 5_000 if quick else 20_000,
        # 200,000 is the size the target is defined on; the quick run shrinks it.
        "map_n": 50_000 if quick else 200_000,
        # The skewed shapes: about 2 s of CPU work each (1 s quick), heaviest tasks last.
        "skew_total": 1.0 if quick else 2.0,
        "lognormal_n": 2_000,
        "pareto_n": 1_000,
        "pareto_alpha": 1.16,
        "pareto_cap_share": 0.1,
        "tail_tiny_n": 3_000,
        "tail_tiny": 0.0001,
        # Three huge tasks per worker: an ideal pool still ends with every worker busy.
        "tail_huge_n": 3 * args.workers,
        "uniform_n": 400 if quick else 1_000,
        "uniform_each": 0.002,
        "latency_n": 300 if quick else 1_000,
        "startup_repeats": 3 if quick else 5,
    }


def _cpu_split() -> tuple[float, float]:
    """Return (CPU seconds used machine-wide, CPU seconds used by this run so far).

    "This run" is this process plus every descendant it has waited for, which covers the cell's
    child and, transitively, the pools it started.
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
    """Average cores used by processes outside this run between two :func:`_cpu_split` calls."""
    machine = after[0] - before[0]
    own = after[1] - before[1]
    return max(0.0, machine - own) / max(wall, 1e-9)


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


def run_child(lib: str, workload: str, cfg: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Run one cell in a fresh interpreter (``python -m bench.cells``) with a hard time limit.

    A child per cell rather than a long-lived child per library: it starts in about 50 ms, far
    less than any cell, and it guarantees that no cell inherits threads, signal handlers, leftover
    processes or a broken pool from an earlier one. The child runs in its own session, so on
    timeout (or if anything it started outlives it) the whole group is killed and nothing else.

    Args:
        lib: Library key.
        workload: Workload name.
        cfg: The run's configuration, already written to ``tmp / "config.json"``.
        tmp: Scratch directory of the run.

    Returns:
        The cell's figures, or ``error``.
    """
    out_path = tmp / f"{workload}-{lib}.json"
    log_path = tmp / f"{workload}-{lib}.log"
    out_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "bench.cells", "--lib", lib, "--workload", workload]
    cmd += ["--config", str(tmp / "config.json"), "--out", str(out_path)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        killed = False
        try:
            proc.wait(timeout=cfg["timeout"] + KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            killed = True
        finally:  # also on Ctrl-C: never leave a cell's processes behind
            stray = _kill_group(proc.pid)
            proc.wait()
    if out_path.exists():
        result: dict[str, Any] = json.loads(out_path.read_text())
    else:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        why = "killed after the time limit" if killed else f"exited with {proc.returncode}"
        result = {"error": f"child {why}, no result: " + " | ".join(tail), "timed_out": killed}
    if stray:
        result["stray_processes_killed"] = True
    return result


def run_one(
    lib: str, workload: str, cfg: dict[str, Any], tmp: Path, in_process: bool
) -> dict[str, Any]:
    """Run one cell and add its wall time and the CPU load of other processes meanwhile."""
    started = time.perf_counter()
    before = _cpu_split()
    cell = run_cell(lib, workload, cfg) if in_process else run_child(lib, workload, cfg, tmp)
    wall = time.perf_counter() - started
    cell["wall_seconds"] = wall
    cell["foreign_cpu_cores"] = _foreign_cores(before, _cpu_split(), wall)
    return cell


def _progress(rnd: int, rounds: int, workload: str, cells: list[Cell]) -> None:
    parts = []
    for cell in cells:
        if "skipped" in cell:
            continue
        text = f"{cell['lib']} {cell['wall_seconds']:.1f} s"
        if "error" in cell:
            text += " ERROR"
        if cell["foreign_cpu_cores"] > FOREIGN_LOAD_WARNING:
            text += f" (others used {cell['foreign_cpu_cores']:.2f} cores)"
        parts.append(text)
    print(f"round {rnd}/{rounds}  {workload:<14} " + ", ".join(parts), flush=True)


def run_rounds(
    cfg: dict[str, Any], libs: list[str], workloads: list[str], rounds: int, in_process: bool
) -> list[Cell]:
    """Run every (round, workload, library) cell, alternating the library order every round.

    Args:
        cfg: The run's configuration.
        libs: Selected libraries, in canonical order.
        workloads: Selected workloads.
        rounds: Number of rounds.
        in_process: Run the cells in this process (debugging only: no isolation).

    Returns:
        Every cell, including skipped ones, with ``round``, ``workload``, ``lib`` and
        ``position`` (0 = ran first among the libraries for that workload in that round).
    """
    cells: list[Cell] = []
    first_round_only: dict[tuple[str, str], str] = {}
    with tempfile.TemporaryDirectory(prefix="mppool-bench-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "config.json").write_text(json.dumps(cfg))
        for rnd in range(1, rounds + 1):
            order = libs if rnd % 2 == 1 else libs[::-1]
            for workload in workloads:
                this_round = []
                for position, lib in enumerate(order):
                    key = {"round": rnd, "workload": workload, "lib": lib, "position": position}
                    if (workload, lib) in first_round_only:
                        why = first_round_only[(workload, lib)]
                        this_round.append({**key, "skipped": f"{why}; run in round 1 only"})
                        continue
                    cell = {**key, **run_one(lib, workload, cfg, tmp, in_process)}
                    this_round.append(cell)
                    slow = cell["wall_seconds"] > SLOW_CELL_SECONDS or cell.get("timed_out")
                    if rnd == 1 and slow and lib not in required_libs(workload):
                        first_round_only[(workload, lib)] = (
                            "timed out in round 1"
                            if cell.get("timed_out")
                            else f"took {cell['wall_seconds']:.0f} s in round 1"
                        )
                cells.extend(this_round)
                _progress(rnd, rounds, workload, this_round)
    return cells


def _split(value: str, allowed: tuple[str, ...] | list[str], what: str) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})")
    # Keep the canonical order regardless of the order given on the command line.
    return [v for v in allowed if v in chosen]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="worker processes per pool")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes for a short run")
    parser.add_argument(
        "--only", default=",".join(WORKLOADS), help=f"comma-separated subset of {WORKLOADS}"
    )
    parser.add_argument(
        "--libs", default=",".join(ADAPTERS), help=f"comma-separated subset of {list(ADAPTERS)}"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the raw results to PATH")
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="seconds allowed per cell (default 180)"
    )
    parser.add_argument(
        "--readme",
        action="store_true",
        help="rewrite the table between the bench-table markers of the root README.md",
    )
    parser.add_argument(
        "--readme-path", type=Path, default=REPO_ROOT / "README.md", help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run every cell in this process (for debugging; no isolation)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def _shown_command(argv: list[str]) -> str:
    """The command line that reproduces the figures: without the output options."""
    shown: list[str] = []
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
        elif arg in ("--json", "--readme-path"):
            skip_value = True
        elif arg != "--readme" and not arg.startswith(("--json=", "--readme-path=")):
            shown.append(arg)
    return shlex.join(["python", "-m", "bench.compare", *shown])


def _meta(argv: list[str], rate: float) -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "system": platform.system(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="minutes"),
        "command": _shown_command(argv),
        "spin_iterations_per_second": rate,
    }


def print_header(meta: dict[str, Any], cfg: dict[str, Any], libs: list[str], rounds: int) -> None:
    """Print the machine, the settings and the method, and warn if the machine is busy."""
    print(
        f"mppool comparison  |  cpu cores: {meta['cpu_count']}  |  workers: {cfg['workers']}  |  "
        f"python {meta['python']} ({meta['implementation']})  |  {meta['system']} "
        f"{meta['machine']}  |  {meta['date']}  |  rounds: {rounds}"
        + ("  |  quick" if cfg["quick"] else "")
    )
    print(
        "A comparison of defaults: every library runs with its default settings (its own map "
        "chunking, start method, queues) on a fresh pool warmed up before timing. Within each "
        "round the libraries run each workload back to back, in an order reversed every round; "
        "ratios are formed within a round, then summarised as median [min, max] over rounds. "
        f"A timed section repeats until {MIN_TIMED_SECONDS:.0f} s is spent (at most 5 times) "
        f"and the cell reports the median. Cells slower than {SLOW_CELL_SECONDS:.0f} s in round 1 "
        "run in round 1 only, except for mppool and the baselines of its targets."
    )
    for lib in libs:
        if lib in DEVIATIONS:
            print(f"  note, {lib}: {DEVIATIONS[lib]}")
    rate = meta["spin_iterations_per_second"]
    print(f"spin calibration: {rate / 1e6:.2f} M iterations per CPU-second", flush=True)
    busy = psutil.cpu_percent(interval=0.5)
    if busy > 10:
        print(
            f"warning: the CPU was {busy:.0f}% busy before the run started; other processes "
            "compete with the pools and the figures will be noisy",
            flush=True,
        )


def compile_bytecode() -> None:
    """Compile mppool's bytecode before timing, as pip does when it installs a package.

    An editable install has none, and an interpreter started with PYTHONDONTWRITEBYTECODE
    (as on the reference VM) never writes it, so every fresh interpreter mppool starts would
    otherwise compile its modules again: a cost no installed copy pays. The peers come from
    wheels, compiled at installation.
    """
    import compileall

    import mppool

    for folder in mppool.__path__:
        compileall.compile_dir(folder, quiet=1)


def main(argv: list[str] | None = None) -> None:
    """Run the comparison, print the tables and the target summary."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    prepare_environment()
    compile_bytecode()
    workloads = _split(args.only, WORKLOADS, "workload")
    libs = _split(args.libs, list(ADAPTERS), "library")
    if args.readme:
        find_section(args.readme_path)  # fail now rather than after the run
    cfg = build_config(args)
    meta = _meta(argv, wl.publish_calibration())
    print_header(meta, cfg, libs, args.rounds)

    started = time.perf_counter()
    cells = run_rounds(cfg, libs, workloads, args.rounds, args.in_process)
    figs = Figures(cells, args.rounds)
    print_tables(cfg, figs, libs, workloads)
    targets = evaluate_targets(figs, workloads, libs) if "mppool" in libs else {}
    print_summary(targets, figs)
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")
    if args.json:
        payload = {
            "meta": {
                **meta,
                "deviations_from_defaults": {k: v for k, v in DEVIATIONS.items() if k in libs},
            },
            "config": {**cfg, "only": workloads, "libs": libs, "rounds": args.rounds},
            "cells": cells,
            "targets": targets,
            "peer_ratios": peer_ratios(figs, libs, workloads),
        }
        Path(args.json).write_text(json.dumps(payload, indent=1))
        print(f"raw results written to {args.json}")
    if args.readme:
        write_readme(args.readme_path, meta, cfg, figs, libs, workloads, targets)
        print(f"table written to {args.readme_path}")
    with suppress(Exception):
        reap_descendants(timeout=2.0)


if __name__ == "__main__":
    main()
