"""Small floating-point element formats (FP8, FP6, FP4): rounding, bit codes, decoding.

One arithmetic for every format, in float32 with only exact steps (frexp,
ldexp, scaling by powers of two) and one rounding (`torch.round`, ties to
even), so the CPU and the GPU give the same bits. Values past the format's
max saturate to +-max.

The sign of a zero: every format here has a -0 code. By default the result
keeps the input's sign, as IEEE 754 rounding and torch's FP8 casts do: -0.0
stays -0 and a negative value that rounds to zero is -0 (the rule of the FP8
and MX formats). NVFP4 asks for TransformerEngine's reference rule instead
(`keep_zero_sign=False`): the sign comes from `x < 0`, so a negative value that
rounds to zero is -0 but an input of -0.0 becomes +0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MiniFloat:
    name: str
    ebits: int
    mbits: int
    bias: int
    max: float
    torch_dtype: torch.dtype | None = None  # FP8 formats have a torch dtype; FP6/FP4 codes are uint8
    has_nan: bool = False
    has_inf: bool = False

    @property
    def bits(self) -> int:
        return 1 + self.ebits + self.mbits

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number."""
        return 1 - self.bias

    @property
    def smallest_subnormal(self) -> float:
        return 2.0 ** (self.emin - self.mbits)

    def round(self, x: torch.Tensor, *, stochastic: bool = False,
              generator: torch.Generator | None = None, keep_zero_sign: bool = True) -> torch.Tensor:
        """Nearest representable value (ties to even), or a stochastic rounding, saturated to +-max.

        Stochastic rounding picks one of the two neighbours with probability by distance,
        so its expectation is the input (below max). `keep_zero_sign=False` takes the sign from
        `x < 0` (TransformerEngine's NVFP4 rule: -0.0 becomes +0); see the module docstring.
        """
        x = x.float()
        a = x.abs().clamp(max=self.max)  # NaN stays NaN through clamp
        _, e = torch.frexp(a)
        exponent = (e - 1).clamp(min=self.emin)
        quantum = torch.ldexp(torch.ones_like(a), exponent - self.mbits)
        steps = a / quantum  # exact: quantum is a power of two
        if stochastic:
            noise = torch.rand(steps.shape, generator=generator, device=steps.device, dtype=torch.float32)
            steps = torch.floor(steps + noise)
        else:
            steps = torch.round(steps)
        v = (steps * quantum).clamp(max=self.max)
        return torch.where(torch.signbit(x) if keep_zero_sign else x < 0, -v, v)

    def encode(self, v: torch.Tensor) -> torch.Tensor:
        """Bit codes (uint8) of values that are already representable (the output of `round`)."""
        if self.torch_dtype is not None:
            return v.to(self.torch_dtype).view(torch.uint8)
        sign = torch.signbit(v).to(torch.uint8)
        a = v.abs()
        _, e = torch.frexp(a)
        exponent = e - 1
        subnormal = a < 2.0 ** self.emin
        exp_field = torch.where(subnormal, torch.zeros_like(exponent), exponent + self.bias)
        mant_sub = a / self.smallest_subnormal
        mant_norm = (torch.ldexp(a, -exponent) - 1.0) * (2 ** self.mbits)
        mant = torch.where(subnormal, mant_sub, mant_norm)
        return (sign << (self.ebits + self.mbits)) | (exp_field.to(torch.uint8) << self.mbits) | mant.to(torch.uint8)

    def table(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Value of every code, float32, indexed by code (FP6/FP4 formats, which have no NaN or Inf).
        Built on `device` itself: a host-to-device copy cannot be captured in a CUDA graph."""
        codes = torch.arange(2 ** self.bits, device=device)
        sign = torch.where(codes >> (self.ebits + self.mbits) == 1, -1.0, 1.0)
        exp_field = (codes >> self.mbits) & ((1 << self.ebits) - 1)
        mant = (codes & ((1 << self.mbits) - 1)).float()
        normal = torch.ldexp(1.0 + mant / 2 ** self.mbits, exp_field - self.bias)
        sub = mant * self.smallest_subnormal
        return sign * torch.where(exp_field == 0, sub, normal)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        if self.torch_dtype is not None:
            return codes.view(self.torch_dtype).float()
        return self.table(codes.device)[codes.long()]


E4M3 = MiniFloat("fp8_e4m3", 4, 3, 7, 448.0, torch.float8_e4m3fn, has_nan=True)
E5M2 = MiniFloat("fp8_e5m2", 5, 2, 15, 57344.0, torch.float8_e5m2, has_nan=True, has_inf=True)
E3M2 = MiniFloat("fp6_e3m2", 3, 2, 3, 28.0)
E2M3 = MiniFloat("fp6_e2m3", 2, 3, 1, 7.5)
E2M1 = MiniFloat("fp4_e2m1", 2, 1, 1, 6.0)
ELEMENTS: dict[str, MiniFloat] = {f.name: f for f in (E4M3, E5M2, E3M2, E2M3, E2M1)}


def element(name: str) -> MiniFloat:
    try:
        return ELEMENTS[name]
    except KeyError:
        raise ValueError(f"unknown element format {name!r}; valid: {', '.join(ELEMENTS)}") from None


def require_finite(x: torch.Tensor, fmt: str) -> None:
    """Formats without NaN/Inf codes reject non-finite input instead of encoding garbage."""
    bad = int((~torch.isfinite(x)).sum().item())
    if bad:
        raise ValueError(
            f"{bad} non-finite value(s) (NaN or Inf) in the input to {fmt}, which has no NaN or Inf "
            f"encoding; clean or mask the input (torch.nan_to_num) before quantizing"
        )


def require_block_multiple(length: int, block: int, what: str) -> None:
    if length % block:
        raise ValueError(
            f"{what} has length {length}, not a multiple of the block size {block}; pad it to "
            f"{-(-length // block) * block} (torch.nn.functional.pad) or choose a shape that divides"
        )
