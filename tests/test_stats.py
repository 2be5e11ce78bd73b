from __future__ import annotations

import math

import numpy as np
import pytest

from pytest_lowprec.stats import bootstrap_median_ci, pair_ratios, robust_cv, summarize_pairs


def test_ratios_are_baseline_over_optimized_per_pair():
    assert list(pair_ratios([(2.0, 1.0), (3.0, 1.5)])) == [2.0, 2.0]


def test_zero_or_negative_time_is_rejected_as_a_broken_timer():
    with pytest.raises(ValueError, match="timer is broken"):
        pair_ratios([(1.0, 0.0)])


def test_empty_pairs_are_rejected():
    with pytest.raises(ValueError, match="non-empty"):
        pair_ratios([])


def test_bootstrap_interval_is_reproducible_for_a_seed():
    x = np.random.default_rng(1).normal(1.5, 0.05, 50)
    assert bootstrap_median_ci(x, seed=7) == bootstrap_median_ci(x, seed=7)


def test_bootstrap_interval_contains_the_median_and_narrows_with_samples():
    rng = np.random.default_rng(2)
    small = rng.normal(1.5, 0.05, 20)
    large = rng.normal(1.5, 0.05, 400)
    lo_s, hi_s = bootstrap_median_ci(small)
    lo_l, hi_l = bootstrap_median_ci(large)
    assert lo_s <= np.median(small) <= hi_s
    assert (hi_l - lo_l) < (hi_s - lo_s)


def test_robust_cv_ignores_a_few_outliers():
    x = [1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0, 50.0]
    assert robust_cv(x) < 0.05


def test_summary_reports_noise_of_the_ratios():
    rng = np.random.default_rng(3)
    base = rng.normal(2.0, 0.02, 200)
    pairs = [(b, 1.0) for b in base]
    s = summarize_pairs(pairs)
    assert math.isclose(s.median, 2.0, rel_tol=0.01)
    assert 0.005 < s.noise < 0.02
    assert s.n == 200 and s.low < s.median < s.high
