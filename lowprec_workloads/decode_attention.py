"""Decode attention: one query token per sequence attending over a KV cache stored in BF16, FP8 or NVFP4.

The cache is one layer's [batch, heads, seq, head_dim], stored as kv_compression stores
it (FP8 with one float32 scale per (batch, head); NVFP4 with 1x16 blocks along
head_dim). The reference is float64 attention over the values a cache holds; the fast
path (decode_attention_triton, CUDA only) dequantizes inside the kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pytest_lowprec.roofline import Work

from .kv_compression import StoredKV, store

# (K format, V format) pairs the suite runs: the BF16 cache, FP8 K and V, FP8 K with NVFP4 V.
CACHES = {"bf16": ("bf16", "bf16"), "fp8": ("fp8", "fp8"), "fp8k_nvfp4v": ("fp8", "nvfp4")}


@dataclass(frozen=True)
class DecodeShape:
    batch: int
    heads: int
    seq: int
    head_dim: int

    @property
    def cache_dims(self) -> tuple[int, int, int, int]:
        return (self.batch, self.heads, self.seq, self.head_dim)


@dataclass(frozen=True)
class Cache:
    k: StoredKV
    v: StoredKV

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


def make_inputs(shape: DecodeShape, device: str, seed: int,
                outlier_channels: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q [batch, heads, head_dim] and bfloat16 K, V from N(0, 1); `outlier_channels` key channels
    are 10x larger, as real K caches have."""
    gen = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(shape.batch, shape.heads, shape.head_dim, generator=gen, device=device).to(torch.bfloat16)
    k = torch.randn(shape.cache_dims, generator=gen, device=device)
    k[..., :outlier_channels] *= 10.0
    k = k.to(torch.bfloat16)
    v = torch.randn(shape.cache_dims, generator=gen, device=device).to(torch.bfloat16)
    return q, k, v


def build_cache(k: torch.Tensor, v: torch.Tensor, cache: str) -> Cache:
    if cache not in CACHES:
        raise ValueError(f"unknown cache {cache!r}; valid: {', '.join(CACHES)}")
    k_fmt, v_fmt = CACHES[cache]
    return Cache(store(k, k_fmt), store(v, v_fmt))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per (batch, head), in `dtype`, over already-dequantized K and V."""
    out = []
    for b in range(q.shape[0]):  # a sequence at a time: float64 copies of a 32K-token cache are large
        qb, kb, vb = q[b].to(dtype), k[b].to(dtype), v[b].to(dtype)
        scores = torch.einsum("hd,hsd->hs", qb, kb) / math.sqrt(q.shape[-1])
        out.append(torch.einsum("hs,hsd->hd", torch.softmax(scores, dim=-1), vb))
    return torch.stack(out)


def attend_cache(q: torch.Tensor, cache: Cache, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Dequantize, then attend: the eager path, and the reference a kernel over `cache` must match."""
    return attend(q, cache.k.dequantize(), cache.v.dequantize(), dtype)


def decode_work(q: torch.Tensor, cache: Cache) -> Work:
    """What the split-K decode kernel must move: the cache once, q, and the float32 output, in one launch
    (the last split of each sequence-head merges the splits, `Tile.combine` "fused"); its FLOPs are few
    next to its bytes."""
    out_bytes = q.numel() * 4
    return Work(nbytes=cache.nbytes + q.numel() * q.element_size() + out_bytes, kernels=1)


def format_bytes(shape: DecodeShape, cache: str) -> int:
    """What a cache of `shape` must take in its formats, from their definitions: BF16 two bytes an element;
    FP8 one, plus a float32 scale per (batch, head); NVFP4 half a byte, plus an E4M3 scale per 16 elements
    and a float32 scale per tensor."""
    elements, heads = math.prod(shape.cache_dims), shape.batch * shape.heads
    per_format = {"bf16": 2 * elements, "fp8": elements + 4 * heads, "nvfp4": elements // 2 + elements // 16 + 4}
    return sum(per_format[fmt] for fmt in CACHES[cache])
