"""FP8 (E4M3 / E5M2) quantization with a float32 scale per tensor, per row, or per 1x128 block.

The scale maps the amax of its unit (tensor, row, block) onto the format's max:
    scale     = min(max_fp8 / amax, FLT_MAX)    (1 when amax is 0)
    q         = fp8(clamp(x * scale, -max_fp8, max_fp8))    round to nearest even
    inv_scale = 1 / scale,   x ~= q * inv_scale
The clamp to FLT_MAX is TransformerEngine's (compute_scale_from_amax) for an
amax so small that the division overflows (below max_fp8/FLT_MAX: 1.3e-36 for
E4M3, 1.7e-34 for E5M2): the scale stays finite and the inverse nonzero, so
tiny values still quantize to the nearest code the scale allows and zeros stay
zeros (an Inf scale made 0 * Inf = NaN). torchao bounds the scale by clamping
amax at 1e-12 instead, which would also change amaxes far above the overflow;
the FLT_MAX clamp changes nothing that did not overflow.

Saturating: values past +-max are clamped before the cast, so the result does
not depend on torch's own cast, which has changed between versions: torch 2.13's
eager E4M3 cast saturates (and maps Inf to 448) while earlier builds turned
overflow into NaN, and its E5M2 cast still overflows to Inf. With a given amax
(delayed scaling) an Inf input is past max like any other and saturates, as
TransformerEngine's saturating cast does. The sign of zero is IEEE's: -0.0
stays -0.

Non-finite input propagates; it is never clipped into finite codes:
- a NaN makes its unit's amax NaN, hence its scale and inverse scale NaN and
  every code of the unit NaN, as in torchao's float8 (torch.max propagates the
  NaN into the scale). A NaN poisons its tensor, row or 1x128 block as it
  poisons its block in OCP MX (mx.py), and reaches whatever reads the result
  (a loss scaler) as NaN. TransformerEngine's current scaling falls back to
  scale 1 for a NaN amax: that silently clips the unit's finite values, which
  is what this module did before and does not do now.
- an Inf makes the amax Inf and the scale 0: the Inf's code is NaN (Inf * 0,
  whose sign is the hardware's: x86 writes -NaN, CUDA +NaN), the others 0, and
  the inverse scale Inf, so the unit dequantizes to NaN.
"""

from __future__ import annotations

import torch

from .minifloat import require_block_multiple

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
FLT_MAX = torch.finfo(torch.float32).max


def fp8_max(dtype: torch.dtype) -> float:
    if dtype not in FP8_DTYPES:
        raise ValueError(f"not an FP8 dtype: {dtype}; use one of {FP8_DTYPES}")
    return float(torch.finfo(dtype).max)


def saturating_cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round to the nearest FP8 value, clamping to +-max (Inf too) instead of overflowing; NaN stays NaN."""
    limit = fp8_max(dtype)
    return x.float().clamp(-limit, limit).to(dtype)


def _scale_from_amax(amax: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # An all-zero tensor or row keeps scale 1, so dequantization stays exact (0 * 1); a NaN amax
    # goes through the division and the clamp as NaN (the module docstring says why).
    # A true division: `448.0 / amax` is computed by torch as amax.reciprocal() * 448,
    # which rounds twice and differs from a GPU kernel's IEEE division in the last bit.
    # Five kernels, as many as before the FLT_MAX clamp and NaN rule: eager FP8 linears quantize their
    # activation at every call, and three more tiny kernels each made an FP8 decode step 8% slower
    # (H200, 2026-11-30: the gate's "ms base / opt" column showed the optimized side alone slower).
    amax = amax.float()
    scale = torch.clamp(torch.div(torch.full_like(amax, fp8_max(dtype)), amax), max=FLT_MAX)
    return torch.where(amax == 0, 1.0, scale)  # a NaN amax is not 0: its NaN scale propagates


def quantize_tensorwise(x: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn, amax: torch.Tensor | None = None):
    """Returns (q, inv_scale): x ~= q.float() * inv_scale, inv_scale a 0-d float32 tensor.

    `amax` overrides x's own absolute maximum: a data-parallel rank passes the group's, so every
    shard is quantized with the scale one process would use on the whole batch."""
    scale = _scale_from_amax(x.detach().abs().amax() if amax is None else amax, dtype)
    return saturating_cast(x.float() * scale, dtype), torch.div(1.0, scale)


def quantize_over(x: torch.Tensor, dims: tuple[int, ...], dtype: torch.dtype = torch.float8_e4m3fn):
    """Returns (q, inv_scale) with one scale shared over `dims` (kept as size-1 dims in inv_scale):
    dims=(-1,) is rowwise; dims=(-2, -1) of a KV cache is one scale per head."""
    scale = _scale_from_amax(x.detach().abs().amax(dim=dims, keepdim=True), dtype)
    return saturating_cast(x.float() * scale, dtype), torch.div(1.0, scale)


def quantize_rowwise(x: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn):
    """Returns (q, inv_scale) with one scale per row: inv_scale has shape [rows, 1]."""
    return quantize_over(x, (-1,), dtype)


def quantize_blockwise(x: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn, block: int = 128):
    """Returns (q, inv_scale) with one scale per 1 x `block` run of the last dimension: [..., n/block]."""
    require_block_multiple(x.shape[-1], block, "the last dimension")
    blocks = x.float().unflatten(-1, (-1, block))
    scale = _scale_from_amax(blocks.detach().abs().amax(dim=-1, keepdim=True), dtype)
    q = saturating_cast(blocks * scale, dtype).flatten(-2)
    return q, torch.div(1.0, scale).squeeze(-1)


def dequantize(q: torch.Tensor, inv_scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q * inv_scale; a blockwise inv_scale ([..., n/block]) is expanded over its blocks."""
    values = q.float()
    if inv_scale.ndim == q.ndim and inv_scale.shape[-1] not in (1, q.shape[-1]):
        block = q.shape[-1] // inv_scale.shape[-1]
        return (values.unflatten(-1, (-1, block)) * inv_scale.unsqueeze(-1)).flatten(-2).to(dtype)
    return (values * inv_scale).to(dtype)


def scaled_mm(a_q: torch.Tensor, a_inv: torch.Tensor, b_q: torch.Tensor, b_inv: torch.Tensor,
              out_dtype: torch.dtype = torch.bfloat16, fast_accum: bool = True,
              bias: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b (+ bias, added in the GEMM's epilogue) on FP8 operands through torch._scaled_mm;
    b must be column-major (b.t() contiguous). On the CPU the same exact products (an E4M3 times an E4M3 is
    exact in float32) are summed by the float32 GEMM and scaled after: oneDNN runs an FP8 matmul as its
    reference loop on a CPU without FP8 units (`ref:any`; 1.1 s for 4096x64x256 on the CI's Xeon,
    2026-12-02, against 4 ms in float32), which put the FSDP2 benchmark's CPU check past its 400 s."""
    if b_q.stride(0) != 1:
        raise ValueError("b must be column-major for _scaled_mm: pass b.t().contiguous().t()")
    if a_q.device.type == "cpu":
        out = (a_q.float() @ b_q.float()) * (a_inv.float() * b_inv.float())
        return (out if bias is None else out + bias.float()).to(out_dtype)
    return torch._scaled_mm(a_q, b_q, scale_a=a_inv, scale_b=b_inv, bias=bias, out_dtype=out_dtype,
                            use_fast_accum=fast_accum)
