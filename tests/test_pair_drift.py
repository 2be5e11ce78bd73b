"""benchmarks/pair_drift.py: a speedup's ratio by window of one measurement, in the gate's check and recording."""

from __future__ import annotations

import pytest
import torch

from pytest_lowprec.timing import SamplingPolicy


@pytest.fixture
def pair_drift(benchmark_module):
    return benchmark_module("pair_drift")


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


@pytest.mark.parametrize("width", [0, 1, 31])
def test_a_window_of_an_odd_or_no_number_of_pairs_is_refused(pair_drift, width):
    # The timer alternates A B and B A pairs: an even window holds as many of each.
    with pytest.raises(ValueError, match="even number of pairs"):
        pair_drift.windows([(2.0, 1.0)] * 60, width)


def test_each_window_carries_its_ratios_bootstrap_interval(pair_drift):
    pairs = [(2.0 + 0.01 * (i % 5), 1.0) for i in range(30)]
    (window,) = pair_drift.windows(pairs, 30)
    assert window.low <= window.ratio <= window.high
    assert window.low < window.high


def test_the_check_takes_the_policys_first_pairs_and_the_recording_its_record_pairs(pair_drift):
    timer = SettlingTimer(start=1.75, step=0.001, floor=1.68)
    rows = pair_drift.measure_modes(timer, lambda: None, lambda: None, repeats=1, width=10,
                                    policy=SamplingPolicy(min_pairs=10, record_pairs=40))
    assert [(r["mode"], r["pairs"]) for r in rows] == [("check", 10), ("record", 40)]


def test_the_modes_take_turns_going_first_from_one_repeat_to_the_next(pair_drift):
    timer = SettlingTimer(start=1.75, step=0.0, floor=1.75)
    rows = pair_drift.measure_modes(timer, lambda: None, lambda: None, repeats=3, width=30)
    assert [(r["repeat"], r["mode"]) for r in rows] == [
        (0, "check"), (0, "record"), (1, "record"), (1, "check"), (2, "check"), (2, "record")]


def test_the_gpu_idles_before_each_measurement_and_each_start_is_timed(pair_drift):
    timer = SettlingTimer(start=1.75, step=0.0, floor=1.75)
    now = [100.0]
    idles = []

    def idle():
        idles.append(now[0])
        now[0] += 2.0

    rows = pair_drift.measure_modes(timer, lambda: None, lambda: None, repeats=2, width=30, idle=idle,
                                    clock=lambda: now[0])
    assert len(idles) == 4
    assert [r["started_s"] for r in rows] == [2.0, 4.0, 6.0, 8.0]


def test_a_ratio_that_settles_during_the_measurement_shows_as_drift_and_a_lower_recording(pair_drift):
    timer = SettlingTimer(start=1.75, step=0.001, floor=1.68)
    check, record = pair_drift.measure_modes(timer, lambda: None, lambda: None, repeats=1, width=30)
    assert check["drift"] is None  # one window
    # The first window's pairs fall from 1.75 (median 1.7355); from the 71st pair they sit on 1.68.
    assert record["drift"] == pytest.approx(1.68 / 1.7355 - 1.0)
    assert check["ratio"] == pytest.approx(1.7355)
    assert record["ratio"] == pytest.approx(1.6905)


def test_a_measurement_keeps_its_pairs_and_the_gpus_state(pair_drift):
    timer = SettlingTimer(start=1.75, step=0.0, floor=1.75)
    _, record = pair_drift.measure_modes(timer, lambda: None, lambda: None, repeats=1, width=30)
    assert record["raw_pairs"] == [[2.0, 2.0 / 1.75]] * 120
    assert record["state_before"]["throttle_reasons"] == "0x4"


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


def test_the_command_line_refuses_an_odd_window_before_touching_a_gpu(pair_drift, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        pair_drift.main([str(tmp_path / "out.json"), "--window", "15"])
    assert exit_info.value.code == 2
    assert "even number of pairs" in capsys.readouterr().err


def test_without_a_gpu_the_command_says_it_needs_one_and_writes_nothing(pair_drift, tmp_path, monkeypatch, capsys):
    import pytest_lowprec.hardware

    monkeypatch.setattr(pytest_lowprec.hardware, "probe_cuda", lambda torch_module=None: None)
    assert pair_drift.main([str(tmp_path / "out.json")]) == 1
    assert "needs a CUDA device" in capsys.readouterr().out
    assert not (tmp_path / "out.json").exists()


def test_the_fp8_sides_compute_the_suites_product_of_the_quantized_operands(pair_drift):
    from lowprec_workloads.fp8_linear import square_operands
    from pytest_lowprec.formats.fp8 import quantize_tensorwise, scaled_mm

    a, b = square_operands(256, "cpu")
    (a8, a_inv), (b8, b_inv) = quantize_tensorwise(a), quantize_tensorwise(b)
    expected = scaled_mm(a8, a_inv, b8.t().contiguous().t(), b_inv)
    for kind in ("fp8-gemm", "fp8-linear"):
        baseline, optimized = pair_drift.callables(kind, 256, "cpu")
        assert torch.equal(baseline(), a @ b)
        assert torch.equal(optimized(), expected)


def test_the_fp8_linear_quantizes_its_activation_on_every_call(pair_drift, monkeypatch):
    import lowprec_workloads.fp8_linear

    calls = []
    quantize = lowprec_workloads.fp8_linear.quantize_activation
    monkeypatch.setattr(lowprec_workloads.fp8_linear, "quantize_activation", lambda x: calls.append(1) or quantize(x))
    for kind, per_call in (("fp8-linear", 1), ("fp8-gemm", 0)):
        calls.clear()
        _, optimized = pair_drift.callables(kind, 256, "cpu")
        optimized()
        optimized()
        assert len(calls) == 2 * per_call, kind


def test_the_controls_sides_are_two_callables_of_the_same_product(pair_drift):
    # Two callables: the CUDA timer keys its graphs by callable, so each side replays its own graph.
    baseline, optimized = pair_drift.callables("control", 256, "cpu")
    assert baseline is not optimized
    assert torch.equal(baseline(), optimized())
