"""One benchmark cell in a child interpreter of its own (``python -m <module> --cell ...``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
