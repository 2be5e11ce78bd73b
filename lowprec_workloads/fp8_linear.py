"""FP8 linear layers whose activation quantization costs less than the FP8 GEMM saves.

Numerics are fp8.quantize_tensorwise's on both operands: E4M3 weights with one float32 scale per
tensor, the activation quantized at every call with one scale over the whole activation (amax,
FLT_MAX clamp, NaN rules and round-to-nearest-even as the reference; out = (xq . wq) * inv_x * inv_w).
What changes is how the activation's quantization runs on CUDA:

- one row (decode, M <= GEMV_MAX_ROWS): a GEMV quantizes the activation inside the kernel and streams the
  E4M3 weight once (half the bytes of BF16): one launch per linear instead of an eager quantizer (about ten
  kernels) plus a cuBLAS GEMM whose rows were padded to 16. On CUDA it is by default the CUDA-core kernel of
  fp8_gemv_cuda (kernels/fp8_gemv.cu): every block reads the row's magnitudes from L2 for the tensor's amax
  and writes the row's codes to shared memory, and its warps stream whole weight rows. The Triton GEMVs here
  (CUDA-core FMA or FP8 MMA tiles, whose programs each read the amax and round their slice) run where it
  cannot (K over its shared-memory limit) and under Triton's interpreter. Handed the activation's scale by the
  launch that wrote it (decode_fusions), a GEMV skips the amax pass.
  Weights that read one activation (q, k and v; gate and up) can be stacked into one GEMV, each row keeping
  its weight's scale (FP8Linear.concatenated): one launch over their bytes, as decode engines merge them.
- more rows: `torch._scaled_mm` on the rows as they are (cuBLAS needs K and N multiples of 16, not M),
  after a Triton quantizer: one program for a decode-sized activation (SMALL_QUANTIZE_MAX elements),
  else the two-pass one of formats.triton_quant (amax pass, cast pass) for a prefill.

On the CPU the eager reference runs (quantize_tensorwise, float32 product of dequantized operands).
On the GPU the kernels round with the hardware's E4M3 conversion (round to nearest even, as the engine's
Triton quantizers do: five instructions an element with the scale and clamp, which the GEMV repeats in
every program). Triton's interpreter (TRITON_INTERPRET=1) rounds some values across a binade wrongly,
turns NaN into 384 and truncates to bfloat16, so there the kernels round with integer and float32
operations instead (`HW=False`); the tests check that arithmetic, and everything around it (amax, scale,
indexing, masks, accumulation), against the reference bits on the CPU, and the hardware's on a GPU. (The
Triton GEMVs repeat those five instructions in every program; the CUDA-core one rounds the row once a block.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from pytest_lowprec.formats.fp8 import FLT_MAX, quantize_tensorwise, scaled_mm

# The amax and scale rules of the engine's Triton quantizers (the same bits as fp8._scale_from_amax).
from pytest_lowprec.formats.triton_quant import (
    _bf16_value,
    _fp8_scale,
    _magnitude_bits,
    quantize_fp8_tensorwise_triton,
)
from pytest_lowprec.roofline import Work

from .fp8_gemv_cuda import MAX_K as CUDA_MAX_K
from .fp8_gemv_cuda import CudaGemvTile, Fp8GemvKernels
from .interpreted import interpreting

GEMV_MAX_ROWS = 1
# Inputs an FP8 wgmma sums in its own accumulator before a float32 add. Triton's sm_90 default leaves it
# all of K, and the error grows with K: relative L2 against the exact product 1.3e-3 at K = 4096 and
# 2.9e-3 at 14336 unsplit (an H200, 2026-12-01). Promoted every 128 inputs (DeepSeek-V3's interval) it
# measured 1.3e-4 at every K, the default tiles 2.8-4.5% slower (where a program sums all of K, up to 12%);
# every 32 (each instruction) 4.6e-5. Even one instruction's sum is not float32's: the CUDA-core and
# mma.sync tiles give 5e-8 to 9e-7.
_PROMOTE_K = 128
# What runs on CUDA, for a workload's signature (a baseline recorded on another path is stale).
CUDA_PATH = ("cuda-core gemv (kernels/fp8_gemv.cu) quantizing its row once a block, float32 sums (1 row); "
             "one-launch or two-pass triton quantizer + _scaled_mm (more)")
# An activation up to this many elements (four decode rows of a 14336-wide FFN) is quantized by one
# program in one launch; a larger one by the two-pass quantizer, whose amax pass spreads over the chip.
SMALL_QUANTIZE_MAX = 65536
_X_BLOCK = 4096  # elements of the activation one program reads per step of its amax pass


@dataclass(frozen=True)
class GemvConfig:
    """One GEMV tile. `kernel` "fma": CUDA-core FMAs on a [block_n, block_k] weight tile, the next tile
    requested before the current one is used (about six SASS instructions a weight byte for sm_90 under
    Triton 3.9: conversion to float32, then an FMA). "dot": the weight tile as an FP8 MMA's left operand
    against the row padded to 16 columns, the loop software-pipelined over `num_stages` shared-memory
    stages (wgmma on Hopper from block_n 64: about two instructions a weight byte), `split_k` programs per
    output tile. `promote_k`: the inputs an FP8 wgmma sums in the tensor core's own accumulator before
    the sum is added to a float32 one (Triton's max_num_imprecise_acc, a multiple of 32 up to block_k).
    That accumulator keeps fewer bits than float32 (DeepSeek-V3 measured about 14 on Hopper and promotes
    every 128 inputs); 0 leaves it the whole of K, Triton's default on sm_90."""

    kernel: str
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 1
    split_k: int = 1
    promote_k: int = 0

    def __post_init__(self) -> None:
        if self.kernel not in ("fma", "dot"):
            raise ValueError(f"GEMV kernel is 'fma' or 'dot', got {self.kernel!r}")
        for name in ("block_n", "block_k", "num_warps", "split_k"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"GemvConfig.{name} must be a power of two, got {value}")
        if self.kernel == "dot" and (self.block_n < 16 or self.block_k < 32):
            raise ValueError(f"the dot GEMV needs block_n >= 16 and block_k >= 32 (MMA tiles), got "
                             f"{self.block_n} x {self.block_k}")
        if self.kernel == "fma" and self.split_k != 1:
            raise ValueError("only the dot GEMV splits K")
        if self.num_stages < 1:
            raise ValueError(f"GemvConfig.num_stages must be >= 1, got {self.num_stages}")
        if self.promote_k < 0 or (self.promote_k and (self.kernel != "dot" or self.promote_k % 32
                                                      or self.promote_k > self.block_k)):
            raise ValueError(f"promote_k is for the dot GEMV, a multiple of 32 up to block_k ({self.block_k}); "
                             f"got {self.promote_k} for kernel {self.kernel!r}")


# Measured tiles by weight shape (N, K) (benchmarks/fp8_linear_variants.py times the candidates on a GPU);
# other shapes take _default_gemv's.
GEMV_CONFIGS: dict[tuple[int, int], GemvConfig | CudaGemvTile] = {}
# The CUDA-core GEMV's tile for every shape it takes: two rows a warp, two 512-byte steps a chunk, eight warps a
# block. On an H200 (2026-12-02, `fp8_linear_variants.py OUT ceiling`, one float32 row, L2 flushed) it read
# the decode step's weights (4096x4096, 6144x4096, 14336x4096, 28672x4096, 4096x14336) in 12.5, 14.5, 23.9,
# 38.8, 25.5 us: 0.81-0.91 of a kernel that only reads the same bytes, the fastest tile at three shapes and
# within 6% of the fastest at the others; the promoted wgmma tiles took 14.4, 18.6, 28.0, 45.7, 29.6 us.
CUDA_TILE = CudaGemvTile(rows=2, unroll=2, warps=8, min_blocks=2)
# (N, K) -> the one-row tile (a Triton one, or the CUDA-core kernel's), None for _scaled_mm
GemvChooser = Callable[[int, int], "GemvConfig | CudaGemvTile | None"]
# A memory-bound GEMV needs every SM streaming: enough programs for about one and a half per SM of an H100
# or H200, and no more: a split's partial sums cost a store and a second read. On an H200 (2026-12-01,
# benchmarks/fp8_linear_variants.py) 14336x4096's 224 output tiles took 28.3 us unsplit and 29.4 us split
# in two; 4096x4096's 64 tiles 20.5, 15.8 and 13.9 us unsplit, split in two and in four.
_MIN_PROGRAMS = 192


def triton_gemv_config(n: int, k: int) -> GemvConfig:
    """The Triton GEMV's tile: wgmma tiles of 64 outputs, the tensor core's sums promoted to float32 every
    _PROMOTE_K inputs, K split until there are _MIN_PROGRAMS programs (keeping splits >= 1024)."""
    split = 1
    while triton.cdiv(n, 64) * split < _MIN_PROGRAMS and k // (2 * split) >= 1024:
        split *= 2
    return GemvConfig("dot", block_n=64, block_k=256, num_warps=4, num_stages=3, split_k=split, promote_k=_PROMOTE_K)


def _default_gemv(n: int, k: int) -> GemvConfig | CudaGemvTile:
    """The CUDA-core GEMV's tile where it takes K (a multiple of 16, the row's codes within its shared memory),
    else, and under Triton's interpreter, the Triton one's."""
    if interpreting() or k % 16 or k > CUDA_MAX_K:
        return triton_gemv_config(n, k)
    return CUDA_TILE


def gemv_config(n: int, k: int) -> GemvConfig | CudaGemvTile:
    """The GEMV tile for a weight of N outputs and K inputs."""
    return GEMV_CONFIGS.get((n, k)) or _default_gemv(n, k)


def _require_device(x: torch.Tensor, what: str) -> None:
    if not (x.is_cuda or interpreting()):
        raise ValueError(f"{what} runs on CUDA tensors (or under TRITON_INTERPRET=1), got one on {x.device}; "
                         "fp8.quantize_tensorwise is the eager path")


# -- E4M3 rounding in arithmetic the interpreter reproduces ----------------------------------------
@triton.jit
def _saturate(y):
    """Clamp to +-448, NaN kept (fp8.saturating_cast's clamp)."""
    return tl.minimum(tl.maximum(y, -448.0, propagate_nan=tl.PropagateNan.ALL), 448.0,
                      propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _e4m3_value(y):
    """y (float32 within +-448, or NaN) rounded to the nearest E4M3 value, ties to even, as float32.

    Normal values keep 3 of float32's 23 mantissa bits: adding 0x7FFFF plus the lowest kept bit to the
    magnitude's bits and truncating rounds to nearest even, a carry moving into the exponent. Below
    2^-6 E4M3 is subnormal, multiples of 2^-9: adding and subtracting 2^14 (= 2^-9 * 2^23) makes the
    float32 adder round there. The sign is y's (-0.0 stays -0.0), a NaN stays NaN."""
    a = tl.abs(y)
    bits = a.to(tl.int32, bitcast=True)
    normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576).to(tl.float32, bitcast=True)
    subnormal = (a + 16384.0) - 16384.0
    r = tl.where(a < 0.015625, subnormal, normal)
    r = (r.to(tl.int32, bitcast=True) | (y.to(tl.int32, bitcast=True) & -2147483648)).to(tl.float32, bitcast=True)
    return tl.where(y != y, y, r)


@triton.jit
def _e4m3_codes(x, scale, HW: tl.constexpr):
    """E4M3 codes (uint8) of x * scale, saturated at +-448, rounded to nearest even (fp8.saturating_cast)."""
    y = _saturate(x.to(tl.float32) * scale)
    if HW:
        return y.to(tl.float8e4nv, fp_downcast_rounding="rtne").to(tl.uint8, bitcast=True)
    return _e4m3_code(_e4m3_value(y))


@triton.jit
def _e4m3_values(x, scale, HW: tl.constexpr):
    """The float32 values of _e4m3_codes(x, scale)."""
    y = _saturate(x.to(tl.float32) * scale)
    if HW:
        return y.to(tl.float8e4nv, fp_downcast_rounding="rtne").to(tl.float32)
    return _e4m3_value(y)


@triton.jit
def _e4m3_code(r):
    """The E4M3 code of r, a float32 that is an E4M3 value or NaN: sign, 4 exponent bits (bias 7), 3 bits."""
    bits = r.to(tl.int32, bitcast=True)
    magnitude = bits & 0x7FFFFFFF
    normal = (((magnitude >> 23) - 120) << 3) | ((magnitude >> 20) & 7)
    subnormal = (tl.abs(r) * 512.0).to(tl.int32)  # m * 2^-9 -> m
    code = tl.where(magnitude >= 0x3C800000, normal, subnormal)  # 0x3C800000: 2^-6, the smallest normal
    code = tl.where(magnitude > 0x7F800000, 0x7F, code)
    return (code | ((bits >> 24) & 0x80)).to(tl.uint8)


@triton.jit
def _activation_scale(x_ptr, numel, X_BLOCK: tl.constexpr, X_STEPS: tl.constexpr, FLT_MAX: tl.constexpr):
    """fp8._scale_from_amax of max |x| over x's `numel` (<= X_BLOCK * X_STEPS) elements, NaN above Inf as
    torch.amax sees it. Unrolled: every step's loads are in flight before the first maximum."""
    bits = tl.zeros([X_BLOCK], dtype=tl.int32)
    for step in tl.static_range(X_STEPS):
        offs = step * X_BLOCK + tl.arange(0, X_BLOCK)
        bits = tl.maximum(bits, _magnitude_bits(tl.load(x_ptr + offs, mask=offs < numel, other=0.0)))
    return _fp8_scale(tl.max(bits, axis=0).to(tl.float32, bitcast=True), 448.0, FLT_MAX)


@triton.jit
def _weight_inv(w_inv_ptr, n, N, ROW_SCALES: tl.constexpr):
    """The weight's inverse scale for outputs n: one per output row (a concatenated weight), or the tensor's one
    read by every lane (Triton 3.6 will not compile a function returning a scalar on one path, a vector on another)."""
    if ROW_SCALES:
        inv = tl.load(w_inv_ptr + n, mask=n < N, other=0.0)
    else:
        inv = tl.load(w_inv_ptr + tl.zeros_like(n))
    return inv


@triton.jit
def _x_scale(x_ptr, x_scale_ptr, numel, X_BLOCK: tl.constexpr, X_STEPS: tl.constexpr, FLT_MAX: tl.constexpr,
             SCALE_GIVEN: tl.constexpr):
    """The activation's E4M3 scale: given (its producer took the amax, decode_fusions), or its amax pass."""
    if SCALE_GIVEN:
        return tl.load(x_scale_ptr)
    return _activation_scale(x_ptr, numel, X_BLOCK, X_STEPS, FLT_MAX)


# -- kernels ------------------------------------------------------------------------------------
@triton.jit
def _quantize_small_kernel(x_ptr, out_ptr, inv_ptr, numel, X_BLOCK: tl.constexpr, X_STEPS: tl.constexpr,
                           FLT_MAX: tl.constexpr, DEQUANTIZE: tl.constexpr, BF16_OUT: tl.constexpr,
                           HW: tl.constexpr):
    """One program: the amax pass, then codes (or, with DEQUANTIZE, codes * inv_scale in out's dtype)."""
    scale = _activation_scale(x_ptr, numel, X_BLOCK, X_STEPS, FLT_MAX)
    inv = tl.math.div_rn(1.0, scale)
    for start in range(0, numel, X_BLOCK):
        offs = start + tl.arange(0, X_BLOCK)
        mask = offs < numel
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        if DEQUANTIZE:
            value = _e4m3_values(x, scale, HW) * inv
            if BF16_OUT and not HW:
                value = _bf16_value(value)
            tl.store(out_ptr + offs, value.to(out_ptr.dtype.element_ty), mask=mask)
        else:
            tl.store(out_ptr + offs, _e4m3_codes(x, scale, HW), mask=mask)
    tl.store(inv_ptr, inv)


@triton.jit
def _gemv_fma_kernel(x_ptr, x_scale_ptr, w_ptr, w_inv_ptr, out_ptr, N, K, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, X_BLOCK: tl.constexpr, X_STEPS: tl.constexpr, FLT_MAX: tl.constexpr,
                     HW: tl.constexpr, SCALE_GIVEN: tl.constexpr, ROW_SCALES: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k = tl.arange(0, BLOCK_K)
    n_ok = (n < N)[:, None]
    w_ptrs = w_ptr + n.to(tl.int64)[:, None] * K + k[None, :]
    # The first weight tile is requested before the amax pass, whose L2 reads then overlap its DRAM latency;
    # in the loop the next tile is requested before the current one is multiplied: two tiles in flight.
    w_next = tl.load(w_ptrs, mask=n_ok & (k < K)[None, :], other=0.0, eviction_policy="evict_first")
    scale = _x_scale(x_ptr, x_scale_ptr, K, X_BLOCK, X_STEPS, FLT_MAX, SCALE_GIVEN)
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        w = w_next
        ahead = k0 + BLOCK_K + k
        w_next = tl.load(w_ptrs + (k0 + BLOCK_K), mask=n_ok & (ahead < K)[None, :], other=0.0,
                         eviction_policy="evict_first")
        here = k0 + k
        xq = _e4m3_values(tl.load(x_ptr + here, mask=here < K, other=0.0), scale, HW)
        acc += w.to(tl.float32) * xq[None, :]
    out = tl.sum(acc, axis=1) * (tl.math.div_rn(1.0, scale) * _weight_inv(w_inv_ptr, n, N, ROW_SCALES))
    tl.store(out_ptr + n, out, mask=n < N)


@triton.jit
def _gemv_dot_kernel(x_ptr, x_scale_ptr, w_ptr, w_inv_ptr, out_ptr, part_ptr, count_ptr, N, K, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr, PROMOTE_K: tl.constexpr, X_BLOCK: tl.constexpr,
                     X_STEPS: tl.constexpr, FLT_MAX: tl.constexpr, HW: tl.constexpr, SCALE_GIVEN: tl.constexpr,
                     ROW_SCALES: tl.constexpr):
    """acc[BLOCK_N, 16] = W tile [BLOCK_N, BLOCK_K] . the row as a 16-column operand (columns 1..15 zero).

    W is the left operand: with BLOCK_N >= 64 Hopper runs it as wgmma with both FP8 operands read from
    shared memory as they are (no conversion instructions per weight byte), and the padding the MMA needs
    falls on the small operand. SPLIT_K programs share an output tile when BLOCK_N leaves too few tiles for
    the SMs: each stores its partial sum, and the last to finish (an acq_rel counter) adds them in split
    order (deterministic), writes the output and resets the counter for the next call."""
    pid_n = tl.program_id(0)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k = tl.arange(0, BLOCK_K)
    per_split = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
    k_start = tl.program_id(1) * per_split
    k_stop = tl.minimum(k_start + per_split, K)
    scale = _x_scale(x_ptr, x_scale_ptr, K, X_BLOCK, X_STEPS, FLT_MAX, SCALE_GIVEN)
    first_col = (tl.arange(0, 16) == 0)[None, :]
    acc = tl.zeros([BLOCK_N, 16], dtype=tl.float32)
    for k0 in range(k_start, k_stop, BLOCK_K):
        here = k0 + k
        w = tl.load(w_ptr + n.to(tl.int64)[:, None] * K + here[None, :],
                    mask=(n < N)[:, None] & (here < k_stop)[None, :], other=0.0, eviction_policy="evict_first")
        x = tl.load(x_ptr + here, mask=here < k_stop, other=0.0)
        if HW:  # [BLOCK_K, 16] codes: K-major, as an FP8 MMA's right operand must be
            codes = tl.where(first_col, _e4m3_codes(x, scale, HW)[:, None], tl.zeros([BLOCK_K, 16], dtype=tl.uint8))
            acc = tl.dot(w, codes.to(tl.float8e4nv, bitcast=True), acc, max_num_imprecise_acc=PROMOTE_K)
        else:  # the interpreter multiplies FP8 tiles by their raw bits: the same values in float32
            b = tl.where(first_col, _e4m3_values(x, scale, HW)[:, None], 0.0)
            acc = tl.dot(w.to(tl.float32), b, acc, input_precision="ieee")
    partial = tl.sum(acc, axis=1)  # columns 1..15 hold zeros
    scales = tl.math.div_rn(1.0, scale) * _weight_inv(w_inv_ptr, n, N, ROW_SCALES)
    if SPLIT_K == 1:
        tl.store(out_ptr + n, partial * scales, mask=n < N)
    else:
        tl.store(part_ptr + tl.program_id(1) * N + n, partial, mask=n < N)
        # Triton puts a CTA barrier before the atomic, and one thread's gpu-scope release then covers
        # every thread's partial store; the acquire orders the reads below after the other splits' stores.
        arrived = tl.atomic_add(count_ptr + pid_n, 1, sem="acq_rel")
        if arrived == SPLIT_K - 1:
            total = tl.zeros([BLOCK_N], dtype=tl.float32)
            for split in tl.static_range(SPLIT_K):
                total += tl.load(part_ptr + split * N + n, mask=n < N, other=0.0, cache_modifier=".cg")
            tl.store(out_ptr + n, total * scales, mask=n < N)
            tl.atomic_xchg(count_ptr + pid_n, 0)


# -- launchers ----------------------------------------------------------------------------------
def _amax_pass(numel: int) -> dict:
    """X_BLOCK and X_STEPS of _activation_scale for `numel` elements (a constexpr: one compile per width)."""
    block = min(triton.next_power_of_2(max(numel, 16)), _X_BLOCK)
    return {"X_BLOCK": block, "X_STEPS": triton.cdiv(numel, block)}


def quantize_small(x: torch.Tensor, dequantize_to: torch.dtype | None = None):
    """fp8.quantize_tensorwise(x)'s bits in one launch of one program: (q, inv_scale); with `dequantize_to`,
    q * inv_scale in that dtype instead of q (the round trip an FP8 operand of an emulated matmul takes)."""
    _require_device(x, "quantize_small")
    if dequantize_to not in (None, torch.float32, torch.bfloat16):
        raise ValueError(f"quantize_small dequantizes to float32 or bfloat16, not {dequantize_to}")
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=dequantize_to or torch.uint8, device=x.device)
    inv = torch.empty((), dtype=torch.float32, device=x.device)
    _quantize_small_kernel[(1,)](x, out, inv, x.numel(), **_amax_pass(x.numel()), FLT_MAX=FLT_MAX,
                                 DEQUANTIZE=dequantize_to is not None, BF16_OUT=dequantize_to == torch.bfloat16,
                                 HW=not interpreting(), num_warps=4)
    return (out if dequantize_to is not None else out.view(torch.float8_e4m3fn)), inv


def quantizer(numel: int, on_cuda: bool) -> str:
    """Which quantizer quantize_activation runs for an activation of `numel` elements."""
    if not on_cuda:
        return "eager"
    return "triton-one-program" if numel <= SMALL_QUANTIZE_MAX else "triton-two-pass"


def quantize_activation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, inv_scale) with fp8.quantize_tensorwise's bits: eager on the CPU; on CUDA one program for a small
    activation, else the two-pass Triton quantizer (2D view over the last dimension)."""
    which = quantizer(x.numel(), x.is_cuda)
    if which == "eager":
        return quantize_tensorwise(x)
    if which == "triton-one-program":
        return quantize_small(x)
    q, inv = quantize_fp8_tensorwise_triton(x.reshape(-1, x.shape[-1]))
    return q.view(x.shape), inv


def square_operands(n: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The FP8 GEMM suite's operands A and B, n x n, N(0, 1) in bfloat16, drawn from a generator seeded with n:
    the benchmarks that time its workloads outside the gate draw the same ones."""
    gen = torch.Generator(device=device).manual_seed(n)
    a = torch.randn(n, n, generator=gen, device=device).to(torch.bfloat16)
    b = torch.randn(n, n, generator=gen, device=device).to(torch.bfloat16)
    return a, b


def square_fp8_sides(a: torch.Tensor, b: torch.Tensor) -> tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]:
    """The FP8 GEMM suite's two FP8 sides of A @ B, tensorwise E4M3: (gemm, linear). `gemm` runs `_scaled_mm` on
    operands quantized once; `linear` quantizes A on every call, as an FP8 linear layer must its activation."""
    a8, a_inv = quantize_tensorwise(a)
    b8, b_inv = quantize_tensorwise(b)
    b8 = b8.t().contiguous().t()  # _scaled_mm takes B column-major

    def gemm():
        return scaled_mm(a8, a_inv, b8, b_inv)

    def linear():
        q, inv = quantize_activation(a)
        return scaled_mm(q, inv, b8, b_inv)

    return gemm, linear


def fp8_roundtrip(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x through E4M3 with a tensorwise scale and back, in `dtype`: what an FP8 operand holds."""
    if x.is_cuda and x.numel() <= SMALL_QUANTIZE_MAX:
        return quantize_small(x, dequantize_to=dtype)[0]
    q, inv = quantize_activation(x)
    return (q.float() * inv).to(dtype)


def quantize_work(numel: int, element_size: int, *, aten: bool = True) -> tuple[Work, ...]:
    """What quantize_activation launches on CUDA for an activation of `numel` elements. The two-pass
    quantizer zeroes its amax with torch.zeros, the one ATen kernel here: `aten=False` leaves it to a
    caller that reads the call's ATen operators itself (traffic.eager_work)."""
    codes = numel * element_size + numel + 4
    if numel <= SMALL_QUANTIZE_MAX:
        return (Work(nbytes=codes, kernels=1),)
    fill = (Work(nbytes=4, kernels=1),) if aten else ()
    return (*fill, Work(nbytes=numel * element_size, kernels=1), Work(nbytes=codes, kernels=1))


@dataclass(frozen=True)
class SplitWorkspace:
    """What split-K programs share: float32 partial sums [split_k, N] and one arrival counter per output
    tile, zero between calls (the last program resets it). One call at a time per workspace."""

    partials: torch.Tensor
    counters: torch.Tensor

    @classmethod
    def for_layer(cls, n: int, config: GemvConfig, device: torch.device) -> SplitWorkspace:
        return cls(torch.empty(config.split_k, n, dtype=torch.float32, device=device),
                   torch.zeros(triton.cdiv(n, config.block_n), dtype=torch.int32, device=device))


def gemv(x: torch.Tensor, weight: torch.Tensor, inv_scale: torch.Tensor, config: GemvConfig | CudaGemvTile,
         out: torch.Tensor | None = None, workspace: SplitWorkspace | None = None,
         x_scale: torch.Tensor | None = None, cuda: Fp8GemvKernels | None = None,
         programmatic: bool = False) -> torch.Tensor:
    """float32 [1, N] = E4M3(x) @ weight.T * scales, x [1, K] float32, bfloat16 or float16, weight E4M3 [N, K] with
    `inv_scale` 0-d float32, or [N] (one per output row: weights of one tensorwise scale each, concatenated,
    FP8Linear.concatenated). A config with split_k > 1 needs a workspace (SplitWorkspace.for_layer), owned by
    the caller. `x_scale` (0-d float32): x's E4M3 scale, fp8._scale_from_amax of its amax, where its producer took it
    (decode_fusions); every program then skips its amax pass over x. A scale other than x's own gives
    another quantization of x: the caller vouches for it. A CudaGemvTile runs kernels/fp8_gemv.cu through `cuda`
    (the library loaded for the weight's device); `programmatic` launches it as a programmatic dependent of the
    kernel before it (Fp8GemvKernels.gemv: only where that kernel does not write the weight). The Triton tiles
    launch as usual."""
    n, k = weight.shape
    if x.ndim != 2 or x.shape[0] != 1 or x.shape[1] != k:
        raise ValueError(f"the FP8 GEMV takes one row x [1, {k}], got {tuple(x.shape)}")
    if weight.dtype != torch.float8_e4m3fn or not weight.is_contiguous():
        raise ValueError(f"weight must be contiguous E4M3 [N, K], got {weight.dtype} with strides {weight.stride()}")
    if config.split_k > 1 and workspace is None:
        raise ValueError("a split-K GEMV needs its SplitWorkspace")
    if inv_scale.dtype != torch.float32 or inv_scale.shape not in ((), (n,)) or inv_scale.device != weight.device:
        raise ValueError(f"inv_scale is float32, 0-d or one per output row ({n}), on the weight's device "
                         f"{weight.device}; got {inv_scale.dtype} {tuple(inv_scale.shape)} on {inv_scale.device}")
    if x_scale is not None and (x_scale.numel() != 1 or x_scale.dtype != torch.float32):
        raise ValueError(f"x_scale is one float32 scale, got {x_scale.dtype} of {x_scale.numel()} elements")
    if x_scale is not None and x_scale.device != x.device:
        raise ValueError(f"x_scale must be on x's device {x.device}, got {x_scale.device}")
    _require_device(x, "the FP8 GEMV")
    x = x.contiguous()
    out = torch.empty(1, n, dtype=torch.float32, device=x.device) if out is None else out
    if isinstance(config, CudaGemvTile):
        if not x.is_cuda:
            raise ValueError("the CUDA-core FP8 GEMV tile runs on a GPU; under TRITON_INTERPRET=1 give a Triton "
                             "GemvConfig (fp8_linear.triton_gemv_config)")
        return (cuda or Fp8GemvKernels(x.device)).gemv(x, weight, inv_scale, config, out, x_scale, programmatic)
    options = dict(BLOCK_N=config.block_n, BLOCK_K=config.block_k, **_amax_pass(k), FLT_MAX=FLT_MAX,
                   HW=not interpreting(), SCALE_GIVEN=x_scale is not None, ROW_SCALES=inv_scale.ndim == 1,
                   num_warps=config.num_warps,
                   num_stages=config.num_stages)
    tiles = triton.cdiv(n, config.block_n)
    given = x_scale if x_scale is not None else inv_scale  # not read without SCALE_GIVEN
    if config.kernel == "fma":
        _gemv_fma_kernel[(tiles,)](x, given, weight, inv_scale, out, n, k, **options)
    else:
        shared = (workspace.partials, workspace.counters) if workspace is not None else (out, out)
        _gemv_dot_kernel[(tiles, config.split_k)](x, given, weight, inv_scale, out, *shared, n, k,
                                                  SPLIT_K=config.split_k, PROMOTE_K=config.promote_k or None, **options)
    return out


@dataclass(frozen=True)
class FP8Linear:
    """A linear layer's weight in E4M3 with a tensorwise scale, and its forward for any number of rows; or
    several such weights concatenated along N (q, k and v; gate and up), each keeping its own scale, whose
    one-row GEMV is one launch."""

    weight: torch.Tensor  # E4M3 [N, K] row-major: weight.t() is the column-major B _scaled_mm takes
    inv_scale: torch.Tensor  # float32: 0-d, or [N] for concatenated weights (each row its own weight's scale)
    gemv: GemvConfig | CudaGemvTile | None  # the one-row kernel's tile; None sends every row count to _scaled_mm
    workspace: SplitWorkspace | None = None  # the GEMV's, when it splits K
    cuda: Fp8GemvKernels | None = None  # the CUDA-core GEMV's library, when its tile is chosen on a GPU

    @classmethod
    def build(cls, w: torch.Tensor, gemv: GemvChooser = gemv_config) -> FP8Linear:
        """`w` [N, K] quantized with fp8.quantize_tensorwise; `gemv(N, K)` picks the one-row kernel's tile
        (a chooser that returns None sends one row through _scaled_mm too)."""
        q, inv = quantize_tensorwise(w)
        n, k = q.shape
        if w.is_cuda and (n % 16 or k % 16):
            raise ValueError(f"an FP8 linear on CUDA needs N and K multiples of 16 (cuBLAS's FP8 GEMM does), "
                             f"got [{n}, {k}]")
        return cls._with_gemv(q.contiguous(), inv, gemv)

    @classmethod
    def _with_gemv(cls, q: torch.Tensor, inv: torch.Tensor, gemv: GemvChooser) -> FP8Linear:
        n, k = q.shape
        config = gemv(n, k)
        split = config is not None and config.split_k > 1 and (q.is_cuda or interpreting())
        cuda = Fp8GemvKernels(q.device) if isinstance(config, CudaGemvTile) and q.is_cuda else None
        return cls(q, inv, config, SplitWorkspace.for_layer(n, config, q.device) if split else None, cuda)

    @classmethod
    def concatenated(cls, parts: list[FP8Linear], gemv: GemvChooser = gemv_config) -> FP8Linear:
        """The parts' weights stacked along N (inputs alike), each row keeping its part's inverse scale: one
        GEMV gives every part's outputs, side by side, with the bits each part's own GEMV gives under the same
        tile (the same quantized weights and products; gemv(N, K) picks the tile for the stacked shape, whose
        split of K may differ, and with it the order of the float32 sums). One row only: torch._scaled_mm takes
        one weight scale, so more rows call the parts."""
        if len({p.weight.shape[1] for p in parts}) != 1 or any(p.inv_scale.ndim for p in parts):
            raise ValueError("FP8Linear.concatenated stacks tensorwise-scaled weights of one input width, got "
                             f"{[tuple(p.weight.shape) for p in parts]} with scales of shapes "
                             f"{[tuple(p.inv_scale.shape) for p in parts]}")
        weight = torch.cat([p.weight for p in parts])
        inv = torch.cat([p.inv_scale.expand(p.weight.shape[0]) for p in parts])
        return cls._with_gemv(weight, inv, gemv)

    @property
    def concatenated_rows(self) -> bool:
        return self.inv_scale.ndim == 1

    @property
    def nbytes(self) -> int:
        """What a GEMV reads of it: the codes and the scales (4 bytes, or 4 a row when concatenated)."""
        return self.weight.numel() + self.inv_scale.numel() * 4

    def uses_gemv(self, rows: int) -> bool:
        return self.gemv is not None and rows <= GEMV_MAX_ROWS

    def __call__(self, x: torch.Tensor, out_dtype: torch.dtype = torch.float32,
                 x_scale: torch.Tensor | None = None, programmatic: bool = False) -> torch.Tensor:
        """x [rows, K] -> [rows, N] in `out_dtype`. `x_scale`: x's E4M3 scale where its producer took it
        (gemv's x_scale); the one-row GEMV then skips its amax pass, the other paths take their own.
        `programmatic`: the one-row GEMV's (gemv's), for a caller whose kernel before it never writes the weight."""
        weight_scales = self.inv_scale[:, None] if self.concatenated_rows else self.inv_scale
        if not x.is_cuda:
            q, inv = quantize_tensorwise(x)
            return ((q.float() * inv) @ (self.weight.float() * weight_scales).t()).to(out_dtype)
        if self.uses_gemv(x.shape[0]):
            return gemv(x, self.weight, self.inv_scale, self.gemv, workspace=self.workspace,
                        x_scale=x_scale, cuda=self.cuda, programmatic=programmatic).to(out_dtype)
        if self.concatenated_rows:
            raise ValueError(f"a concatenated FP8 linear runs the one-row GEMV; {x.shape[0]} rows take its parts' "
                             "_scaled_mm, one weight scale each")
        q, inv = quantize_activation(x)
        return scaled_mm(q, inv, self.weight.t(), self.inv_scale, out_dtype=out_dtype)

    def kernel_work(self, rows: int, x_element_size: int) -> tuple[Work, ...]:
        """The kernels (Triton's, or the CUDA-core GEMV) one CUDA call launches, which traffic.eager_work cannot
        see (it reads the many-row path's _scaled_mm, and the two-pass quantizer's fill, off ATen itself)."""
        n, k = self.weight.shape
        if self.uses_gemv(rows):
            # The weight once from DRAM, the row once (its rereads by every program hit L2), float32 out; split-K
            # partials are written and read back once (from L2 mostly: counted as DRAM, an upper bound).
            partials = 2 * self.gemv.split_k * n * 4 if self.gemv.split_k > 1 else 0
            return (Work(nbytes=self.nbytes + rows * k * x_element_size + rows * n * 4 + partials, kernels=1),)
        return quantize_work(rows * k, x_element_size, aten=False)
