"""CPU and GPU give the same bits; the Triton fast paths give the reference's bits. Needs CUDA."""

from __future__ import annotations

import math

import pytest
import torch

from pytest_lowprec.formats.fp8 import quantize_blockwise, quantize_rowwise, quantize_tensorwise
from pytest_lowprec.formats.hadamard import random_signs, rht
from pytest_lowprec.formats.mx import MX_ELEMENTS, quantize_mx
from pytest_lowprec.formats.nvfp4 import quantize_nvfp4

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def data(seed: int, rows: int = 256, cols: int = 1024) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=gen) * 2
    x[:, :4] *= 100  # outlier channels
    x[7] = 0  # an all-zero row
    x[9, :64] = torch.randn(64, generator=gen) * 1e-6  # tiny values: subnormal scales and elements
    return x.to(torch.bfloat16)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.cpu().reshape(-1).view(torch.uint8), b.cpu().reshape(-1).view(torch.uint8))


def same_scale_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """float32 scales: the same bits, except that a NaN matches any NaN. A NaN's payload is the arithmetic's,
    not the format's (x86 keeps an operand's, CUDA writes 0x7FFFFFFF) and nothing reads it."""
    a, b = a.cpu().float().reshape(-1), b.cpu().float().reshape(-1)
    nan = torch.isnan(a)
    return torch.equal(nan, torch.isnan(b)) and torch.equal(a[~nan].view(torch.int32), b[~nan].view(torch.int32))


def same_fp8_codes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """FP8 codes: the same bits, except that a NaN code matches a NaN code of either sign. The sign of a
    NaN is the arithmetic's (x86 keeps an operand's, and its default NaN is negative; CUDA writes +NaN)."""
    a, b = a.cpu().reshape(-1), b.cpu().reshape(-1)
    nan = torch.isnan(a.float())
    codes_a, codes_b = a.view(torch.uint8), b.view(torch.uint8)
    return torch.equal(nan, torch.isnan(b.float())) and torch.equal(codes_a[~nan], codes_b[~nan])


def fp8_edges(cols: int = 256) -> torch.Tensor:
    """Rows a quantizer's edges live in: a tiny row (amax 1e-37, whose 448 / amax overflows float32), a row
    holding a NaN, one holding an Inf, signed zeros, an all-zero row, a subnormal row and an ordinary one."""
    x = torch.randn(8, cols, generator=torch.Generator().manual_seed(12))
    x[0] = 0.0
    x[0, :3] = torch.tensor([1e-37, -3e-38, 7e-39])
    x[1, 5] = math.nan
    x[2, 9] = math.inf
    x[3] = -0.0
    x[3, 0] = 2.0
    x[4] = 0.0
    x[5] = x[5] * 1e-39
    return x


@pytest.mark.parametrize("quantize", [quantize_tensorwise, quantize_rowwise, quantize_blockwise],
                         ids=["tensorwise", "rowwise", "1x128"])
def test_fp8_cpu_and_gpu_give_the_same_bits(quantize):
    x = data(0)
    (qc, sc), (qg, sg) = quantize(x), quantize(x.cuda())
    assert same_bits(qc, qg) and same_bits(sc, sg)


@pytest.mark.parametrize("quantize", [quantize_tensorwise, quantize_rowwise, quantize_blockwise],
                         ids=["tensorwise", "rowwise", "1x128"])
@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("rows", [[0, 3, 4, 5, 6, 7], [1, 6], [2, 6]], ids=["tiny-zeros-subnormal", "nan", "inf"])
def test_fp8_cpu_and_gpu_give_the_same_bits_on_edge_inputs(quantize, dtype, rows):
    x = fp8_edges()[rows]
    (qc, sc), (qg, sg) = quantize(x, dtype), quantize(x.cuda(), dtype)
    assert same_fp8_codes(qc, qg) and same_scale_bits(sc, sg)


@pytest.mark.parametrize("tile", [(1, 16), (16, 16)])
def test_nvfp4_cpu_and_gpu_give_the_same_bits(tile):
    x = data(1)
    c, g = quantize_nvfp4(x, tile=tile), quantize_nvfp4(x.cuda(), tile=tile)
    assert same_bits(c.packed, g.packed) and same_bits(c.block_scales, g.block_scales)
    assert same_bits(c.global_decode, g.global_decode)


@pytest.mark.parametrize("fmt", sorted(MX_ELEMENTS))
def test_mx_cpu_and_gpu_give_the_same_bits(fmt):
    x = data(2)
    c, g = quantize_mx(x, fmt), quantize_mx(x.cuda(), fmt)
    assert same_bits(c.codes, g.codes) and same_bits(c.scales, g.scales)


def test_nvfp4_cpu_and_gpu_give_the_same_bits_on_a_tiny_tensor():
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(13)) * 1e-37
    c, g = quantize_nvfp4(x), quantize_nvfp4(x.cuda())
    assert same_bits(c.packed, g.packed) and same_bits(c.block_scales, g.block_scales)
    assert same_bits(c.global_decode, g.global_decode)


def mx_edges() -> torch.Tensor:
    """Blocks of 32: NaN among finite values, +-Inf among ones, signed zeros, all zeros, subnormal amax,
    amax just above 448 (floor and rceil differ), and ordinary ones."""
    x = torch.randn(4, 8 * 32, generator=torch.Generator().manual_seed(14))
    x[0, :32] = 1000.0
    x[0, 1], x[0, 2] = math.nan, 0.001
    x[1, :32], x[1, 1], x[1, 40] = 1.0, math.inf, -math.inf
    x[2, :32], x[2, 0] = -0.0, 1.0
    x[2, 32:64] = 0.0
    x[3, :32] *= 1e-40
    x[3, 32] = torch.nextafter(torch.tensor(448.0), torch.tensor(math.inf))
    return x


@pytest.mark.parametrize("fmt", ["mxfp8", "mxfp8_e5m2"])
@pytest.mark.parametrize("scale_mode", ["floor", "rceil"])
def test_mx_cpu_and_gpu_give_the_same_bits_on_edge_inputs(fmt, scale_mode):
    x = mx_edges()
    c, g = quantize_mx(x, fmt, scale_mode=scale_mode), quantize_mx(x.cuda(), fmt, scale_mode=scale_mode)
    assert same_bits(c.codes, g.codes) and same_bits(c.scales, g.scales)


@pytest.mark.parametrize("fmt", sorted(MX_ELEMENTS))
def test_mx_rceil_cpu_and_gpu_give_the_same_bits(fmt):
    x = data(2)
    c, g = quantize_mx(x, fmt, scale_mode="rceil"), quantize_mx(x.cuda(), fmt, scale_mode="rceil")
    assert same_bits(c.codes, g.codes) and same_bits(c.scales, g.scales)


def test_rht_cpu_and_gpu_give_the_same_bits():
    x, signs = data(3).float(), random_signs(5)
    assert same_bits(rht(x, signs), rht(x.cuda(), signs))


@pytest.mark.parametrize("shape", [(256, 1024), (100, 4096), (8192, 8192)])
def test_triton_nvfp4_gives_the_reference_bits(shape):
    triton_quant = pytest.importorskip("pytest_lowprec.formats.triton_quant")
    x = data(4, *shape).cuda()
    ref, fast = quantize_nvfp4(x), triton_quant.quantize_nvfp4_triton(x)
    assert same_bits(ref.packed, fast.packed) and same_bits(ref.block_scales, fast.block_scales)
    assert same_bits(ref.global_decode, fast.global_decode)


def every_finite_bfloat16() -> torch.Tensor:
    """All finite bfloat16 values, shuffled into 64 rows of 1024 (zeros pad the rest)."""
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    finite = bits[torch.isfinite(bits)]
    finite = finite[torch.randperm(finite.numel(), generator=torch.Generator().manual_seed(6))]
    return torch.cat([finite, torch.zeros(65536 - finite.numel(), dtype=torch.bfloat16)]).reshape(64, 1024)


def e2m1_ties() -> torch.Tensor:
    """Blocks of 16: 6 (the block amax), every positive E2M1 tie, four negative ones, both zeros, 3 and
    4.5; scaled by 2**k for k in -8..7."""
    ties = torch.tensor([6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -0.75, -1.25, -5.0, 0.0, -0.0, 3.0, 4.5])
    rows = [ties * 2.0**k for k in range(-8, 8)]
    return torch.stack(rows).repeat(1, 4).to(torch.bfloat16)


@pytest.mark.parametrize("make", [every_finite_bfloat16, e2m1_ties], ids=["every-finite-bf16", "e2m1-ties"])
def test_triton_nvfp4_gives_the_reference_bits_on_every_value_and_tie(make):
    triton_quant = pytest.importorskip("pytest_lowprec.formats.triton_quant")
    x = make().cuda()
    ref, fast = quantize_nvfp4(x), triton_quant.quantize_nvfp4_triton(x)
    assert same_bits(ref.packed, fast.packed) and same_bits(ref.block_scales, fast.block_scales)


@pytest.mark.parametrize("make", [
    lambda: torch.full((16, 64), 1e-37),
    lambda: torch.randn(16, 64, generator=torch.Generator().manual_seed(15)) * 1e-37,
    lambda: torch.randn(16, 64, generator=torch.Generator().manual_seed(16)) * 1e-41,
], ids=["1e-37", "randn-1e-37", "randn-1e-41-subnormal"])
def test_triton_nvfp4_gives_the_reference_bits_on_a_tiny_tensor(make):
    """2688 / amax overflows float32: both clamp the encode scale to FLT_MAX, so the decode scale is the
    subnormal 2**-128 (div.rn, no flush to zero) and the block scales stay nonzero."""
    triton_quant = pytest.importorskip("pytest_lowprec.formats.triton_quant")
    x = make().to(torch.bfloat16).cuda()
    ref, fast = quantize_nvfp4(x), triton_quant.quantize_nvfp4_triton(x)
    assert same_bits(ref.packed, fast.packed) and same_bits(ref.block_scales, fast.block_scales)
    assert same_bits(ref.global_decode, fast.global_decode)


def test_triton_nvfp4_with_a_given_amax_gives_the_reference_bits_for_that_amax():
    triton_quant = pytest.importorskip("pytest_lowprec.formats.triton_quant")
    x = data(7).cuda()
    amax = x.float().abs().amax() * 0.5  # a stale, smaller amax: block scales and elements saturate
    ref, fast = quantize_nvfp4(x, amax=amax), triton_quant.quantize_nvfp4_triton(x, amax=amax)
    assert same_bits(ref.packed, fast.packed) and same_bits(ref.block_scales, fast.block_scales)
    assert same_bits(ref.global_decode, fast.global_decode)


@pytest.mark.parametrize("shape", [(256, 1024), (100, 3000), (8192, 8192)])
def test_triton_fp8_rowwise_gives_the_reference_bits(shape):
    triton_quant = pytest.importorskip("pytest_lowprec.formats.triton_quant")
    x = data(5, *shape).cuda()
    (qr, sr), (qf, sf) = quantize_rowwise(x), triton_quant.quantize_fp8_rowwise_triton(x)
    assert same_bits(qr, qf) and same_bits(sr, sf)


@pytest.mark.parametrize("source", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_triton_fp8_rowwise_gives_the_reference_bits_on_edge_rows(source):
    """Tiny row (scale clamped to FLT_MAX), NaN row (all NaN, NaN inverse scale), Inf row (NaN at the Inf, zeros,
    Inf inverse scale), signed zeros, zero row, subnormals: the integer amax sees the NaN as torch.amax does."""
    triton_quant = pytest.importorskip("pytest_lowprec.formats.triton_quant")
    x = fp8_edges().to(source).cuda()
    (qr, sr), (qf, sf) = quantize_rowwise(x), triton_quant.quantize_fp8_rowwise_triton(x)
    assert same_bits(qr, qf) and same_scale_bits(sr, sf)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("source", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("rows", [[0, 4], [0, 3, 4, 5, 6, 7], [1, 6], [2, 6]],
                         ids=["tiny", "tiny-signed-zeros-subnormal", "nan", "inf"])
def test_triton_fp8_tensorwise_gives_the_reference_bits_on_edge_tensors(dtype, source, rows):
    triton_quant = pytest.importorskip("pytest_lowprec.formats.triton_quant")
    x = fp8_edges()[rows].to(source).cuda()
    q, inv = quantize_tensorwise(x, dtype)
    fq, fqt, finv = triton_quant.quantize_fp8_tensorwise_triton(x, dtype, transpose=True)
    assert same_bits(q, fq) and same_bits(q.t().contiguous(), fqt) and same_scale_bits(inv, finv)


def test_triton_absmax_of_a_tensor_holding_a_nan_is_nan_as_torch_amax_gives():
    """A float max drops a NaN (PTX max.f32 returns the other operand); the integer max of the bits keeps it,
    wherever in the tensor it sits, so a NaN tensor is quantized as NaN, not with its finite amax."""
    triton_quant = pytest.importorskip("pytest_lowprec.formats.triton_quant")
    for where in (0, 12345, 100_000 - 1):
        x = torch.randn(100_000, device="cuda")
        x[where] = math.nan
        assert math.isnan(float(triton_quant.absmax(x)))


def test_triton_fp8_tensorwise_records_a_nan_it_saw_while_casting_with_a_given_amax():
    """Delayed scaling: this step's amax (the next step's scale) carries the NaN, as the eager path's
    torch.amax does, while this cast uses the given amax."""
    triton_quant = pytest.importorskip("pytest_lowprec.formats.triton_quant")
    x = data(17, 300, 1000).float().cuda()
    x[100, 200] = math.nan
    seen = torch.zeros((), dtype=torch.float32, device="cuda")
    stale = torch.tensor(10.0, device="cuda")
    q, inv = quantize_tensorwise(x, torch.float8_e4m3fn, amax=stale)
    fq, finv = triton_quant.quantize_fp8_tensorwise_triton(x, amax=stale, seen_amax=seen)
    assert same_bits(q, fq) and same_bits(inv, finv) and math.isnan(float(seen))


def test_triton_nvfp4_takes_only_bfloat16_and_says_what_takes_the_rest():
    triton_quant = pytest.importorskip("pytest_lowprec.formats.triton_quant")
    with pytest.raises(ValueError, match="expected a 2D bfloat16 CUDA tensor.*quantize_nvfp4 takes any other"):
        triton_quant.quantize_nvfp4_triton(torch.randn(16, 64, device="cuda"))


def _check_fp8_tensorwise(triton_quant, x: torch.Tensor, dtype: torch.dtype, config=None) -> None:
    q, inv = quantize_tensorwise(x, dtype)
    fq, fqt, finv = triton_quant.quantize_fp8_tensorwise_triton(x, dtype, transpose=True, config=config)
    assert same_bits(q, fq), "row-major output differs from quantize_tensorwise"
    assert same_bits(q.t().contiguous(), fqt), "transposed output differs from quantize_tensorwise's transpose"
    assert same_bits(inv, finv), "inverse scale differs"


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("source", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("shape", [(256, 1024), (100, 3000), (4096, 16384)])
def test_triton_fp8_tensorwise_gives_the_reference_bits_in_both_layouts(dtype, source, shape):
    triton_quant = pytest.importorskip("pytest_lowprec.formats.triton_quant")
    _check_fp8_tensorwise(triton_quant, data(8, *shape).to(source).cuda(), dtype)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("source", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("config", range(5))
def test_triton_fp8_tensorwise_gives_the_reference_bits_for_every_tile_config(dtype, source, config):
    """The autotuner may pick any of them on another GPU or shape."""
    triton_quant = pytest.importorskip("pytest_lowprec.formats.triton_quant")
    assert len(triton_quant.FP8_TENSORWISE_CONFIGS) == 5, "parametrize over every config"
    _check_fp8_tensorwise(triton_quant, data(10, 300, 1000).to(source).cuda(), dtype,
                          triton_quant.FP8_TENSORWISE_CONFIGS[config])


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=["e4m3", "e5m2"])
def test_triton_fp8_tensorwise_gives_the_reference_bits_on_every_finite_bfloat16(dtype):
    triton_quant = pytest.importorskip("pytest_lowprec.formats.triton_quant")
    x = every_finite_bfloat16().cuda()
    amax = torch.tensor(1.0, device="cuda")  # most values saturate, the smallest underflow to subnormals and 0
    q, inv = quantize_tensorwise(x, dtype, amax=amax)
    fq, finv = triton_quant.quantize_fp8_tensorwise_triton(x, dtype, amax=amax)
    assert same_bits(q, fq) and same_bits(inv, finv)


def test_triton_fp8_tensorwise_turns_an_overflowed_tensor_into_nan_as_the_reference_does():
    """An inf in a gradient must reach the loss scaler as NaN, not as a saturated finite value."""
    triton_quant = pytest.importorskip("pytest_lowprec.formats.triton_quant")
    x = data(9).cuda()
    x[3, 5] = float("inf")
    q, _ = quantize_tensorwise(x, torch.float8_e5m2)
    fq, _ = triton_quant.quantize_fp8_tensorwise_triton(x, torch.float8_e5m2)
    assert same_bits(q, fq) and bool(torch.isnan(fq.float()).any())


def test_triton_fp8_tensorwise_records_the_amax_it_saw_while_casting_with_a_given_one():
    """Delayed scaling: the cast uses an earlier amax and reports this tensor's for the next one."""
    triton_quant = pytest.importorskip("pytest_lowprec.formats.triton_quant")
    x = data(11, 300, 1000).float().cuda()
    stale = x.abs().amax() * 0.9  # the weights grew since: the largest saturate
    seen = torch.zeros((), dtype=torch.float32, device="cuda")
    q, inv = quantize_tensorwise(x, torch.float8_e4m3fn, amax=stale)
    fq, fqt, finv = triton_quant.quantize_fp8_tensorwise_triton(x, amax=stale, transpose=True, seen_amax=seen)
    assert same_bits(q, fq) and same_bits(q.t().contiguous(), fqt) and same_bits(inv, finv)
    assert float(seen) == float(x.abs().amax())


@pytest.mark.parametrize("shape", [(16384, 4096), (4096, 16384), (130, 257), (1, 1)])
def test_triton_byte_transpose_gives_torchs_transpose_bit_for_bit(shape):
    """FSDP2's FP8-gathered weight is transposed every step for the data gradient: every byte value, every
    position, at the chapter's weight shapes and at ragged ones."""
    triton_quant = pytest.importorskip("pytest_lowprec.formats.triton_quant")
    gen = torch.Generator(device="cuda").manual_seed(3)
    q = torch.randint(0, 256, shape, dtype=torch.uint8, device="cuda", generator=gen).view(torch.float8_e4m3fn)
    t = triton_quant.transpose_fp8_triton(q)
    assert t.dtype == q.dtype and same_bits(t, q.t().contiguous())
