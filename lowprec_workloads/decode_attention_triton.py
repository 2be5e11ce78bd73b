"""Split-K decode attention in Triton over a BF16, FP8 or FP8-K/NVFP4-V cache, dequantizing in the kernel.

One program per (sequence-head, split) walks BLOCK_N tokens at a time with an online
softmax (flash-decoding), or, under the balanced schedule (`Tile.schedule`), one program per equal run of
all the sequence-heads' tiles; the last partial of a sequence-head to finish merges the partials
(`Tile.combine` "fused": an arrival counter per sequence-head in `DecodeWorkspace`), or a second kernel
does ("kernel"). The cache is read once in its stored format. q.k and p.v each run on CUDA cores or
tensor cores (`Tile.qk`, `Tile.pv`; which one a GPU runs is fixed per GPU key in TILES):

- "fma": CUDA cores, float32. FP8 elements are widened in registers, the per-head K scale is
  folded into q and the V scale into the final sum; p.v accumulates in [BLOCK_N, head_dim]
  registers, reduced once at the end.
- "mma": tensor cores with q (for q.k) and p (for p.v) as a 16-row operand: scores are
  [16, BLOCK_N] with every row equal.
- "mma_t": the same products transposed, tokens (and head_dim) as the MMA's M dimension, so that
  Hopper can issue wgmma (M >= 64): scores [BLOCK_N, 16].
- "mma_pairs" (p.v only): each pair of adjacent V elements on the MMA's contraction axis, so that
  a packed NVFP4 byte, an FP8 pair or a BF16 pair becomes one 32-bit MMA register as it lies in
  memory, with no shuffle through shared memory (`_pv_pairs`).

Every tensor-core operand is exact: FP8 K widens to float16 exactly, q (bfloat16) goes to float16
after a power-of-two scale, p (which needs more than 16 bits) is split into float16 or bfloat16
pieces on separate rows of the 16-row operand, and NVFP4 values times their E4M3 block scales are
exact in float16 (or the rows carry the block scale: "mma", "mma_t"). Tensor cores truncate when
they add in float32, so each tile's product joins the running sum in a round-to-nearest add
(`_accumulate`). Until 2026-12-02 it did not: Triton folds `acc + tl.dot(a, b)` into the MMA's own
accumulator, so the tensor core carried every split's sum (an H200 measured the drift: relative L2
against float64 from 1.4e-5 to 4.4e-5 over runs of 6K to 32K tokens, past the suite's 1e-5 bound, where
the 2K-token splits shipped stayed under it).
NVFP4 codes decode in PTX on a GPU: "packed" places the three magnitude bits of two codes under
the float16 exponent at once (2**-14 of their E2M1 value, applied at the end; on the pair path the
same bits, times the block scale in the same asm, SCALED_PAIRS_PTX); "lut" (pair path)
looks each nibble's E4M3 code up in an 8-byte table with prmt and widens pairs with cvt.e4m3x2.
The first "lut" read each byte twice from a broadcast tensor and gave wrong attention on an H200 in
every variant (2026-12-01, relative L2 1.2 against float64) while its PTX passed the CPU emulation:
Triton (3.6 and 3.9) moved the pure asm before the broadcast (the compiled TTGIR shows it), so the
asm saw eight different bytes. It now decodes one byte per element into two outputs, correct on an
H200 and slower there than "packed" (0.494 against 0.460 ms at the then shipped FP8-K NVFP4-V tile;
0.483 against 0.417 ms, each at its fastest, once "packed" took the block scale in its asm), so
no TILES entry names it (tested); the sweep keeps it for other GPUs.
Triton's interpreter runs no PTX: it takes the same bits in Triton integer ops ("bitwise"), and
multiplies bfloat16 tiles wrongly (it sees their raw bits), so there tensor-core operands go to the
dot in float32 (the same values). CUDA and Triton only.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from pytest_lowprec.hardware import gpu_key_from_name

from .decode_attention import Cache
from .interpreted import interpreting, mend_interpreter_scalars, run_interpreted

V_FORMATS = {"bf16": 0, "fp8": 1, "nvfp4": 2}
E2M1_DECODES = {"bitwise": 0, "packed": 1, "lut": 2}
PRODUCTS = {"fma": 0, "mma": 1, "mma_t": 2, "mma_pairs": 3}
QK_PRODUCTS = ("fma", "mma", "mma_t")
COMBINES = ("fused", "kernel")
ORDERS = ("heads", "splits")
SCHEDULES = ("splits", "balanced")
CARRIES = ("add", "mma")
LOADS = ("pointers", "tma")
# Tile.evict: the L2 eviction priority of the cache's pointer loads (Triton 3.9 makes a createpolicy.fractional
# L2::evict_first / evict_last policy and hands it to each cp.async as its L2::cache_hint; Triton 3.6, the GPU
# machines', drops it from the pipelined loads: launch() refuses such a tile, which would run the plain kernel).
EVICTS = {"normal": "", "first": "evict_first", "last": "evict_last"}
_MAX_BLOCK_N = 128
_MIN_SPLIT_TOKENS = 256


@dataclass(frozen=True)
class Tile:
    """How the partial kernel runs: q.k on CUDA cores or tensor cores (QK_PRODUCTS), p.v likewise
    (PRODUCTS), BLOCK_N tokens a step, `warps` warps, `stages` tiles of loads in flight (tl.range's
    software pipelining, cp.async), about `per_sm` programs per SM (the split count, a power of
    two), and the E2M1 decode of NVFP4 values (E2M1_DECODES; "lut" only on the pair path). `combine`
    (COMBINES) says who merges the splits: "fused", the last program of each sequence-head to finish,
    in the same launch, or "kernel", a second launch. `order` (ORDERS) is the launch order: "heads", the
    sequence-head varies fastest (every head's first split, then every head's second), or "splits",
    a sequence-head's splits launch next to each other, so that the programs running at once read
    neighbouring regions of the cache (as many programs run at once either way). `taper` cuts the last
    `taper` of each sequence-head's splits in two (their programs launch last in "heads" order), so that
    the programs left running when the GPU's last wave drains are shorter; a half is half a split rounded
    up to whole 128-token tiles, and where that is not shorter than a split there is no taper. `loads`
    (LOADS) is how the cache's tiles come in: "pointers", each thread's cp.async (or load) of its own 16
    bytes; "tma", one tensor-memory-access copy a tile (Hopper's TMA, through Triton's tensor descriptors),
    for K and for BF16 or FP8 V (NVFP4 V keeps its pointer loads). `evict` (EVICTS) is the L2 eviction
    priority the cache's pointer loads ask for: every byte is read once, so "first" could free L2 for the
    partial outputs the merge reads back and let the next tiles' lines in sooner. Not measured on an H200:
    the GPU machines' Triton (3.6) compiles it away (EVICTS), and no tile ships it. `schedule` (SCHEDULES):
    "splits", a program per (sequence-head, split) as above; "balanced", `per_sm` programs per SM in all
    (not rounded), each reading an equal run of the BLOCK_N-token tiles of all the sequence-heads laid end to
    end, crossing from one sequence-head into the next where its run does: the GPU's last wave is as long as
    every other (with per_sm at most what fits on an SM there is one wave), at the cost of up to one more
    partial per program to merge; a balanced tile whose runs would be shorter than `min_run` tokens launches
    in splits instead (default_schedule; unless the launch is told its program count). `carry` (CARRIES) says
    how a tensor-core p.v joins the running sum: "add", each tile's product in a round-to-nearest float32 add;
    "mma", the MMA's own accumulator (truncating adds, a drift that grows with the tiles a program sums; fewer
    instructions)."""

    qk: str = "fma"
    pv: str = "fma"
    block_n: int = 64
    warps: int = 4
    stages: int = 2
    per_sm: int = 4
    e2m1: str = "packed"
    combine: str = "fused"
    order: str = "heads"
    taper: int = 0
    loads: str = "pointers"
    evict: str = "normal"
    schedule: str = "splits"
    carry: str = "add"
    min_run: int = 0

    def __post_init__(self) -> None:
        if self.qk not in QK_PRODUCTS or self.pv not in PRODUCTS:
            raise ValueError(f"qk takes {', '.join(QK_PRODUCTS)} and pv {', '.join(PRODUCTS)}; "
                             f"got qk={self.qk!r}, pv={self.pv!r}")
        if self.block_n < 16 or self.block_n & (self.block_n - 1) or _MAX_BLOCK_N % self.block_n:
            raise ValueError(f"block_n must be a power of two from 16 to {_MAX_BLOCK_N}, got {self.block_n}")
        if self.warps not in (1, 2, 4, 8, 16) or self.stages < 1 or self.per_sm < 1:
            raise ValueError(f"warps must be 1, 2, 4, 8 or 16 and stages, per_sm >= 1; got {self}")
        if self.e2m1 not in E2M1_DECODES or (self.e2m1 == "lut" and self.pv != "mma_pairs"):
            raise ValueError(f"e2m1 takes {', '.join(E2M1_DECODES)} ('lut' with pv='mma_pairs'), got {self.e2m1!r}")
        for name, choices in (("combine", COMBINES), ("order", ORDERS), ("loads", LOADS), ("evict", EVICTS),
                              ("carry", CARRIES), ("schedule", SCHEDULES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} takes {', '.join(choices)}, got {getattr(self, name)!r}")
        if self.taper < 0:
            raise ValueError(f"taper must be >= 0, got {self.taper}")
        if self.min_run < 0:
            raise ValueError(f"min_run must be >= 0, got {self.min_run}")
        if self.min_run and self.schedule != "balanced":
            raise ValueError("min_run is the balanced schedule's shortest run; a tile in splits takes none")
        if self.schedule == "balanced" and (self.order != "heads" or self.taper):
            raise ValueError("the balanced schedule lays every sequence-head's tiles end to end and cuts them into "
                             "equal runs: it takes no launch order or taper (order='heads', taper=0)")
        if self.evict != "normal" and self.loads == "tma":
            raise ValueError("evict hints the pointer loads; TMA loads take none: choose loads='pointers' or "
                             "evict='normal'")

    @property
    def name(self) -> str:
        combine = "" if self.combine == "fused" else f" combine={self.combine}"
        order = "" if self.order == "heads" else f" order={self.order}"
        taper = f" taper={self.taper}" if self.taper else ""
        loads = "" if self.loads == "pointers" else f" loads={self.loads}"
        evict = "" if self.evict == "normal" else f" evict={self.evict}"
        schedule = "" if self.schedule == "splits" else f" schedule={self.schedule}"
        carry = "" if self.carry == "add" else f" carry={self.carry}"
        min_run = f" min_run={self.min_run}" if self.min_run else ""
        return (f"{self.qk}/{self.pv} {self.block_n}x{self.warps}x{self.stages} {self.e2m1} per_sm={self.per_sm}"
                f"{combine}{order}{taper}{loads}{evict}{schedule}{carry}{min_run}")


# The partial kernel's Tile per GPU key and (K, V) format. Fixed, never autotuned: a gate needs the
# same kernel in every process. The H100's are the fastest of a sweep there (2026-11-22,
# docs/measurements/kv-cache-h100-2026-11-22.md), all on CUDA cores. The H200's are the fastest
# correct variants of benchmarks/decode_attention_variants.py on an H200 (2026-12-01; 8x32 heads, 32K
# tokens: BF16 0.939 ms, FP8 0.496 ms, FP8-K NVFP4-V 0.460 ms, against 0.972 / 0.542 / 0.616 ms with the
# H100's tiles). FP8's is, of the fastest three, the fastest once another test's caches have come and
# gone (benchmarks/decode_attention_tile_probe.py: 0.500-0.501 ms, where the 2-stage tile first shipped
# took 0.515-0.516 ms; 0.495-0.497 ms both on a fresh cache). It too read slower in full gate runs (0.57-0.58
# ms). FP8-K NVFP4-V's is the sweep's fastest once the scores became a vector and the decode one multiply
# (d65d9d4, another H200: 0.417 ms against 0.423-0.425 for the 32-token tiles; BF16 0.959, FP8 0.508).
# Since 2026-12-02 p.v joins its running sums in round-to-nearest adds (Tile.carry "add"; the kernel error
# against float64 fell from 2.6-5.9e-6 to 0.2-1.0e-6), which cost the split FP8-K NVFP4-V tile 3-5% and the
# others nothing measurable, and the FP8 and FP8-K NVFP4-V tiles run the balanced schedule
# (benchmarks/decode_attention_speed.py; docs/measurements/decode-attention-balanced-h200-2026-12-02.md): on
# one H200 FP8 0.489 ms against 0.530 for the split tile (1.081x; 3 stages at per_sm=4: 1.057x there and on
# another), FP8-K NVFP4-V 0.396-0.406 against 0.427-0.440 (1.08x); BF16's balanced ways read 1-3% slower
# than its split tile. Their per_sm is a multiple of 4 and at
# most what fits: an SM's registers are four banks of 16K, one a warp's, so a one-warp program of 191-207
# registers fits twice a bank, 8 an SM; 9-12 an SM ran two waves (0.55-0.70 ms), and 3, 5 or 6 (a bank
# holding more warps than another) 10-30% slower than 4 or 8. At the strategies' decode step (32 sequence-heads
# of 8K tokens) balanced runs are 248-496 tokens: there the hybrid strategy's step (FP8-K NVFP4-V) read 3.3%
# slower than with the split tile, 1.1% in splits (min_run); the FP8 strategies' steps 1.3-1.4% slower balanced,
# but 6-7% in splits of the 4-stage tile, so FP8's tile stays balanced at every size (one H200 each, 2026-12-02).
# A GPU without an entry runs DEFAULT_GPU's tiles.
TILES = {
    "h100": {
        ("bf16", "bf16"): Tile(block_n=64, warps=8, stages=2),
        ("fp8", "fp8"): Tile(block_n=128, warps=4, stages=2),
        ("fp8", "nvfp4"): Tile(block_n=64, warps=4, stages=2),
    },
    "h200": {
        ("bf16", "bf16"): Tile(qk="mma_t", pv="mma_t", block_n=64, warps=4, stages=3, per_sm=8, e2m1="packed"),
        ("fp8", "fp8"): Tile(qk="mma_t", pv="mma_pairs", block_n=32, warps=1, stages=4, per_sm=4, e2m1="packed",
                             schedule="balanced"),
        ("fp8", "nvfp4"): Tile(qk="mma_t", pv="mma_pairs", block_n=64, warps=1, stages=2, per_sm=8, e2m1="packed",
                               schedule="balanced", min_run=2048),
    },
}
DEFAULT_GPU = "h100"


def tile_for(gpu: str, k_fmt: str, v_fmt: str) -> Tile:
    """The fixed Tile for a GPU key (hardware.gpu_key_from_name) and cache formats."""
    return TILES.get(gpu, TILES[DEFAULT_GPU]).get((k_fmt, v_fmt), Tile())


# The E2M1 decodes in PTX, module constants so that tests/test_decode_attention_ptx.py can run them on
# the CPU (a small emulator of the instructions they use) for every byte.
PACKED_PTX = """
        {
        .reg .b32 t, u, a, b, z;
        mov.b32 z, 0;
        prmt.b32 t, $4, z, 0x4140;
        prmt.b32 u, $4, z, 0x4342;
        shl.b32 a, t, 9;
        shl.b32 b, t, 12;
        and.b32 a, a, 0x0E000E00;
        and.b32 b, b, 0x80008000;
        or.b32 $0, a, b;
        shl.b32 a, u, 9;
        shl.b32 b, u, 12;
        and.b32 a, a, 0x0E000E00;
        and.b32 b, b, 0x80008000;
        or.b32 $1, a, b;
        shl.b32 a, t, 5;
        shl.b32 b, t, 8;
        and.b32 a, a, 0x0E000E00;
        and.b32 b, b, 0x80008000;
        or.b32 $2, a, b;
        shl.b32 a, u, 5;
        shl.b32 b, u, 8;
        and.b32 a, a, 0x0E000E00;
        and.b32 b, b, 0x80008000;
        or.b32 $3, a, b;
        }
        """
LUT_PTX = """
        {
        .reg .b32 m, mh, u, p0, p1, s0, s1, t0, t1, ql, qh;
        .reg .b16 h0, h1, h2, h3;
        mov.b32 t0, 0x3C383000;
        mov.b32 t1, 0x4C484440;
        and.b32 m, $4, 0x77777777;
        shr.b32 mh, m, 16;
        prmt.b32 p0, t0, t1, m;
        prmt.b32 p1, t0, t1, mh;
        shl.b32 u, $4, 4;
        prmt.b32 s0, $4, u, 0x9D8C;
        prmt.b32 s1, $4, u, 0xBFAE;
        and.b32 s0, s0, 0x80808080;
        and.b32 s1, s1, 0x80808080;
        or.b32 p0, p0, s0;
        or.b32 p1, p1, s1;
        prmt.b32 ql, p0, p1, 0x6420;
        prmt.b32 qh, p0, p1, 0x7531;
        mov.b32 {h0, h1}, ql;
        mov.b32 {h2, h3}, qh;
        cvt.rn.f16x2.e4m3x2 $0, h0;
        cvt.rn.f16x2.e4m3x2 $1, h1;
        cvt.rn.f16x2.e4m3x2 $2, h2;
        cvt.rn.f16x2.e4m3x2 $3, h3;
        }
        """
SCALED_PAIRS_PTX = """
        {
        .reg .b32 x, y, s;
        mov.b32 s, {$2, $2};
        mul.lo.u32 x, $1, 0x00200200;
        mul.lo.u32 y, $1, 0x01001000;
        and.b32 x, x, 0x0E000E00;
        and.b32 y, y, 0x80008000;
        or.b32 x, x, y;
        mul.rn.f16x2 $0, x, s;
        }
        """
_PACKED_PTX = tl.constexpr(PACKED_PTX)
_SCALED_PAIRS_PTX = tl.constexpr(SCALED_PAIRS_PTX)
_LUT_PTX = tl.constexpr(LUT_PTX)


@triton.jit
def _e2m1_pairs_bitwise(byte):
    """Low and high nibble of each byte as float16 worth 2**-14 of their E2M1 value."""
    b = byte.to(tl.int16)
    lo = (((b & 7) << 9) | ((b & 8) << 12)).to(tl.float16, bitcast=True)
    hi = ((((b >> 4) & 7) << 9) | (b & 128) << 8).to(tl.float16, bitcast=True)
    return lo, hi


@triton.jit
def _e2m1_pairs_packed(byte):
    """The same bits as _e2m1_pairs_bitwise, four bytes per call on 32-bit words (PACKED_PTX): prmt
    spreads two bytes into the low byte of each 16-bit half, then one shift and mask places both
    halves' magnitude bits under the float16 exponent and another their sign bits."""
    return tl.inline_asm_elementwise(asm=_PACKED_PTX, constraints="=r,=r,=r,=r,r", args=[byte],
                                     dtype=(tl.float16, tl.float16), is_pure=True, pack=4)


@triton.jit
def _e2m1_byte_pairs(byte):
    """Both codes of each byte as float16 worth 2**-14 of their E2M1 value, [..., 2] (low nibble first),
    in Triton integer ops. One 32-bit word per byte: two copies of the byte 12 bits apart (a multiply)
    line up both nibbles' magnitude bits under the two float16 exponents for one shift, and both sign
    bits for another."""
    b = byte.to(tl.uint32)
    x = ((b * 0x00200200) & 0x0E000E00) | ((b * 0x01001000) & 0x80008000)
    return tl.join((x & 0xFFFF).to(tl.uint16), (x >> 16).to(tl.uint16)).to(tl.float16, bitcast=True)


@triton.jit
def _e2m1_byte_pairs_scaled(byte, scale):
    """_e2m1_byte_pairs(byte) * scale (float16, one per byte) in PTX (SCALED_PAIRS_PTX): the same integer
    decode into one 32-bit word per byte, then one mul.f16x2 by the byte's scale in both halves. Triton's
    own ops for it compiled (3.9, sm_90) to a swap of the word's halves before and after the multiply,
    two prmt more per byte. The byte goes in widened to 32 bits: the asm may not assume what lies above
    an 8-bit operand in its register, and the widening costs nothing where the load's byte is extracted."""
    x = tl.inline_asm_elementwise(asm=_SCALED_PAIRS_PTX, constraints="=r,r,h", args=[byte.to(tl.uint32), scale],
                                  dtype=tl.uint32, is_pure=True, pack=1)
    return tl.join((x & 0xFFFF).to(tl.uint16), (x >> 16).to(tl.uint16)).to(tl.float16, bitcast=True)


@triton.jit
def _e2m1_byte_pairs_lut(byte):
    """Both codes of each byte as their exact float16 E2M1 values, [..., 2] (low nibble first), four
    bytes per call (LUT_PTX): prmt looks up the E4M3 encoding of each nibble's magnitude in an 8-byte
    table held in two registers, a second prmt spreads each nibble's sign bit over a byte, a third
    gathers the low nibbles' codes and the high nibbles' codes into a word each, and cvt.e4m3x2 widens
    them to float16. Each output depends on its own byte alone, as an elementwise op must: Triton may
    move a pure elementwise op across a broadcast (it did, moving the first version, which read each
    byte twice from a broadcast [..., 2] tensor, before the broadcast, so the asm got eight different
    bytes where it expected four pairs: wrong attention on an H200, 2026-12-01)."""
    lo, hi = tl.inline_asm_elementwise(asm=_LUT_PTX, constraints="=r,=r,=r,=r,r", args=[byte],
                                       dtype=(tl.float16, tl.float16), is_pure=True, pack=4)
    return tl.join(lo, hi)


@triton.jit
def _e2m1_pairs(byte, E2M1_DECODE: tl.constexpr):
    if E2M1_DECODE == 1:
        lo, hi = _e2m1_pairs_packed(byte)
    else:
        lo, hi = _e2m1_pairs_bitwise(byte)
    return lo, hi


@triton.jit
def _split3_bf16(x):
    """x (float32) as three bfloat16 pieces whose float32 sum is x to within 2**-24 of it."""
    h = x.to(tl.bfloat16)
    rest = x - h.to(tl.float32)
    mid = rest.to(tl.bfloat16)
    return h, mid, (rest - mid.to(tl.float32)).to(tl.bfloat16)


@triton.jit
def _split2_fp16(x):
    """x (float32, under 65504) as two float16 pieces: 22 significant bits."""
    h = x.to(tl.float16)
    return h, (x - h.to(tl.float32)).to(tl.float16)


@triton.jit
def _dot(a, b, DOT_F32: tl.constexpr):
    """a @ b in float32 (under the interpreter, float32 operands: it multiplies 16-bit tiles wrongly)."""
    if DOT_F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _accumulate(acc, a, b, DOT_F32: tl.constexpr, MMA_CARRY: tl.constexpr):
    """acc + a @ b. Tensor cores add in float32 but truncate (round toward zero), so a running sum that the
    MMA carries through a split's tiles drifts with their count (Tile.carry "mma"). By default ("add") each
    tile's product starts from zero and joins the running sum in a round-to-nearest add. Triton folds
    `acc + tl.dot(a, b)` back into the MMA's accumulator, so the product passes through an identity the
    compiler cannot see through first (a PTX mov, free once registers are allocated). The interpreter adds
    float32 products either way (MMA_CARRY makes no difference there)."""
    if DOT_F32:
        return acc + _dot(a, b, DOT_F32)
    if MMA_CARRY:
        return tl.dot(a, b, acc)
    product = tl.dot(a, b)
    return acc + tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [product], dtype=tl.float32, is_pure=True,
                                           pack=1)


@triton.jit
def _load_tile(ptr, desc, rows, valid, bh, n0, D: tl.constexpr, BLOCK_N: tl.constexpr, TMA: tl.constexpr,
               EVICT: tl.constexpr):
    """The tile's [BLOCK_N, D] rows of a BF16 or FP8 K or V, zeros past the split's end. Splits are whole
    128-token tiles and balanced runs whole BLOCK_N tiles, so only a sequence-head's last tile runs past its
    split or run, past its last token: there
    the pointer loads' mask gives zeros, and so does TMA, one copy of a [1, BLOCK_N, D] box of the cache
    seen as [sequence-heads, seq, D] (the next sequence-head's rows could hold any value, and p, though 0
    on them, times an inf is a NaN)."""
    if TMA:
        # TMA takes 32-bit coordinates; a balanced run's bounds, hence n0, are 64-bit.
        return tl.reshape(desc.load([bh, tl.cast(n0, tl.int32), 0]), (BLOCK_N, D))
    return tl.load(ptr + rows[:, None] * D + tl.arange(0, D)[None, :], mask=valid[:, None], other=0.0,
                   eviction_policy=EVICT)


@triton.jit
def _pv_pairs(p, rows, valid, j, v_ptr, v_desc, bh, n0, v_block_ptr, acc, V_FMT: tl.constexpr, D: tl.constexpr,
              BLOCK_N: tl.constexpr, E2M1_DECODE: tl.constexpr, DOT_F32: tl.constexpr, MMA_CARRY: tl.constexpr,
              V_TMA: tl.constexpr, EVICT: tl.constexpr):
    """acc [16, D/2] += the tile's p.v, with each pair of adjacent V elements (2c, 2c + 1) on the MMA's
    contraction axis: k = 2 * slot + t holds element 2c + t of the slot's token, so a packed byte (two
    E2M1 codes), an FP8 pair or a BF16 pair becomes exactly one 32-bit B register, as it lies in memory.
    Row 2 * piece + t of the 16-row operand holds that piece of p for the elements t (zero for the other
    t), so column c of that row sums the piece's share of output element 2c + t (_store_pairs adds the
    pieces). Tokens n take slot 8 (n // 8) + 4 (n % 2) + (n % 8) // 2 and the MMA's column m holds pair
    c = (D / 16) (m % 8) + m // 8: the permutations that give each thread (lane l holds MMA columns
    l // 4 + 8i) adjacent elements of one token, and the token pairs its scores sit on."""
    NC: tl.constexpr = D // 2
    if V_FMT == 2:
        byte = tl.load(v_ptr + rows[:, None] * NC + j[None, :], mask=valid[:, None], other=0, eviction_policy=EVICT)
        blk = tl.arange(0, D // 16)
        bscale = tl.load(v_block_ptr + rows[:, None] * (D // 16) + blk[None, :], mask=valid[:, None],
                         other=0.0, eviction_policy=EVICT).to(tl.float16)
        # One float16 multiply per pair by its block scale (E4M3), exact: an E2M1 value times an E4M3
        # scale has at most 6 significant bits. The lut gives the E2M1 value itself (products from
        # 2**-10 to 6 * 448); the integer decodes give 2**-14 of it, so the scale goes in times 2**7 (at
        # most 57344) and the products, 2**-7 of the values (multiples of 2**-17, as E2M1 values are of
        # 2**-1 and E4M3 values of 2**-9, and at most 21: float16 holds them), need no second multiply
        # (_store_pairs undoes the 2**-7).
        if E2M1_DECODE == 2:
            pair = tl.reshape(tl.reshape(_e2m1_byte_pairs_lut(byte), (BLOCK_N, D // 16, 8, 2))
                              * bscale[:, :, None, None], (BLOCK_N, NC, 2))
        else:
            scale = tl.reshape(tl.broadcast_to((bscale * 128.0)[:, :, None], (BLOCK_N, D // 16, 8)), (BLOCK_N, NC))
            if E2M1_DECODE == 1:
                pair = _e2m1_byte_pairs_scaled(byte, scale)
            else:
                pair = _e2m1_byte_pairs(byte) * scale[:, :, None]
    else:
        v = _load_tile(v_ptr, v_desc, rows, valid, bh, n0, D, BLOCK_N, V_TMA, EVICT)
        if V_FMT == 1:
            v = v.to(tl.float16)
        pair = tl.reshape(v, (BLOCK_N, NC, 2))
    # (token 8 kt + 2 i + h, pair c = (NC / 8) g + u, t) -> k = 16 kt + 8 h + 2 i + t, column 8 u + g
    b = tl.permute(tl.reshape(pair, (BLOCK_N // 8, 4, 2, 8, NC // 8, 2)), (0, 2, 1, 5, 4, 3))
    b = tl.reshape(b, (2 * BLOCK_N, NC))
    r = tl.arange(0, 16)[:, None]
    ps = tl.reshape(tl.permute(tl.reshape(p, (BLOCK_N // 8, 4, 2)), (0, 2, 1)), (BLOCK_N,))  # slot order
    if V_FMT == 0:
        ph, pm, pl = _split3_bf16(ps)
        w = tl.where(r // 2 == 0, ph[None, :],
                     tl.where(r // 2 == 1, pm[None, :], tl.where(r // 2 == 2, pl[None, :], 0.0)))
    else:
        ph, pl = _split2_fp16(ps * 32768.0)  # p <= 1; 2**15 keeps the low piece off float16 subnormals
        w = tl.where(r // 2 == 0, ph[None, :], tl.where(r // 2 == 1, pl[None, :], 0.0))
    w = tl.reshape(tl.join(tl.where(r % 2 == 0, w, 0.0), tl.where(r % 2 == 1, w, 0.0)), (16, 2 * BLOCK_N))
    return _accumulate(acc, w, b, DOT_F32, MMA_CARRY)


@triton.jit
def _store_pairs(acc, out_ptr, v_scale_ptr, bh, V_FMT: tl.constexpr, D: tl.constexpr, E2M1_DECODE: tl.constexpr):
    """_pv_pairs' accumulator to the split's output: element 2c + t sums the rows t, t + 2, t + 4 (p's pieces)
    of the MMA column that holds pair c, undoing p's 2**15 (and the integer E2M1 decode's 2**-7) and
    applying V's scale."""
    NC: tl.constexpr = D // 2
    r = tl.arange(0, 16)[:, None]
    m = tl.arange(0, NC)
    c = (NC // 8) * (m % 8) + m // 8
    even = tl.sum(tl.where(r % 2 == 0, acc, 0.0), axis=0)
    odd = tl.sum(tl.where(r % 2 == 1, acc, 0.0), axis=0)
    if V_FMT == 2:
        if E2M1_DECODE == 2:
            scale = tl.load(v_scale_ptr) / 32768.0
        else:
            scale = tl.load(v_scale_ptr) / 256.0
    elif V_FMT == 1:
        scale = tl.load(v_scale_ptr + bh) / 32768.0
    else:
        scale = 1.0
    tl.store(out_ptr + 2 * c, even * scale)
    tl.store(out_ptr + 2 * c + 1, odd * scale)


@triton.jit(do_not_specialize=["num_splits", "full_splits", "bh_count"])
def _decode_partial_kernel(q_ptr, k_ptr, k_desc, k_scale_ptr, v_ptr, v_desc, v_scale_ptr, v_block_ptr, acc_ptr,
                           ml_ptr, out_ptr, arrivals_ptr, seq, split_len, full_splits, half_len, num_splits, bh_count,
                           qk_scale, K_FP8: tl.constexpr, V_FMT: tl.constexpr, D: tl.constexpr, ROWS: tl.constexpr,
                           BLOCK_N: tl.constexpr, QK: tl.constexpr, PV: tl.constexpr, E2M1_DECODE: tl.constexpr,
                           STAGES: tl.constexpr, DOT_F32: tl.constexpr, MMA_CARRY: tl.constexpr,
                           FUSED_COMBINE: tl.constexpr,
                           SPLITS: tl.constexpr, SPLITS_FIRST: tl.constexpr, BALANCED: tl.constexpr,
                           K_TMA: tl.constexpr, V_TMA: tl.constexpr, EVICT: tl.constexpr):
    if BALANCED:
        # Tile.schedule "balanced": num_splits programs in all, each an equal run of the BLOCK_N-token tiles
        # of every sequence-head laid end to end (sequence-head 0's tiles, then 1's...), so every program
        # reads as many bytes and none is left running alone at the end; a run that crosses into the next
        # sequence-head ends one partial there and starts another. Sequence-head b's partials sit at
        # b * SPLITS + (program - the first program whose run reaches b).
        prog = tl.program_id(0).to(tl.int64)
        per_bh = tl.cdiv(seq, BLOCK_N)
        total = bh_count.to(tl.int64) * per_bh
        t0 = prog * total // num_splits
        t1 = (prog + 1) * total // num_splits
        for b in range(t0 // per_bh, (t1 - 1) // per_bh + 1):
            bh = tl.cast(b, tl.int32)
            first = bh.to(tl.int64) * per_bh
            first_prog, parts = _balanced_parts(first, per_bh, total, num_splits)
            start = (tl.maximum(t0, first) - first) * BLOCK_N
            end = tl.minimum((tl.minimum(t1, first + per_bh) - first) * BLOCK_N, seq)
            base = bh.to(tl.int64) * SPLITS
            _attend_range(q_ptr, k_ptr, k_desc, k_scale_ptr, v_ptr, v_desc, v_scale_ptr, v_block_ptr, acc_ptr,
                          ml_ptr, bh, base + prog - first_prog, start, end, seq, qk_scale, K_FP8, V_FMT, D, ROWS,
                          BLOCK_N, QK, PV, E2M1_DECODE, STAGES, DOT_F32, MMA_CARRY, K_TMA, V_TMA, EVICT)
            if FUSED_COMBINE:
                _arrive(acc_ptr, ml_ptr, out_ptr, arrivals_ptr, bh, base, parts, D, SPLITS)
    else:
        if SPLITS_FIRST:
            split = tl.program_id(0)
            bh = tl.program_id(1)
        else:
            bh = tl.program_id(0)
            split = tl.program_id(1)
        # Splits past the first full_splits are half_len long (Tile.taper; with no taper, none are).
        halves = tl.maximum(split - full_splits, 0)  # the half splits before this one
        start = (split - halves) * split_len + halves * half_len
        end = tl.minimum(start + tl.where(split >= full_splits, half_len, split_len), seq)
        _attend_range(q_ptr, k_ptr, k_desc, k_scale_ptr, v_ptr, v_desc, v_scale_ptr, v_block_ptr, acc_ptr, ml_ptr,
                      bh, bh.to(tl.int64) * num_splits + split, start, end, seq, qk_scale, K_FP8, V_FMT, D, ROWS,
                      BLOCK_N, QK, PV, E2M1_DECODE, STAGES, DOT_F32, MMA_CARRY, K_TMA, V_TMA, EVICT)
        if FUSED_COMBINE:
            _arrive(acc_ptr, ml_ptr, out_ptr, arrivals_ptr, bh, bh * num_splits, num_splits, D, SPLITS)


@triton.jit
def _balanced_parts(first, per_bh, total, programs):
    """The first program whose balanced run reaches tile `first` (a sequence-head's first), and how many runs
    reach that sequence-head's per_bh tiles: program p's run starts at tile p * total // programs, so the
    last run to start at or before tile x is ((x + 1) * programs - 1) // total (no run is empty: programs <=
    total)."""
    first_prog = ((first + 1) * programs - 1) // total
    last_prog = ((first + per_bh) * programs - 1) // total
    return first_prog, last_prog - first_prog + 1


@triton.jit
def _attend_range(q_ptr, k_ptr, k_desc, k_scale_ptr, v_ptr, v_desc, v_scale_ptr, v_block_ptr, acc_ptr, ml_ptr, bh,
                  part, start, end, seq, qk_scale, K_FP8: tl.constexpr, V_FMT: tl.constexpr, D: tl.constexpr,
                  ROWS: tl.constexpr, BLOCK_N: tl.constexpr, QK: tl.constexpr, PV: tl.constexpr,
                  E2M1_DECODE: tl.constexpr, STAGES: tl.constexpr, DOT_F32: tl.constexpr, MMA_CARRY: tl.constexpr,
                  K_TMA: tl.constexpr, V_TMA: tl.constexpr, EVICT: tl.constexpr):
    """Sequence-head bh's tokens [start, end) with an online softmax: their partial p.v sum to acc_ptr's row
    `part`, their maximum score and denominator to ml_ptr's."""
    d = tl.arange(0, D)
    r = tl.arange(0, ROWS)
    NB: tl.constexpr = D // 16
    # log2(e) / sqrt(D) scales the scores, so the softmax runs on exp2; the per-head K scale rides along.
    q = tl.load(q_ptr + bh * D + d)
    s_scale = qk_scale
    if K_FP8:
        s_scale = s_scale * tl.load(k_scale_ptr + bh)
    if QK == 0:
        qf = q.to(tl.float32) * s_scale
    else:
        if K_FP8:
            # FP8 K widens to float16 exactly; q does too once a power of two puts its largest element
            # under 2**15 (float16 holds every bfloat16 value from 2**-17 to 65504 exactly).
            qw = q.to(tl.float32)
            e = tl.maximum(((tl.max(tl.abs(qw), axis=0).to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, -100)
            pow2 = ((141 - e) << 23).to(tl.float32, bitcast=True)  # 2**(14 - floor(log2(max |q|)))
            qd = (qw * pow2).to(tl.float16)
            s_scale = s_scale / pow2
        else:
            qd = q
        if QK == 1:
            q_op = tl.broadcast_to(qd[None, :], (ROWS, D))
        else:
            q_op = tl.broadcast_to(qd[:, None], (D, ROWS))
    m = -float("inf")
    # With p.v on CUDA cores or the pair path, p is a vector, so the scores become one ([BLOCK_N]) as
    # soon as the q.k MMA gives them: its ROWS columns (rows for "mma") are equal, every one the same
    # product of the same operands, and exp2, the maximum and the sums then run once per token, not
    # ROWS times.
    VEC_S: tl.constexpr = QK != 0 and (PV == 0 or PV == 3)
    if QK == 0:
        den = 0.0
    elif VEC_S:
        den = tl.zeros([BLOCK_N], dtype=tl.float32)
    elif QK == 1:
        den = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
    else:
        den = tl.zeros([BLOCK_N, ROWS], dtype=tl.float32)
    j = tl.arange(0, D // 2)
    if PV == 0:
        if V_FMT == 2:
            acc_lo = tl.zeros([BLOCK_N, NB, 8], dtype=tl.float32)  # even elements of each 16-block
            acc_hi = tl.zeros([BLOCK_N, NB, 8], dtype=tl.float32)  # odd elements
        else:
            acc = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    elif PV == 1:
        if V_FMT == 2:
            acc_lo = tl.zeros([ROWS, D // 2], dtype=tl.float32)
            acc_hi = tl.zeros([ROWS, D // 2], dtype=tl.float32)
        else:
            acc = tl.zeros([ROWS, D], dtype=tl.float32)
    elif PV == 2:
        if V_FMT == 2:
            acc_lo = tl.zeros([D // 2, ROWS], dtype=tl.float32)
            acc_hi = tl.zeros([D // 2, ROWS], dtype=tl.float32)
        else:
            acc = tl.zeros([D, ROWS], dtype=tl.float32)
    else:
        acc = tl.zeros([16, D // 2], dtype=tl.float32)
    for n0 in tl.range(start, end, BLOCK_N, num_stages=STAGES):
        n = n0 + tl.arange(0, BLOCK_N)
        valid = n < end
        rows = (bh.to(tl.int64) * seq + n)
        if K_TMA:
            k_tile = _load_tile(k_ptr, k_desc, rows, valid, bh, n0, D, BLOCK_N, True, EVICT)
        if QK == 0:
            if K_TMA:
                k = k_tile.to(tl.float32)
            else:
                k = tl.load(k_ptr + rows[:, None] * D + d[None, :], mask=valid[:, None], other=0.0,
                            eviction_policy=EVICT).to(tl.float32)
            s = tl.where(valid, tl.sum(k * qf[None, :], axis=1), -float("inf"))
            m_tile = tl.max(s, axis=0)
        elif QK == 1:
            if K_TMA:
                kt = tl.trans(k_tile)
            else:
                kt = tl.load(k_ptr + rows[None, :] * D + d[:, None], mask=valid[None, :], other=0.0,
                             eviction_policy=EVICT)
            if K_FP8:
                kt = kt.to(tl.float16)
            if VEC_S:
                s = tl.where(valid, tl.max(_dot(q_op, kt, DOT_F32), axis=0) * s_scale, -float("inf"))
                m_tile = tl.max(s, axis=0)
            else:
                s = _dot(q_op, kt, DOT_F32) * s_scale
                s = tl.where(valid[None, :], s, -float("inf"))
                m_tile = tl.max(tl.max(s, axis=1), axis=0)
        else:
            if K_TMA:
                k = k_tile
            else:
                k = tl.load(k_ptr + rows[:, None] * D + d[None, :], mask=valid[:, None], other=0.0,
                            eviction_policy=EVICT)
            if K_FP8:
                k = k.to(tl.float16)
            if VEC_S:
                s = tl.where(valid, tl.max(_dot(k, q_op, DOT_F32), axis=1) * s_scale, -float("inf"))
                m_tile = tl.max(s, axis=0)
            else:
                s = _dot(k, q_op, DOT_F32) * s_scale
                s = tl.where(valid[:, None], s, -float("inf"))
                m_tile = tl.max(tl.max(s, axis=1), axis=0)
        m_new = tl.maximum(m, m_tile)
        # Rescale the running sums only when the maximum rises: over a long context it settles within
        # a few tiles; the multiply skipped is by exactly 1.0.
        if m_new > m:
            alpha = tl.math.exp2(m - m_new)
            den = den * alpha
            if V_FMT == 2 and PV != 3:
                acc_lo = acc_lo * alpha
                acc_hi = acc_hi * alpha
            else:
                acc = acc * alpha
            m = m_new
        p = tl.math.exp2(s - m)
        if QK == 0:
            den = den + tl.sum(p, axis=0)
        else:
            den = den + p
        if PV == 3:
            acc = _pv_pairs(p, rows, valid, j, v_ptr, v_desc, bh, n0, v_block_ptr, acc, V_FMT, D, BLOCK_N, E2M1_DECODE,
                            DOT_F32, MMA_CARRY, V_TMA, EVICT)
        elif PV == 0:
            if V_FMT == 2:
                blk = tl.arange(0, NB)
                pair = tl.arange(0, 8)
                offs = rows[:, None, None] * (D // 2) + blk[None, :, None] * 8 + pair[None, None, :]
                byte = tl.load(v_ptr + offs, mask=valid[:, None, None], other=0, eviction_policy=EVICT)
                lo, hi = _e2m1_pairs(byte, E2M1_DECODE)
                bscale = tl.load(v_block_ptr + rows[:, None] * NB + blk[None, :], mask=valid[:, None],
                                 other=0.0, eviction_policy=EVICT).to(tl.float32)
                w = (p[:, None] * bscale)[:, :, None]
                acc_lo = acc_lo + w * lo.to(tl.float32)
                acc_hi = acc_hi + w * hi.to(tl.float32)
            else:
                v = _load_tile(v_ptr, v_desc, rows, valid, bh, n0, D, BLOCK_N, V_TMA, EVICT).to(tl.float32)
                acc = acc + p[:, None] * v
        else:
            # p as the MMA's 16-row operand: [ROWS, BLOCK_N] ("mma") or [BLOCK_N, ROWS] ("mma_t").
            if PV == 1:
                if QK == 0:
                    p = tl.broadcast_to(p[None, :], (ROWS, BLOCK_N))
                elif QK == 2:
                    p = tl.trans(p)
                row = r[:, None]
            else:
                if QK == 0:
                    p = tl.broadcast_to(p[:, None], (BLOCK_N, ROWS))
                elif QK == 1:
                    p = tl.trans(p)
                row = r[None, :]
            if V_FMT == 2:
                byte = tl.load(v_ptr + rows[:, None] * (D // 2) + j[None, :], mask=valid[:, None], other=0,
                               eviction_policy=EVICT)
                lo, hi = _e2m1_pairs(byte, E2M1_DECODE)
                if PV == 1:
                    bscale = tl.load(v_block_ptr + rows[None, :] * NB + row % NB, mask=valid[None, :], other=0.0,
                                     eviction_policy=EVICT)
                else:
                    bscale = tl.load(v_block_ptr + rows[:, None] * NB + row % NB, mask=valid[:, None], other=0.0,
                                     eviction_policy=EVICT)
                # p times the block scale, times 2**7: the float16 pieces stay under 65504 (448 * 128)
                # and their products with the codes (2**-14 of E2M1) stay in float16's exact range.
                wh, wl = _split2_fp16(p * bscale.to(tl.float32) * 128.0)
                piece = row // NB
                w = tl.where(piece == 0, wh, tl.where(piece == 1, wl, 0.0))
                if PV == 1:
                    acc_lo = _accumulate(acc_lo, w, lo, DOT_F32, MMA_CARRY)
                    acc_hi = _accumulate(acc_hi, w, hi, DOT_F32, MMA_CARRY)
                else:
                    acc_lo = _accumulate(acc_lo, tl.trans(lo), w, DOT_F32, MMA_CARRY)
                    acc_hi = _accumulate(acc_hi, tl.trans(hi), w, DOT_F32, MMA_CARRY)
            else:
                v = _load_tile(v_ptr, v_desc, rows, valid, bh, n0, D, BLOCK_N, V_TMA, EVICT)
                if V_FMT == 1:
                    v = v.to(tl.float16)
                    wh, wl = _split2_fp16(p * 32768.0)  # p <= 1: 2**15 keeps the low piece off subnormals
                    w = tl.where(row == 0, wh, tl.where(row == 1, wl, 0.0))
                else:
                    wh, wm, wl = _split3_bf16(p)
                    w = tl.where(row == 0, wh, tl.where(row == 1, wm, tl.where(row == 2, wl, 0.0)))
                if PV == 1:
                    acc = _accumulate(acc, w, v, DOT_F32, MMA_CARRY)
                else:
                    acc = _accumulate(acc, tl.trans(v), w, DOT_F32, MMA_CARRY)
    part = part.to(tl.int64)
    if QK == 0:
        denom = den
    elif VEC_S:
        denom = tl.sum(den, axis=0)
    elif QK == 1:
        denom = tl.sum(tl.sum(tl.where(r[:, None] == 0, den, 0.0), axis=1), axis=0)
    else:
        denom = tl.sum(tl.sum(tl.where(r[None, :] == 0, den, 0.0), axis=1), axis=0)
    if PV == 3:
        _store_pairs(acc, acc_ptr + part * D, v_scale_ptr, bh, V_FMT, D, E2M1_DECODE)
    elif V_FMT == 2:
        # 2**14 undoes the float16 placement of the codes; the per-tensor scale is applied once here.
        v_scale = tl.load(v_scale_ptr) * 16384.0
        if PV == 0:
            blk = tl.arange(0, NB)
            pair = tl.arange(0, 8)
            col = blk[:, None] * 16 + pair[None, :] * 2
            tl.store(acc_ptr + part * D + col, tl.sum(acc_lo, axis=0) * v_scale)
            tl.store(acc_ptr + part * D + col + 1, tl.sum(acc_hi, axis=0) * v_scale)
        else:
            v_scale = v_scale / 128.0
            # Column 2j and 2j+1 of the output are in block j // 8: keep its hi and lo rows.
            if PV == 1:
                keep = ((r % NB)[:, None] == (j // 8)[None, :]) & (r < 2 * NB)[:, None]
                out_lo = tl.sum(tl.where(keep, acc_lo, 0.0), axis=0)
                out_hi = tl.sum(tl.where(keep, acc_hi, 0.0), axis=0)
            else:
                keep = ((r % NB)[None, :] == (j // 8)[:, None]) & (r < 2 * NB)[None, :]
                out_lo = tl.sum(tl.where(keep, acc_lo, 0.0), axis=1)
                out_hi = tl.sum(tl.where(keep, acc_hi, 0.0), axis=1)
            tl.store(acc_ptr + part * D + 2 * j, out_lo * v_scale)
            tl.store(acc_ptr + part * D + 2 * j + 1, out_hi * v_scale)
    else:
        if PV == 0:
            out = tl.sum(acc, axis=0)
        elif PV == 1:
            out = tl.sum(acc, axis=0)  # rows past the pieces of p hold zeros
        else:
            out = tl.sum(acc, axis=1)
        if V_FMT == 1:
            out = out * tl.load(v_scale_ptr + bh)
            if PV != 0:
                out = out / 32768.0
        tl.store(acc_ptr + part * D + d, out)
    tl.store(ml_ptr + part * 2, m)
    tl.store(ml_ptr + part * 2 + 1, denom)


@triton.jit
def _arrive(acc_ptr, ml_ptr, out_ptr, arrivals_ptr, bh, base, parts, D: tl.constexpr, SPLITS: tl.constexpr):
    """Flash-decoding's merge, by the last of sequence-head bh's `parts` partials (rows base...) to be written,
    in this launch, not a second one: on an H200 the BF16 kernel took 6 us (0.6%) less so, the FP8 ones as long
    (their last program merges 16 splits with one warp; 2026-12-01). Every thread's stores before the barrier
    come first; the arrival's release (gpu scope, by one thread after the barrier) publishes them, and the
    program that sees the count reach parts - 1 acquires all of them. Which partial arrives last does not
    change the result: _combine reads them in their order."""
    tl.debug_barrier()
    arrived = tl.atomic_add(arrivals_ptr + bh, 1, sem="acq_rel", scope="gpu")
    if arrived == parts - 1:
        _combine(acc_ptr, ml_ptr, out_ptr, bh, base, parts, D, SPLITS, ".cg")
        # Back to zero for the next launch on this workspace (launches on one stream run in order).
        tl.store(arrivals_ptr + bh, 0)


@triton.jit
def _combine(acc_ptr, ml_ptr, out_ptr, bh, base, parts, D: tl.constexpr, SPLITS: tl.constexpr,
             CACHE: tl.constexpr):
    """Sequence-head bh's output from its `parts` partial sums, maxima and denominators (rows base...), in
    their order. CACHE ".cg" reads them from L2: other programs of this launch wrote them."""
    s = tl.arange(0, SPLITS)
    d = tl.arange(0, D)
    live = s < parts
    part = base.to(tl.int64) + s
    m = tl.load(ml_ptr + part * 2, mask=live, other=-float("inf"), cache_modifier=CACHE)
    denom = tl.load(ml_ptr + part * 2 + 1, mask=live, other=0.0, cache_modifier=CACHE)
    weight = tl.math.exp2(m - tl.max(m, axis=0))  # an empty or absent split has m = -inf and weighs 0
    acc = tl.load(acc_ptr + part[:, None] * D + d[None, :], mask=live[:, None], other=0.0, cache_modifier=CACHE)
    out = tl.sum(acc * weight[:, None], axis=0) / tl.sum(denom * weight, axis=0)
    tl.store(out_ptr + bh * D + d, out)


@triton.jit(do_not_specialize=["num_splits", "bh_count"])
def _decode_combine_kernel(acc_ptr, ml_ptr, out_ptr, seq, num_splits, bh_count, D: tl.constexpr,
                           SPLITS: tl.constexpr, BALANCED: tl.constexpr, BLOCK_N: tl.constexpr):
    bh = tl.program_id(0)
    if BALANCED:
        per_bh = tl.cdiv(seq, BLOCK_N)
        _, parts = _balanced_parts(bh.to(tl.int64) * per_bh, per_bh, bh_count.to(tl.int64) * per_bh, num_splits)
        _combine(acc_ptr, ml_ptr, out_ptr, bh, bh * SPLITS, parts, D, SPLITS, "")
    else:
        _combine(acc_ptr, ml_ptr, out_ptr, bh, bh * num_splits, num_splits, D, SPLITS, "")


def num_splits(heads_total: int, seq: int, sm_count: int, per_sm: int = 4) -> int:
    """About `per_sm` programs per SM, never a split shorter than 256 tokens; a power of two."""
    want = max(1, min(triton.cdiv(per_sm * sm_count, heads_total), triton.cdiv(seq, _MIN_SPLIT_TOKENS)))
    return triton.next_power_of_2(want)


def default_splits(tile: Tile, bh: int, seq: int, sm_count: int) -> int:
    """The split count a launch takes unless told: num_splits' for the "splits" schedule; for "balanced",
    per_sm programs an SM in all, but never a run shorter than a split may be (256 tokens)."""
    if tile.schedule == "balanced":
        return max(1, min(tile.per_sm * sm_count, triton.cdiv(bh * seq, _MIN_SPLIT_TOKENS)))
    return num_splits(bh, seq, sm_count, tile.per_sm)


def default_schedule(tile: Tile, bh: int, seq: int, sm_count: int) -> Tile:
    """The tile a launch runs unless told its split or program count: a balanced tile whose runs would be
    shorter than its min_run runs the split schedule instead (with the same per_sm)."""
    if tile.schedule == "balanced" and bh * seq < tile.min_run * tile.per_sm * sm_count:
        return replace(tile, schedule="splits", min_run=0)
    return tile


@dataclass(frozen=True)
class Partition:
    """How a launch cuts bh sequence-heads of seq tokens: `programs` splits per sequence-head (the "splits"
    schedule, the tapered halves counted) or programs in all ("balanced"); the first `full_splits` splits
    `split_len` tokens long and the rest `half_len` (Tile.taper; "splits" only); `stride` rows of partials a
    sequence-head in the workspace (a power of two under "balanced", whose kernel takes it as the merge's
    vector length, SPLITS)."""

    programs: int
    full_splits: int
    split_len: int
    half_len: int
    stride: int


def partition(tile: Tile, bh: int, seq: int, splits: int) -> Partition:
    """The Partition of a launch of `tile` over bh sequence-heads of seq tokens in `splits` splits (programs in
    all under "balanced", at most the cache's tiles: no run is empty)."""
    if tile.schedule == "balanced":
        # Program p's run starts at tile floor(p T / P). A sequence-head's tiles [a, a + per_bh) meet the run
        # holding tile a and the runs starting on a + 1 ... a + per_bh - 1, whose p lie in [(a + 1) P / T,
        # (a + per_bh) P / T): at most ceil((per_bh - 1) P / T) of them.
        per_bh = triton.cdiv(seq, tile.block_n)
        programs = min(splits, bh * per_bh)
        parts = min(programs, triton.cdiv((per_bh - 1) * programs, bh * per_bh) + 1)
        return Partition(programs, programs, 0, 0, triton.next_power_of_2(parts))
    split_len = triton.cdiv(triton.cdiv(seq, splits), _MAX_BLOCK_N) * _MAX_BLOCK_N
    # Tile.taper: the last `taper` splits each become two of half_len (whole tiles of _MAX_BLOCK_N); past the
    # cache, a split is empty (it weighs nothing in the merge).
    half_len = triton.cdiv(split_len // 2, _MAX_BLOCK_N) * _MAX_BLOCK_N
    taper = min(tile.taper, splits) if half_len < split_len else 0
    return Partition(splits + taper, splits - taper, split_len, half_len, splits + taper)


def plan(tile: Tile, bh: int, seq: int, sm_count: int, splits: int | None = None,
         programs: int | None = None) -> tuple[Tile, Partition]:
    """The tile a launch runs and how it cuts the cache: `splits` (a sequence-head's) runs the split schedule,
    `programs` (in all) the balanced one, whatever the tile's; neither, the tile's own at its per_sm
    (default_schedule, default_splits)."""
    if splits is not None:
        tile = replace(tile, schedule="splits", min_run=0)
    elif programs is not None:
        splits, tile = programs, replace(tile, schedule="balanced")
    else:
        tile = default_schedule(tile, bh, seq, sm_count)
        splits = default_splits(tile, bh, seq, sm_count)
    return tile, partition(tile, bh, seq, splits)


def _device_tile(q: torch.Tensor, k_fmt: str, v_fmt: str) -> Tile:
    gpu = gpu_key_from_name(torch.cuda.get_device_name(q.device)) if q.is_cuda else DEFAULT_GPU
    return tile_for(gpu, k_fmt, v_fmt)


class DecodeWorkspace:
    """The splits' partial results and the per-sequence-head arrival counters of the fused combine, kept
    from one call to the next, as a decode step keeps its workspace: the counters must read zero when a
    launch starts, and the program that merges a sequence-head's splits sets its counter back to zero, so
    counters zeroed once, when the workspace grows, serve every later call with no fill kernel.

    One workspace per stream: two launches running at once on one workspace would count each other's
    splits. A launch that does not finish (a fault) leaves the counters undefined; make a new one. Under
    CUDA graphs: run one call eagerly before capturing (a workspace cannot grow inside a capture, where its
    counters would not be zeroed until the first replay); buffers it outgrows later are kept, since a
    graph captured on them goes on reading and writing them.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}
        self._outgrown: list[torch.Tensor] = []

    def buffers(self, parts: int, bh: int, head_dim: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """(partial sums [parts, head_dim], (maximum, denominator) [parts, 2], arrival counters [bh]), each
        grown (the counters zeroed) when this call needs more than an earlier one did."""
        need = {"acc": (parts * head_dim, torch.float32, torch.empty), "ml": (parts * 2, torch.float32, torch.empty),
                "arrivals": (bh, torch.int32, torch.zeros)}
        for key, (numel, dtype, make) in need.items():
            have = self._buffers.get(key)
            if have is not None and have.numel() >= numel and have.device == device:
                continue
            if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise RuntimeError(f"the decode workspace must grow ({key}: {numel} elements on {device}) inside a "
                                   "CUDA graph capture, where its counters would not be zeroed until the graph "
                                   "replays; run one call with this workspace before capturing")
            if have is not None:
                self._outgrown.append(have)
            self._buffers[key] = make(numel, dtype=dtype, device=device)
        acc, ml = self._buffers["acc"][: parts * head_dim], self._buffers["ml"][: parts * 2]
        return acc.view(parts, head_dim), ml.view(parts, 2), self._buffers["arrivals"]


def decode_attention(q: torch.Tensor, cache: Cache, splits: int | None = None,
                     tile: Tile | None = None, workspace: DecodeWorkspace | None = None,
                     programs: int | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for q [batch, heads, head_dim] over `cache`; float32 [batch, heads, head_dim].

    `tile` by default is the device's entry in TILES. Given `splits` (per sequence-head), the launch runs the
    split schedule, given `programs` (in all, at most the cache's tiles: no run is empty) the balanced one,
    whatever the tile's; given neither, the tile's schedule at its `per_sm` (default_splits), a balanced
    tile in splits where the cache is too small for its runs (default_schedule).
    Under Triton's interpreter (TRITON_INTERPRET=1) the default tile decodes E2M1 "bitwise". `workspace`
    (one a stream) is reused across calls; without one, each call makes its own, which zeroes the fused
    combine's counters (a fill kernel).
    """
    return launch(q, cache, splits, tile, workspace, programs)[0]


def launch(q: torch.Tensor, cache: Cache, splits: int | None = None, tile: Tile | None = None,
           workspace: DecodeWorkspace | None = None, programs: int | None = None):
    """decode_attention's output and the partial kernel Triton launched (its registers, spills and shared
    memory; None under the interpreter)."""
    if splits is not None and programs is not None:
        raise ValueError("give splits (a sequence-head's, the split schedule) or programs (in all, the balanced "
                         "schedule), not both")
    k_fmt, v_fmt = cache.k.fmt, cache.v.fmt
    if k_fmt not in ("bf16", "fp8") or v_fmt not in V_FORMATS:
        raise ValueError(f"no kernel for K {k_fmt!r} with V {v_fmt!r}; K takes bf16 or fp8, V {', '.join(V_FORMATS)}")
    batch, heads, head_dim = q.shape
    k_data = cache.k.data
    seq = k_data.shape[2]
    if head_dim % 16 or head_dim & (head_dim - 1):
        raise ValueError(f"head_dim must be a power of two and a multiple of 16, got {head_dim}")
    interpreted = interpreting()
    if tile is None:
        tile = _device_tile(q, k_fmt, v_fmt)
        if interpreted:
            tile = replace(tile, e2m1="bitwise")
    if interpreted and tile.e2m1 != "bitwise":
        raise ValueError(f"e2m1 decode {tile.e2m1!r} cannot run under Triton's interpreter (it runs no PTX); "
                         "choose 'bitwise'")
    if head_dim < 32 and tile.pv == "mma_pairs":
        raise ValueError(f"the pair path needs head_dim >= 32 (the MMA's 16 columns are element pairs), got {head_dim}")
    bh = batch * heads
    sm_count = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 1
    tile, cut = plan(tile, bh, seq, sm_count, splits, programs)
    dummy = torch.empty(1, dtype=torch.float32, device=q.device)  # never read; empty launches no fill kernel
    k_scale = cache.k.scales.reshape(bh).float().contiguous() if k_fmt == "fp8" else dummy
    if v_fmt == "nvfp4":
        v_data, v_scale = cache.v.data.packed, cache.v.data.global_decode.float().reshape(1)
        v_block = cache.v.data.block_scales
    else:
        v_data = cache.v.data
        v_scale = cache.v.scales.reshape(bh).float().contiguous() if v_fmt == "fp8" else dummy
        v_block = dummy
    k_data, v_data = k_data.contiguous(), v_data.contiguous()
    k_tma, v_tma = tma_loads(tile, v_fmt)
    k_desc = _tile_descriptor(k_data, tile.block_n) if k_tma else None
    v_desc = _tile_descriptor(v_data, tile.block_n) if v_tma else None
    balanced = tile.schedule == "balanced"
    acc, ml, arrivals = (workspace or DecodeWorkspace()).buffers(bh * cut.stride, bh, head_dim, q.device)
    out = torch.empty(batch, heads, head_dim, dtype=torch.float32, device=q.device)
    fused = tile.combine == "fused"
    splits_first = tile.order == "splits"
    vector = triton.next_power_of_2(cut.stride)  # the merge's vector of a sequence-head's partials
    grid = (cut.programs,) if balanced else (cut.programs, bh) if splits_first else (bh, cut.programs)
    kernel = _decode_partial_kernel[grid](
        q.contiguous(), k_data, k_desc, k_scale, v_data, v_desc, v_scale, v_block, acc, ml, out, arrivals, seq,
        cut.split_len, cut.full_splits, cut.half_len, cut.programs, bh, math.log2(math.e) / math.sqrt(head_dim),
        K_FP8=k_fmt == "fp8", V_FMT=V_FORMATS[v_fmt], D=head_dim, ROWS=max(16, head_dim // 8),
        BLOCK_N=tile.block_n, QK=PRODUCTS[tile.qk], PV=PRODUCTS[tile.pv], E2M1_DECODE=E2M1_DECODES[tile.e2m1],
        STAGES=tile.stages, DOT_F32=interpreted, MMA_CARRY=tile.carry == "mma", FUSED_COMBINE=fused, SPLITS=vector,
        SPLITS_FIRST=splits_first, BALANCED=balanced, K_TMA=k_tma, V_TMA=v_tma, EVICT=EVICTS[tile.evict],
        num_warps=tile.warps)
    if not fused:
        _decode_combine_kernel[(bh,)](acc, ml, out, seq, cut.programs, bh, D=head_dim, SPLITS=vector,
                                      BALANCED=balanced, BLOCK_N=tile.block_n)
    if tile.evict != "normal" and not interpreted and not evict_hint_kept(kernel.asm["ptx"]):
        raise RuntimeError(f"Triton {triton.__version__} dropped the L2 eviction hint (evict={tile.evict!r}) from "
                           "the kernel's loads: this tile runs the plain kernel. Use evict='normal', or a Triton "
                           "that keeps the hint (3.9 does)")
    return out, None if interpreted else kernel


def evict_hint_kept(ptx: str) -> bool:
    """Whether a compiled partial kernel's loads carry an L2 eviction policy: its PTX makes one (createpolicy)."""
    return "createpolicy" in ptx


def tma_loads(tile: Tile, v_fmt: str) -> tuple[bool, bool]:
    """Whether the kernel loads K, and V, through TMA: with Tile.loads "tma", K always and V unless it is
    NVFP4 (its packed codes and block scales keep their pointer loads)."""
    tma = tile.loads == "tma"
    return tma, tma and v_fmt != "nvfp4"


def _tile_descriptor(data: torch.Tensor, block_n: int) -> TensorDescriptor:
    """A TMA descriptor of a [batch, heads, seq, head_dim] cache as [sequence-heads, seq, head_dim], one
    [1, block_n, head_dim] box a copy. TMA needs a 16-byte aligned base (launch() already requires a
    head_dim whose rows are whole multiples of 16 bytes)."""
    batch, heads, seq, head_dim = data.shape
    if data.data_ptr() % 16:
        raise ValueError(f"TMA loads need a 16-byte aligned cache; this one starts at {data.data_ptr():#x}: "
                         "choose loads='pointers' or allocate the cache on its own")
    return TensorDescriptor(data.view(batch * heads, seq, head_dim), [batch * heads, seq, head_dim],
                            [seq * head_dim, head_dim, 1], [1, block_n, head_dim])


def decode_attention_interpreted(q: torch.Tensor, cache: Cache, runs: list[tuple]) -> list[torch.Tensor]:
    """decode_attention on CPU tensors, run by Triton's interpreter in a child process
    (interpreted.run_interpreted), once per (tile, splits) or (tile, splits, programs) of `runs`."""
    return run_interpreted(__name__, {"q": q, "cache": cache, "runs": runs}, "the decode-attention kernel")


if __name__ == "__main__":  # decode_attention_interpreted's child: python -m ... IN OUT
    mend_interpreter_scalars()
    job = torch.load(sys.argv[1], weights_only=False)
    workspace = DecodeWorkspace()  # shared by the runs, as a decode step's calls share one
    torch.save([decode_attention(job["q"], job["cache"], run[1], run[0], workspace, *run[2:]) for run in job["runs"]],
               sys.argv[2])
