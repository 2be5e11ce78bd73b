"""NVTX ranges around timed work, and profiler traces of one extra, untimed iteration.

Profiling never runs inside the timed loop: a profiler costs 1-2 us per op and
changed one speedup from 2.19x to 1.87x in another tool's measurement. A trace
comes from a separate call of each side under torch.profiler.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .names import file_name

NVTX_DOMAIN = "lowprec"


class NvtxRanges:
    """Ranges in the `lowprec` NVTX domain (nvtx package), else torch's NVTX, else none.

    Each label's attributes are built once. Measured on the host with no profiler attached
    (benchmarks/nvtx_overhead.py): a range built per call (`nvtx.annotate`) costs 0.5-1 us,
    a prebuilt push/pop 0.05-0.12 us, so timed calls are wrapped with prebuilt ranges.
    """

    def __init__(self) -> None:
        self._domain = None
        self._torch_nvtx = None
        try:
            import nvtx

            self._domain = nvtx.get_domain(NVTX_DOMAIN)
        except ImportError:
            import torch

            if torch.cuda.is_available():
                self._torch_nvtx = torch.cuda.nvtx
        self._attributes: dict[str, object] = {}

    def _push_pop(self, label: str) -> tuple[Callable[[], object], Callable[[], object]] | None:
        if self._domain is not None:
            domain = self._domain
            attributes = self._attributes.setdefault(label, domain.get_event_attributes(message=label))
            return functools.partial(domain.push_range, attributes), domain.pop_range
        if self._torch_nvtx is not None:
            return functools.partial(self._torch_nvtx.range_push, f"{NVTX_DOMAIN}:{label}"), self._torch_nvtx.range_pop
        return None

    def wrap(self, label: str, fn: Callable[[], object]) -> Callable[[], object]:
        """`fn` inside a range named `label`."""
        calls = self._push_pop(label)
        if calls is None:
            return fn
        push, pop = calls

        def ranged() -> object:
            push()
            try:
                return fn()
            finally:
                pop()

        return ranged

    @contextlib.contextmanager
    def range(self, label: str) -> Iterator[None]:
        calls = self._push_pop(label)
        if calls is None:
            yield
            return
        push, pop = calls
        push()
        try:
            yield
        finally:
            pop()


def nvtx_range(name: str):
    """A one-off range (a test's body, a trace), outside the timed calls."""
    return NvtxRanges().range(name)


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
    """What one profiled call of one side ran on the device: the costliest kernels (`kernels`, for the
    report) and the name of every kernel that ran (`ran`, for the precision-path proof)."""

    side: str
    kernels: list[KernelRow] = field(default_factory=list)
    device_us: float = 0.0
    file: str | None = None
    error: str | None = None
    ran: list[str] = field(default_factory=list)

    def names(self) -> list[str]:
        """Every kernel that ran, costliest first. A proof must see them all: a fused norm or an fp32
        fallback can take less time than the top of the table (an NVFP4 decode step ran dozens of kinds,
        its norm outside the top 15; 2026-12-02). A trace saved before `ran` was kept has its table alone."""
        return self.ran or [k.name for k in self.kernels]

    def to_dict(self) -> dict:
        return {"side": self.side, "kernels": [k.to_dict() for k in self.kernels], "device_us": self.device_us,
                "file": self.file, "error": self.error, "ran": self.ran}

    @classmethod
    def from_dict(cls, d: dict) -> SideTrace:
        return cls(d["side"], [KernelRow(**k) for k in d["kernels"]], d["device_us"], d["file"], d["error"],
                   d.get("ran", []))


def kernel_table(events: list[tuple[str, float]], top: int | None = 15) -> tuple[list[KernelRow], float]:
    """(name, device microseconds) per kernel launch -> the `top` rows by total time (every row with
    None), and the total."""
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
    """Run `fn` once under torch.profiler; return its kernel table, and write a chrome trace if asked.
    Without a GPU only the host's operators are recorded (and the trace says no device time)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        with nvtx_range(f"trace:{side}"):
            fn()
        if cuda:
            torch.cuda.synchronize()
    rows, total = kernel_table(_device_kernels(prof), top=None)
    trace = SideTrace(side, rows[:15], total, ran=[row.name for row in rows])
    if total <= 0.0:
        trace.error = ("the profiler recorded no device time for this call: no GPU, or CUPTI is unavailable or "
                       "failed (run with a profiler-capable driver, or without profiling)")
    if trace_file is not None:
        trace_file.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace_file))
        trace.file = str(trace_file)
    return trace


# What a chrome trace from torch.profiler marks as running on a device stream.
DEVICE_EVENT_CATEGORIES = frozenset({"kernel", "gpu_memcpy", "gpu_memset"})


@dataclass(frozen=True)
class StreamRow:
    """One device stream of a trace: its kernels, copies and sets, the time any of them ran (overlapping
    events on the stream counted once), and the name of the event that took longest in all (which says
    what the stream is for: compute, an NCCL collective, FSDP2's copies)."""

    stream: int
    events: int
    busy_us: float
    top: str

    def to_dict(self) -> dict:
        return {"stream": self.stream, "events": self.events, "busy_us": self.busy_us, "top": self.top}


def _union_us(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def stream_rows(trace: dict) -> tuple[list[StreamRow], float, float]:
    """A chrome trace (torch.profiler's export, as a dict) per device stream, busiest first; the span from
    the first device event's start to the last one's end; and the time any stream was busy. The span
    less the busy time is the time every stream of the device stood idle: waiting on the host or on
    another rank."""
    per_stream: dict[int, list[tuple[float, float, str]]] = {}
    for event in trace.get("traceEvents", []):
        if event.get("ph") != "X" or event.get("cat") not in DEVICE_EVENT_CATEGORIES:
            continue
        start = float(event["ts"])
        stream = (event.get("args") or {}).get("stream", event.get("tid"))
        per_stream.setdefault(int(stream), []).append((start, start + float(event.get("dur", 0.0)), event["name"]))
    rows = []
    for stream, events in per_stream.items():
        by_name: dict[str, float] = {}
        for start, stop, name in events:
            by_name[name] = by_name.get(name, 0.0) + stop - start
        rows.append(StreamRow(stream, len(events), _union_us([(a, b) for a, b, _ in events]),
                              max(by_name, key=by_name.get)))
    rows.sort(key=lambda r: r.busy_us, reverse=True)
    every = [(a, b) for events in per_stream.values() for a, b, _ in events]
    span = max(b for _, b in every) - min(a for a, _ in every) if every else 0.0
    return rows, span, _union_us(every)


@dataclass(frozen=True)
class HostFunction:
    """A Python-level function (or a builtin: a torch op, a collective's launch) as cProfile saw it, per
    call of the profiled work: calls, the time spent in it alone, and with what it called."""

    name: str
    calls: float
    own_ms: float
    total_ms: float

    def to_dict(self) -> dict:
        return {"name": self.name, "calls": self.calls, "own_ms": self.own_ms, "total_ms": self.total_ms}


def host_functions(stats: dict, repeats: int, top: int = 15) -> list[HostFunction]:
    """pstats.Stats(...).stats ({(file, line, function): (primitive calls, calls, own s, total s, callers)})
    as the `top` functions by their own time, per repeat of the profiled work: where a host-bound step's
    time goes, including the builtins that block it (a synchronize, a collective's wait)."""
    rows = []
    for (file, line, function), (_, calls, own, total, _) in stats.items():
        where = function if file == "~" else f"{Path(file).name}:{line}({function})"
        rows.append(HostFunction(where, calls / repeats, own * 1e3 / repeats, total * 1e3 / repeats))
    rows.sort(key=lambda r: r.own_ms, reverse=True)
    return rows[:top]


class SpeedTraces:
    """One test's profiled calls: each side of each speedup traced at most once (with a file when
    --lowprec-trace asked for one), the trace reused by the kernel proof. Holds the sides' callables
    until `release()`, so the test's tensors die with the test."""

    def __init__(self, nodeid: str, trace_dir: Path | None):
        self._nodeid = nodeid
        self._dir = trace_dir
        self._sides: dict[str, dict[str, Callable[[], object]]] = {}
        self.taken: dict[str, dict[str, SideTrace]] = {}  # speedup name -> side -> trace

    def keep(self, name: str, baseline: Callable[[], object], optimized: Callable[[], object]) -> None:
        self._sides[name] = {"baseline": baseline, "optimized": optimized}

    def kept(self, name: str) -> bool:
        return name in self._sides

    def take(self, name: str, side: str, *, write: bool) -> SideTrace:
        """The side's trace: profiled now unless one was taken already (and written, when `write`)."""
        traces = self.taken.setdefault(name, {})
        if side in traces and (traces[side].file or not write):
            return traces[side]
        path = trace_path(self._dir, self._nodeid, name, side) if write and self._dir is not None else None
        traces[side] = profile_side(side, self._sides[name][side], path)
        return traces[side]

    def release(self) -> None:
        self._sides.clear()


def trace_path(directory: Path, nodeid: str, name: str, side: str) -> Path:
    """A file directly inside `directory` that a shell and a browser both take, one per (test, metric, side)."""
    return Path(directory) / file_name((nodeid, name, side), ".json")


def match_kernels(names: list[str], require: Sequence[str] | str, forbid: Sequence[str] | str) -> list[str]:
    """Reasons a kernel list fails: a required pattern that matched none, a forbidden one that matched.
    One pattern may be given as a string."""
    require = [require] if isinstance(require, str) else list(require)
    forbid = [forbid] if isinstance(forbid, str) else list(forbid)
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
