"""CPU and GPU give the same bits; the Triton fast paths give the reference's bits. Needs CUDA."""

from __future__ import annotations

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


@pytest.mark.parametrize("quantize", [quantize_tensorwise, quantize_rowwise, quantize_blockwise],
                         ids=["tensorwise", "rowwise", "1x128"])
def test_fp8_cpu_and_gpu_give_the_same_bits(quantize):
    x = data(0)
    (qc, sc), (qg, sg) = quantize(x), quantize(x.cuda())
    assert same_bits(qc, qg) and same_bits(sc, sg)


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
