"""Reporting helpers shared by the examples: a live progress line and a pool statistics table.

Neither helper knows anything about the work being done; they only count, time and format,
so the example scripts can stay focused on how they use the pool.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from types import TracebackType
from typing import TextIO

from mppool import PoolStats

__all__ = ["Progress", "format_duration", "format_stats"]


def format_duration(seconds: float) -> str:
    """Format a duration for humans.

    Args:
        seconds: the duration; negative values are treated as zero.

    Returns:
        ``"4.2s"`` below a minute, ``"3:07"`` below an hour, ``"1:02:03"`` beyond.
    """
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


class Progress:
    """A single progress line on a terminal stream, rewritten in place with ``\\r``.

    Redrawing is throttled (by default to ten times a second) because a fast job can finish
    thousands of items a second, and writing to a terminal that often would cost more than the
    bookkeeping it reports on. The rate shown is measured over the last few seconds rather than
    since the start, so the ETA follows jobs whose items get slower (or faster) as they go.

    Use it as a context manager so the line is always finished with a newline, even when the
    job is interrupted; otherwise the next message would be printed over the progress line.

    Args:
        total: number of items the job will complete.
        unit: what an item is called, in the plural (``"ranges"``, ``"seeds"``).
        label: a short prefix for the line.
        stream: where to draw; standard error by default, so the line never mixes with
            results written to standard output.
        min_interval: the minimum number of seconds between two redraws.
        window: the number of seconds over which the current rate is measured.
        enabled: when False nothing is drawn, but ``done`` and ``elapsed`` still work.
    """

    def __init__(
        self,
        total: int,
        unit: str,
        label: str = "",
        *,
        stream: TextIO | None = None,
        min_interval: float = 0.1,
        window: float = 5.0,
        enabled: bool = True,
    ) -> None:
        self.total = total
        self.unit = unit
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval = min_interval
        self.window = window
        self.enabled = enabled
        self.done = 0
        self.started = time.monotonic()
        self._last_draw = -float("inf")
        self._last_width = 0
        self._drawn_done = -1
        self._closed = False
        # (time, done) samples from the last ``window`` seconds, for the current rate.
        self._samples: deque[tuple[float, int]] = deque([(self.started, 0)])

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def elapsed(self) -> float:
        """Seconds since the progress line was created."""
        return time.monotonic() - self.started

    def update(self, n: int = 1) -> None:
        """Record ``n`` more finished items and redraw if the last redraw is old enough.

        Args:
            n: how many items finished since the last call.
        """
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last_draw >= self.min_interval or self.done >= self.total:
            self._draw(now)

    def close(self) -> None:
        """Draw the final state and end the line. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        if self._drawn_done != self.done:  # the final state may already be on screen
            self._draw(time.monotonic())
        self.stream.write("\n")
        self.stream.flush()

    def _rate(self, now: float) -> float:
        samples = self._samples
        samples.append((now, self.done))
        # Keep at least two samples, so a rate exists even when redraws are far apart.
        while len(samples) > 2 and now - samples[1][0] >= self.window:
            samples.popleft()
        t0, done0 = samples[0]
        span = now - t0
        return (self.done - done0) / span if span > 0 else 0.0

    def _draw(self, now: float) -> None:
        self._last_draw = now
        self._drawn_done = self.done
        rate = self._rate(now)
        if self.done >= self.total and now > self.started:
            # Finished: the average over the whole run says more than the last few seconds.
            rate = self.done / (now - self.started)
        percent = 100.0 * self.done / self.total if self.total else 100.0
        remaining = self.total - self.done
        if remaining <= 0:
            eta = f"done in {format_duration(now - self.started)}"
        elif rate > 0:
            eta = f"ETA {format_duration(remaining / rate)}"
        else:
            eta = "ETA ?"
        width = len(str(self.total))
        prefix = f"{self.label} " if self.label else ""
        line = (
            f"{prefix}{self.done:>{width}}/{self.total} {self.unit} {percent:5.1f}% "
            f"{rate:8.1f} {self.unit}/s  {eta}"
        )
        # Pad with spaces so a shorter line fully overwrites a longer previous one.
        padding = " " * max(0, self._last_width - len(line))
        self._last_width = len(line)
        self.stream.write("\r" + line + padding)
        self.stream.flush()


def format_stats(stats: PoolStats, elapsed: float) -> str:
    """Render a pool statistics snapshot as a small text table.

    Args:
        stats: a snapshot from ``Pool.stats()``.
        elapsed: seconds the pool has been running, used as the denominator of each worker's
            busy fraction (a worker busy for the whole run is at 100%).

    Returns:
        A multi-line string without a trailing newline.
    """
    counters = [
        ("submitted", stats.submitted),
        ("completed", stats.completed),
        ("failed", stats.failed),
        ("retried", stats.retried),
        ("steals", stats.steals),
        ("stolen_tasks", stats.stolen_tasks),
        ("crashed", stats.crashed),
        ("timed_out", stats.timed_out),
        ("cancelled", stats.cancelled),
        ("respawns", stats.respawns),
        ("queued", stats.queued),
        ("running", stats.running),
    ]
    name_width = max(len(name) for name, _ in counters)
    value_width = max(len(str(value)) for _, value in counters)
    lines = ["pool stats (a map chunk counts as one task)"]
    lines += [f"  {name:<{name_width}}  {value:>{value_width}}" for name, value in counters]

    header = ("worker", "pid", "tasks_done", "busy_seconds", "busy")
    rows = [
        (
            str(w.index),
            str(w.pid),
            str(w.tasks_done),
            f"{w.busy_seconds:.2f}",
            f"{100.0 * w.busy_seconds / elapsed:.1f}%" if elapsed > 0 else "-",
        )
        for w in stats.workers
    ]
    total_done = sum(w.tasks_done for w in stats.workers)
    total_busy = sum(w.busy_seconds for w in stats.workers)
    capacity = elapsed * len(stats.workers)
    rows.append(
        (
            "all",
            "",
            str(total_done),
            f"{total_busy:.2f}",
            f"{100.0 * total_busy / capacity:.1f}%" if capacity > 0 else "-",
        )
    )
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines.append("")
    lines.append("  " + "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    lines.append("  " + "  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def positive_int(text: str) -> int:
    """Parse a strictly positive integer for argparse (underscores allowed, as in 5_000_000)."""
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value
