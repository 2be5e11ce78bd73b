"""The pytest plugin that benchmarks/gate_quality.py loads into every run it starts.

    pytest <tests> -p gate_quality_probe --gq-out run.json [--gq-slowdown 0.05] [--gq-peers]

It wraps the gate's own timer (nothing of the gate's logic changes) to
- inject a controlled slowdown into the optimized side: a spin kernel after each call, sized
  so the optimized side runs `--gq-slowdown` slower, and the size it reached measured;
- time the same two callables as pytest-benchmark does by default (perf_counter around a
  synchronized call, rounds until 1 s, at least 5) and as triton.testing.do_bench does by default;
and writes every speed verdict, with the above and the run's phase times, to one JSON file.
Only the benchmark sets these options: the gate never injects anything by itself.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_lowprec.stats import pair_ratios
from pytest_lowprec.timing import default_timer

# pytest-benchmark's defaults (--benchmark-max-time, --benchmark-min-rounds, --benchmark-min-time).
PYTEST_BENCHMARK_MAX_TIME_S = 1.0
PYTEST_BENCHMARK_MIN_ROUNDS = 5
PYTEST_BENCHMARK_MIN_TIME_S = 5e-6
CALIBRATION_PAIRS = 20


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gate-quality", "gate-quality probe (set by benchmarks/gate_quality.py only)")
    group.addoption("--gq-out", default=None, metavar="PATH", help="write this run's speed verdicts as JSON")
    group.addoption("--gq-slowdown", type=float, default=0.0, metavar="FRACTION",
                    help="make every optimized side this much slower with a spin after each call")
    group.addoption("--gq-peers", action="store_true", default=False,
                    help="also time each speedup's sides the pytest-benchmark way and with do_bench")


def pytest_configure(config: pytest.Config) -> None:
    out = config.getoption("gq_out")
    if out:
        slowdown = config.getoption("gq_slowdown")
        if not 0.0 <= slowdown < 1.0:
            raise pytest.UsageError(f"--gq-slowdown must lie in [0, 1), got {slowdown}")
        config.pluginmanager.register(Probe(Path(out), slowdown, config.getoption("gq_peers")), "gate-quality-probe")


class Spinner:
    """Extra work of a chosen length: a GPU spin kernel (torch.cuda._sleep, in clock cycles) on the
    current stream, or a counted host loop (in iterations: the host timer times CPU work, and a loop
    that spins to a wall-clock deadline does less work the more the machine is loaded).
    `units_per_ms` converts a time into an amount."""

    def __init__(self, kind: str):
        self.kind = kind
        if kind == "cuda":
            import torch

            self._torch = torch
            self.units_per_ms = self._cycles_per_ms()
        else:
            self.units_per_ms = self._iterations_per_ms()

    def _cycles_per_ms(self) -> float:
        torch = self._torch
        cycles = 2_000_000
        times = []
        for _ in range(5):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.cuda._sleep(cycles)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return cycles / statistics.median(times[1:])

    @staticmethod
    def _iterations_per_ms() -> float:
        iterations, times = 200_000, []
        for _ in range(5):
            start = time.process_time_ns()
            _count(iterations)
            times.append((time.process_time_ns() - start) / 1e6)
        return iterations / statistics.median(times[1:])

    def run(self, amount: float) -> None:
        if self.kind == "cuda":
            self._torch.cuda._sleep(int(amount))
        else:
            _count(int(amount))


def _count(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i
    return total


def realized_slowdown(timer, clean: Callable[[], object], slowed: Callable[[], object], n: int) -> float:
    """How much slower `slowed` runs than `clean`, from pairs timed by the gate's own timer."""
    ratios = pair_ratios(timer.pairs(clean, slowed, n))  # t_clean / t_slowed per pair
    return 1.0 / float(statistics.median(ratios)) - 1.0


def calibrate_injection(timer, optimized: Callable[[], object], target: float, spinner: Spinner,
                        n: int = CALIBRATION_PAIRS) -> tuple[Callable[[], object], dict]:
    """Wrap `optimized` with a spin sized so it runs `target` slower, measured; returns the wrapper and
    what was reached. A launch alone can exceed a small target on a short kernel: then `reached` says so."""

    def with_spin(amount: float) -> Callable[[], object]:
        # A new callable per amount: a graph-timed side is captured once per callable, spin included.
        def slowed() -> None:
            optimized()
            spinner.run(amount)

        return slowed

    clean_ms = statistics.median(p[1] for p in timer.pairs(optimized, optimized, n))
    amount = 0.0
    slowed = with_spin(amount)
    floor = realized_slowdown(timer, optimized, slowed, n)  # the spin's launch cost alone
    reached = floor
    if floor < target:
        amount = (target - floor) * clean_ms * spinner.units_per_ms
        for _ in range(3):  # secant steps: the spin's rate under load differs from its idle rate
            slowed = with_spin(amount)
            reached = realized_slowdown(timer, optimized, slowed, n)
            if abs(reached - target) <= 0.1 * target or reached <= floor:
                break
            amount = max(0.0, amount * (target - floor) / (reached - floor))
        slowed = with_spin(amount)
        reached = realized_slowdown(timer, optimized, slowed, n)
    return slowed, {"target": target, "reached": reached, "launch_floor": floor, "spin_amount": amount,
                    "clean_ms": clean_ms}


def benchmark_style_seconds(fn: Callable[[], object], kind: str) -> float:
    """Median seconds of `fn` the way pytest-benchmark times by default: perf_counter around one
    call and a device synchronize, no warm-up, rounds until max_time (at least min_rounds)."""
    sync = _synchronize(kind)

    def call() -> float:
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    first = call()  # pytest-benchmark's calibration call; one iteration per round when above min_time
    iterations = max(1, math.ceil(PYTEST_BENCHMARK_MIN_TIME_S / max(first, 1e-9)))
    rounds = max(PYTEST_BENCHMARK_MIN_ROUNDS, math.ceil(PYTEST_BENCHMARK_MAX_TIME_S / (first * iterations)))
    times = []
    for _ in range(rounds):
        t = sum(call() for _ in range(iterations))
        times.append(t / iterations)
    return statistics.median(times)


def _synchronize(kind: str) -> Callable[[], None]:
    if kind != "cuda":
        return lambda: None
    import torch

    return torch.cuda.synchronize


def time_peers(baseline: Callable[[], object], optimized: Callable[[], object], kind: str) -> dict:
    """Each peer's speedup estimate for one pair of callables, one side after the other as they time them."""
    out = {}
    pb = [benchmark_style_seconds(f, kind) for f in (baseline, optimized)]
    out["pytest_benchmark"] = {"baseline_ms": 1e3 * pb[0], "optimized_ms": 1e3 * pb[1], "speedup": pb[0] / pb[1]}
    if kind == "cuda":
        from triton.testing import do_bench

        db = [do_bench(f) for f in (baseline, optimized)]  # defaults: warmup 25 ms, rep 100 ms, mean
        out["do_bench"] = {"baseline_ms": db[0], "optimized_ms": db[1], "speedup": db[0] / db[1]}
    return out


class ProbeTimer:
    """The gate's timer, with an injected slowdown on the optimized side and peer timings on request."""

    def __init__(self, inner, slowdown: float, peers: bool, spinner: Callable[[], Spinner]):
        self.kind = inner.kind
        self._inner = inner
        self._slowdown = slowdown
        self._peers = peers
        self._spinner = spinner
        self._slowed: dict[Callable[[], object], Callable[[], object]] = {}
        self.injection: dict | None = None
        self.peers: dict | None = None

    def warmup(self, baseline, optimized) -> None:
        self._inner.warmup(baseline, optimized)
        if self._peers and self.peers is None:
            self.peers = time_peers(baseline, optimized, self.kind)
        if self._slowdown > 0 and optimized not in self._slowed:
            self._slowed[optimized], self.injection = calibrate_injection(
                self._inner, optimized, self._slowdown, self._spinner())

    def pairs(self, baseline, optimized, n: int):
        return self._inner.pairs(baseline, self._slowed.get(optimized, optimized), n)

    def state(self):
        return self._inner.state()


class Probe:
    """Collects, per test, the timers its speedups used and the verdicts they led to."""

    def __init__(self, out: Path, slowdown: float, peers: bool):
        self._out = out
        self._slowdown = slowdown
        self._peers = peers
        self._spinners: dict[str, Spinner] = {}
        self._timers: dict[str, list[ProbeTimer]] = {}
        self._current: str | None = None
        self._rows: list[dict] = []
        self._phases = {"setup": 0.0, "call": 0.0, "teardown": 0.0}
        self._timed_s = 0.0
        self._timer_wall_s = 0.0
        self._outcomes: dict[str, str] = {}
        self._start = time.perf_counter()

    def _spinner(self, kind: str) -> Spinner:
        if kind not in self._spinners:
            self._spinners[kind] = Spinner(kind)
        return self._spinners[kind]

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        self._current = item.nodeid
        self._timers[item.nodeid] = []

    def pytest_lowprec_make_timer(self, config, device, kind, options):
        inner = default_timer(kind, device.index, device.l2_bytes, device.uuid, options)
        timer = ProbeTimer(inner, self._slowdown, self._peers, lambda: self._spinner(kind))
        self._timers.setdefault(self._current, []).append(timer)
        return timer

    def pytest_lowprec_record(self, config, record) -> None:
        self._timed_s += record.timed_s
        self._timer_wall_s += record.timer_wall_s
        timed = [v for v in record.verdicts if v.kind.value == "speedup" and v.status != "skip"]
        timers = self._timers.pop(record.nodeid, [])
        for verdict, timer in zip(timed, timers, strict=False):
            self._rows.append({
                "nodeid": record.nodeid, "metric": verdict.metric, "status": verdict.status,
                "value": verdict.value, "interval": list(verdict.interval or ()), "baseline": verdict.baseline,
                "delta_pct": verdict.delta_pct, "reasons": list(verdict.reasons), "flags": list(verdict.flags),
                "samples": verdict.extra.get("samples"), "baseline_ms": verdict.extra.get("baseline_ms"),
                "optimized_ms": verdict.extra.get("optimized_ms"),
                "state": [verdict.extra.get("state_before"), verdict.extra.get("state_after")],
                "injection": timer.injection, "peers": timer.peers,
            })
        for verdict in record.verdicts:
            if verdict.failed and verdict.kind.value != "speedup":
                self._rows.append({"nodeid": record.nodeid, "metric": verdict.metric, "status": verdict.status,
                                   "kind": verdict.kind.value, "reasons": list(verdict.reasons)})

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._phases[report.when] = self._phases.get(report.when, 0.0) + report.duration
        if report.when == "call" or report.outcome != "passed":
            self._outcomes[report.nodeid] = report.outcome

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        run = {
            "slowdown": self._slowdown, "exitstatus": int(exitstatus),
            "session_wall_s": time.perf_counter() - self._start,
            "phases_s": self._phases, "timed_s": self._timed_s, "timer_wall_s": self._timer_wall_s,
            "outcomes": self._outcomes, "rows": self._rows,
        }
        self._out.parent.mkdir(parents=True, exist_ok=True)
        self._out.write_text(json.dumps(run, indent=1))
