"""benchmarks/pair_drift.py: a speedup's ratio by window of one measurement, in the gate's check and recording."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from pytest_lowprec.timing import SamplingPolicy

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def pair_drift(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    yield importlib.import_module("pair_drift")
    sys.modules.pop("pair_drift", None)


class SettlingTimer:
    """A GPU whose speedup falls from `start` by `step` each pair after a warm-up, down to `floor`:
    the pairs of a measurement taken back to back, as the CUDA timer enqueues them."""

    kind = "cuda"

    def __init__(self, start: float, step: float, floor: float):
        self.start, self.step, self.floor = start, step, floor
        self.since_warmup = 0

    def warmup(self, baseline, optimized) -> None:
        self.since_warmup = 0

    def pairs(self, baseline, optimized, n):
        out = []
        for _ in range(n):
            speedup = max(self.start - self.step * self.since_warmup, self.floor)
            out.append((2.0, 2.0 / speedup))
            self.since_warmup += 1
        return out

    def state(self):
        return {"sm_clock_mhz": 1980, "temperature_c": 40, "throttle_reasons": "0x4", "throttled": False}


def test_windows_cut_a_measurement_in_order_and_take_each_windows_median_ratio(pair_drift):
    pairs = [(2.0, 1.0)] * 30 + [(3.0, 1.0)] * 30
    parts = pair_drift.windows(pairs, 30)
    assert [(w.first, w.pairs, w.ratio) for w in parts] == [(0, 30, 2.0), (30, 30, 3.0)]
    assert (parts[1].baseline_ms, parts[1].optimized_ms) == (3.0, 1.0)


def test_a_last_window_under_half_full_is_left_out(pair_drift):
    assert [w.pairs for w in pair_drift.windows([(2.0, 1.0)] * 74, 30)] == [30, 30]
    assert [w.pairs for w in pair_drift.windows([(2.0, 1.0)] * 75, 30)] == [30, 30, 15]


def test_a_measurement_shorter_than_a_window_is_one_window(pair_drift):
    assert [w.pairs for w in pair_drift.windows([(2.0, 1.0)] * 10, 30)] == [10]


def test_drift_is_the_last_windows_ratio_over_the_first(pair_drift):
    parts = pair_drift.windows([(2.0, 1.0)] * 30 + [(1.9, 1.0)] * 30, 30)
    assert pair_drift.drift(parts) == pytest.approx(-0.05)
    assert pair_drift.drift(parts[:1]) is None


def test_a_window_of_no_pairs_is_refused(pair_drift):
    with pytest.raises(ValueError, match="at least one pair"):
        pair_drift.windows([(2.0, 1.0)], 0)


def test_the_check_takes_the_policys_first_pairs_and_the_recording_its_record_pairs(pair_drift):
    timer = SettlingTimer(start=1.75, step=0.001, floor=1.68)
    rows = pair_drift.measure_modes(timer, lambda: None, lambda: None, repeats=2, width=30,
                                    policy=SamplingPolicy(min_pairs=30, record_pairs=120))
    assert [(r["repeat"], r["mode"], r["pairs"]) for r in rows] == [
        (0, "check", 30), (0, "record", 120), (1, "check", 30), (1, "record", 120)]


def test_a_ratio_that_settles_during_the_measurement_shows_as_drift_and_a_lower_recording(pair_drift):
    timer = SettlingTimer(start=1.75, step=0.001, floor=1.68)
    check, record = pair_drift.measure_modes(timer, lambda: None, lambda: None, repeats=1, width=30)
    assert check["drift"] is None  # one window
    # The first window's pairs fall from 1.75 (median 1.7355); from the 71st pair they sit on 1.68.
    assert record["drift"] == pytest.approx(1.68 / 1.7355 - 1.0)
    assert check["ratio"] == pytest.approx(1.7355)
    assert record["ratio"] == pytest.approx(1.6905)
    assert record["state_after"]["throttle_reasons"] == "0x4"
    assert len(record["raw_pairs"]) == 120


def test_a_steady_ratio_shows_no_drift(pair_drift):
    timer = SettlingTimer(start=1.74, step=0.0, floor=1.74)
    _, record = pair_drift.measure_modes(timer, lambda: None, lambda: None, repeats=1, width=30)
    assert record["drift"] == pytest.approx(0.0)
    assert [round(w["ratio"], 6) for w in record["windows"]] == [1.74] * 4


@pytest.mark.parametrize("name", ["fp8-linear-1024", "fp16-gemm-8192", "control", "fp8-gemm-"])
def test_an_unknown_workload_is_named_with_what_to_use(pair_drift, name):
    with pytest.raises(ValueError, match="use fp8-linear-N, fp8-gemm-N or control-N"):
        pair_drift.parse_workload(name)


def test_a_known_workload_parses_to_its_kind_and_size(pair_drift):
    assert pair_drift.parse_workload("fp8-linear-8192") == ("fp8-linear", 8192)
    assert pair_drift.parse_workload("control-4096") == ("control", 4096)


def test_the_command_line_refuses_an_unknown_workload_before_touching_a_gpu(pair_drift, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        pair_drift.main([str(tmp_path / "out.json"), "--workloads", "fp8-linear-8192,fp8-linear-1000"])
    assert exit_info.value.code == 2
    assert "unknown workload 'fp8-linear-1000'" in capsys.readouterr().err


def test_without_a_gpu_the_command_says_it_needs_one_and_writes_nothing(pair_drift, tmp_path, monkeypatch, capsys):
    import pytest_lowprec.hardware

    monkeypatch.setattr(pytest_lowprec.hardware, "probe_cuda", lambda torch_module=None: None)
    assert pair_drift.main([str(tmp_path / "out.json")]) == 1
    assert "needs a CUDA device" in capsys.readouterr().out
    assert not (tmp_path / "out.json").exists()
