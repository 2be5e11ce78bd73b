"""Does a speedup's per-pair ratio drift within one measurement? The gate checks on 30 pairs, records on 120.

    python benchmarks/pair_drift.py OUT.json [--workloads fp8-linear-8192,...] [--repeats 4] [--window 30]
        [--idle-s 2]     # one H200, the three FP8 workloads and the control, 4 repeats: about 2 min
        # (estimated from the gate's times; not yet run on a GPU); asserts nothing

The gate's check takes its first 30 pairs (`SamplingPolicy.min_pairs`) and a recording 120 (`record_pairs`),
each after the same stable warm-up. On the H200 the full gate's checks of the 8192 FP8 GEMM and linear read
0-3.4% under their recordings, never over, while the recordings of four GPUs agreed within 0.3%
(docs/measurements/gate-rerecord-h200-2026-12-02.md). If the ratio moves as a measurement goes on (a GPU
settling under its power cap while the pairs run back to back), a 30-pair check and a 120-pair recording
measure different states of the GPU.

For each workload this takes a check and a recording `--repeats` times, check first in even repeats and
recording first in odd ones, each after `--idle-s` seconds with the GPU idle: a gate check comes after host
work and other tests, not straight after 120 pairs. Each goes through the plugin's timer (`default_timer`, with
the options the suites' `graphs=True` speedups get: graph replays, L2 flushed, A B / B A pairs) and its sampling
loop (`measure_pairs`, the same warm-up). A check here is the gate's first measurement only: the extra batches
an unclear verdict takes and the re-measure of a failure are left out. It prints the ratio's median per window
of `--window` pairs with its 95% bootstrap interval, each side's median time, and the clock and throttle
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
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from pytest_lowprec.stats import pair_ratios, summarize_pairs
from pytest_lowprec.timing import Pair, SamplingPolicy, Timer, measure_pairs

DEFAULT_WORKLOADS = ("fp8-linear-8192", "fp8-gemm-8192", "fp8-linear-4096", "control-8192")
SIZES = (4096, 8192)
WINDOWS_COLUMN = 4 * 22  # a recording's four windows, "1.743 [1.741,1.745]" each


@dataclass(frozen=True)
class Window:
    first: int  # index of the window's first pair in the measurement
    pairs: int
    ratio: float  # median of the per-pair ratios baseline / optimized, as the gate's speedup
    low: float  # its 95% bootstrap interval, the gate's
    high: float
    baseline_ms: float
    optimized_ms: float


def check_width(width: int) -> None:
    """A window holds as many A B pairs as B A ones (the timer alternates them), so order effects cancel in it."""
    if width < 2 or width % 2:
        raise ValueError(f"a window holds an even number of pairs, at least 2, got {width}")


def windows(pairs: list[Pair], width: int) -> list[Window]:
    """The measurement cut into consecutive windows of `width` pairs; a last, shorter one is kept when it holds
    at least half a window (fewer pairs than that would give a median too noisy to compare)."""
    check_width(width)
    out = []
    for first in range(0, len(pairs), width):
        chunk = pairs[first:first + width]
        if len(chunk) * 2 < width and out:
            break
        summary = summarize_pairs(chunk)
        out.append(Window(first, len(chunk), summary.median, summary.low, summary.high,
                          statistics.median(p[0] for p in chunk), statistics.median(p[1] for p in chunk)))
    return out


def drift(parts: list[Window]) -> float | None:
    """The last window's ratio over the first's, minus one; None with fewer than two windows."""
    if len(parts) < 2:
        return None
    return parts[-1].ratio / parts[0].ratio - 1.0


def measure_modes(timer: Timer, baseline: Callable[[], object], optimized: Callable[[], object], repeats: int,
                  width: int, policy: SamplingPolicy | None = None, idle: Callable[[], None] = lambda: None,
                  clock: Callable[[], float] = time.perf_counter) -> list[dict]:
    """`repeats` times a check (the first `min_pairs`) and a recording (`record_pairs`), as the gate takes them,
    the check first in even repeats: each after `idle()`, through `measure_pairs` with a verdict that is always
    clear, so no batch is added. `started_s` is each measurement's start, in seconds from the call's."""
    check_width(width)
    policy = policy or SamplingPolicy()
    modes = (("check", False), ("record", True))
    rows = []
    t0 = clock()
    for repeat in range(repeats):
        for mode, recording in modes if repeat % 2 == 0 else modes[::-1]:
            idle()
            started = clock() - t0
            m = measure_pairs(timer, baseline, optimized, policy, settled=lambda _pairs: True, recording=recording)
            parts = windows(m.pairs, width)
            rows.append({"repeat": repeat, "mode": mode, "started_s": started, "pairs": len(m.pairs),
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


def callables(kind: str, n: int, device: str) -> tuple[Callable[[], object], Callable[[], object]]:
    """The suite's (baseline, optimized) for `kind` at size n: BF16 `a @ b`, and the FP8 side or, for the
    control, a second BF16 `a @ b`."""
    from lowprec_workloads.fp8_linear import square_fp8_sides, square_operands

    a, b = square_operands(n, device)

    def bf16():
        return a @ b

    if kind == "control":
        return bf16, lambda: a @ b  # a second callable: the timer replays each side from its own graph
    fp8_gemm, fp8_linear = square_fp8_sides(a, b)
    return bf16, fp8_gemm if kind == "fp8-gemm" else fp8_linear


def _state_text(state: dict | None) -> str:
    if not state:
        return "-"
    return f"{state['sm_clock_mhz']} MHz {state['temperature_c']} C {state['throttle_reasons']}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS))
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--window", type=int, default=30)
    parser.add_argument("--idle-s", type=float, default=2.0, help="the GPU idle this long before each measurement")
    args = parser.parse_args(argv)
    try:
        workloads = [parse_workload(w) for w in args.workloads.split(",")]
        check_width(args.window)
    except ValueError as e:
        parser.error(str(e))
    if args.repeats < 1 or not args.idle_s >= 0:
        parser.error(f"need --repeats >= 1 and --idle-s >= 0, got {args.repeats} and {args.idle_s}")
    import torch

    from pytest_lowprec.hardware import probe_cuda
    from pytest_lowprec.timing import default_timer

    device = probe_cuda(torch)
    if device is None:
        print("needs a CUDA device: the drift in question is a GPU's under its power cap")
        return 1

    def idle() -> None:
        torch.cuda.synchronize()
        time.sleep(args.idle_s)

    result = {"device": {"name": device.name, "uuid": device.uuid}, "window": args.window, "workloads": {}}
    print(f"{device.name} {device.uuid}; ratio per window of {args.window} pairs")
    print(f"  {'workload':16s} {'rep':>3s} {'mode':6s} {'at s':>6s} {'pairs':>5s} {'ratio':>6s} {'drift':>7s}  "
          f"{'windows: ratio [95% interval]':{WINDOWS_COLUMN}s}  {'base/opt ms, 1st window':23s}  "
          "state before -> after")
    for kind, n in workloads:
        name = f"{kind}-{n}"
        baseline, optimized = callables(kind, n, "cuda")
        # A timer a workload, as the plugin builds one a speedup: its graphs and flush buffer go with it.
        timer = default_timer("cuda", device.index, device.l2_bytes, device.uuid, {"graphs": True})
        rows = measure_modes(timer, baseline, optimized, args.repeats, args.window, idle=idle)
        result["workloads"][name] = rows
        for row in rows:
            w0 = row["windows"][0]
            shift = "-" if row["drift"] is None else f"{row['drift']:+.2%}"
            by_window = " ".join(f"{w['ratio']:.3f} [{w['low']:.3f},{w['high']:.3f}]" for w in row["windows"])
            first_window = f"{w0['baseline_ms']:.3f}/{w0['optimized_ms']:.3f}"
            print(f"  {name:16s} {row['repeat']:3d} {row['mode']:6s} {row['started_s']:6.1f} {row['pairs']:5d} "
                  f"{row['ratio']:6.3f} {shift:>7s}  {by_window:{WINDOWS_COLUMN}s}  {first_window:23s}  "
                  f"{_state_text(row['state_before'])} -> {_state_text(row['state_after'])}", flush=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
