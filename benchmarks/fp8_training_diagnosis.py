"""Which part of the FP8 recipe costs the final loss: FP8 in both passes, forward only, backward
only, and the gradients' format (E5M2 or E4M3).

    python benchmarks/fp8_training_diagnosis.py [d] [steps]

Trains each variant from the suite's identical start on identical batches and prints the final-loss gap
against BF16. A diagnostic for recipe work, not a test.
"""

from __future__ import annotations

import copy
import statistics
import sys

sys.path.insert(0, "suites")

import torch  # noqa: E402
from fp8_training import E4M3, E5M2, Shape, pair, train  # noqa: E402


def main() -> None:
    d = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 150
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = Shape(d=d, blocks=2, tokens=4096 if device == "cuda" else 512, steps=steps, lr=3e-4 if d >= 1024 else 1e-3)
    bf16, fp8, teacher = pair(shape, device)
    ref = statistics.fmean(train(copy.deepcopy(bf16), teacher, shape, device)[0][-20:])
    print(f"d={d} tokens={shape.tokens} steps={steps} bf16 final loss {ref:.4f}")
    variants = [("both", E5M2), ("forward", E5M2), ("backward", E5M2), ("both", E4M3), ("backward", E4M3)]
    for passes, grad_dtype in variants:
        model = copy.deepcopy(bf16).set_fp8(True, passes, grad_dtype)
        low = statistics.fmean(train(model, teacher, shape, device)[0][-20:])
        grads = "e4m3" if grad_dtype == E4M3 else "e5m2"
        print(f"fp8 {passes:9} grads {grads} final loss {low:.4f}  gap {100 * (low - ref) / ref:+.2f}%")


if __name__ == "__main__":
    main()
