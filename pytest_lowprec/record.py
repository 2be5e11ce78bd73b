"""What one test leaves behind once its lowprec verdicts are judged: the unit the run collects, hands
between xdist processes as a dict, renders in every report and turns into a baseline entry."""

from __future__ import annotations

from dataclasses import dataclass, field

from .gate import Verdict
from .profiling import SideTrace


@dataclass
class WorkloadRecord:
    """What one test leaves behind: verdicts for the gate and report, metrics for the baseline file."""

    nodeid: str
    precision: tuple[str, ...]
    signature: dict
    verdicts: list[Verdict] = field(default_factory=list)
    metrics: dict[str, dict] = field(default_factory=dict)
    timed_s: float = 0.0
    timer_wall_s: float = 0.0
    outcome: str = ""
    traces: dict[str, dict[str, SideTrace]] = field(default_factory=dict)  # speedup name -> side -> trace
    device: dict = field(default_factory=dict)  # where it ran: under xdist, the worker's GPU

    @property
    def failed_verdicts(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.failed]

    @property
    def recordable(self) -> bool:
        """Only a test that passed (its work finished, its bounds held) may become a baseline."""
        return self.outcome == "passed" and bool(self.metrics)

    def to_dict(self) -> dict:
        return {
            "nodeid": self.nodeid,
            "precision": list(self.precision),
            "signature": self.signature,
            "verdicts": [v.to_dict() for v in self.verdicts],
            "metrics": self.metrics,
            "timed_s": self.timed_s,
            "timer_wall_s": self.timer_wall_s,
            "outcome": self.outcome,
            "traces": {n: {s: t.to_dict() for s, t in sides.items()} for n, sides in self.traces.items()},
            "device": self.device,
        }

    @classmethod
    def from_dict(cls, d: dict) -> WorkloadRecord:
        return cls(
            nodeid=d["nodeid"],
            precision=tuple(d["precision"]),
            signature=d["signature"],
            verdicts=[Verdict.from_dict(v) for v in d["verdicts"]],
            metrics=d["metrics"],
            timed_s=d["timed_s"],
            timer_wall_s=d["timer_wall_s"],
            outcome=d["outcome"],
            traces={n: {s: SideTrace.from_dict(t) for s, t in sides.items()} for n, sides in d["traces"].items()},
            device=d["device"],
        )
