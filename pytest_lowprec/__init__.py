"""pytest-lowprec: a pytest plugin that gates low-precision GPU workloads on accuracy and speed."""

from __future__ import annotations

from .gate import Margin, SpeedupTolerance, Verdict
from .recorder import Recorder, WorkloadRecord

__all__ = ["Margin", "Recorder", "SpeedupTolerance", "WorkloadRecord", "Verdict"]
__version__ = "0.1.0"
