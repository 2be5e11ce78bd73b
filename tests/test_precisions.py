"""The precision registry: every name is consistent with the formats' numbers, the sessions and the hardware."""

from __future__ import annotations

import pytest

from pytest_lowprec import hardware, precisions
from pytest_lowprec.formats import bounds
from pytest_lowprec.formats.minifloat import ELEMENTS


def test_every_precisions_formats_have_an_expected_sqnr():
    for precision in precisions.PRECISIONS:
        assert set(precision.formats) <= set(bounds.EXPECTED_QDQ_SQNR_DB), precision.name


def test_every_format_with_an_expected_sqnr_belongs_to_exactly_one_precision():
    for fmt in bounds.EXPECTED_QDQ_SQNR_DB:
        owners = [p.name for p in precisions.PRECISIONS if fmt in p.formats]
        assert owners == [precisions.of_format(fmt).name], fmt


def test_floating_point_elements_are_formats_the_quantizers_know():
    for precision in precisions.PRECISIONS:
        floats = [e for e in precision.elements if e.startswith(("fp8_", "fp6_", "fp4_"))]
        assert set(floats) <= set(ELEMENTS), precision.name


def test_a_precisions_default_floor_is_its_expected_sqnr_less_the_margin():
    floors = precisions.get("nvfp4").floors_db("outliers")
    expected = bounds.EXPECTED_QDQ_SQNR_DB
    assert floors == {fmt: expected[fmt]["outliers"] - bounds.MARGIN_DB for fmt in ("nvfp4", "nvfp4_2d")}


def test_the_nox_sessions_group_each_format_family():
    assert precisions.sessions() == {"fp8": ("fp8", "mxfp8"), "fp6": ("fp6", "mxfp6"), "fp4": ("fp4", "mxfp4"),
                                     "nvfp4": ("nvfp4",)}


@pytest.mark.parametrize(("names", "unit"), [
    (("nvfp4",), "fp4"), (("fp8", "mxfp4"), "fp4"), (("mxfp6",), "fp6"), (("int8",), "fp8"),
    (("fp16",), "bf16"), (("int4",), "bf16"), ((), "bf16"), (("a-label-the-registry-lacks",), "bf16"),
])
def test_the_unit_of_several_precisions_is_the_narrowest_one(names, unit):
    assert precisions.unit_for(names) == unit


def test_hopper_has_fp8_tensor_cores_and_emulates_fp6_and_fp4():
    units = precisions.generation((9, 0)).units
    assert "fp8" in units and "fp6" not in units and "fp4" not in units


def test_blackwell_has_fp4_and_fp6_tensor_cores():
    assert {"fp4", "fp6", "fp8"} <= set(precisions.generation((10, 0)).units)


def test_an_unknown_precision_names_the_valid_ones():
    with pytest.raises(ValueError, match="valid precisions: fp8, fp6"):
        precisions.get("fp7")


def test_a_precision_names_a_unit_the_roofline_knows():
    with pytest.raises(ValueError, match="is not one of"):
        precisions.Precision("fp5", ("fp5_e2m2",), "fp5")


def test_a_derived_gpu_gets_rates_only_for_the_units_its_generation_has():
    hopper = hardware.DeviceInfo(key="h-next", name="NVIDIA H-Next", capability=(9, 0), sm_count=100)
    spec = hardware.derived_spec(hopper, sm_clock_mhz=2000.0, memory_gbps=5000.0)
    assert spec.fp8_tflops and spec.fp4_tflops is None
