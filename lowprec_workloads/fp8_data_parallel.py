"""Data-parallel FP8 training: the training suite's FP8 stack on N processes over torch.distributed.

Each process owns one device (a GPU with NCCL, or the CPU with gloo) and trains on its shard of the same
global batch the single-process run sees. The gated way is FSDP2 (`fp8_fsdp`): each rank keeps 1/N of
the weights, gradients and optimizer state, gradients are reduce-scattered during the backward, and the
FP8 weights are all-gathered as FP8. DistributedDataParallel (a whole replica a rank, float32 gradients
all-reduced) stays as the comparison.

Either way the FP8 scales of activations and gradients come from the group's amax (an all-reduce of one
number per quantization, on a process group of its own, as TransformerEngine's amax reduction does):
with per-shard scales each rank rounds differently from the single process, and at the chapter's shape
that alone moved the final loss 2.4% (2 H200s, 2026-11-22). What is left is summation order.

Processes start the way torchrun starts them: `python -m lowprec_workloads.fp8_data_parallel JOB.json`
per rank with RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT in its environment, meeting in
a TCPStore that the launcher hosts (TORCHELASTIC_USE_AGENT_STORE, torchrun's own arrangement). The store
binds port 0, so the OS hands it a free port that it holds until the ranks finish: no port is guessed,
none is probed and released for another process to take. `torchrun --nproc-per-node N -m
lowprec_workloads.fp8_data_parallel JOB.json` runs the same ranks. Each rank writes its result as JSON.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

from . import fp8_fsdp, fp8_training, graph_safe_ops
from .fp8_fsdp import REDUCE_DTYPES, Fsdp2Config
from .fp8_training import LossScaler, Shape, Stack, batch, objective, train

# The device machines (and many clusters) forbid NVLink multicast; the ranks get these unless the
# caller's environment sets them otherwise.
_NCCL_SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
DDP = "ddp"
# What the gate runs: FSDP2 with FP8 all-gather, float32 reduce-scatter (numerics as one process's up to
# summation order), the gathered weights kept from the forward to the backward (a block's FP8 weights
# are 128 MiB at d=4096; resharding would all-gather them again for the backward). Not yet measured on
# a GPU: benchmarks/fsdp2_scaling.py times it against every alternative and DDP.
GATED = Fsdp2Config()


@dataclass(frozen=True)
class Job:
    """What every rank runs. `shape.tokens` is the global batch: each rank takes tokens / world.

    mode "train": the loss curve of `variants[0]` (FSDP2 or DDP); "time": per-step times of each variant
    against one GPU's step without any collective, in alternating rounds."""

    shape: Shape
    world: int
    cuda: bool
    out_dir: str
    mode: str
    variants: tuple = (GATED,)  # each an Fsdp2Config or DDP
    poison_step: int | None = None
    seed: int = 0
    timing_rounds: int = 5
    timing_steps: int = 10
    warmup_steps: int = 3
    # "time" only: after the timing, each side's `profile_steps` steps under torch.profiler, a chrome trace
    # per rank and side written here (_profile).
    profile_dir: str | None = None
    profile_steps: int = 2
    # "time" on GPUs only: every side's step (one GPU's too) captured whole in a CUDA graph after its warm-up
    # and replayed in the timing, so the host's time to issue a step no longer sets its pace (on one H200
    # FSDP2's eager step took 11-19 ms of host time for 9.3-11.7 ms of kernels, 2026-12-01). Each captured
    # side is checked against an eager twin from the same seed: before the timing GRAPH_CHECK_STEPS replays
    # must leave the twin's weights bit for bit (else the side is dropped with the difference), and after
    # it the largest difference of any weight against as many eager steps is reported (0 unless a replay
    # went wrong later).
    graphs: bool = False

    def __post_init__(self):
        if self.mode not in ("train", "time"):
            raise ValueError(f"mode {self.mode!r} is not 'train' or 'time'")
        if not self.variants or any(v != DDP and not isinstance(v, Fsdp2Config) for v in self.variants):
            raise ValueError(f"variants are Fsdp2Config or {DDP!r}, got {self.variants!r}")
        if self.mode == "train" and len(self.variants) != 1:
            raise ValueError("a training job trains one variant")
        if self.graphs and (self.mode != "time" or not self.cuda):
            raise ValueError("graphs: CUDA graphs capture the timed steps of a GPU job (mode 'time', cuda True); "
                             f"this job has mode {self.mode!r}, cuda {self.cuda}")
        if self.world < 1 or self.shape.tokens % self.world:
            raise ValueError(f"global batch of {self.shape.tokens} tokens does not split over {self.world} ranks")

    def to_json(self) -> str:
        d = asdict(self)
        d["shape"] = asdict(self.shape)
        d["variants"] = [DDP if v == DDP else asdict(v) for v in self.variants]
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> Job:
        d = json.loads(text)
        d["shape"] = Shape(**d["shape"])
        d["variants"] = tuple(DDP if v == DDP else Fsdp2Config(**v) for v in d["variants"])
        return cls(**d)


def label(variant) -> str:
    return "ddp, float32 all-reduce" if variant == DDP else variant.label


class DistributedError(RuntimeError):
    """A rank failed or the group did not finish in time."""


@dataclass
class _Rank:
    """This process's place in the group: its rank, the world, its device, the FSDP2 mesh, and the process
    group of its own that the amax all-reduces use."""

    rank: int
    world: int
    device: str
    mesh: object = None
    amax_group: object = None


def _shard(t, rank: int, world: int):
    per = t.shape[0] // world
    return t[rank * per:(rank + 1) * per]


def _group_amax(group):
    def reduce(local):
        amax = local.float().reshape(1).clone()
        dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=group)
        return amax.reshape(())

    return reduce


def set_amax_reduction(model, reduce) -> None:
    """Every FP8 linear of `model` (swapped for FP8 all-gather or not) quantizes with `reduce`'s amax."""
    for linear in fp8_fsdp.fp8_linears(model):
        linear.reduce_amax = reduce


def _student(job: Job, me: _Rank, variant):
    """(the module to call, its parameters): the FP8 stack with its activation and gradient scales from
    the group's amax, sharded by FSDP2 or replicated by DDP. DDP's gradients live in its all-reduce
    buckets (no copy of 1 GiB of float32 gradients in and out of them each step)."""
    model = Stack(job.shape.d, job.shape.blocks, fp8=True, seed=job.seed, device=me.device)
    set_amax_reduction(model, _group_amax(me.amax_group))
    if variant == DDP:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[int(me.device.split(":")[1])] if job.cuda else None, gradient_as_bucket_view=True)
        return ddp, list(model.parameters())
    fp8_fsdp.shard(model, me.mesh, variant)
    return model, list(model.parameters())


def _after_step(model, variant, me: _Rank) -> None:
    """FP8 all-gather: the next casts' scale from the group's amax (one all-reduce for all weights)."""
    if variant != DDP and variant.fp8_all_gather:
        fp8_fsdp.sync_weight_scales(model, me.mesh.get_group())


class _LocalGrad:
    """A sharded parameter as LossScaler.step reads it: `.grad` is this rank's shard of the gradient,
    which the scaler unscales in place."""

    def __init__(self, param):
        self.param = param

    @property
    def grad(self):
        g = self.param.grad
        return None if g is None else getattr(g, "_local_tensor", g)


class _GroupFinite:
    """One more 'gradient' for LossScaler.step: 0 when every rank's loss and gradient shard are finite,
    Inf otherwise (one all-reduce). FSDP2 leaves each rank only its shard of the reduced gradients, so a
    non-finite value lands on one rank, and the scaler, which reads `p.grad` locally, would skip on that
    rank and step on the others. (The stack's DTensor gradients do not help: `isfinite(g).all()` of a
    sharded DTensor is a Partial tensor whose bool() reads the local value; on gloo, rank 0 said True
    and rank 1 False for one Inf on rank 1.)"""

    def __init__(self, params, loss, group):
        self.params, self.loss, self.group = params, loss, group

    @property
    def grad(self):
        flags = [~torch.isfinite(self.loss.detach()).all()]
        flags += [~torch.isfinite(g.grad).all() for g in self.params if g.grad is not None]
        bad = torch.stack(flags).any().float().reshape(1)
        dist.all_reduce(bad, op=dist.ReduceOp.MAX, group=self.group)
        return torch.where(bad > 0, torch.inf, 0.0)


def _train(job: Job, me: _Rank) -> dict:
    """The FP8 student trained on this rank's shard; the losses are the global batch's (mean over ranks)."""
    variant = job.variants[0]
    model, params = _student(job, me, variant)
    teacher = Stack(job.shape.d, job.shape.blocks, fp8=False, seed=job.seed + 1, device=me.device)
    # The single-process training's optimizer (fp8_training.train): AdamW, foreach where torch picks it.
    optimizer = torch.optim.AdamW(params, lr=job.shape.lr, weight_decay=0.0)
    scaler = LossScaler()
    losses = []
    for step in range(job.shape.steps):
        x, y = batch(step, job.shape, teacher, me.device, job.poison_step)  # the global batch, as one process sees it
        loss = objective(model, _shard(x, me.rank, me.world), _shard(y, me.rank, me.world))
        if variant == DDP:
            seen = params  # all-reduced: every rank holds every gradient
        else:
            local = [_LocalGrad(p) for p in params]
            seen = local + [_GroupFinite(local, loss, me.mesh.get_group())]
        scaler.step(loss, seen, optimizer, step)
        _after_step(model, variant, me)
        total = loss.detach().float().reshape(1).clone()
        dist.all_reduce(total)  # equal shards: the global mean loss is the mean of the ranks' means
        losses.append(total.item() / me.world)
    result = {"losses": losses, "skipped": scaler.skipped}
    result.update(_replica_checks(model, params, variant, me))
    return result


def _replica_checks(model, params, variant, me: _Rank) -> dict:
    """After training: non-finite weights (this rank's), and the largest difference between this rank's
    whole weights and rank 0's (0 unless synchronisation broke). Under FSDP2 the whole weights are the
    gathered shards; with FP8 all-gather, also the bytes each rank computes with against one cast of
    the whole master weight with the shared scale (0 unless the ranks' scales differ)."""
    whole = [p.detach() for p in params] if variant == DDP else [fp8_fsdp.whole(p) for p in params]
    bad = sum(int((~torch.isfinite(w)).sum()) for w in whole) if me.rank == 0 else 0
    worst = 0.0
    for w in whole:
        reference = w.clone()
        dist.broadcast(reference, src=0)
        worst = max(worst, float((w - reference).abs().max()))
    out = {"nonfinite_weights": bad, "replica_max_abs_diff": worst}
    if variant != DDP and variant.fp8_all_gather:
        gathered, one_piece = fp8_fsdp.gathered_weights(model), fp8_fsdp.one_piece_fp8_weights(model)
        out["fp8_weight_mismatches"] = sum(int((gathered[k] != one_piece[k]).sum()) for k in one_piece)
        out["fp8_weights"] = sum(gathered[k].numel() for k in one_piece if k.endswith(".weight"))
    return out


def _timed(fn, n: int, cuda: bool) -> tuple[float, float]:
    """Milliseconds a call of fn, over n calls queued back to back after a barrier: CUDA events on a GPU
    (the host runs ahead, as in training), the wall clock on the CPU (where only the code path is tested);
    and the host's milliseconds a call to issue them. On a GPU a step whose host time comes near its GPU
    time is bound by the host (Python, hooks, DTensor dispatch), not by kernels or collectives."""
    dist.barrier()
    if not cuda:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        wall = (time.perf_counter() - start) * 1e3 / n
        return wall, wall
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    issued = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - issued) * 1e3 / n
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n, host


def step_collectives(shape: Shape, variant) -> list[tuple[str, torch.dtype, int]]:
    """(collective, dtype, elements of the whole tensor) of one step's communication: the all-gathered
    weights (again in the backward when resharded) and reduce-scattered gradients for FSDP2, the
    all-reduced gradients for DDP. The FP8 weights travel as bytes, everything else as float32."""
    fc = shape.blocks * 2 * 4 * shape.d * shape.d
    other = shape.blocks * (2 * shape.d + 4 * shape.d + shape.d)  # LayerNorm weight and bias, fc biases
    if variant == DDP:
        return [("all_reduce", torch.float32, fc + other)]
    gather = [("all_gather", torch.uint8, fc + 4 * other)] if variant.fp8_all_gather else \
        [("all_gather", torch.float32, fc + other)]
    if variant.reshard_after_forward:
        gather = gather * 2
    return gather + [("reduce_scatter", REDUCE_DTYPES[variant.reduce_dtype], fc + other)]


def _comm_alone_ms(collectives: list[tuple[str, torch.dtype, int]], me: _Rank, cuda: bool) -> float:
    """The step's collectives alone, back to back, on buffers of the step's sizes (nothing to overlap)."""
    group = me.mesh.get_group()
    calls = []
    for kind, dtype, numel in collectives:
        whole = torch.zeros(numel - numel % me.world, dtype=dtype, device=me.device)
        part = whole[: whole.numel() // me.world]
        if kind == "all_reduce":
            calls.append(lambda w=whole: dist.all_reduce(w, group=group))
        elif kind == "all_gather":
            calls.append(lambda w=whole, p=part: dist.all_gather_into_tensor(w, p, group=group))
        else:
            out = part.clone()
            calls.append(lambda w=whole, o=out: dist.reduce_scatter_tensor(o, w, group=group))

    def run():
        for call in calls:
            call()

    run()
    return statistics.median(_timed(run, 3, cuda)[0] for _ in range(3))


def _agree(ok: bool, device: str) -> bool:
    """True when every rank says True: a variant that failed anywhere is dropped everywhere."""
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


GRAPH_CHECK_STEPS = 3
DDP_GRAPH_WARMUP = 11


class _Side:
    """One side of the timing: a model, its fused AdamW and what follows each optimizer step. `body` is a
    step without the gradients' reset (what a CUDA graph captures: its backward writes the gradients into
    the buffers the capture allocated, and the optimizer reads them there); calling the side is a whole
    eager step."""

    def __init__(self, model, params, x, y, lr: float, after=None, capturable: bool = False):
        self.model, self.params, self.x, self.y, self.after = model, params, x, y, after
        # capturable: the optimizer's step count stays on the device and its step() may be captured.
        self.optimizer = torch.optim.AdamW(params, lr=lr, fused=True, capturable=capturable)

    def body(self) -> None:
        objective(self.model, self.x, self.y).backward()
        self.optimizer.step()
        if self.after is not None:
            self.after()

    def __call__(self) -> None:
        self.body()
        self.optimizer.zero_grad(set_to_none=True)


def _captured(side: _Side, warmup_steps: int, stream):
    """`side`'s step as the replay of a CUDA graph captured on `stream`, the stream the side was built on:
    warmed up eagerly there first (as capture requires: the collectives' communicators, the Triton kernels'
    compilation and cuBLAS's workspaces exist before it), the gradients reset, then one step captured. The
    capture runs nothing: after it the weights are where the warm-up left them. Other threads (the NCCL
    watchdog) may call CUDA during the capture."""
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup_steps):
            side()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
        side.body()
    return _Replay(graph, side)


class _Replay:
    """A captured step: replays `graph`, and holds `side`. The graph's private pool keeps only what the
    capture allocated; the weights, the optimizer's state and the amax buffers were allocated before it,
    and freed with their side the graph would go on writing them (the first captured run on an H200 died
    with an illegal memory access, 2026-12-01: nothing held the sides but the replays' graphs)."""

    def __init__(self, graph, side: _Side):
        self.graph, self.side = graph, side

    def __call__(self) -> None:
        self.graph.replay()


def _on_every_rank(name: str, fn, errors: dict, device: str):
    """fn()'s result where it ran on every rank; None where it failed on any (its error in errors[name],
    or "failed on another rank"), so that every rank drops the side together."""
    try:
        result, ok = fn(), True
        if device.startswith("cuda"):
            torch.cuda.synchronize()  # an asynchronous CUDA error surfaces here, not in the next side
    except Exception:  # noqa: BLE001 - a variant that cannot run is reported, the others still timed
        errors[name] = traceback.format_exc(limit=8)
        result, ok = None, False
    if not _agree(ok, device):
        errors.setdefault(name, "failed on another rank")
        return None
    return result


def _largest_difference(params, others) -> float:
    """The largest difference between two models' weights (this rank's shards under FSDP2); inf where
    either holds a NaN or an inf (Python's max would pass over a NaN, and a replay that read garbage can
    leave NaN weights)."""
    worst = 0.0
    for a, b in zip(params, others, strict=True):
        a, b = fp8_fsdp.local_tensor(a.detach()).float(), fp8_fsdp.local_tensor(b.detach()).float()
        if a.numel():
            worst = max(worst, float((a - b).abs().nan_to_num(nan=torch.inf).max()))
    return worst


def _time(job: Job, me: _Rank) -> dict:
    """Per-step times of one GPU's step (the FP8 stack alone on this rank's shard, its own amax, no
    collective) and of each data-parallel variant on the same shard, in rounds whose order rotates so
    drift hits all alike. AdamW is fused on every side (the fastest one-GPU step is the baseline). With
    `graphs` each side replays a CUDA graph of its step, checked against an eager twin before and after the timing."""
    if job.graphs and (fp8_training.OPTIMIZER_CASTS or fp8_training.RECIPE.activation_amax == "history"):
        # Both keep per-step state a capture would freeze: an amax history replaced by a new tensor each cast,
        # and the optimizer's cast handed over after a check of the weight's version on the host.
        raise ValueError("graphs: a step with optimizer casts or an activation amax history cannot be captured "
                         "(fp8_training.OPTIMIZER_CASTS off and the recipe's activation_amax 'current')")
    teacher = Stack(job.shape.d, job.shape.blocks, fp8=False, seed=job.seed + 1, device=me.device)
    x, y = batch(0, job.shape, teacher, me.device, None)
    x, y = _shard(x, me.rank, me.world), _shard(y, me.rank, me.world)
    del teacher

    def one_gpu():
        single = Stack(job.shape.d, job.shape.blocks, fp8=True, seed=job.seed, device=me.device)
        return _Side(single, list(single.parameters()), x, y, job.shape.lr, capturable=job.graphs)

    def data_parallel(variant):
        model, params = _student(job, me, variant)
        return _Side(model, params, x, y, job.shape.lr, lambda: _after_step(model, variant, me),
                     capturable=job.graphs)

    def warmup_steps(name: str) -> int:
        # DDP retains its parameters' gradient-accumulation nodes, and its first iterations rebuild its
        # buckets and log timings: torch's notes on CUDA graphs ask for 11 eager iterations before its
        # backward is captured, and DDP built on the capture's stream (a node built on another stream
        # makes the captured backward wait on that stream).
        return max(job.warmup_steps, DDP_GRAPH_WARMUP) if job.graphs and name == label(DDP) else job.warmup_steps

    def built_on(stream, make):
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            side = make()
        torch.cuda.current_stream().wait_stream(stream)
        return side

    def difference_from_eager(make, replay: _Replay, eager_steps: int, replays: int) -> float:
        """The captured side's weights after `replays` more replays against an eager twin's after
        `eager_steps` steps from the same seed: 0 unless the capture does not replay the step."""
        twin = make()
        for _ in range(eager_steps):
            twin()
        for _ in range(replays):
            replay()
        return _largest_difference(replay.side.params, twin.params)

    def checked(make, replay: _Replay, warmup: int) -> _Replay:
        difference = difference_from_eager(make, replay, warmup + GRAPH_CHECK_STEPS, GRAPH_CHECK_STEPS)
        if difference != 0.0:
            raise RuntimeError(f"{GRAPH_CHECK_STEPS} replays leave the weights {difference:.3g} from as many eager "
                               "steps' (0 expected): the capture does not replay the step")
        return replay

    def warmed(side):
        for _ in range(job.warmup_steps):
            side()
        return side

    def prepared(name: str, make):
        """The step to time (eager, or a checked replay), or None where a phase failed on any rank. Each
        phase is agreed on by every rank before the next: a rank whose capture failed must not leave the
        others waiting in the twin's collectives."""
        def on_every_rank(fn, *args):
            return _on_every_rank(name, partial(fn, *args), errors, me.device)

        if not job.graphs:
            side = on_every_rank(make)
            return None if side is None else on_every_rank(warmed, side)
        stream = torch.cuda.Stream()
        side = on_every_rank(built_on, stream, make)
        replay = None if side is None else on_every_rank(_captured, side, warmup_steps(name), stream)
        step = None if replay is None else on_every_rank(checked, make, replay, warmup_steps(name))
        if step is not None:
            # In the rank's log as it goes: a replay that breaks the CUDA context ends the process, and the
            # log then says which sides had run.
            print(f"{name}: captured; {GRAPH_CHECK_STEPS} replays give the eager steps' weights", flush=True)
        return step

    makers = {"one_gpu": one_gpu} | {label(v): partial(data_parallel, v) for v in job.variants}
    sides, errors = {}, {}
    for name, make in makers.items():
        step = prepared(name, make)
        if step is not None:
            sides[name] = step
    if "one_gpu" not in sides:
        raise DistributedError(f"one GPU's step, which every variant is timed against, failed:\n{errors['one_gpu']}")
    times, host = {name: [] for name in sides}, {name: [] for name in sides}
    names = list(sides)
    for r in range(job.timing_rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            gpu_ms, host_ms = _timed(sides[name], job.timing_steps, job.cuda)
            times[name].append(gpu_ms)
            host[name].append(host_ms)
    # Captured sides checked again after the timing's replays, against a twin's as many eager steps: a
    # replay that went wrong only later (memory the capture did not keep, handed to another tensor) shows.
    graph_check = {}
    for name, step in sides.items() if job.graphs else ():
        replays = GRAPH_CHECK_STEPS + job.timing_rounds * job.timing_steps
        difference = _on_every_rank(name, partial(difference_from_eager, makers[name], step,
                                                  warmup_steps(name) + replays, 0), errors, me.device)
        graph_check[name] = float("inf") if difference is None else difference  # not checked: its error says why
    comm = {label(v): _comm_alone_ms(step_collectives(job.shape, v), me, job.cuda)
            for v in job.variants if label(v) in sides}
    memory = torch.cuda.max_memory_allocated(me.device) if job.cuda else 0
    profiles = _profile(sides, job, me) if job.profile_dir else {}
    return {"times_ms": times, "host_ms": host, "comm_alone_ms": comm, "errors": errors, "peak_bytes": memory,
            "tokens_per_rank": x.shape[0], "profiles": profiles, "graph_check": graph_check}


def _profile(sides: dict, job: Job, me: _Rank) -> dict:
    """Each side's `profile_steps` steps under torch.profiler, after the timing (a profiler slows every op,
    so it never runs inside it): the costliest kernels, and per device stream the time it ran, from a
    chrome trace written to profile_dir per rank and side. The span less the time any stream ran is the
    time the device stood idle, waiting on the host or on another rank. Then the same steps under
    cProfile, ending in a synchronize: the Python functions and builtins the host spent its time in (the
    synchronize's share is what the host waited for the device)."""
    import cProfile
    import io
    import pstats

    from pytest_lowprec.names import file_name
    from pytest_lowprec.profiling import host_functions, profile_side, stream_rows

    out = {}
    for name, step in sides.items():
        def steps(step=step):
            for _ in range(job.profile_steps):
                step()
            if job.cuda:
                torch.cuda.synchronize()

        path = Path(job.profile_dir) / file_name((name, f"rank{me.rank}"), ".json")  # the label first: it keeps more
        dist.barrier()
        trace = profile_side(name, steps, path)
        streams, span, busy = stream_rows(json.loads(path.read_text()))
        dist.barrier()
        host = cProfile.Profile()
        host.runcall(steps)
        text = io.StringIO()
        pstats.Stats(host, stream=text).sort_stats("tottime").print_stats(40)
        path.with_suffix(".cprofile.txt").write_text(text.getvalue())
        out[name] = {**trace.to_dict(), "streams": [r.to_dict() for r in streams], "span_us": span,
                     "busy_us": busy, "steps": job.profile_steps,
                     "host_functions": [f.to_dict() for f in host_functions(pstats.Stats(host).stats,
                                                                            job.profile_steps)]}
    return out


def main(argv: list[str] | None = None) -> None:
    """One rank, as torchrun starts it: the job file as the argument, the rank in the environment."""
    from torch.distributed.device_mesh import init_device_mesh

    argv = sys.argv[1:] if argv is None else argv
    job = Job.from_json(Path(argv[0]).read_text())
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if world != job.world:
        raise DistributedError(f"the job is for {job.world} ranks; WORLD_SIZE is {world}")
    for key, value in _NCCL_SAFE_ENV.items():
        os.environ.setdefault(key, value)
    if job.graphs:
        # torch's notes on CUDA graphs with DDP: its collectives' asynchronous error handling off, before the
        # process group starts (its watchdog would track captured collectives that never run as such).
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "0")
    if job.cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
        dist.init_process_group("nccl", device_id=torch.device(device))
    else:
        torch.set_num_threads(1)  # CI has two cores for two ranks
        device = "cpu"
        dist.init_process_group("gloo")
    # Captured steps need FSDP2's copies made of kernels a graph can replay (graph_safe_ops); held for the run.
    safe_ops = graph_safe_ops.install() if job.graphs else None
    try:
        me = _Rank(rank, world, device, mesh=init_device_mesh("cuda" if job.cuda else "cpu", (world,)),
                   amax_group=dist.new_group())
        result = _train(job, me) if job.mode == "train" else _time(job, me)
        Path(job.out_dir, f"rank{rank}.json").write_text(json.dumps(result))
        # Every rank tears down together: a rank whose peer has already closed its gloo pairs can abort in
        # the teardown ("terminate called without an active exception", 1 run in 3 on a 2-core CPU).
        dist.barrier()
    finally:
        dist.destroy_process_group()
        del safe_ops


def _rank_env(rank: int, world: int, port: int, cuda: bool) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in _NCCL_SAFE_ENV.items():
        env.setdefault(key, value)
    # The ranks import this very package, wherever the launcher imported it from.
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                "LOCAL_WORLD_SIZE": str(world), "GROUP_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port), "TORCHELASTIC_USE_AGENT_STORE": "True",
                "TORCHELASTIC_RESTART_COUNT": "0"})
    if not cuda:
        env["OMP_NUM_THREADS"] = "1"  # CI has two cores for two ranks
    return env


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(no output)"
    except OSError:
        return "(no output)"


def run_ranks(argv: list[str], world: int, log_dir: str | Path, timeout_s: float, cuda: bool = False) -> None:
    """Run `argv` as `world` local ranks the way torchrun does (one process a rank, the rank in its
    environment, every rank a client of a TCPStore this process hosts on a port the OS picked), each
    rank's output in log_dir/rank<R>.log. A DistributedError names the first rank that failed and ends
    with its output, or says the ranks did not finish in time; no rank outlives the call."""
    logs_at = Path(log_dir)
    logs_at.mkdir(parents=True, exist_ok=True)
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    procs, logs = [], []
    try:
        for rank in range(world):
            logs.append((logs_at / f"rank{rank}.log").open("w"))
            procs.append(subprocess.Popen(argv, env=_rank_env(rank, world, store.port, cuda), stdout=logs[-1],
                                          stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout_s
        while any(p.poll() is None for p in procs) and not any(p.returncode for p in procs):
            if time.monotonic() > deadline:
                raise DistributedError(f"{world} ranks did not finish in {timeout_s:.0f} s; rank 0 said:\n"
                                       f"{_tail(logs_at / 'rank0.log')}")
            time.sleep(0.1)
        failed = [r for r, p in enumerate(procs) if p.returncode]
        if failed:
            first = failed[0]
            raise DistributedError(f"rank {first} of {world} exited with {procs[first].returncode}:\n"
                                   f"{_tail(logs_at / f'rank{first}.log')}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for log in logs:
            log.close()
        del store


def launch(job: Job, timeout_s: float) -> list[dict]:
    """Run `job` on `job.world` ranks (run_ranks); every rank's result."""
    if job.cuda and torch.cuda.device_count() < job.world:
        raise DistributedError(f"{job.world} ranks need {job.world} GPUs; {torch.cuda.device_count()} visible")
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "job.json").write_text(job.to_json())
    run_ranks([sys.executable, "-m", "lowprec_workloads.fp8_data_parallel", str(out / "job.json")], job.world, out,
              timeout_s, job.cuda)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(job.world)]


def single_process_losses(shape, device: str, poison_step: int | None, seed: int = 0) -> tuple[list, list]:
    """The FP8 stack trained in one process on the whole global batch: losses per step and skipped steps."""
    model = Stack(shape.d, shape.blocks, fp8=True, seed=seed, device=device)
    teacher = Stack(shape.d, shape.blocks, fp8=False, seed=seed + 1, device=device)
    losses, scaler = train(model, teacher, shape, device, poison_step)
    return losses, scaler.skipped


@dataclass(frozen=True)
class Scaling:
    """One data-parallel variant's step against one GPU's, each the slowest rank's median."""

    single_ms: float  # one GPU's step on the per-GPU batch, no collective
    synced_ms: float  # the data-parallel step on the same per-GPU batch
    comm_ms: float  # the step's collectives alone, not overlapped
    world: int
    tokens_per_rank: int
    # The host's time to issue one data-parallel step (_timed): near synced_ms for eager steps, which wait on
    # Python; a replay's launch (about 0.04 ms) under Job.graphs.
    host_ms: float = 0.0
    # Job.graphs only: the largest difference of any weight, this variant's or one GPU's, after the timing's
    # replays against as many eager steps (0 unless a replay did not compute the step; inf: not checked).
    replay_difference: float | None = None

    @property
    def efficiency(self) -> float:
        """N-GPU throughput over N times one GPU's: the per-rank batch is fixed, so t_single / t_synced."""
        return self.single_ms / self.synced_ms

    @property
    def hidden_fraction(self) -> float:
        """Share of the collectives the step hid: 1 - exposed / standalone (above 1 when sharding saved
        more work than the collectives exposed)."""
        return 1.0 - (self.synced_ms - self.single_ms) / self.comm_ms

    @property
    def tokens_per_s(self) -> float:
        return self.world * self.tokens_per_rank / (self.synced_ms / 1e3)

    def to_dict(self) -> dict:
        return {**asdict(self), "efficiency": self.efficiency, "hidden_fraction": self.hidden_fraction,
                "tokens_per_s": self.tokens_per_s}


def scaling(results: list[dict], variant) -> Scaling:
    """`variant`'s Scaling from every rank's timing result; a DistributedError if it did not run."""
    name = label(variant)
    if name not in results[0]["times_ms"]:
        raise DistributedError(f"{name} did not run: {results[0]['errors'].get(name, 'not in the job')}")

    def slowest(side: str, times: str = "times_ms") -> float:
        return max(statistics.median(r[times][side]) for r in results)

    replay_differences = [r["graph_check"][side] for r in results for side in ("one_gpu", name)
                          if side in r["graph_check"]]
    return Scaling(slowest("one_gpu"), slowest(name), max(r["comm_alone_ms"][name] for r in results),
                   len(results), results[0]["tokens_per_rank"], slowest(name, "host_ms"),
                   max(replay_differences) if replay_differences else None)


if __name__ == "__main__":
    main()
    # The results are on disk and the groups destroyed: a rank leaves without the interpreter's teardown, in
    # which one still aborted now and then on a 2-core CPU ("terminate called without an active exception"
    # after destroy_process_group had returned: a C++ thread destroyed while joinable).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
