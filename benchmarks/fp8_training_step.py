"""Where the FP8 training step's time goes, and what compiled quantizers and a fused optimizer buy.

    python benchmarks/fp8_training_step.py

The chapter's shape (two blocks, d=4096, 4096 tokens). Times one optimizer step (forward, backward,
AdamW) of BF16 and of FP8 (suites/fp8_training.py's recipe) under four settings: eager quantizers or
quantize_tensorwise under torch.compile, and AdamW's foreach or fused implementation (the same for
both models). Median of 20 steps with CUDA events after 5 warm-up steps. The issue's target is 1.3x.
A benchmark: it prints a table and asserts nothing.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "suites"))

import fp8_training  # noqa: E402
from fp8_training import Shape, batch, pair  # noqa: E402
from stream_overlap import cuda_event_times_ms  # noqa: E402

from pytest_lowprec.formats import fp8 as fp8_format  # noqa: E402


def step_ms(model, step) -> float:
    return statistics.median(cuda_event_times_ms(lambda: step(model), reps=20, warmup=5))


def main() -> int:
    if not torch.cuda.is_available():
        print("needs a CUDA device")
        return 1
    shape = Shape(d=4096, blocks=2, tokens=4096, steps=1, lr=3e-4)
    eager = fp8_training.quantize_tensorwise
    print(f"{'quantizers':10} {'adamw':8} {'bf16 ms':>8} {'fp8 ms':>8} {'speedup':>8}")
    for quantizers in ("eager", "compiled"):
        fp8_training.quantize_tensorwise = (eager if quantizers == "eager"
                                            else torch.compile(fp8_format.quantize_tensorwise, dynamic=False))
        for fused in (False, True):
            bf16, fp8, teacher = pair(shape, "cuda")
            x, y = batch(0, shape, teacher, "cuda", None)
            step = fp8_training.step_function((bf16, fp8), x, y, shape.lr, fused=fused)
            ms = {name: step_ms(model, step) for name, model in (("bf16", bf16), ("fp8", fp8))}
            print(f"{quantizers:10} {'fused' if fused else 'foreach':8} {ms['bf16']:8.2f} {ms['fp8']:8.2f} "
                  f"{ms['bf16'] / ms['fp8']:7.3f}x", flush=True)
            del bf16, fp8, teacher
    fp8_training.quantize_tensorwise = eager
    return 0


if __name__ == "__main__":
    sys.exit(main())
