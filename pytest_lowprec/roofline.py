"""The hardware model: how long a declared amount of work should take on this GPU, and so what speedup
one side should have over the other.

Pure. A side's work is one or more phases (`Work`): each phase takes the longest of moving its bytes
through device memory, its host-link bytes over the link, and its FLOPs on its math unit, plus one
launch latency per kernel; phases run one after another. The ceilings come, field by field, from this
GPU's baseline file (metrics `ceiling.*`, recorded by suites/test_roofline.py on the machine that
gates), else the registry's measurements of that GPU (hardware.GPU_SPECS), else its datasheet (or,
for a GPU the registry does not name, its capability's per-SM rates). A prediction is labelled as
one; the gate turns it into a speedup floor only through a stated fraction (`Expectation`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .hardware import GpuSpec
from .precisions import UNITS, unit_for  # noqa: F401 - unit_for: the recorder asks it here

CEILING_PREFIX = "ceiling."
COPY_METRIC = "ceiling.copy_tb_per_s"
GEMM_METRIC = "ceiling.gemm_tflops."
LAUNCH_METRIC = "ceiling.launch_us"
LINK_METRIC = "ceiling.h2d_gb_per_s"
# One kernel's cost beyond its bytes and FLOPs (launch, ramp-up, tail) where no GPU-specific measurement
# exists: the H200 measured 1.06 us per one-element kernel replayed back to back from a CUDA graph
# (suites/test_roofline.py, 2026-11-30); a GPU without its own measurement is given 1.5 us and the
# prediction says "default launch".
DEFAULT_LAUNCH_US = 1.5


@dataclass(frozen=True)
class Ceilings:
    bytes_per_s: float | None  # device-memory copy rate; None when neither measured nor known
    flops_per_s: Mapping[str, float]  # by unit; a unit the chip lacks is absent
    link_bytes_per_s: float
    launch_s: float
    sources: Mapping[str, str] = field(default_factory=dict)  # ceiling -> where its value came from

    def describe(self, used: Iterable[str]) -> str:
        """Where the ceilings a prediction used came from, in a few words: 'measured ceilings', 'datasheet
        ceilings' or 'derived ceilings' (from the capability), and a default launch latency named apart."""
        words = {self.sources.get(key, "datasheet").split(" ")[0] for key in used if key != "launch"}
        text = next((w for w in ("derived", "datasheet") if w in words), "measured") + " ceilings"
        if "launch" in used and self.sources.get("launch") == "default":
            text += ", default launch"
        return text

    @property
    def source(self) -> str:
        return self.describe(self.sources)

    def flops_for(self, unit: str) -> tuple[float, str]:
        """The rate of `unit`, or the BF16 rate where the chip lacks that unit: emulated FP4/FP6/FP8
        GEMMs dequantize to BF16 tensor cores (as the NVFP4 GEMM does on Hopper)."""
        for candidate in (unit, "bf16"):
            if candidate in self.flops_per_s:
                return self.flops_per_s[candidate], candidate
        raise ValueError(f"no GEMM rate for {unit} or bf16 in {dict(self.flops_per_s)}")


def _finite_positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def ceilings_for(spec: GpuSpec | None, measured_here: Mapping[str, float]) -> Ceilings | None:
    """This GPU's ceilings: each from the baseline file where measured here, else the registry's lab
    measurement, else the datasheet; None for a device with no registry entry (the CPU)."""
    if spec is None:
        return None
    datasheet_word = "derived" if spec.measured_on.startswith("derived") else "datasheet"
    layers = [(measured_here, "measured here"), (spec.measured, f"measured in the lab ({spec.measured_on})")]

    def pick(metric: str, fallback: float | None, fallback_source: str) -> tuple[float | None, str]:
        for values, source in layers:
            if _finite_positive(values.get(metric)):
                return float(values[metric]), source
        return fallback, fallback_source

    sources: dict[str, str] = {}
    copy, sources["copy"] = pick(COPY_METRIC, spec.hbm_gbps / 1e3 if spec.hbm_gbps else None, datasheet_word)
    flops = {}
    for unit in UNITS:
        rate, source = pick(GEMM_METRIC + unit, spec.tflops(unit), datasheet_word)
        if rate:
            flops[unit], sources[unit] = rate * 1e12, source
    link, sources["link"] = pick(LINK_METRIC, spec.link_gbps, datasheet_word)
    launch, sources["launch"] = pick(LAUNCH_METRIC, DEFAULT_LAUNCH_US, "default")
    return Ceilings(copy * 1e12 if copy else None, flops, link * 1e9, launch * 1e-6, sources)


def ceiling_metrics(entries: Mapping[str, dict]) -> dict[str, float]:
    """Every `ceiling.*` value stored in a baseline file's entries."""
    found = {}
    for entry in entries.values():
        for name, metric in entry.get("metrics", {}).items():
            if name.startswith(CEILING_PREFIX) and _finite_positive(metric.get("value")):
                found[name] = float(metric["value"])
    return found


@dataclass(frozen=True)
class Work:
    """What one phase of a side asks of the chip: FLOPs on a math unit, bytes through device memory,
    bytes over the host link, and how many kernels it launches. Its terms overlap (a roofline);
    `a + b` runs two phases one after the other."""

    flops: float = 0.0
    nbytes: float = 0.0
    unit: str = "bf16"
    link_bytes: float = 0.0
    kernels: int = 1

    def __post_init__(self) -> None:
        for name in ("flops", "nbytes", "link_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value)
                                                                                    and value >= 0):
                raise ValueError(f"Work.{name} must be a finite number >= 0, got {value!r}")
        if self.unit not in UNITS:
            raise ValueError(f"Work.unit {self.unit!r} is not a math unit; use one of {', '.join(UNITS)}")
        if isinstance(self.kernels, bool) or not isinstance(self.kernels, int) or self.kernels < 0:
            raise ValueError(f"Work.kernels must be a whole number >= 0, got {self.kernels!r}")
        if not (self.flops or self.nbytes or self.link_bytes or self.kernels):
            raise ValueError("a Work with no FLOPs, bytes or kernels takes no time; declare what the side does")

    def __add__(self, other: Work | Sequence[Work]) -> tuple[Work, ...]:
        return (self, *phases(other))

    def __radd__(self, other: Sequence[Work]) -> tuple[Work, ...]:
        return (*phases(other), self)


@dataclass(frozen=True)
class Overlapped:
    """Streams of work that run at the same time (copies on one CUDA stream, compute on another): the
    phase takes as long as its longest stream. Each stream is a Work or a sequence of phases."""

    streams: tuple

    def __init__(self, *streams: Work | Sequence[Work]):
        if len(streams) < 2:
            raise ValueError("Overlapped takes two or more streams of work")
        object.__setattr__(self, "streams", tuple(phases(s) for s in streams))


Phase = Work | Overlapped


def phases(side: Phase | Sequence[Phase]) -> tuple[Phase, ...]:
    if isinstance(side, (Work, Overlapped)):
        return (side,)
    out = tuple(side)
    if not out or not all(isinstance(w, (Work, Overlapped)) for w in out):
        raise ValueError(f"a side's work is a Work or a non-empty sequence of Work, got {side!r}")
    return out


@dataclass(frozen=True)
class SidePrediction:
    seconds: float
    bound: str  # what dominates the side's time: memory, compute, link or launch
    unit: str  # the math unit whose rate its largest compute term used (after any emulation fallback)
    used: frozenset[str] = frozenset()  # the ceilings it used: copy, link, launch and math units

    def as_dict(self) -> dict:
        return {"ms": self.seconds * 1e3, "bound": self.bound, "unit": self.unit}


def predict_side(side: Phase | Sequence[Phase], ceilings: Ceilings) -> SidePrediction | None:
    """The side's predicted time, or None when it moves device-memory bytes and no bandwidth is known."""
    totals = {"memory": 0.0, "compute": 0.0, "link": 0.0, "launch": 0.0}
    seconds, unit, heaviest = 0.0, "bf16", -1.0
    used_ceilings: set[str] = set()
    for work in phases(side):
        if isinstance(work, Overlapped):
            streams = [predict_side(stream, ceilings) for stream in work.streams]
            if any(p is None for p in streams):
                return None
            longest = max(streams, key=lambda p: p.seconds)
            totals[longest.bound] += longest.seconds
            seconds += longest.seconds
            used_ceilings |= frozenset().union(*(p.used for p in streams))
            continue
        if work.nbytes and ceilings.bytes_per_s is None:
            return None
        rate, used = ceilings.flops_for(work.unit)
        used_ceilings |= {name for name, amount in (("copy", work.nbytes), (used, work.flops),
                                                    ("link", work.link_bytes), ("launch", work.kernels)) if amount}
        terms = {"memory": work.nbytes / ceilings.bytes_per_s if work.nbytes else 0.0,
                 "compute": work.flops / rate, "link": work.link_bytes / ceilings.link_bytes_per_s}
        longest = max(terms, key=terms.get)
        totals[longest] += terms[longest]
        totals["launch"] += work.kernels * ceilings.launch_s
        seconds += terms[longest] + work.kernels * ceilings.launch_s
        if terms["compute"] > heaviest:
            heaviest, unit = terms["compute"], used
    return SidePrediction(seconds, max(totals, key=totals.get), unit, frozenset(used_ceilings))


@dataclass(frozen=True)
class Expectation:
    """A speedup floor that travels: `fraction` of the speedup the hardware model predicts on this GPU,
    and never under 1.0 for a side claimed `faster`. `why` says where the fraction comes from. A fraction
    above 1 says the model under-predicts this workload (a reference slower than its bytes): say why."""

    fraction: float
    faster: bool
    why: str
    baseline: SidePrediction | None = None
    optimized: SidePrediction | None = None
    source: str = ""  # the ceilings' provenance, or why there is no prediction

    def __post_init__(self) -> None:
        if not (isinstance(self.fraction, (int, float)) and 0.0 < self.fraction <= 1.5):
            raise ValueError(f"an expectation's fraction of the predicted speedup lies in (0, 1.5], got "
                             f"{self.fraction!r}")

    @property
    def predicted(self) -> float | None:
        if self.baseline is None or self.optimized is None:
            return None
        return self.baseline.seconds / self.optimized.seconds

    @property
    def floor(self) -> float | None:
        predicted = self.predicted
        if predicted is None:
            return 1.0 if self.faster else None
        return max(self.fraction * predicted, 1.0 if self.faster else 0.0)

    def note(self) -> str:
        """How the floor was reached, for the verdict's bound column."""
        predicted = self.predicted
        if predicted is None:
            return f"claimed faster; no prediction: {self.source}" if self.faster else ""
        text = (f"{self.fraction:g} x predicted {predicted:.2f}x, {self.baseline.bound}/{self.optimized.bound}"
                f"-bound, {self.source}")
        if self.faster and self.fraction * predicted < 1.0:
            text = f"claimed faster; {text}"
        return text

    def as_dict(self) -> dict:
        return {"predicted": self.predicted, "fraction": self.fraction, "faster": self.faster,
                "floor": self.floor, "source": self.source, "why": self.why,
                "baseline": self.baseline.as_dict() if self.baseline else None,
                "optimized": self.optimized.as_dict() if self.optimized else None}


def expect_speedup(baseline: Work | Sequence[Work], optimized: Work | Sequence[Work], ceilings: Ceilings | None,
                   *, fraction: float, faster: bool = False, why: str = "", unavailable: str = "") -> Expectation:
    """The expectation of `optimized` over `baseline` on the GPU whose ceilings these are."""
    phases(baseline), phases(optimized)  # validate both even where nothing can be predicted
    if ceilings is None:
        return Expectation(fraction, faster, why, source=unavailable or "no hardware model for this device")
    base, opt = predict_side(baseline, ceilings), predict_side(optimized, ceilings)
    if base is None or opt is None:
        return Expectation(fraction, faster, why, source="no memory bandwidth known for this GPU: record "
                                                          "suites/test_roofline.py's ceilings")
    return Expectation(fraction, faster, why, base, opt, ceilings.describe(base.used | opt.used))


@dataclass(frozen=True)
class Prediction:
    """One side's roofline, for `lowprec.work`: its predicted time and what bounds it."""

    seconds: float
    bound: str
    unit: str
    source: str

    def fraction(self, measured_s: float) -> float:
        """Predicted over measured time: 1.0 runs at the roofline, 0.5 takes twice as long."""
        return self.seconds / measured_s

    def label(self) -> str:
        return f"of {self.bound} roofline ({self.source}, {self.unit} rate)"


def predict(flops: float | None, nbytes: float | None, unit: str, ceilings: Ceilings) -> Prediction | None:
    """The roofline's time of one kernel's work, launch excluded: the larger of moving the bytes and
    doing the FLOPs at the ceilings (None when bytes are declared and no bandwidth is known)."""
    if not flops and not nbytes:
        raise ValueError("a roofline prediction needs flops or nbytes (or both)")
    side = predict_side(Work(flops=flops or 0.0, nbytes=nbytes or 0.0, unit=unit, kernels=0), ceilings)
    if side is None:
        return None
    return Prediction(side.seconds, side.bound, side.unit, ceilings.describe(side.used))


def work_figures(ms: float, flops: float | None, nbytes: float | None, unit: str, spec: GpuSpec | None,
                 ceilings: Ceilings | None) -> list[tuple[str, float, str]]:
    """What declared work measured at `ms` achieved, as (name, value, unit) figures: its TFLOP/s and TB/s,
    each as a fraction of the datasheet peak where the registry knows this GPU, then, where the ceilings
    allow a prediction, the roofline's predicted time (labelled one) and the measured fraction of it."""
    out = []
    if flops is not None:
        tflops = flops / (ms * 1e-3) / 1e12
        out.append(("tflops", tflops, "TFLOP/s"))
        peak = spec.tflops(unit) if spec is not None else None
        if peak:
            out.append(("of_peak_flops", tflops / peak, "of datasheet peak"))
    if nbytes is not None:
        tbps = nbytes / (ms * 1e-3) / 1e12
        out.append(("tb_per_s", tbps, "TB/s"))
        if spec is not None and spec.hbm_gbps:
            out.append(("of_peak_bandwidth", tbps / (spec.hbm_gbps / 1e3), "of datasheet peak"))
    pred = predict(flops, nbytes, unit, ceilings) if ceilings is not None else None
    if pred is not None:
        out.append(("predicted_ms", pred.seconds * 1e3, f"ms, predicted ({pred.bound}-bound)"))
        out.append(("roofline_fraction", pred.fraction(ms * 1e-3), pred.label()))
    return out
