"""NVFP4 matrix products: the naive CUDA kernel, the tiled tensor-core kernel, the decode kernels, and
the path each device takes.

Operands are `NVFP4Tensor`s with 1x16 blocks (packed E2M1 [rows, K/2], E4M3 scales [rows, K/16],
a float32 tensor scale), B given as [N, K] like a linear layer's weight; out = A @ B.T in float32.
The decode kernels and the tiled kernel also take a B whose rows carry their own tensor scales
(`NVFP4Tensor.concatenated`: weights quantized apart, stacked as a decode engine merges q, k, v).

Paths, chosen by compute capability (`gemm_path`):
  sm_100 and newer  cuBLASLt's native block-scaled NVFP4 GEMM through torch._scaled_mm
                    (float4_e2m1fn_x2 operands, E4M3 scales in cuBLAS's 128x4 swizzled layout);
  sm_80 .. sm_90    a Triton kernel that loads packed E2M1 tiles and their scales, decodes them
                    in registers to BF16 (exact: an E2M1 value times an E4M3 scale has at most
                    6 significant bits) and feeds BF16 tensor cores (wgmma on Hopper).
Decode (`linear`: 1..64 activation rows in BF16 times NVFP4 weights) is CUDA C++ in kernels/: the
tensor-core decode linear (kernels/nvfp4_linear.cuh) streams the packed weights once for all rows,
decodes them to BF16 in registers and feeds mma.m16n8k16 with the weights as the A operand, split-K
across the warps of a block; the CUDA-core GEMV (kernels/nvfp4_gemv.cuh, 1..2 rows) stays for callers
that ask for it. More rows, or a K the decode kernel does not take, go to the tiled kernel. The decode
linear reads a weight prepared once (`prepare_decode_weight`, as a model is loaded): the same bytes laid
out in the order it reads them: each load 512 contiguous bytes, the blocks' warps reading neighbouring
kilobytes at each step (kStepMajor in the header).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from pytest_lowprec.formats.nvfp4 import NVFP4Tensor

from . import kernels
from .interpreted import interpreting, mend_interpreter_scalars, run_interpreted

NATIVE = "cublaslt-nvfp4"
TILED = "triton-bf16-tensor-cores"
GEMV_MAX_ROWS = 2
# The tensor-core decode linear: activation rows it takes (in n8 tiles of 8), and the K it needs (its
# warps step through K 128 elements at a time).
MMA_ROWS = (1, 64)
MMA_K_MULTIPLE = 128

_VOID = ctypes.c_void_p
_INT = ctypes.c_int
SIGNATURES = {
    "nvfp4_gemm_naive": [_INT, _VOID, _VOID, _VOID, _VOID, _VOID, _VOID, _VOID, _INT, _INT, _INT, _VOID],
    "nvfp4_gemv": [_INT, _VOID, _VOID, _VOID, _VOID, _INT, _VOID, _INT, _INT, _INT, _VOID],
    "nvfp4_linear": [_INT, _VOID, _VOID, _VOID, _VOID, _INT, _VOID, _INT, _INT, _INT, _INT, _VOID],
    "nvfp4_linear_tile": [_INT, _VOID, _VOID, _INT, _INT, _VOID, _VOID, _VOID],
}


def gemm_path(capability: tuple[int, int], torch_has_fp4: bool | None = None) -> str:
    """Which NVFP4 GEMM a device of `capability` runs. Blackwell has FP4 tensor cores; Hopper and
    Ampere emulate with a BF16 tensor-core kernel. Older devices have no path."""
    if torch_has_fp4 is None:
        torch_has_fp4 = hasattr(torch, "float4_e2m1fn_x2")
    if capability[0] >= 10 and torch_has_fp4:
        return NATIVE
    if capability >= (8, 0):
        return TILED
    raise RuntimeError(f"no NVFP4 GEMM path for compute capability {capability[0]}.{capability[1]}: "
                       "BF16 tensor cores (sm_80) or newer are needed")


def to_blocked(scales: torch.Tensor) -> torch.Tensor:
    """Block scales [rows, K/16] in cuBLAS's block-scaled layout: the matrix is cut into 128x4
    tiles (rows padded to 128, scale columns to 4, with zeros); tile after tile (row-major over
    tiles), the scale at (r, c) of a tile sits at offset (r % 32) * 16 + (r // 32) * 4 + c."""
    rows, cols = scales.shape
    pr, pc = -(-rows // 128) * 128, -(-cols // 4) * 4
    padded = torch.zeros(pr, pc, dtype=scales.dtype, device=scales.device)
    padded[:rows, :cols] = scales
    tiles = padded.view(pr // 128, 128, pc // 4, 4).permute(0, 2, 1, 3)  # [tr, tc, 128, 4]
    # r = 32 * (r // 32) + r % 32: put r % 32 outermost, then r // 32, then c.
    return tiles.reshape(pr // 128, pc // 4, 4, 32, 4).transpose(2, 3).reshape(-1)


def _require_operands(a: NVFP4Tensor, b: NVFP4Tensor, *, b_row_scaled: bool = False) -> None:
    """`b_row_scaled`: the kernel takes a B with a tensor scale per row (NVFP4Tensor.concatenated)."""
    for name, t in (("a", a), ("b", b)):
        if t.tile != (1, 16) or len(t.shape) != 2:
            raise ValueError(f"{name} must be a 2-D NVFP4 tensor with 1x16 blocks, got shape {t.shape} tile {t.tile}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"inner dimensions differ: a is {a.shape}, b is {b.shape} (b is [N, K])")
    _require_tensor_scale(a, "a", row_scaled=False)
    _require_tensor_scale(b, "b", row_scaled=b_row_scaled)


def _require_tensor_scale(t: NVFP4Tensor, name: str, *, row_scaled: bool, device: torch.device | None = None) -> None:
    """t's tensor scale is one float32 (or, where the kernel takes `row_scaled`, one a row, [rows, 1]), on
    `device` where a CUDA kernel reads it through its address."""
    g = t.global_decode
    if device is not None and g.device != device:
        raise ValueError(f"{name}'s tensor scale is on {g.device}, these kernels run on {device}: move it")
    ok = g.dtype == torch.float32 and g.is_contiguous() and (
        g.numel() == 1 or (row_scaled and tuple(g.shape) == (t.shape[0], 1)))
    if not ok:
        takes = "one float32 or one a row ([rows, 1], NVFP4Tensor.concatenated)" if row_scaled else "one float32"
        raise ValueError(f"{name}'s tensor scale must be {takes} for this kernel, got {g.dtype} {tuple(g.shape)}"
                         f"{'' if g.is_contiguous() else ', not contiguous'}"
                         + ("" if row_scaled or g.numel() == 1 else ": multiply by each part of the stack apart"))


def _scale_stride(w: NVFP4Tensor) -> int:
    """How far apart a kernel finds consecutive rows' tensor scales: 0 (one scale) or 1 (one a row)."""
    return int(w.row_scaled)


def gemm_native(a: NVFP4Tensor, b: NVFP4Tensor) -> torch.Tensor:
    """sm_100+: cuBLASLt's NVFP4 GEMM. Untested here (no Blackwell GPU at hand); dispatch to it is."""
    _require_operands(a, b)
    out = torch._scaled_mm(
        a.packed.view(torch.float4_e2m1fn_x2), b.packed.view(torch.float4_e2m1fn_x2).t(),
        scale_a=to_blocked(a.block_scales), scale_b=to_blocked(b.block_scales), out_dtype=torch.float32,
    )
    return out * (a.global_decode * b.global_decode)


# -- the tiled kernel (sm_80 .. sm_90) ---------------------------------------------------------
@triton.jit
def _decode_e2m1(codes):
    """uint8 codes (one per element) -> float32 values, by building the float's bits."""
    c = codes.to(tl.int32)
    mag = c & 7
    # mag >= 2: exponent e = mag >> 1 >= 1, value 2^(e-1) * (1 + m/2) -> bits ((e + 126) << 23) | (m << 22),
    # which is (mag << 22) + (126 << 23). mag == 1 is 0.5; mag == 0 is 0.
    bits = tl.where(mag >= 2, (mag << 22) + (126 << 23), tl.where(mag == 1, 0x3F000000, 0))
    bits = bits | ((c & 8) << 28)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _load_nvfp4_tile(packed_ptr, scale_ptr, rows, k0, K, n_rows, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """[BLOCK_R, BLOCK_K] float32 values of rows `rows`, columns k0.. of an NVFP4 matrix (scales applied)."""
    half = tl.arange(0, BLOCK_K // 2)
    mask = (rows < n_rows)[:, None]
    p = tl.load(packed_ptr + rows[:, None] * (K // 2) + (k0 // 2 + half)[None, :], mask=mask, other=0)
    lo = _decode_e2m1(p & 0xF)
    hi = _decode_e2m1(p >> 4)
    values = tl.reshape(tl.join(lo, hi), (BLOCK_R, BLOCK_K))  # element 2i is byte i's low nibble
    sblk = tl.arange(0, BLOCK_K // 16)
    # Masked-off rows read nothing; their outputs are masked at the store.
    s = tl.load(scale_ptr + rows[:, None] * (K // 16) + (k0 // 16 + sblk)[None, :], mask=mask)
    scaled = tl.reshape(values, (BLOCK_R, BLOCK_K // 16, 16)) * s.to(tl.float32)[:, :, None]
    return tl.reshape(scaled, (BLOCK_R, BLOCK_K))


@triton.jit
def _nvfp4_gemm_kernel(a_ptr, sa_ptr, ga_ptr, b_ptr, sb_ptr, gb_ptr, out_ptr, M, N, K,
                       A_FP4: tl.constexpr, B_ROW_SCALED: tl.constexpr, DOT_DTYPE: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    # Grouped order: GROUP_M row tiles walk the columns together, so B tiles are reused from L2.
    per_group = GROUP_M * grid_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if A_FP4:
            a = _load_nvfp4_tile(a_ptr, sa_ptr, rm, k0, K, M, BLOCK_M, BLOCK_K)
        else:
            rk = k0 + tl.arange(0, BLOCK_K)
            a = tl.load(a_ptr + rm[:, None] * K + rk[None, :], mask=(rm < M)[:, None], other=0.0)
        b = _load_nvfp4_tile(b_ptr, sb_ptr, rn, k0, K, N, BLOCK_N, BLOCK_K)
        acc = tl.dot(a.to(DOT_DTYPE), tl.trans(b.to(DOT_DTYPE)), acc)
    if B_ROW_SCALED:  # B's rows (out's columns) each carry their own tensor's scale
        scale = tl.load(gb_ptr + rn, mask=rn < N, other=0.0)[None, :]
    else:
        scale = tl.load(gb_ptr)
    if A_FP4:
        scale = scale * tl.load(ga_ptr)
    acc = acc * scale
    tl.store(out_ptr + rm[:, None] * N + rn[None, :], acc, mask=(rm < M)[:, None] & (rn < N)[None, :])


@dataclass(frozen=True)
class TileConfig:
    block_m: int = 128
    block_n: int = 128
    block_k: int = 64
    group_m: int = 8
    num_warps: int = 8
    num_stages: int = 3


def _tile_for(m: int, k: int) -> TileConfig:
    # A decode batch of a few rows: a 16-row tile, more column tiles for the memory-bound shape, 128 elements
    # of K a step where K allows (the decode linear sends the K its kernel does not take here).
    if m > 16:
        return TileConfig()
    return TileConfig(block_m=16, block_n=32, block_k=128 if k % 128 == 0 else 64, num_warps=4, num_stages=4)


def gemm_tiled(a: NVFP4Tensor | torch.Tensor, b: NVFP4Tensor, *, config: TileConfig | None = None,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """out = a @ b.T with B in NVFP4 and A in NVFP4 or BF16 [M, K], through the Triton kernel
    (under TRITON_INTERPRET=1, Triton's interpreter runs it on CPU tensors)."""
    a_fp4 = isinstance(a, NVFP4Tensor)
    if a_fp4:
        _require_operands(a, b, b_row_scaled=True)
        m, k = a.shape
    else:
        if a.dtype != torch.bfloat16 or a.ndim != 2 or a.shape[1] != b.shape[1]:
            raise ValueError(f"a must be bf16 [M, {b.shape[1]}], got {a.dtype} {tuple(a.shape)}")
        _require_tensor_scale(b, "b", row_scaled=True)
        m, k = a.shape
    n = b.shape[0]
    config = config or _tile_for(m, k)
    if k % config.block_k:
        raise ValueError(f"K={k} must be a multiple of the tile's BLOCK_K={config.block_k}")
    device = b.packed.device
    # Triton's interpreter multiplies bf16 tiles wrongly (it sees their raw bits), so there the
    # tiles go to the dot in float32: the same values, since every decoded product is exact in bf16.
    interpreted = interpreting()
    out = torch.empty(m, n, dtype=torch.float32, device=device) if out is None else out
    grid = (triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n),)
    a_args = (a.packed, a.block_scales, a.global_decode) if a_fp4 else (a.contiguous(), a, a)
    _nvfp4_gemm_kernel[grid](*a_args, b.packed, b.block_scales, b.global_decode, out, m, n, k,
                 A_FP4=a_fp4, B_ROW_SCALED=b.row_scaled, DOT_DTYPE=tl.float32 if interpreted else tl.bfloat16,
                 BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
                 GROUP_M=config.group_m, num_warps=config.num_warps, num_stages=config.num_stages)
    return out


def gemm_tiled_interpreted(a: NVFP4Tensor | torch.Tensor, b: NVFP4Tensor, config: TileConfig) -> torch.Tensor:
    """The tiled kernel run by Triton's interpreter on the CPU, in a child process
    (interpreted.run_interpreted)."""
    return run_interpreted(__name__, {"a": a, "b": b, "config": config}, "the tiled NVFP4 kernel")


# -- CUDA C++ kernels ----------------------------------------------------------------------------
class CudaKernels:
    """kernels/nvfp4_gemm.cu, built for `device` on first use."""

    def __init__(self, device: torch.device | str):
        """`device` a CUDA device; without an index ("cuda"), the current one (the kernels take its index)."""
        device = torch.device(device)
        self.device = torch.device("cuda", torch.cuda.current_device()) if device.index is None else device
        capability = torch.cuda.get_device_capability(self.device)
        self._lib = kernels.load("nvfp4_gemm", capability, SIGNATURES)
        self._takes_programmatic = kernels.programmatic_launches(self.device)

    def _stream(self) -> int:
        return torch.cuda.current_stream(self.device).cuda_stream

    def gemm_naive(self, a: NVFP4Tensor, b: NVFP4Tensor, out: torch.Tensor) -> torch.Tensor:
        _require_operands(a, b)
        (m, k), n = a.shape, b.shape[0]
        self._lib.call("nvfp4_gemm_naive", self.device.index, a.packed.data_ptr(), a.block_scales.data_ptr(),
                       a.global_decode.data_ptr(), b.packed.data_ptr(), b.block_scales.data_ptr(),
                       b.global_decode.data_ptr(), out.data_ptr(), m, n, k, self._stream())
        return out

    def gemv(self, x: torch.Tensor, w: NVFP4Tensor, out: torch.Tensor) -> torch.Tensor:
        """out[m] = x[m] @ w.T for x bf16 [M <= 2, K], K a multiple of 32; w with one tensor scale or one a
        row (NVFP4Tensor.concatenated)."""
        m, k = x.shape
        if x.dtype != torch.bfloat16 or not x.is_contiguous() or k != w.shape[1]:
            raise ValueError(f"x must be contiguous bf16 [M, {w.shape[1]}], got {x.dtype} {tuple(x.shape)}")
        if not 1 <= m <= GEMV_MAX_ROWS or k % 32:
            raise ValueError(f"the GEMV takes 1..{GEMV_MAX_ROWS} rows and K a multiple of 32, got M={m}, K={k}")
        _require_tensor_scale(w, "the weight", row_scaled=True, device=self.device)
        self._lib.call("nvfp4_gemv", self.device.index, x.data_ptr(), w.packed.data_ptr(),
                       w.block_scales.data_ptr(), w.global_decode.data_ptr(), _scale_stride(w), out.data_ptr(), m,
                       w.shape[0], k, self._stream())
        return out

    def tile_for_linear(self, w: NVFP4Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """w's packed codes and block scales laid out in the order `linear` reads them, K a multiple of 128
        (rows padded to a multiple of 16 with zero codes and scales)."""
        if len(w.shape) != 2 or w.tile != (1, 16):
            raise ValueError(f"the decode linear takes a 2-D weight with 1x16 blocks, got shape {tuple(w.shape)} "
                             f"with {w.tile[0]}x{w.tile[1]} blocks: quantize it with 1x16 blocks")
        n, k = w.shape
        if k % MMA_K_MULTIPLE:
            raise ValueError(f"the decode linear takes K a multiple of {MMA_K_MULTIPLE}, got K={k}")
        for name, t, shape in (("packed codes", w.packed, (n, k // 2)), ("block scales", w.block_scales, (n, k // 16))):
            if t.device != self.device or tuple(t.shape) != shape or not t.is_contiguous() or t.element_size() != 1:
                raise ValueError(f"the weight's {name} must be a contiguous one-byte tensor of shape {shape} on "
                                 f"{self.device}, got {t.dtype} {tuple(t.shape)} on {t.device}"
                                 f"{'' if t.is_contiguous() else ', not contiguous'}")
        tiles = -(-n // 16)
        tiled = torch.empty(tiles * 8 * k, dtype=torch.uint8, device=w.packed.device)
        scales = torch.empty(tiles * k, dtype=torch.uint8, device=w.packed.device)
        self._lib.call("nvfp4_linear_tile", self.device.index, w.packed.data_ptr(), w.block_scales.data_ptr(), n, k,
                       tiled.data_ptr(), scales.data_ptr(), self._stream())
        return tiled, scales

    def linear(self, x: torch.Tensor, w: DecodeWeight, out: torch.Tensor, programmatic: bool = False) -> torch.Tensor:
        """out[m] = x[m] @ w.T on tensor cores for x bf16 [M, K], M in MMA_ROWS, K a multiple of 128, w
        prepared by prepare_decode_weight. `programmatic` launches it as a programmatic dependent of the kernel
        before it (kernels/nvfp4_linear.cuh: its blocks start while that kernel finishes and wait for it before
        they read anything), where the GPU takes one (kernels.programmatic_launches)."""
        if not isinstance(w, DecodeWeight):
            raise TypeError("the tensor-core decode linear reads a weight prepared once for it: pass "
                            f"prepare_decode_weight(w, cuda), not {type(w).__name__}")
        if w.tiled is None:
            raise TypeError("this weight was prepared without CUDA kernels (prepare_decode_weight(w, None)): "
                            "prepare it with prepare_decode_weight(w, cuda)")
        for name, t in (("x", x), ("out", out), ("the prepared weight", w.tiled)):
            if t.device != self.device:
                raise ValueError(f"{name} is on {t.device}, these kernels run on {self.device}")
        m, k = x.shape
        n = w.shape[0]
        if x.dtype != torch.bfloat16 or not x.is_contiguous() or k != w.shape[1]:
            raise ValueError(f"x must be contiguous bf16 [M, {w.shape[1]}], got {x.dtype} {tuple(x.shape)}")
        if not MMA_ROWS[0] <= m <= MMA_ROWS[1] or k % MMA_K_MULTIPLE:
            raise ValueError(f"the decode linear takes {MMA_ROWS[0]}..{MMA_ROWS[1]} rows and K a multiple of "
                             f"{MMA_K_MULTIPLE}, got M={m}, K={k}")
        if out.dtype != torch.float32 or out.shape != (m, n) or not out.is_contiguous():
            raise ValueError(f"out must be contiguous float32 [{m}, {n}], got {out.dtype} {tuple(out.shape)}")
        _require_tensor_scale(w.nvfp4, "the weight", row_scaled=True, device=self.device)
        # 16-byte loads: the launcher refuses (invalid value) operands that are not aligned for them.
        self._lib.call("nvfp4_linear", self.device.index, x.data_ptr(), w.tiled.data_ptr(), w.tiled_scales.data_ptr(),
                       w.nvfp4.global_decode.data_ptr(), _scale_stride(w.nvfp4), out.data_ptr(), m, n, k,
                       int(programmatic and self._takes_programmatic), self._stream())
        return out


@dataclass(frozen=True)
class DecodeWeight:
    """An NVFP4 weight prepared once for decode-time linears (`prepare_decode_weight`): the format's own
    tensor, which the GEMV and the tiled kernel read, and on CUDA the same codes and scales laid out in
    the order the tensor-core decode linear reads them (CudaKernels.tile_for_linear). Without
    `keeps_format`, the format tensor's codes and block scales were dropped once laid out (it keeps its
    shape and tensor scale): only the decode linear can take the weight."""

    nvfp4: NVFP4Tensor
    tiled: torch.Tensor | None = None
    tiled_scales: torch.Tensor | None = None
    keeps_format: bool = True

    @property
    def shape(self) -> tuple[int, int]:
        return self.nvfp4.shape

    @property
    def nbytes(self) -> int:
        """Bytes the weight holds: the format's tensor (its tensor scale alone, without `keeps_format`) and
        the decode linear's layout."""
        laid_out = 0 if self.tiled is None else self.tiled.numel() + self.tiled_scales.numel()
        return self.nvfp4.nbytes + laid_out

    @property
    def linear_nbytes(self) -> int:
        """Bytes the decode linear reads for the weight: codes, scales and the tensor scale."""
        if self.tiled is None:
            return self.nvfp4.nbytes
        return self.tiled.numel() + self.tiled_scales.numel() + self.nvfp4.global_decode.numel() * 4


def prepare_decode_weight(w: NVFP4Tensor, cuda: CudaKernels | None, *, keep_format: bool = True) -> DecodeWeight:
    """w ready for `linear`: with CUDA kernels and K a multiple of 128, also laid out for the tensor-core
    decode linear (done once, as a model's weights are loaded). `keep_format=False`: once laid out, the
    format's codes and block scales are dropped, as an engine that calls it on 1..64 rows only holds one
    copy (other row counts are then refused)."""
    if cuda is None or w.shape[1] % MMA_K_MULTIPLE:
        return DecodeWeight(w)
    tiled, scales = cuda.tile_for_linear(w)
    if not keep_format:  # new empty tensors: a view would keep the codes' storage alive
        w = replace(w, packed=w.packed.new_empty((0, w.packed.shape[1])),
                    block_scales=w.block_scales.new_empty((0, w.block_scales.shape[1])))
    return DecodeWeight(w, tiled, scales, keeps_format=keep_format)


def decode_path(rows: int, k: int, cuda: bool, laid_out: bool = True) -> str:
    """Which kernel `linear` runs for `rows` activation rows and inner dimension `k` ("cuda-mma",
    "cuda-gemv" or "triton") over a weight `laid_out` for the decode linear or not; the suites put it in
    their signatures."""
    if cuda and laid_out and MMA_ROWS[0] <= rows <= MMA_ROWS[1] and k % MMA_K_MULTIPLE == 0:
        return "cuda-mma"
    if cuda and rows <= GEMV_MAX_ROWS:
        return "cuda-gemv"
    return "triton"


def linear(x: torch.Tensor, w: DecodeWeight, cuda: CudaKernels | None, out: torch.Tensor,
           programmatic: bool = False) -> torch.Tensor:
    """Decode-time linear layer, x bf16 [M, K] times NVFP4 weights [N, K] (prepare_decode_weight), out
    float32 [M, N]: the tensor-core decode kernel for 1..64 rows, the tiled tensor-core kernel for more
    (and on CPU); a weight not laid out for the decode kernel takes the GEMV at 1..2 rows. `programmatic`:
    the tensor-core decode kernel's launch (CudaKernels.linear); the other kernels launch as usual."""
    if not isinstance(w, DecodeWeight):
        raise TypeError(f"linear takes a weight from prepare_decode_weight(w, cuda), got {type(w).__name__}")
    path = decode_path(x.shape[0], w.shape[1], cuda is not None, laid_out=w.tiled is not None)
    if path != "cuda-mma" and not w.keeps_format:
        raise ValueError(f"this weight holds only the decode linear's layout (prepared with keep_format=False), "
                         f"which takes {MMA_ROWS[0]}..{MMA_ROWS[1]} rows with its CUDA kernels; this call has "
                         f"{x.shape[0]} rows{'' if cuda is not None else ' and none'}: prepare it with "
                         "keep_format=True")
    if path == "cuda-mma":
        return cuda.linear(x, w, out, programmatic)
    if path == "cuda-gemv":
        return cuda.gemv(x, w.nvfp4, out)
    return gemm_tiled(x, w.nvfp4, out=out)


if __name__ == "__main__":  # gemm_tiled_interpreted's child: python -m lowprec_workloads.nvfp4_gemm IN OUT
    import sys

    mend_interpreter_scalars()
    job = torch.load(sys.argv[1], weights_only=False)
    torch.save(gemm_tiled(job["a"], job["b"], config=job["config"]), sys.argv[2])
