"""FP8 data parallelism: which FSDP2 configuration scales, against DDP, on every visible GPU.

    python benchmarks/fsdp2_scaling.py OUT.json              # timing, all variants (the first 11 took 37 s on 2 H200s)
    python benchmarks/fsdp2_scaling.py OUT.json --loss       # also train the two reduce dtypes 150 steps
    python benchmarks/fsdp2_scaling.py OUT.json --cpu        # 2 gloo ranks at d=64: checks the script only
    python benchmarks/fsdp2_scaling.py OUT.json --profile DIR [--only ddp "fp8 all-gather, keep"] [--world 1]
    python benchmarks/fsdp2_scaling.py OUT.json --graphs    # every step a CUDA graph's replay (the host out of the way)

The suite's data-parallel workload (lowprec_workloads/fp8_data_parallel.py): the chapter's FP8 stack (two
blocks, d=4096) at 4096 tokens a GPU. One group of ranks (NCCL, one per GPU, NVLink multicast off) builds
one GPU's model and every variant, then times them in rounds whose order rotates (CUDA events over 10
steps queued back to back after a barrier, median of the rounds, slowest rank): one GPU's step (the FP8
stack alone on its shard, no collective), DDP with its float32 all-reduce, and FSDP2 with the weights
all-gathered in FP8 or float32, resharded after the forward or kept, gradients reduce-scattered in
float32 or bfloat16, a block, each linear or the whole model a unit, with or without explicit
prefetching. AdamW is fused everywhere. Efficiency = one GPU's step / the data-parallel step (same per-GPU
batch); "comm alone" is the step's collectives run back to back on buffers of their size, "hidden"
1 - (step - one GPU) / comm alone. A variant that fails to build or run is reported with its
error and the others are still timed. With --loss, FSDP2 (FP8 all-gather, kept) trains the suite's 150
steps with each reduce dtype and the final-loss gap to one process is printed (the suite's bound: 1%).
With --profile, after the timing each side runs two more steps under torch.profiler: a chrome trace per rank
and side in DIR, and a table per side of the time each device stream ran and the time no stream did (the
device waiting on the host or on another rank); then two under cProfile: the host's own time per function
(DIR/*.cprofile.txt, and the costliest ten in the table). --only keeps the variants whose label contains one of the
given strings. --world 1 runs one rank: every collective is a copy, so what a variant adds to one GPU's
step is its own work (FSDP2's hooks, copies and casts, the sharded optimizer), with no scaling to read.
With --graphs every side's step, one GPU's included, is captured whole in a CUDA graph after its warm-up
and replayed (fp8_data_parallel.Job.graphs), each checked against an eager twin before the timing (a capture
that differs is dropped) and after it ("graph diff"); each variant runs in a job of its own beside one GPU's
step, so one that breaks the CUDA context stops only itself.
A benchmark: it prints tables and asserts nothing; the last table is the one to read.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch

from lowprec_workloads.fp8_data_parallel import DDP, GATED, Job, label, launch, scaling, single_process_losses
from lowprec_workloads.fp8_fsdp import Fsdp2Config
from lowprec_workloads.fp8_training import Shape

TOKENS_PER_GPU = 4096
BLOCKS, LR = 2, 3e-4
# DDP, the eight FSDP2 combinations the issue names, and the gated one's two reduce dtypes with each
# linear a unit of its own (a smaller last reduce-scatter), in case a block's is what the step exposes, and
# with the whole model one unit (FSDP2's hooks once a step: on one H200 its per-block step waited on the
# host, 19 ms to issue 11.7 ms of kernels, 2026-12-01);
# then explicit forward prefetching (Fsdp2Config.prefetch) of the kept-weight variants: on two H200s
# (2026-12-01, docs/measurements/fsdp2-2x-h200-2026-12-01.md) none hid any of its collectives, and FSDP2's
# step held 1.5 ms of its own work, which a host-bound step would explain.
VARIANTS = (DDP,) + tuple(Fsdp2Config(fp8_all_gather=fp8, reshard_after_forward=reshard, reduce_dtype=reduce)
                          for fp8 in (True, False) for reshard in (False, True) for reduce in ("float32", "bfloat16")) \
    + tuple(Fsdp2Config(reduce_dtype=reduce, unit=unit) for unit in ("linear", "model")
            for reduce in ("float32", "bfloat16")) \
    + tuple(Fsdp2Config(fp8_all_gather=fp8, reduce_dtype=reduce, prefetch=True)
            for fp8 in (True, False) for reduce in ("float32", "bfloat16"))


def round_efficiencies(results: list[dict], name: str) -> list[float]:
    """Each round's efficiency on the slowest rank of that round: the spread says how much to trust a median."""
    rounds = len(results[0]["times_ms"][name])
    return [max(r["times_ms"]["one_gpu"][i] for r in results) / max(r["times_ms"][name][i] for r in results)
            for i in range(rounds)]


def timing(world: int, d: int, cuda: bool, rounds: int, steps: int, timeout_s: float, variants: tuple = VARIANTS,
           profile_dir: str | None = None, graphs: bool = False) -> dict:
    if graphs and len(variants) > 1:
        return _merged([timing(world, d, cuda, rounds, steps, timeout_s, (v,), profile_dir, graphs) for v in variants],
                       variants, world)
    shape = Shape(d=d, blocks=BLOCKS, tokens=TOKENS_PER_GPU * world, steps=0, lr=LR)
    rows = {}
    with tempfile.TemporaryDirectory() as out:
        job = Job(shape, world, cuda, out, "time", variants=variants, timing_rounds=rounds, timing_steps=steps,
                  profile_dir=profile_dir, graphs=graphs)
        start = time.monotonic()
        try:
            results = launch(job, timeout_s=timeout_s)
        except Exception as exc:  # noqa: BLE001 - say what failed, write what there is
            print(f"the timing job failed after {time.monotonic() - start:.0f} s:\n{exc}", flush=True)
            return {"error": str(exc)}
    print(f"timing job: {time.monotonic() - start:.0f} s on {world} ranks", flush=True)
    for rank, result in enumerate(results):
        for name, error in result["errors"].items():
            print(f"rank {rank}: {name} failed:\n{error}", flush=True)
    for variant in variants:
        name = label(variant)
        try:
            s = scaling(results, variant)
        except Exception as exc:  # noqa: BLE001
            rows[name] = {"error": str(exc)}
            continue
        per_round = round_efficiencies(results, name)
        rows[name] = {**s.to_dict(), "round_efficiency_min": min(per_round), "round_efficiency_max": max(per_round),
                      "gated": variant == GATED}
        if graphs:
            rows[name]["graph_check"] = max(r["graph_check"][name] for r in results)
    return {"world": world, "d": d, "tokens_per_gpu": TOKENS_PER_GPU, "rounds": rounds, "steps_per_round": steps,
            "graphs": graphs,
            "one_gpu_graph_check": max(r["graph_check"]["one_gpu"] for r in results) if graphs else None,
            "one_gpu_ms_per_rank": [statistics.median(r["times_ms"]["one_gpu"]) for r in results],
            "one_gpu_host_ms": max(statistics.median(r["host_ms"]["one_gpu"]) for r in results),
            "peak_bytes_per_rank": [r["peak_bytes"] for r in results], "variants": rows,
            "profiles": [r["profiles"] for r in results]}


def _merged(parts: list[dict], variants: tuple, world: int) -> dict:
    """Captured variants each time in a job of their own, one GPU's step beside each (a replay that breaks
    the CUDA context ends its process, and the others still run): their rows in one result, each row with
    its own job's one-GPU time; the header's one-GPU figures are the first job's that ran."""
    ran = [p for p in parts if "error" not in p]
    if not ran:
        return {"error": "\n".join(p["error"] for p in parts)}
    merged = {**ran[0], "variants": {}}
    for variant, part in zip(variants, parts, strict=True):
        name = label(variant)
        merged["variants"][name] = {"error": part["error"]} if "error" in part else part["variants"][name]
    merged["profiles"] = [{side: p for part in ran for side, p in part["profiles"][rank].items()}
                          for rank in range(world)]
    return merged


def profile_table(result: dict) -> str:
    """Per rank and side: a profiled step's device span, the time any stream ran and the time none did,
    each stream's share (named by its costliest kernel) and the costliest kernels."""
    lines = []
    for rank, profiles in enumerate(result.get("profiles", [])):
        for name, p in profiles.items():
            steps = p["steps"]
            span, busy = p["span_us"] / steps / 1e3, p["busy_us"] / steps / 1e3
            lines.append(f"rank {rank}, {name}: a step spans {span:.2f} ms on the device, busy {busy:.2f}, "
                         f"idle {span - busy:.2f}"
                         + (f" ({p['error']})" if p.get("error") else ""))
            for row in p["streams"][:4]:
                lines.append(f"    stream {row['stream']:>3}: {row['busy_us'] / steps / 1e3:6.2f} ms, "
                             f"{row['events'] // steps:4d} events, most {row['top'][:70]}")
            for k in p["kernels"][:6]:
                lines.append(f"    {k['device_us'] / steps / 1e3:6.2f} ms {k['calls'] // steps:4d}x {k['name'][:80]}")
            lines.append("    host (cProfile), per step: own ms, with callees, calls")
            for f in p["host_functions"][:10]:
                lines.append(f"    {f['own_ms']:6.2f} {f['total_ms']:6.2f} {f['calls']:5.0f}x {f['name'][:80]}")
    return "\n".join(lines)


def losses(world: int, d: int, cuda: bool) -> dict:
    """Final-loss gap to one process of FSDP2 (FP8 all-gather, kept) with each reduce dtype, the suite's test."""
    shape, poison, last = Shape(d=d, blocks=BLOCKS, tokens=4096, steps=150, lr=LR if cuda else 1e-3), 40, 20
    ref, _ = single_process_losses(shape, "cuda:0" if cuda else "cpu", poison)
    ref_final = statistics.fmean(ref[-last:])
    out = {}
    for reduce in ("float32", "bfloat16"):
        variant = replace(GATED, reduce_dtype=reduce)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                ranks = launch(Job(shape, world, cuda, tmp, "train", variants=(variant,), poison_step=poison), 600)
            except Exception as exc:  # noqa: BLE001
                print(f"{variant.label}: training failed:\n{exc}", flush=True)
                out[variant.label] = {"error": str(exc)}
                continue
        final = statistics.fmean(ranks[0]["losses"][-last:])
        out[variant.label] = {"loss_gap": abs(final - ref_final) / ref_final,
                              "skipped": ranks[0]["skipped"],
                              "fp8_weight_mismatches": sum(r["fp8_weight_mismatches"] for r in ranks)}
    return out


def table(result: dict) -> str:
    graphs = result.get("graphs", False)
    lines = [f"FP8 stack d={result['d']}, {BLOCKS} blocks, {TOKENS_PER_GPU} tokens a GPU, {result['world']} ranks"
             + (", every step a CUDA graph's replay" if graphs else "") + "; "
             f"one GPU's step per rank (ms): {', '.join(f'{t:.2f}' for t in result['one_gpu_ms_per_rank'])} "
             f"(host {result['one_gpu_host_ms']:.2f} ms to issue it"
             + (f"; after the timing's replays its weights differ from as many eager steps' by "
                f"{result['one_gpu_graph_check']:.3g}"
                if graphs else "") + ")",
             f"{'variant':<78} {'1-GPU ms':>8} {'DP ms':>7} {'eff':>6} {'rounds':>11} {'tok/s':>9} "
             f"{'comm ms':>7} {'hidden':>6} {'host ms':>7}" + (f" {'graph diff':>10}" if graphs else "")]
    for name, row in result["variants"].items():
        if "error" in row:
            last = [line for line in row["error"].splitlines() if line.strip()][-1]  # the exception's own line
            lines.append(f"{name:<78} failed: {last.strip()[:120]}")
            continue
        mark = " *" if row["gated"] else ""
        lines.append(f"{name + mark:<78} {row['single_ms']:8.2f} {row['synced_ms']:7.2f} {row['efficiency']:6.3f} "
                     f"{row['round_efficiency_min']:5.3f}-{row['round_efficiency_max']:5.3f} "
                     f"{row['tokens_per_s']:9.3g} {row['comm_ms']:7.2f} {row['hidden_fraction']:6.2f} "
                     f"{row['host_ms']:7.2f}" + (f" {row['graph_check']:10.3g}" if graphs else ""))
    lines.append("* the suite's gated configuration (fp8_data_parallel.GATED); its floor: efficiency 0.95")
    if graphs:
        lines.append("graph diff: the largest difference of any weight after the timing's replays against as many "
                     "eager steps (0 unless a replay went wrong; inf: not checked, the error above says why)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="JSON file for the results")
    parser.add_argument("--world", type=int, default=None, help="ranks (default: every visible GPU)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7; 1 with --cpu)")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed round (default 10; 1 with --cpu)")
    parser.add_argument("--loss", action="store_true", help="also train each reduce dtype and print its loss gap")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds the timing job may take before its ranks are stopped and the failure printed "
                             "(default 140; 400 with --cpu, whose gloo ranks share the host's cores with whatever "
                             "else runs there)")
    parser.add_argument("--cpu", action="store_true", help="2 gloo ranks at d=64: checks the script, measures nothing")
    parser.add_argument("--profile", metavar="DIR", help="after the timing, profile each side's steps; traces in DIR")
    parser.add_argument("--graphs", action="store_true",
                        help="every side's step (one GPU's too) captured in a CUDA graph and replayed; GPUs only")
    parser.add_argument("--only", nargs="+", metavar="TEXT",
                        help="only the variants whose label contains one of these (one GPU's step always runs)")
    args = parser.parse_args()
    cuda, d = not args.cpu, 64 if args.cpu else 4096
    if args.graphs and not cuda:
        sys.exit("--graphs captures CUDA graphs: it needs GPUs, not --cpu")
    # A CPU step at 4096 tokens a rank takes about half a second: the GPU's 7 x 10 steps of one GPU's step
    # and fifteen variants would take minutes to check the script.
    rounds = args.rounds or (1 if args.cpu else 7)
    steps = args.steps or (1 if args.cpu else 10)
    world = args.world or (torch.cuda.device_count() if cuda else 2)
    if world < 1 or (args.world is None and world < 2):
        sys.exit(f"needs 2 or more GPUs, or --world 1 for one rank's own work; {torch.cuda.device_count()} visible")
    variants = tuple(v for v in VARIANTS if not args.only or any(text in label(v) for text in args.only))
    if not variants:
        sys.exit(f"no variant's label contains any of {args.only}; the labels: {[label(v) for v in VARIANTS]}")
    result = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0) if cuda else "cpu"}
    if args.loss:
        try:
            result["loss"] = losses(world, d, cuda)
        except Exception:  # noqa: BLE001
            result["loss"] = {"error": traceback.format_exc()}
        for name, row in result["loss"].items():
            print(f"loss: {name}: {row}", flush=True)
    profile_dir = str(Path(args.profile).absolute()) if args.profile else None  # the ranks write there
    timeout = args.timeout if args.timeout is not None else (400.0 if args.cpu else 140.0)
    result.update(timing(world, d, cuda, rounds, steps, timeout, variants, profile_dir, args.graphs))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    if result.get("profiles"):
        print(profile_table(result))
    if "variants" in result:
        print(table(result))
    if "error" in result:
        sys.exit("the timing job failed (above); the JSON holds its error")


if __name__ == "__main__":
    main()
