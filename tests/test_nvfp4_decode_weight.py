"""The NVFP4 decode linear's prepared weight (lowprec_workloads.nvfp4_gemm.prepare_decode_weight): what it
refuses on any machine; on a GPU, that the tensor-core kernel over the laid-out weight is the product of
the dequantized operands (padded tiles, every shipped shape, a K it does not take), and what preparing
and the kernel refuse there."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents

from lowprec_workloads import kernels
from lowprec_workloads.nvfp4_gemm import (
    CudaKernels,
    DecodeWeight,
    TileConfig,
    decode_path,
    gemm_native,
    gemm_tiled,
    gemm_tiled_interpreted,
    linear,
    prepare_decode_weight,
)
from pytest_lowprec.formats.metrics import rel_l2
from pytest_lowprec.formats.nvfp4 import NVFP4Tensor, quantize_nvfp4

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _weight(n: int, k: int, device: str = "cpu"):
    g = torch.Generator(device="cpu").manual_seed(3)
    return quantize_nvfp4(torch.randn(n, k, generator=g).to(device))


def test_linear_refuses_a_weight_that_was_not_prepared():
    x = torch.randn(1, 256).bfloat16()
    with pytest.raises(TypeError, match="prepare_decode_weight"):
        linear(x, _weight(32, 256), None, torch.empty(1, 32))


def _stack(k: int, device: str = "cpu") -> NVFP4Tensor:
    """Three weights of 16x-apart magnitudes quantized apart (40 rows, 24, 8), stacked with their tensor scales."""
    g = torch.Generator(device="cpu").manual_seed(7)
    return NVFP4Tensor.concatenated([quantize_nvfp4((16.0 ** i * torch.randn(n, k, generator=g)).to(device))
                                     for i, n in enumerate((40, 24, 8))])


def test_a_tensor_scale_neither_one_nor_one_a_row_is_refused():
    bad = replace(_weight(32, 256), global_decode=torch.ones(16, 1))
    with pytest.raises(ValueError, match=r"tensor scale must be one float32 or one a row \(\[rows, 1\]"):
        gemm_tiled(torch.randn(1, 256).bfloat16(), bad)


def test_the_native_gemm_refuses_a_stack_with_a_tensor_scale_a_row():
    with pytest.raises(ValueError, match="multiply by each part of the stack apart"):
        gemm_native(_weight(8, 256), _stack(256))


@pytest.mark.slow  # Triton's interpreter in a child process: `pytest tests/ --slow` (.ci/run) runs it
def test_the_tiled_kernel_scales_each_row_of_a_stack_by_its_own_tensor_scale_in_the_interpreter():
    stack = _stack(128)
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(8)).bfloat16()
    out = gemm_tiled_interpreted(x, stack, TileConfig(block_m=16, block_n=32, block_k=64, group_m=1, num_warps=4,
                                                      num_stages=1))
    assert rel_l2(x.double() @ stack.dequantize(torch.float64).T, out.double()) < 1e-6


def test_a_weight_held_only_in_the_decode_linears_layout_refuses_other_paths():
    w = _weight(32, 256)
    laid_out_only = DecodeWeight(replace(w, packed=w.packed[:0], block_scales=w.block_scales[:0]),
                                 tiled=torch.zeros(32 * 128, dtype=torch.uint8),
                                 tiled_scales=torch.zeros(2 * 256, dtype=torch.uint8), keeps_format=False)
    with pytest.raises(ValueError, match="holds only the decode linear's layout .* prepare it with keep_format=True"):
        linear(torch.randn(1, 256).bfloat16(), laid_out_only, None, torch.empty(1, 32))


def test_a_weight_prepared_without_cuda_kernels_keeps_only_the_format():
    prepared = prepare_decode_weight(_weight(32, 256), None)
    assert isinstance(prepared, DecodeWeight) and prepared.tiled is None
    assert prepared.shape == (32, 256) and prepared.linear_nbytes == prepared.nvfp4.nbytes


@needs_cuda
@pytest.mark.parametrize("n", [40, 72])
@pytest.mark.parametrize("rows", [1, 3, 16, 24, 64])
def test_tiled_decode_linear_is_the_product_of_the_dequantized_operands(rows, n):
    # N = 40 and 72 pad their last tile of 16 rows, and their step stride (the row tiles) differs from
    # N / 16; K = 2944 is 23 steps, so the warps along K take 2 or 3 (at 8 warps) or 5 or 6 (at 4) and
    # the 2-step rings of the 17..64-row shapes turn over. 1, 3, 16, 24 and 64 rows run each shipped shape.
    k = 2944
    tiles = -(-n // 16)
    cuda = CudaKernels(torch.device("cuda:0"))
    w = _weight(n, k, "cuda")
    prepared = prepare_decode_weight(w, cuda)
    assert prepared.tiled.numel() == tiles * 16 * k // 2 and prepared.tiled_scales.numel() == tiles * 16 * k // 16
    x = torch.randn(rows, k, generator=torch.Generator(device="cpu").manual_seed(4)).bfloat16().cuda()
    out = linear(x, prepared, cuda, torch.full((rows, n), float("nan"), device="cuda"))
    reference = x.double() @ w.dequantize(torch.float64).T
    assert rel_l2(reference, out.double()) < 1e-5


@needs_cuda
@pytest.mark.parametrize("rows", [1, 3, 16, 32, 64])
def test_every_decode_kernel_scales_each_row_of_a_stack_by_its_own_tensor_scale(rows):
    """The tensor-core decode linear (each shipped shape), the GEMV (1..2 rows) and the tiled kernel over a
    stack whose last row tile is padded and whose parts' scales lie 16x apart."""
    k = 512
    cuda = CudaKernels(torch.device("cuda:0"))
    stack = _stack(k, "cuda")
    x = torch.randn(rows, k, generator=torch.Generator(device="cpu").manual_seed(9)).bfloat16().cuda()
    reference = x.double() @ stack.dequantize(torch.float64).T

    def poisoned() -> torch.Tensor:
        return torch.full((rows, 72), float("nan"), device="cuda")

    outs = {"mma": linear(x, prepare_decode_weight(stack, cuda), cuda, poisoned()),
            "tiled": gemm_tiled(x, stack, out=poisoned())}
    if rows <= 2:
        outs["gemv"] = cuda.gemv(x, stack, poisoned())
    for path, out in outs.items():
        assert rel_l2(reference, out.double()) < 1e-5, path


@triton.jit
def _write_late(src, dst, zeros, n, spins, BLOCK: tl.constexpr):
    """dst = src, stored after the program has let the next launch start and then read `zeros` `spins` times."""
    gdc_launch_dependents()
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    value = tl.load(src + offs, mask=mask, other=0.0)
    for _ in range(spins):
        value += tl.load(zeros + offs, mask=mask, other=0.0, volatile=True)
    tl.store(dst + offs, value, mask=mask)


@needs_cuda
@pytest.mark.parametrize("rows", [1, 16, 64])
@pytest.mark.parametrize("captured", [False, True], ids=["eager", "graph"])
def test_a_programmatic_decode_linear_waits_for_the_rows_the_launch_before_writes(rows, captured):
    # The launch before it lets it start at once and writes x over NaN only after hundreds of reads: a linear
    # that read x before that launch finished would sum NaN.
    k, n = 2944, 72
    cuda = CudaKernels(torch.device("cuda:0"))
    if not kernels.programmatic_launches(cuda.device):
        pytest.skip("programmatic launches need compute capability 9.0")
    prepared = prepare_decode_weight(_weight(n, k, "cuda"), cuda)
    rows_in = torch.randn(rows, k, generator=torch.Generator().manual_seed(12)).bfloat16().cuda()
    x, zeros, out = torch.empty_like(rows_in), torch.zeros_like(rows_in), torch.empty(rows, n, device="cuda")
    expected = linear(rows_in, prepared, cuda, torch.empty(rows, n, device="cuda"))

    def call() -> None:
        _write_late[(triton.cdiv(x.numel(), 1024),)](rows_in, x, zeros, x.numel(), 256, BLOCK=1024)
        linear(x, prepared, cuda, out, programmatic=True)

    if captured:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            call()
    for _ in range(3):
        x.fill_(float("nan"))
        out.fill_(float("nan"))
        graph.replay() if captured else call()
        torch.cuda.synchronize()
        assert torch.equal(out, expected)


@needs_cuda
def test_a_weight_held_only_in_its_layout_runs_the_decode_linear_and_refuses_more_rows():
    cuda = CudaKernels(torch.device("cuda:0"))
    w = _weight(40, 256, "cuda")
    kept, only = prepare_decode_weight(w, cuda), prepare_decode_weight(w, cuda, keep_format=False)
    assert only.nbytes == only.linear_nbytes < kept.nbytes
    x = torch.randn(2, 256, generator=torch.Generator().manual_seed(10)).bfloat16().cuda()
    assert torch.equal(linear(x, only, cuda, torch.empty(2, 40, device="cuda")),
                       linear(x, kept, cuda, torch.empty(2, 40, device="cuda")))
    with pytest.raises(ValueError, match="this call has 80 rows"):
        linear(torch.zeros(80, 256, device="cuda").bfloat16(), only, cuda, torch.empty(80, 40, device="cuda"))


@needs_cuda
def test_preparing_refuses_a_weight_on_another_device():
    cuda = CudaKernels(torch.device("cuda:0"))
    with pytest.raises(ValueError, match="on cuda:0"):
        prepare_decode_weight(_weight(32, 256), cuda)


@needs_cuda
def test_preparing_refuses_a_weight_with_16x16_blocks():
    cuda = CudaKernels(torch.device("cuda:0"))
    w = quantize_nvfp4(torch.randn(32, 256, device="cuda"), tile=(16, 16))
    with pytest.raises(ValueError, match="1x16 blocks"):
        prepare_decode_weight(w, cuda)


@needs_cuda
def test_the_tensor_core_linear_refuses_a_weight_prepared_without_cuda_kernels():
    cuda = CudaKernels(torch.device("cuda:0"))
    prepared = prepare_decode_weight(_weight(32, 256, "cuda"), None)
    with pytest.raises(TypeError, match="prepared without CUDA kernels"):
        cuda.linear(torch.randn(1, 256).bfloat16().cuda(), prepared, torch.empty(1, 32, device="cuda"))


@needs_cuda
def test_the_tensor_core_linear_refuses_an_unprepared_weight():
    cuda = CudaKernels(torch.device("cuda:0"))
    x = torch.randn(1, 256).bfloat16().cuda()
    with pytest.raises(TypeError, match="prepare_decode_weight"):
        cuda.linear(x, _weight(32, 256, "cuda"), torch.empty(1, 32, device="cuda"))


@needs_cuda
def test_a_k_the_tensor_core_kernel_does_not_take_goes_to_the_tiled_kernel():
    n, k, rows = 40, 320, 3  # K not a multiple of 128, more rows than the GEMV takes
    cuda = CudaKernels(torch.device("cuda:0"))
    w = _weight(n, k, "cuda")
    prepared = prepare_decode_weight(w, cuda)
    assert prepared.tiled is None and decode_path(rows, k, cuda=True) == "triton"
    x = torch.randn(rows, k, generator=torch.Generator(device="cpu").manual_seed(5)).bfloat16().cuda()
    out = linear(x, prepared, cuda, torch.full((rows, n), float("nan"), device="cuda"))
    assert rel_l2(x.double() @ w.dequantize(torch.float64).T, out.double()) < 1e-5


@needs_cuda
def test_cuda_kernels_built_for_a_device_without_an_index_run_on_the_current_one():
    cuda = CudaKernels(torch.device("cuda"))
    assert cuda.device == torch.device("cuda", torch.cuda.current_device())
    w = quantize_nvfp4(torch.randn(64, 128, device="cuda").bfloat16())
    x = torch.randn(1, 128, device="cuda").bfloat16()
    out = cuda.gemv(x, w, torch.empty(1, 64, device="cuda"))
    assert torch.allclose(out, x.float() @ w.dequantize().float().t(), rtol=1e-3, atol=1e-3)
