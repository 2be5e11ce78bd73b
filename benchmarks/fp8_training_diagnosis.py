"""Which part of the FP8 recipe costs the final loss: fast (reduced-precision) accumulation per GEMM,
each GEMM alone in FP8, the gradients' format (E5M2 or E4M3), and per-tensor against row scales.

    python benchmarks/fp8_training_diagnosis.py [d] [steps]

Trains each variant from the suite's identical start on identical batches and prints the final-loss gap
against BF16. A diagnostic for recipe work, not a test.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time

import torch

from lowprec_workloads.fp8_training import E4M3, GEMMS, Fp8Recipe, Shape, pair, train

VARIANTS = [
    Fp8Recipe(),
    Fp8Recipe(fast_accum=GEMMS),
    Fp8Recipe(fast_accum=()),
    Fp8Recipe(gemms=("fprop",)),
    Fp8Recipe(gemms=("dgrad",)),
    Fp8Recipe(gemms=("dgrad",), fast_accum=GEMMS),
    Fp8Recipe(gemms=("wgrad",)),
    Fp8Recipe(grad_dtype=E4M3),
    Fp8Recipe(scaling="row"),
]


def main() -> None:
    d = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 150
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = Shape(d=d, blocks=2, tokens=4096 if device == "cuda" else 512, steps=steps, lr=3e-4 if d >= 1024 else 1e-3)
    bf16, _, teacher = pair(shape, device)
    ref = statistics.fmean(train(copy.deepcopy(bf16), teacher, shape, device)[0][-20:])
    print(f"d={d} tokens={shape.tokens} steps={steps} lr={shape.lr:g} bf16 final loss {ref:.4f}")
    for recipe in VARIANTS:
        start = time.perf_counter()
        try:
            low = statistics.fmean(train(copy.deepcopy(bf16).set_fp8(True, recipe), teacher, shape, device)[0][-20:])
        except RuntimeError as exc:  # a GEMM this build of torch does not have (e.g. row scales with E5M2)
            print(f"{recipe.label:75} failed: {str(exc).splitlines()[0][:100]}")
            continue
        print(f"{recipe.label:75} final loss {low:.4f}  gap {100 * (low - ref) / ref:+.2f}%  "
              f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
