"""The correctness bar for pytest_lowprec.formats: bits against torch and hand-worked examples."""

from __future__ import annotations

import math

import pytest
import torch

from pytest_lowprec.formats import bounds
from pytest_lowprec.formats.fp8 import (
    dequantize,
    quantize_blockwise,
    quantize_rowwise,
    quantize_tensorwise,
    saturating_cast,
)
from pytest_lowprec.formats.hadamard import hadamard_matrix, inverse_rht, random_signs, rht
from pytest_lowprec.formats.metrics import cosine, max_abs, rel_l2, sqnr_db
from pytest_lowprec.formats.minifloat import E2M1, E2M3, E3M2, E4M3, E5M2, ELEMENTS
from pytest_lowprec.formats.mx import (
    E8M0_NAN,
    MX_ELEMENTS,
    mx_element,
    quantize_mx,
    scaled_mm_mx_scale_mode,
    shared_exponents,
)
from pytest_lowprec.formats.nvfp4 import NVFP4Tensor, quantize_nvfp4
from pytest_lowprec.formats.packing import pack_fp4, pack_fp6, unpack_fp4, unpack_fp6

FP8 = [(torch.float8_e4m3fn, E4M3), (torch.float8_e5m2, E5M2)]
# One scale per tensor, per row, per 1x128 block: the FP8 scaling units.
FP8_QUANTIZERS = [quantize_tensorwise, quantize_rowwise, quantize_blockwise]
FP8_UNITS = ["tensorwise", "rowwise", "1x128"]


def dense_sweep(dtype: torch.dtype) -> torch.Tensor:
    """Every finite value, every tie between neighbours, a float32 ulp either side of each tie,
    the subnormals and zeros among them, and values past max."""
    values = torch.arange(256, dtype=torch.uint8).view(dtype).float()
    values = values[torch.isfinite(values)].unique()
    ties = (values[1:] + values[:-1]) / 2
    up, down = torch.tensor(math.inf), torch.tensor(-math.inf)
    mx = torch.finfo(dtype).max
    past = torch.tensor([mx * 1.0001, mx * 1.5, mx * 4, 1e30])
    return torch.cat([values, ties, torch.nextafter(ties, up), torch.nextafter(ties, down), past, -past])


@pytest.mark.parametrize("dtype, fmt", FP8, ids=["e4m3", "e5m2"])
def test_fp8_cast_is_bit_equal_to_torch_within_range(dtype, fmt):
    x = dense_sweep(dtype)
    inside = x.abs() <= torch.finfo(dtype).max
    ours = saturating_cast(x, dtype).view(torch.uint8)
    theirs = x.to(dtype).view(torch.uint8)
    assert torch.equal(ours[inside], theirs[inside])


@pytest.mark.parametrize("dtype, fmt", FP8, ids=["e4m3", "e5m2"])
def test_fp8_cast_saturates_past_max(dtype, fmt):
    # torch's own cast past max is not stable across versions and devices (NaN for E4M3 on
    # torch 2.11 CUDA; saturation on torch 2.13 CPU), so we clamp first.
    mx = torch.finfo(dtype).max
    x = torch.tensor([mx * 1.2, -mx * 1.2, 1e30])
    assert saturating_cast(x, dtype).float().tolist() == [mx, -mx, mx]


@pytest.mark.parametrize("dtype, codes", [
    (torch.float8_e4m3fn, [0x7E, 0xFE, 0x7E, 0x7E, 0xFE]),  # +-448
    (torch.float8_e5m2, [0x7B, 0xFB, 0x7B, 0x7B, 0xFB]),  # +-57344
], ids=["e4m3", "e5m2"])
def test_fp8_cast_clamps_values_past_max_and_inf_to_the_max_code_whatever_torch_casts(dtype, codes):
    """The expected codes come from the formats, not from torch's cast: torch 2.13's eager E4M3 cast
    saturates and E5M2's overflows to Inf, earlier E4M3 casts gave NaN; the clamp before the cast is
    what makes the result the same on every torch."""
    mx = torch.finfo(dtype).max
    x = torch.tensor([mx * 1.0001, -mx * 1.0001, 1e30, math.inf, -math.inf])
    assert saturating_cast(x, dtype).view(torch.uint8).tolist() == codes


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=["e4m3", "e5m2"])
def test_fp8_with_a_given_amax_saturates_an_inf_input_like_any_value_past_max(dtype):
    q, inv = quantize_tensorwise(torch.tensor([1.0, math.inf, -math.inf]), dtype, amax=torch.tensor(1.0))
    mx = torch.finfo(dtype).max
    assert q.float().tolist() == [mx, mx, -mx] and math.isfinite(inv.item())


def test_nan_into_e4m3_stays_nan():
    assert torch.isnan(saturating_cast(torch.tensor([math.nan]), torch.float8_e4m3fn).float()).all()


@pytest.mark.parametrize("dtype, fmt", FP8, ids=["e4m3", "e5m2"])
def test_generic_minifloat_rounding_agrees_with_torch_fp8_casts(dtype, fmt):
    x = dense_sweep(dtype)
    inside = x.abs() <= torch.finfo(dtype).max
    assert torch.equal(fmt.round(x)[inside], x.to(dtype).float()[inside])


def test_e2m1_values_are_the_ocp_table_in_code_order():
    assert E2M1.table().tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                                     -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def test_e2m1_decoding_matches_torch_float4_e2m1fn_x2_where_torch_can_decode():
    packed = pack_fp4(torch.arange(16, dtype=torch.uint8))
    try:
        theirs = packed.view(torch.float4_e2m1fn_x2).to(torch.float32)
    except (RuntimeError, TypeError) as exc:
        pytest.skip(f"this torch cannot decode float4_e2m1fn_x2 ({exc}); the OCP table test covers the values")
    assert theirs.flatten().tolist() == E2M1.table().tolist()


def test_e2m1_rounds_ties_to_even():
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -5.0])
    assert E2M1.round(x).tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -0.0, -4.0]


SIGN_BIT = {fmt.name: 1 << (fmt.bits - 1) for fmt in ELEMENTS.values()}


@pytest.mark.parametrize("fmt", list(ELEMENTS.values()), ids=list(ELEMENTS))
def test_element_rounding_keeps_the_sign_of_zero_as_ieee_does(fmt):
    """-0.0 stays -0, and a negative value that rounds to zero is -0 (every element format has a -0 code)."""
    x = torch.tensor([-0.0, 0.0, -fmt.smallest_subnormal / 4])
    codes = fmt.encode(fmt.round(x)).tolist()
    assert codes == [SIGN_BIT[fmt.name], 0, SIGN_BIT[fmt.name]]


@pytest.mark.parametrize("dtype, fmt", FP8, ids=["e4m3", "e5m2"])
def test_fp8_saturating_cast_and_element_rounding_agree_on_negative_zero(dtype, fmt):
    x = torch.tensor([-0.0, -fmt.smallest_subnormal / 4])
    assert saturating_cast(x, dtype).view(torch.uint8).tolist() == fmt.encode(fmt.round(x)).tolist() == [0x80, 0x80]


@pytest.mark.parametrize("quantize", FP8_QUANTIZERS, ids=FP8_UNITS)
def test_fp8_quantizers_keep_the_sign_of_zero(quantize):
    x = torch.zeros(2, 128)
    x[0, 0], x[0, 1], x[0, 2] = 1.0, -0.0, -1e-9  # -1e-9 * 448 rounds to zero in E4M3
    q, _ = quantize(x)
    assert q.view(torch.uint8)[0, :4].tolist() == [0x7E, 0x80, 0x80, 0x00]


@pytest.mark.parametrize("fmt", sorted(MX_ELEMENTS))
def test_mx_elements_keep_the_sign_of_zero(fmt):
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 1], x[0, 2] = 1.0, -0.0, -1e-12
    sign = SIGN_BIT[MX_ELEMENTS[fmt]]
    assert quantize_mx(x, fmt).codes[0, 1:4].tolist() == [sign, sign, 0]


def test_nvfp4_writes_negative_zero_input_as_positive_zero_as_transformer_engine_does():
    """TE's reference takes the sign from x < 0: an input -0.0 is +0 (code 0), a negative value that
    rounds to zero is -0 (code 8)."""
    x = torch.zeros(1, 16)
    x[0, 0], x[0, 1], x[0, 2] = 6.0, -0.0, -0.1
    assert quantize_nvfp4(x).codes[0, :4].tolist() == [7, 0, 8, 0]


def test_fp6_maxima_and_every_code_round_trips():
    assert E3M2.table().max().item() == 28.0 and E2M3.table().max().item() == 7.5
    for fmt in (E2M1, E3M2, E2M3):
        codes = torch.arange(2 ** fmt.bits, dtype=torch.uint8)
        assert torch.equal(fmt.encode(fmt.table()), codes)


def test_fp4_packs_element_zero_in_the_low_nibble():
    assert pack_fp4(torch.tensor([0x1, 0x2], dtype=torch.uint8)).tolist() == [0x21]


@pytest.mark.parametrize("bits, pack, unpack", [(4, pack_fp4, unpack_fp4), (6, pack_fp6, unpack_fp6)])
def test_packing_round_trips_exactly(bits, pack, unpack):
    codes = torch.randint(0, 2 ** bits, (8, 96), dtype=torch.uint8)
    packed = pack(codes)
    assert packed.shape[-1] == 96 * bits // 8 and torch.equal(unpack(packed), codes)


def test_fp6_packs_four_codes_little_endian_into_three_bytes():
    assert pack_fp6(torch.tensor([1, 2, 3, 63], dtype=torch.uint8)).tolist() == [0x81, 0x30, 0xFC]


def nvfp4_hand_worked() -> torch.Tensor:
    """Three 16-element blocks: block 0 sets amax 10.5 (global encode scale 2688/10.5 = 256);
    block 1 has amax 3 = 6 * 2^-1, so its E4M3 scale is exactly 2^7 and its elements scale
    by exactly 2, landing on the E2M1 ties; block 2 is all zeros."""
    block0 = torch.zeros(16)
    block0[0] = 10.5
    block1 = torch.tensor([0.125, 0.375, 0.625, 0.875, 1.25, 1.75, 2.5, 3.0,
                           -0.375, -0.625, -2.5, -3.0, 0.0, 0.1, -0.1, 0.3])
    return torch.cat([block0, block1, torch.zeros(16)]).reshape(1, 48)


def test_nvfp4_scales_of_the_hand_worked_blocks():
    q = quantize_nvfp4(nvfp4_hand_worked())
    assert q.global_decode.item() == 1 / 256
    assert q.block_scales.float().tolist() == [[448.0, 128.0, 0.0]]


def test_nvfp4_element_codes_of_the_hand_worked_blocks():
    codes = quantize_nvfp4(nvfp4_hand_worked()).codes[0]
    # block 0: 10.5 * (256/448) = 6.0000003 -> 6 (code 7), zeros -> 0
    assert codes[:16].tolist() == [7] + [0] * 15
    # block 1, x*2: 0.25->0, 0.75->1, 1.25->1, 1.75->2, 2.5->2, 3.5->4, 5->4, 6->6;
    # then -0.75->-1, -1.25->-1, -5->-4, -6->-6, 0->0, 0.2->0, -0.2->-0, 0.6->0.5
    assert codes[16:32].tolist() == [0, 2, 2, 4, 4, 6, 6, 7, 10, 10, 14, 15, 0, 0, 8, 1]
    assert codes[32:].tolist() == [0] * 16


def test_nvfp4_dequantizes_the_hand_worked_blocks():
    x = nvfp4_hand_worked()
    out = quantize_nvfp4(x).dequantize()
    assert out[0, 0].item() == 10.5 and out[0, 32:].abs().sum().item() == 0
    assert out[0, 16:24].tolist() == [0.0, 0.5, 0.5, 1.0, 1.0, 2.0, 2.0, 3.0]


def test_nvfp4_2d_tiles_share_one_scale_per_16x16():
    x = torch.randn(32, 64)
    q = quantize_nvfp4(x, tile=(16, 16))
    assert q.block_scales.shape == (2, 4)
    assert sqnr_db(x, q.dequantize()) > bounds.qdq_floor("nvfp4")


def test_nvfp4_16x16_tiles_transpose_to_the_same_values():
    q = quantize_nvfp4(torch.randn(32, 48), tile=(16, 16))
    t = q.transposed()
    assert t.shape == (48, 32) and t.block_scales.shape == (3, 2)
    assert torch.equal(t.dequantize(), q.dequantize().t())


def test_nvfp4_1x16_blocks_refuse_a_transpose():
    with pytest.raises(ValueError, match="quantize the transpose instead"):
        quantize_nvfp4(torch.randn(32, 48)).transposed()


def test_nvfp4_row_blocks_repeat_a_tiles_scale_over_its_rows():
    q = quantize_nvfp4(torch.randn(32, 48), tile=(16, 16))
    rows = q.row_blocks()
    assert rows.tile == (1, 16) and rows.block_scales.shape == (32, 3)
    assert torch.equal(rows.dequantize(), q.dequantize())


def test_nvfp4_block_values_are_exact_in_bfloat16_and_omit_the_tensor_scale():
    q = quantize_nvfp4(torch.randn(16, 64) * 1000)
    assert torch.equal(q.block_values(torch.bfloat16).float(), q.block_values(torch.float32))
    assert torch.equal(q.block_values(torch.float32) * q.global_decode, q.dequantize())


def test_nvfp4_nbytes_counts_elements_scales_and_the_tensor_scale():
    q = quantize_nvfp4(torch.randn(64, 256))
    assert q.nbytes == 64 * 256 // 2 + 64 * 256 // 16 + 4


def _stack_parts() -> list:
    g = torch.Generator().manual_seed(41)
    return [quantize_nvfp4(scale * torch.randn(rows, 64, generator=g)) for rows, scale in ((32, 1.0), (16, 300.0))]


def test_nvfp4_concatenated_parts_dequantize_to_each_parts_own_values():
    parts = _stack_parts()
    stack = NVFP4Tensor.concatenated(parts)
    assert stack.shape == (48, 64) and stack.row_scaled and stack.global_decode.shape == (48, 1)
    assert torch.equal(stack.dequantize(), torch.cat([p.dequantize() for p in parts]))


def test_nvfp4_concatenated_nbytes_count_a_tensor_scale_a_row():
    stack = NVFP4Tensor.concatenated(_stack_parts())
    assert stack.nbytes == 48 * 64 // 2 + 48 * 64 // 16 + 48 * 4


def test_nvfp4_concatenated_refuses_parts_of_other_widths():
    g = torch.Generator().manual_seed(42)
    parts = [quantize_nvfp4(torch.randn(16, 64, generator=g)), quantize_nvfp4(torch.randn(16, 32, generator=g))]
    with pytest.raises(ValueError, match="part 1 has shape"):
        NVFP4Tensor.concatenated(parts)


def test_nvfp4_concatenated_stack_refuses_a_transpose():
    g = torch.Generator().manual_seed(43)
    parts = [quantize_nvfp4(torch.randn(16, 32, generator=g), tile=(16, 16)) for _ in range(2)]
    with pytest.raises(ValueError, match="transpose its parts"):
        NVFP4Tensor.concatenated(parts).transposed()


def test_nvfp4_tiny_tensor_gets_the_largest_finite_encode_scale_as_transformer_engine_does():
    """2688 / 1e-37 overflows float32: TE clamps the encode scale to FLT_MAX, so the block scale is
    1e-37 * FLT_MAX / 6 = 5.67 -> 5.5 in E4M3 instead of underflowing to 0 (which zeroed the tensor)."""
    q = quantize_nvfp4(torch.full((1, 16), 1e-37))
    assert q.global_decode.item() == 2.0**-128  # float32(1 / FLT_MAX)
    assert q.block_scales.float().tolist() == [[5.5]]


def test_nvfp4_tiny_tensor_dequantizes_to_the_nearest_value_its_tensor_scale_allows():
    x = torch.full((1, 16), 1e-37)
    q = quantize_nvfp4(x)
    e4m3 = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    e4m3 = e4m3[torch.isfinite(e4m3) & (e4m3 >= 0)]
    grid = (E2M1.table()[:8, None] * e4m3[None, :]).flatten() * q.global_decode  # every element * block scale
    nearest = grid[(grid - 1e-37).abs().argmin()]
    assert torch.equal(q.dequantize(), torch.full_like(x, nearest.item()))


def test_nvfp4_all_zero_tensor_keeps_tensor_scale_one():
    q = quantize_nvfp4(torch.zeros(1, 16))
    assert q.global_decode.item() == 1.0 and q.block_scales.float().tolist() == [[0.0]]


def test_mx_nbytes_counts_packed_elements_and_scale_bytes():
    x = torch.randn(4, 64)
    assert quantize_mx(x, "mxfp4").nbytes == 4 * 64 // 2 + 4 * 2
    assert quantize_mx(x, "mxfp6").nbytes == 4 * 64 * 6 // 8 + 4 * 2
    assert quantize_mx(x, "mxfp8").nbytes == 4 * 64 + 4 * 2


def test_mx_scale_puts_block_amax_in_the_elements_top_binade():
    x = torch.zeros(1, 32)
    x[0, 0] = 100.0  # floor(log2 100) = 6; E2M1's largest exponent is 2 -> shared exponent 4
    q = quantize_mx(x, "mxfp4")
    assert q.scales.tolist() == [[127 + 4]]
    assert q.dequantize()[0, 0].item() == 96.0  # 100/16 = 6.25 -> 6, times 16


def mx_block(amax: float, fill: float = 0.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One 32-element block whose amax is `amax` (element 0), with -amax/3 and `fill` around it."""
    x = torch.full((1, 32), fill, dtype=dtype)
    x[0, 0], x[0, 1] = amax, -amax / 3
    return x


def next_up(v: float) -> float:
    return torch.nextafter(torch.tensor(v), torch.tensor(math.inf)).item()


def next_down(v: float) -> float:
    return torch.nextafter(torch.tensor(v), torch.tensor(-math.inf)).item()


# (format, block amax, E8M0 code under "floor", under "rceil"), worked from the definitions:
# floor: floor(log2(amax)) - emax; rceil: the smallest s with amax / 2**s <= max. E4M3: max 448 =
# 1.75 * 2**8, emax 8; E5M2: 57344 = 1.75 * 2**15, emax 15; E3M2: 28 = 1.75 * 2**4, emax 4;
# E2M3: 7.5 = 1.875 * 2**2, emax 2; E2M1: 6 = 1.5 * 2**2, emax 2.
CRAFTED_AMAX = [
    ("mxfp8", 256.0, 127, 127),                 # a power of two: both modes agree
    ("mxfp8", 2.0**-20, 99, 99),
    ("mxfp8", 448.0, 127, 127),                 # max * 2**0: fits exactly under both
    ("mxfp8", 448.0 * 2.0**-20, 107, 107),
    ("mxfp8", next_up(448.0), 127, 128),         # just above max: floor saturates it, rceil rounds up
    ("mxfp8", next_up(448.0 * 2.0**-20), 107, 108),
    ("mxfp8", next_down(512.0), 127, 128),       # the top of floor's binade
    ("mxfp8", 512.0, 128, 128),
    ("mxfp8_e5m2", 57344.0, 127, 127),
    ("mxfp8_e5m2", next_up(57344.0), 127, 128),
    ("mxfp6_e3m2", 28.0, 127, 127),
    ("mxfp6_e3m2", next_up(28.0), 127, 128),
    ("mxfp6", 7.5, 127, 127),
    ("mxfp6", next_up(7.5), 127, 128),
    ("mxfp4", 4.0, 127, 127),
    ("mxfp4", 6.0 * 2.0**10, 137, 137),
    ("mxfp4", next_up(6.0 * 2.0**10), 137, 138),
    ("mxfp4", 7.9, 127, 128),
    ("mxfp4", torch.finfo(torch.float32).max, 252, 253),
    ("mxfp8", 2.0**-119, 0, 0),                  # the smallest scale, 2**-127, reached exactly
    ("mxfp8", 2.0**-130, 0, 0),                  # below it: clamped to 2**-127
]


@pytest.mark.parametrize("fmt, amax, floor_code, rceil_code", CRAFTED_AMAX)
def test_mx_floor_scale_is_the_amax_exponent_minus_the_elements_largest(fmt, amax, floor_code, rceil_code):
    assert quantize_mx(mx_block(amax), fmt, scale_mode="floor").scales.tolist() == [[floor_code]]


@pytest.mark.parametrize("fmt, amax, floor_code, rceil_code", CRAFTED_AMAX)
def test_mx_rceil_scale_is_the_smallest_that_holds_the_amax(fmt, amax, floor_code, rceil_code):
    assert quantize_mx(mx_block(amax), fmt, scale_mode="rceil").scales.tolist() == [[rceil_code]]


def test_mx_default_scale_mode_is_ocps_floor():
    x = torch.randn(8, 256)
    assert torch.equal(quantize_mx(x, "mxfp8").scales, quantize_mx(x, "mxfp8", scale_mode="floor").scales)


@pytest.mark.parametrize("fmt", sorted(MX_ELEMENTS))
def test_mx_rceil_never_saturates_and_floor_may(fmt):
    """Over 12 binades of block amax: under rceil amax / scale <= max in every block (so the block's
    largest element round-trips to within rounding); under floor some blocks' amax lands past max."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(64, 32 * 64, generator=gen) * torch.logspace(-6, 6, 64, base=2.0)[:, None]
    elem = mx_element(fmt)
    for mode, saturates in (("rceil", False), ("floor", True)):
        q = quantize_mx(x, fmt, scale_mode=mode)
        amax = x.unflatten(-1, (-1, 32)).abs().amax(-1)
        in_units = torch.ldexp(amax, -(q.scales.to(torch.int32) - 127))
        assert bool((in_units > elem.max).any()) == saturates, mode


def test_mx_zero_block_gets_scale_one_under_floor_and_the_smallest_scale_under_rceil():
    """floor: OCP leaves log2(0) open; scale 1 keeps the existing rule. rceil: every scale holds a zero
    block and the smallest is 2**-127 (E8M0 0), what cvt.rp.satfinite.ue8m0x2.f32 gives for 0."""
    z = torch.zeros(1, 32)
    assert quantize_mx(z, "mxfp8", scale_mode="floor").scales.tolist() == [[127]]
    assert quantize_mx(z, "mxfp8", scale_mode="rceil").scales.tolist() == [[0]]
    assert quantize_mx(z, "mxfp8", scale_mode="rceil").dequantize().abs().sum().item() == 0


@pytest.mark.parametrize("mode", ["floor", "rceil"])
@pytest.mark.parametrize("fmt", sorted(MX_ELEMENTS))
@pytest.mark.parametrize("amax", [2.0**-149, 1e-40, 2.0**-126 * 0.75], ids=["smallest", "1e-40", "largest"])
def test_mx_subnormal_amax_gets_the_smallest_scale(mode, fmt, amax):
    """A float32 subnormal amax is below every element's max * 2**-127: E8M0 0 (2**-127) in both modes."""
    assert quantize_mx(mx_block(amax), fmt, scale_mode=mode).scales.tolist() == [[0]]


def test_mx_subnormal_amax_keeps_its_value_where_the_element_reaches_it():
    amax = 2.0**-127 * 1.5  # 1.5 units of the smallest scale: exact in E4M3
    assert quantize_mx(mx_block(amax), "mxfp8").dequantize()[0, 0].item() == amax


def float_to_e8m0_round_up(q: torch.Tensor) -> torch.Tensor:
    """E8M0 code of float32 q rounded up to a power of two and saturated: TransformerEngine's software
    form of cvt.rp.satfinite.ue8m0x2.f32, the instruction Blackwell kernels use for RCEIL scales."""
    bits = q.view(torch.int32)
    exponent, mantissa = (bits >> 23) & 0xFF, bits & 0x7FFFFF
    up = (mantissa > 0) & (exponent != 0xFE) & ~((exponent == 0) & (mantissa <= 0x400000))
    return torch.where(q == 0, torch.zeros_like(exponent), exponent + up.to(torch.int32))


@pytest.mark.parametrize("fmt", sorted(MX_ELEMENTS))
def test_mx_rceil_equals_cudas_rounded_up_quotient_where_the_quotient_is_normal(fmt):
    """cuBLAS / cuDNN compute round_up(amax / max) in float32. The one float32 amax where that differs
    from the definition is the next one above max * 2**-127: the quotient is subnormal and rounds down
    to 2**-127, so the instruction gives E8M0 0 and that amax saturates by one ulp; rceil gives 1."""
    elem = mx_element(fmt)
    gen = torch.Generator().manual_seed(4)
    random = torch.randint(1, 0x7F800000, (200_000,), generator=gen, dtype=torch.int32).view(torch.float32)
    anchors = torch.ldexp(torch.tensor([elem.max, 1.0]).repeat_interleave(255), torch.arange(-127, 128).repeat(2))
    anchors = anchors[torch.isfinite(anchors)].view(torch.int32)
    near = (anchors[:, None] + torch.arange(-8, 9, dtype=torch.int32)).flatten().view(torch.float32)
    amax = torch.cat([random, near])
    ours = shared_exponents(amax, elem, "rceil") + 127
    cuda = float_to_e8m0_round_up(torch.div(amax, elem.max))
    odd_one = next_up(elem.max * 2.0**-127)
    assert torch.equal(ours[amax != odd_one], cuda[amax != odd_one])
    assert shared_exponents(torch.tensor([odd_one]), elem, "rceil").tolist() == [-126]


def test_mx_unknown_scale_mode_is_an_error_naming_the_valid_ones():
    with pytest.raises(ValueError, match="unknown MX scale mode 'ceil'; valid: floor, rceil"):
        quantize_mx(torch.randn(1, 32), "mxfp8", scale_mode="ceil")


@pytest.mark.parametrize("capability, mode", [
    ((8, 9), "floor"), ((9, 0), "floor"), ((10, 0), "rceil"), ((10, 3), "rceil"), ((12, 0), "rceil"),
], ids=["sm89", "sm90", "sm100", "sm103", "sm120"])
def test_scaled_mm_mx_scale_mode_is_rceil_from_blackwell_on(capability, mode):
    assert scaled_mm_mx_scale_mode(capability) == mode


def test_scaled_mm_mx_scale_mode_selects_the_quantizers_scales():
    x = mx_block(next_up(448.0))  # the two modes differ on this block
    mode = scaled_mm_mx_scale_mode((10, 0))
    assert quantize_mx(x, "mxfp8", scale_mode=mode).scales.tolist() == [[128]]


@pytest.mark.parametrize("capability", [(9,), "sm_100", (10.0, 0), (-1, 0)])
def test_scaled_mm_mx_scale_mode_rejects_what_is_not_a_capability(capability):
    with pytest.raises(ValueError, match="capability must be \\(major, minor\\)"):
        scaled_mm_mx_scale_mode(capability)


@pytest.mark.parametrize("fmt, next_scale", [("mxfp8", 127 - 8), ("mxfp8_e5m2", 127 - 15)])
def test_mxfp8_block_with_a_nan_gets_the_nan_scale_and_decodes_to_nan(fmt, next_scale):
    """OCP MX: a NaN scale (E8M0 0xFF) makes the whole block NaN; its finite neighbours are not clipped
    into a scale that ignored the NaN (1000 -> 448 before). The next block (amax 1) is untouched."""
    x = torch.tensor([[1000.0, math.nan, 0.001] + [1000.0] * 29 + [1.0] * 32])
    q = quantize_mx(x, fmt)
    assert q.scales.tolist() == [[E8M0_NAN, next_scale]]
    assert bool(q.dequantize()[0, :32].isnan().all()) and q.dequantize()[0, 32:].tolist() == [1.0] * 32


@pytest.mark.parametrize("fmt", ["mxfp8", "mxfp8_e5m2"])
def test_mxfp8_nan_block_writes_nan_in_every_element_code(fmt):
    q = quantize_mx(torch.tensor([[1000.0, math.nan, 0.001] + [1000.0] * 29]), fmt)
    assert bool(mx_element(fmt).decode(q.codes).isnan().all())


def test_mx_nan_scale_decodes_to_nan_whatever_the_element_codes():
    q = quantize_mx(torch.ones(1, 32), "mxfp8")
    nan_scaled = type(q)(codes=q.codes, scales=torch.full_like(q.scales, E8M0_NAN), fmt=q.fmt, shape=q.shape)
    assert bool(nan_scaled.dequantize().isnan().all()) and bool(nan_scaled.element_scale().isnan().all())


@pytest.mark.parametrize("inf", [math.inf, -math.inf], ids=["+inf", "-inf"])
def test_mxfp8_e4m3_block_with_an_inf_decodes_to_nan(inf):
    """E4M3 has no Inf: converting one gives NaN (OCP FP8 without saturation; OCP MX clamps only normal
    numbers to max), and a NaN makes its block a NaN block."""
    q = quantize_mx(torch.tensor([[1.0, inf] + [1.0] * 30]), "mxfp8")
    assert q.scales.tolist() == [[E8M0_NAN]] and bool(q.dequantize().isnan().all())


@pytest.mark.parametrize("inf", [math.inf, -math.inf], ids=["+inf", "-inf"])
def test_mxfp8_e5m2_block_keeps_an_inf_and_scales_by_its_finite_elements(inf):
    """E5M2 has Inf: the Inf is its own element code and does not set the scale, so the block scales
    as if it were absent (amax 1 -> 2**-15) and decodes to the same Inf among exact ones."""
    q = quantize_mx(torch.tensor([[1.0, inf] + [1.0] * 30]), "mxfp8_e5m2")
    assert q.scales.tolist() == [[127 - 15]]
    assert q.dequantize()[0].tolist() == [1.0, inf] + [1.0] * 30


def test_fp8_blockwise_has_one_scale_per_128_and_round_trips_shape():
    x = torch.randn(4, 512)
    q, inv = quantize_blockwise(x)
    assert inv.shape == (4, 4) and dequantize(q, inv).shape == x.shape
    assert sqnr_db(x, dequantize(q, inv)) > bounds.qdq_floor("fp8_e4m3")


def test_fp8_rowwise_scale_maps_each_row_amax_to_448():
    x = torch.tensor([[1.0, -2.0], [0.5, 0.25], [0.0, 0.0]])
    q, inv = quantize_rowwise(x)
    assert q.float()[:, 0].tolist() == [224.0, 448.0, 0.0] and inv[2].item() == 1.0


def fp8_unit(values: list[float]) -> torch.Tensor:
    """Two rows of 128: `values` then zeros in row 0 (one tensor, one row, one 1x128 block), ones in row 1."""
    x = torch.zeros(2, 128)
    x[0, :len(values)] = torch.tensor(values)
    x[1] = 1.0
    return x


def test_fp8_tiny_tensor_quantizes_to_codes_instead_of_nan():
    """448 / 1e-37 overflows float32; the scale clamped to FLT_MAX maps 1e-37 to 34.03 -> 36 (0x61) and 0
    to 0, where an Inf scale gave [0x7e, 0x7f, ...] and dequantized to [0, NaN, ...]."""
    q, inv = quantize_tensorwise(torch.tensor([1e-37, 0.0, 0.0, 0.0]))
    assert q.view(torch.uint8).tolist() == [0x61, 0, 0, 0] and inv.item() == 2.0**-128


@pytest.mark.parametrize("dtype, fmt", FP8, ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("quantize", FP8_QUANTIZERS, ids=FP8_UNITS)
def test_fp8_tiny_amax_scale_is_clamped_to_flt_max(quantize, dtype, fmt):
    x = fp8_unit([1e-37])[:1]
    _, inv = quantize(x, dtype)
    assert inv.flatten().tolist() == [2.0**-128]  # float32(1 / FLT_MAX)


@pytest.mark.parametrize("dtype, fmt", FP8, ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("quantize", FP8_QUANTIZERS, ids=FP8_UNITS)
def test_fp8_tiny_values_round_trip_within_half_an_ulp_and_zeros_stay_zero(quantize, dtype, fmt):
    x = fp8_unit([1e-37, -3e-38, 7e-39])[:1]  # 7e-39 is a float32 subnormal
    y = dequantize(*quantize(x, dtype))
    assert torch.equal(y[0, 3:], torch.zeros(125))
    half_ulp = 2.0 ** -(fmt.mbits + 1)
    assert all(math.isclose(a, b, rel_tol=half_ulp) for a, b in zip(y[0, :3].tolist(), x[0, :3].tolist(), strict=True))


@pytest.mark.parametrize("dtype, fmt", FP8, ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("quantize", FP8_QUANTIZERS, ids=FP8_UNITS)
def test_fp8_nan_makes_its_scaling_unit_nan_instead_of_clipping_its_neighbours(quantize, dtype, fmt):
    """[1000, 3, -2, 0, NaN] gave [448, 3, -2, 0, NaN]: a NaN amax fell back to scale 1. Now the unit's scale
    and inverse scale are NaN and so is every code of it; the other units (row 1, for rowwise and 1x128)
    are untouched."""
    x = fp8_unit([1000.0, 3.0, -2.0, 0.0, math.nan])
    q, inv = quantize(x, dtype)
    y = dequantize(q, inv)
    assert bool(q.float()[0].isnan().all()) and bool(inv.flatten()[0].isnan())
    if quantize is quantize_tensorwise:
        assert bool(y.isnan().all())
    else:
        assert bool(y[0].isnan().all()) and y[1].tolist() == [1.0] * 128


@pytest.mark.parametrize("dtype, fmt", FP8, ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("quantize", FP8_QUANTIZERS, ids=FP8_UNITS)
def test_fp8_inf_makes_its_scaling_unit_dequantize_to_nan(quantize, dtype, fmt):
    """An Inf amax gives scale 0: the Inf's code is NaN (Inf * 0), the rest 0, the inverse scale Inf."""
    q, inv = quantize(fp8_unit([1.0, math.inf]), dtype)
    assert bool(q.float()[0, 1].isnan()) and q.float()[0, [0, 2]].tolist() == [0.0, 0.0]
    assert math.isinf(inv.flatten()[0].item()) and bool(dequantize(q, inv)[0].isnan().all())


def test_all_zero_tensor_quantizes_to_exact_zero_in_every_format():
    z = torch.zeros(2, 64)
    assert dequantize(*quantize_tensorwise(z)).abs().sum() == 0
    assert quantize_nvfp4(z).dequantize().abs().sum() == 0
    for fmt in ("mxfp8", "mxfp6", "mxfp4"):
        assert quantize_mx(z, fmt).dequantize().abs().sum() == 0


@pytest.mark.parametrize("quantize", [
    lambda x: quantize_nvfp4(x), lambda x: quantize_mx(x, "mxfp4"), lambda x: quantize_mx(x, "mxfp6"),
], ids=["nvfp4", "mxfp4", "mxfp6"])
def test_non_finite_input_to_a_format_without_nan_is_an_error_that_counts(quantize):
    x = torch.randn(2, 64)
    x[0, 3], x[1, 7], x[1, 9] = math.nan, math.inf, -math.inf
    with pytest.raises(ValueError, match=r"^3 non-finite value\(s\) .* no NaN or Inf encoding"):
        quantize(x)


@pytest.mark.parametrize("quantize, block", [
    (lambda x: quantize_nvfp4(x), 16), (lambda x: quantize_mx(x, "mxfp8"), 32),
    (lambda x: quantize_blockwise(x), 128),
])
def test_shape_not_a_multiple_of_the_block_is_an_error_saying_how_to_pad(quantize, block):
    with pytest.raises(ValueError, match=f"not a multiple of the block size {block}; pad it to {block}"):
        quantize(torch.randn(4, block - 1))


def test_stochastic_rounding_is_adjacent_and_its_mean_beats_nearest():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 256)
    nearest = quantize_nvfp4(x).dequantize()
    draws = torch.stack([quantize_nvfp4(x, stochastic=True, generator=gen).dequantize() for _ in range(50)])
    rmse = lambda y: (y - x).pow(2).mean().sqrt().item()  # noqa: E731
    assert rmse(draws.mean(0)) < rmse(nearest)
    # Adjacent: every draw is the E2M1 value just below or just above the scaled input.
    q = quantize_nvfp4(x)
    scaled = torch.clamp(x * torch.div(1.0, q.element_scale()), -6, 6).abs()
    grid = E2M1.table()[:8]
    lower = torch.where(scaled[..., None] >= grid, grid, -1.0).amax(-1)
    upper = torch.where(scaled[..., None] <= grid, grid, 99.0).amin(-1)
    codes = torch.stack([quantize_nvfp4(x, stochastic=True, generator=gen).codes for _ in range(20)])
    mags = E2M1.decode(codes).abs()
    assert bool(((mags == lower) | (mags == upper)).all())


def test_rht_is_orthogonal_and_equals_its_matrix_form():
    signs = random_signs(seed=3)
    x = torch.randn(8, 64)
    y = rht(x, signs)
    dense = x.reshape(-1, 16) @ (torch.diag(signs) @ hadamard_matrix(16)) / 4
    assert torch.allclose(y.reshape(-1, 16), dense, atol=1e-6)
    assert torch.allclose(inverse_rht(y, signs), x, atol=1e-6)
    assert math.isclose(y.norm().item(), x.norm().item(), rel_tol=1e-6)


def test_rht_spreads_an_outlier_across_its_block():
    x = torch.zeros(1, 16)
    x[0, 5] = 16.0
    assert rht(x, random_signs(0)).abs().unique().tolist() == [4.0]


def test_metrics_on_known_errors():
    ref = torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert sqnr_db(ref, ref) == math.inf
    assert math.isclose(sqnr_db(ref, ref * 1.1), 20.0, rel_tol=1e-9)
    assert math.isclose(rel_l2(ref, ref * 1.1), 0.1, rel_tol=1e-9)
    assert math.isclose(cosine(ref, ref * 2), 1.0)
    assert max_abs(ref, torch.tensor([3.0, 4.5], dtype=torch.float64)) == 0.5
    assert math.isnan(sqnr_db(ref, torch.tensor([math.nan, 0.0], dtype=torch.float64)))


def test_every_format_has_a_default_floor_from_peers():
    assert bounds.qdq_floor("fp8_e4m3") == 25.0 and bounds.qdq_floor("nvfp4") == 8.0
    with pytest.raises(ValueError, match="no default SQNR floor for 'fp9'"):
        bounds.qdq_floor("fp9")


@pytest.mark.parametrize("scales", ["tensorwise", "rowwise"])
def test_scaled_mm_on_the_cpu_is_the_product_of_the_dequantized_operands_plus_bias(scales):
    """The CPU's oneDNN runs an FP8 matmul as a reference loop (1.1 s at 4096x64x256): scaled_mm sums the
    same exact products in float32 instead, and must still be _scaled_mm's product."""
    from pytest_lowprec.formats.fp8 import quantize_over, scaled_mm

    g = torch.Generator().manual_seed(21)
    a, b, bias = torch.randn(48, 64, generator=g), torch.randn(32, 64, generator=g), torch.randn(32, generator=g)
    quantize = quantize_tensorwise if scales == "tensorwise" else lambda x: quantize_over(x, (-1,))
    (aq, a_inv), (bq, b_inv) = quantize(a), quantize(b)
    got = scaled_mm(aq, a_inv, bq.t(), b_inv.reshape(1, -1) if scales == "rowwise" else b_inv,
                    out_dtype=torch.float32, bias=bias.bfloat16())
    expected = (aq.double() * a_inv.double()) @ (bq.double() * b_inv.double()).T + bias.bfloat16().double()
    assert got.dtype == torch.float32 and rel_l2(expected, got) < 1e-6
