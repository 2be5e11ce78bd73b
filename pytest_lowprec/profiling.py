"""NVTX ranges around timed work, and profiler traces of one extra, untimed iteration.

Profiling never runs inside the timed loop: a profiler costs 1-2 us per op and
changed one speedup from 2.19x to 1.87x in another tool (REFERENCE.md). A trace
comes from a separate call of each side under torch.profiler.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

NVTX_DOMAIN = "lowprec"


@contextlib.contextmanager
def nvtx_range(name: str) -> Iterator[None]:
    """A range in the `lowprec` NVTX domain (nvtx package), else torch's NVTX, else nothing.

    With no profiler attached the nvtx package's calls return at once, so ranges
    stay in the code that runs under the timer.
    """
    try:
        import nvtx
    except ImportError:
        nvtx = None
    if nvtx is not None:
        with nvtx.annotate(name, domain=NVTX_DOMAIN):
            yield
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.nvtx.range_push(f"{NVTX_DOMAIN}:{name}")
        try:
            yield
        finally:
            torch.cuda.nvtx.range_pop()
    else:
        yield


class NvtxRanges:
    """Ranges in the `lowprec` domain for timed calls, each label's attributes built once.

    Measured on the host with no profiler attached (benchmarks/nvtx_overhead.py):
    `nvtx.annotate` per call costs ~2.3 us, a prebuilt push/pop ~0.13 us.
    """

    def __init__(self) -> None:
        try:
            import nvtx

            self._domain = nvtx.get_domain(NVTX_DOMAIN)
        except ImportError:
            self._domain = None
        self._attributes: dict[str, object] = {}

    def wrap(self, label: str, fn: Callable[[], object]) -> Callable[[], object]:
        """`fn` inside a range named `label`."""
        if self._domain is None:
            import torch

            if not torch.cuda.is_available():
                return fn
            push, pop = torch.cuda.nvtx.range_push, torch.cuda.nvtx.range_pop
            name = f"{NVTX_DOMAIN}:{label}"

            def torch_ranged() -> object:
                push(name)
                try:
                    return fn()
                finally:
                    pop()

            return torch_ranged
        domain = self._domain
        attributes = self._attributes.setdefault(label, domain.get_event_attributes(message=label))

        def ranged() -> object:
            domain.push_range(attributes)
            try:
                return fn()
            finally:
                domain.pop_range()

        return ranged


@dataclass(frozen=True)
class KernelRow:
    name: str
    calls: int
    device_us: float
    share: float

    def to_dict(self) -> dict:
        return {"name": self.name, "calls": self.calls, "device_us": self.device_us, "share": self.share}


@dataclass
class SideTrace:
    """What one profiled call of one side ran on the device."""

    side: str
    kernels: list[KernelRow] = field(default_factory=list)
    device_us: float = 0.0
    file: str | None = None
    error: str | None = None

    def names(self) -> list[str]:
        return [k.name for k in self.kernels]

    def to_dict(self) -> dict:
        return {"side": self.side, "kernels": [k.to_dict() for k in self.kernels], "device_us": self.device_us,
                "file": self.file, "error": self.error}

    @classmethod
    def from_dict(cls, d: dict) -> SideTrace:
        return cls(d["side"], [KernelRow(**k) for k in d["kernels"]], d["device_us"], d["file"], d["error"])


def kernel_table(events: list[tuple[str, float]], top: int = 15) -> tuple[list[KernelRow], float]:
    """(name, device microseconds) per kernel launch -> rows by total time, and the total."""
    totals: dict[str, list[float]] = {}
    for name, us in events:
        totals.setdefault(name, []).append(us)
    total = sum(sum(v) for v in totals.values())
    rows = [KernelRow(name, len(v), sum(v), (sum(v) / total) if total else 0.0) for name, v in totals.items()]
    rows.sort(key=lambda r: r.device_us, reverse=True)
    return rows[:top], total


def _device_kernels(prof) -> list[tuple[str, float]]:
    """Kernel launches on the device, from the profiler's events (not its CPU-side operators)."""
    out = []
    for event in prof.events():
        if getattr(event, "device_type", None) is None or str(event.device_type).endswith("CPU"):
            continue
        duration = getattr(event, "device_time", None)
        if duration is None:
            duration = getattr(event, "cuda_time", 0.0)
        out.append((event.name, float(duration)))
    return out


def profile_side(side: str, fn: Callable[[], object], trace_file: Path | None) -> SideTrace:
    """Run `fn` once under torch.profiler; return its kernel table, and write a chrome trace if asked."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with nvtx_range(f"trace:{side}"):
            fn()
        torch.cuda.synchronize()
    rows, total = kernel_table(_device_kernels(prof))
    trace = SideTrace(side, rows, total)
    if total <= 0.0:
        trace.error = ("the profiler recorded no device time for this call: CUPTI is unavailable or "
                       "failed (run with a profiler-capable driver, or without --lowprec-trace)")
    if trace_file is not None:
        trace_file.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace_file))
        trace.file = str(trace_file)
    return trace


def trace_path(directory: Path, nodeid: str, name: str, side: str) -> Path:
    """A file name a shell and a browser both take: the node id with odd characters replaced."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")
    return Path(directory) / f"{stem}.{name}.{side}.json"


def match_kernels(names: list[str], require: list[str], forbid: list[str]) -> list[str]:
    """Reasons a kernel list fails: a required pattern that matched none, a forbidden one that matched."""
    reasons = []
    for pattern in require:
        if not any(re.search(pattern, n) for n in names):
            reasons.append(f"no kernel matches required /{pattern}/")
    for pattern in forbid:
        hits = [n for n in names if re.search(pattern, n)]
        if hits:
            more = f" and {len(hits) - 1} more" if len(hits) > 1 else ""
            reasons.append(f"forbidden /{pattern}/ matched {hits[0]!r}{more}")
    return reasons
