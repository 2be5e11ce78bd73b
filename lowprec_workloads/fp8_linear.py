"""FP8 linear layers whose activation quantization costs less than the FP8 GEMM saves.

Numerics are fp8.quantize_tensorwise's on both operands: E4M3 weights with one float32 scale per
tensor, the activation quantized at every call with one scale over the whole activation (amax,
FLT_MAX clamp, NaN rules and round-to-nearest-even as the reference; out = (xq . wq) * inv_x * inv_w).
What changes is how the activation's quantization runs on CUDA:

- one row (decode, M <= GEMV_MAX_ROWS): a Triton GEMV quantizes the activation inside the kernel and
  streams the E4M3 weight once (half the bytes of BF16). Every program reads the activation's
  magnitudes from L2 for the tensor's amax, then rounds the slice it multiplies: one launch per linear
  instead of an eager quantizer (about ten kernels) plus a cuBLAS GEMM whose rows were padded to 16.
- more rows: `torch._scaled_mm` on the rows as they are (cuBLAS needs K and N multiples of 16, not M),
  after a Triton quantizer: one program for a decode-sized activation (SMALL_QUANTIZE_MAX elements),
  else the two-pass one of formats.triton_quant (amax pass, cast pass) for a prefill.

On the CPU the eager reference runs (quantize_tensorwise, float32 product of dequantized operands).
The kernels round to E4M3 with integer and float32 operations rather than the hardware conversion, so
Triton's interpreter (TRITON_INTERPRET=1, which rounds some values across a binade wrongly and turns
NaN into 384) runs the same arithmetic on the CPU that the GPU runs; the tests compare it with the
reference bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from pytest_lowprec.formats.fp8 import FLT_MAX, quantize_tensorwise, scaled_mm

# The amax and scale rules of the engine's Triton quantizers (the same bits as fp8._scale_from_amax).
from pytest_lowprec.formats.triton_quant import _fp8_scale, _magnitude_bits, quantize_fp8_tensorwise_triton
from pytest_lowprec.roofline import Work

E4M3_MAX = 448.0
GEMV_MAX_ROWS = 1
# What runs on CUDA, for a workload's signature (a baseline recorded on another path is stale).
CUDA_PATH = "triton gemv quantizing its row (1 row); one-launch or two-pass triton quantizer + _scaled_mm (more)"
# An activation up to this many elements (four decode rows of a 14336-wide FFN) is quantized by one
# program in one launch; a larger one by the two-pass quantizer, whose amax pass spreads over the chip.
SMALL_QUANTIZE_MAX = 65536
_X_BLOCK = 4096  # elements of the activation one program reads per step of its amax pass


@dataclass(frozen=True)
class GemvConfig:
    """One GEMV tile: `kernel` "fma" (CUDA-core FMAs on a [block_n, block_k] weight tile, the next tile
    requested before the current one is used) or "dot" (the row padded to 16 in registers, FP8 tensor-core
    MMAs, the loop software-pipelined over `num_stages` shared-memory stages)."""

    kernel: str
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 1

    def __post_init__(self) -> None:
        if self.kernel not in ("fma", "dot"):
            raise ValueError(f"GEMV kernel is 'fma' or 'dot', got {self.kernel!r}")
        for name in ("block_n", "block_k", "num_warps"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"GemvConfig.{name} must be a power of two, got {value}")
        if self.kernel == "dot" and (self.block_n < 16 or self.block_k < 32):
            raise ValueError(f"the dot GEMV needs block_n >= 16 and block_k >= 32 (MMA tiles), got "
                             f"{self.block_n} x {self.block_k}")
        if self.num_stages < 1:
            raise ValueError(f"GemvConfig.num_stages must be >= 1, got {self.num_stages}")


# Per weight shape (N, K); benchmarks/fp8_linear_variants.py measures the candidates on the GPU.
GEMV_CONFIGS: dict[tuple[int, int], GemvConfig] = {}
DEFAULT_GEMV = GemvConfig("fma", block_n=16, block_k=256, num_warps=4)


GemvChooser = Callable[[int, int], "GemvConfig | None"]  # (N, K) -> the one-row tile, None for _scaled_mm


def gemv_config(n: int, k: int) -> GemvConfig:
    """The GEMV tile for a weight of N outputs and K inputs."""
    return GEMV_CONFIGS.get((n, k), DEFAULT_GEMV)


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _require_device(x: torch.Tensor, what: str) -> None:
    if not (x.is_cuda or _interpreted()):
        raise ValueError(f"{what} runs on CUDA tensors (or under TRITON_INTERPRET=1), got one on {x.device}; "
                         "fp8.quantize_tensorwise is the eager path")


# -- E4M3 rounding in arithmetic the interpreter reproduces ----------------------------------------
@triton.jit
def _saturate(y):
    """Clamp to +-448, NaN kept (fp8.saturating_cast's clamp)."""
    return tl.minimum(tl.maximum(y, -448.0, propagate_nan=tl.PropagateNan.ALL), 448.0,
                      propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _e4m3_value(y):
    """y (float32 within +-448, or NaN) rounded to the nearest E4M3 value, ties to even, as float32.

    Normal values keep 3 of float32's 23 mantissa bits: adding 0x7FFFF plus the lowest kept bit to the
    magnitude's bits and truncating rounds to nearest even, a carry moving into the exponent. Below
    2^-6 E4M3 is subnormal, multiples of 2^-9: adding and subtracting 2^14 (= 2^-9 * 2^23) makes the
    float32 adder round there. The sign is y's (-0.0 stays -0.0), a NaN stays NaN."""
    a = tl.abs(y)
    bits = a.to(tl.int32, bitcast=True)
    normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576).to(tl.float32, bitcast=True)
    subnormal = (a + 16384.0) - 16384.0
    r = tl.where(a < 0.015625, subnormal, normal)
    r = (r.to(tl.int32, bitcast=True) | (y.to(tl.int32, bitcast=True) & -2147483648)).to(tl.float32, bitcast=True)
    return tl.where(y != y, y, r)


@triton.jit
def _e4m3_code(r):
    """The E4M3 code of r, a float32 that is an E4M3 value or NaN: sign, 4 exponent bits (bias 7), 3 bits."""
    bits = r.to(tl.int32, bitcast=True)
    magnitude = bits & 0x7FFFFFFF
    normal = (((magnitude >> 23) - 120) << 3) | ((magnitude >> 20) & 7)
    subnormal = (tl.abs(r) * 512.0).to(tl.int32)  # m * 2^-9 -> m
    code = tl.where(magnitude >= 0x3C800000, normal, subnormal)  # 0x3C800000: 2^-6, the smallest normal
    code = tl.where(magnitude > 0x7F800000, 0x7F, code)
    return (code | ((bits >> 24) & 0x80)).to(tl.uint8)


@triton.jit
def _bf16_value(y):
    """y rounded to bfloat16's 8 significant bits, ties to even, as float32 (NaN kept): the interpreter's
    float32 -> bfloat16 conversion truncates, the GPU's rounds; this value converts exactly on both."""
    bits = y.to(tl.int32, bitcast=True)
    r = ((bits + 0x7FFF + ((bits >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)
    return tl.where(y != y, y, r)


@triton.jit
def _activation_scale(x_ptr, numel, X_BLOCK: tl.constexpr, FLT_MAX: tl.constexpr):
    """fp8._scale_from_amax of max |x| over x's `numel` elements (NaN above Inf, as torch.amax sees it)."""
    bits = tl.zeros([X_BLOCK], dtype=tl.int32)
    for start in range(0, numel, X_BLOCK):
        offs = start + tl.arange(0, X_BLOCK)
        bits = tl.maximum(bits, _magnitude_bits(tl.load(x_ptr + offs, mask=offs < numel, other=0.0)))
    return _fp8_scale(tl.max(bits, axis=0).to(tl.float32, bitcast=True), 448.0, FLT_MAX)


# -- kernels ------------------------------------------------------------------------------------
@triton.jit
def _quantize_small_kernel(x_ptr, out_ptr, inv_ptr, numel, X_BLOCK: tl.constexpr, FLT_MAX: tl.constexpr,
                           DEQUANTIZE: tl.constexpr, BF16_OUT: tl.constexpr):
    """One program: the amax pass, then codes (or, with DEQUANTIZE, codes * inv_scale in out's dtype)."""
    scale = _activation_scale(x_ptr, numel, X_BLOCK, FLT_MAX)
    inv = tl.math.div_rn(1.0, scale)
    for start in range(0, numel, X_BLOCK):
        offs = start + tl.arange(0, X_BLOCK)
        mask = offs < numel
        r = _e4m3_value(_saturate(tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) * scale))
        if DEQUANTIZE:
            value = r * inv
            if BF16_OUT:
                value = _bf16_value(value)
            tl.store(out_ptr + offs, value.to(out_ptr.dtype.element_ty), mask=mask)
        else:
            tl.store(out_ptr + offs, _e4m3_code(r), mask=mask)
    tl.store(inv_ptr, inv)


@triton.jit
def _gemv_fma_kernel(x_ptr, w_ptr, w_inv_ptr, out_ptr, N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     X_BLOCK: tl.constexpr, FLT_MAX: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k = tl.arange(0, BLOCK_K)
    n_ok = (n < N)[:, None]
    w_ptrs = w_ptr + n.to(tl.int64)[:, None] * K + k[None, :]
    # The first weight tile is requested before the amax pass, whose L2 reads then overlap its DRAM latency;
    # in the loop the next tile is requested before the current one is multiplied: two tiles in flight.
    w_next = tl.load(w_ptrs, mask=n_ok & (k < K)[None, :], other=0.0, eviction_policy="evict_first")
    scale = _activation_scale(x_ptr, K, X_BLOCK, FLT_MAX)
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        w = w_next
        ahead = k0 + BLOCK_K + k
        w_next = tl.load(w_ptrs + (k0 + BLOCK_K), mask=n_ok & (ahead < K)[None, :], other=0.0,
                         eviction_policy="evict_first")
        here = k0 + k
        xq = _e4m3_value(_saturate(tl.load(x_ptr + here, mask=here < K, other=0.0).to(tl.float32) * scale))
        acc += w.to(tl.float32) * xq[None, :]
    out = tl.sum(acc, axis=1) * (tl.math.div_rn(1.0, scale) * tl.load(w_inv_ptr))
    tl.store(out_ptr + n, out, mask=n < N)


@triton.jit
def _gemv_dot_kernel(x_ptr, w_ptr, w_inv_ptr, out_ptr, N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     X_BLOCK: tl.constexpr, FLT_MAX: tl.constexpr, FP8_DOT: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k = tl.arange(0, BLOCK_K)
    scale = _activation_scale(x_ptr, K, X_BLOCK, FLT_MAX)
    first_row = (tl.arange(0, 16) == 0)[:, None]  # the MMA's 16 rows: the activation, then zeros
    acc = tl.zeros([16, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        here = k0 + k
        # [BLOCK_K, BLOCK_N] with K contiguous: the K-major B operand FP8 MMAs take.
        w = tl.load(w_ptr + n.to(tl.int64)[None, :] * K + here[:, None], mask=(n < N)[None, :] & (here < K)[:, None],
                    other=0.0, eviction_policy="evict_first")
        xq = _e4m3_value(_saturate(tl.load(x_ptr + here, mask=here < K, other=0.0).to(tl.float32) * scale))
        a = tl.where(first_row, xq[None, :], 0.0)
        if FP8_DOT:
            acc = tl.dot(a.to(tl.float8e4nv), w, acc)  # exact: a holds E4M3 values
        else:  # the interpreter multiplies FP8 tiles by their raw bits: the same values in float32
            acc = tl.dot(a, w.to(tl.float32), acc, input_precision="ieee")
    out = tl.sum(acc, axis=0) * (tl.math.div_rn(1.0, scale) * tl.load(w_inv_ptr))  # rows 1..15 are zeros
    tl.store(out_ptr + n, out, mask=n < N)


# -- launchers ----------------------------------------------------------------------------------
def _x_block(numel: int) -> int:
    return min(triton.next_power_of_2(max(numel, 16)), _X_BLOCK)


def quantize_small(x: torch.Tensor, dequantize_to: torch.dtype | None = None):
    """fp8.quantize_tensorwise(x)'s bits in one launch of one program: (q, inv_scale); with `dequantize_to`,
    q * inv_scale in that dtype instead of q (the round trip an FP8 operand of an emulated matmul takes)."""
    _require_device(x, "quantize_small")
    if dequantize_to not in (None, torch.float32, torch.bfloat16):
        raise ValueError(f"quantize_small dequantizes to float32 or bfloat16, not {dequantize_to}")
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=dequantize_to or torch.uint8, device=x.device)
    inv = torch.empty((), dtype=torch.float32, device=x.device)
    _quantize_small_kernel[(1,)](x, out, inv, x.numel(), X_BLOCK=_x_block(x.numel()), FLT_MAX=FLT_MAX,
                                 DEQUANTIZE=dequantize_to is not None, BF16_OUT=dequantize_to == torch.bfloat16,
                                 num_warps=4)
    return (out if dequantize_to is not None else out.view(torch.float8_e4m3fn)), inv


def quantizer(numel: int, on_cuda: bool) -> str:
    """Which quantizer quantize_activation runs for an activation of `numel` elements."""
    if not on_cuda:
        return "eager"
    return "triton-one-program" if numel <= SMALL_QUANTIZE_MAX else "triton-two-pass"


def quantize_activation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, inv_scale) with fp8.quantize_tensorwise's bits: eager on the CPU; on CUDA one program for a small
    activation, else the two-pass Triton quantizer (2D view over the last dimension)."""
    which = quantizer(x.numel(), x.is_cuda)
    if which == "eager":
        return quantize_tensorwise(x)
    if which == "triton-one-program":
        return quantize_small(x)
    q, inv = quantize_fp8_tensorwise_triton(x.reshape(-1, x.shape[-1]))
    return q.view(x.shape), inv


def fp8_roundtrip(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x through E4M3 with a tensorwise scale and back, in `dtype`: what an FP8 operand holds."""
    if x.is_cuda and x.numel() <= SMALL_QUANTIZE_MAX:
        return quantize_small(x, dequantize_to=dtype)[0]
    q, inv = quantize_activation(x)
    return (q.float() * inv).to(dtype)


def quantize_work(numel: int, element_size: int) -> tuple[Work, ...]:
    """What quantize_activation launches on CUDA for an activation of `numel` elements (none of it ATen)."""
    codes = numel * element_size + numel + 4
    if numel <= SMALL_QUANTIZE_MAX:
        return (Work(nbytes=codes, kernels=1),)
    # torch.zeros for the amax (a fill kernel torch sees: declared here with the rest), the amax pass, the cast.
    return (Work(nbytes=4, kernels=1), Work(nbytes=numel * element_size, kernels=1), Work(nbytes=codes, kernels=1))


def gemv(x: torch.Tensor, weight: torch.Tensor, inv_scale: torch.Tensor, config: GemvConfig,
         out: torch.Tensor | None = None) -> torch.Tensor:
    """float32 [1, N] = E4M3(x) @ weight.T * scales, x [1, K] float32 or bfloat16, weight E4M3 [N, K]."""
    _require_device(x, "the FP8 GEMV")
    n, k = weight.shape
    if x.ndim != 2 or x.shape[0] != 1 or x.shape[1] != k:
        raise ValueError(f"the FP8 GEMV takes one row x [1, {k}], got {tuple(x.shape)}")
    if weight.dtype != torch.float8_e4m3fn or not weight.is_contiguous():
        raise ValueError(f"weight must be contiguous E4M3 [N, K], got {weight.dtype} with strides {weight.stride()}")
    x = x.contiguous()
    out = torch.empty(1, n, dtype=torch.float32, device=x.device) if out is None else out
    common = dict(BLOCK_N=config.block_n, BLOCK_K=config.block_k, X_BLOCK=_x_block(k), FLT_MAX=FLT_MAX,
                  num_warps=config.num_warps, num_stages=config.num_stages)
    grid = (triton.cdiv(n, config.block_n),)
    if config.kernel == "fma":
        _gemv_fma_kernel[grid](x, weight, inv_scale, out, n, k, **common)
    else:
        _gemv_dot_kernel[grid](x, weight, inv_scale, out, n, k, FP8_DOT=not _interpreted(), **common)
    return out


@dataclass(frozen=True)
class FP8Linear:
    """A linear layer's weight in E4M3 with a tensorwise scale, and its forward for any number of rows."""

    weight: torch.Tensor  # E4M3 [N, K] row-major: weight.t() is the column-major B _scaled_mm takes
    inv_scale: torch.Tensor  # 0-d float32
    gemv: GemvConfig | None  # the one-row kernel's tile; None sends every row count to _scaled_mm

    @classmethod
    def build(cls, w: torch.Tensor, gemv: GemvChooser = gemv_config) -> FP8Linear:
        """`w` [N, K] quantized with fp8.quantize_tensorwise; `gemv(N, K)` picks the one-row kernel's tile
        (a chooser that returns None sends one row through _scaled_mm too)."""
        q, inv = quantize_tensorwise(w)
        n, k = q.shape
        if w.is_cuda and (n % 16 or k % 16):
            raise ValueError(f"an FP8 linear on CUDA needs N and K multiples of 16 (cuBLAS's FP8 GEMM does), "
                             f"got [{n}, {k}]")
        return cls(q.contiguous(), inv, gemv(n, k))

    @property
    def nbytes(self) -> int:
        return self.weight.numel() + 4

    def uses_gemv(self, rows: int) -> bool:
        return self.gemv is not None and rows <= GEMV_MAX_ROWS

    def __call__(self, x: torch.Tensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """x [rows, K] -> [rows, N] in `out_dtype`."""
        if not x.is_cuda:
            q, inv = quantize_tensorwise(x)
            return ((q.float() * inv) @ (self.weight.float() * self.inv_scale).t()).to(out_dtype)
        if self.uses_gemv(x.shape[0]):
            return gemv(x, self.weight, self.inv_scale, self.gemv).to(out_dtype)
        q, inv = quantize_activation(x)
        return scaled_mm(q, inv, self.weight.t(), self.inv_scale, out_dtype=out_dtype)

    def kernel_work(self, rows: int, x_element_size: int) -> tuple[Work, ...]:
        """The Triton kernels one CUDA call launches, which traffic.eager_work cannot see (it reads the
        _scaled_mm of the many-row path off ATen itself)."""
        n, k = self.weight.shape
        if self.uses_gemv(rows):
            # The weight once from DRAM, the row once (its rereads by every program hit L2), float32 out.
            return (Work(nbytes=n * k + rows * k * x_element_size + rows * n * 4, kernels=1),)
        return quantize_work(rows * k, x_element_size)
