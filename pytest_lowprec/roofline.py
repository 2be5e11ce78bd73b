"""Roofline expectations: how fast a workload of given FLOPs and bytes should run on this GPU.

Pure. The ceilings are measured ones where the GPU's baseline file holds them (metrics named
`ceiling.copy_tb_per_s` and `ceiling.gemm_tflops.<unit>`, recorded by suites/test_roofline.py
on that GPU), else the datasheet's dense peaks. A prediction is labelled as one: only
measurements gate speed, and a test may gate its measured fraction of the prediction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .hardware import GpuSpec

CEILING_PREFIX = "ceiling."
COPY_METRIC = "ceiling.copy_tb_per_s"
GEMM_METRIC = "ceiling.gemm_tflops."


def unit_for(precisions: Iterable[str]) -> str:
    """The tensor-core unit the narrowest of these precisions uses: fp4, fp8 or bf16."""
    names = set(precisions)
    if names & {"nvfp4", "fp4", "mxfp4", "mxfp6", "fp6"}:
        return "fp4"
    if names & {"fp8", "mxfp8", "int8"}:
        return "fp8"
    return "bf16"


@dataclass(frozen=True)
class Ceilings:
    bytes_per_s: float
    flops_per_s: Mapping[str, float]  # by unit; a unit the chip lacks is absent
    source: str  # "measured" or "datasheet"

    def flops_for(self, unit: str) -> tuple[float, str]:
        """The rate of `unit`, or the BF16 rate where the chip lacks that unit: emulated FP4/FP8
        GEMMs dequantize to BF16 tensor cores (as the NVFP4 GEMM does on Hopper)."""
        for candidate in (unit, "bf16"):
            if candidate in self.flops_per_s:
                return self.flops_per_s[candidate], candidate
        raise ValueError(f"no GEMM rate for {unit} or bf16 in {dict(self.flops_per_s)}")


def datasheet_ceilings(spec: GpuSpec) -> Ceilings:
    rates = {"bf16": spec.bf16_tflops, "fp8": spec.fp8_tflops, "fp4": spec.fp4_tflops}
    return Ceilings(spec.hbm_gbps * 1e9, {u: r * 1e12 for u, r in rates.items() if r}, "datasheet")


def measured_ceilings(metrics: Mapping[str, float], spec: GpuSpec | None) -> Ceilings | None:
    """Ceilings from `ceiling.*` metrics, a missing GEMM rate filled from the datasheet; None when
    no copy bandwidth was measured (then the datasheet's ceilings apply, if the GPU is known)."""
    copy = metrics.get(COPY_METRIC)
    if copy is None or not math.isfinite(copy) or copy <= 0:
        return datasheet_ceilings(spec) if spec is not None else None
    rates = dict(datasheet_ceilings(spec).flops_per_s) if spec is not None else {}
    for name, value in metrics.items():
        if name.startswith(GEMM_METRIC) and math.isfinite(value) and value > 0:
            rates[name[len(GEMM_METRIC):]] = value * 1e12
    return Ceilings(copy * 1e12, rates, "measured")


def ceiling_metrics(entries: Mapping[str, dict]) -> dict[str, float]:
    """Every `ceiling.*` value stored in a baseline file's entries."""
    found = {}
    for entry in entries.values():
        for name, metric in entry.get("metrics", {}).items():
            if name.startswith(CEILING_PREFIX) and isinstance(metric.get("value"), (int, float)):
                found[name] = float(metric["value"])
    return found


@dataclass(frozen=True)
class Prediction:
    seconds: float
    bound: str  # "memory" or "compute"
    memory_s: float
    compute_s: float
    unit: str  # the tensor-core unit whose rate was used
    source: str

    def fraction(self, measured_s: float) -> float:
        """Predicted over measured time: 1.0 runs at the roofline, 0.5 takes twice as long."""
        return self.seconds / measured_s

    def label(self) -> str:
        return f"of {self.bound} roofline ({self.source} ceilings, {self.unit} rate)"


def predict(flops: float | None, nbytes: float | None, unit: str, ceilings: Ceilings) -> Prediction:
    """The roofline's time: the larger of moving the bytes and doing the FLOPs at the ceilings."""
    if not flops and not nbytes:
        raise ValueError("a roofline prediction needs flops or nbytes (or both)")
    rate, used = ceilings.flops_for(unit)
    memory_s = (nbytes or 0.0) / ceilings.bytes_per_s
    compute_s = (flops or 0.0) / rate
    bound = "memory" if memory_s >= compute_s else "compute"
    return Prediction(max(memory_s, compute_s), bound, memory_s, compute_s, used, ceilings.source)
