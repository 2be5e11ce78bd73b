"""Change points over commits: a step, a drift of small steps, and noise that stays flat."""

from __future__ import annotations

import random

import pytest

from pytest_lowprec.changepoints import noise, pelt, trend


def noisy(levels: list[float], rel: float = 0.003, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [v * (1 + rel * rng.gauss(0, 1)) for v in levels]


def test_a_flat_history_has_no_change_point():
    assert trend(noisy([1.6] * 20)).kind == "flat"


def test_a_perfectly_flat_history_is_flat_not_a_division_by_zero():
    result = trend([28.0] * 10)
    assert result.kind == "flat" and result.sigma > 0


def test_one_drop_is_a_step_at_the_commit_that_dropped():
    result = trend([1.6] * 10 + [1.45] * 4)
    assert result.kind == "step" and result.indices == (10,)
    assert result.total_pct == pytest.approx(-9.375)


def test_a_drop_at_the_latest_commit_alone_is_found():
    assert trend(noisy([1.6] * 9) + [1.45]).indices == (9,)


def test_three_small_steps_the_same_way_read_as_a_drift_with_their_total():
    levels = [1.6] * 5 + [1.576] * 5 + [1.552] * 5 + [1.528] * 5  # 1.5% each, inside a 3% tolerance
    result = trend(noisy(levels, rel=0.002))
    assert result.kind == "drift" and len(result.shifts) >= 2 and result.total_pct < -3.5


def test_a_steady_slide_of_two_percent_a_commit_is_a_drift_not_noise():
    result = trend([1.742, 1.738, 1.75, 1.745, 1.705, 1.668, 1.643, 1.605])
    assert result.kind == "drift" and result.total_pct < -5


def test_the_runs_own_intervals_set_the_noise_when_they_are_wider():
    values = [1.0, 1.01, 0.99, 1.0, 1.02, 0.98]
    assert noise(values, [(0.9, 1.1)] * 6) == pytest.approx(0.2 / 3.92)


def test_a_wide_interval_keeps_a_move_within_it_from_being_a_change_point():
    values = [1.6] * 6 + [1.56] * 6
    assert trend(values).kind == "step"
    assert trend(values, [(1.4, 1.8)] * 12).kind == "flat"


def test_pelt_finds_the_segments_of_a_clean_staircase():
    assert pelt([0.0] * 4 + [5.0] * 4 + [10.0] * 4, penalty=1.0) == [4, 8]


def test_noise_alone_is_rarely_read_as_a_move():
    moved = sum(trend(noisy([1.6] * 20, rel=0.01, seed=s)).kind != "flat" for s in range(200))
    assert moved <= 0.12 * 200  # measured 7.5% at 400 seeds; the docstring states it


def test_a_history_with_a_missing_value_is_not_read():
    assert trend([1.0, float("nan"), 1.0]).kind == "flat"
