"""A KV cache [batch, layers, heads, seq, head_dim] stored in BF16, FP8 E4M3 (one scale per head) or NVFP4.

FP8 keeps one float32 scale per (batch, layer, head): a head's keys share a range, and
a per-head scale is what decode kernels can apply per tile. NVFP4 uses its own 1x16
blocks along head_dim with E4M3 block scales and one float32 scale per cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pytest_lowprec.formats.fp8 import quantize_over
from pytest_lowprec.formats.nvfp4 import NVFP4Tensor, quantize_nvfp4

FORMATS = ("bf16", "fp8", "nvfp4")


@dataclass(frozen=True)
class CacheShape:
    batch: int
    layers: int
    heads: int
    seq: int
    head_dim: int

    @property
    def dims(self) -> tuple[int, ...]:
        return (self.batch, self.layers, self.heads, self.seq, self.head_dim)

    def per_sequence(self) -> CacheShape:
        return CacheShape(1, self.layers, self.heads, self.seq, self.head_dim)


@dataclass(frozen=True)
class StoredKV:
    """One of K or V in its storage format; `nbytes` counts everything a kernel must read."""

    fmt: str
    data: torch.Tensor | NVFP4Tensor
    scales: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        if self.fmt == "nvfp4":
            return self.data.nbytes
        extra = self.scales.numel() * self.scales.element_size() if self.scales is not None else 0
        return self.data.numel() * self.data.element_size() + extra

    @property
    def tensors(self) -> list[torch.Tensor]:
        """The tensors a kernel reads (what nbytes counts, the per-tensor scalar aside)."""
        if self.fmt == "nvfp4":
            return [self.data.packed, self.data.block_scales]
        return [self.data] + ([self.scales] if self.scales is not None else [])

    def dequantize(self) -> torch.Tensor:
        if self.fmt == "bf16":
            return self.data.float()
        if self.fmt == "fp8":
            return self.data.float() * self.scales
        return self.data.dequantize()


def store(x: torch.Tensor, fmt: str) -> StoredKV:
    if fmt == "bf16":
        # A copy even when x is already bfloat16: a cache owns its storage (and the allocator test counts it).
        return StoredKV(fmt, x.to(torch.bfloat16, copy=True))
    if fmt == "fp8":
        return StoredKV(fmt, *quantize_over(x, (-2, -1)))
    if fmt == "nvfp4":
        return StoredKV(fmt, quantize_nvfp4(x))
    raise ValueError(f"unknown KV cache format {fmt!r}; valid: {', '.join(FORMATS)}")


def cache_bytes(shape: CacheShape, fmt: str, device: str = "cpu") -> int:
    """Bytes of K plus V for `shape` in `fmt`, counted from real tensors, scales included."""
    x = torch.zeros(shape.dims, device=device, dtype=torch.bfloat16)
    return 2 * store(x, fmt).nbytes


def largest_batch(budget_bytes: int, shape: CacheShape, fmt: str) -> int:
    """How many sequences of this shape fit a byte budget (the per-tensor NVFP4 scale counted once)."""
    one = cache_bytes(shape.per_sequence(), fmt)
    shared = 2 * 4 if fmt == "nvfp4" else 0  # NVFP4's per-tensor float32 scale, once per K and V
    return max(0, (budget_bytes - shared) // (one - shared))


def kv_data(shape: CacheShape, device: str, seed: int, outlier_channels: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys with a few large head_dim channels (as real K caches have), values without."""
    gen = torch.Generator(device=device).manual_seed(seed)
    k = torch.randn(shape.dims, generator=gen, device=device)
    v = torch.randn(shape.dims, generator=gen, device=device)
    k[..., :outlier_channels] *= 10.0
    return k.to(torch.bfloat16), v.to(torch.bfloat16)
