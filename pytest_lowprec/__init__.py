"""pytest-lowprec: a pytest plugin that gates low-precision GPU workloads on accuracy and speed."""

from __future__ import annotations

import importlib

__all__ = ["Margin", "Recorder", "SpeedupTolerance", "WorkloadRecord", "Verdict"]
__version__ = "0.1.0"

# The plugin loads in every pytest run of the environment, and this package with it: the public names
# are imported on first access (PEP 562), so a run that never uses lowprec never imports numpy or torch.
_HOMES = {"Margin": "gate", "SpeedupTolerance": "gate", "Verdict": "gate", "Recorder": "recorder",
          "WorkloadRecord": "recorder"}


def __getattr__(name: str) -> object:
    if name in _HOMES:
        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
