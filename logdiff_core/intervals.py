"""Confidence intervals that respect a statistic's range: a proportion, an entropy or a distance never has an
interval below 0 or above its maximum, where the normal approximation (value +- z * SE) would put one.

- ``wilson_interval``: a proportion of independent successes (a classifier's held-out accuracy): the Wilson score
  interval, inside [0, 1] by construction and sensible at 0 and 1 (the normal one is [0, 0] at 0 of n).
- ``percentile_interval``: the central ``confidence`` share of bootstrap draws, for a statistic whose draws lie in
  its range; ``bootstrap_means``: such draws for the mean of a few independent values (the per-set scores).
"""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of the proportion ``successes / n``."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval needs 0 <= successes <= n and n > 0, got {successes} of {n}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # at 0 or n successes one end is exactly 0 or 1 (the formula's rounding would leave 1e-19)
    return (0.0 if successes == 0 else centre - half), (1.0 if successes == n else centre + half)


def percentile_interval(draws, confidence: float = 0.95) -> tuple[float, float]:
    """The ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of ``draws``."""
    low, high = np.quantile(np.asarray(draws, dtype=np.float64), [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def bootstrap_means(values, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``resamples`` resamples (with replacement) of ``values``: the bootstrap distribution of their mean."""
    values = np.asarray(values, dtype=np.float64)
    return values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)


def leaves_range(low: float, high: float, bounds: tuple[float, float]) -> bool:
    """Whether the interval [low, high] reaches outside ``bounds`` (low end, high end; either may be infinite)."""
    return low < bounds[0] or high > bounds[1]
