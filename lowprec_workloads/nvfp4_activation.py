"""A decode step's NVFP4 activation in one launch: quantized as nvfp4.quantize_nvfp4 quantizes it (1x16
blocks, an E4M3 scale a block, a float32 scale the tensor) and dequantized to bfloat16 for the kernel after it.

Hopper has no FP4 tensor cores, so the `nvfp4` strategy's linears (NVFP4 weights and activations) multiply
the activation's NVFP4 values in bfloat16: quantize, dequantize, then the NVFP4-weight GEMV. Eagerly that is
quantize_nvfp4 and NVFP4Tensor.dequantize, 92 ATen operators a linear over a few kilobytes each; an H200
ran the nvfp4_weights decode step (14 linears, an FP8 KV cache) in 2.23 ms where w4a16's (the same weights,
16-bit activations, a BF16 cache) took 0.31 ms (2026-12-02, CUDA-graph replays); with this launch, 0.30 ms.
Here one launch does it. Every program takes the tensor's amax (each rereads the activation's magnitudes, a
few kilobytes from L2, as fp8_linear's GEMV does for its E4M3 scale), then quantizes and dequantizes _CHUNK
elements.

The arithmetic is the reference's, step by step in float32 (nvfp4.py's docstring): the per-tensor scales
with IEEE divisions, the block scale's E4M3 rounding, TransformerEngine's E2M1 ties (triton_quant's
_e2m1_codes), and the dequantization's two products in the reference's order, rounded once to bfloat16. The
bits equal quantize_nvfp4(x, check_finite=False).dequantize().to(bfloat16); a NaN makes its block NaN
as there (the payload aside), an Inf saturates. The bfloat16 tensors are read and
written as their bits, converted in integer arithmetic (exact, ties to even on the way out): Triton's
interpreter decodes subnormal bfloat16 wrongly (2.3e-39 read as 6.6e-39, Triton 3.9) and truncates where
the GPU rounds. It also rounds some values to E4M3 across a binade wrongly, so there the block scale is
rounded in integer and float32 arithmetic (fp8_linear's `HW=False`): the tests check the interpreter's bits
on the CPU and the hardware's on a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pytest_lowprec.formats.nvfp4 import BLOCK, FLT_MAX
from pytest_lowprec.formats.triton_quant import _ONE_SIXTH, _bf16_value, _e2m1_codes, _e2m1_value, _magnitude_bits
from pytest_lowprec.roofline import Work

from .fp8_linear import _amax_pass, _e4m3_values
from .interpreted import interpreting, mend_interpreter_scalars, run_interpreted

# What runs on CUDA, for a workload's signature (a baseline recorded on the eager quantizer is stale).
CUDA_PATH = "triton: nvfp4 quantize + dequantize to bfloat16 in one launch (decode-sized activations)"
# A decode step's activation (rows x width) up to this many elements takes the launch: its programs' amax
# passes are unrolled over it. A larger one (a prefill) takes the eager quantizer.
MAX_ELEMENTS = 65536
# Elements (64 NVFP4 blocks) a program quantizes: 14 programs for Llama-3-8B's FFN width, 4 for its model width.
_CHUNK = 1024


def fits(numel: int) -> bool:
    """Whether an activation of `numel` elements takes the one-launch round trip."""
    return 0 < numel <= MAX_ELEMENTS


@triton.jit
def _bf16_bits_value(bits):
    """The float32 value of bfloat16 bits (int16): the bits shifted into float32's top half, exact."""
    return (bits.to(tl.int32) << 16).to(tl.float32, bitcast=True)


@triton.jit
def _nvfp4_roundtrip_kernel(x_ptr, out_ptr, numel, CHUNK: tl.constexpr, X_BLOCK: tl.constexpr,
                            X_STEPS: tl.constexpr, FLT_MAX: tl.constexpr, ONE_SIXTH: tl.constexpr,
                            HW: tl.constexpr):
    """x and out are bfloat16 read and written as int16 bits, converted in integer arithmetic."""
    # The tensor's amax as the integer maximum of its magnitudes' bits (torch.amax's value for finite x).
    bits = tl.zeros([X_BLOCK], dtype=tl.int32)
    for step in tl.static_range(X_STEPS):
        offs = step * X_BLOCK + tl.arange(0, X_BLOCK)
        x = _bf16_bits_value(tl.load(x_ptr + offs, mask=offs < numel, other=0))
        bits = tl.maximum(bits, _magnitude_bits(x))
    amax = tl.max(bits, axis=0).to(tl.float32, bitcast=True)
    # nvfp4.global_scales: encode = min(2688 / amax, FLT_MAX), 1 where that is not positive; decode = 1 / encode.
    global_encode = tl.minimum(tl.math.div_rn(2688.0, amax), FLT_MAX)
    global_encode = tl.where((amax > 0) & (global_encode > 0), global_encode, 1.0)
    global_decode = tl.math.div_rn(1.0, global_encode)
    multiplier = global_encode * ONE_SIXTH

    offs = tl.program_id(0) * CHUNK + tl.arange(0, CHUNK)
    x = tl.reshape(_bf16_bits_value(tl.load(x_ptr + offs, mask=offs < numel, other=0)), [CHUNK // 16, 16])
    block_amax = tl.max(_magnitude_bits(x), axis=1).to(tl.float32, bitcast=True)  # a NaN kept, as torch.amax
    # The block's E4M3 decode scale (clamped at 448, NaN kept), then the element encode scale from its value.
    block_decode = _e4m3_values(block_amax * multiplier, 1.0, HW)
    encode = tl.minimum(tl.math.div_rn(tl.full(block_decode.shape, 1.0, tl.float32), block_decode * global_decode),
                        FLT_MAX)
    values = _e2m1_value(_e2m1_codes(x * encode[:, None]))
    y = _bf16_value(tl.reshape(values * block_decode[:, None] * global_decode, [CHUNK]))
    tl.store(out_ptr + offs, (y.to(tl.int32, bitcast=True) >> 16).to(tl.int16), mask=offs < numel)


def nvfp4_roundtrip(x: torch.Tensor) -> torch.Tensor:
    """quantize_nvfp4(x, check_finite=False).dequantize() rounded to bfloat16, in one launch: x a bfloat16
    tensor of up to MAX_ELEMENTS elements whose last dimension is a multiple of 16, on CUDA (or under
    TRITON_INTERPRET=1)."""
    if x.dtype != torch.bfloat16 or x.ndim == 0 or x.shape[-1] % BLOCK or not fits(x.numel()):
        raise ValueError(f"nvfp4_roundtrip takes a bfloat16 tensor of 1 to {MAX_ELEMENTS} elements whose last "
                         f"dimension is a multiple of {BLOCK}, got {x.dtype} {tuple(x.shape)}; "
                         "quantize_nvfp4(x).dequantize() takes any other")
    if not (x.is_cuda or interpreting()):
        raise ValueError(f"nvfp4_roundtrip runs on CUDA tensors (or under TRITON_INTERPRET=1), got one on {x.device}; "
                         "quantize_nvfp4(x).dequantize() is the eager path")
    x = x.contiguous()
    out = torch.empty_like(x)
    numel = x.numel()
    _nvfp4_roundtrip_kernel[(triton.cdiv(numel, _CHUNK),)](
        x.view(torch.int16), out.view(torch.int16), numel, CHUNK=_CHUNK, **_amax_pass(numel), FLT_MAX=FLT_MAX,
        ONE_SIXTH=_ONE_SIXTH, HW=not interpreting(), num_warps=4)
    return out


def roundtrip_work(numel: int) -> Work:
    """nvfp4_roundtrip's traffic: the bfloat16 activation in (its amax rereads hit L2), bfloat16 out, one launch."""
    return Work(nbytes=numel * 2 * 2, kernels=1)


def interpreted(inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """nvfp4_roundtrip of each CPU tensor, run by Triton's interpreter in a child process."""
    return run_interpreted(__name__, inputs, "the NVFP4 activation round trip")


if __name__ == "__main__":  # interpreted's child: python -m ... IN OUT
    import sys

    mend_interpreter_scalars()
    torch.save([nvfp4_roundtrip(x) for x in torch.load(sys.argv[1])], sys.argv[2])
