"""Timers for paired A/B measurement, and the sampling loop that stops once a verdict is clear.

A timer returns (baseline_ms, optimized_ms) pairs, measured alternately so both
sides see the same clocks and temperature. The loop takes more pairs while the
confidence interval straddles a decision line, up to a count and a time budget.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .hardware import device_state

Pair = tuple[float, float]


class Timer(Protocol):
    """What the gate needs of a timer; tests inject deterministic fakes through this shape."""

    kind: str

    def warmup(self, baseline: Callable[[], object], optimized: Callable[[], object]) -> None: ...

    def pairs(self, baseline: Callable[[], object], optimized: Callable[[], object], n: int) -> list[Pair]: ...

    def state(self) -> dict | None: ...


# (kind "cuda" or "cpu", the speedup call's timing options) -> the Timer for that speedup.
TimerFactory = Callable[[str, dict], Timer]


@dataclass(frozen=True)
class SamplingPolicy:
    min_pairs: int = 30
    batch: int = 30
    max_pairs: int = 600
    budget_s: float = 8.0
    # Recording a baseline takes more pairs: the noise stored with it sets later
    # tolerances, and a median-absolute-deviation estimate from 30 pairs is off by ~30%.
    record_pairs: int = 120
    # A speedup that fails is measured once more, warm-up included, and fails only if that fails
    # too: the gate-quality study (docs/measurements/gate-quality-h100-2026-11-22.md) saw one measurement in 19
    # processes run 2.6x slow with nothing changed, while a real slowdown fails every measurement.
    confirm: int = 1

    def __post_init__(self) -> None:
        if self.min_pairs < 3:
            raise ValueError(f"min_pairs must be >= 3 for an interval, got {self.min_pairs}")
        if self.batch < 1 or self.max_pairs < self.min_pairs:
            raise ValueError(f"need batch >= 1 and max_pairs >= min_pairs, got {self}")
        if self.record_pairs < self.min_pairs:
            raise ValueError(f"need record_pairs >= min_pairs, got {self}")
        if self.budget_s <= 0:
            raise ValueError(f"budget_s must be positive, got {self.budget_s}")
        if self.confirm < 0:
            raise ValueError(f"confirm must be >= 0, got {self.confirm}")


@dataclass(frozen=True)
class Measurement:
    pairs: list[Pair]
    settled: bool
    state_before: dict | None
    state_after: dict | None
    timed_s: float  # sum of the timed samples: the work the verdict rests on
    wall_s: float  # host time of the whole measurement, warm-up included
    timer: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def throttled(self) -> bool:
        return any(s and s.get("throttled") for s in (self.state_before, self.state_after))


def _order(i: int) -> tuple[int, int]:
    """A B, then B A, then A B ...: each side goes first half the time, so order effects cancel."""
    return (0, 1) if i % 2 == 0 else (1, 0)


class _StableWarmup:
    """Warm up in rounds until each side's median moves by less than `rel` between rounds."""

    def __init__(self, rounds: int = 12, per_round: int = 3, rel: float = 0.05, max_s: float = 3.0):
        self.rounds, self.per_round, self.rel, self.max_s = rounds, per_round, rel, max_s

    def run(self, timer: Timer, baseline, optimized) -> None:
        start = time.perf_counter()
        previous: tuple[float, float] | None = None
        for _ in range(self.rounds):
            batch = timer.pairs(baseline, optimized, self.per_round)
            current = (statistics.median(p[0] for p in batch), statistics.median(p[1] for p in batch))
            if previous is not None and all(
                abs(c - p) <= self.rel * p for c, p in zip(current, previous, strict=True)
            ):
                return
            if time.perf_counter() - start > self.max_s:
                return
            previous = current


class HostTimer:
    """The process's CPU time around CPU callables: the `cpu` key's timer. Never for CUDA work (it would
    time launches). CPU time, not wall time: on a shared machine wall time measures the scheduler (a
    loaded 2-core runner stretched single calls by 2x and more), CPU time the work. torch runs on the
    fixed thread count the plugin sets, so a parallel kernel's work is comparable run to run."""

    kind = "host"

    def __init__(self, warmup: _StableWarmup | None = None, clock: Callable[[], int] = time.process_time_ns):
        self._warmup = warmup or _StableWarmup()
        self._clock = clock

    def warmup(self, baseline, optimized) -> None:
        self._warmup.run(self, baseline, optimized)

    def pairs(self, baseline, optimized, n: int) -> list[Pair]:
        fns = (baseline, optimized)
        out = []
        for i in range(n):
            t = [0.0, 0.0]
            for side in _order(i):
                t0 = self._clock()
                fns[side]()
                t[side] = (self._clock() - t0) / 1e6
            out.append((t[0], t[1]))
        return out

    def state(self) -> dict | None:
        return None


class CudaEventTimer:
    """CUDA events around each call, L2 flushed before each, one synchronize per batch."""

    kind = "cuda"

    def __init__(
        self,
        device_index: int,
        *,
        l2_bytes: int | None,
        uuid: str | None = None,
        flush_l2: bool = True,
        graphs: bool = False,
        warmup: _StableWarmup | None = None,
        state_reader: Callable[[str | None], dict | None] = device_state,
    ):
        import torch

        self._torch = torch
        self._index = device_index
        self._gpu_id = uuid or str(device_index)
        self._graphs = graphs
        # Keyed by the callable itself, which the dict keeps alive: an id() key could be
        # reused by a new callable after the old one is freed, replaying a stale graph.
        self._graph_cache: dict[Callable[[], object], Callable[[], None]] = {}
        self._warmup = warmup or _StableWarmup()
        self._state_reader = state_reader
        # Twice the L2 so every line the workload left there is evicted.
        size = 2 * (l2_bytes or 64 * 2**20)
        self._flush_buf = (
            torch.empty(size // 4, dtype=torch.int32, device=f"cuda:{device_index}") if flush_l2 else None
        )

    def _replayable(self, fn: Callable[[], object]) -> Callable[[], object]:
        if not self._graphs:
            return fn
        if fn not in self._graph_cache:
            torch = self._torch
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                fn()  # one eager call on a side stream, as graph capture requires
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn()
            self._graph_cache[fn] = graph.replay
        return self._graph_cache[fn]

    def warmup(self, baseline, optimized) -> None:
        self._warmup.run(self, baseline, optimized)

    def pairs(self, baseline, optimized, n: int) -> list[Pair]:
        torch = self._torch
        fns = (self._replayable(baseline), self._replayable(optimized))
        events = []
        for i in range(n):
            row = [None, None]
            for side in _order(i):
                if self._flush_buf is not None:
                    self._flush_buf.zero_()
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fns[side]()
                end.record()
                row[side] = (start, end)
            events.append(row)
        torch.cuda.synchronize(self._index)
        return [(a[0].elapsed_time(a[1]), b[0].elapsed_time(b[1])) for a, b in events]

    def state(self) -> dict | None:
        return self._state_reader(self._gpu_id)


def cuda_event_times_ms(fn: Callable[[], object], reps: int, warmup: int = 2) -> list[float]:
    """Times of `reps` calls of `fn` on the current stream, by CUDA events, after `warmup` calls: one
    side on its own, warm L2, no interleaving, for the figures a workload derives (a copy's time, a
    ceiling) rather than the A/B pairs a verdict needs (`CudaEventTimer`)."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def cuda_median_ms(fn: Callable[[], object], reps: int = 15) -> float:
    """Median time of `fn` on the current stream, by CUDA events, after two warm-up calls."""
    return statistics.median(cuda_event_times_ms(fn, reps))


def default_timer(kind: str, device_index: int, l2_bytes: int | None, uuid: str | None, options: dict) -> Timer:
    """The plugin's timer for `kind` work when no pytest_lowprec_make_timer implementation gives one;
    wrappers (the gate-quality benchmark's probe) build on it."""
    if kind == "cpu":
        return HostTimer()
    return CudaEventTimer(device_index, l2_bytes=l2_bytes, uuid=uuid, **options)


def measure_pairs(
    timer: Timer,
    baseline: Callable[[], object],
    optimized: Callable[[], object],
    policy: SamplingPolicy,
    settled: Callable[[list[Pair]], bool],
    recording: bool = False,
) -> Measurement:
    """Warm up, then sample pairs until `settled` says the verdict is clear, or the budget is spent.

    When `recording` a baseline, the first batch is `policy.record_pairs` long.
    """
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # a collection inside a timed call would land on one side only
    try:
        start = time.perf_counter()
        timer.warmup(baseline, optimized)
        before = timer.state()
        sampling_start = time.perf_counter()
        first = min(policy.record_pairs, policy.max_pairs) if recording else policy.min_pairs
        pairs = timer.pairs(baseline, optimized, first)
        done = settled(pairs)
        while (
            not done
            and len(pairs) < policy.max_pairs
            and time.perf_counter() - sampling_start < policy.budget_s
        ):
            pairs += timer.pairs(baseline, optimized, min(policy.batch, policy.max_pairs - len(pairs)))
            done = settled(pairs)
        after = timer.state()
        wall = time.perf_counter() - start
    finally:
        if gc_was_enabled:
            gc.enable()
    timed = sum(a + b for a, b in pairs) / 1e3
    return Measurement(pairs, done, before, after, timed, wall, timer=timer.kind)
