"""Triton fast paths for the quantizers on every training step: NVFP4 (1x16), FP8 rowwise, and FP8
tensorwise with its transpose (the layout both backward GEMMs of an FP8 linear read).

Each reproduces its reference in nvfp4.py / fp8.py bit for bit: the same float32
operations in the same order, IEEE division (div_rn), round-to-nearest-even
E4M3 conversion, and TransformerEngine's E2M1 tie thresholds. The edges match
too: a scale that would overflow is clamped to FLT_MAX, and an amax is the
integer maximum of the magnitudes' float32 bits, where NaN sorts above Inf, so a
NaN reaches the FP8 scale as it does through the reference's torch.amax (a float
max, tl.max or a float atomic_max, may drop it). Import only where CUDA and
Triton exist (the CPU wheel of torch has no Triton).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .nvfp4 import BLOCK, FLT_MAX, NVFP4Tensor

_ONE_SIXTH = 0.1666666716337204  # float32(1/6), the value torch.div(1.0, 6.0) gives
_AMAX_BLOCK = 16384


@triton.jit
def _bf16_value(y):
    """y rounded to bfloat16's 8 significant bits, ties to even, as float32 (NaN kept): the interpreter's
    float32 -> bfloat16 conversion truncates, the GPU's rounds; this value converts exactly on both."""
    bits = y.to(tl.int32, bitcast=True)
    r = ((bits + 0x7FFF + ((bits >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)
    return tl.where(y != y, y, r)


@triton.jit
def _magnitude_bits(x):
    """|x| as the int32 bits of a float32: ordered as the magnitudes, with NaN above Inf."""
    return x.to(tl.float32).to(tl.int32, bitcast=True) & 0x7FFFFFFF


@triton.jit
def _absmax_kernel(x_ptr, out_bits_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    tl.atomic_max(out_bits_ptr, tl.max(_magnitude_bits(x), axis=0))


@triton.jit
def _fp8_scale(amax, FP8_MAX: tl.constexpr, FLT_MAX: tl.constexpr):
    """fp8._scale_from_amax: FP8_MAX / amax clamped to FLT_MAX, 1 for amax 0, NaN for a NaN amax."""
    scale = tl.minimum(tl.math.div_rn(FP8_MAX, amax), FLT_MAX, propagate_nan=tl.PropagateNan.ALL)
    return tl.where((amax > 0) | (amax != amax), scale, 1.0)


@triton.jit
def _e2m1_codes(scaled):
    """E2M1 codes (sign in bit 3) of float32 values, rounded to nearest even and saturated at 6.

    The grid's spacing is 0.5 below 2, 1 in [2, 4) and 2 from 4 on. Adding M = spacing * 2**23
    makes the float32 adder round to that spacing (round to nearest even, as IEEE addition
    does), and the integer difference of the sum's bits and M's bits counts grid steps; the
    code is that count plus 0, 2 or 4 by binade. The fused kernel fell from 1320 to 776 SASS
    instructions a thread (64 elements, sm_90) against seven threshold compares; equal to
    TransformerEngine's thresholds (ties
    0.25->0, 0.75->1, 1.25->1, 1.75->2, 2.5->2, 3.5->4, 5->4) for every float32 in [0, 6],
    checked exhaustively when this was written and on a dense sweep in tests/.
    """
    a = tl.minimum(tl.abs(scaled), 6.0)
    ge2 = a >= 2.0
    ge4 = a >= 4.0
    magic = tl.where(ge4, 16777216.0, tl.where(ge2, 8388608.0, 4194304.0))
    # bits(M) - code offset: 0x4B800000 - 4, 0x4B000000 - 2, 0x4A800000 - 0
    base = tl.where(ge4, 1266679804, tl.where(ge2, 1258291198, 1249902592))
    code = (a + magic).to(tl.int32, bitcast=True) - base
    # The sign from `< 0` as the reference takes it: -0.0 encodes as +0, a negative that rounds to 0 as -0.
    return code | tl.where(scaled < 0, 8, 0)


@triton.jit
def _e2m1_value(code):
    """The float32 value of an E2M1 code (sign in bit 3; magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6), as
    minifloat.E2M1's table gives it: code 8 is -0.0. The sign goes in as a bit: Triton 3.6 negates as 0 - x,
    which turns -0.0 into +0.0."""
    c = code & 7
    magnitude = tl.where(c < 4, c.to(tl.float32) * 0.5,
                         tl.where(c < 6, (c - 2).to(tl.float32), tl.where(c == 6, 4.0, 6.0)))
    return (magnitude.to(tl.int32, bitcast=True) | ((code & 8) << 28)).to(tl.float32, bitcast=True)


@triton.autotune(
    configs=[triton.Config({"BLOCK_M": m, "BLOCKS_N": n}, num_warps=w)
             for m, n, w in ((16, 16, 4), (32, 16, 4), (32, 16, 8), (64, 16, 8), (16, 32, 4),
                             (32, 32, 8), (8, 64, 4), (64, 8, 4))],
    key=["n_rows", "n_cols"],
)
@triton.jit
def _nvfp4_kernel(x_ptr, packed_ptr, scales_ptr, amax_ptr, decode_ptr, n_rows, n_cols,
                  BLOCK_M: tl.constexpr, BLOCKS_N: tl.constexpr, FLT_MAX: tl.constexpr,
                  ONE_SIXTH: tl.constexpr):
    """A tile of BLOCK_M rows x BLOCKS_N 16-element blocks of a bfloat16 tensor read as int32 words.

    Each word holds an (even, odd) pair of bf16 values: the even one is `w << 16`, the odd
    one `w & 0xFFFF0000`, both exact as float32. Loads are contiguous and wide, and both
    nibbles of an output byte come from one word in one thread: no shuffles through shared
    memory (an earlier layout was bound by L1 traffic at 95% with DRAM at 30%).
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    # Per-tensor scales, as nvfp4.global_scales computes them (IEEE divisions, fp32(1/6)).
    amax = tl.load(amax_ptr)
    global_encode = tl.minimum(tl.math.div_rn(2688.0, amax), FLT_MAX)
    global_encode = tl.where((amax > 0) & (global_encode > 0), global_encode, 1.0)
    global_decode = tl.math.div_rn(1.0, global_encode)
    multiplier = global_encode * ONE_SIXTH
    if (pid_m == 0) & (pid_n == 0):
        tl.store(decode_ptr, global_decode)
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)[:, None, None]
    blocks = (pid_n * BLOCKS_N + tl.arange(0, BLOCKS_N))[None, :, None]
    pairs = tl.arange(0, 8)[None, None, :]
    mask = (rows < n_rows) & (blocks < n_cols // 16)
    offsets = rows * (n_cols // 2) + blocks * 8 + pairs  # in words, and in output bytes
    words = tl.load(x_ptr + offsets, mask=mask, other=0)
    even = (words << 16).to(tl.float32, bitcast=True)
    odd = (words & -65536).to(tl.float32, bitcast=True)
    block_amax = tl.maximum(tl.max(tl.abs(even), axis=2), tl.max(tl.abs(odd), axis=2))
    decode8 = tl.minimum(block_amax * multiplier, 448.0).to(tl.float8e4nv, fp_downcast_rounding="rtne")
    encode = tl.minimum(tl.math.div_rn(tl.full(block_amax.shape, 1.0, tl.float32),
                                       decode8.to(tl.float32) * global_decode), FLT_MAX)[:, :, None]
    lo = _e2m1_codes(even * encode)
    hi = _e2m1_codes(odd * encode)
    tl.store(packed_ptr + offsets, (lo | (hi << 4)).to(tl.uint8), mask=mask)
    scale_rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)[:, None]
    scale_cols = (pid_n * BLOCKS_N + tl.arange(0, BLOCKS_N))[None, :]
    tl.store(scales_ptr + scale_rows * (n_cols // 16) + scale_cols, decode8.to(tl.uint8, bitcast=True),
             mask=(scale_rows < n_rows) & (scale_cols < n_cols // 16))


def absmax(x: torch.Tensor) -> torch.Tensor:
    """max |x| of a contiguous CUDA tensor as a float32 scalar tensor: one pass, one atomic per program.
    NaN if x holds a NaN, as torch.amax gives."""
    out = torch.zeros((), dtype=torch.float32, device=x.device)
    _absmax_kernel[(triton.cdiv(x.numel(), _AMAX_BLOCK),)](x, out.view(torch.int32), x.numel(), BLOCK=_AMAX_BLOCK,
                                                          num_warps=8)
    return out


def quantize_nvfp4_triton(x: torch.Tensor, amax: torch.Tensor | None = None) -> NVFP4Tensor:
    """NVFP4 with 1x16 blocks of a 2D bfloat16 CUDA tensor: an amax pass, then one fused pass.

    With `amax` given (delayed scaling, as quantize_nvfp4 takes it) the amax pass is skipped
    and the tensor is read once. The per-tensor scales are derived inside the fused kernel,
    so the host issues at most three launches (zero the amax, two kernels) and no small
    tensor operations. Other dtypes: use nvfp4.quantize_nvfp4 (the same bits, eagerly).
    """
    if x.ndim != 2 or not x.is_cuda or x.shape[1] % BLOCK or x.dtype != torch.bfloat16:
        raise ValueError(f"expected a 2D bfloat16 CUDA tensor with columns a multiple of 16, got "
                         f"{x.dtype} {tuple(x.shape)} on {x.device}; quantize_nvfp4 takes any other")
    x = x.contiguous()
    rows, cols = x.shape
    amax = absmax(x) if amax is None else amax.to(device=x.device, dtype=torch.float32).reshape(())
    decode = torch.empty((), dtype=torch.float32, device=x.device)
    packed = torch.empty(rows, cols // 2, dtype=torch.uint8, device=x.device)
    scales = torch.empty(rows, cols // BLOCK, dtype=torch.uint8, device=x.device)

    def grid(meta):
        return (triton.cdiv(rows, meta["BLOCK_M"]), triton.cdiv(cols // BLOCK, meta["BLOCKS_N"]))

    # The tile shape is tuned per shape on first use (the outputs are the same bits for every tile).
    _nvfp4_kernel[grid](x.view(torch.int32), packed, scales, amax, decode, rows, cols,
                        FLT_MAX=FLT_MAX, ONE_SIXTH=_ONE_SIXTH)
    return NVFP4Tensor(packed=packed, block_scales=scales.view(torch.float8_e4m3fn), global_decode=decode,
                       shape=tuple(x.shape), tile=(1, BLOCK))


@triton.jit
def _fp8_rowwise_kernel(x_ptr, q_ptr, inv_ptr, n_cols, BLOCK_N: tl.constexpr, FP8_MAX: tl.constexpr,
                        FLT_MAX: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    amax = tl.max(_magnitude_bits(x), axis=0).to(tl.float32, bitcast=True)
    scale = _fp8_scale(amax, FP8_MAX, FLT_MAX)
    tl.store(q_ptr + row * n_cols + cols, _fp8_scaled(x, scale, FP8_MAX, False), mask=mask)
    tl.store(inv_ptr + row, tl.math.div_rn(1.0, scale))


def quantize_fp8_rowwise_triton(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E4M3 with one float32 scale per row, one launch, each row read once."""
    if x.ndim != 2 or not x.is_cuda:
        raise ValueError(f"expected a 2D CUDA tensor, got {tuple(x.shape)} on {x.device}")
    x = x.contiguous()
    rows, cols = x.shape
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn, device=x.device)
    inv = torch.empty(rows, 1, dtype=torch.float32, device=x.device)
    block_n = triton.next_power_of_2(cols)
    _fp8_rowwise_kernel[(rows,)](x, q, inv, cols, BLOCK_N=block_n, FP8_MAX=448.0, FLT_MAX=FLT_MAX,
                                 num_warps=min(32, max(4, block_n // 1024)))
    return q, inv


@triton.jit
def _fp8_scaled(x, scale, FP8_MAX: tl.constexpr, E5M2: tl.constexpr):
    """fp8.saturating_cast of x * scale: the product in float32, clamped (NaN stays NaN, as torch.clamp keeps it:
    an overflowed step must reach the loss scaler as NaN), rounded to nearest even."""
    y = tl.minimum(tl.maximum(x.to(tl.float32) * scale, -FP8_MAX, propagate_nan=tl.PropagateNan.ALL), FP8_MAX,
                   propagate_nan=tl.PropagateNan.ALL)
    if E5M2:
        y = y.to(tl.float8e5, fp_downcast_rounding="rtne")
    else:
        y = y.to(tl.float8e4nv, fp_downcast_rounding="rtne")
    return y


FP8_TENSORWISE_CONFIGS = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w)
                          for m, n, w in ((64, 64, 4), (64, 128, 4), (128, 64, 4), (128, 128, 8), (32, 128, 4))]


@triton.autotune(
    configs=FP8_TENSORWISE_CONFIGS,
    key=["n_rows", "n_cols", "TRANSPOSE", "SEEN"],
)
@triton.jit
def _fp8_tensorwise_kernel(x_ptr, q_ptr, qt_ptr, amax_ptr, inv_ptr, seen_bits_ptr, n_rows, n_cols,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FP8_MAX: tl.constexpr,
                           FLT_MAX: tl.constexpr, E5M2: tl.constexpr, TRANSPOSE: tl.constexpr, SEEN: tl.constexpr):
    amax = tl.load(amax_ptr)
    scale = _fp8_scale(amax, FP8_MAX, FLT_MAX)
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = (tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    x = tl.load(x_ptr + rows[:, None] * n_cols + cols[None, :], mask=mask, other=0.0)
    tl.store(q_ptr + rows[:, None] * n_cols + cols[None, :], _fp8_scaled(x, scale, FP8_MAX, E5M2), mask=mask)
    if SEEN:
        tl.atomic_max(seen_bits_ptr, tl.max(tl.max(_magnitude_bits(x), axis=1), axis=0))
    if TRANSPOSE:
        # The tile again, read in the transposed orientation (from L2: DRAM traffic is unchanged), and
        # stored along the output's rows. tl.trans of the loaded tile put up to half of the bytes in the
        # wrong places on an H100 (Triton 3.6: float32 inputs with 16-divisible sizes, and int32 tiles of
        # any input); this costs 3% (bfloat16) to 12% (float32) of the kernel's time and is exact.
        tmask = (cols[:, None] < n_cols) & (rows[None, :] < n_rows)
        xt = tl.load(x_ptr + rows[None, :] * n_cols + cols[:, None], mask=tmask, other=0.0)
        tl.store(qt_ptr + cols[:, None] * n_rows + rows[None, :], _fp8_scaled(xt, scale, FP8_MAX, E5M2), mask=tmask)
    if (tl.program_id(0) == 0) & (tl.program_id(1) == 0):
        tl.store(inv_ptr, tl.math.div_rn(1.0, scale))


def quantize_fp8_tensorwise_triton(x: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn,
                                   amax: torch.Tensor | None = None, transpose: bool = False,
                                   config: triton.Config | None = None, seen_amax: torch.Tensor | None = None):
    """fp8.quantize_tensorwise's bits, (q, inv_scale), in an amax pass and one cast pass; with
    `transpose`, (q, q.t().contiguous(), inv_scale) from that same pass: an FP8 linear's backward
    reads its saved input and its gradient transposed, and _scaled_mm takes only K-major FP8
    operands on Hopper, so the transpose would otherwise be a second read and write of each.
    `amax` overrides x's own (a data-parallel group's amax). x: a 2D CUDA tensor of any float dtype.
    `config`, one of FP8_TENSORWISE_CONFIGS, replaces the autotuned tile (tests check every one).
    `seen_amax`, a float32 scalar tensor holding 0, receives max |x| from the cast pass itself: with
    `amax` from an earlier step (delayed scaling) the tensor is read once, and this is the next amax.
    """
    if x.ndim != 2 or not x.is_cuda:
        raise ValueError(f"expected a 2D CUDA tensor, got {tuple(x.shape)} on {x.device}; "
                         f"fp8.quantize_tensorwise takes any other")
    if dtype not in (torch.float8_e4m3fn, torch.float8_e5m2):
        raise ValueError(f"FP8 dtype is float8_e4m3fn or float8_e5m2, got {dtype}")
    x = x.contiguous()
    rows, cols = x.shape
    amax = absmax(x) if amax is None else amax.to(device=x.device, dtype=torch.float32).reshape(())
    q = torch.empty(rows, cols, dtype=dtype, device=x.device)
    qt = torch.empty(cols, rows, dtype=dtype, device=x.device) if transpose else q
    inv = torch.empty((), dtype=torch.float32, device=x.device)

    def grid(meta):
        return (triton.cdiv(rows, meta["BLOCK_M"]), triton.cdiv(cols, meta["BLOCK_N"]))

    if seen_amax is not None and (seen_amax.dtype != torch.float32 or seen_amax.numel() != 1):
        raise ValueError(f"seen_amax must be a float32 scalar tensor, got {seen_amax.dtype} {tuple(seen_amax.shape)}")
    args = (x, q, qt, amax, inv, (inv if seen_amax is None else seen_amax).view(torch.int32), rows, cols)
    consts = {"FP8_MAX": float(torch.finfo(dtype).max), "FLT_MAX": FLT_MAX, "E5M2": dtype == torch.float8_e5m2,
              "TRANSPOSE": transpose, "SEEN": seen_amax is not None}
    if config is None:
        _fp8_tensorwise_kernel[grid](*args, **consts)
    else:
        _fp8_tensorwise_kernel.fn[grid(config.kwargs)](*args, **consts, **config.kwargs, num_warps=config.num_warps)
    return (q, qt, inv) if transpose else (q, inv)


# A tile of bytes a program: 128 x 128 (16 KB) with 8 warps.
_TRANSPOSE_TILE = 128


@triton.jit
def _transpose_bytes_kernel(x_ptr, out_ptr, n_rows, n_cols, TILE: tl.constexpr):
    rows = (tl.program_id(0) * TILE + tl.arange(0, TILE)).to(tl.int64)
    cols = (tl.program_id(1) * TILE + tl.arange(0, TILE)).to(tl.int64)
    # Read in the output's orientation and stored along its rows, as the tensorwise kernel's transposed
    # copy is (tl.trans of a loaded tile misplaced bytes with Triton 3.6 on Hopper): Triton loads along
    # the input's rows and moves the tile through shared memory to store along the output's.
    mask = (cols[:, None] < n_cols) & (rows[None, :] < n_rows)
    tile = tl.load(x_ptr + rows[None, :] * n_cols + cols[:, None], mask=mask)
    tl.store(out_ptr + cols[:, None] * n_rows + rows[None, :], tile, mask=mask)


def transpose_fp8_triton(q: torch.Tensor) -> torch.Tensor:
    """q.t().contiguous() for a 2D CUDA tensor of one-byte elements (FP8 codes), bit for bit, in one pass
    that reads and writes each byte once. torch's copy of a transposed one-byte view runs its generic
    strided kernel: 0.4 ms for a 67 MB E4M3 weight on an H200 (2026-12-01), about 0.34 TB/s, where an
    FP8 linear whose weight arrives already cast (an FSDP2 all-gather in FP8) needs this copy for its
    data-gradient GEMM every step. Under Triton's interpreter (TRITON_INTERPRET=1) q may be a CPU tensor."""
    on_device = q.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
    if q.ndim != 2 or not on_device or q.element_size() != 1:
        raise ValueError(f"expected a 2D CUDA tensor of one-byte elements, got {tuple(q.shape)} {q.dtype} "
                         f"on {q.device}; torch's q.t().contiguous() takes any other")
    q = q.contiguous()
    rows, cols = q.shape
    out = torch.empty(cols, rows, dtype=q.dtype, device=q.device)
    grid = (triton.cdiv(rows, _TRANSPOSE_TILE), triton.cdiv(cols, _TRANSPOSE_TILE))
    _transpose_bytes_kernel[grid](q.view(torch.uint8), out.view(torch.uint8), rows, cols, TILE=_TRANSPOSE_TILE,
                                  num_warps=8)
    return out
