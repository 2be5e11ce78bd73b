"""Does a speedup's per-pair ratio drift within one measurement? The gate checks on 30 pairs, records on 120.

    python benchmarks/pair_drift.py OUT.json [--workloads fp8-linear-8192,...] [--repeats 3] [--window 30]
    # one H200, the three FP8 workloads and the control, 3 repeats: about 60 s; asserts nothing

The gate's check takes its first 30 pairs (`SamplingPolicy.min_pairs`) and a recording 120 (`record_pairs`),
each after the same stable warm-up. On the H200 the full gate's checks of the 8192 FP8 GEMM and linear read
0-3.4% under their recordings, never over, while the recordings of four GPUs agreed within 0.3%
(docs/measurements/gate-rerecord-h200-2026-12-02.md). If the ratio moves as a measurement goes on (a GPU
settling under its power cap while the pairs run back to back), a 30-pair check and a 120-pair recording
measure different states of the GPU.

For each workload this alternates the two modes `--repeats` times, check then recording, each through the
plugin's own timer and sampling loop (`measure_pairs`: graph replays, L2 flushed, A B / B A pairs). It prints
the ratio's median per window of `--window` pairs, each side's median time, and the clock and throttle
reasons before and after. `drift` is the last window's ratio over the first's, minus one.

Workloads (`suites/test_fp8_gemm.py`'s operands and callables):
  fp8-linear-N   BF16 `a @ b` against the Triton quantizer + `_scaled_mm` (the suite's `linear` scope)
  fp8-gemm-N     BF16 `a @ b` against `_scaled_mm` on pre-quantized operands (`gemm`)
  control-N      BF16 `a @ b` against itself: an A/A control, whose ratio should stay 1 in every window
with N one of 4096 and 8192.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from pytest_lowprec.stats import pair_ratios
from pytest_lowprec.timing import Pair, SamplingPolicy, Timer, measure_pairs

DEFAULT_WORKLOADS = ("fp8-linear-8192", "fp8-gemm-8192", "fp8-linear-4096", "control-8192")
SIZES = (4096, 8192)


@dataclass(frozen=True)
class Window:
    first: int  # index of the window's first pair in the measurement
    pairs: int
    ratio: float  # median of the per-pair ratios baseline / optimized, as the gate's speedup
    baseline_ms: float
    optimized_ms: float


def windows(pairs: list[Pair], width: int) -> list[Window]:
    """The measurement cut into consecutive windows of `width` pairs; a last, shorter one is kept when it holds
    at least half a window (fewer pairs than that would give a median too noisy to compare)."""
    if width < 1:
        raise ValueError(f"a window holds at least one pair, got {width}")
    out = []
    for first in range(0, len(pairs), width):
        chunk = pairs[first:first + width]
        if len(chunk) * 2 < width and out:
            break
        out.append(Window(first, len(chunk), float(statistics.median(pair_ratios(chunk))),
                          statistics.median(p[0] for p in chunk), statistics.median(p[1] for p in chunk)))
    return out


def drift(parts: list[Window]) -> float | None:
    """The last window's ratio over the first's, minus one; None with fewer than two windows."""
    if len(parts) < 2:
        return None
    return parts[-1].ratio / parts[0].ratio - 1.0


def measure_modes(timer: Timer, baseline: Callable[[], object], optimized: Callable[[], object], repeats: int,
                  width: int, policy: SamplingPolicy | None = None) -> list[dict]:
    """`repeats` times a check (the first `min_pairs`) then a recording (`record_pairs`), as the gate takes them:
    each through `measure_pairs` with a verdict that is always clear, so no batch is added."""
    policy = policy or SamplingPolicy()
    rows = []
    for repeat in range(repeats):
        for mode, recording in (("check", False), ("record", True)):
            m = measure_pairs(timer, baseline, optimized, policy, settled=lambda _pairs: True, recording=recording)
            parts = windows(m.pairs, width)
            rows.append({"repeat": repeat, "mode": mode, "pairs": len(m.pairs),
                         "ratio": float(statistics.median(pair_ratios(m.pairs))), "drift": drift(parts),
                         "windows": [asdict(w) for w in parts], "state_before": m.state_before,
                         "state_after": m.state_after, "raw_pairs": [list(p) for p in m.pairs]})
    return rows


def parse_workload(name: str) -> tuple[str, int]:
    """'fp8-linear-8192' -> ('fp8-linear', 8192); a clear error for any other name."""
    kind, _, size = name.rpartition("-")
    if kind not in ("fp8-linear", "fp8-gemm", "control") or not size.isdigit() or int(size) not in SIZES:
        raise ValueError(f"unknown workload {name!r}: use fp8-linear-N, fp8-gemm-N or control-N, N in {SIZES}")
    return kind, int(size)


def _callables(kind: str, n: int, device: str) -> tuple[Callable[[], object], Callable[[], object]]:
    from lowprec_workloads.fp8_linear import quantize_activation, square_operands
    from pytest_lowprec.formats.fp8 import quantize_tensorwise, scaled_mm

    a, b = square_operands(n, device)

    def bf16():
        return a @ b

    if kind == "control":
        return bf16, lambda: a @ b  # a second callable: the timer replays each side from its own graph
    a8, a_inv = quantize_tensorwise(a)
    b8, b_inv = quantize_tensorwise(b)
    b8 = b8.t().contiguous().t()  # _scaled_mm takes B column-major

    def fp8_gemm():
        return scaled_mm(a8, a_inv, b8, b_inv)

    def fp8_linear():
        q, inv = quantize_activation(a)
        return scaled_mm(q, inv, b8, b_inv)

    return bf16, fp8_gemm if kind == "fp8-gemm" else fp8_linear


def _clock(state: dict | None) -> str:
    if not state:
        return "-"
    return f"{state['sm_clock_mhz']} MHz {state['temperature_c']} C {state['throttle_reasons']}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window", type=int, default=30)
    args = parser.parse_args(argv)
    try:
        workloads = [parse_workload(w) for w in args.workloads.split(",")]
    except ValueError as e:
        parser.error(str(e))
    import torch

    from pytest_lowprec.hardware import probe_cuda
    from pytest_lowprec.timing import CudaEventTimer

    device = probe_cuda(torch)
    if device is None:
        print("needs a CUDA device: the drift in question is a GPU's under its power cap")
        return 1
    timer = CudaEventTimer(device.index, l2_bytes=device.l2_bytes, uuid=device.uuid, graphs=True)
    result = {"device": {"name": device.name, "uuid": device.uuid}, "window": args.window, "workloads": {}}
    print(f"{device.name} {device.uuid}; ratio per window of {args.window} pairs")
    print(f"  {'workload':16s} {'rep':>3s} {'mode':6s} {'pairs':>5s} {'ratio':>6s} {'drift':>7s}  "
          f"{'windows':32s} {'base/opt ms, first window':26s} state before -> after")
    for kind, n in workloads:
        name = f"{kind}-{n}"
        baseline, optimized = _callables(kind, n, "cuda")
        rows = measure_modes(timer, baseline, optimized, args.repeats, args.window)
        result["workloads"][name] = rows
        for row in rows:
            w0 = row["windows"][0]
            shift = "-" if row["drift"] is None else f"{row['drift']:+.2%}"
            by_window = " ".join(f"{w['ratio']:.3f}" for w in row["windows"])
            print(f"  {name:16s} {row['repeat']:3d} {row['mode']:6s} {row['pairs']:5d} {row['ratio']:6.3f} "
                  f"{shift:>7s}  {by_window:32s} "
                  f"{w0['baseline_ms']:.3f}/{w0['optimized_ms']:.3f}{'':13s} "
                  f"{_clock(row['state_before'])} -> {_clock(row['state_after'])}", flush=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
