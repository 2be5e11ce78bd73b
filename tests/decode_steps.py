"""The small decode step the CUDA tests of the step's paths build (fusions, stacking, NVFP4 weights): Llama's
shape scaled down to d=512, two layers, 1K context, one sequence, so every fused and stacked path runs."""

from __future__ import annotations

import torch


def gpu_step(strategy: str, **options):
    """A builtin strategy's DecodeStep on cuda:0 over the seed-11 weights; `options` go to DecodeStep."""
    from lowprec_workloads.nvfp4_gemm import CudaKernels
    from lowprec_workloads.strategies import builtin_strategies
    from lowprec_workloads.transformer_block import BlockShape, DecodeStep, Weights

    shape = BlockShape(d=512, heads=4, ffn=1536, layers=2, vocab=512, batch=1, context=1024)
    return DecodeStep(Weights.random(shape, "cuda:0", seed=11), shape, builtin_strategies()[strategy],
                      CudaKernels(torch.device("cuda:0")), **options)
