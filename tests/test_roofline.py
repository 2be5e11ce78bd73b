"""Roofline predictions: which ceiling bounds a workload, and where the ceilings come from."""

from __future__ import annotations

import pytest

from pytest_lowprec.hardware import spec_for
from pytest_lowprec.roofline import (
    ceiling_metrics,
    datasheet_ceilings,
    measured_ceilings,
    predict,
    unit_for,
)

H100 = spec_for("h100")


def test_a_decode_gemv_is_memory_bound_and_predicted_from_its_bytes():
    pred = predict(flops=2 * 8192 * 8192, nbytes=8192 * 8192 * 2, unit="bf16", ceilings=datasheet_ceilings(H100))
    assert pred.bound == "memory"
    assert pred.seconds == pytest.approx(8192 * 8192 * 2 / 3.35e12)


def test_a_large_gemm_is_compute_bound_on_its_precisions_unit():
    n = 8192
    pred = predict(flops=2 * n**3, nbytes=3 * n * n, unit="fp8", ceilings=datasheet_ceilings(H100))
    assert pred.bound == "compute" and pred.unit == "fp8"
    assert pred.seconds == pytest.approx(2 * n**3 / 1979e12)


def test_fp4_work_on_a_chip_without_fp4_units_is_predicted_at_the_bf16_rate():
    pred = predict(flops=1e12, nbytes=1.0, unit="fp4", ceilings=datasheet_ceilings(H100))
    assert pred.unit == "bf16" and pred.seconds == pytest.approx(1e12 / 989e12)


def test_measured_ceilings_replace_the_datasheet_and_say_so():
    metrics = {"ceiling.copy_tb_per_s": 2.9, "ceiling.gemm_tflops.fp8": 1300.0}
    ceilings = measured_ceilings(metrics, H100)
    assert ceilings.source == "measured"
    assert ceilings.bytes_per_s == pytest.approx(2.9e12)
    assert ceilings.flops_per_s["fp8"] == pytest.approx(1.3e15)
    assert ceilings.flops_per_s["bf16"] == pytest.approx(989e12)  # not measured: the datasheet's


def test_without_a_measured_copy_bandwidth_the_datasheet_applies():
    assert measured_ceilings({}, H100).source == "datasheet"
    assert measured_ceilings({}, None) is None


def test_ceilings_are_found_in_any_entry_of_a_baseline_file():
    entries = {"suites/test_roofline.py::test_ceilings": {"metrics": {
        "ceiling.copy_tb_per_s": {"value": 2.9}, "speedup": {"value": 1.0}}}}
    assert ceiling_metrics(entries) == {"ceiling.copy_tb_per_s": 2.9}


def test_the_fraction_is_predicted_over_measured_time():
    pred = predict(flops=None, nbytes=3.35e9, unit="bf16", ceilings=datasheet_ceilings(H100))
    assert pred.fraction(2e-3) == pytest.approx(0.5)
    assert "memory roofline" in pred.label() and "datasheet" in pred.label()


def test_a_prediction_needs_some_work():
    with pytest.raises(ValueError, match="needs flops or nbytes"):
        predict(flops=None, nbytes=None, unit="bf16", ceilings=datasheet_ceilings(H100))


@pytest.mark.parametrize(("precisions", "unit"), [(("nvfp4",), "fp4"), (("fp8",), "fp8"), (("bf16",), "bf16"),
                                                  (("fp8", "nvfp4"), "fp4"), ((), "bf16")])
def test_the_unit_is_the_narrowest_precision_in_use(precisions, unit):
    assert unit_for(precisions) == unit
