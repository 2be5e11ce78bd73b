from __future__ import annotations

import gc

import pytest
from fakes import ScriptedTimer

from pytest_lowprec.timing import HostTimer, SamplingPolicy, measure_pairs


def test_sampling_stops_at_the_minimum_once_settled():
    timer = ScriptedTimer(speedup=2.0)
    m = measure_pairs(timer, lambda: None, lambda: None, SamplingPolicy(min_pairs=10), lambda pairs: True)
    assert len(m.pairs) == 10 and m.settled


def test_sampling_continues_while_unsettled_up_to_the_maximum():
    timer = ScriptedTimer(speedup=2.0)
    policy = SamplingPolicy(min_pairs=10, batch=10, max_pairs=50, budget_s=60, record_pairs=10)
    m = measure_pairs(timer, lambda: None, lambda: None, policy, lambda pairs: False)
    assert len(m.pairs) == 50 and not m.settled


def test_sampling_stops_when_the_time_budget_is_spent():
    timer = ScriptedTimer(speedup=2.0)
    policy = SamplingPolicy(min_pairs=5, batch=5, max_pairs=10_000, budget_s=1e-9)
    m = measure_pairs(timer, lambda: None, lambda: None, policy, lambda pairs: False)
    assert len(m.pairs) <= 10


def test_host_timer_alternates_which_side_goes_first():
    calls = []
    HostTimer().pairs(lambda: calls.append("A"), lambda: calls.append("B"), 4)
    assert "".join(calls) == "ABBAABBA"


def test_garbage_collection_is_off_while_timing_and_restored_after():
    seen = []
    measure_pairs(ScriptedTimer(2.0), lambda: seen.append(gc.isenabled()), lambda: None,
                  SamplingPolicy(min_pairs=3), lambda p: True)
    assert not any(seen) and gc.isenabled()


def test_measurement_flags_a_throttled_gpu():
    timer = ScriptedTimer(2.0, state={"throttled": True})
    m = measure_pairs(timer, lambda: None, lambda: None, SamplingPolicy(min_pairs=3), lambda p: True)
    assert m.throttled


def test_policy_rejects_too_few_pairs_for_an_interval():
    with pytest.raises(ValueError, match="min_pairs"):
        SamplingPolicy(min_pairs=2)


def test_recording_a_baseline_takes_more_pairs_for_a_sound_noise_estimate():
    policy = SamplingPolicy(min_pairs=10, record_pairs=40)
    m = measure_pairs(ScriptedTimer(2.0), lambda: None, lambda: None, policy, lambda p: True, recording=True)
    assert len(m.pairs) == 40
