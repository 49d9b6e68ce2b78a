"""Uncertainty: percentile bootstrap confidence intervals and paired permutation (sign-flip) tests.
Both are seeded, so a report is reproducible."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, n_resamples: int = 10_000,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap over items."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(x.mean()), float(lo), float(hi)


def paired_permutation_test(a: Sequence[float], b: Sequence[float], n_resamples: int = 10_000,
                            seed: int = 0) -> float:
    """Two-sided p-value for H0 "methods a and b score the same on each item": randomly swap each item's pair
    (flip the sign of its difference) and count how often |mean difference| reaches the observed one. Exact
    enumeration when there are at most 16 non-zero differences; (count + 1) / (n + 1) otherwise."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.shape != (len(a),) or len(a) != len(b):
        raise ValueError(f"paired test needs equal-length score lists, got {len(a)} and {len(b)}")
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    observed = abs(d.sum())
    if d.size <= 16:
        signs = ((np.arange(2 ** d.size)[:, None] >> np.arange(d.size)) & 1) * 2 - 1
        return float(np.mean(np.abs(signs @ d) >= observed - 1e-12))
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(n_resamples, d.size))
    count = int(np.sum(np.abs(signs @ d) >= observed - 1e-12))
    return (count + 1) / (n_resamples + 1)
