"""The decode step's projections that read one activation (q, k, v; gate, up) stacked into one linear
(lowprec_workloads/transformer_block.py: Linear.stacked, DecodeStep's `stack`), as decode engines merge them.
"""

from __future__ import annotations

import pytest
import torch

from lowprec_workloads.transformer_block import Linear

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _weights(*rows: int, k: int = 64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(31)
    return [(i + 1) * torch.randn(n, k, generator=g) for i, n in enumerate(rows)]


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_stacked_linear_gives_each_parts_output_side_by_side(precision):
    parts = [Linear.build(w, precision) for w in _weights(48, 16, 32)]
    stacked = Linear.stacked(parts, rows=1)
    assert stacked.parts == (48, 16, 32) and stacked.out_features == 96
    x = torch.randn(1, 64, generator=torch.Generator().manual_seed(32))
    outputs = stacked.split(stacked(x, None))
    for part, out in zip(parts, outputs, strict=True):
        assert torch.allclose(out.float(), part(x, None).float(), rtol=1e-5, atol=1e-5)


def test_stacked_linear_holds_its_parts_bytes():
    parts = [Linear.build(w, "fp16") for w in _weights(48, 16)]
    assert Linear.stacked(parts, rows=4).nbytes == sum(p.nbytes for p in parts)
    fp8 = [Linear.build(w, "fp8") for w in _weights(48, 16)]
    assert Linear.stacked(fp8, rows=1).nbytes == 64 * 64 + 64 * 4  # one scale a row, where each part had one


@pytest.mark.parametrize(("precisions", "rows"), [
    (("w4a16", "w4a16"), 1),  # NVFP4: a per-tensor scale each, which its GEMV takes as one
    (("fp8", "bf16"), 1),  # precisions differ
    (("fp8", "fp8"), 2),  # FP8 on more rows runs _scaled_mm, which takes one weight scale
])
def test_parts_that_cannot_run_as_one_linear_are_not_stacked(precisions, rows):
    parts = [Linear.build(w, p) for w, p in zip(_weights(48, 16), precisions, strict=True)]
    assert Linear.stacked(parts, rows=rows) is None


def test_the_cpu_decode_step_keeps_its_projections_apart():
    from lowprec_workloads.strategies import builtin_strategies
    from lowprec_workloads.transformer_block import SMALL, DecodeStep, Weights

    step = DecodeStep(Weights.random(SMALL, "cpu", seed=11), SMALL, builtin_strategies()["fp8_balanced"], None)
    assert not step.stacked and "q_proj" in step.linears[0] and "qkv" not in step.linears[0]


# -- on a GPU ------------------------------------------------------------------------------------
def _gpu_step(strategy: str, **options):
    from lowprec_workloads.nvfp4_gemm import CudaKernels
    from lowprec_workloads.strategies import builtin_strategies
    from lowprec_workloads.transformer_block import BlockShape, DecodeStep, Weights

    shape = BlockShape(d=512, heads=4, ffn=1536, layers=2, vocab=512, batch=1, context=1024)
    return DecodeStep(Weights.random(shape, "cuda:0", seed=11), shape, builtin_strategies()[strategy],
                      CudaKernels(torch.device("cuda:0")), **options)


@needs_cuda
@pytest.mark.parametrize("strategy", ["fp16_baseline", "fp8_balanced", "w4a16_aggressive"])
def test_stacked_decode_step_gives_the_separate_steps_logits_on_cuda(strategy):
    stacked, apart = _gpu_step(strategy), _gpu_step(strategy, stack=False)
    assert stacked.stacked and not apart.stacked
    # The stacked GEMV splits K by its own shape, so its float32 sums run in another order.
    assert (stacked() - apart()).abs().max() <= 1e-2 * apart().std()


@needs_cuda
@pytest.mark.parametrize(("strategy", "fewer"), [("fp8_balanced", 3), ("w4a16_aggressive", 0)])
def test_stacked_decode_step_launches_one_gemv_for_qkv_and_one_for_gate_and_up_on_cuda(strategy, fewer):
    """Per layer the FP8 GEMVs of q, k, v become one launch and gate, up one: three fewer; NVFP4 weights stay
    apart. (cuBLAS may add a split-K reduction to a 16-bit GEMV of either shape: its count is not fixed.)"""
    def launched(step) -> int:
        step()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)

    assert launched(_gpu_step(strategy, stack=False)) - launched(_gpu_step(strategy)) == fewer * 2
