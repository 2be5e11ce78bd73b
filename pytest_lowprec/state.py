"""The state every recorder of a run shares, built once by the run (session.LowprecRun)."""

from __future__ import annotations

from dataclasses import dataclass

from .hardware import GpuSpec
from .roofline import Ceilings


@dataclass
class SharedState:
    """What every recorder of a run shares: this GPU's registry entry and ceilings, and whether a
    profiler has run in this process yet (see Recorder.speedup)."""

    spec: GpuSpec | None = None
    ceilings: Ceilings | None = None
    traced: bool = False
