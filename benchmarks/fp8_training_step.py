"""Where the FP8 training step's time goes, and what each change to it buys.

    python benchmarks/fp8_training_step.py            # step times: BF16 against FP8 variants
    python benchmarks/fp8_training_step.py --gemms    # the step's twelve GEMMs alone: BF16, FP8 fast, FP8 split
    python benchmarks/fp8_training_step.py --profile  # device time per kernel of one BF16 and one FP8 step

The chapter's shape (two blocks, d=4096, 4096 tokens), AdamW fused (both models). Step variants of
FP8 (lowprec_workloads/fp8_training.py): its eager quantizers (the step before the Triton quantizer), the Triton
quantizer that writes both layouts in one pass (the suite's path: weights scaled by the previous
step's amax), the weights by their current amax (an extra amax pass over them), fast accumulation in
the weight gradient too, and both models under torch.compile. Each timed three ways (see _times): as
the gate times it, each step alone after a synchronize, and the host's time to issue a step. The
issue's target is 1.3x. A benchmark: it prints tables and asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time

import torch

from lowprec_workloads import fp8_training
from lowprec_workloads.fp8_training import E4M3, E5M2, RECIPE, Shape, batch, pair
from pytest_lowprec.formats.fp8 import quantize_tensorwise, scaled_mm
from pytest_lowprec.hardware import probe_cuda
from pytest_lowprec.timing import CudaEventTimer, cuda_event_times_ms

SHAPE = Shape(d=4096, blocks=2, tokens=4096, steps=1, lr=3e-4)


def _times(timer: CudaEventTimer, step, bf16, fp8) -> dict[str, tuple[float, float]]:
    """(bf16 ms, fp8 ms) three ways: "steady", the gate's own timing (alternating pairs, L2 flushed,
    queued back to back with one synchronize per batch, so the host runs ahead as in training without
    a per-step sync); "synced", each step alone after a synchronize (the host's launch latency is
    exposed, as under a loss scaler that reads its finite check every step); "host", the host's time
    to issue one step while the device is idle before it (launches and Python)."""
    timer.warmup(lambda: step(bf16), lambda: step(fp8))
    pairs = timer.pairs(lambda: step(bf16), lambda: step(fp8), 30)
    steady = (statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs))
    synced = tuple(statistics.median(cuda_event_times_ms(lambda m=m: step(m), reps=20, warmup=3))
                   for m in (bf16, fp8))
    host = []
    for model in (bf16, fp8):
        issue = []
        for _ in range(10):
            torch.cuda.synchronize()
            start = time.perf_counter()
            step(model)
            issue.append((time.perf_counter() - start) * 1e3)
        host.append(statistics.median(issue))
    torch.cuda.synchronize()
    return {"steady": steady, "synced": synced, "host": tuple(host)}


def steps() -> None:
    device = probe_cuda()
    timer = CudaEventTimer(device.index, l2_bytes=device.l2_bytes, uuid=device.uuid)
    triton_quantize = fp8_training.quantize_operand
    variants = [  # name, quantizer, recipe, compiled
        ("eager quantizers", fp8_training.quantize_operand_eager, RECIPE, False),
        ("triton quantizer (suite)", triton_quantize, RECIPE, False),
        ("weights by current amax", triton_quantize, dataclasses.replace(RECIPE, weight_amax="current"), False),
        ("+ fast accum wgrad", triton_quantize, dataclasses.replace(RECIPE, fast_accum=("fprop", "wgrad")), False),
        ("triton, torch.compile both", triton_quantize, RECIPE, True),
    ]
    print(f"device: {device.name}, torch {torch.__version__}; ms per step (bf16 / fp8) and speedup")
    print(f"{'fp8 variant':28} {'steady':>22} {'synced each step':>22} {'host issue':>14}")
    for name, quantize, recipe, compiled in variants:
        fp8_training.quantize_operand = quantize
        bf16, fp8, teacher = pair(SHAPE, "cuda")
        fp8.set_fp8(True, recipe)
        x, y = batch(0, SHAPE, teacher, "cuda", None)
        models = (torch.compile(bf16), torch.compile(fp8)) if compiled else (bf16, fp8)
        try:
            step = fp8_training.step_function(models, x, y, SHAPE.lr, fused=True)
            t = _times(timer, step, *models)
        except Exception as error:  # noqa: BLE001 - a variant that cannot run is reported, not fatal
            print(f"{name:28} failed: {type(error).__name__}: {str(error)[:200]}")
            continue
        finally:
            fp8_training.quantize_operand = triton_quantize
        cells = [f"{t[k][0]:6.2f} / {t[k][1]:5.2f} {t[k][0] / t[k][1]:5.3f}x" for k in ("steady", "synced")]
        print(f"{name:28} {cells[0]:>22} {cells[1]:>22} {t['host'][0]:6.2f} / {t['host'][1]:5.2f}", flush=True)
        del bf16, fp8, teacher, models, step
        torch.cuda.empty_cache()


def _gemm_ms(m: int, k: int, n: int, a_dtype: torch.dtype, out: torch.dtype) -> dict[str, float]:
    a, b = torch.randn(m, k, device="cuda"), torch.randn(n, k, device="cuda")
    ab, bb = a.bfloat16(), b.bfloat16()
    aq, sa = quantize_tensorwise(a, a_dtype)
    bq, sb = quantize_tensorwise(b, E4M3)
    bq = bq.t()  # column-major [k, n]
    calls = {
        "bf16": lambda: torch.mm(ab, bb.t()).to(out),
        "fast": lambda: scaled_mm(aq, sa, bq, sb, out_dtype=out, fast_accum=True),
        "split": lambda: scaled_mm(aq, sa, bq, sb, out_dtype=out, fast_accum=False),
    }
    return {key: statistics.median(cuda_event_times_ms(fn, reps=30, warmup=5)) for key, fn in calls.items()}


def gemms() -> None:
    """Each GEMM of one block's two linears (the step runs each twice), as the suite's FP8 path calls it."""
    t, d, h = SHAPE.tokens, SHAPE.d, 4 * SHAPE.d
    cases = [  # name, m, k, n, fp8 A dtype, output dtype
        ("fc1 fprop", t, d, h, E4M3, torch.bfloat16), ("fc1 dgrad", t, h, d, E5M2, torch.bfloat16),
        ("fc1 wgrad", h, t, d, E5M2, torch.float32), ("fc2 fprop", t, h, d, E4M3, torch.bfloat16),
        ("fc2 dgrad", t, d, h, E5M2, torch.bfloat16), ("fc2 wgrad", d, t, h, E5M2, torch.float32),
    ]
    print(f"{'gemm':10} {'m':>6} {'k':>6} {'n':>6} {'bf16 ms':>8} {'fast ms':>8} {'split ms':>9} "
          f"{'fast x':>7} {'split x':>8} {'split TF/s':>10}")
    total = {"bf16": 0.0, "fast": 0.0, "split": 0.0}
    for name, m, k, n, a_dtype, out in cases:
        ms = _gemm_ms(m, k, n, a_dtype, out)
        for key in total:
            total[key] += 2 * ms[key]
        tflops = 2 * m * k * n / ms["split"] / 1e9
        print(f"{name:10} {m:6} {k:6} {n:6} {ms['bf16']:8.3f} {ms['fast']:8.3f} {ms['split']:9.3f} "
              f"{ms['bf16'] / ms['fast']:6.2f}x {ms['bf16'] / ms['split']:7.2f}x {tflops:10.0f}")
    print(f"step's 12 GEMMs: bf16 {total['bf16']:.2f} ms, fp8 all fast {total['fast']:.2f} ms, "
          f"all split {total['split']:.2f} ms")


def profile() -> None:
    """Device time per kernel (summed over one step) for BF16 and the suite's FP8 step."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    bf16, fp8, teacher = pair(SHAPE, "cuda")
    x, y = batch(0, SHAPE, teacher, "cuda", None)
    step = fp8_training.step_function((bf16, fp8), x, y, SHAPE.lr, fused=True)
    for name, model in (("bf16", bf16), ("fp8", fp8)):
        for _ in range(3):
            step(model)
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            step(model)
            torch.cuda.synchronize()
        kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
        kernels.sort(key=lambda e: e.self_device_time_total, reverse=True)
        total_ms = sum(e.self_device_time_total for e in kernels) / 1e3
        print(f"{name}: {total_ms:.2f} ms of kernels in one step")
        for e in kernels[:14]:
            print(f"  {e.self_device_time_total / 1e3:7.3f} ms  x{e.count:<3} {e.key[:90]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gemms", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA device")
        return 1
    if args.gemms:
        gemms()
    elif args.profile:
        profile()
    else:
        steps()
    return 0


if __name__ == "__main__":
    sys.exit(main())
