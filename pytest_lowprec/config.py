"""The gate's settings, frozen and validated once per session, and the parsers for their text forms."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .gate import SpeedupTolerance
from .hardware import validate_key
from .precisions import NAMES
from .timing import SamplingPolicy


def parse_precisions(text: str) -> frozenset[str]:
    """'fp8,nvfp4' -> {'fp8', 'nvfp4'}; an unknown name is a ValueError listing the valid ones."""
    names = [p.strip().lower() for p in text.split(",") if p.strip()]
    if not names:
        raise ValueError(f"empty precision list; valid precisions: {', '.join(NAMES)}")
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ValueError(
            f"unknown precision {', '.join(map(repr, unknown))}; valid precisions: {', '.join(NAMES)}"
        )
    return frozenset(names)


def parse_gpu(text: str) -> str:
    return validate_key(text)


def parse_fraction(text: str) -> float:
    value = float(text)
    if not (0.0 <= value < 1.0):
        raise ValueError(f"expected a fraction in [0, 1), got {text!r}")
    return value


def parse_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise ValueError(f"expected a whole number >= 1, got {text!r}")
    return value


def parse_positive(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"expected a positive number, got {text!r}")
    return value


@dataclass(frozen=True)
class GateConfig:
    gpu: str = "auto"
    update: bool = False
    baselines_dir: Path = Path("baselines")
    precisions: frozenset[str] | None = None
    strict: bool = False
    report_path: Path | None = None
    trace_dir: Path | None = None
    csv_path: Path | None = None
    markdown_path: Path | None = None
    tolerance: SpeedupTolerance = field(default_factory=SpeedupTolerance)
    sampling: SamplingPolicy = field(default_factory=SamplingPolicy)
    confidence: float = 0.95
    seed: int = 0
    # Recording: how many measurements (rounds) make a new baseline, and the most pair noise (and spread
    # of the rounds' medians) a recorded speedup may carry: a noisier one would widen its own tolerance.
    record_rounds: int = 1
    max_record_noise: float = 0.05
    # With update: add each recording to the stored entry of the same code (recordings.merge_entry).
    merge: bool = False
    # Intra-op threads of torch on the CPU for the whole run: host-timed work and CPU accuracy values
    # (a reduction's order depends on the thread count) do not depend on the machine's core count.
    cpu_threads: int = 2

    def __post_init__(self) -> None:
        validate_key(self.gpu)
        if self.merge and not self.update:
            raise ValueError("--lowprec-merge adds this run's recordings to the stored entries: it needs "
                             "--lowprec-update")
        if isinstance(self.record_rounds, bool) or not isinstance(self.record_rounds, int) or self.record_rounds < 1:
            raise ValueError(f"record rounds must be a whole number >= 1, got {self.record_rounds!r}")
        if not 0.0 < self.max_record_noise < 1.0:
            raise ValueError(f"the recording noise cap must lie in (0, 1), got {self.max_record_noise}")
        if isinstance(self.cpu_threads, bool) or not isinstance(self.cpu_threads, int) or self.cpu_threads < 1:
            raise ValueError(f"cpu threads must be a whole number >= 1, got {self.cpu_threads!r}")
        if self.precisions is not None:
            unknown = set(self.precisions) - set(NAMES)
            if unknown:
                raise ValueError(f"unknown precisions {sorted(unknown)}; valid: {', '.join(NAMES)}")
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"confidence must lie in [0.5, 1), got {self.confidence}")
