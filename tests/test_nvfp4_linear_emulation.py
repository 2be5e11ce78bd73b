"""The tensor-core decode linear (kernels/nvfp4_linear.cuh) checked without a GPU: the CUDA source's own
per-lane code (pointers, register ring, E2M1 decodes, scales, fragment pairs) runs on the CPU lane by
lane, an mma following PTX's m16n8k16 fragment layout stands in for the tensor core, and every output
element is compared with float64 of the dequantized operands (tests/cuda/nvfp4_linear_emulation.cu:
each decode and load hint, split-K, rows past N and M, and the shipped shapes)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from lowprec_workloads import kernels

HARNESS = Path(__file__).resolve().parent / "cuda" / "nvfp4_linear_emulation.cu"
needs_nvcc = pytest.mark.skipif(
    kernels.find_nvcc() is None and not os.environ.get("LOWPREC_REQUIRE_NVCC"),
    reason="nvcc not installed (CI sets LOWPREC_REQUIRE_NVCC)",
)


@pytest.mark.slow  # a build of seconds: `pytest tests/ --slow` (.ci/run) runs it
@needs_nvcc
def test_decode_linear_lanes_emulated_on_cpu_match_float64_product(tmp_path):
    program = tmp_path / "nvfp4_linear_emulation"
    # 20011: the header's host/device step functions call the harness's host-only mma recorder.
    build = subprocess.run([kernels.find_nvcc(), "-O2", "-std=c++17", "--expt-relaxed-constexpr", "-diag-suppress",
                            "20011", f"-I{kernels.KERNELS_DIR}", "-o", str(program), str(HARNESS)],
                           capture_output=True, text=True, check=False)
    assert build.returncode == 0, build.stdout + build.stderr
    run = subprocess.run([str(program)], capture_output=True, text=True, check=False, timeout=300)
    lines = run.stdout.splitlines()
    assert run.returncode == 0, run.stdout + run.stderr
    assert len(lines) >= 15 and all(line.startswith("ok ") for line in lines), run.stdout
