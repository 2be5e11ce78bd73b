"""The `lowprec` fixture's object: a test's measurements, judged into verdicts when the test body ends.

Measurements are kept raw and judged in `finish()`, so a signature set late in the test still decides which
baseline the values meet. No pytest import: the plugin hands in the timer factory and the baseline entry."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

from . import gate, inputs, roofline
from .config import GateConfig
from .gate import Kind, Margin, SpeedupTolerance, Verdict
from .hardware import DeviceInfo, base_key
from .measure import SpeedResult, measure_gated_speedup
from .profiling import NvtxRanges, SideTrace, SpeedTraces, match_kernels, nvtx_range
from .record import WorkloadRecord
from .roofline import Expectation, Work
from .state import SharedState
from .timing import TimerFactory


@dataclass
class _Observation:
    kind: Kind
    metric: str
    where: str
    judge: Callable[[gate.BaselineView], Verdict]
    stored: dict | None


class Recorder:
    """The `lowprec` fixture. Record metrics and speedups; the plugin judges them after the test body."""

    def __init__(self, nodeid: str, precision: tuple[str, ...], params: dict, device: DeviceInfo, config: GateConfig,
                 baseline_entry: dict | None, make_timer: TimerFactory, shared: SharedState | None = None):
        self.nodeid = nodeid
        self.precision = precision
        self._device = device
        self._config = config
        self._entry = baseline_entry
        self._make_timer = make_timer
        self._signature: dict = {"precision": ",".join(precision)}
        self._signature.update({f"param.{k}": inputs.plain(v) for k, v in sorted(params.items())})
        self._observations: list[_Observation] = []
        self._timed_s = 0.0
        self._timer_wall_s = 0.0
        self._speed_ms: dict[str, float] = {}
        self._traces = SpeedTraces(nodeid, config.trace_dir)
        self._nvtx = NvtxRanges()
        self._shared = shared if shared is not None else SharedState()

    # -- what the test reads ------------------------------------------------
    @property
    def device(self) -> str:
        """Where the test should put its tensors: 'cuda:N' on a GPU run, 'cpu' under --gpu cpu."""
        return f"cuda:{self._device.index}" if self._device.is_cuda else "cpu"

    @property
    def gpu(self) -> DeviceInfo:
        return self._device

    @property
    def on_cuda(self) -> bool:
        return self._device.is_cuda

    def per_gpu(self, values: dict[str, float], default: float | None = None) -> float | None:
        """The value for this run's GPU (a multi-GPU key counts as its part): floors measured on one
        GPU, e.g. `min=lowprec.per_gpu({"h100": 2.5})`, leave other GPUs to their own baselines."""
        return values.get(base_key(self._device.key), default)

    # -- what the test records ----------------------------------------------
    def signature(self, **fields: object) -> None:
        """Describe the workload (shapes, dtypes, settings); a baseline with another signature is stale."""
        self._signature.update({k: inputs.plain(v) for k, v in fields.items()})

    def accuracy(self, metric: str, value: object, *, min: float | None = None,  # noqa: A002 - reads as the bound
                 max: float | None = None, higher_is_better: bool | None = None,  # noqa: A002
                 margin: Margin | None = None) -> None:
        """Gate a metric against its bound and against the baseline's value (drift beyond the margin fails)."""
        higher = gate.resolve_direction(metric, min, max, higher_is_better)
        rule = gate.rule_for(metric)
        margin = margin or (rule.margin if rule else gate.DEFAULT_MARGIN)
        self._bounded(Kind.ACCURACY, metric, value, min, max, higher, margin, rule.unit if rule else "")

    def memory(self, metric: str, nbytes: object, *, max: float | None = None,  # noqa: A002
               margin: Margin = gate.MEMORY_MARGIN) -> None:
        """Gate a byte count (peak allocated, cache size): at most `max`, and no growth past the margin."""
        self._bounded(Kind.MEMORY, metric, nbytes, None, max, False, margin, "B")

    def efficiency(self, metric: str, value: object, *, min: float | None = None,  # noqa: A002
                   max: float | None = None, margin: Margin = gate.EFFICIENCY_MARGIN,  # noqa: A002
                   unit: str = "") -> None:
        """Gate a ratio of measured times (overlap efficiency, a fraction of a measured ceiling):
        its bound, and drift below the baseline beyond the margin. Higher is better."""
        self._bounded(Kind.EFFICIENCY, metric, value, min, max, True, margin, unit)

    def _bounded(self, kind: Kind, metric: str, value: object, minimum: float | None, maximum: float | None,
                 higher: bool, margin: Margin, unit: str) -> None:
        """A value judged against its bounds, then against the baseline's value in the bad direction."""
        where = inputs.call_site(3)  # the test's line, not accuracy()/memory()/efficiency()'s
        val = inputs.as_float(value, f"{kind.value} {metric!r}")
        minimum, maximum = inputs.bound(minimum, f"{metric} min="), inputs.bound(maximum, f"{metric} max=")
        if kind is Kind.MEMORY and val < 0:
            raise ValueError(f"memory {metric!r} is a byte count, >= 0; got {val:g}")
        self._add(kind, metric, where, lambda base: gate.judge_value(
            metric, kind, val, minimum=minimum, maximum=maximum, higher_is_better=higher, margin=margin, base=base,
            unit=unit, update=self._config.update, strict=self._config.strict, where=where,
        ), {"kind": kind.value, "value": val, "unit": unit} if math.isfinite(val) else None)

    def info(self, metric: str, value: object, unit: str = "") -> None:
        """Report a number with no bound (it is stored with the baseline and shown in reports)."""
        where = inputs.call_site()
        val = inputs.as_float(value, f"info {metric!r}")
        self._add(Kind.INFO, metric, where, lambda base: gate.judge_info(metric, val, unit, where),
                  {"kind": "info", "value": val, "unit": unit} if math.isfinite(val) else None)

    def expect(self, baseline: Work | tuple[Work, ...], optimized: Work | tuple[Work, ...], *,
               fraction: float, faster: bool = False, why: str = "") -> Expectation:
        """A speedup floor from the hardware model: `fraction` of the speedup this GPU's ceilings predict
        for the declared work of each side (never under 1.0 when `faster`). Pass it as `speedup(min=...)`.
        `why` says where the fraction comes from (what the H100 and H200 measured against the model)."""
        unavailable = "" if self._device.is_cuda else f"no hardware model for {self._device.key}"
        return roofline.expect_speedup(baseline, optimized, self._shared.ceilings if self._device.is_cuda else None,
                                       fraction=fraction, faster=faster, why=why, unavailable=unavailable)

    def speedup(self, baseline: Callable[[], object], optimized: Callable[[], object], *,
                min: float | Expectation | None = None, name: str = "speedup", device: str = "cuda",  # noqa: A002
                tolerance: SpeedupTolerance | None = None, graphs: bool = False,
                flush_l2: bool = True) -> SpeedResult | None:
        """Time `baseline` and `optimized` alternately and gate optimized's speedup against `min` (a number,
        or an Expectation from `lowprec.expect`) and the stored baseline.

        `device` says where the work runs: "cuda" work is timed with CUDA events and
        skips (with a reason) on a run without a GPU; "cpu" work is timed on the host.
        """
        where = inputs.call_site()
        if device not in ("cuda", "cpu"):
            raise ValueError(f"speedup device must be 'cuda' or 'cpu', got {device!r}")
        floor, floor_note, expectation = inputs.floor(min)
        if device == "cuda" and not self._device.is_cuda:
            self._skip(Kind.SPEEDUP, name, f"speed gate over CUDA work skipped: no CUDA device "
                                           f"(gpu key {self._device.key})", where)
            return None
        config, tol = self._config, tolerance or self._config.tolerance
        baseline = self._nvtx.wrap(f"{name}:baseline", baseline)
        optimized = self._nvtx.wrap(f"{name}:optimized", optimized)
        result = measure_gated_speedup(
            self._make_timer(device, {"graphs": graphs, "flush_l2": flush_l2}), baseline, optimized, config,
            floor=floor, view=self._view(name), tolerance=tol, name=name, label=f"{self.nodeid} {name}",
            bracket=lambda: nvtx_range(f"{self.nodeid}:{name}"))
        self._timed_s += result.timed_s
        self._timer_wall_s += result.wall_s
        extra = result.details(expectation.as_dict() if expectation else None, config.cpu_threads)
        # After torch.profiler has run in this process, eager launches are slower (CUPTI stays
        # attached): an eager, launch-bound measurement taken then is flagged, never silently trusted.
        flags = result.flags(after_trace=self._shared.traced and not graphs)
        self._add(Kind.SPEEDUP, name, where, lambda base: gate.judge_speedup(
            name, result.summary, floor, base, tol, update=config.update, strict=config.strict,
            settled=result.settled, noise_cap=config.max_record_noise, spread=result.spread, floor_note=floor_note,
            sides_ms=result.sides_ms, where=where, extra=extra, measured=flags,
        ), result.stored(expectation.predicted if expectation else None))
        self._traces.keep(name, baseline, optimized)
        self._speed_ms[name] = result.sides_ms[1]
        if config.trace_dir is not None and device == "cuda":
            for side in ("baseline", "optimized"):
                self._trace(name, side, write=True, where=where)
        return result

    def expect_kernels(self, side: str = "optimized", *, require: tuple[str, ...] | list[str] | str = (),
                       forbid: tuple[str, ...] | list[str] | str = (), name: str = "speedup") -> None:
        """Prove the precision path: `side` of speedup `name` ran a kernel matching each `require`
        regex and none matching a `forbid` one (an fp32 fallback, say). Uses the trace of that side,
        taking one untimed profiled call if --lowprec-trace did not already."""
        where = inputs.call_site()
        metric = f"kernels:{name}.{side}"
        if side not in ("baseline", "optimized"):
            raise ValueError(f"side must be 'baseline' or 'optimized', got {side!r}")
        if not self._device.is_cuda:
            self._skip(Kind.PATH, metric, f"kernel proof skipped: no CUDA device (gpu key {self._device.key})", where)
            return
        if not self._traces.kept(name):
            raise ValueError(f"expect_kernels(name={name!r}) needs lowprec.speedup(name={name!r}) to run first")
        trace = self._trace(name, side, write=False, where=where)
        names = trace.names()
        verdict = gate.judge_kernels(metric, side, names, match_kernels(names, require, forbid), where)
        self._add(Kind.PATH, metric, where, lambda base: verdict, None)

    def work(self, *, flops: float | None = None, nbytes: float | None = None, name: str = "speedup",
             precision: str | tuple[str, ...] | None = None, min_fraction: float | None = None) -> None:
        """Declare the optimized side's work: its achieved rate, its fraction of the datasheet peak,
        the roofline's predicted time (labelled a prediction) and the measured fraction of it, which
        `min_fraction` gates ("this kernel reaches >= 70% of its roofline"). `precision` names the
        tensor-core unit the FLOPs run on (default: the test's precisions)."""
        ms = self._speed_ms.get(name)
        if ms is None:
            return  # no timing on this run (no CUDA): nothing to report
        precisions = (precision,) if isinstance(precision, str) else (precision or self.precision)
        for metric, value, unit in roofline.work_figures(ms, flops, nbytes, roofline.unit_for(precisions),
                                                         self._shared.spec, self._shared.ceilings):
            if metric == "roofline_fraction" and min_fraction is not None:
                # An absolute time moved 15% with what ran before it in the process on an H100 (decode
                # attention, 2026-11-22) while its speedup held: drift is judged loosely, the floor exactly.
                self.efficiency(f"{name}.{metric}", value, min=min_fraction, margin=gate.Margin(rel=0.25), unit=unit)
            else:
                self.info(f"{name}.{metric}", value, unit)

    def ceiling(self, metric: str, value: object, unit: str) -> None:
        """Record a measured ceiling of this GPU (`copy_tb_per_s`, `gemm_tflops.<unit>`); stored with
        the baselines, later runs predict every declared workload's time from it."""
        self.info(f"{roofline.CEILING_PREFIX}{metric}", value, unit)

    def _trace(self, name: str, side: str, *, write: bool, where: str) -> SideTrace:
        trace, metric = self._traces.take(name, side, write=write), f"trace:{name}.{side}"
        self._shared.traced = True
        if trace.error and not any(o.metric == metric for o in self._observations):
            failed = gate.judge_trace_error(metric, trace.error, where)
            self._add(Kind.TRACE, metric, where, lambda base: failed, None)
        return trace

    # -- what the plugin calls ----------------------------------------------
    def finish(self) -> WorkloadRecord:
        """Judge every observation against the (now complete) signature's baseline."""
        record = WorkloadRecord(self.nodeid, self.precision, dict(self._signature),
                            timed_s=self._timed_s, timer_wall_s=self._timer_wall_s, traces=self._traces.taken,
                            device=self._device.to_dict())
        for obs in self._observations:
            verdict = obs.judge(self._view(obs.metric))
            record.verdicts.append(verdict)
            if obs.stored is not None and verdict.status != gate.SKIP:
                record.metrics[obs.metric] = obs.stored
        # The callables hold the test's tensors; a finished test must not keep them alive.
        self._traces.release()
        return record

    def _view(self, metric: str) -> gate.BaselineView:
        return gate.baseline_view(self._entry, metric, json.loads(json.dumps(self._signature)), self._device.key)

    def _skip(self, kind: Kind, metric: str, reason: str, where: str) -> None:
        skipped = gate.judge_skipped(metric, kind, reason, where)
        self._add(kind, metric, where, lambda base: skipped, None)

    def _add(self, kind, metric, where, judge, stored) -> None:
        if any(o.metric == metric for o in self._observations):
            raise ValueError(f"metric {metric!r} recorded twice in {self.nodeid}; give each measurement its own name")
        self._observations.append(_Observation(kind, metric, where, judge, stored))
