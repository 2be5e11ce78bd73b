"""FP8 training with data parallelism on N processes against the same training in one process.

The gated way is FSDP2 (lowprec_workloads/fp8_fsdp.py): each rank keeps 1/N of the float32 master
weights, gradients and AdamW state, gradients are reduce-scattered while the backward runs, and each
linear's weight is cast to E4M3 shard by shard with one scale shared by all ranks and all-gathered as
FP8. DDP (a whole replica a rank, float32 gradients all-reduced) is timed beside it and reported.

Both runs of the loss test start from identical weights and see the same global batches for the same
steps (one poisoned to overflow); the data-parallel run splits each batch over its ranks. On the CPU
the ranks are 2 gloo processes at the training suite's CPU size; on GPUs (`--gpu Nx_h200`, any N >= 2)
they are N NCCL processes, one per GPU, at the chapter's shape.

Numerics: the parameters stay float32 (no param_dtype: the FP8 recipe casts the float32 master weights),
gradients are reduce-scattered in float32 (GATED.reduce_dtype), and activations and gradients are
quantized with the group's amax, so what separates the runs is summation order; the loss bound is the
training suite's.
"""

from __future__ import annotations

import statistics
import warnings

import pytest

from lowprec_workloads.fp8_data_parallel import (
    DDP,
    GATED,
    DistributedError,
    Job,
    launch,
    scaling,
    single_process_losses,
)
from lowprec_workloads.fp8_training import Shape

CPU_WORLD = 2
# The training suite's shapes: the same global batch, each rank taking tokens / world of it.
CPU_SHAPE = Shape(d=64, blocks=2, tokens=512, steps=150)
GPU_SHAPE = Shape(d=4096, blocks=2, tokens=4096, steps=150, lr=3e-4)
POISON_STEP = 40
LAST_K = 20
# The training suite's bound on the final-loss gap; here against the same FP8 training in one process.
LOSS_GAP_BOUND = 0.01
# The target: N GPUs give at least 95% of N times one GPU's throughput at the same per-GPU batch.
SCALING_EFFICIENCY_FLOOR = 0.95


def _world(lowprec) -> int:
    return lowprec.gpu.gpus if lowprec.on_cuda else CPU_WORLD


@pytest.mark.slow  # a CPU training of minutes: CI runs it with --slow; a GPU run always
@pytest.mark.lowprec(precision="fp8", gpus="all")
def test_data_parallel_fp8_training_matches_one_process(lowprec, tmp_path):
    world = _world(lowprec)
    shape = GPU_SHAPE if lowprec.on_cuda else CPU_SHAPE
    lowprec.signature(world=world, d=shape.d, blocks=shape.blocks, global_tokens=shape.tokens, steps=shape.steps,
                      lr=shape.lr, poison_step=POISON_STEP, backend="nccl" if lowprec.on_cuda else "gloo",
                      sync=GATED.label, amax="group")
    job = Job(shape, world, lowprec.on_cuda, str(tmp_path / "out"), "train", variants=(GATED,),
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
    # Whole weights (the gathered shards) that differ between ranks mean the ranks trained apart.
    lowprec.accuracy("replica_max_abs_diff", max(r["replica_max_abs_diff"] for r in ranks), max=0.0)
    if GATED.fp8_all_gather:
        # The E4M3 weights each rank multiplies by, against one cast of the whole master weight with the
        # shared scale: a shard cast with another rank's scale would decode wrong and show here byte by byte.
        lowprec.accuracy("fp8_weight_mismatches", sum(r["fp8_weight_mismatches"] for r in ranks), max=0)


@pytest.mark.lowprec(precision="fp8", gpus="all", device="cuda")
def test_data_parallel_fp8_scaling_efficiency(lowprec, tmp_path):
    """Per-GPU batch fixed at the training suite's 4096 tokens: efficiency = t_one_gpu / t_data_parallel.

    Every side's whole step (one GPU's too) is captured in a CUDA graph and replayed, as a trainer whose
    step the host cannot issue as fast as the GPU runs it does: eagerly FSDP2's hooks took 11-19 ms of
    host time to issue 9.3-11.7 ms of kernels on one H200 (2026-12-01), so an eager efficiency measures
    Python's dispatch, not the data parallelism. One GPU's step runs on the GPU's pace either way (9.20 ms
    eagerly, 9.29-9.33 ms replayed). The replays are checked against eager steps from the same seed: a
    capture whose replays differ before the timing fails the test with the difference (its side is not
    timed), and the difference after the timing is gated here. FSDP2 and DDP each run in a job of their
    own beside one GPU's step, as benchmarks/fsdp2_scaling.py runs them: a replay that breaks the CUDA
    context ends only its own job."""
    world = _world(lowprec)
    shape = Shape(d=GPU_SHAPE.d, blocks=GPU_SHAPE.blocks, tokens=GPU_SHAPE.tokens * world, steps=0, lr=GPU_SHAPE.lr)

    def captured_scaling(variant, name: str):
        job = Job(shape, world, True, str(tmp_path / name), "time", variants=(variant,), graphs=True)
        return job, scaling(launch(job, timeout_s=600), variant)

    job, fsdp = captured_scaling(GATED, "fsdp2")
    lowprec.signature(world=world, d=shape.d, blocks=shape.blocks, tokens_per_gpu=shape.tokens // world,
                      backend="nccl", sync=GATED.label, optimizer="adamw fused", steps="cuda graph replays",
                      timing=f"cuda events, {job.timing_rounds} rounds x {job.timing_steps} steps, order rotated")
    # A replay that does not compute the eager step (memory the capture did not keep) would time other work.
    lowprec.accuracy("replayed_weights_max_abs_diff_vs_eager", fsdp.replay_difference, max=0.0)
    lowprec.efficiency("scaling_efficiency", fsdp.efficiency, min=SCALING_EFFICIENCY_FLOOR)
    lowprec.info("one_gpu_step_ms", fsdp.single_ms, "ms")
    lowprec.info("data_parallel_step_ms", fsdp.synced_ms, "ms")
    lowprec.info("comm_alone_ms", fsdp.comm_ms, "ms")
    lowprec.info("comm_hidden_fraction", fsdp.hidden_fraction)
    lowprec.info("tokens_per_s", fsdp.tokens_per_s, "tok/s")
    lowprec.info("data_parallel_host_ms", fsdp.host_ms, "ms")  # a replay's launch: far under the step's time
    # DDP, the comparison (not gated): the same step with a whole replica a GPU and a float32 all-reduce. A DDP
    # that cannot be captured or timed is said, and does not fail the gate.
    try:
        _, ddp = captured_scaling(DDP, "ddp")
    except DistributedError as exc:
        warnings.warn(f"DDP, the comparison row, was not timed: {exc}", stacklevel=1)
        return
    if ddp.replay_difference != 0.0:  # its timings would be of other work
        warnings.warn(f"DDP, the comparison row, not reported: after the timing its replays left the weights "
                      f"{ddp.replay_difference:.3g} from as many eager steps'", stacklevel=1)
        return
    lowprec.info("ddp_scaling_efficiency", ddp.efficiency)
    lowprec.info("ddp_step_ms", ddp.synced_ms, "ms")
    lowprec.info("ddp_allreduce_alone_ms", ddp.comm_ms, "ms")
    lowprec.info("ddp_tokens_per_s", ddp.tokens_per_s, "tok/s")
