"""The measure-and-confirm loop of one speedup: sample until the verdict is clear, measure a failing
speedup again before it fails, and record a new baseline in rounds.

No pytest and no policy of its own: where the decision lines lie and whether a summary fails are
gate.py's answers, asked here; what the verdict, the report and the baseline file keep of a
measurement is read off the returned SpeedResult.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from . import gate
from .config import GateConfig
from .stats import RatioSummary, side_medians, summarize_pairs
from .timing import Measurement, Pair, SamplingPolicy, Timer, measure_pairs

# Progress goes to logging, which pytest users already steer: `--log-cli-level=INFO` shows it live,
# a failed test shows it under "Captured log call", and -q and xdist output stay as they were.
LOGGER = "pytest_lowprec"


@dataclass(frozen=True)
class SpeedResult:
    """What the verdict rests on: the summary of the last measurement (of every round's pairs when
    recording in rounds), each side's median ms, and how the measurement went."""

    summary: RatioSummary
    last: Measurement
    sides_ms: tuple[float, float]
    rounds: tuple[float, ...]  # each round's median when a baseline was recorded in rounds
    refuted: tuple[tuple[float, float], ...]  # intervals of failing measurements a later one refuted
    confirmed: bool  # every measurement failed
    measurements: int
    timed_s: float
    wall_s: float

    @property
    def settled(self) -> bool:
        return self.last.settled

    @property
    def spread(self) -> float | None:
        """Relative range of the rounds' medians: how far one recording moves from the next."""
        if len(self.rounds) < 2:
            return None
        return (max(self.rounds) - min(self.rounds)) / statistics.median(self.rounds)

    def flags(self, *, after_trace: bool) -> tuple[str, ...]:
        """What a reader of the verdict must know about how it was measured. `after_trace`: an eager
        measurement taken after torch.profiler ran in this process, whose launches CUPTI slows."""
        return tuple(flag for flag, on in (("throttled", self.last.throttled), ("after-trace", after_trace),
                                           ("remeasured", bool(self.refuted)), ("confirmed", self.confirmed)) if on)

    def details(self, expectation: dict | None, cpu_threads: int) -> dict:
        """The verdict's `extra`: the timer, the device state around it, and the measurements taken."""
        m = self.last
        out = {"timer": m.timer, "samples": self.summary.n, "state_before": m.state_before,
               "state_after": m.state_after, "measurements": self.measurements,
               "refuted": [list(r) for r in self.refuted], "rounds": list(self.rounds), "spread": self.spread}
        if expectation is not None:
            out["expectation"] = expectation
        if m.timer == "host":
            out["cpu_threads"] = cpu_threads
        return out

    def stored(self, predicted: float | None) -> dict | None:
        """The baseline file's metric, or None for a speedup no file can hold (NaN or Inf)."""
        summary = self.summary
        if not math.isfinite(summary.median):
            return None
        out = {"kind": "speedup", "value": summary.median, "unit": "x", **summary.as_dict(),
               "baseline_ms": self.sides_ms[0], "optimized_ms": self.sides_ms[1], "timer": self.last.timer,
               "throttled": self.last.throttled}
        if self.rounds:
            out.update(rounds=list(self.rounds), spread=self.spread)
        if predicted is not None:
            out["predicted"] = predicted
        return out


def measure_gated_speedup(
    timer: Timer,
    baseline: Callable[[], object],
    optimized: Callable[[], object],
    config: GateConfig,
    *,
    floor: float | None,
    view: gate.BaselineView,
    tolerance: gate.SpeedupTolerance,
    name: str,
    label: str,
    bracket: Callable[[], object],
) -> SpeedResult:
    """measure_speedup with the gate's decision lines for this floor and stored baseline: sampling stops
    when no line lies inside the interval, and a measurement is taken again when the gate fails it.
    `label` names the measurement in the progress log (test id and speedup name)."""
    lines = gate.speedup_decision_lines(floor, view, tolerance, config.update)
    conf, seed = config.confidence, config.seed
    return measure_speedup(
        timer, baseline, optimized, config.sampling,
        settled=lambda pairs: gate.is_settled(summarize_pairs(pairs, conf, seed=seed), lines),
        fails=lambda summary: gate.judge_speedup(name, summary, floor, view, tolerance).failed,
        recording=config.update, rounds=config.record_rounds if config.update else 1,
        confidence=conf, seed=seed, bracket=bracket, label=label,
    )


def measure_speedup(
    timer: Timer,
    baseline: Callable[[], object],
    optimized: Callable[[], object],
    policy: SamplingPolicy,
    *,
    settled: Callable[[list[Pair]], bool],
    fails: Callable[[RatioSummary], bool],
    recording: bool,
    rounds: int,
    confidence: float,
    seed: int,
    bracket: Callable[[], object],
    label: str = "speedup",
) -> SpeedResult:
    """Measure until settled; a failing measurement is taken again (`policy.confirm` times) and stands only
    when every one fails, since a transient state of the machine fails one measurement and a slowdown
    all of them. Recording takes `rounds` measurements, warm-up included, and pools their pairs.
    `bracket()` returns a context manager put around each measurement (the NVTX range)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    log = logging.getLogger(LOGGER)
    timed = wall = 0.0
    failed: list[tuple[float, float]] = []
    medians: list[float] = []
    pooled: list[Pair] = []
    while True:
        with bracket():
            m = measure_pairs(timer, baseline, optimized, policy, settled, recording=recording)
        timed, wall = timed + m.timed_s, wall + m.wall_s
        if recording:
            pooled += m.pairs
            round_summary = summarize_pairs(m.pairs, confidence, seed=seed)
            medians.append(round_summary.median)
            _log_measurement(log, label, f"round {len(medians)} of {rounds}", round_summary, m)
            if len(medians) < rounds:
                continue
            pairs = pooled
        else:
            pairs = m.pairs
        summary = summarize_pairs(pairs, confidence, seed=seed)
        if recording:
            break
        failing = fails(summary)
        more = failing and len(failed) < policy.confirm
        _log_measurement(log, label, f"measurement {len(failed) + 1}", summary, m,
                         "fails: measuring again" if more else ("fails" if failing else ""))
        if not failing:
            break
        failed.append((summary.low, summary.high))
        if not more:
            break
    passed_last = len(failed) <= policy.confirm
    return SpeedResult(
        summary=summary,
        last=m,
        sides_ms=side_medians(pairs),
        rounds=tuple(medians) if rounds > 1 else (),
        refuted=tuple(failed) if failed and passed_last else (),
        confirmed=len(failed) > 1 and not passed_last,
        measurements=len(medians) if recording else len(failed) + (1 if passed_last else 0),
        timed_s=timed,
        wall_s=wall,
    )


def _log_measurement(log: logging.Logger, label: str, which: str, summary: RatioSummary, m: Measurement,
                     outcome: str = "") -> None:
    log.info("%s: %s: %.3fx [%.3f, %.3f] from %d pairs in %.1f s%s%s", label, which, summary.median, summary.low,
             summary.high, summary.n, m.wall_s, "" if m.settled else ", unsettled", f"; {outcome}" if outcome else "")
