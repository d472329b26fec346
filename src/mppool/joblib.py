"""A joblib parallel backend named ``"mppool"`` (needs the ``joblib`` extra).

    import joblib
    import mppool.joblib  # registers the backend

    with joblib.parallel_config(backend="mppool", n_jobs=4):
        squares = joblib.Parallel()(joblib.delayed(pow)(x, 2) for x in range(1000))

scikit-learn runs its ``n_jobs`` work under the same configuration (``GridSearchCV``,
``cross_val_score``, ...). joblib keeps its own batching (``batch_size="auto"``) and its
``return_as="generator"`` / ``"generator_unordered"``; mppool runs the batches. A task that
kills its worker is retried on a fresh one (``crash_retries``, 2 by default) instead of
failing the whole call with ``TerminatedWorkerError``; on the first error joblib raises, the
rest of the call is cancelled and running batches are killed.

By default each ``n_jobs`` gets a pool of that many workers, kept for later calls (like loky's
reusable executor) and ended with the program. To run on a pool of your own (its priorities,
timeouts, rate limits, limits per child), pass it: ``parallel_config(backend="mppool",
pool=my_pool)``; ``n_jobs`` is then the pool's size.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from joblib import register_parallel_backend
from joblib._parallel_backends import (
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
)

from ._client._pool import Pool

__all__ = ["MppoolBackend", "register"]

_shared_lock = threading.Lock()
_shared: dict[str, Pool] = {}  # "pool": the pool kept for the n_jobs last asked for


def _call(batch: Any) -> Any:
    """Run one of joblib's batches in a worker."""
    return batch()


def _shared_pool(n_jobs: int) -> Pool:
    """The kept pool, with ``n_jobs`` workers (a pool of another size is replaced)."""
    with _shared_lock:
        pool = _shared.get("pool")
        if pool is None or pool.workers != n_jobs or pool.state != "running":
            if pool is not None:
                pool.shutdown(wait=False)
            pool = _shared["pool"] = Pool(n_jobs)
        return pool


class MppoolBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """Runs joblib's batches as mppool tasks.

    Args:
        pool: run on this pool instead of one of the backend's own.
    """

    supports_retrieve_callback = True
    supports_timeout = True
    default_n_jobs = -1  # all cores, as mppool.Pool() has

    def __init__(self, pool: Pool | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._given = pool
        self._pool: Pool | None = None
        self._running: set[Any] = set()
        self._lock = threading.Lock()

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if self._given is not None:
            return self._given.workers
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            return max((os.cpu_count() or 1) + 1 + n_jobs, 1)
        return n_jobs

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        n = self.effective_n_jobs(n_jobs)
        if n == 1 and self._given is None:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self._pool = self._given if self._given is not None else _shared_pool(n)
        self.parallel = parallel
        return n

    def submit(self, func: Any, callback: Any = None) -> Any:
        assert self._pool is not None, "configure() comes first"
        future = self._pool.submit(_call, func)
        with self._lock:
            self._running.add(future)
        future.add_done_callback(self._finished)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def _finished(self, future: Any) -> None:
        with self._lock:
            self._running.discard(future)

    def retrieve_result_callback(self, future: Any) -> Any:
        return future.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """The call failed: cancel its queued batches, kill its running ones."""
        pool = self._pool
        with self._lock:
            running, self._running = list(self._running), set()
        if pool is not None:
            for future in running:
                pool.cancel(future, kill=True)

    def terminate(self) -> None:
        """The end of a call: the pool is kept for the next one."""
        with self._lock:
            self._running.clear()
        self.reset_batch_stats()


def register() -> None:
    """Register the backend under the name ``"mppool"`` (importing this module does it)."""
    register_parallel_backend("mppool", MppoolBackend)


register()
