"""Each metric's history over commits, read for change points: what the report and the PR summary show.

Pure: takes the store's points, returns views; the change-point method is documented in changepoints.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .changepoints import Trend, trend
from .history import Point


def anchor(test: str, metric: str) -> str:
    """The report's element id of a metric's trend: stable across runs, safe in a URL fragment."""
    return "trend-" + hashlib.sha1(f"{test}\0{metric}".encode()).hexdigest()[:12]


@dataclass(frozen=True)
class TrendView:
    test: str
    metric: str
    points: tuple[Point, ...]
    trend: Trend

    @property
    def anchor(self) -> str:
        return anchor(self.test, self.metric)

    @property
    def moved(self) -> bool:
        return self.trend.kind != "flat"

    def describe(self) -> str:
        """One line: the values over commits and the reading, e.g. 'step -6.2% at 1a2b3c4d'."""
        values = " → ".join(f"{p.value:.4g}" for p in self.points[-6:])
        lead = "… → " if len(self.points) > 6 else ""
        text = f"{lead}{values} over {len(self.points)} commits"
        if self.trend.kind == "flat":
            return text + "; no change point"
        where = ", ".join(self.points[s.index].commit or f"run {self.points[s.index].run_id}"
                          for s in self.trend.shifts)
        total = f" {self.trend.total_pct:+.1f}%" if self.trend.total_pct is not None else ""
        return f"{text}; {self.trend.kind}{total} (change point{'s' if len(self.trend.shifts) > 1 else ''} at {where})"


def trend_views(series: dict[tuple[str, str], list[Point]], min_points: int = 2) -> dict[tuple[str, str], TrendView]:
    """A view per (test, metric) with at least `min_points` commits."""
    out = {}
    for (test, metric), points in series.items():
        if len(points) < min_points:
            continue
        intervals = [(p.low, p.high) if p.low is not None and p.high is not None else None for p in points]
        out[(test, metric)] = TrendView(test, metric, tuple(points), trend([p.value for p in points], intervals))
    return out
