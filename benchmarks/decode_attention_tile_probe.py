"""Which FP8 decode-attention tile keeps its speed wherever the suite's allocations put the cache (issue 26).

    PYTHONPATH=$PWD:$PWD/benchmarks python benchmarks/decode_attention_tile_probe.py OUT.json [--processes 3]
        [--only evict tma]                                    # only candidates whose label has one of these
    python benchmarks/decode_attention_tile_probe.py --smoke          # CPU, interpreter, tiny: the script's check

Why: on 2026-12-01 the variant sweep timed the shipped FP8 tile (mma_t/mma_pairs 32x1x2) at 0.561 ms on
the sweep's cache and at 0.496 ms on a copy of that cache, while two other tiles read the sweep's cache in
0.495-0.497 ms; in the suite's own allocations it took 0.52 ms. A tile the gate runs should be fast on
whatever pages the test's tensors land on, not on one lucky placement.

Each fresh process (the caching allocator as the suite runs it; the last process with expandable
segments) runs the suite's speed-test allocations (`make_inputs`, the BF16 and the FP8 cache, the
inputs freed) in rounds: [fp8]; [fp8k_nvfp4v] (the next test's caches, timed with the shipped tiles);
[fp8] again; [bf16], BF16 candidates (TMA loads) timed against the shipped BF16 tile, since a faster BF16
kernel would be the one the FP8 kernel is measured against. In an [fp8] round every candidate tile reads
the same cache and is timed against the shipped BF16 kernel as the gate times a pair (CUDA events, graph
replay, L2 flushed, warm-up, alternating pairs, medians); in each process's first round of a cache every
candidate is first checked against float64 attention over that cache (the suite's 1e-5 relative L2;
placement cannot change the values).
The last table gives each candidate's speedup in every round and its lowest and median; `*` marks the
tile the GPU's TILES entry ships. A benchmark: it prints and writes JSON, and asserts nothing.
"""

from __future__ import annotations

import os
import sys

if "--smoke" in sys.argv:  # the interpreter is chosen before triton is imported
    os.environ["TRITON_INTERPRET"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import asdict, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from decode_attention_variants import GATE_SHAPE, SMOKE_SHAPE, default_tile, make_timer, medians  # noqa: E402

from lowprec_workloads.decode_attention import attend_cache, build_cache, make_inputs  # noqa: E402
from lowprec_workloads.decode_attention_triton import DecodeWorkspace, Tile, launch  # noqa: E402
from pytest_lowprec.formats.metrics import rel_l2  # noqa: E402
from pytest_lowprec.hardware import gpu_key_from_name  # noqa: E402

if "--smoke" in sys.argv:
    from lowprec_workloads.interpreted import mend_interpreter_scalars  # noqa: E402

    mend_interpreter_scalars()

# The H200 sweep's fast FP8 tiles (2026-12-01: 0.495-0.515 ms on the sweep's cache; the 2-stage one first
# shipped, the 3-stage one since d659871) and its fastest CUDA-core tile, whose loads differ most.
CANDIDATES = {
    "mma_t/pairs 32x1x2 s16": Tile(qk="mma_t", pv="mma_pairs", block_n=32, warps=1, stages=2, per_sm=16),
    "mma/pairs 32x1x2 s16": Tile(qk="mma", pv="mma_pairs", block_n=32, warps=1, stages=2, per_sm=16),
    "mma_t/pairs 32x1x3 s16": Tile(qk="mma_t", pv="mma_pairs", block_n=32, warps=1, stages=3, per_sm=16),
    "mma/pairs 32x1x3 s32": Tile(qk="mma", pv="mma_pairs", block_n=32, warps=1, stages=3, per_sm=32),
    "mma/pairs 64x1x3 s32": Tile(qk="mma", pv="mma_pairs", block_n=64, warps=1, stages=3, per_sm=32),
    "mma_t/pairs 64x1x3 s32": Tile(qk="mma_t", pv="mma_pairs", block_n=64, warps=1, stages=3, per_sm=32),
    "fma/fma 64x8x3 s2": Tile(qk="fma", pv="fma", block_n=64, warps=8, stages=3, per_sm=2),
    # Deeper pipelines than the sweep's (it stops at 3 stages), added 2026-12-01 (seventh session).
    "mma_t/pairs 32x1x4 s16": Tile(qk="mma_t", pv="mma_pairs", block_n=32, warps=1, stages=4, per_sm=16),
    "mma_t/pairs 32x1x5 s16": Tile(qk="mma_t", pv="mma_pairs", block_n=32, warps=1, stages=5, per_sm=16),
    "mma_t/pairs 64x1x4 s16": Tile(qk="mma_t", pv="mma_pairs", block_n=64, warps=1, stages=4, per_sm=16),
    "mma_t/pairs 16x1x6 s16": Tile(qk="mma_t", pv="mma_pairs", block_n=16, warps=1, stages=6, per_sm=16),
    # The cache's tiles through Hopper's TMA (Tile.loads), added 2026-12-01 (ninth session).
    "tma mma_t/pairs 32x1x3 s16": Tile(qk="mma_t", pv="mma_pairs", block_n=32, warps=1, stages=3, per_sm=16,
                                       loads="tma"),
    "tma mma_t/pairs 32x1x4 s16": Tile(qk="mma_t", pv="mma_pairs", block_n=32, warps=1, stages=4, per_sm=16,
                                       loads="tma"),
    "tma mma_t/pairs 64x1x2 s16": Tile(qk="mma_t", pv="mma_pairs", block_n=64, warps=1, stages=2, per_sm=16,
                                       loads="tma"),
    "tma mma_t/pairs 64x1x3 s16": Tile(qk="mma_t", pv="mma_pairs", block_n=64, warps=1, stages=3, per_sm=16,
                                       loads="tma"),
    "tma mma_t/pairs 64x1x3 s32": Tile(qk="mma_t", pv="mma_pairs", block_n=64, warps=1, stages=3, per_sm=32,
                                       loads="tma"),
    "tma mma/pairs 32x1x3 s16": Tile(qk="mma", pv="mma_pairs", block_n=32, warps=1, stages=3, per_sm=16, loads="tma"),
    # The cache's loads asking the L2 to evict their lines first (Tile.evict), added 2026-12-01 (eleventh session).
    "evict mma_t/pairs 32x1x3 s16": Tile(qk="mma_t", pv="mma_pairs", block_n=32, warps=1, stages=3, per_sm=16,
                                         evict="first"),
    "evict mma_t/pairs 32x1x4 s16": Tile(qk="mma_t", pv="mma_pairs", block_n=32, warps=1, stages=4, per_sm=16,
                                         evict="first"),
    # The work cut into equal runs a program (Tile.schedule "balanced"), added 2026-12-02 (fifteenth session): the
    # tile shipped since, and its neighbours in benchmarks/decode_attention_speed.py's sweep.
    "balanced mma_t/pairs 32x1x4 b4": Tile(qk="mma_t", pv="mma_pairs", block_n=32, warps=1, stages=4, per_sm=4,
                                           schedule="balanced"),
    "balanced mma_t/pairs 32x1x3 b4": Tile(qk="mma_t", pv="mma_pairs", block_n=32, warps=1, stages=3, per_sm=4,
                                           schedule="balanced"),
    "balanced mma_t/pairs 32x1x3 b8": Tile(qk="mma_t", pv="mma_pairs", block_n=32, warps=1, stages=3, per_sm=8,
                                           schedule="balanced"),
}
# Split counts other than per_sm's power of two (launch's `splits`), added 2026-12-02 (twelfth session): the
# FP8 tile shipped until the fifteenth session makes 4096 programs in 16 splits, 3.10 waves of the 1320 an H200
# holds at once (10 an SM, ncu), and ncu flags the partial last wave; 5, 10 and 20 splits fill 0.97, 1.94 and
# 3.88 waves.
_SHIPPED_FP8 = Tile(qk="mma_t", pv="mma_pairs", block_n=32, warps=1, stages=3, per_sm=16)
for _count in (5, 10, 12, 15, 20, 24):
    CANDIDATES[f"mma_t/pairs 32x1x3 splits={_count}"] = _SHIPPED_FP8
# The [bf16] round's candidates: the BF16 kernel through TMA.
BF16_CANDIDATES = {
    "tma mma_t/mma_t 64x4x3 s8": Tile(qk="mma_t", pv="mma_t", block_n=64, warps=4, stages=3, per_sm=8, loads="tma"),
    "tma mma_t/mma_t 64x4x4 s8": Tile(qk="mma_t", pv="mma_t", block_n=64, warps=4, stages=4, per_sm=8, loads="tma"),
    "tma mma_t/mma_t 128x4x3 s8": Tile(qk="mma_t", pv="mma_t", block_n=128, warps=4, stages=3, per_sm=8, loads="tma"),
    "tma mma_t/pairs 32x1x3 s16": Tile(qk="mma_t", pv="mma_pairs", block_n=32, warps=1, stages=3, per_sm=16,
                                       loads="tma"),
    "evict mma_t/mma_t 64x4x3 s8": Tile(qk="mma_t", pv="mma_t", block_n=64, warps=4, stages=3, per_sm=8, evict="first"),
}
# The shipped BF16 tile's 8 splits make 2048 programs, 7.76 waves of the 264 an H200 holds at once (2 an SM).
for _count in (7, 9, 12):
    BF16_CANDIDATES[f"mma_t/mma_t 64x4x3 splits={_count}"] = Tile(qk="mma_t", pv="mma_t", block_n=64, warps=4,
                                                                   stages=3, per_sm=8)


def split_count(label: str) -> int | None:
    """The fixed split count a candidate's label asks for ("splits=N"), else None (the tile's per_sm)."""
    fixed = [word for word in label.split() if word.startswith("splits=")]
    return int(fixed[0].removeprefix("splits=")) if fixed else None
ROUNDS = ("fp8", "fp8k_nvfp4v", "fp8", "bf16")
MAX_REL_L2 = 1e-5
PAIRS = 60


def _gpu(smoke: bool) -> str:
    """The GPU key whose TILES the decode would run (the H200's for the CPU smoke run)."""
    return "h200" if smoke else gpu_key_from_name(torch.cuda.get_device_name())


def _is_shipped(label: str, tile: Tile, shipped: Tile) -> bool:
    """The same FP8 kernel at its own split count (an FP8 cache decodes no E2M1, so the decode named does
    not matter)."""
    return replace(tile, e2m1=shipped.e2m1) == shipped and split_count(label) is None


def run_round(name: str, smoke: bool, check: bool, only: list[str] | None = None) -> dict:
    shape = SMOKE_SHAPE if smoke else GATE_SHAPE
    device = "cpu" if smoke else "cuda"
    q, k, v = make_inputs(shape, device, seed=11, outlier_channels=4)
    bf16, low = build_cache(k, v, "bf16"), build_cache(k, v, name)
    del k, v
    bf16_tile, low_tile = default_tile(_gpu(smoke), "bf16", smoke), default_tile(_gpu(smoke), name, smoke)
    timer, pairs = make_timer(smoke), 2 if smoke else PAIRS
    # Each kernel its own workspace kept across calls, as the suite's speed tests keep them.
    on_bf16 = DecodeWorkspace()
    base = lambda: launch(q, bf16, tile=bf16_tile, workspace=on_bf16)[0]  # noqa: E731
    base()
    out = {"round": name, "tiles": {}}
    tiles = CANDIDATES if name == "fp8" else BF16_CANDIDATES if name == "bf16" else {"shipped": low_tile}
    if only and name in ("fp8", "bf16"):
        tiles = {label: tile for label, tile in tiles.items()
                 if any(text in label for text in only) or (name == "fp8" and _is_shipped(label, tile, low_tile))}
    reference = attend_cache(q, low) if check else None
    for label, tile in tiles.items():
        if smoke and tile.e2m1 != "bitwise":
            tile = replace(tile, e2m1="bitwise")
        workspace, splits = DecodeWorkspace(), split_count(label)
        run = lambda t=tile, w=workspace, n=splits: launch(q, low, n, tile=t, workspace=w)[0]  # noqa: E731
        try:
            first = run()
        except RuntimeError as exc:  # a tile this Triton cannot build as asked (an eviction hint it drops)
            out["tiles"][label] = {"tile": asdict(tile), "refused": str(exc)}
            continue
        err = rel_l2(reference, first) if check else None
        if err is not None and err > MAX_REL_L2:
            out["tiles"][label] = {"tile": asdict(tile), "rel_l2": err, "wrong": True}
            continue
        bf16_ms, low_ms = medians(timer, base, run, pairs)
        out["tiles"][label] = {"tile": asdict(tile), "rel_l2": err, "bf16_ms": bf16_ms, "low_ms": low_ms,
                               "speedup": bf16_ms / low_ms}
    return out


def child_main(args) -> int:
    rounds = [run_round(name, args.smoke, check=name not in ROUNDS[:i], only=args.only)
              for i, name in enumerate(ROUNDS)]
    Path(args.child_out).write_text(json.dumps(rounds))
    return 0


def run_processes(count: int, smoke: bool, only: list[str] | None = None) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(count + 1):
            allocator = "expandable_segments" if i == count else "default"
            env = {k: v for k, v in os.environ.items() if k != "PYTORCH_CUDA_ALLOC_CONF"}
            if allocator == "expandable_segments":
                env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
            out = Path(tmp) / f"p{i}.json"
            cmd = [sys.executable, __file__, "--child-out", str(out)] + (["--smoke"] if smoke else []) \
                + (["--only", *only] if only else [])
            try:
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            except subprocess.TimeoutExpired as exc:
                results.append({"process": i, "allocator": allocator, "error": f"timed out after {exc.timeout} s"})
                continue
            if done.returncode:
                results.append({"process": i, "allocator": allocator, "error": done.stderr[-3000:]})
                continue
            results.append({"process": i, "allocator": allocator, "rounds": json.loads(out.read_text())})
            print(f"process {i} ({allocator}) done", flush=True)
    return results


def report(results: list[dict], shipped: Tile) -> None:
    print(f"\n{'process':<24} {'round':<12} {'tile':<32} {'bf16 ms':>8} {'low ms':>8} {'speedup':>8}")
    per_tile: dict[str, list[float]] = {}
    for proc in results:
        if "error" in proc:
            print(f"process {proc['process']} failed:\n{proc['error']}")
            continue
        where = f"{proc['process']} {proc['allocator']}"
        for i, rnd in enumerate(proc["rounds"]):
            for label, row in rnd["tiles"].items():
                if row.get("refused"):
                    print(f"{where:<24} {rnd['round']:<12} {label:<32} REFUSED {row['refused'][:90]}")
                    continue
                if row.get("wrong"):
                    print(f"{where:<24} {rnd['round']:<12} {label:<32} WRONG rel_l2 {row['rel_l2']:.2g}")
                    continue
                mark = "*" if rnd["round"] == "fp8" and _is_shipped(label, Tile(**row["tile"]), shipped) else ""
                print(f"{where:<24} {rnd['round'] + f'#{i}':<12} {label + mark:<32} {row['bf16_ms']:8.3f} "
                      f"{row['low_ms']:8.3f} {row['speedup']:7.3f}x")
                if rnd["round"] in ("fp8", "bf16") and proc["allocator"] == "default":
                    per_tile.setdefault(f"{rnd['round']} {label}", []).append(row["speedup"])
    print("\nFP8 over BF16 ([fp8] rounds), and BF16 candidates over the shipped BF16 tile ([bf16] rounds), the suite's "
          "allocations (default allocator):")
    print(f"{'tile':<37} {'rounds':>6} {'lowest':>8} {'median':>8} {'highest':>8}")
    for key, values in sorted(per_tile.items(), key=lambda kv: (kv[0].split()[0], -statistics.median(kv[1]))):
        cache, label = key.split(" ", 1)
        mark = "*" if cache == "fp8" and _is_shipped(label, CANDIDATES[label], shipped) else ""
        print(f"{key + mark:<37} {len(values):6d} {min(values):7.3f}x {statistics.median(values):7.3f}x "
              f"{max(values):7.3f}x")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("json_out", nargs="?", type=Path)
    parser.add_argument("--processes", type=int, default=3, help="fresh processes with the default allocator")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--child-out")
    parser.add_argument("--only", nargs="+", metavar="TEXT",
                        help="only the candidates whose label contains one of these (the shipped FP8 tile always runs)")
    args = parser.parse_args()
    if args.child_out:
        return child_main(args)
    results = run_processes(1 if args.smoke else args.processes, args.smoke, args.only)
    shipped = default_tile(_gpu(args.smoke), "fp8", args.smoke)
    report(results, shipped)
    if args.json_out:
        device = {"name": "cpu"} if args.smoke else {
            "name": torch.cuda.get_device_name(), "uuid": str(torch.cuda.get_device_properties(0).uuid)}
        args.json_out.write_text(json.dumps({"device": device, "torch": torch.__version__,
                                             "shipped_fp8_tile": asdict(shipped), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
