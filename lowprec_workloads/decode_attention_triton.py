"""Split-K decode attention in Triton over a BF16, FP8 or FP8-K/NVFP4-V cache, dequantizing in the kernel.

One program per (sequence-head, split) walks BLOCK_N tokens at a time with an online
softmax, then a second kernel merges the splits (flash-decoding). The cache is read
once in its stored format: FP8 elements are widened in registers and their per-head
scale is folded into q (for K) and into the final sum (for V); NVFP4 V codes become
fp16 by placing the code's three magnitude bits under the fp16 exponent and mantissa
(worth 2**-14 of their E2M1 value), its block scales weight each token's contribution,
and 2**14 times the per-tensor scale is applied once at the end. On a GPU that placement
runs in inline PTX on 32-bit words, two codes per shift-and-mask (E2M1_DECODES "packed":
684 SASS instructions a thread per 64-token tile against 828 one element at a time);
Triton's interpreter, which runs no PTX, takes the same bits one element at a time
("bitwise"). A tensor-core variant (q repeated over an MMA's 16 rows, p split into two
16-bit halves) was no faster on an H100 and is not kept. CUDA and Triton only.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from .decode_attention import Cache

V_FORMATS = {"bf16": 0, "fp8": 1, "nvfp4": 2}
E2M1_DECODES = {"bitwise": 0, "packed": 1}
_MAX_BLOCK_N = 128
# (BLOCK_N, num_warps, pipeline stages) per (K, V) format: the fastest of a sweep on an H100
# (2026-11-22, `benchmarks/decode_attention_speed.py --sweep`; docs/measurements/kv-cache-h100-2026-11-22.md). Stages
# are tl.range's software pipelining: the next tiles' loads are in flight (cp.async) while one is
# reduced, which a latency-bound loop needs (NVFP4 V 0.823 ms without, 0.641 ms with two stages).
# Fixed, not autotuned: a gate needs the same kernel in every process.
TILES = {("bf16", "bf16"): (64, 8, 2), ("fp8", "fp8"): (128, 4, 2), ("fp8", "nvfp4"): (64, 4, 2)}


@triton.jit
def _e2m1_pairs_bitwise(byte):
    """Low and high nibble of each byte as float16 worth 2**-14 of their E2M1 value."""
    b = byte.to(tl.int16)
    lo = (((b & 7) << 9) | ((b & 8) << 12)).to(tl.float16, bitcast=True)
    hi = ((((b >> 4) & 7) << 9) | (b & 128) << 8).to(tl.float16, bitcast=True)
    return lo, hi


@triton.jit
def _e2m1_pairs_packed(byte):
    """The same bits as _e2m1_pairs_bitwise, four bytes per call on 32-bit words: prmt spreads two
    bytes into the low byte of each 16-bit half, then one shift and mask places both halves'
    magnitude bits under the float16 exponent and another their sign bits."""
    return tl.inline_asm_elementwise(
        asm="""
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
        """,
        constraints="=r,=r,=r,=r,r",
        args=[byte], dtype=(tl.float16, tl.float16), is_pure=True, pack=4)


@triton.jit
def _decode_partial_kernel(q_ptr, k_ptr, k_scale_ptr, v_ptr, v_scale_ptr, v_block_ptr, acc_ptr, ml_ptr,
                           seq, split_len, qk_scale,
                           K_FP8: tl.constexpr, V_FMT: tl.constexpr, D: tl.constexpr, NUM_SPLITS: tl.constexpr,
                           BLOCK_N: tl.constexpr, E2M1_DECODE: tl.constexpr, STAGES: tl.constexpr):
    bh = tl.program_id(0)
    split = tl.program_id(1)
    d = tl.arange(0, D)
    # log2(e) / sqrt(D) in q, so the softmax runs on exp2; the per-head K scale rides along.
    q = tl.load(q_ptr + bh * D + d).to(tl.float32) * qk_scale
    if K_FP8:
        q = q * tl.load(k_scale_ptr + bh)
    start = split * split_len
    end = tl.minimum(start + split_len, seq)
    m = -float("inf")
    denom = 0.0
    if V_FMT == 2:
        acc_lo = tl.zeros([BLOCK_N, D // 16, 8], dtype=tl.float32)  # even elements of each 16-block
        acc_hi = tl.zeros([BLOCK_N, D // 16, 8], dtype=tl.float32)  # odd elements
        blk = tl.arange(0, D // 16)
        pair = tl.arange(0, 8)
    else:
        acc = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    for n0 in tl.range(start, end, BLOCK_N, num_stages=STAGES):
        n = n0 + tl.arange(0, BLOCK_N)
        valid = n < end
        rows = (bh.to(tl.int64) * seq + n)
        k = tl.load(k_ptr + rows[:, None] * D + d[None, :], mask=valid[:, None], other=0.0).to(tl.float32)
        s = tl.where(valid, tl.sum(k * q[None, :], axis=1), -float("inf"))
        m_new = tl.maximum(m, tl.max(s, axis=0))
        # Rescale the running sums only when the maximum rises: over a long context it settles within
        # a few tiles; the multiply skipped is by exactly 1.0.
        if m_new > m:
            alpha = tl.math.exp2(m - m_new)
            denom = denom * alpha
            if V_FMT == 2:
                acc_lo = acc_lo * alpha
                acc_hi = acc_hi * alpha
            else:
                acc = acc * alpha
            m = m_new
        p = tl.math.exp2(s - m)
        denom = denom + tl.sum(p, axis=0)
        if V_FMT == 2:
            offs = rows[:, None, None] * (D // 2) + blk[None, :, None] * 8 + pair[None, None, :]
            byte = tl.load(v_ptr + offs, mask=valid[:, None, None], other=0)
            if E2M1_DECODE == 1:
                lo, hi = _e2m1_pairs_packed(byte)
            else:
                lo, hi = _e2m1_pairs_bitwise(byte)
            bscale = tl.load(v_block_ptr + rows[:, None] * (D // 16) + blk[None, :], mask=valid[:, None],
                             other=0.0).to(tl.float32)
            w = (p[:, None] * bscale)[:, :, None]
            acc_lo = acc_lo + w * lo.to(tl.float32)
            acc_hi = acc_hi + w * hi.to(tl.float32)
        else:
            v = tl.load(v_ptr + rows[:, None] * D + d[None, :], mask=valid[:, None], other=0.0).to(tl.float32)
            acc = acc + p[:, None] * v
    part = (bh * NUM_SPLITS + split).to(tl.int64)
    if V_FMT == 2:
        # 2**14 undoes the fp16 placement of the codes; the per-tensor scale is applied once here.
        v_scale = tl.load(v_scale_ptr) * 16384.0
        col = blk[:, None] * 16 + pair[None, :] * 2
        tl.store(acc_ptr + part * D + col, tl.sum(acc_lo, axis=0) * v_scale)
        tl.store(acc_ptr + part * D + col + 1, tl.sum(acc_hi, axis=0) * v_scale)
    else:
        out = tl.sum(acc, axis=0)
        if V_FMT == 1:
            out = out * tl.load(v_scale_ptr + bh)
        tl.store(acc_ptr + part * D + d, out)
    tl.store(ml_ptr + part * 2, m)
    tl.store(ml_ptr + part * 2 + 1, denom)


@triton.jit
def _decode_combine_kernel(acc_ptr, ml_ptr, out_ptr, D: tl.constexpr, NUM_SPLITS: tl.constexpr):
    bh = tl.program_id(0)
    s = tl.arange(0, NUM_SPLITS)
    d = tl.arange(0, D)
    part = bh * NUM_SPLITS + s
    m = tl.load(ml_ptr + part * 2)
    denom = tl.load(ml_ptr + part * 2 + 1)
    weight = tl.math.exp2(m - tl.max(m, axis=0))  # an empty split has m = -inf and weighs 0
    acc = tl.load(acc_ptr + part[:, None] * D + d[None, :])
    out = tl.sum(acc * weight[:, None], axis=0) / tl.sum(denom * weight, axis=0)
    tl.store(out_ptr + bh * D + d, out)


def num_splits(heads_total: int, seq: int, sm_count: int) -> int:
    """Enough programs for four per SM, never a split shorter than 256 tokens; a power of two."""
    want = max(1, min(triton.cdiv(4 * sm_count, heads_total), triton.cdiv(seq, 256)))
    return triton.next_power_of_2(want)


def decode_attention(q: torch.Tensor, cache: Cache, splits: int | None = None,
                     tile: tuple[int, int, int] | None = None, e2m1: str | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for q [batch, heads, head_dim] over `cache`; float32 [batch, heads, head_dim].

    `tile` is (BLOCK_N, num_warps, stages); by default the format's entry in TILES. `e2m1` is one of
    E2M1_DECODES: by default "packed", or "bitwise" under Triton's interpreter (TRITON_INTERPRET=1).
    """
    k_fmt, v_fmt = cache.k.fmt, cache.v.fmt
    if k_fmt not in ("bf16", "fp8") or v_fmt not in V_FORMATS:
        raise ValueError(f"no kernel for K {k_fmt!r} with V {v_fmt!r}; K takes bf16 or fp8, V {', '.join(V_FORMATS)}")
    batch, heads, head_dim = q.shape
    k_data = cache.k.data
    seq = k_data.shape[2]
    if head_dim % 16 or head_dim & (head_dim - 1):
        raise ValueError(f"head_dim must be a power of two and a multiple of 16, got {head_dim}")
    block_n, num_warps, stages = tile or TILES.get((k_fmt, v_fmt), (64, 4, 2))
    if _MAX_BLOCK_N % block_n:
        raise ValueError(f"BLOCK_N must divide {_MAX_BLOCK_N}, got {block_n}")
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    e2m1 = e2m1 or ("bitwise" if interpreted else "packed")
    if e2m1 not in E2M1_DECODES or (interpreted and e2m1 == "packed"):
        raise ValueError(f"e2m1 decode {e2m1!r} cannot run here; choose from "
                         f"{['bitwise'] if interpreted else list(E2M1_DECODES)} (the interpreter runs no PTX)")
    bh = batch * heads
    splits = splits or num_splits(bh, seq, torch.cuda.get_device_properties(q.device).multi_processor_count)
    split_len = triton.cdiv(triton.cdiv(seq, splits), _MAX_BLOCK_N) * _MAX_BLOCK_N
    dummy = torch.empty(1, dtype=torch.float32, device=q.device)  # never read; empty launches no fill kernel
    k_scale = cache.k.scales.reshape(bh).float().contiguous() if k_fmt == "fp8" else dummy
    if v_fmt == "nvfp4":
        v_data, v_scale = cache.v.data.packed, cache.v.data.global_decode.float().reshape(1)
        v_block = cache.v.data.block_scales
    else:
        v_data = cache.v.data
        v_scale = cache.v.scales.reshape(bh).float().contiguous() if v_fmt == "fp8" else dummy
        v_block = dummy
    acc = torch.empty(bh * splits, head_dim, dtype=torch.float32, device=q.device)
    ml = torch.empty(bh * splits, 2, dtype=torch.float32, device=q.device)
    out = torch.empty(batch, heads, head_dim, dtype=torch.float32, device=q.device)
    _decode_partial_kernel[(bh, splits)](
        q.contiguous(), k_data.contiguous(), k_scale, v_data.contiguous(), v_scale, v_block, acc, ml,
        seq, split_len, math.log2(math.e) / math.sqrt(head_dim),
        K_FP8=k_fmt == "fp8", V_FMT=V_FORMATS[v_fmt], D=head_dim, NUM_SPLITS=splits, BLOCK_N=block_n,
        E2M1_DECODE=E2M1_DECODES[e2m1], STAGES=stages, num_warps=num_warps)
    _decode_combine_kernel[(bh,)](acc, ml, out, D=head_dim, NUM_SPLITS=splits)
    return out
