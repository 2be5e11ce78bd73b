"""FP8 training with data parallelism on 2 processes against the same training in one process.

Both runs start from identical weights and see the same global batches for the same steps (one
poisoned to overflow); the data-parallel run splits each batch over its ranks. On the CPU the two
ranks are gloo processes at the training suite's CPU size; on GPUs (`--gpu 2x_h200`) they are NCCL
processes, one per GPU, at the chapter's shape.
"""

from __future__ import annotations

import statistics

import pytest

from lowprec_workloads.fp8_data_parallel import Job, launch, scaling, single_process_losses
from lowprec_workloads.fp8_training import Shape

WORLD = 2
# The training suite's shapes: the same global batch, each rank taking tokens / WORLD of it.
CPU_SHAPE = Shape(d=64, blocks=2, tokens=512, steps=150)
GPU_SHAPE = Shape(d=4096, blocks=2, tokens=4096, steps=150, lr=3e-4)
POISON_STEP = 40
LAST_K = 20
# The training suite's bound on the final-loss gap; here against the same FP8 training in one process.
LOSS_GAP_BOUND = 0.01


@pytest.mark.slow  # a CPU training of minutes: CI runs it with --slow; a GPU run always
@pytest.mark.lowprec(precision="fp8", gpus=WORLD)
def test_data_parallel_fp8_training_matches_one_process(lowprec, tmp_path):
    shape = GPU_SHAPE if lowprec.on_cuda else CPU_SHAPE
    lowprec.signature(world=WORLD, d=shape.d, blocks=shape.blocks, global_tokens=shape.tokens, steps=shape.steps,
                      lr=shape.lr, poison_step=POISON_STEP, backend="nccl" if lowprec.on_cuda else "gloo",
                      sync="ddp fp32, group amax")
    job = Job(shape, WORLD, lowprec.on_cuda, str(tmp_path / "rendezvous"), str(tmp_path / "out"), "train",
              poison_step=POISON_STEP)
    ranks = launch(job, timeout_s=900 if lowprec.on_cuda else 300)
    ref, ref_skipped = single_process_losses(shape, lowprec.device, POISON_STEP)
    low = ranks[0]["losses"]
    assert all(r["losses"] == low for r in ranks), "ranks disagree on the global loss"
    ref_final, low_final = statistics.fmean(ref[-LAST_K:]), statistics.fmean(low[-LAST_K:])
    lowprec.accuracy("loss_gap_vs_one_process", abs(low_final - ref_final) / ref_final, max=LOSS_GAP_BOUND)
    lowprec.info("max_step_loss_gap", max(abs(a - b) / b for a, b in zip(low, ref, strict=True)))
    lowprec.info("one_process_loss_first_over_last", ref[0] / ref_final)
    unexpected = sum(len(set(s) ^ {POISON_STEP}) for s in [ref_skipped] + [r["skipped"] for r in ranks])
    lowprec.accuracy("unhandled_or_unexpected_skips", unexpected, max=0)
    lowprec.accuracy("nonfinite_weights", sum(r["nonfinite_weights"] for r in ranks), max=0)
    # Replicas that drift apart mean the gradients were not synchronised, whatever the loss says.
    lowprec.accuracy("replica_max_abs_diff", max(r["replica_max_abs_diff"] for r in ranks), max=0.0)


@pytest.mark.lowprec(precision="fp8", gpus=WORLD, device="cuda")
def test_data_parallel_fp8_scaling_efficiency(lowprec, tmp_path):
    """Per-GPU batch fixed at the training suite's 4096 tokens: efficiency = t_one_gpu / t_data_parallel."""
    shape = Shape(d=GPU_SHAPE.d, blocks=GPU_SHAPE.blocks, tokens=GPU_SHAPE.tokens * WORLD, steps=0, lr=GPU_SHAPE.lr)
    lowprec.signature(world=WORLD, d=shape.d, blocks=shape.blocks, tokens_per_gpu=shape.tokens // WORLD,
                      backend="nccl", sync="ddp fp32", timing="cuda events, 5 rounds x 10 steps")
    job = Job(shape, WORLD, True, str(tmp_path / "rendezvous"), str(tmp_path / "out"), "time")
    result = scaling(launch(job, timeout_s=600))
    lowprec.efficiency("scaling_efficiency", result.efficiency, min=0.90)
    lowprec.info("one_gpu_step_ms", result.single_ms, "ms")
    lowprec.info("data_parallel_step_ms", result.synced_ms, "ms")
    lowprec.info("allreduce_alone_ms", result.allreduce_ms, "ms")
    lowprec.info("allreduce_hidden_fraction", result.hidden_fraction)
    lowprec.info("tokens_per_s", WORLD * (shape.tokens // WORLD) / (result.synced_ms / 1e3), "tok/s")
