"""Bandwidth of the quantizers on a GPU, against the device-to-device copy ceiling measured here.

    python benchmarks/quantize_bandwidth.py

For each shape (bf16 input): the Triton NVFP4 (1x16) and FP8 rowwise quantizers
and their eager references, timed with the plugin's CUDA-event timer (L2
flushed before each call, CUDA-graph replay, median of 50). "moved" counts every byte the kernels
read and write (NVFP4 reads its input twice: the amax pass, then the fused
pass; once when the amax is given, as under delayed scaling); "minimal"
counts the input once and the outputs once. A benchmark, not a test: it
prints a table and asserts nothing.
"""

from __future__ import annotations

import statistics
import sys

import torch

from pytest_lowprec.formats.fp8 import quantize_rowwise
from pytest_lowprec.formats.nvfp4 import quantize_nvfp4
from pytest_lowprec.formats.triton_quant import absmax, quantize_fp8_rowwise_triton, quantize_nvfp4_triton
from pytest_lowprec.hardware import probe_cuda
from pytest_lowprec.timing import CudaEventTimer

SHAPES = [(4096, 4096), (8192, 8192), (16384, 8192)]


def _cases(x: torch.Tensor) -> dict:
    """name -> (callable, bytes all its kernels move or None if uncounted, minimal bytes)."""
    m, elems = x.shape[0], x.numel()
    amax = x.float().abs().amax()  # delayed scaling: the amax is known before the call
    nvfp4_out = elems // 2 + elems // 16
    return {
        "nvfp4 triton": (lambda: quantize_nvfp4_triton(x), 2 * elems * 2 + nvfp4_out, elems * 2 + nvfp4_out),
        "  its amax pass": (lambda: absmax(x), elems * 2, elems * 2),
        "nvfp4 triton, amax given": (lambda: quantize_nvfp4_triton(x, amax=amax), elems * 2 + nvfp4_out,
                                     elems * 2 + nvfp4_out),
        "nvfp4 eager": (lambda: quantize_nvfp4(x, check_finite=False), None, elems * 2 + nvfp4_out),
        "fp8 rowwise triton": (lambda: quantize_fp8_rowwise_triton(x), elems * 3 + m * 4, elems * 3 + m * 4),
        "fp8 rowwise eager": (lambda: quantize_rowwise(x), None, elems * 3 + m * 4),
    }


def medians_ms(timer: CudaEventTimer, copy, fn, n: int = 50) -> tuple[float, float]:
    """Median ms of the copy and of fn, timed as alternating pairs."""
    timer.warmup(copy, fn)
    pairs = timer.pairs(copy, fn, n)
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def main() -> int:
    device = probe_cuda()
    if device is None:
        print("needs a CUDA device")
        return 1
    # Graph replay: the table is about the kernels' bandwidth, not the host's launch rate.
    timer = CudaEventTimer(device.index, l2_bytes=device.l2_bytes, uuid=device.uuid, graphs=True)
    rows = []
    for m, n in SHAPES:
        x = torch.randn(m, n, device="cuda").to(torch.bfloat16)
        elems = m * n
        for name, (fn, moved, minimal) in _cases(x).items():
            copy_ms, ms = medians_ms(timer, x.clone, fn)
            ceiling = 2 * elems * 2 / (copy_ms * 1e-3) / 1e12
            moved_tbps = moved / (ms * 1e-3) / 1e12 if moved else None
            rows.append((f"{m}x{n}", name, ms, moved_tbps, minimal / (ms * 1e-3) / 1e12, ceiling))
    print(f"device: {device.name}, torch {torch.__version__}")
    print(f"{'shape':11} {'quantizer':24} {'ms':>8} {'moved TB/s':>11} {'minimal TB/s':>13} "
          f"{'copy TB/s':>10} {'moved/copy':>11}")
    for shape, name, ms, moved, minimal, ceiling in rows:
        moved_text = f"{moved:11.2f}" if moved else f"{'-':>11}"
        frac = f"{moved / ceiling:11.0%}" if moved else f"{'-':>11}"
        print(f"{shape:11} {name:24} {ms:8.3f} {moved_text} {minimal:13.2f} {ceiling:10.2f} {frac}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
