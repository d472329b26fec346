"""Prometheus metrics for a pool: a custom collector over ``Pool.stats()``.

The collector takes one snapshot per scrape, so every metric of a scrape comes from the same
consistent state (a counter never runs ahead of another). Names follow the Prometheus
conventions: a ``mppool_`` prefix, base units (seconds, bytes, ratios), ``_total`` on counters.

    registry = mppool.metrics_registry(pool)         # a CollectorRegistry of its own
    text = prometheus_client.generate_latest(registry)
    server = mppool.serve_metrics(pool, port=9464)    # or serve it on its own port
    ...
    server.close()

Latency percentiles are computed by the pool over a bounded window of recent tasks, not since
the start, so they are exported as gauges labelled with ``quantile`` rather than as a summary
(whose ``_sum``/``_count`` would promise cumulative totals the window cannot give).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .._errors import MppoolError
from .._stats import PoolStats

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from .._client._pool import Pool

__all__ = ["MetricsServer", "PoolCollector", "metrics_registry", "metrics_text", "serve_metrics"]

PREFIX = "mppool"

# (stats field, metric name without prefix and _total, help text)
_COUNTERS = (
    ("submitted", "tasks_submitted", "Tasks received by the pool (a map chunk counts as one)."),
    ("started", "tasks_started", "Task runs started on a worker, retries included."),
    ("completed", "tasks_completed", "Tasks that succeeded."),
    ("failed", "tasks_failed", "Tasks that finished with an error, after any retries."),
    ("retried", "tasks_retried", "Retries scheduled after errors, crashes and timeouts."),
    ("crashed", "tasks_crashed", "Worker deaths blamed on the task they were running."),
    ("timed_out", "tasks_timed_out", "Tasks killed at their timeout."),
    ("cancelled", "tasks_cancelled", "Tasks removed before they ran."),
    ("expired", "tasks_expired", "Tasks that failed, not started by their deadline."),
    ("refused", "tasks_refused", "Tasks failed fast by an open circuit."),
    ("deduplicated", "tasks_deduplicated", "Submits answered by an in-flight task's future."),
    ("respawns", "worker_respawns", "Worker processes replaced."),
    ("steals", "steals", "Steal operations between workers' local queues."),
    ("stolen_tasks", "stolen_tasks", "Tasks moved by steals."),
    ("rate_limited_waits", "rate_limited_waits", "Times a kind found its rate bucket empty."),
    ("resizes", "resizes", "Changes of the pool's target size."),
    ("worker_seconds", "worker_process_seconds", "Seconds lived by all worker processes, summed."),
)
# (stats field, metric name without prefix, help text): one value each
_GAUGES = (
    ("queued", "tasks_queued", "Tasks waiting to run."),
    ("running", "tasks_running", "Tasks sent to a worker, not finished."),
    ("target_workers", "workers", "Workers the pool is meant to have now."),
    ("live_workers", "workers_live", "Worker processes alive (leaving ones included)."),
    ("uptime", "uptime_seconds", "Seconds since the pool started."),
)

_STAGES = ("queue_wait", "run_time", "end_to_end")
_QUANTILES = (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))
_WORKER_STATES = ("starting", "idle", "busy", "leaving")


def _name(suffix: str) -> str:
    return f"{PREFIX}_{suffix}"


class PoolCollector(Collector):
    """Exposes one pool's statistics to a ``prometheus_client`` registry.

    Args:
        pool: the pool to observe. Each scrape costs one ``pool.stats()`` round trip.
    """

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    def describe(self) -> list[Metric]:
        # Returning nothing keeps registration from calling collect(): registering must not
        # need a live pool, and a duplicate-name check is pointless in a registry of our own.
        return []

    def collect(self) -> Iterator[Metric]:
        """Take one snapshot and yield every metric family built from it."""
        up = GaugeMetricFamily(_name("up"), "1 if the pool answered the scrape, else 0.")
        try:
            stats = self._pool.stats()
        except MppoolError:
            # A closed or broken pool has no stats; say so instead of failing the scrape.
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from _counters(stats)
        yield from _queue(stats)
        yield from _workers(stats)
        yield from _latency(stats)
        yield from _circuits(stats)
        yield from _shares(stats)
        yield from _batches(stats)


def _counters(stats: PoolStats) -> Iterator[Metric]:
    for field, name, doc in _COUNTERS:
        value = getattr(stats, field)
        family = CounterMetricFamily(_name(name), doc)
        family.add_metric([], float(value))
        yield family


_CIRCUIT_STATES = ("closed", "half-open", "open")


def _circuits(stats: PoolStats) -> Iterator[Metric]:
    """Per kind with a circuit breaker: its state (one gauge per state), openings, refusals."""
    if not stats.circuits:
        return
    state = GaugeMetricFamily(
        _name("circuit_state"),
        "1 for a circuit's current state (closed, half-open, open), per kind.",
        labels=["kind", "state"],
    )
    opened = CounterMetricFamily(
        _name("circuit_opened"), "Times a kind's circuit opened.", labels=["kind"]
    )
    rejected = CounterMetricFamily(
        _name("circuit_rejected"),
        "Tasks failed fast or held because their kind's circuit was not closed.",
        labels=["kind"],
    )
    for kind, c in sorted(stats.circuits.items()):
        for name in _CIRCUIT_STATES:
            state.add_metric([kind, name], 1.0 if c.state == name else 0.0)
        opened.add_metric([kind], float(c.opened))
        rejected.add_metric([kind], float(c.rejected))
    yield state
    yield opened
    yield rejected


def _shares(stats: PoolStats) -> Iterator[Metric]:
    """Per kind in a fair share: its weight and the run time it has had."""
    if not stats.shares:
        return
    weight = GaugeMetricFamily(
        _name("share_weight"), "A kind's weight in the fair share.", labels=["kind"]
    )
    busy = CounterMetricFamily(
        _name("share_busy_seconds"), "Run time a kind's tasks have had.", labels=["kind"]
    )
    for kind, s in sorted(stats.shares.items()):
        weight.add_metric([kind], s.weight)
        busy.add_metric([kind], s.busy_seconds)
    yield weight
    yield busy


def _batches(stats: PoolStats) -> Iterator[Metric]:
    """Per batch: its tasks by outcome (counters) and its live tasks by state."""
    if not stats.batches:
        return
    ended = CounterMetricFamily(
        _name("batch_tasks"),
        "A batch's tasks by outcome (submitted, completed, failed, cancelled).",
        labels=["batch", "outcome"],
    )
    live = GaugeMetricFamily(
        _name("batch_live_tasks"), "A batch's unfinished tasks by state.", labels=["batch", "state"]
    )
    for name, b in sorted(stats.batches.items()):
        for outcome in ("submitted", "completed", "failed", "cancelled"):
            ended.add_metric([name, outcome], float(getattr(b, outcome)))
        for state, count in sorted(b.live.items()):
            live.add_metric([name, state], float(count))
    yield ended
    yield live


def _queue(stats: PoolStats) -> Iterator[Metric]:
    for field, name, doc in _GAUGES:
        gauge = GaugeMetricFamily(_name(name), doc)
        gauge.add_metric([], float(getattr(stats, field)))
        yield gauge
    by_priority = GaugeMetricFamily(
        _name("queue_depth_by_priority"), "Tasks waiting, by priority.", labels=["priority"]
    )
    for priority, count in sorted(stats.queue_by_priority.items()):
        by_priority.add_metric([f"{priority:g}"], float(count))
    yield by_priority
    by_kind = GaugeMetricFamily(
        _name("queue_depth_by_kind"), "Tasks waiting, by kind ('' for none).", labels=["kind"]
    )
    for kind, count in sorted(stats.queue_by_kind.items()):
        by_kind.add_metric([kind or ""], float(count))
    yield by_kind


def _workers(stats: PoolStats) -> Iterator[Metric]:
    label = ["worker"]
    state = GaugeMetricFamily(
        _name("worker_state"), "1 for the worker's current state.", labels=["worker", "state"]
    )
    pid = GaugeMetricFamily(_name("worker_pid"), "Process id of the worker.", labels=label)
    done = CounterMetricFamily(
        _name("worker_tasks_done"),
        "Tasks finished in this slot, across replacements.",
        labels=label,
    )
    busy = CounterMetricFamily(
        _name("worker_busy_seconds"), "Time spent running tasks in this slot.", labels=label
    )
    busy_ratio = GaugeMetricFamily(
        _name("worker_busy_ratio"), "Fraction of time the worker spent running tasks.", labels=label
    )
    rss = GaugeMetricFamily(
        _name("worker_resident_memory_bytes"), "Resident memory of the worker.", labels=label
    )
    cpu = GaugeMetricFamily(
        _name("worker_cpu_ratio"), "CPU use of the worker (1.0 = one core).", labels=label
    )
    for w in stats.workers:
        index = str(w.index)
        for name in _WORKER_STATES:
            state.add_metric([index, name], 1.0 if w.state == name else 0.0)
        pid.add_metric([index], float(w.pid))
        done.add_metric([index], float(w.tasks_done))
        busy.add_metric([index], float(w.busy_seconds))
        busy_ratio.add_metric([index], float(w.busy_fraction))
        if w.rss_bytes is not None:  # None when the process could not be read
            rss.add_metric([index], float(w.rss_bytes))
        if w.cpu_percent is not None:
            cpu.add_metric([index], w.cpu_percent / 100.0)
    yield from (state, pid, done, busy, busy_ratio, rss, cpu)


def _latency(stats: PoolStats) -> Iterator[Metric]:
    quantiles = GaugeMetricFamily(
        _name("task_latency_seconds"),
        "Latency percentiles over a window of recent tasks, by stage.",
        labels=["stage", "quantile"],
    )
    window = GaugeMetricFamily(
        _name("task_latency_window_tasks"),
        "Tasks in the window the latency percentiles are computed over.",
        labels=["stage"],
    )
    for stage in _STAGES:
        pct = getattr(stats.latency, stage)
        window.add_metric([stage], float(pct.count))
        for quantile, attr in _QUANTILES:
            value = getattr(pct, attr, None)
            if value is not None:  # no samples yet: omit rather than invent a zero
                quantiles.add_metric([stage, quantile], float(value))
    yield quantiles
    yield window


def metrics_registry(pool: Pool) -> CollectorRegistry:
    """A new ``CollectorRegistry`` holding only a :class:`PoolCollector` for ``pool``.

    A registry per pool (instead of the process-wide default one) lets several pools, and
    tests, live in one process without their metric names colliding.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector(pool))
    return registry


def metrics_text(registry: CollectorRegistry) -> bytes:
    """The registry's metrics in the Prometheus text exposition format."""
    return generate_latest(registry)


class MetricsServer:
    """A running ``prometheus_client`` HTTP server (from :func:`serve_metrics`).

    Attributes:
        host: the address it listens on.
        port: the port it listens on (the real one when 0 was asked for).
        url: the address of its ``/metrics`` page.
    """

    def __init__(self, server: WSGIServer, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port: int = server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/metrics"

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving, close the socket and join the server thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def serve_metrics(pool: Pool, port: int = 9464, host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``pool``'s metrics for Prometheus on ``http://host:port/metrics`` (a thread).

    Args:
        pool: the pool to observe.
        port: the port (9464 by default; 0 picks a free one).
        host: the address to bind; loopback by default, unlike ``prometheus_client``'s
            ``0.0.0.0``, so nothing is exposed beyond the machine unless asked for.

    Returns:
        A :class:`MetricsServer`; ``close()`` it when done.
    """
    server, thread = start_http_server(port, addr=host, registry=metrics_registry(pool))
    return MetricsServer(server, thread, host)
