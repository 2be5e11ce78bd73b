"""The split-K decode-attention kernel (lowprec_workloads.decode_attention_triton) on the CPU: every way of
computing q.k and p.v, run by Triton's interpreter, against float64 attention over the values each cache
holds; the tile table's rules; and the variants benchmark, end to end on the CPU."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from lowprec_workloads.decode_attention import CACHES, DecodeShape, attend_cache, build_cache, make_inputs
from pytest_lowprec.formats.metrics import rel_l2

# The suite's bound on the kernel against float64 attention over its own cache.
MAX_REL_L2 = 1e-5
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kernel():
    from lowprec_workloads import decode_attention_triton

    return decode_attention_triton


def _inputs(seq: int, seed: int = 3):
    q, k, v = make_inputs(DecodeShape(batch=1, heads=2, seq=seq, head_dim=128), "cpu", seed=seed, outlier_channels=2)
    return q, {name: build_cache(k, v, name) for name in CACHES}


def _check(kernel, q, caches, runs):
    """Each run, (tile, splits) or (tile, splits, programs), matches float64 attention over each cache."""
    for name, cache in caches.items():
        outs = kernel.decode_attention_interpreted(q, cache, runs)
        reference = attend_cache(q, cache)
        for run, out in zip(runs, outs, strict=True):
            label = run[0].name if run[0] else "default tile"
            assert rel_l2(reference, out) < MAX_REL_L2, f"{name} {label} splits, programs={run[1:]}"


def test_the_default_tiles_and_the_pair_path_match_float64_attention_over_each_cache(kernel):
    """300 tokens: a ragged last tile; 8 splits: some empty; 3: not a power of two."""
    q, caches = _inputs(300)
    runs = [(None, None), (None, 8), (None, 3),
            (kernel.Tile("mma_t", "mma_pairs", 32, 1, 2, e2m1="bitwise"), 3)]
    _check(kernel, q, caches, runs)


def test_tapered_splits_match_float64_attention_over_each_cache(kernel):
    """Tile.taper cuts the last splits in two (half a split rounded up to 128 tokens). 600 tokens in 2 splits
    of 384: 1 cut (384 + 216 + an empty one), both (256 + 256 + 88 + an empty one), more than there are
    (the same); 3 splits of 256, 2 cut (256 + 128 + 128 + 88 + an empty one); in splits of 128 a half would
    be no shorter, so there is no taper."""
    q, caches = _inputs(600, seed=6)
    tile = kernel.Tile("mma_t", "mma_pairs", 32, 1, 2, e2m1="bitwise")
    runs = [(replace(tile, taper=1), 2), (replace(tile, taper=2), 2), (replace(tile, taper=5), 2),
            (replace(tile, taper=2), 3), (replace(tile, taper=2), 5)]
    _check(kernel, q, caches, runs)


def test_a_sequence_heads_splits_launched_together_match_float64_attention_over_each_cache(kernel):
    """Tile.order "splits": the grid's axes swapped (3 splits of a ragged cache; 8, some empty; with a taper)."""
    q, caches = _inputs(300, seed=8)
    tile = kernel.Tile("mma_t", "mma_pairs", 32, 1, 2, e2m1="bitwise", order="splits")
    _check(kernel, q, caches, [(tile, 3), (tile, 8), (replace(tile, taper=1), 2)])


def test_balanced_runs_match_float64_attention_over_each_cache(kernel):
    """Tile.schedule "balanced": 3 sequence-heads of 300 tokens laid end to end and cut into 1 to 30 equal runs
    of 32- or 64-token tiles (a run inside one sequence-head, across two, across all three; a sequence-head
    met by runs that are not its own first), more programs than tiles (clamped), the merge fused or its own
    launch; each twice on one workspace (the counters back at zero)."""
    import torch

    q, k, v = make_inputs(DecodeShape(batch=1, heads=3, seq=300, head_dim=128), "cpu", seed=12, outlier_channels=2)
    caches = {name: build_cache(k, v, name) for name in CACHES}
    tile = kernel.Tile("mma_t", "mma_pairs", 32, 1, 2, e2m1="bitwise", schedule="balanced")
    runs = [(tile, None, programs) for programs in (1, 2, 4, 7, 30, 1000)]
    runs += [(replace(tile, block_n=64, qk="mma_t", pv="mma_t", warps=4, combine="kernel"), None, programs)
             for programs in (2, 7)]
    runs += [(replace(tile, qk="fma", pv="fma"), None, 5)] * 2
    _check(kernel, q, caches, runs)
    for cache in caches.values():
        outs = kernel.decode_attention_interpreted(q, cache, [(tile, None, 7)] * 2)
        assert torch.equal(outs[0], outs[1])


def test_a_split_count_runs_the_split_schedule_and_a_program_count_the_balanced_one(kernel):
    """decode_attention(splits=) cuts each sequence-head in that many splits whatever the tile's schedule, and
    programs= cuts the whole cache in that many runs: a balanced tile given 3 splits and a split tile given 7
    programs both match float64 attention; both counts at once, or programs for a tile that takes a launch
    order, are refused."""
    q, caches = _inputs(300, seed=13)
    split_tile = kernel.Tile("mma_t", "mma_pairs", 32, 1, 2, e2m1="bitwise")
    balanced = replace(split_tile, schedule="balanced", min_run=2048)
    _check(kernel, q, caches, [(balanced, 3), (split_tile, None, 7)])
    with pytest.raises(ValueError, match="not both"):
        kernel.decode_attention(q, caches["bf16"], 3, split_tile, programs=7)
    with pytest.raises(ValueError, match="takes no launch order or taper"):
        kernel.decode_attention(q, caches["bf16"], tile=replace(split_tile, order="splits"), programs=7)


def test_a_balanced_partition_holds_every_sequence_heads_runs_in_its_rows(kernel):
    """partition's rows a sequence-head (stride) hold every run that meets it, for every cut of up to 6
    sequence-heads of up to 20 tiles into up to 60 runs: program p runs tiles [p T / P, (p + 1) T / P). The
    bound is the count's own at the suite's shape: 4 rows for 528 runs of 32-token tiles, 8 for 1056 of 64."""
    for bh, per_bh, programs in itertools.product(range(1, 7), range(1, 21), range(1, 61)):
        tile = kernel.Tile(block_n=16, schedule="balanced")
        cut = kernel.partition(tile, bh, per_bh * 16, programs)
        total = bh * per_bh
        assert cut.programs == min(programs, total) and cut.stride & (cut.stride - 1) == 0
        starts = [p * total // cut.programs for p in range(cut.programs + 1)]
        most = max(sum(1 for p in range(cut.programs) if starts[p] < (b + 1) * per_bh and starts[p + 1] > b * per_bh)
                   for b in range(bh))
        assert most <= cut.stride, (bh, per_bh, programs)
    assert kernel.partition(kernel.Tile(block_n=32, schedule="balanced"), 256, 32768, 528).stride == 4
    assert kernel.partition(kernel.Tile(block_n=64, schedule="balanced"), 256, 32768, 1056).stride == 8


def test_a_split_partition_is_whole_128_token_splits_with_the_tapered_halves_after(kernel):
    cut = kernel.partition(kernel.Tile(), 256, 32768, 16)
    assert (cut.programs, cut.full_splits, cut.split_len, cut.stride) == (16, 16, 2048, 16)
    cut = kernel.partition(kernel.Tile(taper=2), 2, 600, 2)
    assert (cut.programs, cut.full_splits, cut.split_len, cut.half_len, cut.stride) == (4, 0, 384, 256, 4)


def test_a_cache_too_small_for_a_balanced_tiles_shortest_run_launches_in_splits(kernel):
    """Tile.min_run 2048: the suite's speed shape (256 sequence-heads of 32K tokens) runs 4 programs an SM
    balanced, 16K tokens each; the strategies' decode step (32 of 8K) would make runs of 496 tokens, so it
    runs in splits. With no min_run a balanced tile stays balanced."""
    tile = kernel.Tile(per_sm=4, schedule="balanced", min_run=2048)
    assert kernel.default_schedule(tile, 256, 32768, 132) == tile
    assert kernel.default_schedule(tile, 32, 8192, 132) == replace(tile, schedule="splits", min_run=0)
    always = kernel.Tile(per_sm=4, schedule="balanced")
    assert kernel.default_schedule(always, 32, 8192, 132) == always
    assert kernel.default_schedule(kernel.Tile(per_sm=4), 256, 32768, 132).schedule == "splits"


def test_a_launch_plans_the_tiles_own_schedule_unless_told_a_split_or_program_count(kernel):
    """The H200's FP8-K NVFP4-V tile (balanced, 8 an SM, min_run 2048): at the suite's speed shape 1056 runs, 8
    rows of partials a sequence-head; at the strategies' step in 32 splits of 256 tokens; told splits or
    programs, the schedule they name."""
    tile = kernel.TILES["h200"][("fp8", "nvfp4")]
    suite, cut = kernel.plan(tile, 256, 32768, 132)
    assert (suite.schedule, cut.programs, cut.stride) == ("balanced", 1056, 8)
    step, cut = kernel.plan(tile, 32, 8192, 132)
    assert (step.schedule, cut.programs, cut.split_len) == ("splits", 32, 256)
    told, cut = kernel.plan(tile, 256, 32768, 132, splits=16)
    assert (told.schedule, cut.programs, cut.split_len) == ("splits", 16, 2048)
    told, cut = kernel.plan(replace(tile, schedule="splits", min_run=0), 256, 32768, 132, programs=600)
    assert (told.schedule, cut.programs) == ("balanced", 600)


def test_the_balanced_schedule_runs_per_sm_programs_an_sm_in_all_but_no_run_under_256_tokens(kernel):
    assert kernel.default_splits(kernel.Tile(per_sm=10, schedule="balanced"), 256, 32768, 132) == 1320
    assert kernel.default_splits(kernel.Tile(per_sm=10, schedule="balanced"), 1, 8192, 132) == 32
    assert kernel.default_splits(kernel.Tile(per_sm=16), 256, 32768, 132) == 16


def test_tma_loads_match_float64_attention_over_each_cache(kernel):
    """Tile.loads "tma": 300 tokens, so the last tile of a sequence-head runs past its end (TMA fills zeros
    there); 3 and 8 splits (some empty); the pair path, and the products that transpose K and V."""
    q, caches = _inputs(300, seed=9)
    runs = [(kernel.Tile("mma_t", "mma_pairs", 32, 1, 2, e2m1="bitwise", loads="tma"), 3),
            (kernel.Tile("mma_t", "mma_pairs", 64, 1, 3, e2m1="bitwise", loads="tma"), 8),
            (kernel.Tile("mma_t", "mma_t", 64, 4, 2, e2m1="bitwise", loads="tma"), 3),
            (kernel.Tile("mma", "mma", 64, 4, 2, e2m1="bitwise", loads="tma"), 3),
            (kernel.Tile("fma", "fma", 64, 4, 2, e2m1="bitwise", loads="tma"), 2)]
    _check(kernel, q, caches, runs)


def test_loads_with_an_l2_eviction_priority_match_float64_attention_over_each_cache(kernel):
    """Tile.evict: a hint to the L2, so the same values whatever it asks for (the pair path, every product
    pair on the tensor-core path, the CUDA cores)."""
    q, caches = _inputs(300, seed=8)
    runs = [(kernel.Tile("mma_t", "mma_pairs", 32, 1, 3, e2m1="bitwise", evict="first"), 3),
            (kernel.Tile("mma_t", "mma_t", 64, 4, 3, e2m1="bitwise", evict="first"), 2),
            (kernel.Tile("mma", "mma", 64, 4, 2, e2m1="bitwise", evict="last"), 3),
            (kernel.Tile("fma", "fma", 64, 4, 2, e2m1="bitwise", evict="first"), 2)]
    _check(kernel, q, caches, runs)


def test_tma_loads_do_not_read_the_next_sequence_heads_rows(kernel):
    """An inf in head 1's V, past head 0's last token: head 0's ragged last tile must not see it (p is 0
    there, but 0 times inf is NaN), as the pointer loads, masked, do not."""
    import torch

    from lowprec_workloads.decode_attention import Cache, attend_cache

    q, caches = _inputs(300, seed=10)
    cache = caches["bf16"]
    v = cache.v.data.clone()
    v[0, 1, 0, 0] = float("inf")
    poisoned = Cache(cache.k, replace(cache.v, data=v))
    tiles = [(kernel.Tile("mma_t", "mma_pairs", 64, 1, 2, e2m1="bitwise", loads=loads), 2)
             for loads in ("pointers", "tma")]
    reference = attend_cache(q, cache)[0, 0]
    for (tile, _), out in zip(tiles, kernel.decode_attention_interpreted(q, poisoned, tiles), strict=True):
        assert torch.isfinite(out[0, 0]).all() and rel_l2(reference, out[0, 0]) < MAX_REL_L2, tile.name


def test_tma_loads_refuse_a_cache_whose_base_is_not_16_byte_aligned(kernel):
    import torch

    q, caches = _inputs(64, seed=11)
    cache = caches["fp8"]
    shifted = torch.empty(cache.k.data.numel() + 1, dtype=cache.k.data.dtype)[1:].view(cache.k.data.shape)
    shifted.copy_(cache.k.data)
    misaligned = type(cache)(replace(cache.k, data=shifted), cache.v)
    with pytest.raises(ValueError, match="16-byte aligned cache.*choose loads='pointers'"):
        kernel.launch(q, misaligned, splits=1, tile=kernel.Tile("mma_t", "mma_pairs", 32, 1, 2, loads="tma"))


@pytest.mark.slow
def test_every_product_matches_float64_attention_over_each_cache(kernel):
    q, caches = _inputs(200, seed=4)
    runs = [(kernel.Tile(qk, pv, block_n, 4, 1, e2m1="bitwise"), 2)
            for qk, pv in itertools.product(kernel.QK_PRODUCTS, kernel.PRODUCTS) for block_n in (16, 64)]
    _check(kernel, q, caches, runs)


def test_a_tile_rejects_what_the_kernel_cannot_run(kernel):
    with pytest.raises(ValueError, match="qk takes"):
        kernel.Tile(qk="mma_pairs")
    with pytest.raises(ValueError, match="block_n"):
        kernel.Tile(block_n=48)
    with pytest.raises(ValueError, match="warps"):
        kernel.Tile(warps=3)
    with pytest.raises(ValueError, match="'lut' with pv='mma_pairs'"):
        kernel.Tile(pv="fma", e2m1="lut")
    with pytest.raises(ValueError, match="taper must be >= 0"):
        kernel.Tile(taper=-1)
    with pytest.raises(ValueError, match="order takes heads, splits"):
        kernel.Tile(order="tokens")
    with pytest.raises(ValueError, match="loads takes pointers, tma"):
        kernel.Tile(loads="bulk")
    with pytest.raises(ValueError, match="evict takes normal, first, last"):
        kernel.Tile(evict="evict_first")
    with pytest.raises(ValueError, match="TMA loads take none"):
        kernel.Tile(loads="tma", evict="first")
    with pytest.raises(ValueError, match="min_run must be >= 0"):
        kernel.Tile(min_run=-1, schedule="balanced")
    with pytest.raises(ValueError, match="a tile in splits takes none"):
        kernel.Tile(min_run=2048)
    with pytest.raises(ValueError, match="carry takes add, mma"):
        kernel.Tile(carry="tensor")
    with pytest.raises(ValueError, match="schedule takes splits, balanced"):
        kernel.Tile(schedule="persistent")
    with pytest.raises(ValueError, match="takes no launch order or taper"):
        kernel.Tile(schedule="balanced", taper=1)
    with pytest.raises(ValueError, match="takes no launch order or taper"):
        kernel.Tile(schedule="balanced", order="splits")


def test_no_gpus_tiles_name_the_lut_decode_which_the_h200_ran_slower(kernel):
    """The lut decode, correct on the H200 since its fix, read the FP8-K NVFP4-V cache in 0.494 ms at the
    then shipped tile against the integer-op decode's 0.460, and in 0.483 ms at best against 0.417 once
    that decode took its scale in the same asm (2026-12-01): a tile that names it needs a GPU where a
    sweep has measured it faster."""
    assert [(gpu, formats) for gpu, tiles in kernel.TILES.items() for formats, tile in tiles.items()
            if tile.e2m1 == "lut"] == []


def test_every_gpus_fixed_tiles_match_float64_attention_over_their_cache(kernel):
    """Each shipped tile as the interpreter can run it (its PTX decode taken bit by bit), 300 tokens."""
    from dataclasses import replace

    q, caches = _inputs(300, seed=5)
    for gpu, tiles in kernel.TILES.items():
        for name, formats in CACHES.items():
            tile = replace(tiles[formats], e2m1="bitwise")
            for splits in (3, None):
                out = kernel.decode_attention_interpreted(q, caches[name], [(tile, splits)])[0]
                assert rel_l2(attend_cache(q, caches[name]), out) < MAX_REL_L2, f"{gpu} {name} {tile.name}"


def test_a_gpu_without_its_own_tiles_runs_the_default_gpus(kernel):
    for formats in CACHES.values():
        assert kernel.tile_for("some-future-gpu", *formats) == kernel.TILES[kernel.DEFAULT_GPU][formats]


def test_split_counts_are_powers_of_two_near_per_sm_programs_per_sm_and_never_split_under_256_tokens(kernel):
    assert kernel.num_splits(256, 32768, 132, 4) == 4  # the suite's shape on an H100 or H200
    assert kernel.num_splits(256, 32768, 132, 16) == 16
    assert kernel.num_splits(256, 32768, 132, 1) == 1
    assert kernel.num_splits(8, 512, 132, 4) == 2  # 512 tokens: at most two splits of 256
    assert kernel.num_splits(256, 32768, 132, 6) == 4


def test_the_interpreter_refuses_a_ptx_decode(kernel):
    q, caches = _inputs(64)
    with pytest.raises(RuntimeError, match="cannot run under Triton's interpreter"):
        kernel.decode_attention_interpreted(q, caches["fp8k_nvfp4v"], [(kernel.Tile(e2m1="packed"), None)])


@pytest.mark.slow
def test_the_variants_benchmark_runs_every_phase_on_the_cpu(tmp_path):
    """The GPU run is one shot: its script must not fail on a typo. Two variants per cache, the
    interpreter, a tiny cache: compile workers, fresh-process probes, sweep, splits, placement, report."""
    out = tmp_path / "variants.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")])}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decode_attention_variants.py"), str(out),
                           "--smoke", "--limit", "2", "--workers", "1", "--budget-s", "900"],
                          env=env, capture_output=True, text=True, timeout=1200, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["phase_errors"] == {}
    assert {r["cache"] for r in result["sweep"] if r.get("ms")} == set(CACHES)
    assert all("rounds" in probe for probe in result["probes"]), result["probes"]
    assert {r["layout"] for r in result["placement"] if r.get("ms")} >= {"as allocated", "V then K"}
    assert "TILES[" in done.stdout


@pytest.mark.slow
def test_the_tile_probe_runs_its_rounds_on_the_cpu(tmp_path):
    """The tile probe, interpreted at a tiny size: both allocators' processes, every round, every FP8 and
    BF16 candidate checked against float64 and timed."""
    out = tmp_path / "probe.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")])}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decode_attention_tile_probe.py"), str(out),
                           "--smoke"], env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    assert [p["allocator"] for p in results] == ["default", "expandable_segments"]
    for proc in results:
        assert "error" not in proc, proc.get("error")
        assert [r["round"] for r in proc["rounds"]] == ["fp8", "fp8k_nvfp4v", "fp8", "bf16"]
        for checked in (proc["rounds"][0]["tiles"], proc["rounds"][3]["tiles"]):  # each cache's first round
            assert all(row.get("speedup") and not row.get("wrong") for row in checked.values()), checked
    assert "FP8 over BF16" in done.stdout


def _sass_tool():
    """benchmarks/decode_attention_sass.py, the offline sm_90 compiler the PTX and SASS tests read."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import decode_attention_sass
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return decode_attention_sass


@pytest.mark.slow
@pytest.mark.parametrize("cache", list(CACHES))
def test_the_tensor_core_pair_path_compiles_for_hopper(cache):
    """Offline, with Triton's own ptxas: the PTX decodes and the pair path's layouts compile for sm_90
    without spilling (the interpreter runs neither)."""
    profile = _sass_tool().profile
    from lowprec_workloads.decode_attention_triton import Tile

    e2m1 = "lut" if CACHES[cache][1] == "nvfp4" else "packed"
    row = profile(cache, Tile("mma_t", "mma_pairs", 64, 1, 2, e2m1=e2m1), arch=90)
    assert row["spill_bytes"] == 0 and row["loop_per_thread"] > 0, row


@pytest.mark.slow
@pytest.mark.parametrize("cache", list(CACHES))
def test_the_balanced_schedule_compiles_to_pipelined_copies_without_spills_for_hopper(cache):
    """Offline for sm_90: the token loop inside the loop over a run's sequence-heads keeps its asynchronous
    copies (LDGSTS) and spills nothing, as the split schedule's does."""
    profile = _sass_tool().profile
    from lowprec_workloads.decode_attention_triton import TILES

    row = profile(cache, replace(TILES["h200"][CACHES[cache]], schedule="balanced", per_sm=10), arch=90)
    assert row["spill_bytes"] == 0 and row["ops"].get("LDGSTS"), row


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["bf16", "fp8"])
def test_balanced_runs_load_through_tma_for_hopper(cache):
    """Offline for sm_90: a balanced run's 64-bit token bounds reach TMA as 32-bit coordinates (it takes no
    other), and the loop issues TMA copies (UTMALDG)."""
    profile = _sass_tool().profile
    from lowprec_workloads.decode_attention_triton import Tile

    row = profile(cache, Tile("mma_t", "mma_pairs", 32, 1, 3, loads="tma", schedule="balanced"), arch=90)
    assert row["spill_bytes"] == 0 and row["ops"].get("UTMALDG"), row


def _dot_accumulators(cache: str, carry: str) -> list[str]:
    """The accumulator operand of every tensor-core product (tt.dot, or wgmma's warp_group_dot) in the TTGIR of
    the H200's shipped tile for `cache` with Tile.carry `carry`, compiled offline for sm_90."""
    import re

    from lowprec_workloads.decode_attention_triton import TILES

    tile = replace(TILES["h200"][CACHES[cache]], carry=carry)
    ttgir = _sass_tool().compile_variant(cache, tile, arch=90).asm["ttgir"]
    return re.findall(r"= (?:tt\.dot|ttng\.warp_group_dot) %[\w#]+, %[\w#]+, (%[\w#]+)", ttgir)


@pytest.mark.slow
@pytest.mark.parametrize("cache", list(CACHES))
def test_every_tensor_core_product_starts_from_zero_unless_the_mma_carries_the_sum_for_hopper(cache):
    """Tile.carry "add": q.k and each tile's p.v start from a constant zero (the running sum is added to in
    float32, rounding to nearest), though Triton folds `acc + tl.dot(a, b)` into the MMA where it can;
    "mma": p.v's MMA takes the loop's running sum as its accumulator."""
    added, carried = _dot_accumulators(cache, "add"), _dot_accumulators(cache, "mma")
    assert len(added) == len(carried) >= 2
    assert all(acc.startswith("%cst") for acc in added), added
    assert not all(acc.startswith("%cst") for acc in carried), carried


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["bf16", "fp8"])
def test_tma_loads_compile_to_tensor_memory_copies_in_the_loop_for_hopper(cache):
    """Offline for sm_90: Tile.loads "tma" issues TMA copies (UTMALDG) in the token loop, not per-thread
    cp.async (LDGSTS), with no spills."""
    profile = _sass_tool().profile
    from lowprec_workloads.decode_attention_triton import Tile

    row = profile(cache, Tile("mma_t", "mma_pairs", 32, 1, 3, loads="tma"), arch=90)
    assert row["spill_bytes"] == 0 and row["ops"].get("UTMALDG") and not row["ops"].get("LDGSTS"), row


def _copies_and_policies(cache: str, evict: str) -> tuple[list[str], list[str]]:
    """The H200's shipped tile for `cache` with `evict`, compiled offline for sm_90: its PTX's asynchronous
    copies from global memory, and its L2 cache policies."""
    from lowprec_workloads.decode_attention_triton import TILES

    tile = replace(TILES["h200"][(cache, cache)], evict=evict)
    ptx = _sass_tool().compile_variant(cache, tile, arch=90).asm["ptx"].splitlines()
    return ([line for line in ptx if "cp.async." in line and "shared.global" in line],
            [line for line in ptx if "createpolicy" in line])


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["bf16", "fp8"])
@pytest.mark.parametrize("evict", ["first", "last"])
def test_an_eviction_priority_rides_on_every_asynchronous_copy_of_the_cache_or_on_none_for_hopper(kernel, cache, evict):
    """Offline for sm_90, with this machine's Triton: with Tile.evict "first" or "last" either every cp.async of
    the cache carries an L2 cache hint made by a policy of that priority (Triton 3.9), or the PTX makes no
    policy and no copy carries one (Triton 3.6 drops it from the pipelined loads), which evict_hint_kept reads
    and launch() then refuses. Never a hint on some copies only."""
    copies, policies = _copies_and_policies(cache, evict)
    assert copies
    if kernel.evict_hint_kept("\n".join(policies)):
        assert all("L2::cache_hint" in line for line in copies), copies
        assert all(f"L2::evict_{evict}" in line for line in policies), policies
    else:
        assert not any("L2::cache_hint" in line for line in copies), copies


def test_the_eviction_hint_is_kept_where_the_ptx_makes_a_policy(kernel):
    assert kernel.evict_hint_kept("createpolicy.fractional.L2::evict_first.b64 %rd14, 1.0;\ncp.async.cg.shared.global"
                                  ".L2::cache_hint [ %r36 + 0 ], [ %rd13 + 0 ], 0x10, %r38, %rd14;")
    assert not kernel.evict_hint_kept("cp.async.cg.shared.global [ %r32 + 0 ], [ %rd12 + 0 ], 0x10, %r34;")


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["bf16", "fp8"])
def test_the_normal_eviction_priority_puts_no_hint_on_the_caches_copies_for_hopper(cache):
    copies, policies = _copies_and_policies(cache, "normal")
    assert copies and not policies and not any("L2::cache_hint" in line for line in copies)
