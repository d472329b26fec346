"""Figures of a ``bench.compare`` run: per-round ratios, mppool's targets, tables, summary.

A run is a list of *cells*, one per (round, workload, library): the dictionary a child wrote
(see :func:`bench.cells.run_cell`) plus ``round``, ``workload``, ``lib``, ``position`` (order in
the round), ``wall_seconds`` and ``foreign_cpu_cores``, or ``skipped`` for a cell that was not
run. A ratio between two libraries is only ever formed from cells of the same round, and every
figure is summarised as the median over rounds with its [min, max] range.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.adapters import ADAPTERS
from bench.cells import SKEW_SHAPES, skew_durations

Cell = dict[str, Any]

#: Average number of cores used by processes outside the run above which a cell is flagged.
FOREIGN_LOAD_WARNING = 0.1

#: A cell that takes longer than this in round 1 (an executor's chunksize=1 ``map`` of 200,000
#: items takes tens of seconds) is not run again, unless its library is needed for a target on
#: that workload (mppool, and multiprocessing or ProcessPoolExecutor as baselines); its figures
#: are marked "1 round".
SLOW_CELL_SECONDS = 10.0


class Figures:
    """Look-ups over the cells of one run."""

    def __init__(self, cells: Sequence[Cell], rounds: int) -> None:
        """Index the cells.

        Args:
            cells: Every cell of the run.
            rounds: Number of rounds the run had.
        """
        self.cells = list(cells)
        self.rounds = rounds
        self._index = {(c["round"], c["workload"], c["lib"]): c for c in self.cells}

    def raw(self, rnd: int, workload: str, lib: str) -> Cell | None:
        """The cell as recorded (with an error or a skip), or None if it is not in the run."""
        return self._index.get((rnd, workload, lib))

    def ok(self, rnd: int, workload: str, lib: str) -> Cell | None:
        """The cell if it ran and produced figures, else None."""
        cell = self.raw(rnd, workload, lib)
        if cell is None or "error" in cell or "skipped" in cell:
            return None
        return cell

    def values(self, workload: str, lib: str, key: str) -> list[float]:
        """``cell[key]`` for every round in which the cell produced figures."""
        found = (self.ok(r, workload, lib) for r in range(1, self.rounds + 1))
        return [float(c[key]) for c in found if c is not None]

    def paired(
        self, workload: str, lib: str, base: str, fn: Callable[[Cell, Cell], float]
    ) -> list[float]:
        """``fn(lib's cell, base's cell)`` for every round in which both produced figures."""
        out = []
        for r in range(1, self.rounds + 1):
            cell, base_cell = self.ok(r, workload, lib), self.ok(r, workload, base)
            if cell is not None and base_cell is not None:
                out.append(fn(cell, base_cell))
        return out

    def problems(self, workload: str, lib: str) -> tuple[list[tuple[int, str]], bool]:
        """Errors of a library on a workload, and whether later rounds were skipped as slow.

        Returns:
            ``([(round, error text), ...], skipped)``.
        """
        errors, skipped = [], False
        for r in range(1, self.rounds + 1):
            cell = self.raw(r, workload, lib)
            if cell is None:
                continue
            if "error" in cell:
                errors.append((r, str(cell["error"])))
            skipped = skipped or "skipped" in cell
        return errors, skipped


@dataclass(frozen=True)
class Target:
    """One of mppool's performance targets, judged per round and then on the median.

    Attributes:
        name: Short name used in the summary.
        workload: The workload it is measured on.
        goal: What the target says, for the summary.
        value: Figure of one round from mppool's cell and the baseline's cell of that round
            (an empty dictionary for a target without a baseline).
        baseline: Library whose same-round cell the figure needs, if any.
        higher_is_better: Direction of the comparison with ``threshold``.
        threshold: The figure that passes.
        fmt: Formats one figure, without its unit.
        unit: Unit appended to the median.
    """

    name: str
    workload: str
    goal: str
    value: Callable[[Cell, Cell], float]
    baseline: str | None
    higher_is_better: bool
    threshold: float
    fmt: Callable[[float], str]
    unit: str = ""

    def per_round(self, figs: Figures) -> list[tuple[int, float]]:
        """(round, figure) for every round in which mppool (and the baseline) produced figures."""
        out = []
        for r in range(1, figs.rounds + 1):
            cell = figs.ok(r, self.workload, "mppool")
            base = figs.ok(r, self.workload, self.baseline) if self.baseline else {}
            if cell is not None and base is not None:
                out.append((r, self.value(cell, base)))
        return out

    def passes(self, figure: float) -> bool:
        """Whether ``figure`` meets the target."""
        if self.higher_is_better:
            return figure >= self.threshold
        return figure <= self.threshold


def fmt_ratio(value: float) -> str:
    """A ratio with three decimals (so that 0.996 does not print as 1.00)."""
    return f"{value:.3f}" if value >= 0.1 else f"{value:.2g}"


def fmt_num(value: float) -> str:
    """A figure with about three significant digits, thousands separated."""
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return sig3(value)


def sig3(value: float) -> str:
    """Three significant digits, trailing zeros kept (``0.00500``, ``5.00``, ``174``)."""
    if value <= 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, 2 - math.floor(math.log10(value)))
    return f"{value:.{decimals}f}"


def fmt_rate(value: float) -> str:
    """A rate in thousands (``25.9k``) so that ranges stay short."""
    return f"{value / 1e3:.1f}k" if value >= 1e3 else f"{value:.0f}"


def stat(values: Sequence[float], fmt: Callable[[float], str], unit: str = "") -> str:
    """``median [min, max]`` over rounds, or the single value, or ``-`` for none.

    Args:
        values: One figure per round.
        fmt: Formats one figure.
        unit: Appended to the median.
    """
    if not values:
        return "-"
    text = fmt(statistics.median(values)) + unit
    if len(values) > 1:
        text += f" [{fmt(min(values))}, {fmt(max(values))}]"
    return text


def _skew_target(name: str) -> Target:
    return Target(
        name=name,
        workload=name,
        goal="time / lower bound <= 1.15",
        value=lambda c, b: c["ratio"],
        baseline=None,
        higher_is_better=False,
        threshold=1.15,
        fmt=fmt_ratio,
    )


#: mppool's targets, in summary order.
TARGETS: list[Target] = [
    Target(
        name="submit",
        workload="submit",
        goal="submit throughput >= 2x multiprocessing.Pool.apply_async",
        value=lambda c, b: c["tasks_per_s"] / b["tasks_per_s"],
        baseline="multiprocessing",
        higher_is_better=True,
        threshold=2.0,
        fmt=fmt_ratio,
        unit="x",
    ),
    Target(
        name="map",
        workload="map",
        goal="map speed >= 1x multiprocessing.Pool.map (mp time / mppool time)",
        value=lambda c, b: b["seconds"] / c["seconds"],
        baseline="multiprocessing",
        higher_is_better=True,
        threshold=1.0,
        fmt=fmt_ratio,
        unit="x",
    ),
    *(_skew_target(name) for name in SKEW_SHAPES),
    Target(
        name="uniform",
        workload="uniform",
        goal="efficiency = (task CPU / workers) / wall time >= 97%",
        value=lambda c, b: c["efficiency"],
        baseline=None,
        higher_is_better=True,
        threshold=0.97,
        fmt=lambda v: f"{v * 100:.1f}",
        unit="%",
    ),
    Target(
        name="latency-p50",
        workload="latency",
        goal="round-trip p50 <= ProcessPoolExecutor p50 (ratio <= 1)",
        value=lambda c, b: c["p50_us"] / b["p50_us"],
        baseline="ppe",
        higher_is_better=False,
        threshold=1.0,
        fmt=fmt_ratio,
    ),
    Target(
        name="latency-p99",
        workload="latency",
        goal="round-trip p99 <= 400 us",
        value=lambda c, b: c["p99_us"],
        baseline=None,
        higher_is_better=False,
        threshold=400.0,
        fmt=lambda v: f"{v:.0f}",
        unit=" us",
    ),
    Target(
        name="startup",
        workload="startup",
        goal="new pool to first result <= 60 ms",
        value=lambda c, b: c["ms"],
        baseline=None,
        higher_is_better=False,
        threshold=60.0,
        fmt=lambda v: f"{v:.1f}",
        unit=" ms",
    ),
]


def required_libs(workload: str) -> set[str]:
    """Libraries that must run ``workload`` in every round: mppool and its targets' baselines."""
    libs = {"mppool"}
    for target in TARGETS:
        if target.workload == workload and target.baseline:
            libs.add(target.baseline)
    return libs


def evaluate_targets(
    figs: Figures, workloads: Sequence[str], libs: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per-round figures, median, range and verdict of every target measured in this run.

    Args:
        figs: The run.
        workloads: Workloads that were selected.
        libs: Libraries that were selected.

    Returns:
        ``{target name: {"goal", "per_round": [{"round", "value"}, ...], "rounds", "median",
        "min", "max", "text", "verdict"}}``; ``text`` is ``median [min, max]`` formatted, and the
        verdict is PASS/FAIL on the median, or ``n/a`` without figures.
    """
    out: dict[str, dict[str, Any]] = {}
    for target in TARGETS:
        if target.workload not in workloads:
            continue
        rows = target.per_round(figs)
        values = [v for _, v in rows]
        entry: dict[str, Any] = {
            "goal": target.goal,
            "per_round": [{"round": r, "value": v} for r, v in rows],
            "rounds": len(values),
            "text": stat(values, target.fmt, target.unit) if values else "no figures",
            "verdict": "n/a",
        }
        if target.baseline and target.baseline not in libs:
            entry["text"] = f"needs --libs {target.baseline}"
        if values:
            median = statistics.median(values)
            entry.update(median=median, min=min(values), max=max(values))
            entry["verdict"] = "PASS" if target.passes(median) else "FAIL"
        out[target.name] = entry
    return out


def peer_ratios(
    figs: Figures, libs: Sequence[str], workloads: Sequence[str] = ("submit", "map", "latency")
) -> dict[str, dict[str, list[float]]]:
    """Same-round ratios of every library against the baseline of its workload.

    Returns:
        ``{"submit": {lib: [tasks/s over mp's, per round]}, "map": {lib: [mp time / time]},
        "latency": {lib: [p50 / PPE p50]}}``.
    """
    specs: dict[str, tuple[str, Callable[[Cell, Cell], float]]] = {
        "submit": ("multiprocessing", lambda c, b: c["tasks_per_s"] / b["tasks_per_s"]),
        "map": ("multiprocessing", lambda c, b: b["seconds"] / c["seconds"]),
        "latency": ("ppe", lambda c, b: c["p50_us"] / b["p50_us"]),
    }
    return {
        workload: {lib: figs.paired(workload, lib, base, fn) for lib in libs}
        for workload, (base, fn) in specs.items()
        if workload in workloads
    }


def label(lib: str) -> str:
    """The library's name for tables."""
    return ADAPTERS[lib].label


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

Columns = Callable[[str], list[str]]


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """Print a plain-text table; a row whose second field starts with ERROR is free-form."""
    print(f"\n== {title}")
    sized = [r for r in rows if not r[1].startswith("ERROR")]
    widths = [max([len(c), *(len(r[i]) for r in sized)]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in rows:
        if r[1].startswith("ERROR"):
            print(f"{r[0].ljust(widths[0])}  {r[1]}")
        else:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def rounds_text(figs: Figures, workload: str, lib: str) -> str:
    """How many rounds a library's figures come from; ``1 round`` marks a slow, skipped cell."""
    count = len(figs.values(workload, lib, "wall_seconds"))
    _, skipped = figs.problems(workload, lib)
    return "1 round" if skipped and count == 1 else str(count)


def _rows(figs: Figures, workload: str, libs: Sequence[str], cols: Columns) -> list[list[str]]:
    """One row per library: its label, ``cols(lib)``, its rounds; or its error.

    Errors in some rounds only are printed after the table by :func:`_print_errors`.
    """
    rows = []
    for lib in libs:
        if not figs.values(workload, lib, "wall_seconds"):
            errors, _ = figs.problems(workload, lib)
            text = f"ERROR: {errors[0][1][:100]}" if errors else "ERROR: not run"
            if len(errors) > 1:
                text += f" (all {len(errors)} rounds)"
            if figs.problems(workload, lib)[1]:
                text += " (not run again after round 1)"
            rows.append([label(lib), text])
            continue
        rows.append([label(lib), *cols(lib), rounds_text(figs, workload, lib)])
    return rows


def _print_errors(figs: Figures, workload: str, libs: Sequence[str]) -> None:
    for lib in libs:
        errors, _ = figs.problems(workload, lib)
        if errors and figs.values(workload, lib, "wall_seconds"):
            for rnd, text in errors:
                print(f"  {label(lib)}, round {rnd}: ERROR: {text[:100]}")


def _vs(ratios: dict[str, list[float]], lib: str, base: str, unit: str = "") -> str:
    """A library's same-round ratios against ``base``; the baseline's own row says so."""
    return "baseline" if lib == base else stat(ratios[lib], fmt_ratio, unit)


def _submit_table(cfg: dict[str, Any], figs: Figures, libs: Sequence[str]) -> None:
    ratios = peer_ratios(figs, libs)["submit"]

    def cols(lib: str) -> list[str]:
        return [
            ADAPTERS[lib].submit_call,
            stat(figs.values("submit", lib, "tasks_per_s"), fmt_rate),
            _vs(ratios, lib, "multiprocessing", "x"),
        ]

    print_table(
        f"submit: {cfg['submit_n']:,} no-op tasks submitted one by one, then every result "
        "collected (higher is better)",
        ["library", "call", "tasks/s", "vs mp.apply_async", "rounds"],
        _rows(figs, "submit", libs, cols),
    )


def _map_table(cfg: dict[str, Any], figs: Figures, libs: Sequence[str]) -> None:
    ratios = peer_ratios(figs, libs)["map"]

    def cols(lib: str) -> list[str]:
        return [
            stat(figs.values("map", lib, "seconds"), fmt_num, " s"),
            _vs(ratios, lib, "multiprocessing", "x"),
        ]

    print_table(
        f"map: {cfg['map_n']:,} tiny items (square), default settings "
        "(speed ratio = mp time / time; above 1 is faster than mp)",
        ["library", "time", "speed vs mp.map", "rounds"],
        _rows(figs, "map", libs, cols),
    )


def _skew_table(name: str, cfg: dict[str, Any], figs: Figures, libs: Sequence[str]) -> None:
    durations = skew_durations(name, cfg)

    def cols(lib: str) -> list[str]:
        return [
            stat(figs.values(name, lib, "seconds"), fmt_num, " s"),
            stat(figs.values(name, lib, "ratio"), fmt_ratio),
            stat(figs.values(name, lib, "ideal_ratio"), fmt_ratio),
        ]

    print_table(
        f"{name}: {len(durations):,} CPU tasks, {SKEW_SHAPES[name]}, heaviest last, "
        f"{sum(durations):.2f} s of work, longest {max(durations) * 1e3:.1f} ms. Bound = "
        "max(task CPU / N, longest task CPU) from the tasks' own CPU times in each run; "
        "in-order ideal = an overhead-free pool starting tasks in input order (lower is better)",
        ["library", "time", "time / bound", "in-order ideal / bound", "rounds"],
        _rows(figs, name, libs, cols),
    )


def _uniform_table(cfg: dict[str, Any], figs: Figures, libs: Sequence[str]) -> None:
    def cols(lib: str) -> list[str]:
        return [
            stat(figs.values("uniform", lib, "seconds"), fmt_num, " s"),
            stat(figs.values("uniform", lib, "efficiency"), lambda v: f"{v * 100:.1f}", "%"),
        ]

    print_table(
        f"uniform: {cfg['uniform_n']:,} x {cfg['uniform_each'] * 1e3:.0f} ms CPU tasks via map; "
        "efficiency = (sum of the tasks' own CPU times / N) / wall time (higher is better)",
        ["library", "time", "efficiency", "rounds"],
        _rows(figs, "uniform", libs, cols),
    )


def _latency_table(cfg: dict[str, Any], figs: Figures, libs: Sequence[str]) -> None:
    ratios = peer_ratios(figs, libs)["latency"]

    def cols(lib: str) -> list[str]:
        us = figs.values("latency", lib, "max_us")
        return [
            stat(figs.values("latency", lib, "p50_us"), fmt_num, " us"),
            stat(figs.values("latency", lib, "p99_us"), fmt_num, " us"),
            f"{fmt_num(max(us))} us",
            _vs(ratios, lib, "ppe"),
        ]

    print_table(
        f"latency: {cfg['latency_n']:,} sequential submit -> result round trips on an idle pool "
        "(lower is better; max is over all rounds)",
        ["library", "p50", "p99", "max", "p50 / PPE p50", "rounds"],
        _rows(figs, "latency", libs, cols),
    )


def _startup_table(cfg: dict[str, Any], figs: Figures, libs: Sequence[str]) -> None:
    def cols(lib: str) -> list[str]:
        return [stat(figs.values("startup", lib, "ms"), lambda v: f"{v:.1f}", " ms")]

    print_table(
        "startup: pool constructor to first result of a no-op task, library already imported; "
        f"median of {cfg['startup_repeats']} fresh pools per round (lower is better)",
        ["library", "startup", "rounds"],
        _rows(figs, "startup", libs, cols),
    )


def print_tables(
    cfg: dict[str, Any], figs: Figures, libs: Sequence[str], workloads: Sequence[str]
) -> None:
    """Print one table per selected workload: medians over rounds and [min, max] ranges.

    Args:
        cfg: The run's configuration.
        figs: The run.
        libs: Selected libraries, in table order.
        workloads: Selected workloads, in table order.
    """
    simple = {
        "submit": _submit_table,
        "map": _map_table,
        "uniform": _uniform_table,
        "latency": _latency_table,
        "startup": _startup_table,
    }
    for workload in workloads:
        if workload in SKEW_SHAPES:
            _skew_table(workload, cfg, figs, libs)
        else:
            simple[workload](cfg, figs, libs)
        _print_errors(figs, workload, libs)


def print_summary(targets: dict[str, dict[str, Any]], figs: Figures) -> None:
    """Print one line per mppool target, then warnings about load and leftover processes.

    Args:
        targets: From :func:`evaluate_targets`.
        figs: The run.
    """
    if targets:
        print("\n== mppool targets: median over rounds [min, max], rounds; verdict on the median")
        name_w = max(len(name) for name in targets)
        text_w = max(len(entry["text"]) for entry in targets.values())
        for name, entry in targets.items():
            print(
                f"{name.ljust(name_w)}  {entry['verdict']:<4}  {entry['text'].ljust(text_w)}  "
                f"{entry['rounds']} round{'s' if entry['rounds'] != 1 else ' '}  "
                f"({entry['goal']})"
            )
    noisy = [c for c in figs.cells if c.get("foreign_cpu_cores", 0.0) > FOREIGN_LOAD_WARNING]
    if noisy:
        worst = max(noisy, key=lambda c: c["foreign_cpu_cores"])
        print(
            f"caution: other processes used more than {FOREIGN_LOAD_WARNING} cores on average "
            f"during {len(noisy)} of {len(figs.cells)} cells (worst: round {worst['round']} "
            f"{worst['workload']} {worst['lib']}, {worst['foreign_cpu_cores']:.2f} cores); "
            "figures from a busy machine are not reliable"
        )
    for cell in figs.cells:
        for proc in cell.get("leftover_processes", []):
            print(
                f"note: round {cell['round']} {cell['workload']} {cell['lib']}: still alive 2 s "
                f"after shutdown, killed: {proc}"
            )
