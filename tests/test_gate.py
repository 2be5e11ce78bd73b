from __future__ import annotations

import math

import pytest

from pytest_lowprec import gate
from pytest_lowprec.gate import BaselineView, Kind, Margin, SpeedupTolerance
from pytest_lowprec.stats import RatioSummary

OK = BaselineView("ok", "h100", value=1.60, noise=0.01, recorded="2026-11-01T00:00:00+00:00")
MISSING = BaselineView("missing", "h100", detail="no baseline for h100")


def summary(median, half=0.005, noise=0.01):
    return RatioSummary(median, median - half, median + half, 40, noise, 0.95)


def speed(s, floor=None, base=OK, **kw):
    return gate.judge_speedup("speedup", s, floor, base, SpeedupTolerance(), **kw)


def test_speedup_interval_wholly_below_floor_fails():
    v = speed(summary(1.2), floor=1.5)
    assert v.failed and "below floor" in v.reasons[0]


def test_speedup_interval_straddling_floor_when_sampling_ends_is_inconclusive_not_passed():
    v = speed(RatioSummary(1.5, 1.45, 1.55, 40, 0.01, 0.95), floor=1.5, settled=False, base=MISSING)
    assert v.status == gate.INCONCLUSIVE and not v.failed


def test_an_inconclusive_speedup_fails_under_strict_saying_why():
    level = BaselineView("ok", "h100", value=1.50, noise=0.01, recorded="d")
    v = speed(RatioSummary(1.5, 1.45, 1.55, 40, 0.01, 0.95), floor=1.5, settled=False, base=level, strict=True)
    assert v.failed and v.reasons[0].startswith("inconclusive")


def test_a_failing_speedup_is_failed_even_when_unsettled():
    assert speed(summary(1.2), floor=1.5, settled=False).status == gate.FAIL


def test_a_speedup_with_neither_floor_nor_baseline_is_ungated():
    v = speed(summary(1.6), base=MISSING)
    assert v.status == gate.UNGATED and not v.failed


def test_a_speedup_being_recorded_without_a_floor_is_ungated_in_that_run():
    assert speed(summary(1.6), update=True).status == gate.UNGATED


def test_an_ungated_speedup_fails_under_strict_and_says_how_to_gate_it():
    v = speed(summary(1.6), base=MISSING, strict=True)
    assert v.failed and any(r.startswith("ungated") and "lowprec.expect" in r for r in v.reasons)


def test_a_floor_alone_gates_a_speedup():
    assert speed(summary(1.6), floor=1.2, base=MISSING).status == gate.PASS


def test_the_tolerance_never_exceeds_its_cap_whatever_noise_was_stored():
    assert SpeedupTolerance().relative(0.71) == 0.10
    noisy = BaselineView("ok", "h100", value=1.60, noise=0.71, recorded="d")
    assert speed(summary(0.80), base=noisy).failed  # a 50% slowdown against a noisy recording


def test_the_spread_of_recorded_rounds_widens_the_tolerance_like_noise():
    assert SpeedupTolerance(floor=0.03, noise_k=2.0).relative(0.005, 0.03) == pytest.approx(0.06)


def test_a_tolerance_cap_under_its_floor_is_refused():
    with pytest.raises(ValueError, match="tolerance cap"):
        SpeedupTolerance(floor=0.05, cap=0.04)


def test_recording_refuses_a_speedup_noisier_than_the_cap_and_says_what_to_do():
    v = speed(summary(1.6, noise=0.072), update=True, noise_cap=0.05)
    assert v.failed and "not recorded: the pairs' noise is 7.2%, over the recording cap 5%" in v.reasons[0]
    assert "idle machine" in v.reasons[0]
    assert not speed(summary(1.6, noise=0.04), floor=1.2, update=True, noise_cap=0.05).failed


def test_the_noise_cap_applies_only_when_recording():
    assert not speed(summary(1.6, noise=0.2), noise_cap=0.05).failed


def test_a_failure_measured_noisier_than_a_recording_may_be_is_flagged_noisy_and_still_fails():
    v = speed(summary(1.2, noise=0.35), floor=1.5, noise_cap=0.05)
    assert v.failed and "noisy" in v.flags
    assert "noisy: the pairs' noise is 35.0%, over the 5% a recording may carry" in v.reasons[-1]
    assert "run the test again, alone" in v.reasons[-1]


def test_a_quiet_failure_or_a_noisy_pass_is_not_flagged_noisy():
    assert "noisy" not in speed(summary(1.2, noise=0.01), floor=1.5, noise_cap=0.05).flags
    assert "noisy" not in speed(summary(1.6, noise=0.35), floor=1.5, noise_cap=0.05).flags


def test_a_noisy_measurement_that_fails_for_a_missing_baseline_under_strict_is_not_called_noisy():
    v = speed(summary(1.6, noise=0.35), floor=1.5, base=MISSING, strict=True, noise_cap=0.05)
    assert v.failed and "noisy" not in v.flags and not any(r.startswith("noisy") for r in v.reasons)


def test_both_sides_ms_and_their_change_against_the_baseline_ride_with_the_verdict():
    base = BaselineView("ok", "h100", value=1.60, noise=0.01, recorded="d", sides_ms=(1.0, 0.625))
    v = speed(summary(1.60), base=base, sides_ms=(1.1, 0.6875))
    assert v.extra["baseline_ms"] == 1.1 and v.extra["optimized_ms"] == 0.6875
    assert v.extra["baseline_ms_delta_pct"] == pytest.approx(10.0)
    assert v.extra["optimized_ms_delta_pct"] == pytest.approx(10.0)


def test_without_stored_sides_only_this_runs_ms_are_shown():
    v = speed(summary(1.60), base=MISSING, sides_ms=(1.0, 0.6))
    assert v.extra == {"baseline_ms": 1.0, "optimized_ms": 0.6}


def test_the_floor_note_says_how_the_floor_was_reached():
    v = speed(summary(1.2), floor=1.5, floor_note="0.85 x predicted 1.76x", base=MISSING)
    assert v.bound == ">= 1.50x (0.85 x predicted 1.76x)" and "predicted 1.76x" in v.reasons[0]


def test_speedup_below_baseline_by_more_than_tolerance_fails_as_regressed():
    v = speed(summary(1.60 / 1.05))
    assert v.failed and v.reasons[0].startswith("regressed")
    assert v.delta_pct == pytest.approx(-4.76, abs=0.01)


def test_speedup_within_tolerance_of_baseline_passes():
    assert not speed(summary(1.57)).failed


def test_tolerance_grows_with_the_noise_stored_with_the_baseline():
    tol = SpeedupTolerance(floor=0.03, noise_k=3.0)
    assert tol.relative(0.001) == 0.03
    assert tol.relative(0.03) == pytest.approx(0.09)
    noisy = BaselineView("ok", "h100", value=1.60, noise=0.03, recorded="d")
    assert not speed(summary(1.50), base=noisy).failed


def test_speedup_clearly_above_baseline_is_flagged_improved():
    v = speed(summary(1.80))
    assert not v.failed and "improved" in v.flags


def test_nan_speedup_fails_with_the_word_nan():
    v = speed(RatioSummary(math.nan, math.nan, math.nan, 10, math.nan, 0.95), floor=1.0)
    assert v.failed and "NaN" in v.reasons[0]


def test_missing_baseline_is_reported_and_fails_only_under_strict():
    assert "no-baseline" in speed(summary(1.6), base=MISSING).flags
    strict = speed(summary(1.6), base=MISSING, strict=True)
    assert strict.failed and "no baseline for h100" in strict.reasons[0]


def test_update_mode_does_not_compare_with_the_old_baseline_but_keeps_the_floor():
    v = speed(summary(1.2), update=True)
    assert not v.failed and "recording" in v.flags
    assert speed(summary(1.2), floor=1.5, update=True).failed


def test_decision_lines_are_the_floor_and_the_tolerance_band():
    lines = gate.speedup_decision_lines(1.5, OK, SpeedupTolerance(0.03, 3.0), update=False)
    assert lines == pytest.approx([1.5, 1.552, 1.648])
    assert gate.is_settled(summary(1.3), lines)
    assert not gate.is_settled(RatioSummary(1.55, 1.54, 1.56, 30, 0.01, 0.95), lines)


ONE_DB = Margin(abs=1.0)


def value(v, minimum=None, maximum=None, higher=True, base=MISSING, margin=ONE_DB, **kw):
    return gate.judge_value("sqnr_db", Kind.ACCURACY, v, minimum=minimum, maximum=maximum,
                            higher_is_better=higher, margin=margin, base=base, **kw)


def test_accuracy_below_its_bound_fails_naming_metric_and_bound():
    v = value(20.0, minimum=25.0)
    assert v.failed and v.reasons == ("sqnr_db 20 < bound 25",)


def test_accuracy_nan_and_inf_always_fail():
    assert "NaN" in value(math.nan).reasons[0]
    assert "Inf" in value(math.inf, higher=False).reasons[0]


def test_accuracy_drift_in_the_bad_direction_beyond_margin_fails():
    base = BaselineView("ok", "h100", value=28.5, recorded="d")
    assert value(27.0, base=base).failed
    assert not value(27.8, base=base).failed
    assert "improved" in value(30.0, base=base).flags


def test_lower_is_better_metric_drifts_upward_to_fail():
    base = BaselineView("ok", "h100", value=0.010, recorded="d")
    v = gate.judge_value("rel_l2", Kind.ACCURACY, 0.012, minimum=None, maximum=0.05, higher_is_better=False,
                         margin=Margin(rel=0.1), base=base)
    assert v.failed and "drifted" in v.reasons[0]


def test_direction_comes_from_a_one_sided_bound_or_a_known_metric_or_is_an_error():
    assert gate.resolve_direction("anything", 1.0, None, None) is True
    assert gate.resolve_direction("anything", None, 1.0, None) is False
    assert gate.resolve_direction("rel_l2", None, None, None) is False
    assert gate.resolve_direction("bulk_sqnr_db", None, None, None) is True
    with pytest.raises(ValueError, match="higher_is_better"):
        gate.resolve_direction("mystery", None, None, None)


def test_baseline_view_reports_a_changed_signature_as_stale_with_the_change():
    entry = {"signature": {"n": 4096}, "metrics": {"speedup": {"value": 1.6}}, "recorded": "d"}
    view = gate.baseline_view(entry, "speedup", {"n": 8192}, "h100")
    assert view.state == "stale" and "n: 4096 -> 8192" in view.detail


def test_baseline_view_finds_the_stored_metric():
    entry = {"signature": {"n": 1}, "metrics": {"speedup": {"value": 1.6, "noise": 0.02}}, "recorded": "d"}
    view = gate.baseline_view(entry, "speedup", {"n": 1}, "h100")
    assert view.usable and view.value == 1.6 and view.noise == 0.02


def test_verdict_survives_a_round_trip_through_a_dict():
    v = speed(summary(1.2), floor=1.5)
    assert gate.Verdict.from_dict(v.to_dict()) == v


def test_margin_rejects_negative_values():
    with pytest.raises(ValueError, match="non-negative"):
        Margin(abs=-1.0)


def test_an_accuracy_metric_with_neither_bound_nor_baseline_is_ungated():
    assert value(30.0).status == gate.UNGATED


def test_an_accuracy_metric_with_only_a_baseline_is_gated_by_its_drift():
    assert value(28.4, base=BaselineView("ok", "h100", value=28.5, recorded="d")).status == gate.PASS


def test_an_ungated_accuracy_metric_fails_under_strict():
    assert value(30.0, strict=True).failed


def test_baseline_view_carries_the_stored_sides_and_spread():
    entry = {"signature": {}, "recorded": "d", "metrics": {"speedup": {
        "value": 1.6, "noise": 0.01, "spread": 0.02, "baseline_ms": 1.0, "optimized_ms": 0.625}}}
    view = gate.baseline_view(entry, "speedup", {}, "h200")
    assert view.sides_ms == (1.0, 0.625) and view.spread == 0.02


def test_recording_refuses_rounds_whose_medians_spread_past_the_cap():
    v = speed(summary(1.6, noise=0.01), floor=1.2, update=True, noise_cap=0.05, spread=0.08)
    assert v.failed and "the rounds' medians spread 8.0%, over the recording cap 5%" in v.reasons[0]
    assert not speed(summary(1.6, noise=0.01), floor=1.2, update=True, noise_cap=0.05, spread=0.02).failed
