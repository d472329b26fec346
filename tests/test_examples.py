"""The examples users start from run, print the right answers and the stats table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
T = 120


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=T,
    )


def test_primes_counts_right_and_prints_stats() -> None:
    done = run("primes.py", "--limit", "100000", "--ranges", "50", "--workers", "2")
    assert done.returncode == 0, done.stderr
    assert "primes below 100_000: 9_592" in done.stdout
    assert "pool stats" in done.stdout and "end to end" in done.stdout
    assert "50/50" in done.stderr  # the progress bar reached the end


def test_primes_check_mode() -> None:
    done = run("primes.py", "--check", "--ranges", "20", "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(" ok ") == 6 and "check passed" in done.stdout
    assert done.stderr == ""


def test_hashes_verifies_and_urgent_seeds_overtake() -> None:
    done = run("hashes.py", "--seeds", "300", "--rounds", "300", "--urgent", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verified 8 digests locally: ok" in done.stdout
    assert "pool stats" in done.stdout


def test_numeric_tiles_match_a_local_check() -> None:
    done = run("numeric.py", "--size", "2048", "--tile", "128", "--workers", "2", "--check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "256 tiles in" in done.stdout and "checked 20 tiles here: ok" in done.stdout
    assert "256/256" in done.stderr  # the progress bar reached the end


def test_pipeline_graph_in_a_batch_counts_right() -> None:
    done = run("pipeline.py", "--shards", "8", "--limit", "100000", "--workers", "2", "--check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "primes below 100_000: 9_592" in done.stdout and "checked here: 9_592: ok" in done.stdout
    # 8 counts, 8 summaries, the report: all in the batch, all done.
    assert any(line.split()[:2] == ["primes", "17"] for line in done.stdout.splitlines())
