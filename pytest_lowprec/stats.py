"""Robust statistics for paired timings: median ratio, bootstrap interval, noise.

Pure: numpy only, no pytest, no torch, so the gate's arithmetic is tested directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Scales a median absolute deviation to a standard deviation for normal data.
_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class RatioSummary:
    """Speedup of one measurement: baseline time over optimized time, per pair."""

    median: float
    low: float
    high: float
    n: int
    noise: float  # robust coefficient of variation of the per-pair ratios
    confidence: float

    def as_dict(self) -> dict:
        return {
            "median": self.median,
            "ci": [self.low, self.high],
            "samples": self.n,
            "noise": self.noise,
            "confidence": self.confidence,
        }


def pair_ratios(pairs: Sequence[tuple[float, float]]) -> np.ndarray:
    """Per-pair speedups t_baseline / t_optimized.

    Ratios are taken within a pair, not of two medians, because an A/B pair
    shares the GPU's clock and temperature at that moment; drifts cancel.
    """
    arr = np.asarray(pairs, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] == 0:
        raise ValueError(f"expected a non-empty list of (baseline, optimized) pairs, got shape {arr.shape}")
    if np.any(arr <= 0) or not np.all(np.isfinite(arr)):
        raise ValueError("timings must be finite and positive; a zero or negative time means the timer is broken")
    return arr[:, 0] / arr[:, 1]


def robust_cv(values: Sequence[float] | np.ndarray) -> float:
    """Median absolute deviation scaled to sigma, over the median; robust to a few outliers."""
    x = np.asarray(values, dtype=np.float64)
    med = float(np.median(x))
    if med == 0.0:
        return math.inf
    return float(_MAD_TO_SIGMA * np.median(np.abs(x - med)) / abs(med))


def bootstrap_median_ci(
    values: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the median; seeded so a run is reproducible."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    x = np.asarray(values, dtype=np.float64)
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(resamples, x.size))
    medians = np.median(x[idx], axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(medians, [tail, 1.0 - tail])
    return float(low), float(high)


def summarize_pairs(
    pairs: Sequence[tuple[float, float]],
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> RatioSummary:
    """Median speedup of paired timings with its bootstrap interval and noise."""
    ratios = pair_ratios(pairs)
    low, high = bootstrap_median_ci(ratios, confidence, resamples, seed)
    return RatioSummary(
        median=float(np.median(ratios)),
        low=low,
        high=high,
        n=int(ratios.size),
        noise=robust_cv(ratios),
        confidence=confidence,
    )


def side_medians(pairs: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Median time of each side, for the report (the verdict uses the ratios)."""
    arr = np.asarray(pairs, dtype=np.float64)
    return float(np.median(arr[:, 0])), float(np.median(arr[:, 1]))
