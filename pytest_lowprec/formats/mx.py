"""OCP Microscaling (MX) formats: blocks of 32 elements sharing a power-of-two (E8M0) scale.

Two ways to choose a block's shared exponent s (scale 2**s, E8M0 code s + 127):
- "floor" (OCP MX v1.0, section 6.3, the default): s = floor(log2(amax)) minus
  the element's largest exponent, so the block's amax lands in the element's
  top binade; an amax between the element's max and the binade's top
  (448..512 for E4M3) saturates to max. An all-zero block gets s = 0 (scale 1).
- "rceil" (cuBLAS's MXFP8 and the Blackwell instruction cvt.rp.satfinite.ue8m0x2.f32,
  "scale = round_up(amax / max)" in cuDNN's block scale quantize): the smallest
  s >= -127 with amax / 2**s <= max, so no element saturates. It is the floor
  exponent plus one exactly when amax's significand exceeds max's (the block
  amax 480 = 1.875 * 2**8 against E4M3's 448 = 1.75 * 2**8). An all-zero block
  gets s = -127 (E8M0 0), what TransformerEngine's emulation of the instruction
  gives for 0. It equals round_up(amax / max) computed in float32, as CUDA
  kernels do, for every float32 amax but one per format: the one just above
  max * 2**-127, whose quotient is subnormal and rounds down to 2**-127
  (the instruction then gives E8M0 0 and lets that amax saturate by an ulp).
Both are computed from amax's exponent and significand, with no division; s is
clamped to [-127, 127], E8M0's finite range. `scaled_mm_mx_scale_mode` says
which one a GEMM on a given GPU expects. Elements are then rounded to nearest
even and saturated at the element's max.

Non-finite input (OCP MX: a NaN scale makes the whole block NaN whatever its
elements hold; under a finite scale an element keeps its format's own Inf/NaN):
- MXFP8 (E4M3 / E5M2 elements): a block holding a NaN gets the NaN scale
  (E8M0 0xFF) and NaN in every element code; it decodes to NaN. An Inf with E5M2
  elements is encoded as the element's Inf: it does not set the scale, so its
  finite neighbours quantize as they would without it, and it decodes to Inf.
  E4M3 has no Inf: converting one gives NaN (OCP FP8's non-saturating rule;
  OCP MX clamps only normal numbers to max), and the block is then a NaN block.
- MXFP6 / MXFP4 elements have no NaN or Inf code: non-finite input is an error
  that counts the values, so the caller cleans or masks it first.
The sign of a zero is IEEE's: -0.0 stays -0 (minifloat's docstring).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .minifloat import MiniFloat, element, require_block_multiple, require_finite
from .packing import pack_fp4, pack_fp6

BLOCK = 32
E8M0_BIAS = 127
E8M0_NAN = 0xFF
SCALE_MODES = ("floor", "rceil")
MX_ELEMENTS = {"mxfp8": "fp8_e4m3", "mxfp8_e5m2": "fp8_e5m2", "mxfp6": "fp6_e2m3",
               "mxfp6_e3m2": "fp6_e3m2", "mxfp4": "fp4_e2m1"}


def _emax(fmt: MiniFloat) -> int:
    _, e = torch.frexp(torch.tensor(fmt.max))
    return int(e) - 1


def _check_scale_mode(scale_mode: str) -> None:
    if scale_mode not in SCALE_MODES:
        raise ValueError(f"unknown MX scale mode {scale_mode!r}; valid: {', '.join(SCALE_MODES)}")


def shared_exponents(amax: torch.Tensor, elem: MiniFloat, scale_mode: str = "floor") -> torch.Tensor:
    """Shared exponent s (int32, in [-127, 127]) of blocks with this finite, non-negative float32 amax."""
    _check_scale_mode(scale_mode)
    significand, e = torch.frexp(amax)
    floor = e - 1 - _emax(elem)
    if scale_mode == "floor":
        s = torch.where(amax > 0, floor, torch.zeros_like(e))
    else:
        # amax = m * 2**e and max = M * 2**E with m, M in [0.5, 1): amax / 2**(e - E) = (m / M) * max,
        # within max exactly when m <= M, and e - E is the floor exponent.
        max_significand, _ = torch.frexp(torch.tensor(elem.max))
        s = floor + (significand > float(max_significand)).to(e.dtype)
        s = torch.where(amax > 0, s, torch.full_like(e, -E8M0_BIAS))
    return s.clamp(-E8M0_BIAS, E8M0_BIAS)


def scaled_mm_mx_scale_mode(capability: tuple[int, int]) -> str:
    """The scale mode for MX operands of torch._scaled_mm on a GPU of this compute capability.

    "rceil" from sm_100 (Blackwell) on, where the MX GEMMs run natively: cuBLAS's MXFP8 and the
    conversion instructions (cvt.rp.satfinite.ue8m0x2.f32) compute E8M0 scales that way, so operands a
    reference path feeds the GEMM carry the scales the GPU's own quantizers give, bit for bit, and no
    block amax saturates. "floor" (OCP's) below: no MX GEMM runs natively there (sm_90 answers
    CUBLAS_STATUS_NOT_SUPPORTED) and emulated paths take the default.
    `capability` is (major, minor), as torch.cuda.get_device_capability() returns it:
        quantize_mx(x, "mxfp8", scale_mode=scaled_mm_mx_scale_mode(torch.cuda.get_device_capability()))
    """
    if (not isinstance(capability, tuple) or len(capability) != 2
            or not all(isinstance(v, int) and v >= 0 for v in capability)):
        raise ValueError(f"capability must be (major, minor) as torch.cuda.get_device_capability() returns it, "
                         f"got {capability!r}")
    return "rceil" if capability >= (10, 0) else "floor"


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
        """What one unit of an element's value stands for: its block's power of two (NaN for a NaN block)."""
        scales = self.scales.repeat_interleave(BLOCK, dim=-1)
        exponents = scales.to(torch.int32) - E8M0_BIAS
        powers = torch.ldexp(torch.ones_like(exponents, dtype=torch.float32), exponents)
        return torch.where(scales == E8M0_NAN, torch.full_like(powers, math.nan), powers)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Element values times their block's scale; every element of a block with the NaN scale is NaN."""
        values = self.element.decode(self.codes).unflatten(-1, (-1, BLOCK))
        exponents = (self.scales.to(torch.int32) - E8M0_BIAS).unsqueeze(-1)
        out = torch.ldexp(values, exponents)
        out = torch.where((self.scales == E8M0_NAN).unsqueeze(-1), torch.full_like(out, math.nan), out)
        return out.flatten(-2).reshape(self.shape).to(dtype)


def quantize_mx(x: torch.Tensor, fmt: str, *, stochastic: bool = False,
                generator: torch.Generator | None = None, scale_mode: str = "floor") -> MXTensor:
    """Quantize the last dimension in blocks of 32; `scale_mode` "floor" (OCP) or "rceil" (module docstring)."""
    elem = mx_element(fmt)
    _check_scale_mode(scale_mode)
    if not elem.has_nan:
        require_finite(x, fmt)
    require_block_multiple(x.shape[-1], BLOCK, "the last dimension")
    blocks = x.float().unflatten(-1, (-1, BLOCK))
    magnitudes = blocks.abs()
    if elem.has_inf:
        # An Inf is encoded as the element's Inf, so it does not set the block's scale.
        magnitudes = torch.where(torch.isinf(magnitudes), torch.zeros_like(magnitudes), magnitudes)
    amax = magnitudes.amax(dim=-1, keepdim=True)  # NaN propagates; so does an Inf the element cannot encode
    nan_block = ~torch.isfinite(amax)
    shared = shared_exponents(torch.where(nan_block, torch.zeros_like(amax), amax), elem, scale_mode)
    scaled = torch.ldexp(blocks, -shared)
    values = elem.round(scaled, stochastic=stochastic, generator=generator)
    if elem.has_inf:
        values = torch.where(torch.isinf(scaled), scaled, values)  # round saturates an Inf; the element keeps it
    values = torch.where(nan_block, torch.full_like(values, math.nan), values)
    codes = elem.encode(values)
    scales = torch.where(nan_block, torch.full_like(shared, E8M0_NAN), shared + E8M0_BIAS)
    return MXTensor(codes=codes.flatten(-2), scales=scales.squeeze(-1).to(torch.uint8), fmt=fmt, shape=tuple(x.shape))
