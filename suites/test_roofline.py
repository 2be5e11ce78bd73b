"""This GPU's measured ceilings: the copy bandwidth, the GEMM rate per precision, the pinned host-to-device
link, and the cost of one kernel launch inside a CUDA graph.

One calibration per GPU, recorded with its baselines (`--lowprec-update`): later runs predict
every declared workload's time from these instead of the datasheet (pytest_lowprec.roofline),
and report each one's measured fraction of its roofline. Each ceiling is the best of several
CUDA-event-timed repetitions, as a ceiling is the best the chip does, not its typical run.
A ceiling above the datasheet's peak means the timing is broken, and fails. A ceiling under the recorded
GPU's is first this GPU's own: GPUs of one key differ (CEILING_MARGIN); one further under means a
throttled GPU or a broken measurement, and fails.
"""

from __future__ import annotations

import pytest
import torch

from pytest_lowprec.formats.fp8 import quantize_tensorwise, scaled_mm
from pytest_lowprec.gate import Margin
from pytest_lowprec.hardware import spec_for
from pytest_lowprec.timing import cuda_event_times_ms

CUDA_ONLY = pytest.mark.lowprec(device="cuda")
COPY_BYTES = 1 << 30  # four times an H100's or B200's L2 on each side: the copy reads and writes HBM
LINK_BYTES = 1 << 28  # pinned host memory to the device
GEMM_N = 8192
REPEATS = 20
LAUNCHES = 200  # tiny kernels replayed back to back from one CUDA graph
# How far under the recorded GPU's a ceiling's fraction of the datasheet may lie: GPUs of one key differ. Over
# 14 runs on H200s lent one at a time (2026-12-01: 13 full gates, benchmarks/data/gate-run-h200-*.tar.gz, and
# roofline-decode-h200-2026-12-01-da10f90.tar.gz) the FP8 GEMM's fraction ran 0.716-0.778, BF16's 0.788-0.825
# and the copy's 0.870-0.886; the FP8 entry (0.769) lies near the top: GPUs up to 8.7% apart. 10% is the cap the
# speed gate's own tolerance never exceeds (lowprec_max_tolerance); 0.05 the efficiencies' usual floor. A slower
# FP8 path of ours (formats.fp8.scaled_mm, the quantizer) is suites/test_fp8_gemm.py's to catch, against the same
# GPU's BF16 GEMM within its entry's 3%+ tolerance; this margin covers the GPUs, not the code.
CEILING_MARGIN = Margin(abs=0.05, rel=0.10)


def best_ms(fn, repeats: int = REPEATS) -> float:
    """The fastest of `repeats` CUDA-event-timed calls, after three warm-up calls."""
    return min(cuda_event_times_ms(fn, repeats, warmup=3))


def _launch_us(device: str) -> float:
    """What one kernel costs beyond its work: a CUDA graph of LAUNCHES one-element kernels, replayed."""
    x = torch.zeros(1, device=device)
    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        x.add_(1.0)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(LAUNCHES):
            x.add_(1.0)
    return best_ms(graph.replay) * 1e3 / LAUNCHES


@CUDA_ONLY
def test_measured_ceilings(lowprec):
    spec = spec_for(lowprec.gpu.key)
    lowprec.signature(copy_bytes=COPY_BYTES, gemm_n=GEMM_N)
    buffers = [torch.empty(COPY_BYTES, dtype=torch.uint8, device=lowprec.device) for _ in range(2)]
    copy_tbps = 2 * COPY_BYTES / (best_ms(lambda: buffers[1].copy_(buffers[0])) * 1e-3) / 1e12
    buffers.clear()
    lowprec.ceiling("copy_tb_per_s", copy_tbps, "TB/s")

    n = GEMM_N
    a = torch.randn(n, n, device=lowprec.device).bfloat16()
    b = torch.randn(n, n, device=lowprec.device).bfloat16()
    rates = {"bf16": 2 * n**3 / (best_ms(lambda: a @ b) * 1e-3) / 1e12}
    a8, sa = quantize_tensorwise(a)
    b8, sb = quantize_tensorwise(b)
    b8 = b8.t().contiguous().t()
    rates["fp8"] = 2 * n**3 / (best_ms(lambda: scaled_mm(a8, sa, b8, sb)) * 1e-3) / 1e12
    for unit, tflops in rates.items():
        lowprec.ceiling(f"gemm_tflops.{unit}", tflops, "TFLOP/s")

    host = torch.empty(LINK_BYTES, dtype=torch.uint8).pin_memory()
    device_copy = torch.empty(LINK_BYTES, dtype=torch.uint8, device=lowprec.device)
    link_gbps = LINK_BYTES / (best_ms(lambda: device_copy.copy_(host, non_blocking=True)) * 1e-3) / 1e9
    lowprec.ceiling("h2d_gb_per_s", link_gbps, "GB/s")
    lowprec.ceiling("launch_us", _launch_us(lowprec.device), "us per kernel")

    if spec is not None:  # a measured ceiling above the datasheet's peak is a broken timer
        lowprec.efficiency("copy_of_datasheet", copy_tbps / (spec.hbm_gbps / 1e3), max=1.05, margin=CEILING_MARGIN)
        lowprec.efficiency("bf16_gemm_of_datasheet", rates["bf16"] / spec.bf16_tflops, max=1.05,
                           margin=CEILING_MARGIN)
        if spec.fp8_tflops:
            lowprec.efficiency("fp8_gemm_of_datasheet", rates["fp8"] / spec.fp8_tflops, max=1.05,
                               margin=CEILING_MARGIN)
