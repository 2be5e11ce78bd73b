"""Accuracy floors per format: the quantize-dequantize SQNR a correct implementation gives on the
suites' data, and the looser floors peers' tests use (QDQ_SQNR_FLOOR_DB names the source of each).

A floor from a format's known error travels to every GPU: it gates without a stored baseline.
`EXPECTED_QDQ_SQNR_DB` holds what the reference quantizers (bit-exact with TransformerEngine's and
torchao's, tests/test_formats.py) give on N(0,1) 1024x1024 data drawn with seed 1234 ("normal") and
the same data with four channels 100x larger ("outliers": the whole tensor; "bulk": the other
channels). `expected_floor` sits `MARGIN_DB` under it. Measured on the same data: NVFP4 with 32-element
blocks loses 0.6 dB on N(0,1) and 2.0 dB on the outlier data, truncation instead of round-to-nearest-even
6.8 dB, a block scale of amax/5 instead of amax/6 3.0 dB, E5M2 elements where E4M3 is required 6.0 dB
(tests/test_broken_quantizers.py runs the suites with each).
tests/test_expected_accuracy.py recomputes every entry.
"""

from __future__ import annotations

import math

# format -> input -> SQNR dB of the reference quantizer on the suites' data (see above).
EXPECTED_QDQ_SQNR_DB: dict[str, dict[str, float]] = {
    "fp8_e4m3_tensorwise": {"normal": 31.54, "outliers": 31.44, "bulk": 31.52},
    "fp8_e4m3_rowwise": {"normal": 31.56, "outliers": 35.63, "bulk": 31.54},
    "fp8_e4m3_1x128": {"normal": 31.79, "outliers": 47.67, "bulk": 31.67},
    "fp8_e5m2_tensorwise": {"normal": 25.58, "outliers": 25.61, "bulk": 25.52},
    "mxfp8": {"normal": 30.64, "outliers": 27.78, "bulk": 30.73},
    "mxfp8_e5m2": {"normal": 25.36, "outliers": 24.56, "bulk": 25.38},
    "mxfp6": {"normal": 30.95, "outliers": 27.68, "bulk": 14.30},
    "mxfp6_e3m2": {"normal": 25.36, "outliers": 24.54, "bulk": 24.51},
    "mxfp4": {"normal": 18.80, "outliers": 17.16, "bulk": 9.82},
    "nvfp4": {"normal": 20.44, "outliers": 26.93, "bulk": 12.77},
    "nvfp4_2d": {"normal": 19.07, "outliers": 19.63, "bulk": 11.51},
}
MARGIN_DB = 1.0


def expected_floor(fmt: str, data: str = "normal") -> float:
    """The SQNR floor (dB) of a format on one of the suites' inputs: MARGIN_DB under what it gives."""
    try:
        return EXPECTED_QDQ_SQNR_DB[fmt][data] - MARGIN_DB
    except KeyError:
        raise ValueError(f"no expected SQNR for {fmt!r} on {data!r}; known: "
                         f"{', '.join(f'{f} ({sorted(d)})' for f, d in EXPECTED_QDQ_SQNR_DB.items())}") from None


def product_sqnr_db(a_db: float, b_db: float) -> float:
    """The SQNR of a product (GEMM, attention's P.V) of two independently quantized operands: their
    relative noise powers add, so two E4M3 operands of 31.5 dB give 28.5 dB, for any reduction length."""
    return -10.0 * math.log10(10.0 ** (-a_db / 10.0) + 10.0 ** (-b_db / 10.0))


# format -> (the loose floor dB peers use, where it comes from): reported beside the expected floor.
QDQ_SQNR_FLOOR_DB: dict[str, tuple[float, str]] = {
    "fp8_e4m3": (25.0, "torchao float8 quantize-dequantize tests"),
    "fp8_e5m2": (20.0, "E5M2 has one mantissa bit less than E4M3: ~6 dB under its 25 dB floor, rounded up"),
    "mxfp8": (18.0, "torchao mx tests, E4M3 elements"),
    "mxfp8_e5m2": (13.0, "torchao mx tests, other MX elements"),
    "mxfp6": (13.0, "torchao mx tests, other MX elements"),
    "mxfp6_e3m2": (13.0, "torchao mx tests, other MX elements"),
    "mxfp4": (13.0, "torchao mx tests, other MX elements"),
    "nvfp4": (8.0, "torchao nvfp4 reconstruction test"),
}
# Accuracy of whole operations (GEMM, linear) in the same formats.
OPERATION_FLOORS = {
    "fp8_linear_output_sqnr_db": 18.0,  # torchao float8 linear
    "fp8_weight_grad_sqnr_db": 17.0,  # torchao float8 linear
    "nvfp4_linear_sqnr_db": 15.0,  # torchao inference tests (15-18)
    "fp8_kv_dequant_atol": 1e-3,  # vLLM, with rtol 0.1
    "fp8_kv_dequant_rtol": 0.1,
    "fp8k_nvfp4v_decode_cosine": 0.99,  # vLLM
}


def qdq_floor(fmt: str) -> float:
    try:
        return QDQ_SQNR_FLOOR_DB[fmt][0]
    except KeyError:
        raise ValueError(f"no default SQNR floor for {fmt!r}; known: {', '.join(QDQ_SQNR_FLOOR_DB)}") from None
