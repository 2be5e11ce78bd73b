"""Triton kernels that fuse the FP8 training step's quantization into the passes around it.

What an FP8 block's step spent beyond its GEMMs was memory passes: GELU (read, write), an amax pass and
a cast pass over its output; the GELU backward (read two, write one), a bias-gradient sum, an amax pass
and a cast pass over its output; and a cast of each float32 master weight after AdamW had just read and
written it. Here:
  - `amax_of` / `quantize_transposed` take an elementwise op (identity, GELU, GELU backward) that they
    apply to what they load: one pass finds the amax (and the bias gradient, a column sum) and may write
    the op's output in bfloat16 for the cast, or the cast pass computes the op from its inputs (less
    traffic, more evaluations of erf and exp); fp8_training.GELU_CAST picks, benchmarks/fp8_training_step.py
    times each;
  - `adamw_fp8` updates a weight, its moments and writes the next forward's FP8 weight in both layouts,
    scaled by the amax the previous cast recorded, recording this one's (TransformerEngine's FusedAdam
    updates Float8Tensor parameters from float32 master weights the same way).
Each computes what fp8_training's eager path computes: the op in float32 as torch computes it, rounded
to bfloat16, then fp8.quantize_tensorwise's cast (triton_quant's helpers, the same bits). The
transposed copy is the tile read again in the transposed orientation (Triton 3.6's tl.trans misplaced
bytes of loaded tiles on Hopper; see triton_quant), or, asked for, the FP8 tile transposed by tl.trans.
Tiles are fixed, not autotuned: a gate needs the same kernel in every process, and autotuning costs each
fresh process its compile time. CUDA, or Triton's interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pytest_lowprec.formats.nvfp4 import FLT_MAX
from pytest_lowprec.formats.triton_quant import _fp8_scale, _fp8_scaled, _magnitude_bits

from .interpreted import interpreting, mend_interpreter_scalars, run_interpreted
from .torch_math_triton import exp

IDENTITY, GELU, GELU_BACKWARD = 0, 1, 2
OPS = {"identity": IDENTITY, "gelu": GELU, "gelu_backward": GELU_BACKWARD}
# (BLOCK_M, BLOCK_N, num_warps), first choices: `tile=` overrides them, and the kernels part of
# benchmarks/fp8_training_step.py times others at the chapter's shape.
CAST_TILE = (64, 128, 4)
AMAX_TILE = (64, 256, 8)
ADAMW_TILE = (64, 64, 4)


@triton.jit
def _apply(a, b, OP: tl.constexpr, INTERPRETED: tl.constexpr):
    """The op on loaded bfloat16 values, in float32 as torch's GELU kernels compute it, rounded to bfloat16
    (the dtype the eager path materializes); returned as float32 holding bfloat16 values."""
    # The constants are float32(M_SQRT1_2) and float32(M_2_SQRTPI * M_SQRT1_2 * 0.5), as torch's kernels hold them.
    x = a.to(tl.float32)
    if OP == 1:  # x * 0.5 * (1 + erf(x / sqrt 2))
        x = x * 0.5 * (1.0 + tl.math.erf(x * 0.7071067690849304))
    if OP == 2:  # dy * (cdf + x * pdf), a = dy, b = x
        z = b.to(tl.float32)
        cdf = 0.5 * (1.0 + tl.math.erf(z * 0.7071067690849304))
        pdf = exp(-0.5 * z * z, INTERPRETED) * 0.3989422917366028
        x = x * (cdf + z * pdf)
    return _round_bf16(x)


@triton.jit
def _round_bf16(x):
    """float32 rounded to bfloat16 (to nearest, ties to even), kept as float32: integer operations, so
    Triton's interpreter (whose casts truncate) gives the GPU's bits; NaN stays NaN."""
    bits = x.to(tl.int32, bitcast=True)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)
    return tl.where(x != x, x, rounded)


@triton.jit
def _fp8_cast(x, scale, FP8_MAX: tl.constexpr, FLT_MAX: tl.constexpr, E5M2: tl.constexpr, INTERPRETED: tl.constexpr):
    """fp8.quantize_tensorwise's cast of x * scale: triton_quant's on a GPU. Triton's interpreter casts
    float32 to FP8 wrongly (124.16 became 64 in E4M3, NaN 384), but exactly representable values rightly, so
    under it the value is first rounded to the FP8 grid in float32 (to nearest even: the quantum is a power of
    two) and a NaN is given its code."""
    if INTERPRETED:
        y = tl.minimum(tl.maximum(x * scale, -FP8_MAX, propagate_nan=tl.PropagateNan.ALL), FP8_MAX,
                       propagate_nan=tl.PropagateNan.ALL)
        bits = y.to(tl.int32, bitcast=True)
        exponent = tl.maximum(((bits >> 23) & 0xFF) - 127, -14 if E5M2 else -6)
        quantum = ((exponent - (2 if E5M2 else 3) + 127) << 23).to(tl.float32, bitcast=True)
        steps = tl.abs(y) / quantum
        grid = ((steps + 8388608.0) - 8388608.0) * quantum
        signed = (grid.to(tl.int32, bitcast=True) | (bits & -2147483648)).to(tl.float32, bitcast=True)
        codes = tl.where(y != y, 0x7F, signed.to(tl.float8e5 if E5M2 else tl.float8e4nv).to(tl.uint8, bitcast=True))
        return codes.to(tl.uint8).to(tl.float8e5 if E5M2 else tl.float8e4nv, bitcast=True)  # NaN: code 0x7F
    return _fp8_scaled(x, scale, FP8_MAX, E5M2)


@triton.jit
def _tile(pid_m, n_rows, n_cols, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's tile of a row-major [n_rows, n_cols] tensor: its rows, columns, in-bounds mask and
    element offsets (int64)."""
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = (tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    return rows, cols, mask, rows[:, None] * n_cols + cols[None, :]


@triton.jit
def _op_over_tile(a_ptr, b_ptr, offs, mask, OP: tl.constexpr, INTERPRETED: tl.constexpr):
    """op(a, b) over the tile in float32, zero outside the tensor."""
    a = tl.load(a_ptr + offs, mask=mask, other=0.0)
    b = tl.load(b_ptr + offs, mask=mask, other=0.0) if OP == 2 else a
    return tl.where(mask, _apply(a, b, OP, INTERPRETED), 0.0)


@triton.jit
def _amax_kernel(a_ptr, b_ptr, amax_bits_ptr, colsum_ptr, out_ptr, n_rows, n_cols, OP: tl.constexpr,
                 COLSUM: tl.constexpr, OUT: tl.constexpr, INTERPRETED: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    """max |op(a, b)| over the tensor (one atomic per tile, on the magnitudes' bits: NaN sorts above Inf);
    with COLSUM each tile's column sums (float32) into row `pid_m` of colsum [tiles_m, n_cols]; with OUT
    op(a, b) itself in bfloat16 (what the eager op writes)."""
    pid_m = tl.program_id(0)
    rows, cols, mask, offs = _tile(pid_m, n_rows, n_cols, BLOCK_M, BLOCK_N)
    x = _op_over_tile(a_ptr, b_ptr, offs, mask, OP, INTERPRETED)
    tl.atomic_max(amax_bits_ptr, tl.max(tl.max(_magnitude_bits(x), axis=1), axis=0))
    if COLSUM:
        tl.store(colsum_ptr + pid_m * n_cols + cols, tl.sum(x, axis=0), mask=cols < n_cols)
    if OUT:
        tl.store(out_ptr + offs, x.to(tl.bfloat16), mask=mask)  # exact: x holds bfloat16 values


@triton.jit
def _cast_kernel(a_ptr, b_ptr, q_ptr, qt_ptr, amax_ptr, inv_ptr, seen_bits_ptr, colsum_ptr, n_rows, n_cols,
                 OP: tl.constexpr, FP8_MAX: tl.constexpr, FLT_MAX: tl.constexpr, E5M2: tl.constexpr,
                 SEEN: tl.constexpr, COLSUM: tl.constexpr, REGISTERS: tl.constexpr, INTERPRETED: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """q = fp8(op(a, b) * scale) and its transpose, the scale from amax as fp8.quantize_tensorwise takes it;
    with SEEN the running max at seen_bits_ptr takes the largest finite |op(a, b)| (a NaN or an Inf is
    left out: an overflowed step is skipped, and must not set later steps' scales), with COLSUM each
    tile's column sums go to row `pid_m` of colsum [tiles_m, n_cols]. The transposed copy is the tile read
    again in the transposed orientation and op computed again, or with REGISTERS the FP8 tile transposed
    by tl.trans (op computed once; Triton 3.6's tl.trans misplaced bytes of float32 and int32 tiles on
    Hopper, see triton_quant: the FP8 tile's is checked against the reread on the GPU before it is kept)."""
    scale = _fp8_scale(tl.load(amax_ptr), FP8_MAX, FLT_MAX)
    pid_m = tl.program_id(0)
    rows, cols, mask, offs = _tile(pid_m, n_rows, n_cols, BLOCK_M, BLOCK_N)
    x = _op_over_tile(a_ptr, b_ptr, offs, mask, OP, INTERPRETED)
    q = _fp8_cast(x, scale, FP8_MAX, FLT_MAX, E5M2, INTERPRETED)
    tl.store(q_ptr + offs, q, mask=mask)
    if SEEN:
        bits = _magnitude_bits(x)
        tl.atomic_max(seen_bits_ptr, tl.max(tl.max(tl.where(bits < 0x7F800000, bits, 0), axis=1), axis=0))
    if COLSUM:
        tl.store(colsum_ptr + pid_m * n_cols + cols, tl.sum(x, axis=0), mask=cols < n_cols)
    tmask = (cols[:, None] < n_cols) & (rows[None, :] < n_rows)
    if REGISTERS:
        qt = tl.trans(q)
    else:  # the same tile read again transposed (from L2), op computed again
        toffs = rows[None, :] * n_cols + cols[:, None]
        at = tl.load(a_ptr + toffs, mask=tmask, other=0.0)
        bt = tl.load(b_ptr + toffs, mask=tmask, other=0.0) if OP == 2 else at
        qt = _fp8_cast(_apply(at, bt, OP, INTERPRETED), scale, FP8_MAX, FLT_MAX, E5M2, INTERPRETED)
    tl.store(qt_ptr + cols[:, None] * n_rows + rows[None, :], qt, mask=tmask)
    if (pid_m == 0) & (tl.program_id(1) == 0):
        tl.store(inv_ptr, tl.math.div_rn(1.0, scale))


@triton.jit
def _adamw_fp8_kernel(p_ptr, g_ptr, m_ptr, v_ptr, q_ptr, qt_ptr, amax_ptr, inv_ptr, seen_bits_ptr, n_rows, n_cols,
                      beta1, one_minus_beta1, beta2, one_minus_beta2, eps, lr_decay, step_size, bias2_sqrt,
                      DECAY: tl.constexpr, EMIT: tl.constexpr, FP8_MAX: tl.constexpr, FLT_MAX: tl.constexpr,
                      INTERPRETED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One AdamW step of a float32 weight tile in the order torch's fused kernel computes it; with EMIT the
    updated tile cast to E4M3 (scaled by the amax at amax_ptr) in both layouts and its amax recorded."""
    rows, cols, mask, offs = _tile(tl.program_id(0), n_rows, n_cols, BLOCK_M, BLOCK_N)
    p = tl.load(p_ptr + offs, mask=mask, other=0.0)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0)
    m = tl.load(m_ptr + offs, mask=mask, other=0.0)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0)
    if DECAY:
        p = p - lr_decay * p
    m = beta1 * m + one_minus_beta1 * g
    v = beta2 * v + one_minus_beta2 * g * g
    denom = tl.math.div_rn(tl.sqrt_rn(v), bias2_sqrt) + eps
    p = p - tl.math.div_rn(step_size * m, denom)
    tl.store(p_ptr + offs, p, mask=mask)
    tl.store(m_ptr + offs, m, mask=mask)
    tl.store(v_ptr + offs, v, mask=mask)
    if EMIT:
        scale = _fp8_scale(tl.load(amax_ptr), FP8_MAX, FLT_MAX)
        tl.store(q_ptr + offs, _fp8_cast(p, scale, FP8_MAX, FLT_MAX, False, INTERPRETED), mask=mask)
        tl.atomic_max(seen_bits_ptr, tl.max(tl.max(tl.where(mask, _magnitude_bits(p), 0), axis=1), axis=0))
        # The updated tile back from memory in the transposed orientation: every thread's stores are
        # visible to the whole program after the barrier, and .cg reads them from L2, past L1's copy of
        # the tile as it was loaded.
        tl.debug_barrier()
        tmask = (cols[:, None] < n_cols) & (rows[None, :] < n_rows)
        pt = tl.load(p_ptr + rows[None, :] * n_cols + cols[:, None], mask=tmask, other=0.0, cache_modifier=".cg")
        qt = _fp8_cast(pt, scale, FP8_MAX, FLT_MAX, False, INTERPRETED)
        tl.store(qt_ptr + cols[:, None] * n_rows + rows[None, :], qt, mask=tmask)
        if (tl.program_id(0) == 0) & (tl.program_id(1) == 0):
            tl.store(inv_ptr, tl.math.div_rn(1.0, scale))


def _grid(rows: int, cols: int, tile) -> tuple[int, int]:
    return triton.cdiv(rows, tile[0]), triton.cdiv(cols, tile[1])


def _check(a: torch.Tensor, b: torch.Tensor | None, op: int) -> None:
    if a.ndim != 2 or a.dtype != torch.bfloat16 or not a.is_contiguous():
        raise ValueError(f"expected a contiguous 2D bfloat16 tensor, got {a.dtype} {tuple(a.shape)}")
    if op == GELU_BACKWARD and (b is None or b.shape != a.shape or b.dtype != a.dtype or not b.is_contiguous()):
        raise ValueError("the GELU backward takes the gradient and GELU's input: contiguous, of one shape and dtype")


def amax_of(a: torch.Tensor, b: torch.Tensor | None = None, op: int = IDENTITY, colsum: bool = False,
            out: bool = False, tile=AMAX_TILE) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(max |op(a, b)| as a float32 scalar, its column sums in float32 or None, op(a, b) in bfloat16 or None)
    in one pass over a (and b)."""
    _check(a, b, op)
    rows, cols = a.shape
    grid = _grid(rows, cols, tile)
    amax = torch.zeros((), dtype=torch.float32, device=a.device)
    partial = torch.empty(grid[0], cols, dtype=torch.float32, device=a.device) if colsum else amax
    result = torch.empty(rows, cols, dtype=torch.bfloat16, device=a.device) if out else a
    _amax_kernel[grid](a, a if b is None else b, amax.view(torch.int32), partial, result, rows, cols, OP=op,
                       COLSUM=colsum, OUT=out, INTERPRETED=interpreting(), BLOCK_M=tile[0], BLOCK_N=tile[1],
                       num_warps=tile[2])
    # Column sums from fixed per-tile partials, summed in a fixed order: the same bits every run.
    return amax, (partial.sum(0) if colsum else None), (result if out else None)


def quantize_transposed(a: torch.Tensor, amax: torch.Tensor, dtype: torch.dtype, b: torch.Tensor | None = None,
                        op: int = IDENTITY, seen: torch.Tensor | None = None, colsum: bool = False,
                        registers: bool = False, tile=CAST_TILE):
    """(q, q.t().contiguous(), inv_scale, column sums or None) of op(a, b), scaled by `amax`, in one pass.
    `seen` (a float32 scalar, e.g. holding an amax history's max) takes the max of itself and the largest
    finite |op(a, b)|; `colsum` sums op(a, b) over the rows in float32 (a bias gradient); `registers`
    transposes the FP8 tile with tl.trans instead of reading and computing the tile again."""
    _check(a, b, op)
    if dtype not in (torch.float8_e4m3fn, torch.float8_e5m2):
        raise ValueError(f"FP8 dtype is float8_e4m3fn or float8_e5m2, got {dtype}")
    if seen is not None and (seen.dtype != torch.float32 or seen.numel() != 1):
        raise ValueError(f"seen must be a float32 scalar tensor, got {seen.dtype} {tuple(seen.shape)}")
    rows, cols = a.shape
    grid = _grid(rows, cols, tile)
    q = torch.empty(rows, cols, dtype=dtype, device=a.device)
    qt = torch.empty(cols, rows, dtype=dtype, device=a.device)
    inv = torch.empty((), dtype=torch.float32, device=a.device)
    partial = torch.empty(grid[0], cols, dtype=torch.float32, device=a.device) if colsum else inv
    _cast_kernel[grid](a, a if b is None else b, q, qt, amax.reshape(()), inv,
                       (inv if seen is None else seen).view(torch.int32), partial, rows, cols, OP=op,
                       FP8_MAX=float(torch.finfo(dtype).max), FLT_MAX=FLT_MAX, E5M2=dtype == torch.float8_e5m2,
                       SEEN=seen is not None, COLSUM=colsum, REGISTERS=registers, INTERPRETED=interpreting(),
                       BLOCK_M=tile[0], BLOCK_N=tile[1], num_warps=tile[2])
    return q, qt, inv, (partial.sum(0) if colsum else None)


def adamw_fp8(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, *, lr: float, beta1: float,
              beta2: float, eps: float, weight_decay: float, step: int, amax: torch.Tensor | None,
              tile=ADAMW_TILE):
    """One AdamW step of the float32 weight p (in place, with its moments m and v) at step number `step`
    (1 for the first); with `amax` (the weight's amax at its previous FP8 cast), also returns
    (wq, wq transposed, inv_scale, this weight's amax): the next forward's E4M3 weight."""
    rows, cols = p.shape
    emit = amax is not None
    if emit:
        q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn, device=p.device)
        qt = torch.empty(cols, rows, dtype=torch.float8_e4m3fn, device=p.device)
        inv = torch.empty((), dtype=torch.float32, device=p.device)
        seen = torch.zeros((), dtype=torch.float32, device=p.device)
    else:
        q = qt = inv = seen = p
    # The scalars as torch's fused kernel derives them (bias corrections in double, then float32).
    bias1 = 1 - beta1 ** step
    bias2_sqrt = (1 - beta2 ** step) ** 0.5
    _adamw_fp8_kernel[_grid(rows, cols, tile)](
        p, g, m, v, q, qt, amax.reshape(()) if emit else p, inv, seen.view(torch.int32), rows, cols,
        beta1, 1 - beta1, beta2, 1 - beta2, eps, lr * weight_decay, lr / bias1, bias2_sqrt,
        DECAY=weight_decay != 0, EMIT=emit, FP8_MAX=448.0, FLT_MAX=FLT_MAX, INTERPRETED=interpreting(),
        BLOCK_M=tile[0], BLOCK_N=tile[1], num_warps=tile[2])
    return (q, qt, inv, seen) if emit else None


def interpreted(calls: list[tuple[str, tuple, dict]]) -> list[tuple[object, tuple]]:
    """Each (function name, args, kwargs) of this module run by Triton's interpreter on the CPU, in one
    child process, in order, as (its result, a copy of its args after the call: adamw_fp8 writes some in
    place; a tensor passed to several calls is one tensor there too): interpreted.run_interpreted."""
    return run_interpreted(__name__, calls, "the FP8 training kernels")


if __name__ == "__main__":
    import sys

    mend_interpreter_scalars()
    _results = []
    for _name, _args, _kwargs in torch.load(sys.argv[1]):
        _result = globals()[_name](*_args, **_kwargs)
        _results.append((_result, tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in _args)))
    torch.save(_results, sys.argv[2])
