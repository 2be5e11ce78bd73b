"""Verdicts: accuracy bounds, speedup floors, memory bounds, and regression against a baseline.

Pure: every function takes numbers and plain dicts and returns frozen verdicts.
The policy for stored baselines (missing, stale, regressed, improved, being
updated) lives in `baseline_view` and the `judge_*` functions, and nowhere else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

from .stats import RatioSummary


class Status(str, Enum):
    """A verdict's outcome. Only FAIL fails a test by itself; UNGATED and INCONCLUSIVE are visible
    everywhere and fail under --lowprec-strict (the reason is then added and the status is FAIL)."""

    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    UNGATED = "ungated"  # neither a bound nor a usable baseline: nothing was asserted
    INCONCLUSIVE = "inconclusive"  # the interval still straddled a decision line when sampling ended


PASS, FAIL, SKIP, UNGATED, INCONCLUSIVE = Status.PASS, Status.FAIL, Status.SKIP, Status.UNGATED, Status.INCONCLUSIVE


class Kind(str, Enum):
    SPEEDUP = "speedup"
    ACCURACY = "accuracy"
    MEMORY = "memory"
    EFFICIENCY = "efficiency"  # a ratio of measured times (overlap efficiency, fraction of a ceiling)
    INFO = "info"
    PATH = "path"  # the kernels a side ran: proof that the low-precision path was taken
    TRACE = "trace"  # a profiler trace that could not be taken honestly


@dataclass(frozen=True)
class Margin:
    """How far a value may drift from its baseline in the bad direction: max(abs, rel*|baseline|)."""

    abs: float = 0.0
    rel: float = 0.0

    def __post_init__(self) -> None:
        if self.abs < 0 or self.rel < 0 or not (math.isfinite(self.abs) and math.isfinite(self.rel)):
            raise ValueError(f"a margin is finite and non-negative, got abs={self.abs}, rel={self.rel}")

    def allowed(self, baseline: float) -> float:
        return max(self.abs, self.rel * abs(baseline))


@dataclass(frozen=True)
class MetricRule:
    higher_is_better: bool
    margin: Margin
    unit: str = ""


# Known accuracy metrics. Drift margins are what a deliberate numerics change
# moves and run-to-run nondeterminism (atomics, split-K) does not.
KNOWN_METRICS: dict[str, MetricRule] = {
    "sqnr_db": MetricRule(True, Margin(abs=1.0), "dB"),
    "cosine": MetricRule(True, Margin(abs=1e-3)),
    "rel_l2": MetricRule(False, Margin(abs=1e-7, rel=0.10)),
    "max_abs": MetricRule(False, Margin(abs=1e-7, rel=0.10)),
    "loss_gap": MetricRule(False, Margin(abs=2e-3, rel=0.25)),
}
DEFAULT_MARGIN = Margin(rel=0.05)


def rule_for(metric: str) -> MetricRule | None:
    """A known metric's rule; any other `*_db` metric is an SQNR-like decibel figure."""
    if metric in KNOWN_METRICS:
        return KNOWN_METRICS[metric]
    if metric.endswith("_db"):
        return KNOWN_METRICS["sqnr_db"]
    return None
MEMORY_MARGIN = Margin(rel=0.05)
# A ratio of times carries timing noise in both numerator and denominator: drift is judged
# against the baseline with a wider margin than a deterministic accuracy figure.
EFFICIENCY_MARGIN = Margin(abs=0.05, rel=0.05)


@dataclass(frozen=True)
class SpeedupTolerance:
    """Allowed relative drop below the baseline median: max(floor, k * the noise and the spread stored
    at recording), never above `cap`: one noisy recording must not switch the speed gate off."""

    floor: float = 0.03
    noise_k: float = 2.0
    cap: float = 0.10

    def __post_init__(self) -> None:
        if not 0.0 <= self.floor < 1.0:
            raise ValueError(f"tolerance floor must lie in [0, 1), got {self.floor}")
        if self.noise_k < 0:
            raise ValueError(f"noise multiplier must be >= 0, got {self.noise_k}")
        if not self.floor <= self.cap < 1.0:
            raise ValueError(f"tolerance cap must lie in [floor={self.floor}, 1), got {self.cap}")

    def relative(self, stored_noise: float | None, stored_spread: float | None = None) -> float:
        spread = max((x for x in (stored_noise, stored_spread) if x is not None and math.isfinite(x)), default=0.0)
        return min(max(self.floor, self.noise_k * spread), self.cap)


@dataclass(frozen=True)
class BaselineView:
    """What the gate knows of one stored metric: present and comparable, missing, or stale."""

    state: str  # "ok" | "missing" | "stale"
    gpu: str
    value: float | None = None
    noise: float | None = None
    recorded: str | None = None
    detail: str = ""
    spread: float | None = None  # relative range of the rounds' medians, when recorded in rounds
    sides_ms: tuple[float, float] | None = None  # the baseline's (baseline side, optimized side) median ms

    @property
    def usable(self) -> bool:
        return self.state == "ok" and self.value is not None


@dataclass(frozen=True)
class Verdict:
    metric: str
    kind: Kind
    status: Status
    value: float | None = None
    interval: tuple[float, float] | None = None
    unit: str = ""
    bound: str = ""
    baseline: float | None = None
    baseline_date: str | None = None
    delta_pct: float | None = None
    reasons: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    where: str = ""
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def to_dict(self) -> dict:
        return {
            "metric": self.metric,
            "kind": self.kind.value,
            "status": self.status.value,
            "value": self.value,
            "interval": list(self.interval) if self.interval else None,
            "unit": self.unit,
            "bound": self.bound,
            "baseline": self.baseline,
            "baseline_date": self.baseline_date,
            "delta_pct": self.delta_pct,
            "reasons": list(self.reasons),
            "flags": list(self.flags),
            "where": self.where,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Verdict:
        return cls(
            metric=d["metric"],
            kind=Kind(d["kind"]),
            status=Status(d["status"]),
            value=d["value"],
            interval=tuple(d["interval"]) if d["interval"] else None,
            unit=d["unit"],
            bound=d["bound"],
            baseline=d["baseline"],
            baseline_date=d["baseline_date"],
            delta_pct=d["delta_pct"],
            reasons=tuple(d["reasons"]),
            flags=tuple(d["flags"]),
            where=d["where"],
            extra=d.get("extra", {}),
        )


def baseline_view(entry: dict | None, metric: str, signature: dict, gpu: str) -> BaselineView:
    """Decide whether a stored entry can be compared with this run, and say why not if not."""
    if entry is None:
        return BaselineView("missing", gpu, detail=f"no baseline for {gpu}")
    recorded = entry.get("recorded")
    stored_sig = entry.get("signature", {})
    if stored_sig != signature:
        return BaselineView("stale", gpu, recorded=recorded, detail=_signature_change(stored_sig, signature))
    stored = entry.get("metrics", {}).get(metric)
    if stored is None:
        return BaselineView("missing", gpu, recorded=recorded, detail=f"no baseline for {metric} on {gpu}")
    sides = (stored.get("baseline_ms"), stored.get("optimized_ms"))
    return BaselineView("ok", gpu, value=stored.get("value"), noise=stored.get("noise"), recorded=recorded,
                        spread=stored.get("spread"), sides_ms=sides if all(_finite(x) for x in sides) else None)


def _signature_change(old: dict, new: dict) -> str:
    changes = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            changes.append(f"{key}: {old.get(key, '<absent>')} -> {new.get(key, '<absent>')}")
    return "stale baseline, workload changed (" + "; ".join(changes) + ")"


def _finite(value: float | None) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def _nonfinite_word(value: float | None) -> str:
    if value is None:
        return "no value"
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return "Inf" if value > 0 else "-Inf"


def _delta_pct(value: float, base: BaselineView) -> float | None:
    if not base.usable or base.value == 0:
        return None
    return 100.0 * (value - base.value) / abs(base.value)


def _baseline_presence(base: BaselineView, update: bool, strict: bool) -> tuple[list[str], list[str]]:
    """Reasons to fail and flags, for a baseline that cannot be compared."""
    if update:
        return [], ["recording"]
    if base.state == "ok":
        return [], []
    flag = "no-baseline" if base.state == "missing" else "stale"
    if strict:
        return [f"{base.detail} (--lowprec-strict)"], [flag]
    return [], [flag]


def _open_status(reasons: list[str], *, gated: bool, settled: bool, strict: bool) -> Status:
    """FAIL with reasons; else INCONCLUSIVE or UNGATED when so (both FAIL under strict, saying why); else PASS."""
    if not settled:
        if not strict and not reasons:
            return INCONCLUSIVE
        if strict:
                reasons.append("inconclusive: the interval still straddles a decision line after the time budget "
                           "(--lowprec-strict); raise --lowprec-time-budget or reduce the workload's noise")
    if not gated:
        if not strict and not reasons:
            return UNGATED
        if strict:
            reasons.append("ungated: neither a bound nor a usable baseline (--lowprec-strict); declare a floor "
                           "(min=, or lowprec.expect(...) for a speedup) or record a baseline with --lowprec-update")
    return FAIL if reasons else PASS


def speedup_decision_lines(floor: float | None, base: BaselineView, tol: SpeedupTolerance, update: bool) -> list[float]:
    """The ratios at which the speedup verdict flips; sampling goes on while the interval holds one."""
    lines = [floor] if floor is not None else []
    if base.usable and not update:
        rel = tol.relative(base.noise, base.spread)
        lines += [base.value * (1.0 - rel), base.value * (1.0 + rel)]
    return lines


def is_settled(summary: RatioSummary, lines: list[float]) -> bool:
    return not any(summary.low <= line <= summary.high for line in lines)


def side_changes(sides_ms: tuple[float, float] | None, base: BaselineView) -> dict:
    """Each side's median ms and its change against the baseline's: did the reference get faster,
    or the optimized side slower?"""
    if sides_ms is None:
        return {}
    out = {"baseline_ms": sides_ms[0], "optimized_ms": sides_ms[1]}
    if base.usable and base.sides_ms is not None:
        for side, now, then in zip(("baseline", "optimized"), sides_ms, base.sides_ms, strict=True):
            out[f"{side}_ms_stored"] = then
            out[f"{side}_ms_delta_pct"] = 100.0 * (now - then) / then if then else None
    return out


def judge_speedup(
    metric: str,
    summary: RatioSummary,
    floor: float | None,
    base: BaselineView,
    tol: SpeedupTolerance,
    *,
    update: bool = False,
    strict: bool = False,
    settled: bool = True,
    noise_cap: float | None = None,
    spread: float | None = None,
    floor_note: str = "",
    sides_ms: tuple[float, float] | None = None,
    where: str = "",
    extra: dict | None = None,
    measured: tuple[str, ...] = (),
) -> Verdict:
    """Fail when the interval lies wholly below the floor, or below the baseline by more than the tolerance
    (flagged "noisy", with a reason saying so, where the pairs' noise exceeds `noise_cap`); when recording, also
    when the pairs' noise or the rounds' `spread` exceeds `noise_cap` (such a baseline would widen its own
    tolerance). `measured`: flags of how it was measured, shown after the gate's own."""
    reasons: list[str] = []
    flags: list[str] = []
    tolerance: dict = {}
    value = summary.median
    interval = (summary.low, summary.high)
    bound = (f">= {floor:.2f}x" + (f" ({floor_note})" if floor_note else "")) if floor is not None else ""
    if not (_finite(value) and _finite(summary.low) and _finite(summary.high)):
        reasons.append(f"speedup is {_nonfinite_word(value if not _finite(value) else summary.low)}")
    else:
        if floor is not None and summary.high < floor:
            reasons.append(
                f"below floor: {summary.confidence:.0%} interval [{summary.low:.3f}, {summary.high:.3f}] < {floor:.2f}x"
                + (f" ({floor_note})" if floor_note else "")
            )
        more_reasons, more_flags = _baseline_presence(base, update, strict)
        reasons += more_reasons
        flags += more_flags
        if base.usable and not update:
            rel = tol.relative(base.noise, base.spread)
            tolerance = {"tolerance_pct": 100.0 * rel}  # the band the report draws around the baseline
            low_line, high_line = base.value * (1.0 - rel), base.value * (1.0 + rel)
            if summary.high < low_line:
                reasons.append(
                    f"regressed: interval [{summary.low:.3f}, {summary.high:.3f}] below baseline "
                    f"{base.value:.3f}x - {rel:.1%} tolerance = {low_line:.3f}x"
                )
            elif summary.low > high_line:
                flags.append("improved")
        slow = any(r.startswith(("below floor", "regressed")) for r in reasons)
        if slow and not update and noise_cap is not None and not summary.noise <= noise_cap:
            # Still a failure (a gate that goes quiet on a noisy machine protects nothing), but one that says the
            # machine measured unsteadily: an H200 read a kernel 55% slower at 35% pair noise, and the next one
            # read it as recorded (docs/measurements/decode-step-stacking-h200-2026-12-02.md).
            flags.append("noisy")
            reasons.append(
                f"noisy: the pairs' noise is {summary.noise:.1%}, over the {noise_cap:.0%} a recording may carry; "
                "this machine measured unsteadily here: run the test again, alone, before reading this as a regression"
            )
        if update and noise_cap is not None and not summary.noise <= noise_cap:
            reasons.append(
                f"not recorded: the pairs' noise is {summary.noise:.1%}, over the recording cap {noise_cap:.0%}; "
                "record on an idle machine (nothing else on this GPU or these cores), time a larger or "
                "graph-replayed workload, or raise the ini option lowprec_max_record_noise"
            )
        if update and noise_cap is not None and spread is not None and not spread <= noise_cap:
            reasons.append(
                f"not recorded: the rounds' medians spread {spread:.1%}, over the recording cap {noise_cap:.0%}; "
                "record on an idle machine or raise the ini option lowprec_max_record_noise"
            )
    gated = floor is not None or (base.usable and not update)
    status = _open_status(reasons, gated=gated, settled=settled, strict=strict)
    return Verdict(
        metric=metric,
        kind=Kind.SPEEDUP,
        status=status,
        value=value,
        interval=interval,
        unit="x",
        bound=bound,
        baseline=base.value if base.usable else None,
        baseline_date=base.recorded,
        delta_pct=_delta_pct(value, base) if _finite(value) else None,
        reasons=tuple(reasons),
        flags=tuple(flags) + measured,
        where=where,
        extra={**(extra or {}), **side_changes(sides_ms, base), **tolerance},
    )


def resolve_direction(metric: str, minimum: float | None, maximum: float | None, higher_is_better: bool | None) -> bool:
    """Which way is better for a metric: said, implied by a one-sided bound, or known by name."""
    if higher_is_better is not None:
        return higher_is_better
    if minimum is not None and maximum is None:
        return True
    if maximum is not None and minimum is None:
        return False
    rule = rule_for(metric)
    if rule is not None:
        return rule.higher_is_better
    raise ValueError(
        f"cannot tell whether higher or lower {metric!r} is better: give a one-sided bound "
        f"(min= or max=) or higher_is_better=; known metrics are {sorted(KNOWN_METRICS)}"
    )


def judge_value(
    metric: str,
    kind: Kind,
    value: float,
    *,
    minimum: float | None,
    maximum: float | None,
    higher_is_better: bool,
    margin: Margin,
    base: BaselineView,
    unit: str = "",
    update: bool = False,
    strict: bool = False,
    where: str = "",
) -> Verdict:
    """An accuracy or memory verdict: absolute bounds, then drift from the baseline in the bad direction."""
    reasons: list[str] = []
    flags: list[str] = []
    bound_parts = []
    if minimum is not None:
        bound_parts.append(f">= {minimum:g}")
    if maximum is not None:
        bound_parts.append(f"<= {maximum:g}")
    if not _finite(value):
        reasons.append(f"{metric} is {_nonfinite_word(value)}")
    else:
        if minimum is not None and value < minimum:
            reasons.append(f"{metric} {value:.6g} < bound {minimum:g}")
        if maximum is not None and value > maximum:
            reasons.append(f"{metric} {value:.6g} > bound {maximum:g}")
        more_reasons, more_flags = _baseline_presence(base, update, strict)
        reasons += more_reasons
        flags += more_flags
        if base.usable and not update:
            allowed = margin.allowed(base.value)
            if higher_is_better and value < base.value - allowed:
                reasons.append(f"drifted: {value:.6g} < baseline {base.value:.6g} - margin {allowed:.3g}")
            elif not higher_is_better and value > base.value + allowed:
                reasons.append(f"drifted: {value:.6g} > baseline {base.value:.6g} + margin {allowed:.3g}")
            elif (value - base.value) * (1 if higher_is_better else -1) > allowed:
                flags.append("improved")
    gated = minimum is not None or maximum is not None or (base.usable and not update)
    return Verdict(
        metric=metric,
        kind=kind,
        status=_open_status(reasons, gated=gated, settled=True, strict=strict),
        value=float(value) if value is not None else None,
        unit=unit,
        bound=" and ".join(bound_parts),
        baseline=base.value if base.usable else None,
        baseline_date=base.recorded,
        delta_pct=_delta_pct(value, base) if _finite(value) else None,
        reasons=tuple(reasons),
        flags=tuple(flags),
        where=where,
    )


def judge_info(metric: str, value: float, unit: str = "", where: str = "") -> Verdict:
    """A reported number with no bound: recorded with the baseline; fails only when NaN or Inf, which
    no report can show and no baseline can store."""
    reasons = () if _finite(value) else (f"{metric} is {_nonfinite_word(value)}",)
    return Verdict(metric=metric, kind=Kind.INFO, status=FAIL if reasons else PASS, value=value, unit=unit,
                   reasons=reasons, where=where)


def judge_kernels(metric: str, side: str, names: list[str], reasons: list[str], where: str = "") -> Verdict:
    """Precision-path proof: fails naming the kernels that did run."""
    shown = ", ".join(names[:8]) + (f" (+{len(names) - 8} more)" if len(names) > 8 else "")
    full = tuple(f"{r}; {side} ran: {shown or 'no kernels'}" for r in reasons)
    return Verdict(metric=metric, kind=Kind.PATH, status=FAIL if reasons else PASS, bound=side, reasons=full,
                   where=where, extra={"kernels": names})


def judge_trace_error(metric: str, error: str, where: str = "") -> Verdict:
    return Verdict(metric=metric, kind=Kind.TRACE, status=FAIL, reasons=(error,), where=where)


def judge_skipped(metric: str, kind: Kind, reason: str, where: str = "") -> Verdict:
    return Verdict(metric=metric, kind=kind, status=SKIP, reasons=(reason,), where=where)
