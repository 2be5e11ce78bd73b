"""The measure-and-confirm loop of one speedup: sample until the verdict is clear, measure a failing
speedup again before it fails, and record a new baseline in rounds.

No pytest, no judging of its own: the caller says where the decision lines are and whether a summary
fails, so the policy stays in gate.py.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

from .stats import RatioSummary, side_medians, summarize_pairs
from .timing import Measurement, Pair, SamplingPolicy, Timer, measure_pairs


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
) -> SpeedResult:
    """Measure until settled; a failing measurement is taken again (`policy.confirm` times) and stands only
    when every one fails, since a transient state of the machine fails one measurement and a slowdown
    all of them. Recording takes `rounds` measurements, warm-up included, and pools their pairs.
    `bracket()` returns a context manager put around each measurement (the NVTX range)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
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
            medians.append(summarize_pairs(m.pairs, confidence, seed=seed).median)
            if len(medians) < rounds:
                continue
            pairs = pooled
        else:
            pairs = m.pairs
        summary = summarize_pairs(pairs, confidence, seed=seed)
        if recording or not fails(summary):
            break
        failed.append((summary.low, summary.high))
        if len(failed) > policy.confirm:
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
