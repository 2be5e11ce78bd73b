"""Decode attention's kernel variants on one GPU, in one command: which tile to fix per cache, and why the
BF16 kernel's time depends on what ran before it in a process.

    PYTHONPATH=$PWD:$PWD/benchmarks python benchmarks/decode_attention_variants.py OUT.json [--budget-s 135]

Batch 8, 32 heads, head_dim 128, 32K tokens, one query token per sequence (the suite's speed shape).
In order, each phase bounded by `--budget-s` (what is left unmeasured is listed as skipped):

1. compile: worker processes (one per spare core) compile every variant (`variants()`: q.k and p.v on
   CUDA cores or tensor cores, E2M1 decodes, BLOCK_N x warps x stages) by running it once on a tiny cache,
   checked against float64 attention; meanwhile
2. history probes, each in a fresh process that runs the suite's speed tests' allocations and kernels
   (the default tiles): the speed-only order ([fp8] then [fp8k_nvfp4v] in one process), the reverse
   order, then [fp8k_nvfp4v] again after torch.cuda.empty_cache(), and the first order with the caching
   allocator's expandable segments. Each round prints the BF16 and low-precision kernel times, the time of
   a plain reduction over the BF16 K and V, and where the caches sit (data_ptr mod 2 MiB, offset in its
   allocator segment).
3. sweep: every compiled variant over the 32K caches at its own and two more split counts (about 16 and 32
   warps' worth of programs per SM), checked against float64
   attention over its cache (relative L2 under 1e-5, the suite's bound) and timed with CUDA events
   (graph replay, L2 flushed, warm-up, median of 30 pairs alternating with a 1 GiB device copy, which
   gives the copy ceiling beside each kernel). Every row reports its registers, spills, TB/s and
   fraction of the copy ceiling.
4. splits: the fastest variant per cache at 2..32 splits (`--split-counts` picks others: the kernel takes
   any count, and a count that fills the GPU's resident programs in whole waves may beat a power of two).
5. placement: the BF16 and FP8 caches copied into one pool at chosen offsets (K and V adjacent, V 1 MiB
   further, both shifted by 64 KiB or 512 B, V before K), each timed with the default and the fastest
   kernel: whether where the cache lies sets the time.

The last table names, per cache, the fastest correct variant, its time, bandwidth, fraction of the copy
ceiling and speedups (FP8 / BF16, FP8-K NVFP4-V / BF16, NVFP4 V / FP8 V, best against best and default
against default), and prints the `TILES` entry to commit for this GPU. `--smoke` runs every phase on the
CPU under Triton's interpreter at a tiny size (no timing that means anything): a check of the script.
A benchmark: it prints tables, writes JSON and asserts nothing.
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
import time  # noqa: E402
from dataclasses import asdict, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from lowprec_workloads.allocator import segment_of  # noqa: E402
from lowprec_workloads.decode_attention import CACHES, Cache, DecodeShape, attend_cache, build_cache, make_inputs  # noqa: E402
from lowprec_workloads.decode_attention_triton import (  # noqa: E402
    DEFAULT_GPU,
    TILES,
    DecodeWorkspace,
    Tile,
    launch,
    num_splits,
    tile_for,
)
from lowprec_workloads.kv_compression import StoredKV  # noqa: E402
from pytest_lowprec.formats.metrics import rel_l2  # noqa: E402
from pytest_lowprec.hardware import gpu_key_from_name, probe_cuda  # noqa: E402
from pytest_lowprec.timing import CudaEventTimer, _StableWarmup  # noqa: E402

if "--smoke" in sys.argv:
    from lowprec_workloads.interpreted import mend_interpreter_scalars  # noqa: E402

    mend_interpreter_scalars()

GATE_SHAPE = DecodeShape(batch=8, heads=32, seq=32768, head_dim=128)
SMOKE_SHAPE = DecodeShape(batch=1, heads=2, seq=512, head_dim=128)
TINY_SHAPE = DecodeShape(batch=1, heads=2, seq=512, head_dim=128)  # the compile workers' check
MAX_REL_L2 = 1e-5  # the suite's bound on a kernel against float64 attention over its own cache
MiB = 2**20
PROBE_ORDERS = [("default", ["fp8", "fp8k_nvfp4v", "empty_cache:fp8k_nvfp4v"]), ("default", ["fp8k_nvfp4v", "fp8"]),
                ("expandable_segments", ["fp8", "fp8k_nvfp4v"])]


def variants() -> dict[str, list[Tile]]:
    """Per cache, the tiles to compile and time. Picked from the loop instruction counts of
    `benchmarks/decode_attention_sass.py` (Triton 3.6, sm_90, warp-instructions per token and head): the
    tensor-core pair path issues 19-20 (BF16, FP8) and 26-28 (FP8-K NVFP4-V, with the first lut decode,
    which read the wrong bytes) against 38-45, 30-36 and 37-44 on CUDA cores. Offline on 2026-12-01, at
    the 1-warp tiles of 32-64 tokens and 2-3 stages: 28.6-29.8 with the integer-op E2M1 decode and
    28.7-30.3 with the fixed lut under Triton 3.9, 32.5 with either at 32x1x3 under Triton 3.6. One warp
    a program is its leanest (two split the tokens across warps and reduce through shared memory). None
    spills. Later that day the scores became a vector before the softmax and the integer decode's block
    scale one multiply in PTX: at 32x1x3 under Triton 3.6, 28.1 for FP8-K NVFP4-V and 18.0 for FP8
    (from 32.5 and 20.1); the lut decode, 7% slower on an H200, keeps two tiles for reference."""
    pairs = [(64, 1, s) for s in (1, 2, 3)] + [(32, 1, s) for s in (1, 2, 3)] + [(128, 1, 3), (64, 2, 2)]
    out = {
        "bf16": [Tile("fma", "fma", *t) for t in [(64, 8, 2), (128, 4, 2), (64, 4, 2), (128, 8, 2), (64, 8, 3)]]
        + [Tile("mma_t", "mma_t", *t) for t in [(64, 4, 2), (64, 4, 3), (128, 4, 2), (128, 8, 2)]]
        + [Tile("mma_t", "mma_pairs", *t) for t in pairs]
        + [Tile("mma", "mma_pairs", *t) for t in [(64, 1, 2), (32, 1, 2), (32, 1, 3)]],
        "fp8": [Tile("fma", "fma", *t) for t in [(128, 4, 2), (64, 4, 2), (64, 8, 3), (128, 8, 2), (64, 8, 2)]]
        + [Tile("mma_t", "mma_pairs", *t) for t in pairs]
        + [Tile("mma", "mma_pairs", *t) for t in [(64, 1, 2), (64, 1, 3), (32, 1, 2), (32, 1, 3)]]
        + [Tile("mma_t", "mma_t", 64, 4, 2), Tile("mma_t", "fma", 128, 4, 2)],
        "fp8k_nvfp4v": [Tile("fma", "fma", *t) for t in [(64, 4, 2), (128, 4, 2), (64, 8, 2), (32, 4, 2), (64, 4, 3)]]
        + [Tile("fma", "fma", 64, 4, 2, e2m1="bitwise")]
        + [Tile("mma_t", "mma_pairs", *t) for t in pairs]
        + [Tile("mma", "mma_pairs", *t) for t in [(64, 1, 2), (64, 1, 3), (32, 1, 2), (32, 1, 3)]]
        + [Tile("mma_t", "mma_pairs", *t, e2m1="lut") for t in [(64, 1, 2), (32, 1, 3)]]
        + [Tile("mma_t", "fma", *t) for t in [(128, 4, 2), (64, 4, 2)]] + [Tile("mma", "fma", 128, 4, 2)]
        + [Tile("mma", "mma", 128, 4, 2), Tile("mma_t", "mma_t", 128, 4, 2)],
    }
    return out


def splits_for(tile: Tile, shape: DecodeShape, sm_count: int) -> list[int]:
    """The tile's own split count and those of about 16 and 32 warps' worth of programs per SM."""
    bh = shape.batch * shape.heads
    per_sm = {tile.per_sm} | {max(1, w // tile.warps) for w in (16, 32)}
    return sorted({num_splits(bh, shape.seq, sm_count, p) for p in per_sm})


def per_sm_for(splits: int, shape: DecodeShape, sm_count: int) -> int | None:
    """The smallest Tile.per_sm that gives `splits` at `shape` (None if none does)."""
    bh = shape.batch * shape.heads
    return next((p for p in range(1, 257) if num_splits(bh, shape.seq, sm_count, p) == splits), None)


def _tile(d: dict) -> Tile:
    return Tile(**{k: d[k] for k in ("qk", "pv", "block_n", "warps", "stages", "per_sm", "e2m1")})


# -- 1. compile workers ------------------------------------------------------------------------------------
def worker_main(args) -> int:
    """Compile (run once, tiny) the variants assigned to this worker; check each against float64."""
    device = "cpu" if args.smoke else "cuda"
    jobs = json.loads(Path(args.worker_in).read_text())
    q, k, v = make_inputs(TINY_SHAPE, device, seed=5, outlier_channels=4)
    caches = {name: build_cache(k, v, name) for name in CACHES}
    references = {name: attend_cache(q, c) for name, c in caches.items()}
    results = []
    for job in jobs:
        tile, cache = _tile(job["tile"]), job["cache"]
        start = time.perf_counter()
        try:
            for splits in job["splits"]:  # the kernel (its merge) is specialized per power-of-two split count
                out = launch(q, caches[cache], splits=splits, tile=tile)[0]
            error = float(rel_l2(references[cache], out))
            results.append({**job, "ok": True, "tiny_rel_l2": error, "compile_s": time.perf_counter() - start})
        except Exception as exc:  # a variant Triton cannot compile is reported; the others still run
            results.append({**job, "ok": False, "error": f"{type(exc).__name__}: {str(exc).strip()[-300:]}",
                            "compile_s": time.perf_counter() - start})
        Path(args.worker_out).write_text(json.dumps(results))
    return 0


def start_workers(jobs: list[dict], count: int, tmp: Path, smoke: bool) -> list[tuple[subprocess.Popen, Path]]:
    procs = []
    for i in range(count):
        mine = jobs[i::count]
        if not mine:
            continue
        job_in, job_out = tmp / f"worker{i}.in.json", tmp / f"worker{i}.out.json"
        job_in.write_text(json.dumps(mine))
        cmd = [sys.executable, __file__, "--worker-in", str(job_in), "--worker-out", str(job_out)] + (
            ["--smoke"] if smoke else [])
        procs.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), job_out))
    return procs


def collect_workers(procs, deadline: float) -> list[dict]:
    results = []
    for proc, job_out in procs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            proc.kill()  # this worker's unfinished variants stay uncompiled and are reported as skipped
            proc.wait()
        stderr = proc.stderr.read() if proc.stderr else ""
        if proc.returncode not in (0, None) and "Traceback" in stderr:
            print(f"compile worker exited {proc.returncode}: {stderr.strip().splitlines()[-1][:200]}")
        if job_out.exists():
            results += json.loads(job_out.read_text())
    return results


# -- 2. history probes (fresh processes) --------------------------------------------------------------------
def placement(t: torch.Tensor, snapshot: list[dict] | None) -> dict:
    ptr = t.data_ptr()
    where = {"ptr": hex(ptr), "ptr_mod_2MiB": ptr % (2 * MiB)}
    seg = segment_of(ptr, snapshot) if snapshot is not None else None
    if seg is not None:
        where.update(segment_bytes=seg["total_size"], offset=ptr - seg["address"])
    return where


class _SmokeTimer:
    """Host time around each call, no warm-up: the smoke run checks the script, not the kernels."""

    def warmup(self, a, b) -> None:
        pass

    def pairs(self, a, b, n: int) -> list[tuple[float, float]]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            a()
            t1 = time.perf_counter()
            b()
            out.append(((t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3))
        return out


def make_timer(smoke: bool, warmup_s: float = 3.0):
    """The gate's timer (CUDA events, graph replay, L2 flushed); its warm-up stops once both sides' medians
    hold within 5% between rounds, or after `warmup_s`."""
    if smoke:
        return _SmokeTimer()
    device = probe_cuda()
    return CudaEventTimer(device.index, l2_bytes=device.l2_bytes, uuid=device.uuid, graphs=True,
                          warmup=_StableWarmup(max_s=warmup_s))


def medians(timer, a, b, n: int) -> tuple[float, float]:
    """Median ms of a and of b over n pairs (a b, b a, ...), after the timer's warm-up."""
    timer.warmup(a, b)
    pairs = timer.pairs(a, b, n)
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def probe_round(step: str, smoke: bool) -> dict:
    """One of the suite's speed tests: its inputs, its two caches, both kernels timed as the gate times
    them; the tensors are freed on return, as at the end of a test."""
    shape = SMOKE_SHAPE if smoke else GATE_SHAPE
    name = step.split(":")[-1]
    if step.startswith("empty_cache:") and not smoke:
        torch.cuda.empty_cache()
    q, k, v = make_inputs(shape, "cpu" if smoke else "cuda", seed=11, outlier_channels=4)
    bf16, low = build_cache(k, v, "bf16"), build_cache(k, v, name)
    del k, v
    # Each side its own workspace kept across calls, as the suite's speed tests keep them.
    on_bf16, on_low = DecodeWorkspace(), DecodeWorkspace()
    launch(q, bf16, workspace=on_bf16), launch(q, low, workspace=on_low)  # compile or load both before timing
    timer, pairs = make_timer(smoke), 2 if smoke else 60
    bf16_ms, low_ms = medians(timer, lambda: launch(q, bf16, workspace=on_bf16)[0],
                              lambda: launch(q, low, workspace=on_low)[0], pairs)
    # The same bytes read by a plain reduction, no attention kernel: slower too means where they lie.
    read_k_ms, read_v_ms = medians(timer, lambda: torch.sum(bf16.k.data, dtype=torch.float32),
                                   lambda: torch.sum(bf16.v.data, dtype=torch.float32), pairs // 2)
    snapshot = None if smoke else torch.cuda.memory_snapshot()
    low_v = low.v.data.packed if low.v.fmt == "nvfp4" else low.v.data
    return {"round": step, "bf16_ms": bf16_ms, "low_ms": low_ms, "speedup": bf16_ms / low_ms,
            "sum_bf16_k_ms": read_k_ms, "sum_bf16_v_ms": read_v_ms,
            "bf16_k": placement(bf16.k.data, snapshot), "bf16_v": placement(bf16.v.data, snapshot),
            "low_k": placement(low.k.data, snapshot), "low_v": placement(low_v, snapshot),
            "tiles": {"bf16": asdict(_default_tile(q, bf16)), name: asdict(_default_tile(q, low))}}


def probe_main(args) -> int:
    """The suite's speed tests' allocations and kernels, round after round in this one process."""
    rounds = [probe_round(step, args.smoke) for step in args.probe.split(",")]
    Path(args.probe_out).write_text(json.dumps(rounds))
    return 0


def _default_tile(q: torch.Tensor, cache: Cache) -> Tile:
    gpu = gpu_key_from_name(torch.cuda.get_device_name(q.device)) if q.is_cuda else DEFAULT_GPU
    return tile_for(gpu, cache.k.fmt, cache.v.fmt)


def run_probes(smoke: bool, tmp: Path, deadline: float) -> list[dict]:
    out = []
    for i, (allocator, order) in enumerate(PROBE_ORDERS):
        if time.perf_counter() > deadline:
            out.append({"allocator": allocator, "order": order, "skipped": "budget"})
            continue
        result = tmp / f"probe{i}.json"
        env = dict(os.environ)
        if allocator == "expandable_segments":
            env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
        cmd = [sys.executable, __file__, "--probe", ",".join(order), "--probe-out", str(result)] + (
            ["--smoke"] if smoke else [])
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                  timeout=max(5.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            out.append({"allocator": allocator, "order": order, "skipped": "timed out"})
            continue
        if done.returncode != 0 or not result.exists():
            out.append({"allocator": allocator, "order": order, "error": (done.stderr or done.stdout)[-600:]})
            continue
        out.append({"allocator": allocator, "order": order, "rounds": json.loads(result.read_text())})
    return out


# -- 3.-5. sweep, splits and placement in this process ----------------------------------------------------
class Bench:
    """The 32K caches, their float64 references, the copy ceiling and the timer."""

    def __init__(self, smoke: bool):
        self.smoke = smoke
        self.shape = SMOKE_SHAPE if smoke else GATE_SHAPE
        self.device = "cpu" if smoke else "cuda"
        self.sm_count = 1 if smoke else torch.cuda.get_device_properties(0).multi_processor_count
        self.q, k, v = make_inputs(self.shape, self.device, seed=11, outlier_channels=4)
        self.caches = {name: build_cache(k, v, name) for name in CACHES}
        del k, v
        self.references = {name: attend_cache(self.q, c) for name, c in self.caches.items()}
        self.timer = make_timer(smoke, warmup_s=0.5)  # ~150 rows: a row that will not settle costs 0.5 s
        self.pairs = 2 if smoke else 30
        elements = 2**20 if smoke else 2**29
        self.src = torch.empty(elements, dtype=torch.int16, device=self.device)
        self.dst = torch.empty_like(self.src)

    def copy(self):
        self.dst.copy_(self.src)

    def measure(self, name: str, cache: Cache, tile: Tile | None, splits: int | None) -> dict:
        """One variant over `cache`: its error against float64, then (if correct) its median time beside
        the copy's, its bandwidth and the fraction of the copy ceiling it reaches."""
        workspace = DecodeWorkspace()
        out, kernel = launch(self.q, cache, splits=splits, tile=tile, workspace=workspace)
        row = {"rel_l2": float(rel_l2(self.references[name], out))}
        if kernel is not None:
            row.update(regs=kernel.n_regs, spills=kernel.n_spills, smem=kernel.metadata.shared)
        if not row["rel_l2"] <= MAX_REL_L2:
            row["wrong"] = True
            return row
        copy_ms, ms = medians(self.timer, self.copy,
                              lambda: launch(self.q, cache, splits=splits, tile=tile, workspace=workspace)[0],
                              self.pairs)
        copy_tbps = 2 * self.src.numel() * self.src.element_size() / (copy_ms * 1e-3) / 1e12
        tbps = cache.nbytes / (ms * 1e-3) / 1e12
        row.update(ms=ms, tbps=tbps, copy_tbps=copy_tbps, of_copy=tbps / copy_tbps)
        return row


def sweep(bench: Bench, compiled: list[dict], deadline: float) -> list[dict]:
    rows = []
    for job in compiled:
        name, tile = job["cache"], _tile(job["tile"])
        for splits in job["splits"]:
            base = {"cache": name, "tile": asdict(tile), "splits": splits, "tiny_rel_l2": job.get("tiny_rel_l2")}
            if time.perf_counter() > deadline:
                rows.append({**base, "skipped": "budget"})
                continue
            try:
                rows.append({**base, **bench.measure(name, bench.caches[name], tile, splits)})
            except Exception as exc:  # e.g. out of shared memory at this size: reported, the sweep goes on
                rows.append({**base, "error": f"{type(exc).__name__}: {str(exc).strip()[-200:]}"})
    return rows


def fastest(rows: list[dict], name: str) -> dict | None:
    timed = [r for r in rows if r["cache"] == name and r.get("ms") is not None]
    return min(timed, key=lambda r: r["ms"]) if timed else None


def split_sweep(bench: Bench, rows: list[dict], deadline: float, counts=(2, 4, 8, 16, 32)) -> list[dict]:
    out = []
    for name in CACHES:
        best = fastest(rows, name)
        if best is None:
            continue
        tile = _tile(best["tile"])
        for splits in counts:
            base = {"cache": name, "tile": best["tile"], "splits": splits}
            if time.perf_counter() > deadline:
                out.append({**base, "skipped": "budget"})
                continue
            try:
                out.append({**base, **bench.measure(name, bench.caches[name], tile, splits)})
            except Exception as exc:
                out.append({**base, "error": f"{type(exc).__name__}: {str(exc).strip()[-200:]}"})
    return out


def _view(pool: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    nbytes = like.numel() * like.element_size()
    return pool[offset:offset + nbytes].view(like.dtype).view(like.shape)


def placement_probe(bench: Bench, rows: list[dict], deadline: float) -> list[dict]:
    """Copies of the BF16 and FP8 caches at chosen offsets in one pool, each timed with the default
    and the fastest kernel: does the caches' placement set the time?"""
    out = []
    for name in ("bf16", "fp8"):
        cache = bench.caches[name]
        k, v = cache.k.data, cache.v.data
        kb = k.numel() * k.element_size()
        layouts = {"K then V, adjacent": (0, kb), "V 1 MiB further": (0, kb + MiB),
                   "both +64 KiB": (64 * 1024, kb + 64 * 1024), "both +512 B": (512, kb + 512), "V then K": (kb, 0)}
        pool = torch.empty(2 * kb + 4 * MiB, dtype=torch.uint8, device=bench.device)
        best = fastest(rows, name)
        kernels = {"default": None}
        if best is not None:
            kernels["fastest"] = (_tile(best["tile"]), best["splits"])
        for label, (k_off, v_off) in [("as allocated", (None, None))] + list(layouts.items()):
            if k_off is None:
                placed = cache
            else:
                kv, vv = _view(pool, k_off, k), _view(pool, v_off, v)
                kv.copy_(k)
                vv.copy_(v)
                placed = Cache(StoredKV(name, kv, cache.k.scales), StoredKV(name, vv, cache.v.scales))
            for which, spec in kernels.items():
                base = {"cache": name, "layout": label, "kernel": which,
                        "k_mod_2MiB": placed.k.data.data_ptr() % (2 * MiB),
                        "v_minus_k": placed.v.data.data_ptr() - placed.k.data.data_ptr()}
                if time.perf_counter() > deadline:
                    out.append({**base, "skipped": "budget"})
                    continue
                tile, splits = spec if spec else (None, None)
                try:
                    out.append({**base, **bench.measure(name, placed, tile, splits)})
                except Exception as exc:
                    out.append({**base, "error": f"{type(exc).__name__}: {str(exc).strip()[-200:]}"})
        del pool
    return out


# -- report ---------------------------------------------------------------------------------------------
def _same_kernel(a: Tile, b: Tile) -> bool:
    """The same compiled kernel (the split count aside)."""
    return replace(a, per_sm=1) == replace(b, per_sm=1)


def _tile_text(t: dict) -> str:
    return f"{t['qk']}/{t['pv']} {t['block_n']}x{t['warps']}x{t['stages']} {t['e2m1']}"


def print_report(result: dict) -> None:
    print("\n== compile (tiny cache, float64 check) ==")
    for job in result["compiled"]:
        if not job["ok"]:
            print(f"{job['cache']:12} {_tile_text(job['tile']):32} FAILED {job['error'][:110]}")
    print(f"{sum(j['ok'] for j in result['compiled'])} of {len(result['compiled'])} compiled; "
          f"not compiled in time: {result['uncompiled']}")
    print("\n== history probes (fresh processes, the suite's kernels and allocations) ==")
    print(f"{'allocator':20} {'round':26} {'bf16 ms':>8} {'low ms':>8} {'speedup':>8} {'sum K/V ms':>13}  "
          "BF16 K/V: mod 2 MiB, segment offset")
    for probe in result["probes"]:
        if "rounds" not in probe:
            print(f"{probe['allocator']:20} {','.join(probe['order']):26} {probe.get('skipped') or probe.get('error')}")
            continue
        for r in probe["rounds"]:
            k, v = r["bf16_k"], r["bf16_v"]
            print(f"{probe['allocator']:20} {r['round']:26} {r['bf16_ms']:8.3f} {r['low_ms']:8.3f} "
                  f"{r['speedup']:7.3f}x {r['sum_bf16_k_ms']:6.3f}/{r['sum_bf16_v_ms']:6.3f}  "
                  f"{k['ptr_mod_2MiB']}/{v['ptr_mod_2MiB']}, {k.get('offset')}/{v.get('offset')}")
    print("\n== placement (copies of the cache in one pool) ==")
    for r in result["placement"]:
        state = f"{r['ms']:.3f} ms {r['of_copy']:.2f} of copy" if r.get("ms") else r.get("skipped") or r.get("error")
        print(f"{r['cache']:5} {r['kernel']:8} {r['layout']:20} K mod 2 MiB {r['k_mod_2MiB']:8} "
              f"V-K {r['v_minus_k'] / MiB:10.3f} MiB  {state}")
    print("\n== split counts, fastest variant per cache ==")
    for r in result["splits"]:
        state = f"{r['ms']:.3f} ms {r['of_copy']:.2f} of copy" if r.get("ms") else r.get("skipped") or r.get("error")
        print(f"{r['cache']:12} {_tile_text(r['tile']):32} splits {r['splits']:3}  {state}")
    print("\n== sweep (32K tokens; ms median of 30 pairs beside a 1 GiB copy) ==")
    print(f"{'cache':12} {'variant':32} {'splits':>6} {'regs':>4} {'spill':>5} {'ms':>7} {'TB/s':>5} "
          f"{'of copy':>7} {'rel_l2':>8}")
    for r in result["sweep"]:
        head = f"{r['cache']:12} {_tile_text(r['tile']):32} {r['splits']:6}"
        if r.get("ms") is not None:
            print(f"{head} {r.get('regs', '-'):>4} {r.get('spills', '-'):>5} {r['ms']:7.3f} {r['tbps']:5.2f} "
                  f"{r['of_copy']:7.2f} {r['rel_l2']:8.1e}")
        else:
            state = r.get("skipped") or r.get("error") or "WRONG rel_l2 {:.1e}".format(r["rel_l2"])
            print(f"{head} {state}")
    summary = result["summary"]
    if summary is None:
        return
    print("\n== summary: fastest correct variant per cache (and the default tile) ==")
    print(f"{'cache':12} {'variant':32} {'splits':>6} {'per_sm':>6} {'ms':>7} {'TB/s':>5} {'of copy':>7} "
          f"{'default ms':>10}")
    for name, s in summary["best"].items():
        d = summary["default"].get(name) or {}
        print(f"{name:12} {_tile_text(s['tile']):32} {s['splits']:6} {str(s['per_sm']):>6} {s['ms']:7.3f} "
              f"{s['tbps']:5.2f} {s['of_copy']:7.2f} {d.get('ms', float('nan')):10.3f}")
    for label, value in summary["speedups"].items():
        print(f"{label:52} {value:6.3f}x" if value else f"{label:52}  n/a")
    print(f"\nTILES[{summary['gpu']!r}] = {summary['tiles_literal']}")


def default_tile(gpu: str, name: str, smoke: bool) -> Tile:
    """The tile decode_attention runs for `name` on this GPU (under the interpreter, bitwise)."""
    tile = tile_for(gpu, *CACHES[name])
    return replace(tile, e2m1="bitwise") if smoke else tile


def summarize(result: dict, bench: Bench, gpu: str) -> dict:
    rows = result["sweep"] + [r for r in result["splits"] if r.get("ms")]
    best = {name: fastest(rows, name) for name in CACHES}
    defaults = {}
    for name in CACHES:
        tile = default_tile(gpu, name, bench.smoke)
        splits = num_splits(bench.shape.batch * bench.shape.heads, bench.shape.seq, bench.sm_count, tile.per_sm)
        match = [r for r in rows if r["cache"] == name and r.get("ms") and r["splits"] == splits
                 and _same_kernel(_tile(r["tile"]), tile)]
        defaults[name] = min(match, key=lambda r: r["ms"]) if match else None

    def ratio(a, b):
        return a["ms"] / b["ms"] if a and b else None

    out_best = {}
    entries = []
    for name, row in best.items():
        if row is None:
            continue
        per_sm = per_sm_for(row["splits"], bench.shape, bench.sm_count)
        out_best[name] = {**row, "per_sm": per_sm}
        t = {**row["tile"], "per_sm": per_sm or row["tile"]["per_sm"]}
        args = ", ".join(f"{k}={t[k]!r}" for k in ("qk", "pv", "block_n", "warps", "stages", "per_sm", "e2m1"))
        entries.append(f"{CACHES[name]!r}: Tile({args})")
    speedups = {
        "FP8 / BF16 (fastest each)": ratio(best["bf16"], best["fp8"]),
        "FP8-K NVFP4-V / BF16 (fastest each)": ratio(best["bf16"], best["fp8k_nvfp4v"]),
        "NVFP4 V / FP8 V (fastest each)": ratio(best["fp8"], best["fp8k_nvfp4v"]),
        "FP8 / BF16 (default tiles)": ratio(defaults["bf16"], defaults["fp8"]),
        "FP8-K NVFP4-V / BF16 (default tiles)": ratio(defaults["bf16"], defaults["fp8k_nvfp4v"]),
        "NVFP4 V / FP8 V (default tiles)": ratio(defaults["fp8"], defaults["fp8k_nvfp4v"]),
    }
    return {"gpu": gpu, "best": out_best, "default": defaults, "speedups": speedups,
            "tiles_literal": "{" + ", ".join(entries) + "}"}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("json_out", nargs="?", type=Path)
    parser.add_argument("--budget-s", type=float, default=135.0)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--limit", type=int, default=None, help="only the first N variants per cache")
    parser.add_argument("--split-counts", default="2,4,8,16,32",
                        help="the split counts of phase 4 (any count the kernel takes, not only powers of two)")
    parser.add_argument("--worker-in")
    parser.add_argument("--worker-out")
    parser.add_argument("--probe")
    parser.add_argument("--probe-out")
    args = parser.parse_args()
    if args.worker_in:
        return worker_main(args)
    if args.probe:
        return probe_main(args)
    if args.json_out is None:
        parser.error("give the JSON output path")
    start = time.perf_counter()
    budget_end = start + args.budget_s
    if not args.smoke and probe_cuda() is None:
        print("needs a CUDA device (or --smoke for the CPU check)")
        return 1
    gpu = DEFAULT_GPU if args.smoke else gpu_key_from_name(torch.cuda.get_device_name(0))
    shape = SMOKE_SHAPE if args.smoke else GATE_SHAPE
    sm_count = 1 if args.smoke else torch.cuda.get_device_properties(0).multi_processor_count
    jobs = []
    for name, tiles in variants().items():
        for tile in tiles[:args.limit]:
            if args.smoke:
                tile = replace(tile, e2m1="bitwise") if tile.e2m1 != "lut" else tile
            jobs.append({"cache": name, "tile": asdict(tile), "splits": splits_for(tile, shape, sm_count)})
    workers = args.workers or max(1, min(len(jobs), (os.cpu_count() or 2) - 2))
    print(f"{len(jobs)} variants, {workers} compile workers, budget {args.budget_s:.0f} s, GPU key {gpu!r}")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        procs = start_workers(jobs, workers, tmp, args.smoke)
        # The probes time the GPU while the workers only compile: the GPU is theirs alone.
        probes = run_probes(args.smoke, tmp, start + 0.45 * args.budget_s)
        print(f"probes done at {time.perf_counter() - start:.0f} s")
        bench = Bench(args.smoke)
        compiled = collect_workers(procs, start + 0.55 * args.budget_s)
    print(f"compiled at {time.perf_counter() - start:.0f} s")
    done = {(j["cache"], json.dumps(j["tile"], sort_keys=True)) for j in compiled}
    uncompiled = [f"{j['cache']} {_tile_text(j['tile'])}" for j in jobs
                  if (j["cache"], json.dumps(j["tile"], sort_keys=True)) not in done]
    ok = [j for j in compiled if j["ok"]]
    # The current default tiles first, so that the default-against-default speedups are always measured.
    ok.sort(key=lambda j: not _same_kernel(_tile(j["tile"]), default_tile(gpu, j["cache"], args.smoke)))
    result = {"device": "cpu (smoke)" if args.smoke else torch.cuda.get_device_name(0),
              "torch": torch.__version__, "shape": asdict(shape),
              "tiles_now": {gpu_key: {str(f): asdict(t) for f, t in entries.items()}
                            for gpu_key, entries in TILES.items()},
              "compiled": compiled, "uncompiled": uncompiled, "probes": probes}
    # A phase that fails leaves its error in the JSON and the report; the phases after it still run.
    result.update(sweep=[], splits=[], placement=[], summary=None, phase_errors={})
    phases = [("sweep", lambda: sweep(bench, ok, budget_end - 20)),
              ("splits", lambda: split_sweep(bench, result["sweep"], budget_end - 12,
                                             [int(c) for c in args.split_counts.split(",")])),
              ("placement", lambda: placement_probe(bench, result["sweep"], budget_end - 4)),
              ("summary", lambda: summarize(result, bench, gpu))]
    for phase, run in phases:
        try:
            result[phase] = run()
        except Exception as exc:
            result["phase_errors"][phase] = f"{type(exc).__name__}: {exc}"
        print(f"{phase} done at {time.perf_counter() - start:.0f} s")
    result["wall_s"] = time.perf_counter() - start
    args.json_out.write_text(json.dumps(result, indent=1, default=str))
    try:
        print_report(result)
    finally:
        for phase, error in result["phase_errors"].items():
            print(f"phase {phase} failed: {error}")
        print(f"\nwall {result['wall_s']:.0f} s; JSON in {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
