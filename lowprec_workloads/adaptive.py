"""Adaptive precision: pick a format from activation statistics, smooth scales, and switch a
decode loop between FP8 and 16-bit on the model's confidence.

- `ActivationStats`: absmax, mean, std, percentiles and the outlier ratio
  absmax / (|mean| + 3 std), per tensor or per token (one row each).
- `select_precision`: ratio >= 2.0 keeps 16-bit, >= 1.5 FP8, else NVFP4 (thresholds settable).
- `calibrated_amax` (absmax or a percentile of |x|) and `EmaScale` (smoothed amax across steps).
- `ConfidenceSwitch`: the top-2 logit margin's EMA stays on the device; the host reads it only
  every `check_every` steps and moves to FP8 above `upper`, back to 16-bit below `lower`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

SIXTEEN_BIT, FP8, NVFP4 = "bf16", "fp8", "nvfp4"


def _rows(x: torch.Tensor, per_token: bool) -> torch.Tensor:
    x = x.detach().double()
    return x.reshape(-1, x.shape[-1]) if per_token else x.reshape(1, -1)


def _ratio(absmax: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return absmax / (mean.abs() + 3 * std).clamp_min(1e-30)


def outlier_ratio(x: torch.Tensor, per_token: bool = False) -> torch.Tensor:
    """absmax / (|mean| + 3 std), of the tensor or of each token: about 1.2-1.5 for Gaussian
    values, far higher when a few outliers stretch the range a scale must cover."""
    rows = _rows(x, per_token)
    return _ratio(rows.abs().amax(dim=1), rows.mean(dim=1), rows.std(dim=1))


@dataclass(frozen=True)
class ActivationStats:
    absmax: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    p99: torch.Tensor
    p999: torch.Tensor

    @classmethod
    def of(cls, x: torch.Tensor, per_token: bool = False) -> ActivationStats:
        """Statistics of the whole tensor, or of each row (token) of its last dimension."""
        rows = _rows(x, per_token)
        a = rows.abs()
        pct = [a.kthvalue(max(1, round(p * a.shape[1])), dim=1).values for p in (0.99, 0.999)]
        return cls(a.amax(dim=1), rows.mean(dim=1), rows.std(dim=1), pct[0], pct[1])

    @property
    def outlier_ratio(self) -> torch.Tensor:
        return _ratio(self.absmax, self.mean, self.std)


@dataclass(frozen=True)
class Thresholds:
    sixteen_bit: float = 2.0
    fp8: float = 1.5

    def __post_init__(self) -> None:
        if not self.sixteen_bit > self.fp8 > 0:
            raise ValueError(f"need sixteen_bit > fp8 > 0, got {self.sixteen_bit}, {self.fp8}")


def select_precision(ratio: float, thresholds: Thresholds = Thresholds()) -> str:
    if ratio != ratio:  # NaN statistics: never quantize what cannot be measured
        return SIXTEEN_BIT
    if ratio >= thresholds.sixteen_bit:
        return SIXTEEN_BIT
    return FP8 if ratio >= thresholds.fp8 else NVFP4


def select_per_token(x: torch.Tensor, thresholds: Thresholds = Thresholds()) -> list[str]:
    """One precision per token (row of the last dimension)."""
    return [select_precision(float(r), thresholds) for r in outlier_ratio(x, per_token=True)]


def calibrated_amax(x: torch.Tensor, method: str = "absmax", percentile: float = 99.9) -> float:
    """The value a scale maps to the format's largest: the absmax, or a percentile of |x| that
    lets a few outliers clip so the rest keep more resolution."""
    a = x.detach().float().abs().flatten()
    if method == "absmax":
        return float(a.max())
    if method == "percentile":
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must lie in (0, 100], got {percentile}")
        k = max(1, min(a.numel(), round(percentile / 100.0 * a.numel())))
        return float(a.kthvalue(k).values)
    raise ValueError(f"calibration method must be 'absmax' or 'percentile', got {method!r}")


@dataclass
class EmaScale:
    """amax smoothed across steps: amax_t = decay * amax_{t-1} + (1 - decay) * observed.
    A jump above the smoothed value is taken at once, so a scale never lets a new maximum overflow."""

    decay: float = 0.9
    value: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {self.decay}")

    def update(self, observed: float) -> float:
        if self.value is None or observed >= self.value:
            self.value = observed
        else:
            self.value = self.decay * self.value + (1.0 - self.decay) * observed
        return self.value


@dataclass
class ConfidenceSwitch:
    """Hysteresis on the top-2 logit margin, read on the host only every `check_every` steps.

    The margin's EMA, its minimum over the window and the first doubtful step stay on the
    device. A step run in FP8 is doubtful when its own margin is below `lower`: set `lower` to
    twice the largest FP8 logit error and only a doubtful step can hold a different token than
    16-bit would. At a check (one host read) the loop:
    - rolls back to the first doubtful step of the window, if any, and goes on in 16-bit from there
      (at most `check_every` steps are recomputed; FP8 steps act as drafts checked late);
    - moves to FP8 when the EMA is above `upper` and no step of the window fell below `lower`;
    - moves back to 16-bit when the EMA or any step of the window fell below `lower`.
    `observe` returns (mode for the next step, step to roll back to or None)."""

    upper: float
    lower: float
    decay: float = 0.5
    check_every: int = 4
    mode: str = SIXTEEN_BIT
    transitions: list[tuple[int, str, str, float]] = field(default_factory=list)
    rollbacks: list[tuple[int, int]] = field(default_factory=list)  # (at step, back to step)
    steps_in: dict[str, int] = field(default_factory=lambda: {SIXTEEN_BIT: 0, FP8: 0})
    _ema: torch.Tensor | None = None
    _window_min: torch.Tensor | None = None
    _first_doubt: torch.Tensor | None = None
    _step: int = 0

    def __post_init__(self) -> None:
        if not self.upper > self.lower:
            raise ValueError(f"need upper > lower for hysteresis, got upper={self.upper}, lower={self.lower}")
        if self.check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {self.check_every}")

    def observe(self, logits: torch.Tensor) -> tuple[str, int | None]:
        """Feed the logits [batch, vocab] of the step just run in `mode` (steps count from 0)."""
        step = self._step
        self.steps_in[self.mode] += 1
        top2 = logits.float().topk(2, dim=-1).values
        margin = (top2[..., 0] - top2[..., 1]).min()  # the least confident sequence decides
        self._ema = margin if self._ema is None else self.decay * self._ema + (1 - self.decay) * margin
        self._window_min = margin if self._window_min is None else torch.minimum(self._window_min, margin)
        if self.mode == FP8:
            doubt = torch.where(margin < self.lower, float(step), math.inf)
            self._first_doubt = doubt if self._first_doubt is None else torch.minimum(self._first_doubt, doubt)
        self._step += 1
        if self._step % self.check_every:
            return self.mode, None
        doubt = self._first_doubt if self._first_doubt is not None else torch.tensor(math.inf, device=margin.device)
        ema, low, first = (float(v) for v in torch.stack([self._ema, self._window_min, doubt]).cpu())  # one sync
        self._window_min = self._first_doubt = None
        if math.isfinite(first):
            back = int(first)
            self.rollbacks.append((self._step, back))
            self._move(SIXTEEN_BIT, ema)
            self._step = back + 1  # the caller recomputes step `back` in 16-bit, unobserved
            self.steps_in[SIXTEEN_BIT] += 1
            self._ema = None
            return self.mode, back
        if self.mode == SIXTEEN_BIT and ema > self.upper and low >= self.lower:
            self._move(FP8, ema)
        elif self.mode == FP8 and min(ema, low) < self.lower:
            self._move(SIXTEEN_BIT, ema)
        return self.mode, None

    @property
    def low_precision_share(self) -> float:
        total = sum(self.steps_in.values())
        return self.steps_in[FP8] / total if total else 0.0

    def _move(self, to: str, ema: float) -> None:
        if to != self.mode:
            self.transitions.append((self._step, self.mode, to, ema))
        self.mode = to
