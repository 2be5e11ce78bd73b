"""NVFP4: E2M1 elements in blocks of 16 (1x16, or 16x16 tiles for weights), an E4M3
scale per block and a float32 scale per tensor.

The arithmetic follows NVIDIA's reference quantizer (TransformerEngine
custom_recipes) step by step, in float32:
    global_encode = min(448*6 / amax(x), FLT_MAX)   (1 when amax is 0)
    block_decode  = e4m3(min(amax(block) * (global_encode * (1/6)), 448))
    encode        = min(1 / (float(block_decode) * (1/global_encode)), FLT_MAX)
    element       = e2m1(clamp(x * encode, -6, 6))   ties to even
and dequantizes as element * block_decode * (1/global_encode).

A tensor whose amax is below 2688/FLT_MAX (about 7.9e-36) gets the largest
finite encode scale, as TransformerEngine's reference does, so its block
scales stay in E4M3's range instead of underflowing to 0 (which would zero
the tensor). An all-zero tensor keeps scale 1 (TE would give FLT_MAX; both
dequantize to zeros, 1 keeps the decode scale exact). An Inf amax (reachable
only with `check_finite=False` or a given amax) gives encode 0, which TE also
replaces by 1. The sign of a zero follows TE (minifloat's docstring): -0.0
encodes as +0, a negative value that rounds to zero as -0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .minifloat import E2M1, require_block_multiple, require_finite
from .packing import pack_fp4, unpack_fp4

BLOCK = 16
FP4_MAX = 6.0
E4M3_MAX = 448.0
FLT_MAX = torch.finfo(torch.float32).max


def global_scales(amax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(encode, decode, encode/6) per-tensor scales from amax, float32 on amax's device."""
    # full_like, not torch.tensor(..., device=...): no host-to-device copy, so CUDA graphs can capture it.
    amax = amax.float()
    encode = torch.clamp(torch.div(torch.full_like(amax, E4M3_MAX * FP4_MAX), amax), max=FLT_MAX)
    encode = torch.where((amax > 0) & (encode > 0), encode, torch.ones_like(encode))
    decode = torch.div(1.0, encode)
    multiplier = encode * torch.div(1.0, torch.full_like(amax, FP4_MAX))
    return encode, decode, multiplier


@dataclass(frozen=True)
class NVFP4Tensor:
    packed: torch.Tensor  # uint8 [rows, cols/2], element 2i in the low nibble
    block_scales: torch.Tensor  # float8_e4m3fn [rows, cols/16] (1x16) or [rows/16, cols/16] (16x16)
    global_decode: torch.Tensor  # float32 scalar; or [rows, 1], one per row: tensors stacked (`concatenated`)
    shape: tuple[int, ...]
    tile: tuple[int, int]  # (1, 16) or (16, 16)

    @classmethod
    def concatenated(cls, parts: list[NVFP4Tensor]) -> NVFP4Tensor:
        """2-D tensors quantized apart, stacked along their rows with each row keeping its own tensor's
        scale (global_decode [rows, 1]): the same values, bit for bit, as the parts, where quantizing the
        stack as one tensor would round other block scales. What a decode engine's merged QKV linear
        reads; the kernels that take it say so (nvfp4_gemm's GEMV, decode linear and tiled kernel)."""
        if not parts:
            raise ValueError("concatenated takes at least one NVFP4 tensor")
        first = parts[0]
        for i, p in enumerate(parts):
            if len(p.shape) != 2 or p.shape[1] != first.shape[1] or p.tile != first.tile:
                raise ValueError(f"concatenated stacks 2-D tensors of one width and tile; part {i} has shape "
                                 f"{tuple(p.shape)} and tile {p.tile}, part 0 {tuple(first.shape)} and {first.tile}")
        decode = torch.cat([p.global_decode.float().reshape(-1, 1).expand(p.shape[0], 1) for p in parts])
        return cls(packed=torch.cat([p.packed for p in parts]), block_scales=torch.cat([p.block_scales for p in parts]),
                   global_decode=decode.contiguous(), shape=(int(decode.shape[0]), first.shape[1]), tile=first.tile)

    @property
    def row_scaled(self) -> bool:
        """Whether each row carries its own tensor scale (`concatenated`), not one for the tensor."""
        return self.global_decode.numel() != 1

    @property
    def nbytes(self) -> int:
        """Storage a kernel reads: packed elements, block scales and the tensor scale (one a row when
        `row_scaled`)."""
        return self.packed.numel() + self.block_scales.numel() + 4 * self.global_decode.numel()

    @property
    def codes(self) -> torch.Tensor:
        """E2M1 codes, one per element (unpacked)."""
        return unpack_fp4(self.packed)

    def _block_scale_per_element(self) -> torch.Tensor:
        s = self.block_scales.float()
        if self.tile == (16, 16):
            s = s.repeat_interleave(BLOCK, dim=0)
        return s.repeat_interleave(BLOCK, dim=1)

    def element_scale(self) -> torch.Tensor:
        """What one unit of an element's E2M1 value stands for: block scale times tensor scale,
        the product whose reciprocal the quantizer multiplied by."""
        return self._block_scale_per_element() * self.global_decode

    def block_values(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        """E2M1 values times their block scales, without the per-tensor scale, as a 2-D [rows, cols]
        tensor: what a block-scaled GEMM multiplies. Exact in bfloat16 (at most six significant bits,
        magnitudes between 2**-10 and 2688)."""
        values = E2M1.decode(self.codes) * self._block_scale_per_element()
        return values.reshape(-1, self.shape[-1]).to(dtype)

    def transposed(self) -> NVFP4Tensor:
        """The 2-D tensor's transpose in the same format: exact for 16x16 tiles, whose scale covers a
        square (so W and W.T hold the same values); 1x16 blocks run along the other dimension after a
        transpose and must be quantized again."""
        if self.tile != (BLOCK, BLOCK) or len(self.shape) != 2:
            raise ValueError(f"only a 2-D NVFP4 tensor with 16x16 tiles transposes exactly; this one has shape "
                             f"{self.shape} and tile {self.tile}: quantize the transpose instead")
        if self.row_scaled:
            raise ValueError("a stack with a tensor scale per row (concatenated) does not transpose: transpose "
                             "its parts")
        codes = self.codes.reshape(self.shape).t().contiguous()
        return NVFP4Tensor(packed=pack_fp4(codes), block_scales=self.block_scales.t().contiguous(),
                           global_decode=self.global_decode, shape=(self.shape[1], self.shape[0]), tile=self.tile)

    def row_blocks(self) -> NVFP4Tensor:
        """The same values with one scale per 1x16 block (a 16x16 tile's scale repeated over its 16
        rows): the layout a 1D block-scaled GEMM reads."""
        if self.tile == (1, BLOCK):
            return self
        return NVFP4Tensor(packed=self.packed, block_scales=self.block_scales.repeat_interleave(BLOCK, dim=0),
                           global_decode=self.global_decode, shape=self.shape, tile=(1, BLOCK))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        values = E2M1.decode(self.codes)
        out = values * self._block_scale_per_element() * self.global_decode
        return out.reshape(self.shape).to(dtype)


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    if x.ndim == 0:
        raise ValueError("NVFP4 quantizes tensors of at least one dimension")
    return x.reshape(-1, x.shape[-1])


def quantize_nvfp4(
    x: torch.Tensor,
    *,
    tile: tuple[int, int] = (1, BLOCK),
    stochastic: bool = False,
    generator: torch.Generator | None = None,
    amax: torch.Tensor | None = None,
    check_finite: bool = True,
) -> NVFP4Tensor:
    """Quantize to NVFP4. `tile=(16, 16)` is the recipe's 2D weight scaling.

    `amax` may be given (delayed scaling); by default it is the tensor's own.
    `stochastic=True` rounds elements stochastically (the recipe's gradients).
    `check_finite=False` skips the NaN/Inf check (one more pass and a host sync)
    for callers that have already checked.
    """
    if tile not in ((1, BLOCK), (BLOCK, BLOCK)):
        raise ValueError(f"NVFP4 tiles are (1, 16) or (16, 16), got {tile}")
    if check_finite:
        require_finite(x, "NVFP4")
    x2 = _as_2d(x).float()
    rows, cols = x2.shape
    require_block_multiple(cols, BLOCK, "the last dimension")
    if tile[0] == BLOCK:
        require_block_multiple(rows, BLOCK, "the row count (16x16 tiles)")
    amax = x2.abs().amax() if amax is None else amax.float().to(x2.device)
    _, decode, multiplier = global_scales(amax)
    blocks = x2.reshape(rows // tile[0], tile[0], cols // BLOCK, BLOCK)
    block_amax = blocks.abs().amax(dim=(1, 3), keepdim=True)
    block_decode = torch.clamp(block_amax * multiplier, max=E4M3_MAX).to(torch.float8_e4m3fn)
    encode = torch.clamp(torch.div(1.0, block_decode.float() * decode), max=FLT_MAX)
    scaled = torch.clamp(blocks * encode, -FP4_MAX, FP4_MAX).reshape(rows, cols)
    codes = E2M1.encode(E2M1.round(scaled, stochastic=stochastic, generator=generator, keep_zero_sign=False))
    return NVFP4Tensor(
        packed=pack_fp4(codes),
        block_scales=block_decode.reshape(rows // tile[0], cols // BLOCK),
        global_decode=decode,
        shape=tuple(x.shape),
        tile=tile,
    )
