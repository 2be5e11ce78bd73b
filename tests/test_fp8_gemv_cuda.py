"""The CUDA-core FP8 decode GEMV (kernels/fp8_gemv.cu, lowprec_workloads/fp8_gemv_cuda.py): every compiled
tile equals the float64 product of the reference-quantized operands, quantizes the row with
fp8.quantize_tensorwise's bits (edges included), and the Python table names the tiles the library compiles.

The kernel runs only on a GPU; on the CPU the table, the refusals and the source's compile (tests/test_kernels.py)
are checked.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from lowprec_workloads.fp8_gemv_cuda import MAX_K, TILES, CudaGemvTile, Fp8GemvKernels
from lowprec_workloads.fp8_linear import FP8Linear, gemv
from pytest_lowprec.formats.fp8 import _scale_from_amax, quantize_tensorwise
from pytest_lowprec.formats.metrics import rel_l2

SOURCE = Path(__file__).resolve().parent.parent / "kernels" / "fp8_gemv.cu"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# float32 sums of exact E4M3 products in another order than float64's: about 1e-7 relative.
EXACT_BOUND = 1e-6


def test_python_table_lists_the_tiles_the_source_compiles_in_its_order():
    macro = SOURCE.read_text().split("#define LOWPREC_FP8_GEMV_TILES(X)")[1].split("\n\n")[0]
    compiled = [tuple(int(v) for v in m.groups()[1:]) for m in re.finditer(r"X\((\d+), (\d+), (\d+), (\d+), (\d+)\)",
                                                                           macro)]
    assert [int(m.group(1)) for m in re.finditer(r"X\((\d+),", macro)] == list(range(len(TILES)))
    assert compiled == [(t.rows, t.unroll, t.warps, t.min_blocks) for t in TILES]


def test_a_tile_the_library_does_not_compile_names_where_to_add_it():
    with pytest.raises(ValueError, match="add it to kernels/fp8_gemv.cu's LOWPREC_FP8_GEMV_TILES"):
        _ = CudaGemvTile(3, 3, 3, 3).index


def test_python_max_k_is_the_sources():
    from lowprec_workloads.fp8_gemv_cuda import MAX_K

    expression = re.search(r"constexpr int kMaxK = ([0-9* -]+);", SOURCE.read_text()).group(1)
    assert eval(expression) == MAX_K  # digits, spaces, * and - only


def test_cuda_tile_is_refused_under_the_interpreter_with_what_to_give_instead(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # read at the call; no kernel is launched
    weight = torch.zeros(32, 64, dtype=torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="under TRITON_INTERPRET=1 give a Triton GemvConfig"):
        gemv(torch.zeros(1, 64), weight, torch.ones(()), TILES[0])


def test_layer_with_a_cuda_tile_runs_the_eager_reference_on_the_cpu():
    g = torch.Generator().manual_seed(4)
    w, x = torch.randn(48, 64, generator=g), torch.randn(1, 64, generator=g)
    layer = FP8Linear.build(w, gemv=lambda n, k: TILES[0])
    assert layer.cuda is None  # no library loaded without a GPU
    wq, w_inv = quantize_tensorwise(w)
    xq, x_inv = quantize_tensorwise(x)
    torch.testing.assert_close(layer(x), (xq.float() * x_inv) @ (wq.float() * w_inv).t())


# -- on a GPU ------------------------------------------------------------------------------------
def _float64_product(x: torch.Tensor, wq: torch.Tensor, w_inv: torch.Tensor, amax=None) -> torch.Tensor:
    xq, x_inv = quantize_tensorwise(x, amax=amax)
    scales = w_inv.double()[:, None] if w_inv.ndim else w_inv.double()
    return (xq.double() * x_inv.double()) @ (wq.double() * scales).T


@needs_cuda
@pytest.mark.parametrize("tile", TILES, ids=lambda t: f"r{t.rows}u{t.unroll}w{t.warps}b{t.min_blocks}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=lambda d: str(d)[6:])
def test_every_tile_equals_the_float64_product_on_every_call(tile, dtype):
    # N = 1003 (odd) leaves a warp of 2 or 4 rows with rows past N, and every tile a part-filled block; K = 1552
    # ends in a part-filled chunk: the edges of both loops. (FP8Linear.build would refuse N off a multiple of 16.)
    g = torch.Generator().manual_seed(6)
    w, x = torch.randn(1003, 1552, generator=g), torch.randn(1, 1552, generator=g).to(dtype)
    wq, w_inv = quantize_tensorwise(w)
    reference = _float64_product(x, wq, w_inv)
    cuda = Fp8GemvKernels("cuda")
    for _ in range(2):
        out = torch.full((1, 1003), float("nan"), device="cuda")
        got = gemv(x.cuda(), wq.cuda(), w_inv.cuda(), tile, out=out, cuda=cuda).cpu()
        assert rel_l2(reference, got) < EXACT_BOUND


@needs_cuda
def test_the_longest_k_it_takes_launches():
    g = torch.Generator().manual_seed(11)
    w, x = torch.randn(64, MAX_K, generator=g), torch.randn(1, MAX_K, generator=g).bfloat16()
    layer = FP8Linear.build(w.cuda())
    wq, w_inv = quantize_tensorwise(w)
    assert layer.gemv in TILES
    assert rel_l2(_float64_product(x, wq, w_inv), layer(x.cuda()).cpu()) < EXACT_BOUND


@needs_cuda
def test_stacked_weights_keep_each_rows_scale():
    g = torch.Generator().manual_seed(8)
    parts = [torch.randn(n, 512, generator=g) * s for n, s in ((256, 1.0), (64, 30.0), (64, 0.01))]
    x = torch.randn(1, 512, generator=g)
    stacked = FP8Linear.concatenated([FP8Linear.build(p.cuda(), gemv=lambda n, k: TILES[1]) for p in parts],
                                     gemv=lambda n, k: TILES[1])
    got = stacked(x.cuda()).cpu()
    quantized = [quantize_tensorwise(p) for p in parts]
    reference = torch.cat([_float64_product(x, q, inv) for q, inv in quantized], dim=1)
    assert rel_l2(reference, got) < EXACT_BOUND


@needs_cuda
def test_a_given_scale_is_the_one_used():
    g = torch.Generator().manual_seed(9)
    w, x = torch.randn(256, 512, generator=g), torch.randn(1, 512, generator=g).bfloat16()
    layer = FP8Linear.build(w.cuda(), gemv=lambda n, k: TILES[0])
    wq, w_inv = quantize_tensorwise(w)
    other = 1.37 * x.abs().amax()  # not a power of two apart: another quantization of x
    got = layer(x.cuda(), x_scale=_scale_from_amax(other, torch.float8_e4m3fn).cuda()).cpu()
    assert rel_l2(_float64_product(x, wq, w_inv, amax=other), got) < EXACT_BOUND


@needs_cuda
@pytest.mark.parametrize("captured", [False, True], ids=["eager", "graph"])
def test_programmatic_launches_wait_for_the_row_the_launch_before_writes(captured):
    # Each GEMV's row is the output of the one before. A programmatic launch starts while the one before runs: one
    # that read its row before that launch finished would read the NaN the outputs are filled with.
    g = torch.Generator().manual_seed(13)
    k = 2048
    layers = [tuple(t.cuda() for t in quantize_tensorwise(torch.randn(k, k, generator=g) / math.sqrt(k)))
              for _ in range(6)]
    x = torch.randn(1, k, generator=g).cuda()
    cuda = Fp8GemvKernels("cuda")

    def chain(outs: torch.Tensor, programmatic: bool) -> None:
        row = x
        for (wq, w_inv), out in zip(layers, outs, strict=True):
            row = cuda.gemv(row, wq, w_inv, TILES[1], out, programmatic=programmatic)

    expected = torch.empty(len(layers), 1, k, device="cuda")
    chain(expected, programmatic=False)
    outs = torch.full_like(expected, float("nan"))
    if captured:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            chain(outs, programmatic=True)
    for _ in range(3):
        outs.fill_(float("nan"))
        graph.replay() if captured else chain(outs, programmatic=True)
        torch.cuda.synchronize()
        assert torch.equal(outs, expected)


def _edge_rows(cols: int = 768) -> dict[str, torch.Tensor]:
    # A zero's sign cannot be read back through a sum (which starts at +0), so no row here claims it.
    g = torch.Generator().manual_seed(3)
    tiny = torch.zeros(1, cols)
    tiny[0, :3] = torch.tensor([1e-37, -3e-38, 7e-39])  # 448 / amax overflows float32: the FLT_MAX clamp
    subnormal = torch.rand(1, cols, generator=g) * 0.03 - 0.015  # scale 1: E4M3's subnormals, steps of 2^-9
    subnormal[0, 0] = 448.0
    codes = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    values = codes[torch.isfinite(codes)].unique()
    mids = (values[1:] + values[:-1]) / 2  # ties: round to nearest even
    sweep = torch.cat([values, mids, torch.nextafter(mids, torch.tensor(math.inf))])[None, : cols]
    return {"tiny amax": tiny, "subnormal codes": subnormal, "zeros": torch.zeros(1, cols),
            "rounding sweep": torch.nn.functional.pad(sweep, (0, cols - sweep.shape[1]))}


@needs_cuda
@pytest.mark.parametrize("edge", sorted(_edge_rows()))
def test_edge_rows_are_quantized_with_the_references_bits(edge):
    # One-hot weight rows read the row's codes back one by one: out[n] = code(x[n]) * inv_x exactly.
    x = _edge_rows()[edge]
    k = x.shape[1]
    weight = torch.eye(k).to(torch.float8_e4m3fn).cuda()
    out = torch.empty(1, k, device="cuda")
    got = gemv(x.cuda(), weight, torch.ones((), device="cuda"), TILES[0], out=out,
               cuda=Fp8GemvKernels("cuda")).cpu()
    xq, x_inv = quantize_tensorwise(x)
    assert torch.equal(got, xq.float() * x_inv)


@needs_cuda
@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])
def test_a_nan_or_inf_in_the_row_makes_every_output_nan_as_the_reference(bad):
    # A NaN amax makes the scale NaN; an Inf one makes it 0, and Inf * 0 a NaN code: every sum meets a NaN.
    # (So whether the amax ranks NaN above Inf cannot be read from the outputs.)
    g = torch.Generator().manual_seed(10)
    w, x = torch.randn(64, 512, generator=g), torch.randn(1, 512, generator=g)
    x[0, 7] = bad
    layer = FP8Linear.build(w.cuda(), gemv=lambda n, k: TILES[0])
    wq, w_inv = quantize_tensorwise(w)
    assert torch.isnan(_float64_product(x, wq, w_inv)).all()
    assert torch.isnan(layer(x.cuda()).cpu()).all()
