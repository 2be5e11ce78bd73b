"""The formats' expected accuracy: every entry of the table the suites' floors sit under is what the
reference quantizers give on the suites' data, and the floors catch the broken quantizers they must."""

from __future__ import annotations

import pytest
import torch

from pytest_lowprec.formats import bounds, nvfp4, reference
from pytest_lowprec.formats.metrics import sqnr_db

OUTLIER_CHANNELS = [3, 200, 511, 900]


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    """suites/test_quantization.py's inputs: N(0,1) 1024x1024 from seed 1234, and with 4 channels x100."""
    x = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(1234))
    outliers = x.clone()
    outliers[:, OUTLIER_CHANNELS] *= 100.0
    return {"normal": x, "outliers": outliers}


def _sqnr(fmt: str, data: dict, which: str) -> float:
    x = data["normal" if which == "normal" else "outliers"]
    y, _ = reference.FORMATS[fmt](x)
    if which == "bulk":
        keep = torch.ones(x.shape[1], dtype=torch.bool)
        keep[OUTLIER_CHANNELS] = False
        x, y = x[:, keep], y[:, keep]
    return sqnr_db(x, y)


def test_every_format_of_the_table_has_a_quantizer_here():
    assert set(reference.FORMATS) == set(bounds.EXPECTED_QDQ_SQNR_DB)


@pytest.mark.parametrize("fmt", sorted(bounds.EXPECTED_QDQ_SQNR_DB))
def test_the_expected_sqnr_is_what_the_reference_quantizer_gives(fmt, data):
    for which, expected in bounds.EXPECTED_QDQ_SQNR_DB[fmt].items():
        assert _sqnr(fmt, data, which) == pytest.approx(expected, abs=0.01), (fmt, which)


def test_the_product_of_two_quantized_operands_adds_their_noise_powers():
    assert bounds.product_sqnr_db(31.54, 31.54) == pytest.approx(28.53, abs=0.01)
    assert bounds.product_sqnr_db(30.0, 200.0) == pytest.approx(30.0, abs=1e-6)


def test_an_unknown_format_or_input_says_what_is_known():
    with pytest.raises(ValueError, match="no expected SQNR for 'fp9' on 'normal'; known: fp8_e4m3_tensorwise"):
        bounds.expected_floor("fp9")


def test_nvfp4_with_32_element_blocks_falls_under_the_floor_where_blocks_share_outliers(data, monkeypatch):
    monkeypatch.setattr(nvfp4, "BLOCK", 32)
    x = data["outliers"]
    y = nvfp4.quantize_nvfp4(x, tile=(1, 32)).dequantize()
    assert sqnr_db(x, y) < bounds.expected_floor("nvfp4", "outliers")


def test_nvfp4_block_scale_from_amax_over_5_falls_under_the_floor(data, monkeypatch):
    monkeypatch.setattr(nvfp4, "FP4_MAX", 5.0)
    assert _sqnr("nvfp4", data, "normal") < bounds.expected_floor("nvfp4")


def test_e5m2_where_e4m3_is_required_falls_under_the_floor(data):
    assert bounds.EXPECTED_QDQ_SQNR_DB["fp8_e5m2_tensorwise"]["normal"] < bounds.expected_floor("fp8_e4m3_tensorwise")
