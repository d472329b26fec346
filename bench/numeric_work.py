"""numpy task functions for ``bench.numeric``, importable by every pool's workers."""

from __future__ import annotations

from typing import Any

import numpy as np


def array(n: int, seed: int = 1) -> Any:
    """``n`` float64 values, the same on every call with the same seed."""
    return np.random.default_rng(seed).standard_normal(n)


def matmul_chain(seed: int) -> float:
    """Five products of 400x400 matrices (BLAS work)."""
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((400, 400)) / 20.0
    acc = np.eye(400)
    for _ in range(5):
        acc = acc @ m
    return float(acc.sum())


def row_stats(rows: Any) -> Any:
    """Per-row summary statistics: mean, standard deviation, median, 5th and 95th percentile."""
    low, median, high = np.percentile(rows, [5, 50, 95], axis=1)
    return np.stack([rows.mean(axis=1), rows.std(axis=1), median, low, high])


def total(a: Any) -> float:
    return float(a.sum())


def trimmed_mean(a: Any, i: int) -> float:
    """A bootstrap-style statistic over the shared array: the 5%-trimmed mean of every 50th
    value from offset ``i`` (reads pages across the whole array; the sort is CPU work)."""
    sample = np.sort(a[i::50])
    cut = len(sample) // 20
    return float(sample[cut:-cut].mean())
