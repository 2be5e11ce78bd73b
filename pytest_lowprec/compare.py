"""Two runs side by side: each metric's value in A and in B, its change, and whether the change is real.

Pure: takes the verdict rows of two runs (history.verdict_rows' columns) and returns the changes; the
renderers are in report/compare_text.py. A change is "separated" when both runs carry an interval and
the intervals do not overlap (the way asv marks a significant change); a metric with no interval is
compared by value only.
"""

from __future__ import annotations

from dataclasses import dataclass

COMPARED_KINDS = ("speedup", "accuracy", "memory", "efficiency", "info")


@dataclass(frozen=True)
class Change:
    test: str
    metric: str
    kind: str
    unit: str
    a: float | None
    b: float | None
    a_interval: tuple[float, float] | None
    b_interval: tuple[float, float] | None
    a_status: str | None
    b_status: str | None

    @property
    def change_pct(self) -> float | None:
        if self.a is None or self.b is None or self.a == 0:
            return None
        return 100.0 * (self.b - self.a) / abs(self.a)

    @property
    def separated(self) -> bool | None:
        """True when the two intervals do not overlap; None when either run has no interval."""
        if self.a_interval is None or self.b_interval is None:
            return None
        return self.b_interval[1] < self.a_interval[0] or self.b_interval[0] > self.a_interval[1]

    @property
    def presence(self) -> str:
        if self.a is None and self.b is not None:
            return "only in B"
        if self.b is None and self.a is not None:
            return "only in A"
        return ""

    def changed(self, threshold_pct: float) -> bool:
        """Worth a reviewer's eye: in one run only, a status that moved, separated intervals, or (with no
        intervals) a value that moved by more than `threshold_pct`."""
        if self.presence or self.a_status != self.b_status:
            return True
        if self.separated is not None:
            return self.separated
        return self.change_pct is not None and abs(self.change_pct) > threshold_pct


def _interval(row: dict) -> tuple[float, float] | None:
    return (row["low"], row["high"]) if row.get("low") is not None and row.get("high") is not None else None


def compare(a_rows: list[dict], b_rows: list[dict]) -> list[Change]:
    """One Change per (test, metric) with a value in either run; the largest moves first, then by name."""
    a = {(r["test"], r["metric"]): r for r in a_rows if r["kind"] in COMPARED_KINDS and r["value"] is not None}
    b = {(r["test"], r["metric"]): r for r in b_rows if r["kind"] in COMPARED_KINDS and r["value"] is not None}
    out = []
    for key in sorted(set(a) | set(b)):
        ra, rb = a.get(key), b.get(key)
        either = rb or ra
        out.append(Change(key[0], key[1], either["kind"], either["unit"] or "",
                          ra["value"] if ra else None, rb["value"] if rb else None,
                          _interval(ra) if ra else None, _interval(rb) if rb else None,
                          ra["status"] if ra else None, rb["status"] if rb else None))
    out.sort(key=lambda c: (not bool(c.separated), -abs(c.change_pct or 0.0), c.test, c.metric))
    return out


def stack_differences(a_software: dict, b_software: dict) -> list[str]:
    """'torch 2.11 -> 2.12' for every component of the stack that differs: a change may be the stack's."""
    return [f"{k} {a_software.get(k)} -> {b_software.get(k)}" for k in sorted(set(a_software) | set(b_software))
            if a_software.get(k) != b_software.get(k)]
