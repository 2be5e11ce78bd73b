"""NVFP4 GEMM kernels: the naive CUDA kernel, the tiled tensor-core kernel, the decode linear.

Accuracy: every output element against the float64 product of the dequantized operands (never a
checksum or a mean), with the output poisoned with NaN before the kernel runs, so an element the
kernel never writes fails. Each product of an E2M1 value and an E4M3 scale is exact, so the only
error is float32 accumulation order: the bound is 1e-5 relative L2, a thousand times under the
1e-2 the format's peers quote, which would hide an indexing bug that misplaces a few blocks.
On CPU the tiled kernel runs in Triton's interpreter at a small size; the CUDA C++ kernels need
a GPU (tests/test_nvfp4_linear_emulation.py runs the decode linear's lanes on the CPU). Speed (GPU):
tiled against naive at 4096^3 (floor 20x: the naive kernel is a labelled naive reference, one thread
per output, whose time no roofline predicts); the decode linear layer over 8192x8192 NVFP4 weights
against the BF16 GEMV torch runs, floored at a fraction of the bytes model.
"""

from __future__ import annotations

import pytest
import torch

from lowprec_workloads.nvfp4_gemm import (
    NATIVE,
    TILED,
    CudaKernels,
    TileConfig,
    decode_path,
    gemm_path,
    gemm_tiled,
    gemm_tiled_interpreted,
    linear,
    prepare_decode_weight,
    to_blocked,
)
from pytest_lowprec.formats.metrics import rel_l2
from pytest_lowprec.formats.nvfp4 import quantize_nvfp4
from pytest_lowprec.roofline import Work

GPU_GEMM = 4096
CPU_GEMM = (64, 96, 256)  # M, N, K for the interpreter
CPU_TILE = TileConfig(block_m=32, block_n=32, block_k=64, group_m=2, num_warps=4, num_stages=1)
GEMV_N = GEMV_K = 8192
EXACT_BOUND = 1e-5
# Tiled over naive: the target, 20x (74x measured on the H100 and 73x on the H200, 2026-11-22); an absolute
# floor because the naive kernel is a naive reference whose time no roofline predicts.
TILED_OVER_NAIVE = 20.0
# The decode linear over BF16 is memory-bound: the bytes model (weights read once, plus a launch) predicts
# 3.3x on an H100 or H200 (3.28x at 1 row, 3.24x at 16). One row reached 0.68-0.69 of it on the H200 and
# 0.79 on the H100 (the CUDA-core GEMV); 16 rows 0.19 (H200) and 0.26 (H100) through the tiled GEMM. The
# tensor-core decode kernel on weights laid out in its read order reached 0.78 at 1 row and 0.61 at 16 on
# the H200 (benchmarks/nvfp4_linear_variants.py, 2026-12-01, sixth session: 2.57x and 1.97x), so each
# fraction sits 10% under that, as the house rule for a prediction over 1.3x
# (docs/measurements/gate-expectations-h200-2026-11-30.md).
LINEAR_FRACTION = {1: 0.70, 16: 0.54}
CUDA_ONLY = pytest.mark.lowprec(device="cuda")


@pytest.fixture(scope="module")
def cuda_kernels():
    """Kernel libraries by device, loaded once for the module."""
    return {}


def _cuda(cache: dict, device: str) -> CudaKernels:
    if device not in cache:
        cache[device] = CudaKernels(torch.device(device))
    return cache[device]


def _operands(m: int, n: int, k: int, device: str, seed: int = 5):
    g = torch.Generator(device="cpu").manual_seed(seed)
    a = torch.randn(m, k, generator=g).to(device)
    b = torch.randn(n, k, generator=g).to(device)
    return quantize_nvfp4(a), quantize_nvfp4(b)


def _reference(a, b) -> torch.Tensor:
    a64 = a.double() if isinstance(a, torch.Tensor) else a.dequantize(torch.float64)
    return a64 @ b.dequantize(torch.float64).T


def _poisoned(m: int, n: int, device: str) -> torch.Tensor:
    return torch.full((m, n), float("nan"), dtype=torch.float32, device=device)


def _gate_output(lowprec, out: torch.Tensor, reference: torch.Tensor) -> None:
    lowprec.accuracy("unwritten_or_nonfinite_elements", int((~torch.isfinite(out)).sum()), max=0)
    lowprec.accuracy("rel_l2", rel_l2(reference, out), max=EXACT_BOUND)


@pytest.mark.lowprec(precision="nvfp4")
@pytest.mark.parametrize("kernel", ["tiled", pytest.param("naive", marks=CUDA_ONLY)])
def test_nvfp4_gemm_matches_float64_product(lowprec, cuda_kernels, kernel):
    m, n, k = (GPU_GEMM,) * 3 if lowprec.on_cuda else CPU_GEMM
    path = ("triton" if lowprec.on_cuda else "triton-interpreter") if kernel == "tiled" else "cuda-naive"
    lowprec.signature(m=m, n=n, k=k, seed=5, path=path)
    a, b = _operands(m, n, k, lowprec.device)
    if kernel == "naive":
        out = _cuda(cuda_kernels, lowprec.device).gemm_naive(a, b, _poisoned(m, n, lowprec.device))
    elif lowprec.on_cuda:
        out = gemm_tiled(a, b, out=_poisoned(m, n, lowprec.device))
    else:
        out = gemm_tiled_interpreted(a, b, CPU_TILE)
    _gate_output(lowprec, out, _reference(a, b))


@pytest.mark.lowprec(precision="nvfp4")
# 3 and 64: a batch that leaves an n8 tile part empty, and the largest the tensor-core decode kernel takes.
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 16, 64])
def test_nvfp4_linear_matches_float64_product(lowprec, cuda_kernels, rows):
    n, k = (GEMV_N, GEMV_K) if lowprec.on_cuda else (96, 256)
    cuda = _cuda(cuda_kernels, lowprec.device) if lowprec.on_cuda else None
    lowprec.signature(n=n, k=k, seed=6, path=decode_path(rows, k, cuda is not None))
    g = torch.Generator(device="cpu").manual_seed(6)
    x = torch.randn(rows, k, generator=g).bfloat16().to(lowprec.device)
    w = quantize_nvfp4(torch.randn(n, k, generator=g).to(lowprec.device))
    if lowprec.on_cuda:
        out = linear(x, prepare_decode_weight(w, cuda), cuda, _poisoned(rows, n, lowprec.device))
    else:
        out = gemm_tiled_interpreted(x, w, TileConfig(block_m=16, block_n=32, block_k=64, group_m=1,
                                                      num_warps=4, num_stages=1))
    _gate_output(lowprec, out, _reference(x, w))


@CUDA_ONLY
@pytest.mark.lowprec(precision="nvfp4")
def test_nvfp4_tiled_gemm_speed_over_naive(lowprec, cuda_kernels):
    n = GPU_GEMM
    lowprec.signature(m=n, n=n, k=n, tiled="triton bf16 tensor cores", naive="cuda one thread per output")
    a, b = _operands(n, n, n, lowprec.device)
    cuda = _cuda(cuda_kernels, lowprec.device)
    out_naive, out_tiled = _poisoned(n, n, lowprec.device), _poisoned(n, n, lowprec.device)
    gemm_tiled(a, b, out=out_tiled)
    lowprec.speedup(baseline=lambda: cuda.gemm_naive(a, b, out_naive), min=TILED_OVER_NAIVE,
                    optimized=lambda: gemm_tiled(a, b, out=out_tiled))
    lowprec.expect_kernels("optimized", require=r"_nvfp4_gemm_kernel")
    lowprec.expect_kernels("baseline", require=r"nvfp4_gemm_naive_kernel")
    lowprec.work(flops=2.0 * n**3)


@CUDA_ONLY
@pytest.mark.lowprec(precision="nvfp4")
@pytest.mark.parametrize("rows", [1, 16])
def test_nvfp4_linear_speed_over_bf16(lowprec, cuda_kernels, rows):
    n, k = GEMV_N, GEMV_K
    cuda = _cuda(cuda_kernels, lowprec.device)
    path = decode_path(rows, k, cuda=True)
    # The weight is prepared once, as a model's weights are loaded: the same bytes in the order the kernel
    # reads them (kernels/nvfp4_linear.cuh, kStepMajor).
    lowprec.signature(n=n, k=k, rows=rows, path=path, weights="tiled for the kernel once")
    g = torch.Generator(device="cpu").manual_seed(6)
    x = torch.randn(rows, k, generator=g).bfloat16().to(lowprec.device)
    w_bf16 = torch.randn(n, k, generator=g).bfloat16().to(lowprec.device)
    w = prepare_decode_weight(quantize_nvfp4(w_bf16), cuda)
    out = _poisoned(rows, n, lowprec.device)
    linear(x, w, cuda, out)
    weight_bytes = w.linear_nbytes
    lowprec.memory("weight_bytes", weight_bytes, max=n * k // 2 + n * k // 16 + 4)  # E2M1, E4M3 per 16, fp32
    lowprec.info("weight_bytes_over_bf16", weight_bytes / (w_bf16.numel() * 2))
    bf16_bytes = w_bf16.numel() * 2 + x.numel() * 2 + rows * n * 2
    nvfp4_bytes = weight_bytes + x.numel() * 2 + out.numel() * 4
    floor = lowprec.expect(Work(nbytes=bf16_bytes, flops=2.0 * rows * n * k), Work(nbytes=nvfp4_bytes),
                           fraction=LINEAR_FRACTION[rows], why="docs/measurements/gate-expectations-h200-2026-11-30.md")
    lowprec.speedup(baseline=lambda: torch.nn.functional.linear(x, w_bf16), min=floor,
                    optimized=lambda: linear(x, w, cuda, out), graphs=True)
    if path == "cuda-mma":
        lowprec.expect_kernels("optimized", require=r"nvfp4_linear_kernel")
    lowprec.work(nbytes=nvfp4_bytes)


@pytest.mark.parametrize(("capability", "path"), [((9, 0), TILED), ((8, 0), TILED), ((8, 9), TILED),
                                                  ((10, 0), NATIVE), ((12, 0), NATIVE)])
def test_nvfp4_gemm_path_follows_capability(capability, path):
    # No Blackwell GPU is at hand: its dispatch is checked with a faked capability.
    assert gemm_path(capability, torch_has_fp4=True) == path


def test_nvfp4_gemm_without_torch_fp4_dtype_emulates_on_blackwell():
    assert gemm_path((10, 0), torch_has_fp4=False) == TILED


def test_nvfp4_gemm_refuses_devices_without_bf16_tensor_cores():
    with pytest.raises(RuntimeError, match="compute capability 7.5"):
        gemm_path((7, 5), torch_has_fp4=True)


def test_block_scales_follow_cublas_128x4_layout():
    rows, cols = 200, 12
    scales = torch.arange(rows * cols, dtype=torch.int32).reshape(rows, cols)
    blocked = to_blocked(scales)
    tiles_per_row = -(-cols // 4)
    assert blocked.numel() == 256 * 12  # rows padded to 128, columns to 4
    for r in range(rows):
        for c in range(cols):
            tile = (r // 128) * tiles_per_row + c // 4
            offset = tile * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4
            assert blocked[offset] == scales[r, c]
