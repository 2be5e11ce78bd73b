"""Where the FP8 training step's time goes, and what each change to it buys.

    python benchmarks/fp8_training_step.py            # step times: BF16 against FP8 variants
    python benchmarks/fp8_training_step.py --gemms    # the step's twelve GEMMs alone: BF16, FP8 fast, FP8 split
    python benchmarks/fp8_training_step.py --profile  # device time per kernel of one BF16 and one FP8 step

The chapter's shape (two blocks, d=4096, 4096 tokens), AdamW fused (both models). Step variants of
FP8 (suites/fp8_training.py): its eager quantizers (the step before the Triton quantizer), the Triton
quantizer that writes both layouts in one pass (the suite's path: weights scaled by the previous
step's amax), the weights by their current amax (an extra amax pass over them), fast accumulation in
the weight gradient too, and both models under torch.compile. Median of 20 steps with CUDA events
after 5 warm-up steps. The issue's target is 1.3x. A benchmark: it prints tables and asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "suites"))

import fp8_training  # noqa: E402
from fp8_training import E4M3, E5M2, RECIPE, Shape, batch, pair  # noqa: E402
from stream_overlap import cuda_event_times_ms  # noqa: E402

from pytest_lowprec.formats.fp8 import quantize_tensorwise, scaled_mm  # noqa: E402

SHAPE = Shape(d=4096, blocks=2, tokens=4096, steps=1, lr=3e-4)


def _eager_quantize(t, dtype, reduce_amax, transpose=False):
    """The suite's quantizer as it was before the Triton path: torch operations, then a transpose copy."""
    q, inv = quantize_tensorwise(t, dtype)
    return (q, q.t().contiguous(), inv) if transpose else (q, inv)


def step_ms(model, step) -> float:
    return statistics.median(cuda_event_times_ms(lambda: step(model), reps=20, warmup=5))


def steps() -> None:
    triton_quantize = fp8_training._quantize
    variants = [  # name, quantizer, recipe, compiled
        ("eager quantizers", _eager_quantize, RECIPE, False),
        ("triton quantizer (suite)", triton_quantize, RECIPE, False),
        ("weights by current amax", triton_quantize, dataclasses.replace(RECIPE, weight_amax="current"), False),
        ("+ fast accum wgrad", triton_quantize, dataclasses.replace(RECIPE, fast_accum=("fprop", "wgrad")), False),
        ("triton, torch.compile both", triton_quantize, RECIPE, True),
    ]
    print(f"{'fp8 variant':28} {'bf16 ms':>8} {'fp8 ms':>8} {'speedup':>8}")
    for name, quantize, recipe, compiled in variants:
        fp8_training._quantize = quantize
        bf16, fp8, teacher = pair(SHAPE, "cuda")
        fp8.set_fp8(True, recipe)
        x, y = batch(0, SHAPE, teacher, "cuda", None)
        models = (torch.compile(bf16), torch.compile(fp8)) if compiled else (bf16, fp8)
        try:
            step = fp8_training.step_function(models, x, y, SHAPE.lr, fused=True)
            ms = [step_ms(m, step) for m in models]
        except Exception as error:  # noqa: BLE001 - a variant that cannot run is reported, not fatal
            print(f"{name:28} failed: {type(error).__name__}: {str(error)[:200]}")
            continue
        finally:
            fp8_training._quantize = triton_quantize
        print(f"{name:28} {ms[0]:8.2f} {ms[1]:8.2f} {ms[0] / ms[1]:7.3f}x", flush=True)
        del bf16, fp8, teacher, models


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
