"""The FP8 decode GEMV on CUDA cores (kernels/fp8_gemv.cu): one activation row times an E4M3 weight.

It computes what fp8_linear.gemv computes, with fp8.quantize_tensorwise's bits for the row (quantized once a
block, in shared memory) and float32 sums of exact E4M3 products (relative error against the float64 product
of the quantized operands about 1e-7, where the wgmma tiles' fewer-bit accumulator gives 1.3e-4). Written for
bandwidth: every warp streams whole rows with 16-byte streaming loads and keeps two chunks in flight, as the
NVFP4 GEMV (kernels/nvfp4_gemv.cuh) does. The tiles are compiled into the library once and chosen by index:
a benchmark times them all from one build, and a process runs the one fp8_linear chose for the weight's shape.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch

from . import kernels

_VOID = ctypes.c_void_p
_INT = ctypes.c_int
_INT_OUT = ctypes.POINTER(ctypes.c_int)
SIGNATURES = {
    "fp8_gemv": [_INT, _VOID, _INT, _VOID, _VOID, _VOID, _INT, _VOID, _INT, _INT, _INT, _INT, _VOID],
    "fp8_gemv_tile_count": [],
    "fp8_gemv_tile_shape": [_INT, _INT_OUT, _INT_OUT, _INT_OUT, _INT_OUT],
    "fp8_gemv_max_k": [],
}
# The row's codes live in shared memory, with the kernel's few static bytes inside the 48 KB a launch takes
# without opting in to more (kernels/fp8_gemv.cu's kMaxK; Fp8GemvKernels checks the two agree).
MAX_K = 48 * 1024 - 256
X_TYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}  # the launcher's x_type


@dataclass(frozen=True)
class CudaGemvTile:
    """One compiled tile of the CUDA-core FP8 GEMV: `rows` weight rows a warp, `unroll` 512-byte steps of each
    row a chunk (two chunks in flight a warp), `warps` a block, `min_blocks` the blocks a multiprocessor its
    registers are sized for (__launch_bounds__)."""

    rows: int
    unroll: int
    warps: int
    min_blocks: int

    split_k = 1  # whole rows a warp: no partial sums (FP8Linear sizes split-K workspaces from this)

    @property
    def index(self) -> int:
        """The tile's index in the compiled library."""
        try:
            return TILES.index(self)
        except ValueError:
            raise ValueError(f"{self} is not one of the compiled FP8 GEMV tiles {TILES}: add it to "
                             "kernels/fp8_gemv.cu's LOWPREC_FP8_GEMV_TILES and to TILES, in the same order") from None


# kernels/fp8_gemv.cu's LOWPREC_FP8_GEMV_TILES, in its order (Fp8GemvKernels checks them against the library).
TILES = (CudaGemvTile(1, 4, 8, 2), CudaGemvTile(2, 2, 8, 2), CudaGemvTile(2, 4, 8, 2), CudaGemvTile(4, 2, 8, 2),
         CudaGemvTile(4, 4, 8, 1), CudaGemvTile(1, 8, 4, 4), CudaGemvTile(1, 2, 8, 4), CudaGemvTile(2, 2, 4, 8))


class Fp8GemvKernels:
    """kernels/fp8_gemv.cu, built for `device` on first use."""

    def __init__(self, device: torch.device | str):
        device = torch.device(device)
        self.device = torch.device("cuda", torch.cuda.current_device()) if device.index is None else device
        self._lib = kernels.load("fp8_gemv", torch.cuda.get_device_capability(self.device), SIGNATURES)
        self._takes_programmatic = kernels.programmatic_launches(self.device)
        compiled = []
        for i in range(self._lib._functions["fp8_gemv_tile_count"]()):
            shape = [ctypes.c_int() for _ in range(4)]
            self._lib.call("fp8_gemv_tile_shape", i, *(ctypes.byref(v) for v in shape))
            compiled.append(CudaGemvTile(*(v.value for v in shape)))
        if tuple(compiled) != TILES:
            raise RuntimeError(f"kernels/fp8_gemv.cu compiles the tiles {compiled}, fp8_gemv_cuda.TILES lists {TILES}: "
                               "keep the two lists in the same order")
        if self._lib._functions["fp8_gemv_max_k"]() != MAX_K:
            raise RuntimeError(f"kernels/fp8_gemv.cu takes K up to {self._lib._functions['fp8_gemv_max_k']()}, "
                               f"fp8_gemv_cuda.MAX_K says {MAX_K}: keep the two equal")

    def gemv(self, x: torch.Tensor, weight: torch.Tensor, inv_scale: torch.Tensor, tile: CudaGemvTile,
             out: torch.Tensor, x_scale: torch.Tensor | None = None, programmatic: bool = False) -> torch.Tensor:
        """out [1, N] float32 = E4M3(x) @ weight.T * scales, as fp8_linear.gemv (which checks the operands).

        `programmatic` launches it as a programmatic dependent of the kernel before it on the stream: it requests
        its first weight chunk while that kernel finishes, and waits for it before reading x or writing out. Only
        where no kernel just before it writes `weight` (a decode step, whose weights were written before it). A GPU
        that takes no such launch (kernels.programmatic_launches) runs the ordinary one."""
        n, k = weight.shape
        if k % 16 or k > MAX_K:
            raise ValueError(f"the CUDA FP8 GEMV takes K a multiple of 16 up to {MAX_K}, got K={k}: "
                             "give this shape a Triton tile (fp8_linear.GemvConfig)")
        if x.dtype not in X_TYPES:
            raise ValueError(f"the CUDA FP8 GEMV takes a float32, bfloat16 or float16 row, got {x.dtype}")
        if out.dtype != torch.float32 or out.numel() != n or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous float32 [1, {n}], got {out.dtype} {tuple(out.shape)}")
        for name, t in (("x", x), ("weight", weight), ("out", out), ("inv_scale", inv_scale)):
            if t.device != self.device:
                raise ValueError(f"{name} must be on {self.device}, got {t.device}")
        if weight.data_ptr() % 16:  # its rows are read 16 bytes a lane (K a multiple of 16 keeps every row aligned)
            raise ValueError(f"the weight must be 16-byte aligned, got one at {weight.data_ptr():#x}: pass a "
                             "contiguous copy")
        self._lib.call("fp8_gemv", self.device.index, x.data_ptr(), X_TYPES[x.dtype],
                       x_scale.data_ptr() if x_scale is not None else None, weight.data_ptr(), inv_scale.data_ptr(),
                       1 if inv_scale.ndim == 1 else 0, out.data_ptr(), n, k, tile.index,
                       int(programmatic and self._takes_programmatic),
                       torch.cuda.current_stream(self.device).cuda_stream)
        return out
