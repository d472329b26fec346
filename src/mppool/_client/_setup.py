"""How workers are set up for numeric work (user process): BLAS/OpenMP thread limits, modules
imported before the workers are forked, and CPU pinning. Checked here, at ``Pool(...)``;
carried out by the dispatcher (see ``_dispatcher/_loop.py`` and ``_procs.py``).

The dispatcher is a fresh interpreter: it sets the thread variables in its environment before
it imports anything, so every library a worker loads, preloaded or imported by a task, reads
its limit when it loads and starts no more threads than that.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, NamedTuple

# The variables the common thread pools read when they load: OpenMP (and so MKL, BLIS,
# numexpr, scikit-learn's OpenMP code), OpenBLAS, MKL, BLIS, Apple Accelerate, numexpr.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
AUTO = "auto"


class WorkerSetup(NamedTuple):
    env: dict[str, str]  # set in the dispatcher's environment
    preload: list[str]  # imported by the dispatcher before it forks
    affinity: list[list[int]]  # worker i's cores: affinity[i] (empty: no pinning)


def usable_cores() -> list[int]:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def thread_environment(threads: Any, workers: int) -> dict[str, str]:
    """The thread variables the workers get.

    ``"auto"``: each worker's share of the cores (cores // workers, at least 1), for each
    variable the user has not set; a number: exactly that, for all of them; ``None``: nothing.
    """
    if threads is None:
        return {}
    if threads == AUTO:
        share = str(max(1, len(usable_cores()) // workers))
        return {name: share for name in THREAD_VARIABLES if name not in os.environ}
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads_per_worker must be 'auto', None or an int >= 1, not {threads!r}")
    return {name: str(threads) for name in THREAD_VARIABLES}


def preload_modules(modules: Iterable[str]) -> list[str]:
    if isinstance(modules, str):
        modules = [modules]
    names = list(modules)
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(f"preload takes module names (str), not {name!r}")
    return names


def core_placement(value: Any, workers: int) -> list[list[int]]:
    """Cores per worker: ``True`` gives worker i core i (of the usable ones, round robin); a
    list gives worker i the cores in ``value[i]``; ``None`` or ``False``: no pinning.

    Raises:
        NotImplementedError: where the OS cannot pin a process (not Linux).
        ValueError: for a list of the wrong length or with cores this process cannot use.
    """
    if value is None or value is False:
        return []
    if not hasattr(os, "sched_setaffinity"):
        raise NotImplementedError("cpu_affinity needs os.sched_setaffinity (Linux)")
    usable = usable_cores()
    if value is True:
        # One set per core (or per worker, when there are more): a worker added by a resize
        # takes a core no live worker has.
        return [[usable[i % len(usable)]] for i in range(max(workers, len(usable)))]
    placement = [sorted({int(core) for core in cores}) for cores in value]
    if len(placement) != workers:
        raise ValueError(f"cpu_affinity has {len(placement)} core sets for {workers} workers")
    for cores in placement:
        if not cores or not set(cores) <= set(usable):
            raise ValueError(f"cpu_affinity: {cores} is not a non-empty subset of {usable}")
    return placement
