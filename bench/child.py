"""One benchmark cell in a child interpreter of its own (``python -m <module> --cell ...``)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any


def run_cell(module: str, *args: Any, timeout: float = 600) -> dict[str, Any]:
    """Run ``python -m module --cell args...``; the JSON object it prints last.

    Bytecode may be written (``PYTHONDONTWRITEBYTECODE`` cleared): an installed copy has it,
    and recompiling mppool in every child would be timed as its start-up.
    """
    done = subprocess.run(
        [sys.executable, "-m", module, "--cell", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""},
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module} cell {args} failed:\n{done.stderr}")
    return dict(json.loads(done.stdout.splitlines()[-1]))


def arguments(doc: str, cell: tuple[str, str, str], rounds: int) -> argparse.ArgumentParser:
    """The options every interleaved benchmark here takes (``--cell`` runs one cell)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", help="also write the raw figures to this file")
    parser.add_argument("--cell", nargs=3, metavar=cell)
    return parser


def spread(values: list[float], digits: int = 2) -> str:
    """Median and range: ``"1.23 [1.10, 1.40]"``."""
    f = f".{digits}f"
    return f"{statistics.median(values):{f}} [{min(values):{f}}, {max(values):{f}}]"


def interleave(
    rounds: int,
    workloads: Sequence[str],
    variants: Sequence[str],
    run: Callable[[str, str], float],
) -> dict[str, dict[str, list[float]]]:
    """Seconds of every (workload, variant) per round: within a round the variants run back
    to back, in an order reversed every other round, so the machine's drift hits them alike."""
    times: dict[str, dict[str, list[float]]] = {w: {v: [] for v in variants} for w in workloads}
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(variants)[::-1]
        for workload in workloads:
            for variant in order:
                times[workload][variant].append(run(workload, variant))
            line = ", ".join(f"{v} {times[workload][v][-1]:.3f} s" for v in order)
            print(f"round {r + 1}/{rounds}  {workload:9} {line}", flush=True)
    return times
