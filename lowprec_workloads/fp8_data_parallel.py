"""Data-parallel FP8 training: the training suite's FP8 stack on N processes over torch.distributed.

Each process owns one device (a GPU with NCCL, or the CPU with gloo) and trains a
DistributedDataParallel copy of the FP8 stack on its shard of the same global batch
the single-process run sees; DDP averages the gradients during the backward, so the
step is the single-process step on the whole batch. The FP8 scales of activations and
gradients come from the group's amax (an all-reduce of one number per quantization, on a
process group of its own, as TransformerEngine's amax reduction does): with per-shard
scales each rank rounds differently from the single process, and at the chapter's shape
that alone moved the final loss 2.4% (2 H200s, 2026-11-22), more than the bound. What is
left is summation order. The loss-scale manager needs nothing new: a non-finite gradient
on any rank is non-finite on every rank after the all-reduce, so all ranks skip together.

Processes start with torch.multiprocessing (spawn) and meet through a file, so no port
is needed; each writes its results as JSON, which the parent reads back.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .fp8_training import LossScaler, Shape, Stack, batch, objective, train

# The device machines (and many clusters) forbid NVLink multicast; children inherit these, and
# setdefault keeps whatever the caller chose.
_NCCL_SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


@dataclass(frozen=True)
class Job:
    """What every rank runs. `shape.tokens` is the global batch: each rank takes tokens / world."""

    shape: Shape
    world: int
    cuda: bool
    rendezvous: str
    out_dir: str
    mode: str  # "train": the loss curve; "time": step times with and without gradient sync
    poison_step: int | None = None
    seed: int = 0
    timing_rounds: int = 5
    timing_steps: int = 10


class DistributedError(RuntimeError):
    """A rank failed or the group did not finish in time."""


def _shard(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    per = t.shape[0] // world
    return t[rank * per:(rank + 1) * per]


def _replica(job: Job, rank: int, device: str):
    """(model, its DDP wrapper, the teacher, the amax reduction): the FP8 stack with its scales reduced over
    the group. Gradients live in the all-reduce buckets (no copy of 1 GiB of float32 gradients in and out
    of them each step)."""
    model = Stack(job.shape.d, job.shape.blocks, fp8=True, seed=job.seed, device=device)
    teacher = Stack(job.shape.d, job.shape.blocks, fp8=False, seed=job.seed + 1, device=device)
    reduce = _group_amax(dist.new_group())
    set_amax_reduction(model, reduce)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank] if job.cuda else None,
                                                    gradient_as_bucket_view=True)
    return model, ddp, teacher, reduce


def _group_amax(group):
    def reduce(local: torch.Tensor) -> torch.Tensor:
        amax = local.float().reshape(1).clone()
        dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=group)
        return amax.reshape(())

    return reduce


def set_amax_reduction(model: Stack, reduce) -> None:
    for linear in model.linears().values():
        linear.reduce_amax = reduce


def _train(job: Job, rank: int, device: str) -> dict:
    """The FP8 student trained on this rank's shard; the losses are the global batch's (mean over ranks)."""
    model, ddp, teacher, _ = _replica(job, rank, device)
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=job.shape.lr, weight_decay=0.0)
    scaler = LossScaler()
    losses = []
    for step in range(job.shape.steps):
        x, y = batch(step, job.shape, teacher, device, job.poison_step)  # the global batch, as one process sees it
        loss = objective(ddp, _shard(x, rank, job.world), _shard(y, rank, job.world))
        scaler.step(loss, params, optimizer, step)
        total = loss.detach().float().reshape(1).clone()
        dist.all_reduce(total)  # equal shards: the global mean loss is the mean of the ranks' means
        losses.append(total.item() / job.world)
    bad = sum(int((~torch.isfinite(p)).sum()) for p in params)
    return {"losses": losses, "skipped": scaler.skipped, "nonfinite_weights": bad,
            "replica_max_abs_diff": _replica_divergence(params)}


def _replica_divergence(params: list[torch.nn.Parameter]) -> float:
    """Largest difference between this rank's weights and rank 0's: 0 unless gradient sync broke."""
    worst = 0.0
    for p in params:
        reference = p.detach().clone()
        dist.broadcast(reference, src=0)
        worst = max(worst, float((p.detach() - reference).abs().max()))
    return worst


def _time(job: Job, rank: int, device: str) -> dict:
    """Per-step times of the same DDP step without (`no_sync`: one GPU's work) and with the gradient all-reduce.

    Both are timed in this process on this rank's shard, alternating in rounds so drift hits both; the
    one-GPU step quantizes with its own amax (no collective at all). The all-reduce alone over the same
    bytes says how much communication the overlap hid.
    """
    model, ddp, teacher, reduce = _replica(job, rank, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=job.shape.lr)
    x, y = batch(0, job.shape, teacher, device, None)
    x, y = _shard(x, rank, job.world), _shard(y, rank, job.world)
    del teacher

    def step(sync: bool) -> None:
        set_amax_reduction(model, reduce if sync else None)
        with contextlib.nullcontext() if sync else ddp.no_sync():
            objective(ddp, x, y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed(fn, n: int) -> float:
        dist.barrier()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / n

    for sync in (False, True, False, True):
        step(sync)  # warm-up: kernels chosen, DDP buckets rebuilt after the first synced step
    single, synced = [], []
    for r in range(job.timing_rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        for sync in order:
            (synced if sync else single).append(timed(lambda s=sync: step(s), job.timing_steps))
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    flat = torch.empty(grad_bytes // 4, dtype=torch.float32, device=device)
    dist.all_reduce(flat)
    allreduce = [timed(lambda: dist.all_reduce(flat), 3) for _ in range(3)]
    return {"single_ms": single, "synced_ms": synced, "allreduce_ms": allreduce, "grad_bytes": grad_bytes}


def _worker(rank: int, job: Job) -> None:
    for key, value in _NCCL_SAFE_ENV.items():
        os.environ.setdefault(key, value)
    if job.cuda:
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    else:
        torch.set_num_threads(1)  # CI has two cores for two ranks
        device = "cpu"
    dist.init_process_group("nccl" if job.cuda else "gloo", init_method=f"file://{job.rendezvous}",
                            rank=rank, world_size=job.world)
    try:
        result = _train(job, rank, device) if job.mode == "train" else _time(job, rank, device)
        Path(job.out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def launch(job: Job, timeout_s: float) -> list[dict]:
    """Run `job` on `job.world` processes; every rank's result, or a DistributedError naming what failed."""
    if job.shape.tokens % job.world:
        raise ValueError(f"global batch of {job.shape.tokens} tokens does not split over {job.world} ranks")
    if job.cuda and torch.cuda.device_count() < job.world:
        raise DistributedError(f"{job.world} ranks need {job.world} GPUs; {torch.cuda.device_count()} visible")
    Path(job.out_dir).mkdir(parents=True, exist_ok=True)
    for key, value in _NCCL_SAFE_ENV.items():
        os.environ.setdefault(key, value)
    context = mp.start_processes(_worker, args=(job,), nprocs=job.world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise DistributedError(f"{job.world} ranks ({job.mode}) did not finish in {timeout_s:.0f} s")
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
        raise DistributedError(f"a rank failed:\n{exc}") from None
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [json.loads(Path(job.out_dir, f"rank{r}.json").read_text()) for r in range(job.world)]


def single_process_losses(shape: Shape, device: str, poison_step: int | None, seed: int = 0) -> tuple[list, list]:
    """The FP8 stack trained in one process on the whole global batch: losses per step and skipped steps."""
    model = Stack(shape.d, shape.blocks, fp8=True, seed=seed, device=device)
    teacher = Stack(shape.d, shape.blocks, fp8=False, seed=seed + 1, device=device)
    losses, scaler = train(model, teacher, shape, device, poison_step)
    return losses, scaler.skipped


@dataclass(frozen=True)
class Scaling:
    single_ms: float  # one rank's step with no gradient sync (slowest rank's median)
    synced_ms: float  # the data-parallel step (slowest rank's median)
    allreduce_ms: float  # the gradients' all-reduce alone, not overlapped
    grad_bytes: int

    @property
    def efficiency(self) -> float:
        """N-GPU throughput over N times one GPU's: the per-rank batch is fixed, so t_single / t_synced."""
        return self.single_ms / self.synced_ms

    @property
    def hidden_fraction(self) -> float:
        """Share of the all-reduce that the backward hid: 1 - exposed / standalone."""
        return 1.0 - max(self.synced_ms - self.single_ms, 0.0) / self.allreduce_ms

    def to_dict(self) -> dict:
        return {**asdict(self), "efficiency": self.efficiency, "hidden_fraction": self.hidden_fraction}


def scaling(results: list[dict]) -> Scaling:
    def slowest(key: str) -> float:
        return max(statistics.median(r[key]) for r in results)

    return Scaling(slowest("single_ms"), slowest("synced_ms"), slowest("allreduce_ms"), results[0]["grad_bytes"])
