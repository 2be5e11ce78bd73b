"""Change points in a metric's history over commits: where its level moved, and whether the moves add up.

Method: PELT (Killick, Fearnhead and Eckley 2012, "Optimal detection of changepoints with a linear
computational cost") with the Gaussian change-in-mean cost, the sum of squared deviations from each
segment's mean. A change point is kept when it lowers that cost by more than the penalty

    beta = PENALTY_K * sigma**2 * ln(n),   PENALTY_K = 4

where n is the number of commits and sigma the noise of one commit's value: the larger of
  - the median standard error that the runs' own confidence intervals give (width / (2 * 1.96)),
  - a robust estimate from the series' second differences, 1.4826 * median(|x[i+2] - 2x[i+1] + x[i]|)
    / sqrt(6): a step moves two of them and a steady drift none, so the median sees only the noise (first
    differences would count a drift's every step as noise and hide it),
  - NOISE_FLOOR_REL (0.5%) of the series' median level: a timer cannot resolve less, and a
    perfectly flat history must not turn every rounding into a change point.
Segments may be one commit long (MIN_SIZE = 1): the latest commit alone can be a new level, which is the
regression a pull request brings. It then must sit more than about sigma * sqrt(PENALTY_K * ln n)
(3.1 sigma for 8 commits) from the earlier level; one odd commit between two equal levels needs two
change points, twice the penalty (about 4.4 sigma). On pure Gaussian noise with sigma unknown (estimated
as above) a series is read as moved in about 12% of 8-commit and 7.5% of 20-commit histories (400 seeds
each, tests/test_changepoints.py keeps a bound on it); a deterministic metric (accuracy on fixed inputs)
sits at the floor and never moves by noise.

A summary reads the segments: no change point is "flat"; one is a "step"; two or more moving the same
way are a "drift", reported with the total change from the first segment to the last, so several small
steps that each stayed inside the gate's tolerance still show as one movement. Pure: no I/O, no numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import median

PENALTY_K = 4.0
NOISE_FLOOR_REL = 0.005
MIN_SIZE = 1
_Z95 = 1.96
METHOD = (f"PELT, Gaussian change in mean, penalty {PENALTY_K:g}·σ²·ln n, σ from the runs' own intervals "
          f"(at least {NOISE_FLOOR_REL:.1%} of the level)")


@dataclass(frozen=True)
class Shift:
    """The level moved at `index` (the first commit of the new segment) from `before` to `after`."""

    index: int
    before: float
    after: float

    @property
    def change_pct(self) -> float | None:
        return None if self.before == 0 else 100.0 * (self.after - self.before) / abs(self.before)


@dataclass(frozen=True)
class Trend:
    """What a series did: its change points and their reading ("flat", "step", "drift" or "mixed")."""

    shifts: tuple[Shift, ...]
    kind: str
    total_pct: float | None  # first segment's mean to the last one's
    sigma: float

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(s.index for s in self.shifts)


def noise(values: list[float], intervals: list[tuple[float, float] | None] | None = None) -> float:
    """The noise of one commit's value, as the module docstring defines it."""
    level = abs(median(values)) if values else 0.0
    candidates = [NOISE_FLOOR_REL * level]
    widths = [(hi - lo) / (2 * _Z95) for iv in (intervals or []) if iv is not None
              for lo, hi in [iv] if math.isfinite(lo) and math.isfinite(hi)]
    if widths:
        candidates.append(median(widths))
    if len(values) >= 4:
        second = [abs(c - 2 * b + a) for a, b, c in zip(values, values[1:], values[2:], strict=False)]
        candidates.append(1.4826 * median(second) / math.sqrt(6))
    return max(candidates) or 1e-12


def pelt(values: list[float], penalty: float, min_size: int = MIN_SIZE) -> list[int]:
    """The start index of every segment after the first, by PELT's exact search with pruning."""
    n = len(values)
    if n < 2 * min_size:
        return []
    cum, cum2 = [0.0], [0.0]
    for x in values:
        cum.append(cum[-1] + x)
        cum2.append(cum2[-1] + x * x)

    def cost(a: int, b: int) -> float:  # squared deviations of values[a:b] from their mean
        s = cum[b] - cum[a]
        return (cum2[b] - cum2[a]) - s * s / (b - a)

    best = [-penalty] + [math.inf] * n
    last = [0] * (n + 1)
    candidates = [0]
    for t in range(min_size, n + 1):
        options = [(best[s] + cost(s, t) + penalty, s) for s in candidates if t - s >= min_size]
        if options:
            best[t], last[t] = min(options)
        # PELT's pruning: a start that is already worse by more than the penalty never wins later.
        candidates = [s for s in candidates if t - s < min_size or best[s] + cost(s, t) <= best[t]]
        if best[t] < math.inf:  # a segment may start here once it is min_size long
            candidates.append(t)
    out, t = [], n
    while t > 0:
        s = last[t]
        if s > 0:
            out.append(s)
        t = s
    return sorted(out)


def trend(values: list[float], intervals: list[tuple[float, float] | None] | None = None) -> Trend:
    """Change points of a series (oldest first) and their reading."""
    clean = [float(v) for v in values]
    if not clean or not all(math.isfinite(v) for v in clean):
        return Trend((), "flat", None, 0.0)
    sigma = noise(clean, intervals)
    log_n = math.log(max(len(clean), 2))
    starts = pelt(clean, PENALTY_K * sigma * sigma * log_n)
    bounds = [0, *starts, len(clean)]
    means = [sum(clean[a:b]) / (b - a) for a, b in zip(bounds, bounds[1:], strict=False)]
    shifts = tuple(Shift(i, means[k], means[k + 1]) for k, i in enumerate(starts))
    if not shifts:
        return Trend((), "flat", 0.0, sigma)
    total = None if means[0] == 0 else 100.0 * (means[-1] - means[0]) / abs(means[0])
    signs = {math.copysign(1, s.after - s.before) for s in shifts}
    kind = "step" if len(shifts) == 1 else ("drift" if len(signs) == 1 else "mixed")
    return Trend(shifts, kind, total, sigma)
