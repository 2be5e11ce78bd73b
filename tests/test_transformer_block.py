"""The decode step's projections that read one activation (q, k, v; gate, up) stacked into one linear
(lowprec_workloads/transformer_block.py: Linear.stacked, DecodeStep's `stack`), as decode engines merge them.
"""

from __future__ import annotations

import pytest
import torch
from decode_steps import gpu_step

from lowprec_workloads.transformer_block import Linear

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _weights(*rows: int, k: int = 64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(31)
    return [(i + 1) * torch.randn(n, k, generator=g) for i, n in enumerate(rows)]


def _row() -> torch.Tensor:
    return torch.randn(1, 64, generator=torch.Generator().manual_seed(32))


@pytest.mark.parametrize("precision", ["bf16", "fp8", "w4a16", "nvfp4"])
def test_stacked_linear_gives_each_weights_own_output_side_by_side(precision):
    weights = _weights(48, 16, 32)
    stacked = Linear.stacked(weights, precision, rows=1)
    assert stacked.parts == (48, 16, 32)
    outputs = stacked.split(stacked(_row(), None))
    for w, out in zip(weights, outputs, strict=True):
        alone = Linear.build(w, precision)
        assert torch.allclose(out.float(), alone(_row(), None).float(), rtol=1e-5, atol=1e-5)


def test_stacked_fp8_linear_keeps_each_weights_tensorwise_scale():
    weights = _weights(48, 16)
    stacked = Linear.stacked(weights, "fp8", rows=1)
    scales = [Linear.build(w, "fp8").fp8.inv_scale for w in weights]
    assert torch.equal(stacked.fp8.inv_scale, torch.cat([scales[0].expand(48), scales[1].expand(16)]))
    assert stacked.nbytes == 64 * 64 + 64 * 4  # the codes, and a scale a row where each weight had one


def test_stacked_16_bit_linear_holds_its_weights_bytes():
    weights = _weights(48, 16)
    assert Linear.stacked(weights, "fp16", rows=4).nbytes == sum(Linear.build(w, "fp16").nbytes for w in weights)


def test_fp8_weights_are_not_stacked_for_more_rows_than_the_gemv_takes():
    assert Linear.stacked(_weights(48, 16), "fp8", rows=2) is None  # _scaled_mm takes one weight scale


def test_fp8_weights_are_not_stacked_where_the_chooser_gives_the_stack_no_gemv():
    """A benchmark's chooser measured the weights' own shapes only: the stack would have no one-row kernel."""
    from lowprec_workloads.fp8_linear import gemv_config

    def own_shapes_only(n, k):
        return gemv_config(n, k) if n in (48, 16) else None

    assert Linear.stacked(_weights(48, 16), "fp8", rows=1, fp8_gemv=own_shapes_only) is None


def test_stacked_nvfp4_linear_holds_each_weights_own_quantization():
    """Each weight quantized alone, its tensor scale kept on its rows: the stack's values are the parts' bits
    (quantized as one tensor, the second weight, twice the first's scale, would set every row's tensor
    scale)."""
    weights = _weights(48, 16)
    stacked = Linear.stacked(weights, "w4a16", rows=1)
    alone = [Linear.build(w, "w4a16").decode_weight.nvfp4 for w in weights]
    assert stacked.parts == (48, 16)
    assert torch.equal(stacked.decode_weight.nvfp4.dequantize(), torch.cat([a.dequantize() for a in alone]))
    assert stacked.nbytes == 64 * 64 // 2 + 64 * 64 // 16 + 64 * 4


@pytest.mark.parametrize(("precision", "reads"), [("fp16", torch.float16), ("w4a16", torch.bfloat16)])
def test_a_linear_takes_its_input_already_cast_and_refuses_a_copy_in_another_dtype(precision, reads):
    lin = Linear.build(_weights(16)[0], precision)
    x = _row()
    assert lin.input_dtype == reads
    assert torch.equal(lin(x, None, x_copy=x.to(reads)), lin(x, None))
    with pytest.raises(ValueError, match=f"in {reads}, the dtype this {precision} linear reads"):
        lin(x, None, x_copy=x.to(torch.float32))


def test_the_cpu_decode_step_keeps_its_projections_apart():
    from lowprec_workloads.strategies import builtin_strategies
    from lowprec_workloads.transformer_block import SMALL, DecodeStep, Weights

    step = DecodeStep(Weights.random(SMALL, "cpu", seed=11), SMALL, builtin_strategies()["fp8_balanced"], None)
    assert not step.stacked and "q_proj" in step.linears[0] and "qkv" not in step.linears[0]


def test_a_cpu_decode_step_launches_nothing_programmatically():
    from lowprec_workloads.strategies import builtin_strategies
    from lowprec_workloads.transformer_block import SMALL, DecodeStep, Weights

    step = DecodeStep(Weights.random(SMALL, "cpu", seed=11), SMALL, builtin_strategies()["fp8_balanced"], None)
    assert not step.programmatic


# -- on a GPU ------------------------------------------------------------------------------------
@needs_cuda
def test_stacked_16_bit_decode_step_gives_the_separate_steps_logits_on_cuda():
    stacked, apart = gpu_step("fp16_baseline"), gpu_step("fp16_baseline", stack=False)
    assert stacked.stacked and not apart.stacked
    assert {"qkv", "gate_up"} <= set(stacked.linears[0]) and "q_proj" in apart.linears[0]
    # cuBLAS may pick another algorithm for the stacked shape: its sums in another order.
    assert (stacked() - apart()).abs().max() <= 1e-2 * apart().std()


@needs_cuda
@pytest.mark.parametrize("strategy", ["fp8_balanced", "w4a16_aggressive", "nvfp4_weights"])
def test_stacked_quantized_decode_step_gives_the_separate_steps_bits_on_cuda(strategy):
    """At d=512 every FP8 GEMV, stacked or not, takes the same unsplit tile, and the NVFP4 decode linear sums a
    row the same whatever rows it has: the same sums, the same bits."""
    assert torch.equal(gpu_step(strategy)(), gpu_step(strategy, stack=False)())


@needs_cuda
@pytest.mark.parametrize("nvfp4_mma", [True, False], ids=["decode-linear", "gemv"])
def test_stacked_nvfp4_linear_gives_each_weights_own_bits_on_cuda(nvfp4_mma):
    """The Llama-3-8B q, k, v shapes through the tensor-core decode linear (or the CUDA-core GEMV), each row
    scaled by its own weight's tensor scale."""
    from lowprec_workloads.nvfp4_gemm import CudaKernels

    cuda = CudaKernels(torch.device("cuda:0"))
    laid_out = cuda if nvfp4_mma else None
    weights = [w.cuda() for w in _weights(4096, 1024, 1024, k=4096)]
    x = torch.randn(1, 4096, generator=torch.Generator().manual_seed(34)).cuda()
    stacked = Linear.stacked(weights, "w4a16", rows=1, cuda=laid_out)
    assert (stacked.decode_weight.tiled is not None) == nvfp4_mma
    alone = [Linear.build(w, "w4a16", cuda=laid_out)(x, cuda) for w in weights]
    assert torch.equal(stacked(x, cuda), torch.cat(alone, dim=1))


@needs_cuda
def test_the_decode_steps_nvfp4_weights_are_held_once_in_the_decode_linears_layout_on_cuda():
    step = gpu_step("w4a16_aggressive")
    for layer in step.linears:
        for lin in layer.values():
            w = lin.decode_weight
            assert w.tiled is not None and not w.keeps_format and lin.nbytes == w.linear_nbytes


@needs_cuda
def test_stacked_nvfp4_linear_gives_each_weights_own_bits_through_the_tiled_kernel_on_cuda():
    """More rows than the decode linear takes: the tiled Triton kernel scales each output column by its row's
    tensor scale."""
    weights = [w.cuda() for w in _weights(96, 32, k=256)]
    x = torch.randn(80, 256, generator=torch.Generator().manual_seed(35)).cuda()
    stacked = Linear.stacked(weights, "w4a16", rows=80)
    alone = [Linear.build(w, "w4a16")(x, None) for w in weights]
    assert torch.equal(stacked(x, None), torch.cat(alone, dim=1))


@needs_cuda
def test_stacked_fp8_gemv_gives_each_weights_own_gemv_bits_under_one_tile_on_cuda():
    """The hardware's E4M3 rounding and wgmma sums, split K and promoted, as the large step runs them."""
    from lowprec_workloads.fp8_linear import GemvConfig

    def tile(n, k):
        return GemvConfig("dot", 64, 256, 4, 3, split_k=4, promote_k=128)

    weights = [w.cuda() for w in _weights(4096, 1024, 1024, k=4096)]
    x = torch.randn(1, 4096, generator=torch.Generator().manual_seed(33)).cuda()
    stacked = Linear.stacked(weights, "fp8", rows=1, fp8_gemv=tile)
    alone = [Linear.build(w, "fp8", tile)(x, None) for w in weights]
    assert torch.equal(stacked(x, None), torch.cat(alone, dim=1))


@needs_cuda
@pytest.mark.parametrize(("strategy", "fewer"), [("fp8_balanced", 3), ("w4a16_aggressive", 3), ("nvfp4_weights", 6)])
def test_stacked_decode_step_launches_one_gemv_for_qkv_and_one_for_gate_and_up_on_cuda(strategy, fewer):
    """Per layer the FP8 GEMVs (or NVFP4 decode linears) of q, k, v become one launch and gate, up one: three
    fewer; with NVFP4 activations their round trips too (three more). Their inputs' casts to bfloat16 are no
    launches either way: the norm before them writes the copy (without it, an H200 counted three more a layer
    apart, 2026-12-02). (cuBLAS may add a split-K reduction to a 16-bit GEMV of either shape: its count is not
    fixed.)"""
    def launched(step) -> int:
        step()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)

    assert launched(gpu_step(strategy, stack=False)) - launched(gpu_step(strategy)) == fewer * 2
