"""The decode step's elementwise work in single launches: the residual add with the RMSNorm after it, and
SwiGLU's gate, each able to write the E4M3 scale of its output for the FP8 linears that read it.

Eagerly (transformer_block.rms_norm, `h + delta.to(dtype)`, `F.silu(gate) * up`) these are about eight
kernels a norm and three a gate, each a launch and a pass over a few kilobytes: on an H200 (2026-12-02,
Llama-3-8B widths, two layers, CUDA-graph replays) about 40 of the fp8_balanced step's 57 kernels and 55 of
its 346 us. A decode engine fuses them (vLLM's fused_add_rms_norm and silu_and_mul). Here one Triton
program does a norm, holding a row in registers and walking the rows of a decode step's activation
(FUSED_MAX_ELEMENTS); SwiGLU takes programs of _CHUNK elements.

The arithmetic is the eager path's, rounding where it rounds: the residual `h + delta.to(dtype)` (delta
rounded to the step's dtype, the sum rounded), the norm's `x * rsqrt(mean(x^2) + eps).to(dtype)` rounded,
then its product with the weight rounded; SwiGLU's `silu(gate) * up` in float32, rounded once to the
dtype (the built-in strategies' is float32: "norm" is fp32 in each). On the GPU exp and rsqrt are
libdevice's, the functions torch's kernels call (Triton's own `tl.exp` is a fast approximation whose error
grows with |x|: 7-27 float32 units at gates of 4-16 standard deviations on an H200, 2026-12-02). Only the
sum of squares' order differs from torch's then, so an output differs from the eager one by a few units in
float32's last place, at most one in a 16-bit dtype's. Triton's interpreter has no libdevice and truncates
float32 to bfloat16 where the GPU rounds, so there (`INTERPRETED`) it takes numpy's exp and rsqrt
(torch_math_triton) and rounds to bfloat16 in integer arithmetic first (triton_quant._bf16_value).

The E4M3 scale (add_rms_norm's `fp8_scale`, swiglu's `workspace`): the kernel also takes the amax of what it
writes and stores fp8._scale_from_amax of it, the scale fp8_linear's GEMV would compute from that tensor in
every program before its first product; the GEMV given it skips that pass (fp8_linear.gemv's x_scale).

A copy (both functions' `copy_dtype`): the kernel also writes its output rounded to that dtype, the bits
`out.to(copy_dtype)` gives, for a linear that reads its input in another dtype than the step's (a 16-bit
weight's F.linear, the NVFP4 decode linear's bfloat16): that cast is then no launch of its own.

`programmatic` (both functions): launched as a programmatic dependent of the kernel before it on the stream
(kernels/lowprec.cuh says what that is). The program waits for that kernel before it reads or writes anything,
then lets the next programmatic launch start: the FP8 GEMV after a norm or a gate requests its first weight
bytes while this few-microsecond launch runs, instead of after it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from pytest_lowprec.formats.fp8 import FLT_MAX
from pytest_lowprec.formats.triton_quant import _bf16_value, _fp8_scale, _magnitude_bits
from pytest_lowprec.roofline import Work

from .interpreted import interpreting, mend_interpreter_scalars, run_interpreted
from .kernels import programmatic_launches
from .torch_math_triton import exp, rsqrt

# The norm's one program walks the rows of the activation, each held in registers: a decode step's
# activation (rows x width) up to this many elements, rows up to _MAX_ROW wide, is fused; a larger one (a
# prefill) runs the eager path.
FUSED_MAX_ELEMENTS = 65536
_MAX_ROW = 16384
# Elements a SwiGLU program takes: 14 programs for Llama-3-8B's 14336 (one program over all of it took
# 7-8 us on an H200, 2026-12-02, a norm's program over 4096 about 2 us).
_CHUNK = 1024
# The dtypes a fused launch writes a copy of its output in: those a linear after it reads.
COPY_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def fits(rows: int, width: int) -> bool:
    """Whether a norm over an activation of `rows` x `width` is fused (SwiGLU takes any size)."""
    return rows * width <= FUSED_MAX_ELEMENTS and width <= _MAX_ROW


@triton.jit
def _rounded(x, dtype: tl.constexpr, INTERPRETED: tl.constexpr):
    """float32 x rounded to `dtype` (nearest even), as float32."""
    if dtype == tl.bfloat16 and INTERPRETED:
        return _bf16_value(x)
    return x.to(dtype).to(tl.float32)


@triton.jit
def _store_copy(ptr, y, mask, INTERPRETED: tl.constexpr):
    """y (float32) rounded to the copy's dtype (nearest even), stored."""
    copy_dtype: tl.constexpr = ptr.dtype.element_ty
    tl.store(ptr, _rounded(y, copy_dtype, INTERPRETED).to(copy_dtype), mask=mask)


@triton.jit
def _start(PROGRAMMATIC: tl.constexpr):
    """A programmatic launch's first act: wait for the kernel before it, then let the next one start."""
    if PROGRAMMATIC:
        gdc_wait()
        gdc_launch_dependents()


@triton.jit
def _add_rms_norm_kernel(h_ptr, delta_ptr, w_ptr, h_out_ptr, out_ptr, scale_ptr, copy_ptr, rows, width, eps,
                         BLOCK: tl.constexpr, HAS_DELTA: tl.constexpr, WRITE_SCALE: tl.constexpr,
                         WRITE_COPY: tl.constexpr, FLT_MAX: tl.constexpr, INTERPRETED: tl.constexpr,
                         PROGRAMMATIC: tl.constexpr):
    _start(PROGRAMMATIC)
    dtype: tl.constexpr = out_ptr.dtype.element_ty
    offs = tl.arange(0, BLOCK)
    mask = offs < width
    weight = _rounded(tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32), dtype, INTERPRETED)
    amax_bits = tl.zeros([BLOCK], dtype=tl.int32)
    for row in range(rows):
        at = row * width + offs
        x = tl.load(h_ptr + at, mask=mask, other=0.0).to(tl.float32)
        if HAS_DELTA:  # h + delta.to(dtype), rounded to the dtype
            delta = _rounded(tl.load(delta_ptr + at, mask=mask, other=0.0).to(tl.float32), dtype, INTERPRETED)
            x = _rounded(x + delta, dtype, INTERPRETED)
            tl.store(h_out_ptr + at, x.to(dtype), mask=mask)
        mean_square = tl.math.div_rn(tl.sum(x * x, axis=0), width * 1.0)
        inv_rms = _rounded(rsqrt(mean_square + eps, INTERPRETED), dtype, INTERPRETED)
        y = _rounded(_rounded(x * inv_rms, dtype, INTERPRETED) * weight, dtype, INTERPRETED)
        tl.store(out_ptr + at, y.to(dtype), mask=mask)
        if WRITE_COPY:
            _store_copy(copy_ptr + at, y, mask, INTERPRETED)
        if WRITE_SCALE:
            amax_bits = tl.maximum(amax_bits, tl.where(mask, _magnitude_bits(y), 0))
    if WRITE_SCALE:
        tl.store(scale_ptr, _fp8_scale(tl.max(amax_bits, axis=0).to(tl.float32, bitcast=True), 448.0, FLT_MAX))


@triton.jit
def _swiglu_kernel(gate_ptr, up_ptr, out_ptr, scale_ptr, shared_ptr, copy_ptr, numel, BLOCK: tl.constexpr,
                   WRITE_SCALE: tl.constexpr, WRITE_COPY: tl.constexpr, FLT_MAX: tl.constexpr,
                   INTERPRETED: tl.constexpr, PROGRAMMATIC: tl.constexpr):
    """BLOCK elements a program. With WRITE_SCALE the programs share an amax and an arrival count
    (SwigluWorkspace, zero between calls): each takes the max of its amax into the first, then counts itself
    in (acq_rel, so its max is seen by whoever counts in after it); the last to arrive reads the amax,
    writes the scale and sets both back to zero for the next call. Triton issues a scalar atomic from one
    thread of the program, so program order and the release cover the max, as in fp8_linear's split-K."""
    _start(PROGRAMMATIC)
    dtype: tl.constexpr = out_ptr.dtype.element_ty
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    gate = tl.load(gate_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(up_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = _rounded(tl.math.div_rn(gate, 1.0 + exp(-gate, INTERPRETED)) * up, dtype, INTERPRETED)
    tl.store(out_ptr + offs, y.to(dtype), mask=mask)
    if WRITE_COPY:
        _store_copy(copy_ptr + offs, y, mask, INTERPRETED)
    if WRITE_SCALE:
        tl.atomic_max(shared_ptr, tl.max(tl.where(mask, _magnitude_bits(y), 0), axis=0), sem="relaxed")
        arrived = tl.atomic_add(shared_ptr + 1, 1, sem="acq_rel")
        if arrived == tl.num_programs(0) - 1:
            amax = tl.atomic_xchg(shared_ptr, 0).to(tl.float32, bitcast=True)
            tl.store(scale_ptr, _fp8_scale(amax, 448.0, FLT_MAX))
            tl.atomic_xchg(shared_ptr + 1, 0)


def _check(what: str, first: torch.Tensor, *others: torch.Tensor) -> None:
    """The tensors a kernel takes are on one CUDA device (any device under the interpreter)."""
    if not (first.is_cuda or interpreting()):
        raise ValueError(f"{what} runs on CUDA tensors (or under TRITON_INTERPRET=1), got one on {first.device}; "
                         "transformer_block's eager path is the CPU's")
    for other in others:
        if other.device != first.device:
            raise ValueError(f"{what} takes its tensors on one device: {first.device} and {other.device}")


def _require_copy_dtype(dtype: torch.dtype | None) -> None:
    if dtype is not None and dtype not in COPY_DTYPES:
        raise ValueError(f"copy_dtype takes {', '.join(map(str, COPY_DTYPES))} or None, got {dtype}")


def _launch_options(programmatic: bool, on: torch.Tensor) -> dict:
    """The kernel's PROGRAMMATIC flag and Triton's programmatic launch, where the GPU takes one
    (kernels.programmatic_launches); elsewhere, and under the interpreter (which launches in order and has no
    griddepcontrol), the ordinary launch."""
    programmatic = programmatic and on.is_cuda and not interpreting() and programmatic_launches(on.device)
    return {"PROGRAMMATIC": programmatic, **({"launch_pdl": True} if programmatic else {})}


def _copy(like: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor | None:
    """The copy a kernel writes of an output shaped as `like`, in `dtype` (None: no copy)."""
    return None if dtype is None else torch.empty(like.shape, dtype=dtype, device=like.device)


def add_rms_norm(h: torch.Tensor, weight: torch.Tensor, delta: torch.Tensor | None = None, *, eps: float = 1e-6,
                 fp8_scale: bool = False, copy_dtype: torch.dtype | None = None,
                 programmatic: bool = False) -> tuple[torch.Tensor, ...]:
    """(h + delta.to(h.dtype), its RMSNorm times `weight` in h's dtype, the E4M3 scale of that norm or None, the
    norm in `copy_dtype` or None). h [rows, width] in the step's dtype; with no delta the first is h itself.
    `programmatic`: a programmatic launch (the module's docstring)."""
    rows, width = h.shape
    if not fits(rows, width):
        raise ValueError(f"add_rms_norm fuses up to {FUSED_MAX_ELEMENTS} elements, rows of up to {_MAX_ROW}; "
                         f"got [{rows}, {width}]: use the eager norm")
    if delta is not None and delta.shape != h.shape:
        raise ValueError(f"delta must be h's shape {tuple(h.shape)}, got {tuple(delta.shape)}")
    if weight.shape != (width,):
        raise ValueError(f"weight must be [{width}], one per column of h, got {tuple(weight.shape)}")
    _require_copy_dtype(copy_dtype)
    _check("add_rms_norm", h, weight, *([delta] if delta is not None else []))
    h = h.contiguous()
    copy = _copy(h, copy_dtype)
    out = torch.empty_like(h)
    h_out = torch.empty_like(h) if delta is not None else h
    scale = torch.empty((), dtype=torch.float32, device=h.device) if fp8_scale else None
    _add_rms_norm_kernel[(1,)](h, delta.contiguous() if delta is not None else h, weight.contiguous(), h_out, out,
                               scale if scale is not None else out, copy if copy is not None else out, rows, width,
                               eps, BLOCK=triton.next_power_of_2(width), HAS_DELTA=delta is not None,
                               WRITE_SCALE=fp8_scale, WRITE_COPY=copy is not None, FLT_MAX=FLT_MAX,
                               INTERPRETED=interpreting(), num_warps=8, **_launch_options(programmatic, h))
    return h_out, out, scale, copy


class SwigluWorkspace:
    """What swiglu's programs share to write one scale: an amax (float32 bits) and an arrival count, zero
    between calls (the last program of a call resets them), made once on the device and kept by the caller
    across calls, CUDA-graph replays included. One call at a time per workspace; a launch that does not
    finish leaves it undefined: make a new one."""

    def __init__(self, device: torch.device | str):
        self.shared = torch.zeros(2, dtype=torch.int32, device=device)


def swiglu(gate: torch.Tensor, up: torch.Tensor, dtype: torch.dtype, *, workspace: SwigluWorkspace | None = None,
           copy_dtype: torch.dtype | None = None, programmatic: bool = False) -> tuple[torch.Tensor, ...]:
    """(silu(gate) * up in float32, rounded to `dtype`; with a workspace, the E4M3 scale of it, else None; the
    product rounded to `copy_dtype`, else None). The programs each take _CHUNK elements; the scale is their
    amaxes' through the workspace. `programmatic`: a programmatic launch (the module's docstring)."""
    if gate.shape != up.shape:
        raise ValueError(f"swiglu takes gate and up of one shape, got {tuple(gate.shape)} and {tuple(up.shape)}")
    _require_copy_dtype(copy_dtype)
    _check("swiglu", gate, up, *([workspace.shared] if workspace is not None else []))
    copy = _copy(gate, copy_dtype)
    out = torch.empty(gate.shape, dtype=dtype, device=gate.device)
    scale = torch.empty((), dtype=torch.float32, device=gate.device) if workspace is not None else None
    block = min(_CHUNK, triton.next_power_of_2(gate.numel()))
    _swiglu_kernel[(triton.cdiv(gate.numel(), block),)](
        gate.contiguous(), up.contiguous(), out, scale if scale is not None else out,
        workspace.shared if workspace is not None else out, copy if copy is not None else out, gate.numel(),
        BLOCK=block, WRITE_SCALE=workspace is not None, WRITE_COPY=copy is not None, FLT_MAX=FLT_MAX,
        INTERPRETED=interpreting(), num_warps=4, **_launch_options(programmatic, gate))
    return out, scale, copy


def add_rms_norm_work(rows: int, width: int, dtype_size: int, delta_size: int | None, copy_size: int = 0) -> Work:
    """add_rms_norm's traffic: h (and delta) in, the norm (and the new h, and a copy of `copy_size`-byte
    elements) out, the float32 weight (the stack's norms keep theirs in float32, transformer_block.Weights),
    one launch."""
    moved = rows * width * (2 * dtype_size + (delta_size + dtype_size if delta_size is not None else 0) + copy_size)
    return Work(nbytes=moved + width * 4, kernels=1)


def swiglu_work(numel: int, gate_size: int, up_size: int, out_size: int, copy_size: int = 0) -> Work:
    """swiglu's traffic: gate and up in (each at its own element size), the product (and a copy) out, one
    launch."""
    return Work(nbytes=numel * (gate_size + up_size + out_size + copy_size), kernels=1)


def interpreted(calls: list[tuple[str, tuple, dict]]) -> list[object]:
    """Each (function name, args, kwargs) of this module on CPU tensors, run by Triton's interpreter in a
    child process (interpreted.run_interpreted); their results."""
    return run_interpreted(__name__, calls, "the decode step's fused kernels")


if __name__ == "__main__":  # interpreted's child: python -m ... IN OUT
    import sys

    mend_interpreter_scalars()
    # weights_only=False: the job holds workspaces (plain objects), written by the parent a moment ago.
    calls = torch.load(sys.argv[1], weights_only=False)
    torch.save([globals()[name](*args, **kwargs) for name, args, kwargs in calls], sys.argv[2])
