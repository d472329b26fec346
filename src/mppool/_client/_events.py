"""What the dispatcher saw, logged in the user process under ``mppool.*`` loggers.

Silent by default: the ``mppool`` logger has a ``NullHandler``, so nothing reaches stderr
until the program configures logging; ``logging.basicConfig(level=logging.INFO)`` is one
line that turns it on. The dispatcher sends only the events at or above the level the
``mppool`` logger has when the pool starts, so set the level before creating the pool.

Every record carries its fields as attributes, for log shippers (a JSON formatter picks them
up): ``record.event`` names the event, and the others are below.

========================  ================  =======  ======================================
event                     logger            level    fields
========================  ================  =======  ======================================
``worker_started``        mppool.workers    DEBUG    worker, pid, startup (seconds)
``worker_died``           mppool.workers    WARNING  worker, pid, exitcode, signal, reason;
                                            or INFO  when the pool ended it (timeout, cancel,
                                                     retired, exit, resized)
``worker_respawned``      mppool.workers    INFO     worker, old_pid, pid
``pool_resized``          mppool.workers    INFO     from_workers, to_workers, reason
``pool_not_grown``        mppool.workers    WARNING  wanted, got (a fork failed, or a worker
                                                     added by growth could not start)
``task_timed_out``        mppool.tasks      WARNING  task_id, timeout, pid, worker
``task_retried``          mppool.tasks      INFO     task_id, attempt, delay, cause (error,
                                                     crash or timeout)
``rate_limited``          mppool.tasks      DEBUG    kind
``task_expired``          mppool.tasks      INFO     task_id (it had not started by its deadline)
``pool_broken``           mppool.pool       ERROR    reason
========================  ================  =======  ======================================

A done callback that raises is logged on ``mppool.futures`` (ERROR, with its traceback).
"""

from __future__ import annotations

import logging

from .. import _protocol as p

ROOT = logging.getLogger("mppool")
ROOT.addHandler(logging.NullHandler())

_LOGGER = {
    "worker_started": "mppool.workers",
    "worker_died": "mppool.workers",
    "worker_respawned": "mppool.workers",
    "pool_resized": "mppool.workers",
    "pool_not_grown": "mppool.workers",
    "task_timed_out": "mppool.tasks",
    "task_retried": "mppool.tasks",
    "rate_limited": "mppool.tasks",
    "task_expired": "mppool.tasks",
    "pool_broken": "mppool.pool",
}


def wanted_level() -> int:
    """The lowest level of event worth sending (the ``mppool`` logger's effective level)."""
    return ROOT.getEffectiveLevel()


def log(event: p.Event) -> None:
    """Log one event from the dispatcher (on the reader thread)."""
    logger = logging.getLogger(_LOGGER.get(event.name, "mppool.pool"))
    if logger.isEnabledFor(event.level):
        logger.log(event.level, event.message, extra={"event": event.name, **event.fields})
