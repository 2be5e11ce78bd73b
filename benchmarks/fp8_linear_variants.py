"""Which FP8 linear kernels pay on the GPU, at the suites' exact shapes (lowprec_workloads/fp8_linear.py).

    python benchmarks/fp8_linear_variants.py OUT.json [SECTION ...]   # one H200: about 90 s; asserts nothing

SECTION names which sections run (ceiling sequence bits decode prefill steps; all by default), always in the
order below; `steps` compares the fastest tile per shape only when `decode` ran.

Sections, in this order, each a table, JSON written to OUT.json after each:
  ceiling  at the decode shapes and the stacked ones the step runs (q/k/v 6144x4096, gate/up 28672x4096): a
           kernel that only reads the weight's bytes (the ceiling at that size under this timer), the 16-bit
           `F.linear`, the committed GEMV tile and deeper-pipelined ones; us, TB/s, fraction of the copy
           ceiling and of the read-only kernel;
  sequence at the same shapes, 8 launches over 8 distinct weights timed as one call (a model's layers follow each
           other): the read-only kernel, the 16-bit `F.linear`, the CUDA-core GEMV launched ordinarily and as
           programmatic dependents (each requests its first weight chunk while the one before finishes); us a
           launch, fraction of the copy ceiling and of the read-only sequence, and whether the two launches agree;
  bits     the Triton quantizers on this GPU against fp8.quantize_tensorwise's bits (edge inputs included);
  decode   one activation row (float32, as the decode step's) times each decode-step weight shape, the
           16-bit step's `F.linear` against: the eager quantizer with rows padded to 16 + _scaled_mm (the
           path before), the one-launch quantizer + _scaled_mm on the row as it is, and every candidate
           GEMV tile; ms of both sides, speedup, weight TB/s and its fraction of the 4.25 TB/s copy ceiling,
           rel. L2 against the float64 product of the reference-quantized operands;
  prefill  suites/test_fp8_gemm.py's linear at 4096 and 8192 (same operands) against BF16 `a @ b`:
           the eager quantizer (before) and the Triton two-pass one (now), with the FP8 GEMM alone
           for its bound; predicted speedup from the work the suite declares, and "of model";
  steps    suites/test_mixed_precision.py's large decode step (same weights and seed) of every strategy
           against fp16_baseline, with the committed tiles (fp8_linear.gemv_config) and q, k, v (gate, up)
           stacked into one linear on both sides; the same with every projection its own linear on both sides
           (before 2026-12-02's stacking); the same with each linear's input cast in a launch of its own on both
           sides (before the fused launches wrote it); the same with every launch an ordinary one on both sides
           (before the fused launches, FP8 GEMVs and NVFP4 decode linears were programmatic dependents); the
           NVFP4 strategies with their weights through the CUDA-core GEMV (before 2026-12-02's tensor-core decode
           linear); the fastest tile per shape from `decode`, and no GEMV;
           SQNR against float32, and the hardware model's predicted speedup from each step's declared
           work, so "of model" is what STEP_FRACTION is chosen from.
Both sides of each row are timed by the plugin's own timer: CUDA-graph replays, L2 flushed before each
call, alternating A B / B A pairs after a warm-up, medians. A variant that fails prints its error and
the script goes on.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from lowprec_workloads import fp8_linear
from lowprec_workloads.fp8_gemv_cuda import TILES, Fp8GemvKernels
from lowprec_workloads.fp8_linear import (
    FP8Linear,
    GemvConfig,
    quantize_activation,
    quantize_small,
    quantize_work,
    square_operands,
)
from lowprec_workloads.nvfp4_gemm import CudaKernels
from lowprec_workloads.strategies import LINEARS, builtin_strategies, custom
from lowprec_workloads.transformer_block import LARGE, NVFP4_WEIGHTS, DecodeStep, Weights
from pytest_lowprec.formats.fp8 import quantize_tensorwise, scaled_mm
from pytest_lowprec.formats.metrics import rel_l2, sqnr_db
from pytest_lowprec.hardware import probe_cuda, spec_for
from pytest_lowprec.roofline import Work, ceiling_metrics, ceilings_for, expect_speedup
from pytest_lowprec.timing import CudaEventTimer, _StableWarmup
from pytest_lowprec.traffic import eager_work

DEVICE = "cuda"
COPY_CEILING = 4.25e12  # bytes/s, the H200's device-to-device copy (suites/test_roofline.py)
DECODE_SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336)]  # (N, K): q/k/v/o, gate/up, down of LARGE
STACKED_SHAPES = [(6144, 4096), (28672, 4096)]  # q, k, v and gate, up of LARGE as the step stacks them
STEP_SHAPE = LARGE
PREFILL_SIZES = (4096, 8192)
# The CUDA-core GEMV's compiled tiles (kernels/fp8_gemv.cu).
CUDA_TILES = {f"cuda {t.rows} rows/warp u{t.unroll} w{t.warps} b{t.min_blocks}": t for t in TILES}
CANDIDATES = {
    **CUDA_TILES,
    "fma 16x256 w4": GemvConfig("fma", 16, 256, 4),
    "dot 64x128 w4 s4": GemvConfig("dot", 64, 128, 4, 4),
    "dot 64x256 w4 s3": GemvConfig("dot", 64, 256, 4, 3),
    "dot 64x256 w4 s3 split2": GemvConfig("dot", 64, 256, 4, 3, 2),
    "dot 64x256 w4 s3 split4": GemvConfig("dot", 64, 256, 4, 3, 4),
    "dot 128x128 w4 s4 split2": GemvConfig("dot", 128, 128, 4, 4, 2),
    "dot 128x256 w8 s3 split4": GemvConfig("dot", 128, 256, 8, 3, 4),
    "dot 64x512 w4 s3 split4": GemvConfig("dot", 64, 512, 4, 3, 4),
    "dot 32x128 w4 s3 (mma.sync)": GemvConfig("dot", 32, 128, 4, 3),
    # The wgmma tiles with the tensor core's sum promoted to float32 every promote_k inputs.
    **{f"dot 64x256 w4 s3{f' split{split}' if split > 1 else ''} promote{every}":
       GemvConfig("dot", 64, 256, 4, 3, split, promote_k=every) for split in (1, 2, 4) for every in (32, 128)},
}
# Deeper software pipelines and wider tiles, for the ceiling section (all promoted every 128 inputs).
DEEP = {f"dot {bn}x{bk} w{w} s{st}{f' split{sp}' if sp > 1 else ''}": GemvConfig("dot", bn, bk, w, st, sp, 128)
        for bn, bk, w, st, sp in [(64, 256, 4, 4, 1), (64, 256, 4, 6, 1), (64, 128, 4, 6, 1), (64, 128, 4, 8, 1),
                                  (64, 512, 4, 3, 1), (128, 256, 8, 3, 1), (128, 256, 8, 4, 1), (128, 128, 4, 6, 1),
                                  (64, 256, 4, 4, 2), (64, 256, 4, 6, 2), (64, 128, 4, 8, 2), (64, 256, 4, 6, 4)]}


def _tile_name(tile) -> str:
    if isinstance(tile, GemvConfig):
        return f"{tile.kernel} {tile.block_n}x{tile.block_k} w{tile.num_warps} s{tile.num_stages} split{tile.split_k}"
    return next(name for name, t in CUDA_TILES.items() if t == tile)
STRATEGIES = ["fp8_balanced", "hybrid_long_context", "layerwise_gradient", "custom_fp8_ffn", "w4a16_aggressive",
              "nvfp4_weights"]
NVFP4_GEMV = "NVFP4 weights through the GEMV"  # the CUDA-core GEMV the steps ran before 2026-12-02
APART = "committed, projections apart"  # every projection its own linear on both sides
CASTS = "committed, casts apart"  # each linear's input cast in its own launch on both sides
ORDINARY = "committed, ordinary launches"  # no launch a programmatic dependent, on both sides
# The rows that run the committed tiles: every strategy's, never skipped for time.
COMMITTED = ("committed tiles", ORDINARY, APART, CASTS, NVFP4_GEMV)
# A tile may be chosen if its error stays under a promoted wgmma sum's bound (tests/test_fp8_linear.py):
# the unpromoted wgmma tiles' error grows with K.
ACCURATE_REL_L2 = 3e-4
DEADLINE_S = 240.0  # optional rows are skipped past this, so the command ends inside a 300 s limit


class Bench:
    def __init__(self, out: Path):
        self.t0 = time.perf_counter()
        self.out = out
        self.results: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
        device = probe_cuda()
        self.device = device
        self.timer = CudaEventTimer(device.index, l2_bytes=device.l2_bytes, uuid=device.uuid, graphs=True,
                                    warmup=_StableWarmup(rounds=5, per_round=3, max_s=0.5))
        store = Path(__file__).resolve().parent.parent / "baselines" / f"{device.key}.json"
        entries = json.loads(store.read_text())["entries"] if store.exists() else {}
        self.ceilings = ceilings_for(spec_for(device.key), ceiling_metrics(entries))
        self.summary: list[str] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def pair(self, baseline, optimized, n: int = 60) -> dict:
        """Medians of both sides (ms) and of the per-pair ratio baseline / optimized."""
        self.timer.warmup(baseline, optimized)
        pairs = self.timer.pairs(baseline, optimized, n)
        return {"base_ms": statistics.median(p[0] for p in pairs), "opt_ms": statistics.median(p[1] for p in pairs),
                "speedup": statistics.median(p[0] / p[1] for p in pairs), "pairs": n}

    def predicted(self, base_work, opt_work) -> float | None:
        if self.ceilings is None:
            return None
        return expect_speedup(base_work, opt_work, self.ceilings, fraction=1.0).predicted

    def save(self) -> None:
        self.results["elapsed_s"] = self.elapsed()
        self.out.write_text(json.dumps(self.results, indent=1, default=str))


def _fail(name: str, error: BaseException) -> dict:
    lines = traceback.format_exception_only(type(error), error)
    text = "".join(lines).strip().splitlines()
    print(f"  {name}: FAILED {text[0][:300]}" + (f" ... {text[-1][:300]}" if len(text) > 1 else ""), flush=True)
    return {"error": "".join(lines)[-2000:]}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Codes or scales with the same bits, a NaN matching a NaN of either sign or payload."""
    a, b = a.cpu().reshape(-1), b.cpu().reshape(-1)
    nan = torch.isnan(a.float())
    if not torch.equal(nan, torch.isnan(b.float())):
        return False
    width = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[a.element_size()]
    return torch.equal(a[~nan].view(width), b[~nan].view(width))


# -- bits ---------------------------------------------------------------------------------------
def section_bits(bench: Bench) -> None:
    print("\n== bits: Triton quantizers on this GPU against fp8.quantize_tensorwise ==", flush=True)
    g = torch.Generator().manual_seed(12)
    normal = torch.randn(4, 14336, generator=g) * 3
    tiny = torch.zeros(1, 4096)
    tiny[0, :3] = torch.tensor([1e-37, -3e-38, 7e-39])
    signed = torch.randn(1, 4096, generator=g) * 1e-39
    signed[0, :2] = torch.tensor([-0.0, 2.0])
    nan, inf = torch.randn(1, 4096, generator=g), torch.randn(1, 4096, generator=g)
    nan[0, 5], inf[0, 9] = math.nan, math.inf
    codes = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    values = codes[torch.isfinite(codes)].unique()
    mids = (values[1:] + values[:-1]) / 2
    sweep = torch.cat([values, mids, torch.nextafter(mids, torch.tensor(math.inf)),
                       torch.nextafter(mids, torch.tensor(-math.inf)), torch.tensor([448.0])])[None, :]
    cases = {"normal float32 4x14336": normal, "normal bfloat16": normal.bfloat16(), "rounding sweep": sweep,
             "tiny amax": tiny, "signed zeros, subnormals": signed, "nan": nan, "inf": inf,
             "prefill bfloat16 2048x4096 (two-pass)": (torch.randn(2048, 4096, generator=g) * 2).bfloat16()}
    rows = {}
    for name, x in cases.items():
        try:
            ref_q, ref_inv = quantize_tensorwise(x)
            q, inv = quantize_activation(x.to(DEVICE))
            ok = same_bits(q, ref_q) and same_bits(inv, ref_inv)
            small = x.numel() <= fp8_linear.SMALL_QUANTIZE_MAX and DEVICE == "cuda"
            deq = quantize_small(x.to(DEVICE), dequantize_to=torch.bfloat16)[0] if small else None
            deq_ok = None if deq is None else same_bits(deq, (ref_q.float() * ref_inv).bfloat16())
            rows[name] = {"codes_and_scale_equal": ok, "bf16_roundtrip_equal": deq_ok,
                          "quantizer": fp8_linear.quantizer(x.numel(), True)}
            print(f"  {name:40s} {rows[name]['quantizer']:20s} bits equal: {ok}   bf16 round trip equal: {deq_ok}")
        except Exception as e:  # noqa: BLE001 - a benchmark reports every failure and goes on
            rows[name] = _fail(name, e)
    bench.results["bits"] = rows
    bad = [n for n, r in rows.items() if not r.get("codes_and_scale_equal") or r.get("bf16_roundtrip_equal") is False]
    bench.summary.append(f"bits: {'all equal' if not bad else 'DIFFER: ' + ', '.join(bad)}")
    bench.save()


def _decode_operands(n: int, k: int):
    """One float32 row and a weight [N, K] drawn for this shape (seed n + k), the weight in bfloat16 and E4M3, and
    the float64 product of the reference-quantized operands: (w, x, w16, wq, reference)."""
    g = torch.Generator(device=DEVICE).manual_seed(n + k)
    w = torch.randn(n, k, generator=g, device=DEVICE) / math.sqrt(k)
    x = torch.randn(1, k, generator=g, device=DEVICE)
    wq, w_inv = quantize_tensorwise(w)
    xq, x_inv = quantize_tensorwise(x)
    return w, x, w.bfloat16(), wq, (xq.double() * x_inv.double()) @ (wq.double() * w_inv.double()).T


# -- ceiling ------------------------------------------------------------------------------------
@triton.jit
def _read_only_kernel(p, n, sink, steps, BLOCK: tl.constexpr):
    """Reads n int32 words once (grid-stride, evict-first) and writes nothing a caller reads: the time bytes take."""
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    for step in range(steps):
        offs = (step * tl.num_programs(0) + tl.program_id(0)) * BLOCK + tl.arange(0, BLOCK)
        acc ^= tl.load(p + offs, mask=offs < n, other=0, eviction_policy="evict_first")
    total = tl.reduce(acc, 0, _xor)
    tl.store(sink + tl.program_id(0), total, mask=total == 0x12345678)


@triton.jit
def _xor(a, b):
    return a ^ b


def _read_rates(m: dict, name: str, nbytes: int, weight_bytes: int, read_us: float, launches: int = 1) -> float:
    """Adds to a pair() row `m` (its `launches` launches reading `nbytes` each) its time in us, a launch's, its
    TB/s and its fractions of the copy ceiling and of the read-only kernel's rate (the fastest `read only` row
    so far, over `weight_bytes`); returns that fastest read-only time, this row's if it is one and faster."""
    us = m["opt_ms"] * 1e3
    if name.startswith("read only"):
        read_us = min(read_us, us)
    m.update(us=us, us_per_launch=us / launches, tb_per_s=launches * nbytes / us / 1e6)
    m["of_copy"] = m["tb_per_s"] * 1e12 / COPY_CEILING
    m["of_read"] = read_us * (nbytes / weight_bytes) / us if math.isfinite(read_us) else None
    return read_us


def section_ceiling(bench: Bench) -> None:
    print("\n== ceiling: the weight's bytes read alone, the 16-bit F.linear, and GEMV tiles, one row ==", flush=True)
    sms = bench.device.sm_count
    print(f"  {'N x K':12s} {'variant':44s} {'us':>8s} {'TB/s':>6s} {'of copy':>7s} {'of read':>7s} {'rel L2':>8s}")
    table = {}
    for n, k in DECODE_SHAPES + STACKED_SHAPES:
        w, x, w16, wq, reference = _decode_operands(n, k)
        words = wq.view(torch.int32).reshape(-1)
        sink = torch.zeros(sms * 16, dtype=torch.int32, device=DEVICE)

        def bf16_linear(x=x, w16=w16):
            return F.linear(x.to(torch.bfloat16), w16).float()

        def reader(per_sm: int, block: int, warps: int, words=words, sink=sink):
            steps = triton.cdiv(words.numel(), sms * per_sm * block)

            def read():
                _read_only_kernel[(sms * per_sm,)](words, words.numel(), sink, steps, BLOCK=block, num_warps=warps)
            return read

        subjects = {f"read only, {per_sm}/SM, {block} words": (reader(per_sm, block, warps), n * k, None)
                    for per_sm, block, warps in ((4, 2048, 4), (8, 2048, 4), (4, 8192, 8), (16, 1024, 4))}
        subjects["bf16 F.linear (2 bytes a weight)"] = (bf16_linear, 2 * n * k, None)
        committed = fp8_linear.gemv_config(n, k)
        for name, cfg in {f"committed {_tile_name(committed)}": committed, **DEEP, **CUDA_TILES}.items():
            subjects[name] = (None, n * k, cfg)
        rows, read_us = {}, math.inf
        for name, (fn, nbytes, cfg) in subjects.items():
            try:
                err = None
                if cfg is not None:
                    layer = FP8Linear.build(w, gemv=lambda n_, k_, cfg=cfg: cfg)
                    def fn(x=x, layer=layer):  # noqa: E306
                        return layer(x)
                    err = rel_l2(reference, fn())
                m = bench.pair(bf16_linear, fn, n=40)
                m["rel_l2"] = err
                read_us = _read_rates(m, name, nbytes, n * k, read_us)
                us = m["us"]
                rows[name] = m
                print(f"  {f'{n}x{k}':12s} {name:44s} {us:8.2f} {m['tb_per_s']:6.2f} {m['of_copy']:7.3f} "
                      f"{m['of_read'] or math.nan:7.3f} {err if err is not None else math.nan:8.1e}", flush=True)
            except Exception as e:  # noqa: BLE001
                rows[name] = _fail(f"{n}x{k} {name}", e)
        gemvs = {nm: r for nm, r in rows.items() if r.get("rel_l2") is not None and r["rel_l2"] < ACCURATE_REL_L2}
        if gemvs:
            fastest = min(gemvs, key=lambda nm: gemvs[nm]["us"])
            bench.summary.append(f"ceiling {n}x{k}: read only {read_us:.1f} us; fastest GEMV {fastest} "
                                 f"{gemvs[fastest]['us']:.1f} us ({gemvs[fastest]['of_copy']:.2f} of copy, "
                                 f"{gemvs[fastest]['of_read'] or math.nan:.2f} of read)")
        table[f"{n}x{k}"] = rows
        bench.results["ceiling"] = table
        bench.save()


# -- sequence -------------------------------------------------------------------------------------
SEQUENCE_LAYERS = 8  # distinct weights a sequence reads, one launch each, as a model's layers follow each other


def section_sequence(bench: Bench) -> None:
    """What a decode kernel reads when launches follow each other over distinct weights, as a model's layers do,
    rather than one launch after the timer's flush: each kernel's ramp and last wave meet the next one's."""
    print(f"\n== sequence: {SEQUENCE_LAYERS} launches over {SEQUENCE_LAYERS} distinct weights, one timed call ==",
          flush=True)
    sms = bench.device.sm_count
    cuda = Fp8GemvKernels(torch.device(DEVICE))
    tile = fp8_linear.CUDA_TILE
    print(f"  {'N x K':12s} {'variant':52s} {'us':>8s} {'us/launch':>9s} {'TB/s':>6s} {'of copy':>7s} {'of read':>7s}")
    table = {}
    for n, k in DECODE_SHAPES + STACKED_SHAPES:
        g = torch.Generator(device=DEVICE).manual_seed(n + k)
        x = torch.randn(1, k, generator=g, device=DEVICE)
        layers = [quantize_tensorwise(torch.randn(n, k, generator=g, device=DEVICE) / math.sqrt(k))
                  for _ in range(SEQUENCE_LAYERS)]
        w16 = [(wq.float() * inv).bfloat16() for wq, inv in layers]
        outs = torch.empty(SEQUENCE_LAYERS, 1, n, device=DEVICE)
        sink = torch.zeros(sms * 16, dtype=torch.int32, device=DEVICE)

        def bf16_linears(x=x, w16=w16):
            xb = x.to(torch.bfloat16)
            for w in w16:
                F.linear(xb, w)

        def readers(per_sm: int, block: int, warps: int, layers=layers, sink=sink):
            words = [wq.view(torch.int32).reshape(-1) for wq, _ in layers]
            steps = triton.cdiv(words[0].numel(), sms * per_sm * block)

            def read():
                for w in words:
                    _read_only_kernel[(sms * per_sm,)](w, w.numel(), sink, steps, BLOCK=block, num_warps=warps)
            return read

        def gemvs(programmatic: bool, x=x, layers=layers, outs=outs):
            def run():
                for (wq, inv), out in zip(layers, outs, strict=True):
                    cuda.gemv(x, wq, inv, tile, out, programmatic=programmatic)
            return run

        subjects = {f"read only, {per_sm}/SM, {block} words": (readers(per_sm, block, warps), n * k)
                    for per_sm, block, warps in ((4, 2048, 4), (8, 2048, 4))}
        subjects["bf16 F.linear (2 bytes a weight)"] = (bf16_linears, 2 * n * k)
        subjects[f"{_tile_name(tile)}"] = (gemvs(False), n * k)
        subjects[f"{_tile_name(tile)}, programmatic launches"] = (gemvs(True), n * k)
        rows, read_us = {}, math.inf
        early_name = f"{_tile_name(tile)}, programmatic launches"
        for name, (fn, nbytes) in subjects.items():
            try:
                if name == early_name:
                    outs.fill_(math.nan)  # what the equality check below reads is this subject's
                m = bench.pair(bf16_linears, fn, n=30)
                read_us = _read_rates(m, name, nbytes, n * k, read_us, launches=SEQUENCE_LAYERS)
                us = m["us"]
                rows[name] = m
                print(f"  {f'{n}x{k}':12s} {name:52s} {us:8.1f} {m['us_per_launch']:9.2f} {m['tb_per_s']:6.2f} "
                      f"{m['of_copy']:7.3f} {m['of_read'] or math.nan:7.3f}", flush=True)
            except Exception as e:  # noqa: BLE001
                rows[name] = _fail(f"{n}x{k} {name}", e)
        # The programmatic launches (the last timed) wrote what ordinary ones do. The launches are independent
        # (one x, an output each): this checks the launch path, not the ordering (tests/test_fp8_gemv_cuda.py).
        plain, early = rows.get(_tile_name(tile), {}), rows.get(early_name, {})
        same = "us" in early and all(torch.equal(out, cuda.gemv(x, wq, inv, tile, torch.empty_like(out)))
                                     for out, (wq, inv) in zip(outs, layers, strict=True))
        early["same_outputs"] = same
        if "us" in plain and "us" in early:
            bench.summary.append(f"sequence {n}x{k}: read only {read_us / SEQUENCE_LAYERS:.1f} us a launch; GEMV "
                                 f"{plain['us_per_launch']:.1f} ({plain['of_copy']:.2f} of copy), programmatic "
                                 f"{early['us_per_launch']:.1f} ({early['of_copy']:.2f}), same outputs: {same}")
        table[f"{n}x{k}"] = rows
        bench.results["sequence"] = table
        bench.save()


# -- decode linears -------------------------------------------------------------------------------
def _old_path(x: torch.Tensor, layer: FP8Linear) -> torch.Tensor:
    """The FP8 linear before this change: eager quantizer, rows padded to 16, _scaled_mm, bf16 out, .float()."""
    q, inv = quantize_tensorwise(x)
    pad = (-q.shape[0]) % 16
    q = torch.cat([q, torch.zeros(pad, q.shape[1], dtype=q.dtype, device=q.device)])
    return scaled_mm(q, inv, layer.weight.t(), layer.inv_scale)[: x.shape[0]].float()


def section_decode(bench: Bench) -> dict[tuple[int, int], str]:
    print("\n== decode: one float32 row x weight [N, K], against the 16-bit step's F.linear ==", flush=True)
    best: dict[tuple[int, int], str] = {}
    table = {}
    print(f"  {'N x K':12s} {'variant':42s} {'bf16 ms':>8s} {'fp8 ms':>8s} {'speedup':>8s} {'TB/s':>6s} "
          f"{'of copy':>7s} {'rel L2':>8s}")
    for n, k in DECODE_SHAPES:
        w, x, w16, _, reference = _decode_operands(n, k)

        def bf16_linear(x=x, w16=w16):
            return F.linear(x.to(torch.bfloat16), w16).float()

        variants = {"before: eager quant, pad 16, _scaled_mm": (None, "old"),
                    "one-launch quant + _scaled_mm (1 row)": (None, "scaled_mm"),
                    **{f"gemv {name}": (cfg, "gemv") for name, cfg in CANDIDATES.items()}}
        rows = {}
        for name, (cfg, kind) in variants.items():
            try:
                layer = FP8Linear.build(w, gemv=lambda n_, k_, cfg=cfg: cfg)
                if kind == "old":
                    def fn(x=x, layer=layer):
                        return _old_path(x, layer)
                else:
                    def fn(x=x, layer=layer):
                        return layer(x)
                err = rel_l2(reference, fn())
                m = bench.pair(bf16_linear, fn)
                m.update(rel_l2=err, tb_per_s=n * k / (m["opt_ms"] * 1e-3) / 1e12)
                m["of_copy"] = m["tb_per_s"] * 1e12 / COPY_CEILING
                rows[name] = m
                print(f"  {f'{n}x{k}':12s} {name:42s} {m['base_ms']:8.4f} {m['opt_ms']:8.4f} {m['speedup']:8.2f} "
                      f"{m['tb_per_s']:6.2f} {m['of_copy']:7.2f} {err:8.1e}", flush=True)
            except Exception as e:  # noqa: BLE001
                rows[name] = _fail(f"{n}x{k} {name}", e)
        gemvs = {nm: r for nm, r in rows.items()
                 if nm.startswith("gemv") and "opt_ms" in r and r["rel_l2"] < ACCURATE_REL_L2}
        if gemvs:
            best[(n, k)] = min(gemvs, key=lambda nm: gemvs[nm]["opt_ms"])[len("gemv "):]
            committed = fp8_linear.gemv_config(n, k)
            committed_name = next((nm for nm, c in CANDIDATES.items() if c == committed), str(committed))
            b = gemvs[f"gemv {best[(n, k)]}"]
            bench.summary.append(f"decode {n}x{k}: fastest GEMV {best[(n, k)]} {b['opt_ms'] * 1e3:.1f} us, "
                                 f"{b['speedup']:.2f}x bf16, {b['of_copy']:.2f} of copy; committed: {committed_name}")
        table[f"{n}x{k}"] = rows
        bench.results["decode"] = table
        bench.save()
    bench.results["decode_best"] = {f"{n}x{k}": name for (n, k), name in best.items()}
    return best


# -- decode steps ----------------------------------------------------------------------------------
def _of_copy(step: DecodeStep, ms: float) -> float:
    """The step's weight and KV-cache bytes over its time, as a fraction of the copy ceiling."""
    return (step.weight_bytes + step.cache_bytes) / (ms * 1e-3) / COPY_CEILING


def section_steps(bench: Bench, best: dict[tuple[int, int], str]) -> None:
    print("\n== steps: suites/test_mixed_precision.py large decode step, against fp16_baseline ==", flush=True)
    t = time.perf_counter()
    weights = Weights.random(STEP_SHAPE, DEVICE, seed=11)
    print(f"  weights drawn in {time.perf_counter() - t:.1f} s", flush=True)
    reference = DecodeStep(weights, STEP_SHAPE, None, None)()
    known = builtin_strategies()
    cuda = CudaKernels(torch.device(DEVICE))  # the NVFP4 weights' GEMV, as the suite runs it
    sixteen = DecodeStep(weights, STEP_SHAPE, known["fp16_baseline"], cuda)
    sixteen_work = sixteen.work()
    # Both sides with every projection its own linear, as before the stacking (2026-12-02): what it gains.
    apart_sixteen = DecodeStep(weights, STEP_SHAPE, known["fp16_baseline"], cuda, stack=False)
    apart_sixteen_work = apart_sixteen.work()
    # Both sides with each linear's input cast in its own launch, as before the fused launches wrote copies.
    casts_sixteen = DecodeStep(weights, STEP_SHAPE, known["fp16_baseline"], cuda, copies=False)
    casts_sixteen_work = casts_sixteen.work()
    # Both sides launched ordinarily, as before the programmatic launches (2026-12-02).
    ordinary_sixteen = DecodeStep(weights, STEP_SHAPE, known["fp16_baseline"], cuda, programmatic=False)
    choosers = {"committed tiles": fp8_linear.gemv_config,
                ORDINARY: fp8_linear.gemv_config,
                APART: fp8_linear.gemv_config,
                CASTS: fp8_linear.gemv_config,
                NVFP4_GEMV: fp8_linear.gemv_config,
                "fastest tile per shape": lambda n, k: CANDIDATES[best[(n, k)]] if (n, k) in best else None,
                "no GEMV (_scaled_mm, 1 row)": lambda n, k: None}
    if not best or all(fp8_linear.gemv_config(n, k) == CANDIDATES.get(best.get((n, k), "")) for n, k in DECODE_SHAPES):
        del choosers["fastest tile per shape"]  # none measured, or the same kernels as the committed ones
    rows = {}
    print(f"  {'strategy':22s} {'FP8 linears':28s} {'16-bit ms':>9s} {'ms':>8s} {'speedup':>8s} {'model':>6s} "
          f"{'of model':>8s} {'SQNR dB':>8s} {'16b copy':>8s} {'of copy':>7s}")
    for label, chooser in choosers.items():  # every strategy's committed path first, should time run short
        for name in STRATEGIES:
            s = known.get(name) or custom(name, {"ffn_gate": "fp8", "ffn_up": "fp8", "ffn_down": "fp8"})
            key = f"{name} / {label}"
            if bench.elapsed() > DEADLINE_S and label not in COMMITTED:
                print(f"  {key}: skipped (past {DEADLINE_S:.0f} s)")
                continue
            try:
                apart = label == APART
                layers = range(STEP_SHAPE.layers)
                if label not in COMMITTED and not any(
                        s.precision(op, i, STEP_SHAPE.layers) == "fp8" for op in LINEARS for i in layers):
                    continue  # the FP8 tile choices do not touch this strategy
                if label == NVFP4_GEMV and not any(
                        s.precision(op, i, STEP_SHAPE.layers) in NVFP4_WEIGHTS for op in LINEARS for i in layers):
                    continue  # no NVFP4 weights
                step = DecodeStep(weights, STEP_SHAPE, s, cuda, fp8_gemv=chooser, stack=not apart,
                                  nvfp4_mma=label != NVFP4_GEMV, copies=label != CASTS,
                                  programmatic=label != ORDINARY)
                base, base_work = {APART: (apart_sixteen, apart_sixteen_work),
                                   CASTS: (casts_sixteen, casts_sixteen_work),
                                   ORDINARY: (ordinary_sixteen, sixteen_work)}.get(label, (sixteen, sixteen_work))
                sq = sqnr_db(reference, step())
                m = bench.pair(base, step, n=80)
                pred = bench.predicted(base_work, step.work())
                m.update(sqnr_db=sq, predicted=pred, of_model=m["speedup"] / pred if pred else None,
                         base_of_copy=_of_copy(base, m["base_ms"]), opt_of_copy=_of_copy(step, m["opt_ms"]))
                rows[key] = m
                print(f"  {name:22s} {label:28s} {m['base_ms']:9.4f} {m['opt_ms']:8.4f} {m['speedup']:8.3f} "
                      f"{pred or float('nan'):6.2f} {m['of_model'] or float('nan'):8.2f} {sq:8.2f} "
                      f"{m['base_of_copy']:7.3f} {m['opt_of_copy']:7.3f}", flush=True)
                del step
            except Exception as e:  # noqa: BLE001
                rows[key] = _fail(key, e)
            bench.results["steps"] = rows
            bench.save()
    for name in STRATEGIES:
        committed = rows.get(f"{name} / committed tiles", {})
        if "speedup" in committed:
            bench.summary.append(f"step {name}: {committed['speedup']:.3f}x (committed tiles; model "
                                 f"{committed['predicted'] or float('nan'):.2f}x, of model "
                                 f"{committed['of_model'] or float('nan'):.2f}, SQNR {committed['sqnr_db']:.1f} dB)")
    del weights, reference, sixteen


# -- prefill linear --------------------------------------------------------------------------------
def section_prefill(bench: Bench) -> None:
    print("\n== prefill: suites/test_fp8_gemm.py linear, against BF16 a @ b ==", flush=True)
    print(f"  {'n':>5s} {'variant':36s} {'bf16 ms':>8s} {'fp8 ms':>8s} {'speedup':>8s} {'model':>6s} {'of model':>8s}")
    rows = {}
    for n in PREFILL_SIZES:
        a, b = square_operands(n, DEVICE)
        a8, a_inv = quantize_tensorwise(a)
        b8, b_inv = quantize_tensorwise(b)
        b8 = b8.t().contiguous().t()
        bf16 = Work(flops=2.0 * n**3, nbytes=3 * 2 * n * n, unit="bf16")
        gemm = Work(flops=2.0 * n**3, nbytes=2 * n * n + 2 * n * n, unit="fp8")

        def eager(a=a, b8=b8, b_inv=b_inv):
            q, inv = quantize_tensorwise(a)
            return scaled_mm(q, inv, b8, b_inv)

        def triton_two_pass(a=a, b8=b8, b_inv=b_inv):
            q, inv = quantize_activation(a)
            return scaled_mm(q, inv, b8, b_inv)

        def gemm_alone(a8=a8, a_inv=a_inv, b8=b8, b_inv=b_inv):
            return scaled_mm(a8, a_inv, b8, b_inv)

        def eager_declared(a=a, gemm=gemm):  # what the suite declared before: the eager quantizer's operators
            return eager_work(lambda: quantize_tensorwise(a)) + gemm

        variants = {"FP8 GEMM alone (pre-quantized)": (gemm_alone, lambda gemm=gemm: gemm),
                    "before: eager quantizer + _scaled_mm": (eager, eager_declared),
                    "now: Triton two-pass + _scaled_mm": (triton_two_pass,
                                                          lambda a=a, gemm=gemm: quantize_work(a.numel(), 2) + gemm)}
        for name, (fn, work) in variants.items():
            key = f"{n} {name}"
            try:
                fn()  # the two-pass quantizer autotunes its cast tile on its first call, before any graph
                m = bench.pair(lambda a=a, b=b: a @ b, fn, n=30 if n >= 8192 else 50)
                pred = bench.predicted(bf16, work())
                m.update(predicted=pred, of_model=m["speedup"] / pred if pred else None)
                rows[key] = m
                print(f"  {n:5d} {name:36s} {m['base_ms']:8.4f} {m['opt_ms']:8.4f} {m['speedup']:8.3f} "
                      f"{pred or float('nan'):6.2f} {m['of_model'] or float('nan'):8.2f}", flush=True)
            except Exception as e:  # noqa: BLE001
                rows[key] = _fail(key, e)
            bench.results["prefill"] = rows
            bench.save()
        now = rows.get(f"{n} now: Triton two-pass + _scaled_mm", {})
        if "speedup" in now:
            bench.summary.append(f"prefill linear {n}: {now['speedup']:.3f}x (model {now['predicted'] or 0:.2f}x, "
                                 f"of model {now['of_model'] or float('nan'):.2f})")


def main(argv: list[str]) -> int:
    sections = {"ceiling": section_ceiling, "sequence": section_sequence, "bits": section_bits,
                "decode": section_decode, "prefill": section_prefill, "steps": section_steps}
    if not argv or any(name not in sections for name in argv[1:]):
        print(__doc__)
        return 2
    if not torch.cuda.is_available():
        print("needs a CUDA device")
        return 1
    bench = Bench(Path(argv[0]))
    print(f"{bench.results['device']}, torch {torch.__version__}, model ceilings: "
          f"{bench.ceilings.source if bench.ceilings else 'none'}", flush=True)
    best: dict = {}
    for section in [fn for name, fn in sections.items() if name in argv[1:]] or sections.values():
        try:
            out = section(bench, best) if section is section_steps else section(bench)
            if section is section_decode:
                best = out
        except Exception as e:  # noqa: BLE001
            bench.results[section.__name__] = _fail(section.__name__, e)
        print(f"  [{bench.elapsed():.0f} s]", flush=True)
        bench.save()
    print("\n== summary ==")
    for line in bench.summary:
        print("  " + line)
    if best:
        table = ", ".join(f"({n}, {k}): {CANDIDATES[name]!r}" for (n, k), name in best.items())
        print(f"  fastest tiles as fp8_linear.GEMV_CONFIGS: {{{table}}}")
    print(f"  total {bench.elapsed():.0f} s; JSON: {bench.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
