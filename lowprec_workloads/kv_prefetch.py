"""KV prefetch overlap: decode attention over an FP8 cache streamed through shared memory.

Device side: kernels/kv_prefetch.cu computes split-K attention partials with two schedules of
identical arithmetic, serial (load a tile, then compute it) and overlapped (cp.async double
buffering: the next tile loads while this one computes); `combine` finishes both the same way.
Host side: see stream_overlap.py (chunked host-to-device prefetch on a copy stream).
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass

import torch

from pytest_lowprec.formats.fp8 import quantize_over

from . import kernels
from .decode_attention import attend

_VOID, _INT = ctypes.c_void_p, ctypes.c_int
SIGNATURES = {"kv_decode_partial": [_INT, _INT, _VOID, _VOID, _VOID, _VOID, _VOID, _INT, _INT, _INT, _VOID]}
HEAD_DIM = 128
TILE_TOKENS = 128
LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class FP8Cache:
    """K and V in E4M3 [BH, S, D] with one scale per (batch, head)."""

    k: torch.Tensor
    v: torch.Tensor
    k_scale: torch.Tensor  # float32 [BH]: real = stored * scale
    v_scale: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.k.numel() + self.v.numel() + 4 * (self.k_scale.numel() + self.v_scale.numel())


def make_cache(bh: int, seq: int, device: str, seed: int = 3) -> tuple[torch.Tensor, FP8Cache]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(bh, HEAD_DIM, generator=g).to(device)
    k = torch.randn(bh, seq, HEAD_DIM, generator=g).to(device)
    v = torch.randn(bh, seq, HEAD_DIM, generator=g).to(device)
    k8, k_inv = quantize_over(k, (1, 2))
    v8, v_inv = quantize_over(v, (1, 2))
    return q, FP8Cache(k8, v8, k_inv.reshape(bh).float(), v_inv.reshape(bh).float())


def reference(q: torch.Tensor, cache: FP8Cache) -> torch.Tensor:
    """float64 attention of one query per head over the values the cache stores (dequantized in
    float64, so exactly), through decode_attention's reference with each (batch, head) a batch."""
    k = cache.k.double() * cache.k_scale.double()[:, None, None]
    v = cache.v.double() * cache.v_scale.double()[:, None, None]
    return attend(q[:, None], k[:, None], v[:, None])[:, 0]


def combine(part_acc: torch.Tensor, part_ml: torch.Tensor, v_scale: torch.Tensor) -> torch.Tensor:
    """Merge per-split partials (base-2 running max and sum) into the attention output."""
    m, total = part_ml[..., 0], part_ml[..., 1]
    weight = torch.exp2(m - m.amax(dim=1, keepdim=True))
    out = (part_acc * weight[..., None]).sum(dim=1) / (total * weight).sum(dim=1)[:, None]
    return out * v_scale[:, None]


class KVPrefetchKernel:
    """kernels/kv_prefetch.cu for one device; `run(q, cache, overlap)` returns the attention output."""

    def __init__(self, device: torch.device, splits: int = 16):
        self.device = torch.device(device)
        self.splits = splits
        self._lib = kernels.load("kv_prefetch", torch.cuda.get_device_capability(self.device), SIGNATURES)

    def workspace(self, bh: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.empty(bh, self.splits, HEAD_DIM, device=self.device),
                torch.empty(bh, self.splits, 2, device=self.device))

    def run(self, q: torch.Tensor, cache: FP8Cache, *, overlap: bool, workspace=None) -> torch.Tensor:
        bh, seq, dim = cache.k.shape
        if dim != HEAD_DIM or seq % (self.splits * TILE_TOKENS):
            raise ValueError(f"the kernel takes head_dim {HEAD_DIM} and a sequence that is a multiple of "
                             f"splits x {TILE_TOKENS} = {self.splits * TILE_TOKENS}; got [BH, S, D] = {[bh, seq, dim]}")
        part_acc, part_ml = workspace or self.workspace(bh)
        # Scores in base 2 with the key scale folded in: exp2 in the kernel is exp of the real score.
        q_scaled = (q.float() * (cache.k_scale[:, None] * (LOG2E / math.sqrt(dim)))).contiguous()
        stream = torch.cuda.current_stream(self.device).cuda_stream
        self._lib.call("kv_decode_partial", self.device.index, int(overlap), q_scaled.data_ptr(),
                       cache.k.data_ptr(), cache.v.data_ptr(), part_acc.data_ptr(), part_ml.data_ptr(),
                       bh, seq, self.splits, stream)
        return combine(part_acc, part_ml, cache.v_scale)
