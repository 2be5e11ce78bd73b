"""Host-to-device copies overlapped with compute: micro-batches in pinned host memory pass through
a ring of device buffers, copies on a copy stream, compute on the compute stream, events between.

A schedule is a list of ("copy", chunk, buffer) and ("compute", chunk, buffer) operations in the
order the host issues them. With one buffer, copy and compute alternate on one stream: the serial
baseline. With two, the copy of chunk i+1 is issued before the compute of chunk i and runs on the
copy stream while chunk i computes (double buffering). The order matters on a GPU: a copy into a
buffer waits on the event of the last compute that read it, and that event must have been
recorded when the wait is issued, or the wait is a no-op and the copy races the compute.
`check_schedule` proves a schedule never does that; the CPU executor runs the same schedule
in issue order, so the buffer bookkeeping runs in CI.

Workloads: the chapter's FP16 MLP (1024 -> 4096 -> 1024) over 16 micro-batches, and attention of
one query per head over an FP8 KV cache offloaded to the host, chunk by chunk.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pytest_lowprec.roofline import Overlapped, Phase, Work
from pytest_lowprec.traffic import eager_work

Op = tuple[str, int, int]


def schedule(chunks: int, buffers: int) -> list[Op]:
    """Copies run `buffers - 1` chunks ahead of computes."""
    if chunks < 1 or buffers < 1:
        raise ValueError(f"need at least one chunk and one buffer, got chunks={chunks}, buffers={buffers}")
    ahead = buffers - 1
    ops: list[Op] = [("copy", i, i % buffers) for i in range(min(ahead, chunks))]
    for i in range(chunks):
        if i + ahead < chunks:
            ops.append(("copy", i + ahead, (i + ahead) % buffers))
        ops.append(("compute", i, i % buffers))
    return ops


def check_schedule(ops: list[Op], chunks: int, buffers: int) -> None:
    """Raise if a compute reads a buffer not holding its chunk, or a copy overwrites a buffer whose
    chunk has not been computed yet (in issue order, which is when the GPU's waits are enqueued)."""
    holds: dict[int, int] = {}  # buffer -> chunk copied in, not yet computed
    computed: set[int] = set()
    for op, chunk, buf in ops:
        if not 0 <= buf < buffers:
            raise ValueError(f"{op} of chunk {chunk} names buffer {buf}; there are {buffers}")
        if op == "copy":
            if buf in holds:
                raise ValueError(f"copy of chunk {chunk} overwrites buffer {buf} before chunk {holds[buf]} is computed")
            holds[buf] = chunk
        elif op == "compute":
            if holds.get(buf) != chunk:
                raise ValueError(f"compute of chunk {chunk} reads buffer {buf}, which holds {holds.get(buf)}")
            del holds[buf]
            computed.add(chunk)
        else:
            raise ValueError(f"unknown operation {op!r}")
    missing = set(range(chunks)) - computed
    if missing:
        raise ValueError(f"chunks never computed: {sorted(missing)}")


@dataclass
class Pipeline:
    """Pinned host micro-batches [chunks, ...], `compute(device_chunk, index) -> device tensor`,
    written into outputs[index]."""

    host: torch.Tensor
    compute: Callable[[torch.Tensor, int], torch.Tensor]
    outputs: torch.Tensor
    buffers: list[torch.Tensor]

    @classmethod
    def create(cls, host: torch.Tensor, compute, out_shape: tuple[int, ...], out_dtype: torch.dtype,
               device: str, buffers: int) -> Pipeline:
        if host.device.type == "cpu" and device != "cpu" and not host.is_pinned():
            raise ValueError("host micro-batches must be pinned (tensor.pin_memory()): a pageable copy "
                             "is synchronous and the test would measure pinning, not overlap")
        bufs = [torch.empty(host.shape[1:], dtype=host.dtype, device=device) for _ in range(buffers)]
        outputs = torch.empty((host.shape[0], *out_shape), dtype=out_dtype, device=device)
        return cls(host, compute, outputs, bufs)


def run_on_cpu(p: Pipeline) -> torch.Tensor:
    """The schedule in issue order with no streams: the same buffer use, checked on CPU."""
    ops = schedule(p.host.shape[0], len(p.buffers))
    check_schedule(ops, p.host.shape[0], len(p.buffers))
    for op, chunk, buf in ops:
        if op == "copy":
            p.buffers[buf].copy_(p.host[chunk])
        else:
            p.outputs[chunk].copy_(p.compute(p.buffers[buf], chunk))
    return p.outputs


class CudaRunner:
    """Runs a pipeline's schedule on the current (compute) stream and a copy stream."""

    def __init__(self, p: Pipeline):
        self.p = p
        n, b = p.host.shape[0], len(p.buffers)
        self.ops = schedule(n, b)
        check_schedule(self.ops, n, b)
        self.copy_stream = torch.cuda.Stream(device=p.outputs.device)
        self.copied = [torch.cuda.Event() for _ in range(b)]
        self.consumed = [torch.cuda.Event() for _ in range(b)]

    def __call__(self) -> torch.Tensor:
        p = self.p
        compute_stream = torch.cuda.current_stream(p.outputs.device)
        serial = len(p.buffers) == 1
        copy_stream = compute_stream if serial else self.copy_stream
        # The previous call's last computes must be done before their buffers are refilled.
        copy_stream.wait_stream(compute_stream)
        used: set[int] = set()
        for op, chunk, buf in self.ops:
            if op == "copy":
                if buf in used and not serial:
                    # check_schedule proved this buffer's last compute was issued, so its event is recorded.
                    copy_stream.wait_event(self.consumed[buf])
                with torch.cuda.stream(copy_stream):
                    p.buffers[buf].copy_(p.host[chunk], non_blocking=True)
                self.copied[buf].record(copy_stream)
            else:
                compute_stream.wait_event(self.copied[buf])
                p.outputs[chunk].copy_(p.compute(p.buffers[buf], chunk))
                self.consumed[buf].record(compute_stream)
                used.add(buf)
        compute_stream.wait_stream(copy_stream)
        return p.outputs


def pipeline_work(p: Pipeline) -> tuple[tuple[Phase, ...], tuple[Phase, ...]]:
    """(serial, pipelined) work of the pipeline for the hardware model: every chunk's host-to-device copy
    over the link and its compute (read off the operators it dispatches, run once on device copies of
    the chunks); serial runs them one after the other, the pipeline overlaps all copies but the first
    with the computes."""
    chunks = p.host.shape[0]
    device_chunks = p.host.to(p.outputs.device)
    computes = eager_work(lambda: [p.outputs[i].copy_(p.compute(device_chunks[i], i)) for i in range(chunks)])
    chunk_bytes = p.host[0].numel() * p.host.element_size()
    copy = Work(link_bytes=chunk_bytes, kernels=1)
    copies = Work(link_bytes=chunk_bytes * (chunks - 1), kernels=chunks - 1)
    serial = (Work(link_bytes=chunk_bytes * chunks, kernels=chunks), *computes)
    return serial, (copy, Overlapped(copies, computes))


def overlap_efficiency(serial_ms: float, pipelined_ms: float, copy_ms: float, compute_ms: float) -> float:
    """How much of the achievable saving the pipeline got: (t_serial - t_pipe) / (t_serial - t_ideal),
    t_ideal = max(all copies, all computes). 1 is perfect overlap; 0 is none."""
    ideal = max(copy_ms, compute_ms)
    if serial_ms <= ideal:
        raise ValueError(f"serial time {serial_ms:.4g} ms is not above the ideal {ideal:.4g} ms: nothing to overlap")
    return (serial_ms - pipelined_ms) / (serial_ms - ideal)


# -- workloads -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MLP:
    """The chapter's FP16 MLP, 1024 -> 4096 -> 1024 with GELU."""

    w1: torch.Tensor
    w2: torch.Tensor

    @classmethod
    def create(cls, device: str, dtype: torch.dtype, d_model: int = 1024, d_ff: int = 4096, seed: int = 0) -> MLP:
        g = torch.Generator(device="cpu").manual_seed(seed)
        w1 = torch.randn(d_ff, d_model, generator=g) / math.sqrt(d_model)
        w2 = torch.randn(d_model, d_ff, generator=g) / math.sqrt(d_ff)
        return cls(w1.to(device, dtype), w2.to(device, dtype))

    def __call__(self, x: torch.Tensor, index: int = 0) -> torch.Tensor:
        return torch.nn.functional.linear(torch.nn.functional.gelu(torch.nn.functional.linear(x, self.w1)), self.w2)


@dataclass(frozen=True)
class ChunkAttention:
    """Attention of a block of queries per head (a chunked prefill, or speculative decoding) over a
    chunk of an FP8 KV cache kept on the host: a chunk is [2, heads, tokens, head_dim] E4M3 bytes
    (K then V). Products in bf16 on tensor cores, softmax statistics in float32. The output per
    chunk is [heads, queries, head_dim + 2]: the unnormalized sum of p*v, the chunk's max score
    and its sum of p. A single query per head would be a few microseconds of launches per chunk,
    host-bound, with nothing for a copy to overlap."""

    q: torch.Tensor  # [heads, queries, head_dim]
    k_scale: float
    v_scale: float

    def __call__(self, chunk: torch.Tensor, index: int = 0) -> torch.Tensor:
        dtype = self.q.dtype
        kv = chunk.view(torch.float8_e4m3fn).to(dtype)
        scores = torch.matmul(self.q, kv[0].transpose(-1, -2)).float() * (self.k_scale / math.sqrt(self.q.shape[-1]))
        m = scores.amax(dim=-1, keepdim=True)
        p = torch.exp(scores - m)
        acc = torch.matmul(p.to(dtype), kv[1]).float() * self.v_scale
        return torch.cat((acc, m, p.sum(dim=-1, keepdim=True)), dim=-1)


def combine_chunks(partials: torch.Tensor) -> torch.Tensor:
    """[chunks, ..., head_dim + 2] partials -> [..., head_dim] attention output."""
    acc, m, total = partials[..., :-2], partials[..., -2], partials[..., -1]
    weight = torch.exp(m - m.amax(dim=0, keepdim=True))
    return (acc * weight[..., None]).sum(dim=0) / (total * weight).sum(dim=0)[..., None]


def host_kv_cache(chunks: int, heads: int, tokens: int, head_dim: int, seed: int = 4):
    """FP8 K and V chunks on the host and the float values they store (for the reference)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    kv = torch.randn(chunks, 2, heads, tokens, head_dim, generator=g)
    scale = kv.abs().amax() / 448.0
    stored = (kv / scale).to(torch.float8_e4m3fn)
    return stored.view(torch.uint8), float(scale), stored.float() * scale
