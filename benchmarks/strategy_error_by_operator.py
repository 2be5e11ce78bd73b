"""Which operators a strategy's error comes from: each group of operators alone in a low precision.

    python benchmarks/strategy_error_by_operator.py [--device cuda] [--shape small|large]

Runs the mixed-precision suite's decode step (lowprec_workloads/transformer_block.py) with one operator
group changed at a time from the 16-bit strategy, and prints the logits' SQNR and KL against
float32 on the same weights. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import sys

import torch

from lowprec_workloads.strategies import custom, strategy
from lowprec_workloads.transformer_block import LARGE, SMALL, DecodeStep, Weights, logit_errors
from pytest_lowprec.formats.metrics import sqnr_db

GROUPS = {
    "attention projections fp8": {op: "fp8" for op in ("q_proj", "k_proj", "v_proj", "o_proj")},
    "ffn fp8": {op: "fp8" for op in ("ffn_gate", "ffn_up", "ffn_down")},
    "kv cache fp8": {"kv_cache": "fp8"},
    "kv cache nvfp4 (fp8 K, nvfp4 V)": {"kv_cache": "nvfp4"},
    "attention matmuls fp8": {"attn_qk": "fp8", "attn_pv": "fp8"},
    "all linears w4a16": {op: "w4a16" for op in ("q_proj", "k_proj", "v_proj", "o_proj", "ffn_gate", "ffn_up",
                                                  "ffn_down")},
}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shape", choices=("small", "large"), default="small")
    args = p.parse_args(argv)
    shape = SMALL if args.shape == "small" else LARGE
    cuda = None
    if args.device.startswith("cuda"):
        from lowprec_workloads.nvfp4_gemm import CudaKernels

        cuda = CudaKernels(torch.device(args.device))
    weights = Weights.random(shape, args.device, seed=11)
    reference = DecodeStep(weights, shape, None, cuda)()
    print(f"{'operators changed from 16-bit':36} {'SQNR dB':>8} {'KL nats':>9}   ({args.device}, {args.shape})")
    cases = {"none (fp16_baseline)": strategy("fp16_baseline"), "fp8_balanced": strategy("fp8_balanced")}
    cases.update({name: custom(name.replace(" ", "_"), change) for name, change in GROUPS.items()})
    for name, s in cases.items():
        logits = DecodeStep(weights, shape, s, cuda)()
        print(f"{name:36} {sqnr_db(reference, logits):8.2f} {logit_errors(reference, logits)['kl_nats']:9.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
