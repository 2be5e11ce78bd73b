"""Every format of bounds.EXPECTED_QDQ_SQNR_DB by name: quantize-then-dequantize on the reference quantizers,
with the bytes the quantized tensor takes. The quantization suite gates each one and
tests/test_expected_accuracy.py recomputes its expected SQNR from it, so a format is one entry here
(docs/adding-a-format.md). The quantizers are looked up when called, so a patched one is the one used.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import fp8, mx, nvfp4

QDQ = Callable[[torch.Tensor], tuple[torch.Tensor, int]]


def _fp8(name: str, dtype: torch.dtype = torch.float8_e4m3fn) -> QDQ:
    def qdq(x: torch.Tensor) -> tuple[torch.Tensor, int]:
        q, inv = getattr(fp8, name)(x, dtype)
        return fp8.dequantize(q, inv), q.numel() + inv.numel() * 4
    return qdq


def _mx(fmt: str) -> QDQ:
    def qdq(x: torch.Tensor) -> tuple[torch.Tensor, int]:
        q = mx.quantize_mx(x, fmt)
        return q.dequantize(), q.nbytes
    return qdq


def _nvfp4(tile: tuple[int, int]) -> QDQ:
    def qdq(x: torch.Tensor) -> tuple[torch.Tensor, int]:
        q = nvfp4.quantize_nvfp4(x, tile=tile)
        return q.dequantize(), q.nbytes
    return qdq


FORMATS: dict[str, QDQ] = {
    "fp8_e4m3_tensorwise": _fp8("quantize_tensorwise"),
    "fp8_e4m3_rowwise": _fp8("quantize_rowwise"),
    "fp8_e4m3_1x128": _fp8("quantize_blockwise"),
    "fp8_e5m2_tensorwise": _fp8("quantize_tensorwise", torch.float8_e5m2),
    "mxfp8": _mx("mxfp8"),
    "mxfp8_e5m2": _mx("mxfp8_e5m2"),
    "mxfp6": _mx("mxfp6"),
    "mxfp6_e3m2": _mx("mxfp6_e3m2"),
    "mxfp4": _mx("mxfp4"),
    "nvfp4": _nvfp4((1, 16)),
    "nvfp4_2d": _nvfp4((16, 16)),
}
