"""The markdown table that ``python -m bench.compare --readme`` writes into the root README.md.

Only the lines between ``<!-- bench-table -->`` and ``<!-- /bench-table -->`` are replaced.
"""

from __future__ import annotations

import statistics
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.report import SLOW_CELL_SECONDS, Figures, label, peer_ratios, rounds_text, sig3

BEGIN = "<!-- bench-table -->"
END = "<!-- /bench-table -->"
#: Optional: hand-written notes from this line to :data:`END` survive a rewrite.
NOTES = "<!-- bench-notes -->"

#: Width of the README's prose lines.
WIDTH = 100

#: Marks a figure measured in the first round only.
ONE_ROUND = "\u00b9"
#: The README's typography: an en dash for "no figure", a multiplication sign for ratios.
DASH = "\u2013"
TIMES = "\u00d7"


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _times(ratio: float | None) -> str:
    if ratio is None:
        return ""
    return f" ({ratio:.2f}{TIMES})" if ratio >= 0.1 else f" ({ratio:.2g}{TIMES})"


def _seconds(value: float) -> str:
    if value < 1:
        return f"{sig3(value * 1e3)} ms"
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def _wrap(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(text, WIDTH, subsequent_indent=indent, break_on_hyphens=False)


def _cell_text(figs: Figures, workload: str, lib: str, render: Callable[[str], str | None]) -> str:
    """A table cell: the rendered medians, ``error``, or a dash when the cell did not run."""
    if not figs.values(workload, lib, "wall_seconds"):
        errors, _ = figs.problems(workload, lib)
        return "error" if errors else DASH
    text = render(lib) or DASH
    return text + (ONE_ROUND if rounds_text(figs, workload, lib) == "1 round" else "")


def _columns(
    cfg: dict[str, Any], figs: Figures, libs: Sequence[str]
) -> dict[str, tuple[str, Callable[[str], str | None]]]:
    """Per workload: the column header and a renderer of one library's medians."""
    ratios = peer_ratios(figs, libs)

    def med(workload: str, lib: str, key: str) -> float | None:
        return _median(figs.values(workload, lib, key))

    def submit(lib: str) -> str | None:
        rate = med("submit", lib, "tasks_per_s")
        return None if rate is None else f"{rate:,.0f}" + _times(_median(ratios["submit"][lib]))

    def map_(lib: str) -> str | None:
        seconds = med("map", lib, "seconds")
        return None if seconds is None else _seconds(seconds) + _times(_median(ratios["map"][lib]))

    def skew(name: str) -> Callable[[str], str | None]:
        def render(lib: str) -> str | None:
            ratio = med(name, lib, "ratio")
            return None if ratio is None else f"{ratio:.2f}"

        return render

    def uniform(lib: str) -> str | None:
        eff = med("uniform", lib, "efficiency")
        return None if eff is None else f"{eff * 100:.1f}%"

    def latency(lib: str) -> str | None:
        p50, p99 = med("latency", lib, "p50_us"), med("latency", lib, "p99_us")
        return None if p50 is None or p99 is None else f"{p50:,.0f} / {p99:,.0f} µs"

    def startup(lib: str) -> str | None:
        ms = med("startup", lib, "ms")
        return None if ms is None else f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"

    return {
        "submit": ("submit, tasks/s (vs mp)", submit),
        "map": (f"`map` {cfg['map_n'] // 1000}k tiny items (speed vs mp)", map_),
        "skew-lognormal": ("skew lognormal, time / bound", skew("skew-lognormal")),
        "skew-pareto": ("skew Pareto, time / bound", skew("skew-pareto")),
        "skew-tail": ("skew tail, time / bound", skew("skew-tail")),
        "uniform": (f"uniform {cfg['uniform_each'] * 1e3:.0f} ms, efficiency", uniform),
        "latency": ("round trip p50 / p99", latency),
        "startup": ("startup", startup),
    }


def readme_section(
    meta: dict[str, Any],
    cfg: dict[str, Any],
    figs: Figures,
    libs: Sequence[str],
    workloads: Sequence[str],
    targets: dict[str, dict[str, Any]],
) -> list[str]:
    """The generated lines that go between the markers.

    Args:
        meta: Machine and command (see ``bench.compare``).
        cfg: The run's configuration.
        figs: The run.
        libs: Libraries, in row order.
        workloads: Workloads, in column order.
        targets: From :func:`bench.report.evaluate_targets`.

    Returns:
        Markdown lines, without the markers.
    """
    columns = _columns(cfg, figs, libs)
    rounds = f"{figs.rounds} round" + ("s" if figs.rounds > 1 else "")
    lines = _wrap(
        f"{cfg['workers']} workers on a {meta['cpu_count']}-core {meta['system']} machine, "
        f"Python {meta['python']}, {meta['date'][:10]}; medians over {rounds} in which the "
        "libraries take turns on each workload; every library with its default settings, pools "
        f"warmed up before timing (`{meta['command']}`)."
    )
    lines += [
        "",
        "| | " + " | ".join(columns[w][0] for w in workloads) + " |",
        "|---" * (len(workloads) + 1) + "|",
    ]
    for lib in libs:
        name = f"**{label(lib)}**" if lib == "mppool" else label(lib)
        cells = [_cell_text(figs, w, lib, columns[w][1]) for w in workloads]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    if any(ONE_ROUND in line for line in lines[2:]):
        lines.append(
            f"{ONE_ROUND} First round only: the cell took more than {SLOW_CELL_SECONDS:.0f} s."
        )
        lines.append("")
    for name, entry in targets.items():
        text = (
            f"* mppool `{name}`: {entry['text']} over {entry['rounds']} "
            f"round{'s' if entry['rounds'] != 1 else ''} ({entry['goal']}): **{entry['verdict']}**"
        )
        lines += _wrap(text, "  ")
    lines += _wrap(
        "* *time / bound*: wall time over max(total task CPU / N, longest task CPU), from the CPU "
        "time each task measured in its worker during that run; *efficiency*: (total task CPU / "
        "N) / wall time; *startup*: pool constructor to the first result. See bench/README.md.",
        "  ",
    )
    return lines


def find_section(path: Path, lines: list[str] | None = None) -> tuple[int, int]:
    """Line indexes of the begin and end markers in ``path`` (read unless ``lines`` is given).

    Raises:
        SystemExit: If the file lacks the markers, so that a run can fail before it starts.
    """
    if lines is None:
        lines = path.read_text(encoding="utf-8").split("\n")
    try:
        begin = lines.index(BEGIN)
        return begin, lines.index(END, begin + 1)
    except ValueError:
        raise SystemExit(f"{path}: no {BEGIN} ... {END} section to rewrite") from None


def write_readme(
    path: Path,
    meta: dict[str, Any],
    cfg: dict[str, Any],
    figs: Figures,
    libs: Sequence[str],
    workloads: Sequence[str],
    targets: dict[str, dict[str, Any]],
) -> None:
    """Replace the lines between the bench-table markers of ``path`` with a fresh table.

    Lines from a ``<!-- bench-notes -->`` line to the end marker, if the section has one, are
    hand-written notes and are kept.

    Raises:
        SystemExit: If the file lacks the markers.
    """
    lines = path.read_text(encoding="utf-8").split("\n")
    begin, end = find_section(path, lines)
    section = readme_section(meta, cfg, figs, libs, workloads, targets)
    notes = lines[begin + 1 : end]
    kept = notes[notes.index(NOTES) :] if NOTES in notes else []
    path.write_text(
        "\n".join([*lines[: begin + 1], *section, *kept, *lines[end:]]), encoding="utf-8"
    )
