"""Bit packing of sub-byte codes: FP4 two per byte, FP6 four per three bytes."""

from __future__ import annotations

import torch

from .minifloat import require_block_multiple


def pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    """[..., n] uint8 codes (0-15) -> [..., n/2] bytes, element 2i in the low nibble.

    That is the order of torch.float4_e2m1fn_x2 and of TransformerEngine's fp4x2,
    so `pack_fp4(c).view(torch.float4_e2m1fn_x2)` is what torch's NVFP4 GEMM reads.
    """
    require_block_multiple(codes.shape[-1], 2, "the packed (last) dimension")
    c = codes.to(torch.uint8)
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    p = packed.view(torch.uint8) if packed.dtype != torch.uint8 else packed
    return torch.stack((p & 0xF, p >> 4), dim=-1).flatten(-2)


def pack_fp6(codes: torch.Tensor) -> torch.Tensor:
    """[..., n] uint8 codes (0-63) -> [..., 3n/4] bytes.

    Four codes form one little-endian 24-bit word, c0 in bits 0-5 ... c3 in bits 18-23.
    """
    require_block_multiple(codes.shape[-1], 4, "the packed (last) dimension")
    c = codes.to(torch.int32).unflatten(-1, (-1, 4))
    word = c[..., 0] | (c[..., 1] << 6) | (c[..., 2] << 12) | (c[..., 3] << 18)
    return torch.stack((word & 0xFF, (word >> 8) & 0xFF, (word >> 16) & 0xFF), dim=-1).flatten(-2).to(torch.uint8)


def unpack_fp6(packed: torch.Tensor) -> torch.Tensor:
    b = packed.to(torch.int32).unflatten(-1, (-1, 3))
    word = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    return torch.stack([(word >> s) & 0x3F for s in (0, 6, 12, 18)], dim=-1).flatten(-2).to(torch.uint8)
