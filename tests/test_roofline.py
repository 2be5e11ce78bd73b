"""The hardware model: where each ceiling comes from, what a declared amount of work takes, and the
speedup floor an expectation turns the prediction into."""

from __future__ import annotations

import pytest

from pytest_lowprec.hardware import DeviceInfo, derived_spec, spec_for
from pytest_lowprec.roofline import (
    DEFAULT_LAUNCH_US,
    Work,
    ceiling_metrics,
    ceilings_for,
    expect_speedup,
    predict,
    predict_side,
    unit_for,
)

H100, H200, B200 = spec_for("h100"), spec_for("h200"), spec_for("b200")
NO_LAUNCH = {"ceiling.launch_us": 1e-9}


def test_a_gpu_measured_in_the_lab_is_predicted_from_its_measurements():
    ceilings = ceilings_for(H200, {})
    assert ceilings.bytes_per_s == pytest.approx(4.253e12)
    assert ceilings.flops_per_s["fp8"] == pytest.approx(1506e12)
    assert ceilings.launch_s == pytest.approx(1.06e-6) and ceilings.link_bytes_per_s == pytest.approx(55.5e9)
    assert ceilings.sources["copy"].startswith("measured in the lab (NVIDIA H200")


def test_a_measurement_in_the_baseline_file_wins_over_the_lab_and_the_datasheet():
    ceilings = ceilings_for(H200, {"ceiling.copy_tb_per_s": 4.1, "ceiling.gemm_tflops.bf16": 780.0})
    assert ceilings.bytes_per_s == pytest.approx(4.1e12) and ceilings.sources["copy"] == "measured here"
    assert ceilings.flops_per_s["bf16"] == pytest.approx(780e12)
    assert ceilings.flops_per_s["fp8"] == pytest.approx(1506e12)  # not measured here: the lab's


def test_a_gpu_nobody_here_measured_is_predicted_from_its_datasheet():
    ceilings = ceilings_for(B200, {})
    assert ceilings.bytes_per_s == pytest.approx(8e12) and ceilings.flops_per_s["fp4"] == pytest.approx(9000e12)
    assert ceilings.source.startswith("datasheet")


def test_no_registry_entry_means_no_ceilings():
    assert ceilings_for(None, {}) is None


def test_the_launch_latency_is_the_default_until_measured_and_is_labelled_so():
    assert ceilings_for(B200, {}).launch_s == pytest.approx(DEFAULT_LAUNCH_US * 1e-6)
    assert "default launch" in ceilings_for(B200, {}).source
    measured = ceilings_for(B200, {"ceiling.launch_us": 4.0})
    assert measured.launch_s == pytest.approx(4e-6) and "default launch" not in measured.source


def test_a_decode_gemv_is_memory_bound_and_predicted_from_its_bytes():
    pred = predict(flops=2 * 8192 * 8192, nbytes=8192 * 8192 * 2, unit="bf16", ceilings=ceilings_for(H100, {}))
    assert pred.bound == "memory"
    assert pred.seconds == pytest.approx(8192 * 8192 * 2 / 3.008e12)


def test_a_large_gemm_is_compute_bound_on_its_precisions_unit():
    n = 8192
    pred = predict(flops=2 * n**3, nbytes=3 * n * n, unit="fp8", ceilings=ceilings_for(B200, {}))
    assert pred.bound == "compute" and pred.unit == "fp8"
    assert pred.seconds == pytest.approx(2 * n**3 / 4500e12)


def test_fp4_work_on_a_chip_without_fp4_units_is_predicted_at_the_bf16_rate():
    pred = predict(flops=1e12, nbytes=1.0, unit="fp4", ceilings=ceilings_for(H100, {}))
    assert pred.unit == "bf16" and pred.seconds == pytest.approx(1e12 / 794.3e12)


def test_fp6_runs_at_the_fp8_rate_where_the_chip_has_fp4_units():
    assert predict(flops=1e12, nbytes=None, unit="fp6", ceilings=ceilings_for(B200, {})).seconds == \
        pytest.approx(1e12 / 4500e12)


def test_phases_of_a_side_add_up_and_each_kernel_costs_a_launch():
    ceilings = ceilings_for(H200, {"ceiling.launch_us": 3.0, "ceiling.copy_tb_per_s": 4.25,
                                   "ceiling.gemm_tflops.bf16": 798.0})
    side = Work(nbytes=4.25e9, kernels=2) + Work(flops=798e12 * 1e-3, unit="bf16")
    pred = predict_side(side, ceilings)
    assert pred.seconds == pytest.approx(1e-3 + 1e-3 + 3 * 3e-6)
    assert pred.bound in ("memory", "compute")


def test_a_phase_takes_the_longest_of_its_bytes_flops_and_link_bytes():
    ceilings = ceilings_for(B200, NO_LAUNCH)
    overlapped = Work(flops=2250e12 * 2e-3, unit="bf16", link_bytes=64e9 * 1e-3, nbytes=8e9)
    pred = predict_side(overlapped, ceilings)
    assert pred.seconds == pytest.approx(2e-3) and pred.bound == "compute"


def test_an_expectation_floors_the_speedup_at_a_fraction_of_the_prediction():
    n = 8192
    exp = expect_speedup(Work(flops=2 * n**3, unit="bf16"), Work(flops=2 * n**3, unit="fp8"),
                         ceilings_for(H200, NO_LAUNCH), fraction=0.8, why="test")
    assert exp.predicted == pytest.approx(1506 / 802.1, rel=1e-6)
    assert exp.floor == pytest.approx(0.8 * 1506 / 802.1, rel=1e-6)
    assert "0.8 x predicted 1.88x, compute/compute-bound, measured" in exp.note()


def test_the_prediction_moves_with_the_gpu():
    bf16, fp8 = Work(nbytes=2e9), Work(nbytes=1e9 + 1e6)
    h200 = expect_speedup(bf16, fp8, ceilings_for(H200, {}), fraction=0.8).predicted
    b200 = expect_speedup(bf16, fp8, ceilings_for(B200, {}), fraction=0.8).predicted
    assert 1.9 < b200 < h200 < 2.0  # the same launch weighs more against 8 TB/s than 4.25


def test_a_side_claimed_faster_is_never_floored_under_one():
    exp = expect_speedup(Work(nbytes=1e9), Work(nbytes=1e9), ceilings_for(H200, {}), fraction=0.8, faster=True)
    assert exp.predicted == pytest.approx(1.0) and exp.floor == 1.0
    assert exp.note().startswith("claimed faster")


def test_without_a_hardware_model_only_a_faster_claim_floors():
    assert expect_speedup(Work(nbytes=1e9), Work(nbytes=5e8), None, fraction=0.8).floor is None
    claim = expect_speedup(Work(nbytes=1e9), Work(nbytes=5e8), None, fraction=0.8, faster=True,
                           unavailable="no hardware model for cpu")
    assert claim.floor == 1.0 and "no hardware model for cpu" in claim.note()


@pytest.mark.parametrize("fraction", [0.0, 1.6, float("nan")])
def test_a_fraction_outside_zero_to_one_and_a_half_is_refused(fraction):
    with pytest.raises(ValueError, match="fraction of the predicted speedup"):
        expect_speedup(Work(nbytes=1.0), Work(nbytes=1.0), None, fraction=fraction)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"nbytes": -1.0}, "nbytes must be a finite number"), ({"flops": float("inf")}, "flops must be"),
    ({"unit": "int3"}, "not a math unit"), ({"kernels": 0}, "takes no time"), ({"kernels": 1.5}, "whole number")])
def test_work_that_cannot_take_time_or_names_no_unit_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Work(**kwargs)


def test_a_gpu_the_registry_does_not_name_is_modelled_from_its_capability():
    future = DeviceInfo(key="some-gpu", name="Some GPU", index=0, capability=(10, 0), sm_count=100)
    spec = derived_spec(future, sm_clock_mhz=2000.0, memory_gbps=6000.0)
    assert spec.bf16_tflops == pytest.approx(8192 * 100 * 2e9 / 1e12)
    assert spec.fp4_tflops == pytest.approx(4 * spec.bf16_tflops)
    assert ceilings_for(spec, {}).source.startswith("derived")


def test_an_unknown_capability_has_no_derived_model():
    odd = DeviceInfo(key="odd", name="Odd", index=0, capability=(7, 0), sm_count=80)
    assert derived_spec(odd, 1500.0, 900.0) is None


def test_ceilings_are_found_in_any_entry_of_a_baseline_file():
    entries = {"suites/test_roofline.py::test_ceilings": {"metrics": {
        "ceiling.copy_tb_per_s": {"value": 2.9}, "speedup": {"value": 1.0}}}}
    assert ceiling_metrics(entries) == {"ceiling.copy_tb_per_s": 2.9}


def test_the_fraction_is_predicted_over_measured_time():
    pred = predict(flops=None, nbytes=3.35e9, unit="bf16", ceilings=ceilings_for(spec_for("h100-pcie"), {}))
    assert pred.fraction(2 * 3.35e9 / 2e12) == pytest.approx(0.5)
    assert "memory roofline" in pred.label() and "datasheet" in pred.label()


def test_a_prediction_needs_some_work():
    with pytest.raises(ValueError, match="needs flops or nbytes"):
        predict(flops=None, nbytes=None, unit="bf16", ceilings=ceilings_for(H100, {}))


@pytest.mark.parametrize(("precisions", "unit"), [(("nvfp4",), "fp4"), (("fp8",), "fp8"), (("bf16",), "bf16"),
                                                  (("fp8", "nvfp4"), "fp4"), (("mxfp6",), "fp6"), ((), "bf16")])
def test_the_unit_is_the_narrowest_precision_in_use(precisions, unit):
    assert unit_for(precisions) == unit
