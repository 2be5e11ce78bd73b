"""Several recordings of the same code in one baseline entry (recordings.merge_entry): what is merged, what is
recorded anew, and what a merge that spreads too far leaves."""

from __future__ import annotations

import pytest

from pytest_lowprec.recordings import MAX_RECORDINGS, merge_entry


def _entry(value: float, *, commit="abc123", uuid="GPU-a", noise=0.01, rounds=None, sqnr=28.0, **fields) -> dict:
    speedup = {"kind": "speedup", "value": value, "median": value, "noise": noise, "baseline_ms": 2.0 * value,
               "optimized_ms": 2.0, "samples": 120}
    if rounds is not None:
        speedup["rounds"] = rounds
    entry = {"commit": commit, "software": {"torch": "2.11"}, "signature": {"n": 1024}, "recorded": "2026-12-01",
             "device": {"uuid": uuid}, "metrics": {"speedup": speedup, "sqnr_db": {"kind": "accuracy", "value": sqnr}}}
    entry.update(fields)
    return entry


def test_a_recording_of_the_same_code_joins_the_entry_and_its_value_is_the_recordings_median():
    entry, notes = merge_entry("t", _entry(2.00), _entry(2.04, uuid="GPU-b"), max_spread=0.05)
    once, notes2 = merge_entry("t", entry, _entry(2.01, uuid="GPU-c"), max_spread=0.05)
    speedup = once["metrics"]["speedup"]
    assert notes == notes2 == []
    assert speedup["value"] == speedup["median"] == 2.01
    assert [(r["value"], r["device"]) for r in speedup["recordings"]] == [(2.00, "GPU-a"), (2.04, "GPU-b"),
                                                                          (2.01, "GPU-c")]
    assert speedup["optimized_ms"] == 2.0 and speedup["baseline_ms"] == pytest.approx(4.02)


def test_the_merged_spread_covers_every_recordings_rounds_and_the_noise_is_the_largest():
    entry, _ = merge_entry("t", _entry(2.0, rounds=[1.98, 2.0, 2.02], noise=0.004),
                           _entry(2.05, noise=0.02), max_spread=0.05)
    speedup = entry["metrics"]["speedup"]
    assert speedup["rounds"] == [1.98, 2.0, 2.02, 2.05]
    assert speedup["spread"] == pytest.approx((2.05 - 1.98) / 2.025)
    assert speedup["noise"] == 0.02


def test_a_merge_that_spreads_past_the_cap_keeps_the_stored_metric_and_says_how_far_the_recordings_lie():
    stored = _entry(2.36)
    entry, notes = merge_entry("t", stored, _entry(2.21, sqnr=29.0), max_spread=0.05)
    assert entry["metrics"]["speedup"] == stored["metrics"]["speedup"]
    assert entry["metrics"]["sqnr_db"]["value"] == 29.0  # other metrics take the new recording
    assert len(notes) == 1 and "t speedup: not merged: its 2 recordings (2.210x to 2.360x) spread 6.6%" in notes[0]
    assert "recording cap 5%" in notes[0] and "re-record it anew" in notes[0]


@pytest.mark.parametrize(("new", "why"), [
    (_entry(2.0, commit="def456"), "recorded at abc123, this run is at def456"),
    (_entry(2.0, commit="abc123-dirty"), "uncommitted changes"),
    (_entry(2.0, commit=None), "commit is unknown"),
    (_entry(2.0, software={"torch": "2.12"}), "its software differs"),
    (_entry(2.0, signature={"n": 2048}), "its signature differs"),
], ids=["another commit", "a dirty tree", "no commit", "other software", "another workload"])
def test_code_that_may_differ_is_recorded_anew_and_the_note_says_why(new, why):
    entry, notes = merge_entry("t", _entry(2.5), new, max_spread=0.05)
    assert entry is new and "recordings" not in entry["metrics"]["speedup"]
    assert len(notes) == 1 and notes[0].startswith("lowprec: t: recorded anew, not merged: ") and why in notes[0]


def test_a_first_recording_is_written_as_it_is():
    new = _entry(2.0)
    assert merge_entry("t", None, new, max_spread=0.05) == (new, [])


def test_a_metric_keeps_its_newest_recordings_only():
    entry = _entry(2.0)
    for i in range(MAX_RECORDINGS + 3):
        entry, _ = merge_entry("t", entry, _entry(2.0 + 0.001 * i, uuid=f"GPU-{i}"), max_spread=0.05)
    recordings = entry["metrics"]["speedup"]["recordings"]
    assert len(recordings) == MAX_RECORDINGS and recordings[-1]["device"] == f"GPU-{MAX_RECORDINGS + 2}"
    assert recordings[0]["device"] == "GPU-3"  # the stored one and GPU-0..2 dropped
