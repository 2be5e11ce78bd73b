"""The FP8 linear's kernels (lowprec_workloads/fp8_linear.py): the one-program quantizer gives
fp8.quantize_tensorwise's bits, the one-row GEMV equals the float64 product of the reference-quantized
operands, and the layer picks its path by rows and device.

On the CPU the Triton kernels run in Triton's interpreter, in one child process for the module (the
interpreter must be chosen before triton is imported, and this process may have imported it already);
the CUDA tests run the same kernels compiled, and cuBLAS's path, where a GPU exists.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lowprec_workloads.fp8_linear import (
    GEMV_MAX_ROWS,
    SMALL_QUANTIZE_MAX,
    FP8Linear,
    GemvConfig,
    quantize_work,
    quantizer,
)
from pytest_lowprec.formats.fp8 import quantize_tensorwise
from pytest_lowprec.formats.metrics import rel_l2

ROOT = Path(__file__).resolve().parent.parent
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# The interpreter's child process takes 5-10 s: `pytest tests/ --slow` (.ci/run) runs those tests.
interpreter = pytest.mark.slow
# Tiles for the interpreter: both kernels, tiles that do not divide N or K, one wider than K.
GEMV_TILES = {"fma-16x64": GemvConfig("fma", 16, 64), "fma-32x512": GemvConfig("fma", 32, 512),
              "dot-16x64": GemvConfig("dot", 16, 64), "dot-64x32": GemvConfig("dot", 64, 32),
              "dot-16x64-split2": GemvConfig("dot", 16, 64, split_k=2),
              "dot-32x32-split4": GemvConfig("dot", 32, 32, split_k=4)}
GEMV_SHAPES = [(40, 300), (64, 256)]  # (N, K): tiles that do not divide them, and ones that do
# float32 accumulation of exact E4M3 products, in another order than float64's: about 1e-7 relative. One
# activation code off by one step (2^-4 relative) moves a K=256 product by about 4e-3.
EXACT_BOUND = 1e-6

CHILD = r'''
import sys
import torch
from lowprec_workloads.fp8_linear import GemvConfig, SplitWorkspace, gemv, quantize_small
from pytest_lowprec.formats.fp8 import _scale_from_amax
from lowprec_workloads.interpreted import mend_interpreter_scalars

mend_interpreter_scalars()
job = torch.load(sys.argv[1])
out = {}
for name, x in job["quantize"].items():
    out[name] = quantize_small(x)
for name, (x, dtype) in job["roundtrip"].items():
    out[name] = quantize_small(x, dequantize_to=dtype)
for name, (x, w, inv, tile) in job["gemv"].items():
    config = GemvConfig(*tile)
    workspace = SplitWorkspace.for_layer(w.shape[0], config, x.device) if config.split_k > 1 else None
    calls = 2 if workspace is not None else 1  # a split-K workspace must be ready for the next call
    out[name] = [gemv(x, w, inv, config, out=torch.full((1, w.shape[0]), float("nan")), workspace=workspace)
                 for _ in range(calls)]
    # The scale its producer would hand it (decode_fusions), and another one, which the GEMV must use (not a
    # power of two apart: E4M3 is a float format, so a scale halved rounds to the same values).
    for label, amax in (("given-scale", x.abs().amax()), ("given-other-scale", 1.37 * x.abs().amax())):
        out[f"{name}-{label}"] = gemv(x, w, inv, config, out=torch.full((1, w.shape[0]), float("nan")),
                                      workspace=workspace, x_scale=_scale_from_amax(amax, torch.float8_e4m3fn))
torch.save(out, sys.argv[2])
'''


def edge_rows(cols: int = 96) -> dict[str, torch.Tensor]:
    """Activations a quantizer's edges live in: a tiny amax (448 / amax overflows float32), signed zeros and
    subnormals, all zeros, a NaN, an Inf."""
    g = torch.Generator().manual_seed(3)
    tiny = torch.zeros(1, cols)
    tiny[0, :3] = torch.tensor([1e-37, -3e-38, 7e-39])
    signed = torch.randn(1, cols, generator=g) * 1e-39
    signed[0, :2] = torch.tensor([-0.0, 2.0])
    nan, inf = torch.randn(1, cols, generator=g), torch.randn(1, cols, generator=g)
    nan[0, 5], inf[0, 9] = math.nan, math.inf
    return {"tiny": tiny, "signed-zero-subnormal": signed, "zeros": torch.zeros(1, cols), "nan": nan, "inf": inf}


def rounding_sweep() -> torch.Tensor:
    """Every finite E4M3 value, every midpoint between neighbours and the float32s on either side of it,
    with amax 448 so the scale is 1 and the quantizer rounds these values themselves."""
    codes = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    values = codes[torch.isfinite(codes)].unique()
    mids = (values[1:] + values[:-1]) / 2
    return torch.cat([values, mids, torch.nextafter(mids, torch.tensor(math.inf)),
                      torch.nextafter(mids, torch.tensor(-math.inf)), torch.tensor([448.0, -0.0])])


def _inputs() -> dict:
    g = torch.Generator().manual_seed(2)
    normal = torch.randn(3, 5000, generator=g) * 3  # 15000 elements: four steps of the 4096-element loop
    job = {"quantize": {"normal-float32": normal, "normal-bfloat16": normal.bfloat16(),
                        "rounding": rounding_sweep(), **{f"edge-{k}": v for k, v in edge_rows().items()}},
           "roundtrip": {"roundtrip-float32": (normal, torch.float32), "roundtrip-bfloat16": (normal, torch.bfloat16)},
           "gemv": {}}
    for n, k in GEMV_SHAPES:
        w8, w_inv = quantize_tensorwise(torch.randn(n, k, generator=g))
        x = torch.randn(1, k, generator=g)
        for tile_name, tile in GEMV_TILES.items():
            job["gemv"][f"gemv-{tile_name}-{n}x{k}"] = (x, w8, w_inv, tuple(vars(tile).values()))
        if n == GEMV_SHAPES[0][0]:
            x_nan = x.clone()
            x_nan[0, 7] = math.nan
            job["gemv"]["gemv-nan"] = (x_nan, w8, w_inv, tuple(vars(GEMV_TILES["dot-16x64"]).values()))
            # A second weight of another scale read by the same x, alone and stacked under the first (one
            # scale a row): the stacked GEMV's outputs are the two GEMVs' side by side.
            w8_b, w_inv_b = quantize_tensorwise(5 * torch.randn(24, k, generator=g))
            stacked = (torch.cat([w8, w8_b]), torch.cat([w_inv.expand(n), w_inv_b.expand(24)]))
            for tile_name, tile in GEMV_TILES.items():
                job["gemv"][f"gemv-{tile_name}-second-weight"] = (x, w8_b, w_inv_b, tuple(vars(tile).values()))
                job["gemv"][f"gemv-{tile_name}-stacked"] = (x, *stacked, tuple(vars(tile).values()))
    return job


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory) -> tuple[dict, dict]:
    """(inputs, outputs) of every case, the kernels run once by Triton's interpreter in a child process."""
    tmp = tmp_path_factory.mktemp("fp8_linear")
    job = _inputs()
    torch.save(job, tmp / "in.pt")
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp / "in.pt"), str(tmp / "out.pt")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return job, torch.load(tmp / "out.pt")


def same_codes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """E4M3 codes equal bit for bit, except that a NaN matches a NaN of either sign (the arithmetic's)."""
    a, b = a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)
    nan = torch.isnan(a.view(torch.float8_e4m3fn).float())
    return torch.equal(nan, torch.isnan(b.view(torch.float8_e4m3fn).float())) and torch.equal(a[~nan], b[~nan])


def same_scale(a: torch.Tensor, b: torch.Tensor) -> bool:
    """float32 scales with the same bits; a NaN matches any NaN (its payload is the arithmetic's)."""
    nan = torch.isnan(a)
    return bool(torch.equal(nan, torch.isnan(b)) and torch.equal(a[~nan].view(torch.int32), b[~nan].view(torch.int32)))


def _float64_product(x: torch.Tensor, w8: torch.Tensor, w_inv: torch.Tensor) -> torch.Tensor:
    xq, x_inv = quantize_tensorwise(x)
    return (xq.double() * x_inv.double()) @ (w8.double() * w_inv.double()).T


@interpreter
@pytest.mark.parametrize("case", ["normal-float32", "normal-bfloat16", "rounding"])
def test_one_program_quantizer_gives_the_reference_bits(interpreted, case):
    job, out = interpreted
    q, inv = out[case]
    ref_q, ref_inv = quantize_tensorwise(job["quantize"][case])
    assert same_codes(q, ref_q) and same_scale(inv, ref_inv)


@interpreter
@pytest.mark.parametrize("edge", sorted(edge_rows()))
def test_one_program_quantizer_gives_the_reference_bits_on_edge_inputs(interpreted, edge):
    job, out = interpreted
    q, inv = out[f"edge-{edge}"]
    ref_q, ref_inv = quantize_tensorwise(job["quantize"][f"edge-{edge}"])
    assert same_codes(q, ref_q) and same_scale(inv, ref_inv)


@interpreter
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_round_trip_gives_the_dequantized_reference_in_its_dtype(interpreted, dtype):
    job, out = interpreted
    x, target = job["roundtrip"][f"roundtrip-{dtype}"]
    values, inv = out[f"roundtrip-{dtype}"]
    ref_q, ref_inv = quantize_tensorwise(x)
    bits = torch.int16 if target == torch.bfloat16 else torch.int32
    assert values.dtype == target and same_scale(inv, ref_inv)
    assert torch.equal(values.view(bits), (ref_q.float() * ref_inv).to(target).view(bits))


@interpreter
@pytest.mark.parametrize("shape", GEMV_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("tile", sorted(GEMV_TILES))
def test_gemv_equals_the_float64_product_of_the_reference_quantized_operands(interpreted, tile, shape):
    job, out = interpreted
    name = f"gemv-{tile}-{shape[0]}x{shape[1]}"
    x, w8, w_inv, _ = job["gemv"][name]
    got = out[name][0]
    assert torch.isfinite(got).all()  # the output was NaN before the kernel: every element written
    assert rel_l2(_float64_product(x, w8, w_inv), got) < EXACT_BOUND


@interpreter
@pytest.mark.parametrize("tile", [t for t in sorted(GEMV_TILES) if "split" in t])
def test_split_k_gemv_gives_the_same_bits_on_the_next_call(interpreted, tile):
    _, out = interpreted
    first, second = out[f"gemv-{tile}-40x300"]
    assert torch.isfinite(first).all() and torch.equal(first, second)


@interpreter
@pytest.mark.parametrize("tile", sorted(GEMV_TILES))
def test_gemv_given_its_inputs_scale_gives_the_bits_of_its_own_amax_pass(interpreted, tile):
    _, out = interpreted
    own, given = out[f"gemv-{tile}-40x300"][0], out[f"gemv-{tile}-40x300-given-scale"]
    assert torch.isfinite(own).all() and torch.equal(own, given)


@interpreter
@pytest.mark.parametrize("tile", sorted(GEMV_TILES))
def test_gemv_quantizes_its_input_with_the_scale_it_is_given(interpreted, tile):
    job, out = interpreted
    x, w8, w_inv, _ = job["gemv"][f"gemv-{tile}-40x300"]
    xq, x_inv = quantize_tensorwise(x, amax=1.37 * x.abs().amax())
    reference = (xq.double() * x_inv.double()) @ (w8.double() * w_inv.double()).T
    got = out[f"gemv-{tile}-40x300-given-other-scale"]
    assert rel_l2(reference, got) < EXACT_BOUND and not torch.equal(got, out[f"gemv-{tile}-40x300"][0])


@interpreter
@pytest.mark.parametrize("tile", sorted(GEMV_TILES))
def test_gemv_of_stacked_weights_gives_each_weights_own_gemv_bits_side_by_side(interpreted, tile):
    _, out = interpreted
    first, second = out[f"gemv-{tile}-40x300"][0], out[f"gemv-{tile}-second-weight"][0]
    assert torch.isfinite(first).all() and torch.isfinite(second).all()
    assert torch.equal(out[f"gemv-{tile}-stacked"][0], torch.cat([first, second], dim=1))


@interpreter
def test_gemv_of_an_activation_holding_nan_is_nan_everywhere_as_the_reference(interpreted):
    job, out = interpreted
    x, w8, w_inv, _ = job["gemv"]["gemv-nan"]
    assert torch.isnan(_float64_product(x, w8, w_inv)).all() and torch.isnan(out["gemv-nan"][0]).all()


def test_gemv_tiles_are_validated():
    with pytest.raises(ValueError, match="'fma' or 'dot'"):
        GemvConfig("wgmma", 16, 64)
    with pytest.raises(ValueError, match="block_k must be a power of two"):
        GemvConfig("fma", 16, 96)
    with pytest.raises(ValueError, match="block_n >= 16 and block_k >= 32"):
        GemvConfig("dot", 8, 64)
    with pytest.raises(ValueError, match="only the dot GEMV splits K"):
        GemvConfig("fma", 16, 64, split_k=2)
    for tile in (("fma", 16, 64), ("dot", 64, 64)):
        for promote_k in (48, 128, -32):  # not a multiple of 32; more than the tile's K; negative
            with pytest.raises(ValueError, match="promote_k is for the dot GEMV, a multiple of 32 up to block_k"):
                GemvConfig(*tile, promote_k=promote_k)
    assert GemvConfig("dot", 64, 64, promote_k=64).promote_k == 64


def test_gemv_refuses_a_scale_that_is_not_one_float32_on_xs_device():
    from lowprec_workloads.fp8_linear import gemv

    w8, w_inv = quantize_tensorwise(torch.randn(16, 64))
    x, config = torch.randn(1, 64, device="meta"), GemvConfig("dot", 16, 64)
    weight, inv = w8.to("meta"), w_inv.to("meta")
    with pytest.raises(ValueError, match="x_scale is one float32 scale, got torch.float16 of 1 elements"):
        gemv(x, weight, inv, config, x_scale=torch.ones((), dtype=torch.float16, device="meta"))
    with pytest.raises(ValueError, match="x_scale must be on x's device meta, got cpu"):
        gemv(x, weight, inv, config, x_scale=torch.ones(()))


def test_gemv_refuses_weight_scales_that_are_neither_one_nor_one_a_row():
    from lowprec_workloads.fp8_linear import gemv

    x, weight = torch.randn(1, 64, device="meta"), torch.empty(16, 64, dtype=torch.float8_e4m3fn, device="meta")
    refused = "inv_scale is float32, 0-d or one per output row \\(16\\).* got torch.float32 \\(8,\\)"
    with pytest.raises(ValueError, match=refused):
        gemv(x, weight, torch.ones(8, device="meta"), GemvConfig("dot", 16, 64))


def test_quantizer_is_eager_on_the_cpu_one_program_for_decode_rows_and_two_pass_for_a_prefill():
    assert quantizer(4096 * 4096, on_cuda=False) == "eager"
    assert quantizer(4 * 14336, on_cuda=True) == "triton-one-program"
    assert quantizer(SMALL_QUANTIZE_MAX + 1, on_cuda=True) == "triton-two-pass"


def test_quantizer_work_is_one_launch_for_decode_rows_and_three_for_a_prefill():
    small, large = quantize_work(4096, 4), quantize_work(4096 * 4096, 2)
    assert [w.kernels for w in small] == [1] and small[0].nbytes == 4096 * 5 + 4
    assert [w.kernels for w in large] == [1, 1, 1]
    assert sum(w.nbytes for w in large) == 4 + 4096 * 4096 * (2 + 2 + 1) + 4


def test_fp8_linear_on_the_cpu_is_the_product_of_the_dequantized_operands():
    g = torch.Generator().manual_seed(4)
    w, x = torch.randn(48, 64, generator=g), torch.randn(3, 64, generator=g)
    layer = FP8Linear.build(w)
    wq, w_inv = quantize_tensorwise(w)
    xq, x_inv = quantize_tensorwise(x)
    assert torch.equal(layer.weight.view(torch.uint8), wq.view(torch.uint8)) and layer.nbytes == 48 * 64 + 4
    assert torch.equal(layer(x), (xq.float() * x_inv) @ (wq.float() * w_inv).t())


def test_fp8_linear_declares_one_gemv_launch_for_one_row_and_its_quantizer_for_more():
    layer = FP8Linear.build(torch.randn(32, 64))
    assert layer.uses_gemv(1) and not layer.uses_gemv(GEMV_MAX_ROWS + 1)
    (gemv_work,) = layer.kernel_work(1, 4)
    assert gemv_work.kernels == 1 and gemv_work.nbytes == 32 * 64 + 4 + 64 * 4 + 32 * 4
    (split_work,) = FP8Linear.build(torch.randn(32, 64), gemv=lambda n, k: GemvConfig("dot", 16, 32, split_k=2)
                                    ).kernel_work(1, 4)
    assert split_work.kernels == 1 and split_work.nbytes == gemv_work.nbytes + 2 * 2 * 32 * 4
    assert layer.kernel_work(16, 4) == quantize_work(16 * 64, 4)
    assert FP8Linear.build(torch.randn(32, 65536)).kernel_work(2, 2) == quantize_work(2 * 65536, 2)[1:]
    assert not FP8Linear.build(torch.randn(32, 64), gemv=lambda n, k: None).uses_gemv(1)


def test_concatenated_fp8_linear_keeps_each_weights_codes_and_scale_row_by_row():
    g = torch.Generator().manual_seed(5)
    parts = [FP8Linear.build(scale * torch.randn(n, 64, generator=g)) for n, scale in ((48, 1.0), (16, 30.0))]
    stacked = FP8Linear.concatenated(parts)
    assert torch.equal(stacked.weight.view(torch.uint8), torch.cat([p.weight for p in parts]).view(torch.uint8))
    assert torch.equal(stacked.inv_scale, torch.cat([parts[0].inv_scale.expand(48), parts[1].inv_scale.expand(16)]))
    assert stacked.nbytes == 64 * 64 + 64 * 4  # the codes, and a scale a row
    x = torch.randn(1, 64, generator=g)
    assert torch.allclose(stacked(x), torch.cat([p(x) for p in parts], dim=1), rtol=1e-6, atol=0)


def test_concatenated_fp8_linear_refuses_weights_of_other_input_widths():
    with pytest.raises(ValueError, match="one input width, got \\[\\(16, 64\\), \\(16, 32\\)\\]"):
        FP8Linear.concatenated([FP8Linear.build(torch.randn(16, 64)), FP8Linear.build(torch.randn(16, 32))])


# -- on a GPU ------------------------------------------------------------------------------------
@needs_cuda
def test_concatenated_fp8_linear_refuses_more_rows_than_its_gemv_takes():
    stacked = FP8Linear.concatenated([FP8Linear.build(torch.randn(16, 64, device="cuda"))] * 2)
    with pytest.raises(ValueError, match="a concatenated FP8 linear runs the one-row GEMV; 2 rows"):
        stacked(torch.randn(2, 64, device="cuda"))


@needs_cuda
@pytest.mark.parametrize("edge", sorted(edge_rows()))
def test_quantize_activation_on_cuda_gives_the_reference_bits(edge):
    from lowprec_workloads.fp8_linear import quantize_activation

    x = edge_rows()[edge]
    q, inv = quantize_activation(x.cuda())
    ref_q, ref_inv = quantize_tensorwise(x)
    assert same_codes(q.cpu(), ref_q) and same_scale(inv.cpu(), ref_inv)


@needs_cuda
def test_two_pass_quantizer_on_cuda_gives_the_reference_bits():
    from lowprec_workloads.fp8_linear import quantize_activation

    x = (torch.randn(512, 1024, generator=torch.Generator().manual_seed(5)) * 3).bfloat16()
    assert quantizer(x.numel(), on_cuda=True) == "triton-two-pass"
    q, inv = quantize_activation(x.cuda())
    ref_q, ref_inv = quantize_tensorwise(x)
    assert same_codes(q.cpu(), ref_q) and same_scale(inv.cpu(), ref_inv)


CUDA_TILES = {"fma": GemvConfig("fma", 16, 256), "mma": GemvConfig("dot", 32, 128, num_stages=3)}
# wgmma tiles, their tensor core's sums promoted to float32 every promote_k inputs (GemvConfig.promote_k).
WGMMA_TILES = {"wgmma-promote32": GemvConfig("dot", 64, 128, num_stages=4, promote_k=32),
               "wgmma-split4-promote128": GemvConfig("dot", 64, 256, num_stages=3, split_k=4, promote_k=128)}
# An FP8 wgmma sums even one instruction's products with fewer bits than float32 (an H200, 2026-12-01:
# 4.5-4.6e-5 promoted every 32 inputs, 1.2-1.3e-4 every 128, at K from 1024 to 14336; unpromoted 5e-4 to
# 3e-3, growing with the K a program sums). Its bound: a promoted sum's error, which does not grow with K.
PROMOTED_BOUND = 3e-4


@needs_cuda
@pytest.mark.parametrize("tile", sorted(CUDA_TILES))
def test_cuda_core_and_mma_sync_gemv_equal_the_float64_product_on_every_call(tile):
    g = torch.Generator().manual_seed(6)
    w, x = torch.randn(4096, 1024, generator=g), torch.randn(1, 1024, generator=g)
    layer = FP8Linear.build(w.cuda(), gemv=lambda n, k: CUDA_TILES[tile])
    wq, w_inv = quantize_tensorwise(w)
    reference = _float64_product(x, wq, w_inv)
    for _ in range(3):
        assert rel_l2(reference, layer(x.cuda()).cpu()) < EXACT_BOUND


@needs_cuda
@pytest.mark.parametrize("k", [1024, 16384])
@pytest.mark.parametrize("tile", sorted(WGMMA_TILES))
def test_wgmma_gemv_error_stays_at_its_promoted_bound_however_long_k(tile, k):
    g = torch.Generator().manual_seed(6)
    w, x = torch.randn(1024, k, generator=g), torch.randn(1, k, generator=g)
    layer = FP8Linear.build(w.cuda(), gemv=lambda n, k: WGMMA_TILES[tile])
    wq, w_inv = quantize_tensorwise(w)
    reference = _float64_product(x, wq, w_inv)
    for _ in range(3):  # split-K's counters are back at zero after each call
        assert rel_l2(reference, layer(x.cuda()).cpu()) < PROMOTED_BOUND


def test_triton_gemv_tile_promotes_its_sums_every_128_inputs():
    from lowprec_workloads.fp8_linear import triton_gemv_config

    assert {triton_gemv_config(n, k).promote_k for n, k in [(4096, 4096), (14336, 4096), (4096, 14336)]} == {128}


def test_default_gemv_is_the_cuda_core_kernel_where_it_takes_k():
    from lowprec_workloads.fp8_gemv_cuda import MAX_K
    from lowprec_workloads.fp8_linear import CUDA_TILE, gemv_config, triton_gemv_config

    assert {gemv_config(n, k) for n, k in [(4096, 4096), (28672, 4096), (4096, 14336), (64, MAX_K)]} == {CUDA_TILE}
    assert gemv_config(64, MAX_K + 16) == triton_gemv_config(64, MAX_K + 16)  # the row's codes would not fit
    assert gemv_config(64, 1000) == triton_gemv_config(64, 1000)  # K not a multiple of 16


def test_default_gemv_under_the_interpreter_is_the_triton_tile(monkeypatch):
    from lowprec_workloads.fp8_linear import gemv_config, triton_gemv_config

    monkeypatch.setenv("TRITON_INTERPRET", "1")  # read at the call
    assert gemv_config(4096, 4096) == triton_gemv_config(4096, 4096)


@needs_cuda
@pytest.mark.parametrize("rows", [1, 3, 16, 17])
def test_scaled_mm_path_takes_any_number_of_rows_unpadded(rows):
    g = torch.Generator().manual_seed(7)
    w, x = torch.randn(512, 1024, generator=g), torch.randn(rows, 1024, generator=g)
    layer = FP8Linear.build(w.cuda(), gemv=lambda n, k: None)
    wq, w_inv = quantize_tensorwise(w)
    got = layer(x.cuda())
    assert got.shape == (rows, 512) and got.dtype == torch.float32
    # cuBLAS's fast FP8 accumulation keeps fewer bits than float32: looser than the GEMV's bound.
    assert rel_l2(_float64_product(x, wq, w_inv), got.cpu()) < 1e-3


def test_triton_gemv_tile_splits_k_until_192_programs_keeping_1024_inputs_a_split():
    from lowprec_workloads.fp8_linear import triton_gemv_config

    tile = triton_gemv_config(2048, 8192)
    assert (tile.kernel, tile.block_n, tile.split_k) == ("dot", 64, 8)  # 32 tiles x 8 splits of 1024
    assert triton_gemv_config(8192, 1024).split_k == 1  # 128 tiles; a split of 512 inputs costs more than it hides
    assert triton_gemv_config(14336, 4096).split_k == 1  # 224 tiles: enough programs
    assert triton_gemv_config(4096, 4096).split_k == 4  # 64 tiles x 4
