"""Default accuracy floors per format, from peers' tests (../shared/REFERENCE.md).

Quantize-dequantize SQNR floors in dB on N(0,1) data. They are the loose,
absolute part of a gate; the stored per-GPU baseline (1 dB drift margin on
`sqnr_db`) is the tight part. Suites use these unless they say otherwise.
"""

from __future__ import annotations

# format -> (floor dB, where the floor comes from)
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
