"""The numbers of the gate-quality study, from the runs benchmarks/gate_quality.py recorded.

Pure: each run is the probe's JSON plus the driver's `phase`, `index` and `wall_s`; the stored
baselines come in as {workload: (value, noise)}. A workload is "<test id> <speedup name>".
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable

Stored = dict[str, tuple[float, float | None]]


def workload(row: dict) -> str:
    return f"{row['nodeid']} {row['metric']}"


def speed_rows(runs: Iterable[dict], phase: str, slowdown: float | None = None) -> dict[str, list[dict]]:
    """Every measured speed verdict of the runs of one phase (and slowdown), by workload."""
    out: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        if run["phase"] != phase or (slowdown is not None and not math.isclose(run["slowdown"], slowdown)):
            continue
        for row in run["rows"]:
            if "interval" in row and row.get("value") is not None:
                out[workload(row)].append(row)
    return dict(out)


def cv(values: list[float]) -> float:
    """Sample standard deviation over the mean: the spread of one workload's speedup across processes."""
    if len(values) < 2:
        return math.nan
    return statistics.stdev(values) / statistics.fmean(values)


def tolerance(floor: float, noise_k: float, noise: float | None) -> float:
    """The gate's allowed drop below the baseline (gate.SpeedupTolerance.relative)."""
    return min(max(floor, noise_k * (noise or 0.0)), 0.95)


def regressed(row: dict, base: tuple[float, float | None], floor: float, noise_k: float) -> bool:
    """Whether the gate, at this floor, fails the row against its baseline: the interval's top lies
    below baseline x (1 - tolerance). The same rule as gate.judge_speedup, replayed offline."""
    value, noise = base
    return row["interval"][1] < value * (1.0 - tolerance(floor, noise_k, noise))


def spread_table(runs: list[dict], stored: Stored) -> list[dict]:
    """Per workload over the unchanged runs: median speedup, CV across processes, the widest drift
    from the stored baseline, the median interval half-width within a run, and samples taken."""
    rows = []
    for name, found in sorted(speed_rows(runs, "unchanged").items()):
        values = [r["value"] for r in found]
        base = stored.get(name, (math.nan, None))[0]
        deltas = [100.0 * (v - base) / base for v in values] if base == base else [math.nan]
        half = [50.0 * (r["interval"][1] - r["interval"][0]) / r["value"] for r in found]
        rows.append({
            "workload": name, "runs": len(values), "median": statistics.median(values), "baseline": base,
            "cv_pct": 100.0 * cv(values), "worst_delta_pct": min(deltas), "best_delta_pct": max(deltas),
            "half_width_pct": statistics.median(half),
            "samples": statistics.median(r["samples"] or 0 for r in found),
            "failed": sum(r["status"] == "fail" for r in found),
        })
    return rows


def false_alarms(runs: list[dict], recorded: set[str] | None = None) -> dict:
    """Runs of unchanged code (the speed-test runs and the full-suite runs) whose speed or efficiency
    verdicts failed. An accuracy bound that fails is a real failure, listed apart; so is a timing verdict
    of a test absent from `recorded` (the baseline file's test ids): it failed when the file was
    recorded, so it is a claim the GPU does not meet, standing, not an alarm."""
    unchanged = [r for r in runs if r["phase"] in ("unchanged", "overhead")]
    alarms: dict[str, int] = defaultdict(int)
    standing: dict[str, int] = defaultdict(int)
    real: dict[str, int] = defaultdict(int)
    bad_runs = 0
    for run in unchanged:
        timing = [row for row in run["rows"] if row["status"] == "fail"
                  and ("interval" in row or row.get("kind") == "efficiency")]
        alarming = [row for row in timing if recorded is None or row["nodeid"] in recorded]
        bad_runs += bool(alarming)
        for row in timing:
            (alarms if row in alarming else standing)[workload(row)] += 1
        for row in run["rows"]:
            if row["status"] == "fail" and row not in timing:
                real[workload(row)] += 1
    return {"runs": len(unchanged), "runs_with_a_false_alarm": bad_runs, "by_workload": dict(alarms),
            "standing_failures": dict(standing), "accuracy_failures": dict(real)}


def detection_table(runs: list[dict]) -> list[dict]:
    """Per injected slowdown and workload: how many runs the gate failed, and the slowdown reached."""
    levels = sorted({r["slowdown"] for r in runs if r["phase"] == "inject"})
    rows = []
    for level in levels:
        for name, found in sorted(speed_rows(runs, "inject", level).items()):
            reached = [r["injection"]["reached"] for r in found if r.get("injection")]
            rows.append({
                "slowdown": level, "workload": name, "runs": len(found),
                "caught": sum(r["status"] == "fail" for r in found),
                "reached_pct": 100.0 * statistics.median(reached) if reached else math.nan,
                "median": statistics.median(r["value"] for r in found),
            })
    return rows


def replay(runs: list[dict], stored: Stored, floors: list[float], noise_k: float) -> list[dict]:
    """False alarms and detections had the tolerance floor been each of `floors`, from the same runs.

    Approximate where sampling adapts to the decision lines (a run stops once its interval clears
    them), so the real gate at that floor could have sampled longer; the measured floor is exact."""
    unchanged = speed_rows(runs, "unchanged")
    levels = sorted({r["slowdown"] for r in runs if r["phase"] == "inject"})
    out = []
    for floor in floors:
        alarms = sum(regressed(r, stored[n], floor, noise_k) for n, rs in unchanged.items() if n in stored
                     for r in rs)
        total = sum(len(rs) for n, rs in unchanged.items() if n in stored)
        row = {"floor": floor, "false_alarms": alarms, "unchanged_verdicts": total}
        for level in levels:
            injected = speed_rows(runs, "inject", level)
            caught = [regressed(r, stored[n], floor, noise_k) for n, rs in injected.items() if n in stored for r in rs]
            row[f"caught_{level:g}"] = (sum(caught), len(caught))
        out.append(row)
    return out


def slowdown_caught(runs: list[dict], stored: Stored, floor: float, noise_k: float,
                    share: float = 0.95) -> list[dict]:
    """Per workload, the smallest slowdown the gate would catch in `share` of the unchanged runs:
    a slowdown f divides a run's interval by (1 + f), so the run is caught once
    high / (1 + f) < baseline x (1 - tolerance)."""
    out = []
    for name, found in sorted(speed_rows(runs, "unchanged").items()):
        if name not in stored:
            continue
        value, noise = stored[name]
        line = value * (1.0 - tolerance(floor, noise_k, noise))
        needed = sorted(max(0.0, r["interval"][1] / line - 1.0) for r in found)
        rank = min(len(needed) - 1, math.ceil(share * len(needed)) - 1)
        out.append({"workload": name, "runs": len(found), "slowdown_pct": 100.0 * needed[rank],
                    "tolerance_pct": 100.0 * tolerance(floor, noise_k, noise)})
    return out


def peers_table(runs: list[dict]) -> list[dict]:
    """Per workload over the peer runs: the spread across processes of the gate's speedup and of
    pytest-benchmark's and do_bench's estimates of the same speedup, with each one's median."""
    out = []
    for name, found in sorted(speed_rows(runs, "peers").items()):
        row = {"workload": name, "runs": len(found)}
        series = {"lowprec": [r["value"] for r in found]}
        for peer in ("pytest_benchmark", "do_bench"):
            series[peer] = [r["peers"][peer]["speedup"] for r in found if r.get("peers") and peer in r["peers"]]
        for key, values in series.items():
            row[f"{key}_median"] = statistics.median(values) if values else math.nan
            row[f"{key}_cv_pct"] = 100.0 * cv(values) if values else math.nan
        out.append(row)
    return out


def overhead(run: dict) -> dict:
    """Where a suite run's wall time went: measured samples; the timer's warm-up, flushes, syncs and
    interval checks around them; test bodies outside the timer; the process's start before pytest
    configures (interpreter, imports); and pytest and the plugin outside tests within the session
    (collection, the gate's session start, baselines and reports). The plugin's own share is the timer
    overhead and the session's time outside tests."""
    wall = run["wall_s"]
    body = run["phases_s"].get("call", 0.0)
    in_timer = run["timer_wall_s"]
    timed = run["timed_s"]
    session = run.get("session_wall_s", wall)
    in_session_outside = session - sum(run["phases_s"].values())
    plugin = (in_timer - timed) + in_session_outside
    return {
        "wall_s": wall, "timed_s": timed, "timer_overhead_s": in_timer - timed,
        "bodies_outside_timer_s": body - in_timer,
        "setup_teardown_s": run["phases_s"].get("setup", 0.0) + run["phases_s"].get("teardown", 0.0),
        "process_start_s": wall - session, "session_outside_tests_s": in_session_outside,
        "plugin_overhead_pct_of_wall": 100.0 * plugin / wall,
    }


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, tuple):
        return f"{value[0]}/{value[1]}"
    return str(value)


def markdown(rows: list[dict], columns: list[str] | None = None) -> str:
    """One table, its columns in the rows' key order unless given."""
    if not rows:
        return "(no rows)\n"
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"
