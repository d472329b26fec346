"""The joblib backend: joblib's Parallel and scikit-learn running on an mppool pool."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import joblib
import pytest

import mppool
import mppool.joblib

from . import tasks
from .conftest import PoolTracker


def test_parallel_runs_on_the_pool_it_is_given(make_pool: PoolTracker) -> None:
    pool = make_pool(2)
    with joblib.parallel_config(backend="mppool", pool=pool):
        out = joblib.Parallel()(joblib.delayed(tasks.square)(x) for x in range(200))
    assert out == [x * x for x in range(200)]
    assert pool.stats().completed >= 1  # the batches ran here


def test_parallel_with_n_jobs_and_the_kept_pool(leak_check: None) -> None:
    with joblib.parallel_config(backend="mppool", n_jobs=2):
        pids = set(joblib.Parallel(batch_size=1)(joblib.delayed(tasks.getpid)() for _ in range(40)))
        again = joblib.Parallel()(joblib.delayed(tasks.add)(x, 1) for x in range(10))
    assert again == list(range(1, 11))
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    kept = mppool.joblib._shared["pool"]
    assert kept.workers == 2
    kept.shutdown()  # the leak check wants it gone; programs leave it to the exit hook


@pytest.mark.parametrize("return_as", ["list", "generator", "generator_unordered"])
def test_return_as(make_pool: PoolTracker, return_as: str) -> None:
    pool = make_pool(2)
    with joblib.parallel_config(backend="mppool", pool=pool):
        out = joblib.Parallel(return_as=return_as)(
            joblib.delayed(tasks.square)(x) for x in range(100)
        )
        got = list(out)
    if return_as == "generator_unordered":
        got.sort()
    assert got == [x * x for x in range(100)]


def test_the_first_error_is_raised_and_the_rest_cancelled(make_pool: PoolTracker) -> None:
    pool = make_pool(2)
    with (
        joblib.parallel_config(backend="mppool", pool=pool),
        pytest.raises(ValueError, match="bad item 13"),
    ):
        joblib.Parallel(batch_size=1)(joblib.delayed(tasks.fail_on)(x, 13) for x in range(200))
    assert pool.submit(tasks.square, 3).result(timeout=60) == 9  # the pool serves on


def test_a_crashing_task_is_retried_not_fatal(make_pool: PoolTracker, tmp_path: Path) -> None:
    pool = make_pool(2)
    marker = str(tmp_path / "crashed")
    with joblib.parallel_config(backend="mppool", pool=pool):
        out = joblib.Parallel(batch_size=1)(
            joblib.delayed(tasks.crash_first_time)(marker, x)
            if x == 5
            else joblib.delayed(tasks.square)(x)
            for x in range(10)
        )
    assert out == [x * x if x != 5 else 5 for x in range(10)]
    assert pool.stats().crashed == 1


def test_scikit_learn_cross_validation_under_the_backend(make_pool: PoolTracker) -> None:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    X, y = load_iris(return_X_y=True)
    pool = make_pool(2)
    before = pool.stats().completed
    with joblib.parallel_config(backend="mppool", pool=pool):
        scores: Any = cross_val_score(LogisticRegression(max_iter=500), X, y, cv=3, n_jobs=2)
    assert len(scores) == 3 and all(0.8 < s <= 1.0 for s in scores)
    assert pool.stats().completed > before
