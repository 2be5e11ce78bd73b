"""OCP Microscaling (MX) formats: blocks of 32 elements sharing a power-of-two (E8M0) scale.

The shared exponent of a block is floor(log2(amax)) minus the element format's
largest exponent (OCP MX v1.0, section 6.3), so the block's amax lands in the
element's top binade; elements are then rounded to nearest even and saturated.
An all-zero block gets exponent 0 (scale 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .minifloat import MiniFloat, element, require_block_multiple, require_finite
from .packing import pack_fp4, pack_fp6

BLOCK = 32
E8M0_BIAS = 127
MX_ELEMENTS = {"mxfp8": "fp8_e4m3", "mxfp8_e5m2": "fp8_e5m2", "mxfp6": "fp6_e2m3",
               "mxfp6_e3m2": "fp6_e3m2", "mxfp4": "fp4_e2m1"}


def _emax(fmt: MiniFloat) -> int:
    _, e = torch.frexp(torch.tensor(fmt.max))
    return int(e) - 1


def mx_element(name: str) -> MiniFloat:
    if name not in MX_ELEMENTS:
        raise ValueError(f"unknown MX format {name!r}; valid: {', '.join(MX_ELEMENTS)}")
    return element(MX_ELEMENTS[name])


@dataclass(frozen=True)
class MXTensor:
    codes: torch.Tensor  # uint8 element codes [..., n], unpacked
    scales: torch.Tensor  # uint8 E8M0 (biased exponent) [..., n/32]
    fmt: str
    shape: tuple[int, ...]

    @property
    def element(self) -> MiniFloat:
        return mx_element(self.fmt)

    def packed(self) -> torch.Tensor:
        bits = self.element.bits
        return {4: pack_fp4, 6: pack_fp6}.get(bits, lambda c: c)(self.codes)

    @property
    def nbytes(self) -> int:
        """Packed elements (4, 6 or 8 bits each) plus one scale byte per block."""
        return self.codes.numel() * self.element.bits // 8 + self.scales.numel()

    def element_scale(self) -> torch.Tensor:
        """What one unit of an element's value stands for: its block's power of two."""
        exponents = (self.scales.to(torch.int32) - E8M0_BIAS).repeat_interleave(BLOCK, dim=-1)
        return torch.ldexp(torch.ones_like(exponents, dtype=torch.float32), exponents)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        values = self.element.decode(self.codes).unflatten(-1, (-1, BLOCK))
        exponents = self.scales.to(torch.int32) - E8M0_BIAS
        return torch.ldexp(values, exponents.unsqueeze(-1)).flatten(-2).reshape(self.shape).to(dtype)


def quantize_mx(x: torch.Tensor, fmt: str, *, stochastic: bool = False,
                generator: torch.Generator | None = None) -> MXTensor:
    elem = mx_element(fmt)
    if not elem.has_nan:
        require_finite(x, fmt)
    require_block_multiple(x.shape[-1], BLOCK, "the last dimension")
    blocks = x.float().unflatten(-1, (-1, BLOCK))
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    _, e = torch.frexp(amax)
    shared = torch.where(amax > 0, e - 1 - _emax(elem), torch.zeros_like(e)).clamp(-E8M0_BIAS, E8M0_BIAS)
    scaled = torch.ldexp(blocks, -shared)
    codes = elem.encode(elem.round(scaled, stochastic=stochastic, generator=generator))
    return MXTensor(codes=codes.flatten(-2), scales=(shared + E8M0_BIAS).squeeze(-1).to(torch.uint8),
                    fmt=fmt, shape=tuple(x.shape))
