"""What each part of the NVFP4 training recipe is worth: the recipe, the naive control, and the recipe
with one part taken away or changed, each against the same BF16 run.

    python benchmarks/nvfp4_training_ablation.py [--d 4096] [--blocks 2] [--steps 150] [--lr 3e-4]
                                                 [--only NAME ...] [--seeds 0 1 2]

Every run trains a copy of the same student on the same batches (lowprec_workloads/nvfp4_training.py) and
prints its final-loss gap (training loss, mean of the last 20 steps), its held-out loss gap (every
linear in bfloat16 on batches no run trained on), FP8 warm-up length and wall time. `--seeds` repeats
each variant with other seeds of its stochastic rounding and RHT signs (same weights, data and steps):
the spread is how much of a gap is the draw. A diagnostic, not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import torch

from lowprec_workloads.fp8_training import Shape
from lowprec_workloads.nvfp4_training import (
    NAIVE,
    RECIPE,
    Calibration,
    students,
    train_bf16,
    train_nvfp4,
    training_path,
)

VARIANTS = {
    "recipe": (RECIPE, Calibration()),
    "naive": (NAIVE, Calibration()),
    "recipe, no warm-up": (RECIPE, Calibration(min_steps=0, max_steps=0)),
    "naive, no warm-up": (NAIVE, Calibration(min_steps=0, max_steps=0)),
    "recipe, warm-up 40": (RECIPE, Calibration(min_steps=40, max_steps=40)),
    "recipe, no stochastic rounding": (dataclasses.replace(RECIPE, stochastic_gradients=False), Calibration()),
    "recipe, no RHT": (dataclasses.replace(RECIPE, hadamard_wgrad=False), Calibration()),
    "recipe, 1x16 weights": (dataclasses.replace(RECIPE, weight_tile=(1, 16)), Calibration()),
    "recipe, last linear nvfp4": (dataclasses.replace(RECIPE, bf16_last=0), Calibration()),
    "recipe, last 2 linears bf16": (dataclasses.replace(RECIPE, bf16_last=2), Calibration()),
    "naive, last 2 linears bf16": (dataclasses.replace(NAIVE, bf16_last=2), Calibration()),
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--d", type=int, default=4096)
    parser.add_argument("--tokens", type=int)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokens = args.tokens or (4096 if device == "cuda" else 512)
    shape = Shape(d=args.d, blocks=args.blocks, tokens=tokens, steps=args.steps, lr=args.lr)
    path = training_path(torch.cuda.get_device_capability() if device == "cuda" else None)
    student, teacher = students(shape, device)
    start = time.perf_counter()
    ref = train_bf16(student, teacher, shape, device)
    print(f"{shape}, path {path}: bf16 first/last-{20} loss {ref.losses[0] / ref.final:.2f}x "
          f"({time.perf_counter() - start:.1f} s)")
    for name, seed in ((n, s) for n in args.only or VARIANTS for s in args.seeds):
        recipe, calibration = VARIANTS[name]
        start = time.perf_counter()
        run = train_nvfp4(student, teacher, shape, device, recipe, path, dataclasses.replace(calibration), seed)
        label = f"{name}, seed {seed}" if seed else name
        print(f"{label:32} gap {100 * run.gap(ref):+6.2f}%  held-out {100 * run.held_out_gap(ref):+6.2f}%  "
              f"fp8 warm-up {run.switch_step:3d} steps  "
              f"skipped {run.skipped}  ({time.perf_counter() - start:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
