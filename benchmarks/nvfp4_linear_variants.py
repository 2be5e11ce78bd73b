"""The sweep behind the NVFP4 decode linear's shipped shapes (kernels/nvfp4_linear.cuh, issue 26), in one
command on one GPU: every variant of benchmarks/nvfp4_linear_variants.cu, the shipped kernel, and what
linear() ran before (the CUDA-core GEMV, the Triton tiled kernel), at 1, 2, 4, 8, 16, 32 and 64 activation
rows over 8192x8192 NVFP4 weights, each against BF16 F.linear measured the way the gate measures it
(pytest_lowprec.timing.CudaEventTimer: CUDA-graph replay, L2 flushed before every call, A B / B A pairs,
median of per-pair ratios). Each kernel's output is checked against float64 of the dequantized operands
first. Rates: bytes moved (weights + scales + activations + output) per second as a fraction of the copy
ceiling measured in the same process (1 GiB device copy, read + write, as suites/test_roofline.py), and
the time of a kernel that only reads the weight bytes after the same flush, per load hint.

    PYTHONPATH=$PWD:$PWD/benchmarks python benchmarks/nvfp4_linear_variants.py OUT.json   # one GPU, < 150 s

Prints every row, then a short table of the best variant, the shipped kernel and the old path per row
count, then the shape each ShippedConfig<tiles> should take; OUT.json holds every number.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lowprec_workloads import kernels
from lowprec_workloads.nvfp4_gemm import CudaKernels, gemm_tiled, prepare_decode_weight
from pytest_lowprec.formats.metrics import rel_l2
from pytest_lowprec.formats.nvfp4 import quantize_nvfp4
from pytest_lowprec.timing import CudaEventTimer

N = K = 8192
ROWS = (1, 2, 4, 8, 16, 32, 64)
PAIRS = 300
WARMUP_PAIRS = 20
BUDGET_S = 135.0  # stop timing (and say so) past this, so the command ends inside its 150 s
HERE = Path(__file__).resolve().parent
SOURCE = HERE / "nvfp4_linear_variants.cu"
HINTS = ("cached", "no-L1", "no-L1 + L2 256B prefetch", "no-L1 + L2 evict-first", "streaming (ld.cs)",
         "no-L1 + L2 evict-first + 256B prefetch")
NOT_HERE = -2
_VOID = ctypes.c_void_p


def tiles_for(rows: int) -> int:
    return next(t for t in (1, 2, 4, 8) if rows <= 8 * t)


def start_builds(capability: tuple[int, int], out_dir: Path, parts: int) -> list[tuple[Path, subprocess.Popen]]:
    """nvcc on each piece of the variants source at once; the pieces are independent libraries."""
    nvcc = kernels.find_nvcc() or "nvcc"
    target = kernels.Target(*capability)
    builds = []
    for part in range(parts):
        so = out_dir / f"variants_{part}.so"
        command = [nvcc, *kernels.BASE_FLAGS, target.gencode, "-shared", "-Xcompiler", "-fPIC",
                   f"-DLOWPREC_PART={part}", f"-DLOWPREC_PARTS={parts}", f"-I{kernels.KERNELS_DIR}", "-o", str(so),
                   str(SOURCE)]
        builds.append((so, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    return builds


def load_part(so: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(so))
    lib.variant_name.restype = ctypes.c_char_p
    lib.variant_launch.argtypes = [ctypes.c_int, *[_VOID] * 5, ctypes.c_int, ctypes.c_int, ctypes.c_int, _VOID]
    lib.read_bytes.argtypes = [ctypes.c_int, _VOID, ctypes.c_size_t, _VOID, ctypes.c_int, _VOID]
    lib.repack_words.argtypes = [_VOID, _VOID, ctypes.c_size_t, _VOID]
    lib.tile_weights.argtypes = [_VOID, _VOID, ctypes.c_int, ctypes.c_int, _VOID, _VOID, ctypes.c_int, _VOID]
    return lib


def ptr(t: torch.Tensor) -> _VOID:
    return _VOID(t.data_ptr())


def stream() -> _VOID:
    return _VOID(torch.cuda.current_stream().cuda_stream)


def copy_ceiling_tbps() -> float:
    """suites/test_roofline.py's measure: best of ten 1 GiB device copies, read + write bytes."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    times = []
    for _ in range(12):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    del src, dst
    return 2 * (1 << 30) / (min(times[2:]) * 1e-3) / 1e12


def paired(timer: CudaEventTimer, baseline, optimized) -> dict:
    """The gate's measure: warm pairs dropped, then PAIRS pairs; the median of per-pair time ratios."""
    timer.pairs(baseline, optimized, WARMUP_PAIRS)
    pairs = timer.pairs(baseline, optimized, PAIRS)
    ratios = sorted(b / o for b, o in pairs)
    return {"baseline_ms": statistics.median(b for b, _ in pairs), "ms": statistics.median(o for _, o in pairs),
            "speedup": statistics.median(ratios), "speedup_p10_p90": [ratios[len(ratios) // 10],
                                                                        ratios[9 * len(ratios) // 10]]}


def after_flush_ms(fn, prepare, n: int = 200) -> float:
    """Median time of `fn` right after `prepare` (enqueued first, so `fn` waits on the GPU, not the host)."""
    times = []
    for _ in range(n + 10):
        prepare()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        times.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in times[10:])


def main(out_path: str) -> None:
    t0 = time.monotonic()
    dev = torch.device("cuda:0")
    props = torch.cuda.get_device_properties(dev)
    capability = torch.cuda.get_device_capability(dev)
    tmp = Path(tempfile.mkdtemp(prefix="nvfp4_linear_variants_"))
    parts = max(1, min(8, (os.cpu_count() or 2)))
    builds = start_builds(capability, tmp, parts)
    print(f"{props.name} (sm_{capability[0]}{capability[1]}, {props.multi_processor_count} SMs, "
          f"{props.L2_cache_size / 2**20:.0f} MiB L2), torch {torch.__version__}; building {parts} pieces",
          flush=True)

    # While nvcc runs: the shipped library, the inputs, the float64 reference, the copy ceiling.
    cuda = CudaKernels(dev)
    g = torch.Generator(device="cpu").manual_seed(6)
    x_all = torch.randn(max(ROWS), K, generator=g).bfloat16().to(dev)
    w_bf16 = torch.randn(N, K, generator=g).bfloat16().to(dev)
    w = quantize_nvfp4(w_bf16)
    ref_all = x_all.double() @ w.dequantize(torch.float64).T
    torch.cuda.synchronize()
    copy_tbps = copy_ceiling_tbps()
    print(f"copy ceiling {copy_tbps:.3f} TB/s; weights {w.nbytes / 1e6:.1f} MB NVFP4, "
          f"{w_bf16.numel() * 2 / 1e6:.1f} MB BF16 ({time.monotonic() - t0:.0f} s)", flush=True)

    libs: dict[int, ctypes.CDLL] = {}
    build_errors = {}
    for part, (so, proc) in enumerate(builds):
        output, _ = proc.communicate()
        if proc.returncode == 0:
            libs[part] = load_part(so)
        else:
            build_errors[part] = output.strip().splitlines()[-20:]
            print(f"piece {part} failed to compile (its variants are skipped):\n  " + "\n  ".join(build_errors[part]),
                  flush=True)
    print(f"built in {time.monotonic() - t0:.0f} s", flush=True)
    any_lib = next(iter(libs.values()), None)
    variants = []
    if any_lib is not None:
        for vid in range(any_lib.variant_count()):
            variants.append({"id": vid, "name": any_lib.variant_name(vid).decode(),
                             "tiles": any_lib.variant_tiles(vid), "lib": libs.get(vid % parts)})

    # kRepacked variants read the same bytes rearranged once (kernels/nvfp4_linear.cuh, repack_word).
    repacked = torch.empty_like(w.packed)
    if 0 in libs and libs[0].repack_words(ptr(w.packed), ptr(repacked), w.packed.numel() // 4, stream()) != 0:
        raise RuntimeError("repack_words failed")
    shipped_w = prepare_decode_weight(w, cuda)  # what linear() reads: the shipped kernel's layout
    # kTiled and kStepMajor variants read them also laid out in the kernel's order (N is a multiple of 16, so
    # the layouts, padded to whole 16-row tiles, hold as many bytes as the row-major tensors).
    assert N % 16 == 0, "the laid-out buffers below are sized for whole 16-row tiles"
    laid_out = {}
    for layout, step_major in (("kTiled", 0), ("kStepMajor", 1)):
        laid_out[layout] = (torch.empty_like(w.packed), torch.empty_like(w.block_scales))
        if 0 in libs and libs[0].tile_weights(ptr(w.packed), ptr(w.block_scales), N, K, *map(ptr, laid_out[layout]),
                                              step_major, stream()) != 0:
            raise RuntimeError(f"tile_weights ({layout}) failed")

    def operands(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        for layout, tensors in laid_out.items():
            if layout in name:
                return tensors
        return (repacked if "kRepacked" in name else w.packed), w.block_scales

    timer = CudaEventTimer(dev.index or 0, l2_bytes=props.L2_cache_size, graphs=True)
    sink = torch.zeros(1, device=dev)
    results: dict = {"device": props.name, "capability": list(capability), "sms": props.multi_processor_count,
                     "l2_bytes": props.L2_cache_size, "torch": torch.__version__, "n": N, "k": K,
                     "copy_ceiling_tbps": copy_tbps, "weight_bytes": w.nbytes, "pairs": PAIRS,
                     "build_errors": build_errors, "read_only": {}, "rows": {}}

    def over_budget() -> bool:
        return time.monotonic() - t0 > BUDGET_S

    # What reading the weight bytes alone costs after the flush, per load hint (paired with 1-row BF16).
    x1 = x_all[:1]
    if 0 in libs:
        read_buf = torch.empty(w.nbytes // 16 * 16, dtype=torch.uint8, device=dev)
        for hint, label in enumerate(HINTS):
            def read(hint: int = hint, label: str = label) -> None:
                status = libs[0].read_bytes(hint, ptr(read_buf), read_buf.numel(), ptr(sink),
                                            props.multi_processor_count * 8, stream())
                if status != 0:
                    raise RuntimeError(f"read_bytes({label}) returned {status}")
            try:
                m = paired(timer, lambda: torch.nn.functional.linear(x1, w_bf16), read)
            except Exception as err:  # noqa: BLE001 - one failing kernel must not end the sweep
                print(f"read-only {label}: {err}", flush=True)
                continue
            m["fraction_of_copy"] = read_buf.numel() / (m["ms"] * 1e-3) / 1e12 / copy_tbps
            results["read_only"][label] = m
            print(f"read only, {label:26s} {m['ms'] * 1e3:7.2f} us  {m['fraction_of_copy']:.3f} of copy", flush=True)
    best_read_ms = min((m["ms"] for m in results["read_only"].values()), default=math.nan)

    # The gate's flush (zero_ of twice the L2) leaves L2 full of dirty lines, which whatever runs next
    # writes back as it allocates: the same kernels after that flush and after a clean one (reading twice
    # the L2), so the write-back's share of each time is known.
    if 0 in libs:
        dirty = torch.empty(2 * props.L2_cache_size // 4, dtype=torch.int32, device=dev)
        clean = torch.empty(2 * props.L2_cache_size // 16 * 16, dtype=torch.uint8, device=dev)
        states = {"dirty (the gate's zero_ flush)": dirty.zero_,
                  "clean (a read of twice the L2)": lambda: libs[0].read_bytes(0, ptr(clean), clean.numel(), ptr(sink),
                                                                               props.multi_processor_count * 8,
                                                                               stream())}
        out1 = torch.empty(1, N, device=dev)
        subjects = {"bf16 F.linear, 1 row": lambda: torch.nn.functional.linear(x1, w_bf16),
                    "shipped nvfp4 linear, 1 row": lambda: cuda.linear(x1, shipped_w, out1)}
        for layout in ("kRepacked", "kTiled", "kStepMajor"):
            v = next((v for v in variants if v["lib"] is not None and v["tiles"] == 1
                      and v["name"].startswith(f"1, 1, 1, 4, 4, {layout}, kNoL1Prefetch256")), None)
            if v is not None:
                subjects[f"v{v['id']:02d} (the shipped shape, {layout}), 1 row"] = (
                    lambda v=v: v["lib"].variant_launch(v["id"], ptr(x1), *map(ptr, operands(v["name"])),
                                                        ptr(w.global_decode), ptr(out1), 1, N, K, stream()))
        for hint in (0, 5):
            subjects[f"read only, {HINTS[hint]}"] = (
                lambda hint=hint: libs[0].read_bytes(hint, ptr(read_buf), read_buf.numel(), ptr(sink),
                                                     props.multi_processor_count * 8, stream()))
        results["flush_state_ms"] = {}
        for subject, fn in subjects.items():
            try:
                times = {state: after_flush_ms(fn, prepare) for state, prepare in states.items()}
            except Exception as err:  # noqa: BLE001 - one failing kernel must not end the sweep
                print(f"flush state, {subject}: {err}", flush=True)
                continue
            results["flush_state_ms"][subject] = times
            shown = "  ".join(f"{state.split(' ')[0]} {ms * 1e3:7.2f} us" for state, ms in times.items())
            print(f"{subject:50s} {shown}", flush=True)
        del dirty, clean

    for rows in ROWS:
        x = x_all[:rows]
        ref = ref_all[:rows]
        out = torch.empty(rows, N, dtype=torch.float32, device=dev)
        nbytes = w.nbytes + x.numel() * 2 + out.numel() * 4
        candidates = [("shipped (kernels/nvfp4_gemm.cu nvfp4_linear)",
                       lambda x=x, out=out: cuda.linear(x, shipped_w, out))]
        for v in variants:
            if v["tiles"] == tiles_for(rows) and v["lib"] is not None:
                def run(v: dict = v, x: torch.Tensor = x, out: torch.Tensor = out, rows: int = rows) -> None:
                    weights, scales = operands(v["name"])
                    status = v["lib"].variant_launch(v["id"], ptr(x), ptr(weights), ptr(scales),
                                                     ptr(w.global_decode), ptr(out), rows, N, K, stream())
                    if status != 0:
                        raise RuntimeError(f"variant {v['id']} returned {status}")
                candidates.append((f"v{v['id']:02d} {v['name']}", run))
        if rows <= 4:  # the GEMV's launcher takes 1..4 rows; linear() sent it 1..2
            def gemv(x: torch.Tensor = x, out: torch.Tensor = out, rows: int = rows) -> None:
                cuda._lib.call("nvfp4_gemv", dev.index or 0, x.data_ptr(), w.packed.data_ptr(),
                               w.block_scales.data_ptr(), w.global_decode.data_ptr(), 0, out.data_ptr(), rows, N, K,
                               torch.cuda.current_stream().cuda_stream)
            candidates.append(("old: GEMV" + (" (linear() before)" if rows <= 2 else ""), gemv))
        candidates.append(("old: Triton tiled" + ("" if rows <= 2 else " (linear() before)"),
                           lambda x=x, out=out: gemm_tiled(x, w, out=out)))

        def bf16(x: torch.Tensor = x) -> torch.Tensor:
            return torch.nn.functional.linear(x, w_bf16)

        rows_out = {}
        for name, fn in candidates:
            entry: dict = {}
            try:
                out.fill_(float("nan"))
                fn()
                torch.cuda.synchronize()
                entry["rel_l2"] = rel_l2(ref, out.double())
                entry["nonfinite"] = int((~torch.isfinite(out)).sum())
                entry["correct"] = entry["nonfinite"] == 0 and entry["rel_l2"] < 1e-5
                if over_budget():
                    entry["skipped"] = "time budget"
                elif entry["correct"]:
                    entry.update(paired(timer, bf16, fn))
                    entry["tb_per_s"] = nbytes / (entry["ms"] * 1e-3) / 1e12
                    entry["fraction_of_copy"] = entry["tb_per_s"] / copy_tbps
                    entry["read_only_ms_over_this"] = best_read_ms / entry["ms"]
            except Exception as err:  # noqa: BLE001 - one failing kernel must not end the sweep
                entry["error"] = str(err).strip().splitlines()[-1][:200] if str(err).strip() else repr(err)
                torch.cuda.synchronize()
            rows_out[name] = entry
            if "ms" in entry:
                print(f"{rows:2d} rows  {name:62s} {entry['ms'] * 1e3:8.2f} us  {entry['speedup']:5.2f}x  "
                      f"{entry['fraction_of_copy']:.3f} copy  rel_l2 {entry['rel_l2']:.1e}", flush=True)
            else:
                why = entry.get("error") or entry.get("skipped") or (
                    f"WRONG: rel_l2 {entry.get('rel_l2', math.nan):.2e}, {entry.get('nonfinite')} non-finite")
                print(f"{rows:2d} rows  {name:62s} {why}", flush=True)
        bf16_ms = [e["baseline_ms"] for e in rows_out.values() if "baseline_ms" in e]
        bf16_bytes = w_bf16.numel() * 2 + x.numel() * 2 + rows * N * 2
        results["rows"][rows] = {"bf16_ms": statistics.median(bf16_ms) if bf16_ms else None, "bytes": nbytes,
                                 "bf16_fraction_of_copy": (bf16_bytes / (statistics.median(bf16_ms) * 1e-3) / 1e12
                                                           / copy_tbps) if bf16_ms else None,
                                 "kernels": rows_out}

    try:
        summarize(results)
    finally:  # the numbers are kept even if the summary cannot be printed
        Path(out_path).write_text(json.dumps(results, indent=1, sort_keys=True))
        print(f"wrote {out_path} ({time.monotonic() - t0:.0f} s)")


def summarize(results: dict) -> None:
    """The short table last: per row count, BF16, the best variant, the shipped kernel, the old path; then
    the shape each ShippedConfig<tiles> should take (best geometric-mean speedup over its row counts)."""
    def timed(entries: dict) -> dict:
        return {k: e for k, e in entries.items() if "speedup" in e}

    print()
    print(f"{'rows':>4s} {'bf16 us':>8s} {'copy':>5s} | {'best variant':38s} {'us':>7s} {'x':>5s} {'copy':>5s} | "
          f"{'shipped':>7s} {'x':>5s} {'copy':>5s} | {'linear() before':12s} {'us':>7s} {'x':>5s}")
    per_tiles: dict[int, dict[str, list[float]]] = {}
    for rows, r in results["rows"].items():
        k = timed(r["kernels"])
        variants = {n: e for n, e in k.items() if n.startswith("v")}
        for n, e in variants.items():
            per_tiles.setdefault(tiles_for(int(rows)), {}).setdefault(n, []).append(e["speedup"])
        best = max(variants.items(), key=lambda kv: kv[1]["speedup"], default=(None, None))
        shipped = next((e for n, e in k.items() if n.startswith("shipped")), None)
        old = next(((n, e) for n, e in k.items() if "linear() before" in n), (None, None))
        bf16 = (f"{r['bf16_ms'] * 1e3:8.2f} {r['bf16_fraction_of_copy']:5.2f}" if r["bf16_ms"]
                else f"{'-':>8s} {'':5s}")
        b = (f"{best[0][:38]:38s} {best[1]['ms'] * 1e3:7.2f} {best[1]['speedup']:5.2f} "
             f"{best[1]['fraction_of_copy']:5.2f}") if best[0] else f"{'-':38s} {'':7s} {'':5s} {'':5s}"
        s = (f"{shipped['ms'] * 1e3:7.2f} {shipped['speedup']:5.2f} {shipped['fraction_of_copy']:5.2f}"
             if shipped else f"{'-':>7s} {'':5s} {'':5s}")
        o = (f"{old[0][5:].split(' (')[0]:12s} {old[1]['ms'] * 1e3:7.2f} {old[1]['speedup']:5.2f}" if old[0] else "-")
        print(f"{rows:>4} {bf16} | {b} | {s} | {o}")
    print()
    decision = {}
    for tiles, by_name in sorted(per_tiles.items()):
        scored = {n: math.exp(sum(math.log(s) for s in v) / len(v)) for n, v in by_name.items()}
        name, score = max(scored.items(), key=lambda kv: kv[1])
        decision[tiles] = {"variant": name, "geomean_speedup": score}
        print(f"ShippedConfig<{tiles}> ({8 * tiles // 2 + 1 if tiles > 1 else 1}..{8 * tiles} rows): "
              f"Config<{name[4:]}>  (geomean {score:.2f}x over its row counts)")
    results["decision"] = decision
    targets = {1: 2.6, 16: 1.5}
    for rows, floor in targets.items():
        r = results["rows"].get(rows)
        if r:
            k = timed(r["kernels"])
            shipped = next((e["speedup"] for n, e in k.items() if n.startswith("shipped")), math.nan)
            best = max((e["speedup"] for n, e in k.items() if n.startswith("v")), default=math.nan)
            print(f"target {rows} row(s) >= {floor}x: shipped {shipped:.2f}x, best variant {best:.2f}x")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "nvfp4_linear_variants.json")
