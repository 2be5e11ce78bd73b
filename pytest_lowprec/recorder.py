"""The `lowprec` fixture's object: a test's measurements, judged into verdicts when the test body ends.

Measurements are kept raw and judged in `finish()`, so a signature set late in
the test still decides which baseline the values meet. No pytest import: the
plugin hands in the timer factory and the stored baseline entry.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from . import gate, roofline
from .config import GateConfig
from .gate import Kind, Margin, SpeedupTolerance, Verdict
from .hardware import DeviceInfo, GpuSpec, base_key
from .measure import SpeedResult, measure_speedup
from .profiling import NvtxRanges, SideTrace, match_kernels, nvtx_range, profile_side, trace_path
from .roofline import Expectation, Work
from .stats import summarize_pairs
from .timing import Timer

TimerFactory = Callable[[str, dict], Timer]


def _plain(value: object) -> object:
    """A JSON scalar for a signature: numbers, strings and bools stay, anything else becomes its repr."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    return repr(value)


def _call_site(depth: int = 2) -> str:
    frame = sys._getframe(depth)
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _floor(minimum: float | Expectation | None) -> tuple[float | None, str, Expectation | None]:
    """A speedup's floor as a number, how it was reached, and the expectation it came from (if any)."""
    if isinstance(minimum, Expectation):
        return minimum.floor, minimum.note(), minimum
    return _bound(minimum, "speedup min="), "", None


def _bound(value: object, name: str) -> float | None:
    """A bound as given (None: no bound); a NaN bound would let anything pass, text is a typo."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number or None, got {value!r}")
    return float(value)


def _as_float(value: object, what: str) -> float:
    """Metrics may arrive as 0-d tensors or numpy scalars; the gate works in Python floats. Text and
    booleans are refused: "35.0" from a log line would compare as a number nobody measured."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number (int, float, or a 0-d tensor), got {type(value).__name__} "
                        f"{value!r}")
    return float(value)


@dataclass
class SharedState:
    """What every recorder of a run shares: this GPU's registry entry and ceilings, and whether a
    profiler has run in this process yet (see Recorder.speedup)."""

    spec: GpuSpec | None = None
    ceilings: roofline.Ceilings | None = None
    traced: bool = False


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


@dataclass
class _Observation:
    kind: Kind
    metric: str
    where: str
    judge: Callable[[gate.BaselineView], Verdict]
    stored: dict | None


class Recorder:
    """The `lowprec` fixture. Record metrics and speedups; the plugin judges them after the test body."""

    def __init__(
        self,
        nodeid: str,
        precision: tuple[str, ...],
        params: dict,
        device: DeviceInfo,
        config: GateConfig,
        baseline_entry: dict | None,
        make_timer: TimerFactory,
        shared: SharedState | None = None,
    ):
        self.nodeid = nodeid
        self.precision = precision
        self._device = device
        self._config = config
        self._entry = baseline_entry
        self._make_timer = make_timer
        self._signature: dict = {"precision": ",".join(precision)}
        self._signature.update({f"param.{k}": _plain(v) for k, v in sorted(params.items())})
        self._observations: list[_Observation] = []
        self._timed_s = 0.0
        self._timer_wall_s = 0.0
        self._speed_sides: dict[str, dict[str, Callable[[], object]]] = {}
        self._speed_ms: dict[str, float] = {}
        self._traces: dict[str, dict[str, SideTrace]] = {}
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
        self._signature.update({k: _plain(v) for k, v in fields.items()})

    def accuracy(
        self,
        metric: str,
        value: object,
        *,
        min: float | None = None,  # noqa: A002 - reads as the bound it is
        max: float | None = None,  # noqa: A002
        higher_is_better: bool | None = None,
        margin: Margin | None = None,
    ) -> None:
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
        where = _call_site(3)  # the test's line, not accuracy()/memory()/efficiency()'s
        val = _as_float(value, f"{kind.value} {metric!r}")
        minimum, maximum = _bound(minimum, f"{metric} min="), _bound(maximum, f"{metric} max=")
        if kind is Kind.MEMORY and val < 0:
            raise ValueError(f"memory {metric!r} is a byte count, >= 0; got {val:g}")
        self._add(
            kind, metric, where,
            lambda base: gate.judge_value(
                metric, kind, val, minimum=minimum, maximum=maximum, higher_is_better=higher,
                margin=margin, base=base, unit=unit, update=self._config.update,
                strict=self._config.strict, where=where,
            ),
            {"kind": kind.value, "value": val, "unit": unit} if math.isfinite(val) else None,
        )

    def info(self, metric: str, value: object, unit: str = "") -> None:
        """Report a number with no bound (it is stored with the baseline and shown in reports)."""
        where = _call_site()
        val = _as_float(value, f"info {metric!r}")
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

    def speedup(
        self,
        baseline: Callable[[], object],
        optimized: Callable[[], object],
        *,
        min: float | Expectation | None = None,  # noqa: A002
        name: str = "speedup",
        device: str = "cuda",
        tolerance: SpeedupTolerance | None = None,
        graphs: bool = False,
        flush_l2: bool = True,
    ) -> SpeedResult | None:
        """Time `baseline` and `optimized` alternately and gate optimized's speedup against `min` (a number,
        or an Expectation from `lowprec.expect`) and the stored baseline.

        `device` says where the work runs: "cuda" work is timed with CUDA events and
        skips (with a reason) on a run without a GPU; "cpu" work is timed on the host.
        """
        where = _call_site()
        if device not in ("cuda", "cpu"):
            raise ValueError(f"speedup device must be 'cuda' or 'cpu', got {device!r}")
        floor, floor_note, expectation = _floor(min)
        if device == "cuda" and not self._device.is_cuda:
            reason = f"speed gate over CUDA work skipped: no CUDA device (gpu key {self._device.key})"
            skipped = gate.judge_skipped(name, Kind.SPEEDUP, reason, where)
            self._add(Kind.SPEEDUP, name, where, lambda base: skipped, None)
            return None
        config = self._config
        tol = tolerance or config.tolerance
        timer = self._make_timer(device, {"graphs": graphs, "flush_l2": flush_l2})
        baseline = self._nvtx.wrap(f"{name}:baseline", baseline)
        optimized = self._nvtx.wrap(f"{name}:optimized", optimized)
        view = self._view(name)
        lines = gate.speedup_decision_lines(floor, view, tol, config.update)
        seed, conf = config.seed, config.confidence
        result = measure_speedup(
            timer, baseline, optimized, config.sampling,
            settled=lambda pairs: gate.is_settled(summarize_pairs(pairs, conf, seed=seed), lines),
            fails=lambda summary: gate.judge_speedup(name, summary, floor, view, tol).failed,
            recording=config.update, rounds=config.record_rounds if config.update else 1,
            confidence=conf, seed=seed, bracket=lambda: nvtx_range(f"{self.nodeid}:{name}"),
        )
        self._timed_s += result.timed_s
        self._timer_wall_s += result.wall_s
        summary, m = result.summary, result.last
        extra = {"timer": m.timer, "samples": summary.n, "state_before": m.state_before,
                 "state_after": m.state_after, "measurements": result.measurements,
                 "refuted": [list(r) for r in result.refuted], "rounds": list(result.rounds),
                 "spread": result.spread}
        if expectation is not None:
            extra["expectation"] = expectation.as_dict()
        if m.timer == "host":
            extra["cpu_threads"] = config.cpu_threads
        # After torch.profiler has run in this process, eager launches are slower (CUPTI stays
        # attached): an eager, launch-bound measurement taken then is flagged, never silently trusted.
        after_trace = self._shared.traced and not graphs
        flags = (("throttled",) if m.throttled else ()) + (("after-trace",) if after_trace else ())
        flags += (("remeasured",) if result.refuted else ()) + (("confirmed",) if result.confirmed else ())

        def judge(base: gate.BaselineView) -> Verdict:
            v = gate.judge_speedup(name, summary, floor, base, tol, update=config.update, strict=config.strict,
                                   settled=result.settled, noise_cap=config.max_record_noise,
                                   spread=result.spread, floor_note=floor_note, sides_ms=result.sides_ms,
                                   where=where, extra=extra)
            return dataclasses.replace(v, flags=v.flags + flags) if flags else v

        stored = None
        if math.isfinite(summary.median):
            stored = {"kind": "speedup", "value": summary.median, "unit": "x", **summary.as_dict(),
                      "baseline_ms": result.sides_ms[0], "optimized_ms": result.sides_ms[1], "timer": m.timer,
                      "throttled": m.throttled}
            if result.rounds:
                stored.update(rounds=list(result.rounds), spread=result.spread)
            if expectation is not None and expectation.predicted is not None:
                stored["predicted"] = expectation.predicted
        self._add(Kind.SPEEDUP, name, where, judge, stored)
        self._speed_sides[name] = {"baseline": baseline, "optimized": optimized}
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
        where = _call_site()
        metric = f"kernels:{name}.{side}"
        if side not in ("baseline", "optimized"):
            raise ValueError(f"side must be 'baseline' or 'optimized', got {side!r}")
        require = [require] if isinstance(require, str) else list(require)
        forbid = [forbid] if isinstance(forbid, str) else list(forbid)
        if not self._device.is_cuda:
            reason = f"kernel proof skipped: no CUDA device (gpu key {self._device.key})"
            skipped = gate.judge_skipped(metric, Kind.PATH, reason, where)
            self._add(Kind.PATH, metric, where, lambda base: skipped, None)
            return
        if name not in self._speed_sides:
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
        spec, ceilings = self._shared.spec, self._shared.ceilings
        precisions = (precision,) if isinstance(precision, str) else (precision or self.precision)
        unit = roofline.unit_for(precisions)
        if flops is not None:
            tflops = flops / (ms * 1e-3) / 1e12
            self.info(f"{name}.tflops", tflops, "TFLOP/s")
            peak = spec.tflops(unit) if spec is not None else None
            if peak:
                self.info(f"{name}.of_peak_flops", tflops / peak, "of datasheet peak")
        if nbytes is not None:
            tbps = nbytes / (ms * 1e-3) / 1e12
            self.info(f"{name}.tb_per_s", tbps, "TB/s")
            if spec is not None and spec.hbm_gbps:
                self.info(f"{name}.of_peak_bandwidth", tbps / (spec.hbm_gbps / 1e3), "of datasheet peak")
        pred = roofline.predict(flops, nbytes, unit, ceilings) if ceilings is not None else None
        if pred is None:
            return
        self.info(f"{name}.predicted_ms", pred.seconds * 1e3, f"ms, predicted ({pred.bound}-bound)")
        fraction = pred.fraction(ms * 1e-3)
        if min_fraction is None:
            self.info(f"{name}.roofline_fraction", fraction, pred.label())
        else:
            # An absolute time moved 15% with what ran before it in the process on an H100 (decode
            # attention, 2026-11-22) while its speedup held: drift is judged loosely, the floor exactly.
            self.efficiency(f"{name}.roofline_fraction", fraction, min=min_fraction,
                            margin=gate.Margin(rel=0.25), unit=pred.label())

    def ceiling(self, metric: str, value: object, unit: str) -> None:
        """Record a measured ceiling of this GPU (`copy_tb_per_s`, `gemm_tflops.<unit>`); stored with
        the baselines, later runs predict every declared workload's time from it."""
        self.info(f"{roofline.CEILING_PREFIX}{metric}", value, unit)

    def _trace(self, name: str, side: str, *, write: bool, where: str) -> SideTrace:
        traces = self._traces.setdefault(name, {})
        if side in traces and (traces[side].file or not write):
            return traces[side]
        path = trace_path(self._config.trace_dir, self.nodeid, name, side) if write else None
        trace = profile_side(side, self._speed_sides[name][side], path)
        self._shared.traced = True
        traces[side] = trace
        if trace.error:
            metric = f"trace:{name}.{side}"
            failed = gate.judge_trace_error(metric, trace.error, where)
            if not any(o.metric == metric for o in self._observations):
                self._add(Kind.TRACE, metric, where, lambda base: failed, None)
        return trace

    # -- what the plugin calls ----------------------------------------------
    def finish(self) -> WorkloadRecord:
        """Judge every observation against the (now complete) signature's baseline."""
        record = WorkloadRecord(self.nodeid, self.precision, dict(self._signature),
                            timed_s=self._timed_s, timer_wall_s=self._timer_wall_s, traces=self._traces,
                            device=self._device.to_dict())
        for obs in self._observations:
            verdict = obs.judge(self._view(obs.metric))
            record.verdicts.append(verdict)
            if obs.stored is not None and verdict.status != gate.SKIP:
                record.metrics[obs.metric] = obs.stored
        # The callables hold the test's tensors; a finished test must not keep them alive.
        self._speed_sides.clear()
        return record

    def _view(self, metric: str) -> gate.BaselineView:
        sig = json.loads(json.dumps(self._signature))
        return gate.baseline_view(self._entry, metric, sig, self._device.key)

    def _add(self, kind, metric, where, judge, stored) -> None:
        if any(o.metric == metric for o in self._observations):
            raise ValueError(
                f"metric {metric!r} recorded twice in {self.nodeid}; give each measurement its own name"
            )
        self._observations.append(_Observation(kind, metric, where, judge, stored))
