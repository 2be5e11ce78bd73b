"""The HTML regression report: one self-contained file (inline CSS, JS and SVG), rendered from final verdicts.

What changed comes first (pytest's counts, regressions, inconclusive, ungated, improvements, the delta
chart); then every test, one row each, filterable. Jinja2 autoescapes every name; the SVG escapes its own.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from pathlib import Path

from ..changepoints import METHOD
from ..gate import Status
from .counts import run_counts
from .svg import accuracy_vs_speedup, delta_chart, sparkline, speedup_chart
from .terminal import ORDER, format_baseline, format_delta, format_number, format_sides, format_value, format_verdict

_SECTIONS = (("fail", "Regressions and failures"), ("inconclusive", "Inconclusive"),
             ("ungated", "Ungated"), ("improved", "Improvements"))
_TEST_ORDER = {"fail": 0, "inconclusive": 1, "ungated": 2, "pass": 3, "skip": 4}
_TOP_CHART = 15  # speedups in the first delta chart: every changed one and the most moved others


def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("pytest_lowprec", "report/templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
    )


def _row_anchor(nodeid: str) -> str:
    """The element id of a test's row: test ids hold any character, an id should not."""
    return "test-" + hashlib.sha1(nodeid.encode()).hexdigest()[:12]


def _finite(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _verdict_view(rec, v, trends: dict) -> dict:
    low, high = v.interval if v.interval else (None, None)
    view = trends.get((rec.nodeid, v.metric))
    tol = v.extra.get("tolerance_pct")
    return {
        "test": rec.nodeid, "metric": v.metric, "kind": v.kind.value, "status": v.status.value,
        "improved": "improved" in v.flags, "precision": ",".join(rec.precision),
        "value": _finite(v.value), "low": _finite(low), "high": _finite(high), "baseline": _finite(v.baseline),
        "delta_pct": _finite(v.delta_pct), "tolerance_pct": _finite(tol),
        "value_text": format_value(v), "bound": v.bound or "-", "baseline_text": format_baseline(v),
        "delta_text": format_delta(v), "tolerance_text": f"±{tol:.1f}%" if tol is not None else "-",
        "sides_text": format_sides(v), "verdict_text": format_verdict(v),
        "reasons": "; ".join(v.reasons) if v.status != Status.PASS else "",
        "trend": view, "anchor": view.anchor if view else None, "row": _row_anchor(rec.nodeid),
    }


def _test_status(rec) -> str:
    if rec.outcome in ("failed", "error") or any(v.status == Status.FAIL for v in rec.verdicts):
        return "fail"
    statuses = [v.status for v in rec.verdicts] or [Status.SKIP if rec.outcome == "skipped" else Status.PASS]
    return min(statuses, key=lambda s: ORDER[s]).value


def _suite(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _test_view(rec, verdicts: list[dict]) -> dict:
    speed = next((v for v in verdicts if v["kind"] == "speedup" and v["value"] is not None), None)
    acc = next((v for v in verdicts if v["kind"] == "accuracy" and v["value"] is not None), None)
    name = rec.nodeid.split("::", 1)[-1]
    status = _test_status(rec)
    deltas = [v["delta_pct"] for v in verdicts if v["kind"] == "speedup" and v["delta_pct"] is not None]
    return {
        "id": rec.nodeid, "row": _row_anchor(rec.nodeid), "name": name, "suite": _suite(rec.nodeid),
        "precision": ",".join(rec.precision) or "-",
        "status": status, "order": _TEST_ORDER.get(status, 5), "outcome": rec.outcome,
        "speedup_text": f"{speed['value']:.2f}x" if speed else "-", "speedup": speed["value"] if speed else "",
        "delta": min(deltas) if deltas else "", "delta_text": f"{min(deltas):+.1f}%" if deltas else "-",
        "accuracy_text": f"{acc['metric']} {format_number(acc['value'], '')}" if acc else "-",
        "verdicts": sorted(verdicts, key=lambda v: (ORDER[Status(v["status"])], v["metric"])),
        "search": f"{rec.nodeid} {' '.join(v['metric'] for v in verdicts)}".lower(),
        "counts": Counter(v["status"] for v in verdicts),
    }


def _sparkline(view, width: int = 260) -> str:
    points = view.points
    return sparkline([p.value for p in points], list(view.trend.indices), [p.status for p in points],
                     [p.commit or f"run {p.run_id}" for p in points], width=width)


def _scatter(verdicts: list[dict]) -> tuple[str, str]:
    """Accuracy (the most common decibel metric, else the most common accuracy metric) against every
    speedup of the same test, named speedups included."""
    acc = [v for v in verdicts if v["kind"] == "accuracy" and v["value"] is not None]
    if not acc:
        return "", ""
    names = Counter(v["metric"] for v in acc)
    db = [m for m, _ in names.most_common() if m.endswith("_db")]
    metric = db[0] if db else names.most_common(1)[0][0]
    by_test = {v["test"]: v["value"] for v in acc if v["metric"] == metric}
    points = [{"test": v["test"], "metric": v["metric"], "precision": v["precision"], "speedup": v["value"],
               "accuracy": by_test[v["test"]]}
              for v in verdicts if v["kind"] == "speedup" and v["value"] and v["value"] > 0 and v["test"] in by_test]
    return accuracy_vs_speedup(points, metric), metric


def _skipped(outcomes) -> list[dict]:
    """Skipped tests grouped by reason, most common first."""
    if outcomes is None:
        return []
    groups: dict[str, list[str]] = {}
    for s in outcomes.skipped:
        groups.setdefault(s["reason"], []).append(s["test"])
    return [{"reason": r, "tests": sorted(t)} for r, t in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))]


def _traces(records, report_dir: Path) -> list[dict]:
    out = []
    for rec in sorted(records, key=lambda r: r.nodeid):
        for name, sides in rec.traces.items():
            for side, t in sides.items():
                href = os.path.relpath(t.file, report_dir) if t.file else None
                out.append({"test": rec.nodeid, "name": name, "side": side, "href": href, "error": t.error,
                            "kernels": t.kernels})
    return out


def context(header: dict, records, review=None, report_dir: Path | None = None) -> dict:
    """Everything the template shows, as plain values: the renderer's whole input, testable without HTML."""
    records = sorted(records, key=lambda r: r.nodeid)
    trends = dict(review.trends) if review is not None else {}
    outcomes = review.outcomes if review is not None else None
    per_test = {rec.nodeid: [_verdict_view(rec, v, trends) for v in rec.verdicts] for rec in records}
    verdicts = [v for vs in per_test.values() for v in vs]
    changed = {key: [v for v in verdicts if (v["improved"] if key == "improved" else v["status"] == key)]
               for key, _ in _SECTIONS}
    for rows in changed.values():
        rows.sort(key=lambda v: (v["delta_pct"] if v["delta_pct"] is not None else 0.0, v["test"], v["metric"]))
    compared = sorted((v for v in verdicts if v["kind"] == "speedup" and v["delta_pct"] is not None and v["baseline"]),
                      key=lambda v: v["delta_pct"])
    changed_ids = {id(v) for rows in changed.values() for v in rows}
    top = [v for v in compared if id(v) in changed_ids]
    top += sorted((v for v in compared if id(v) not in changed_ids), key=lambda v: -abs(v["delta_pct"]))[
        :max(0, _TOP_CHART - len(top))]
    top.sort(key=lambda v: v["delta_pct"])
    tests = sorted((_test_view(rec, per_test[rec.nodeid]) for rec in records), key=lambda t: (t["order"], t["id"]))
    moved = [v for v in verdicts if v["trend"] is not None and (v["trend"].moved or v["status"] == "fail")]
    scatter, scatter_metric = _scatter(verdicts)
    speedups = sorted((v for v in verdicts if v["kind"] == "speedup" and v["value"]), key=lambda v: -v["value"])
    return {
        "header": header,
        "counts": run_counts(records, outcomes),
        "gate": {key: len(rows) for key, rows in changed.items()},
        "sections": [{"key": key, "title": title, "rows": changed[key]} for key, title in _SECTIONS if changed[key]],
        "skipped": _skipped(outcomes),
        "top_delta_svg": delta_chart(top),
        "all_delta_svg": delta_chart(compared) if len(compared) > len(top) else "",
        "compared": len(compared),
        "speed_svg": speedup_chart(speedups),
        "scatter_svg": scatter, "scatter_metric": scatter_metric,
        "tests": tests,
        "statuses": [s for s in ("fail", "inconclusive", "ungated", "pass", "skip") if any(
            t["status"] == s for t in tests)],
        "precisions": sorted({t["precision"] for t in tests}),
        "suites": sorted({t["suite"] for t in tests}),
        "moved": [{**v, "svg": _sparkline(v["trend"]), "text": v["trend"].describe()} for v in moved],
        "sparklines": {(v["test"], v["metric"]): _sparkline(v["trend"], 130)
                       for v in verdicts if v["trend"] is not None},
        "changepoint_method": METHOD,
        "history_note": review.history_note if review is not None else "",
        "traces": _traces(records, report_dir or Path.cwd()),
    }


def render(path: Path, header: dict, records, review=None) -> None:
    """Write the report; `review` (review.ReviewData) adds pytest's counts, skip reasons and trends."""
    html = _environment().get_template("report.html.j2").render(
        **context(header, list(records), review, Path(path).parent.resolve()))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # Jinja2 escaped the markup; a lone surrogate in user text is written as its \udcXX escape.
    Path(path).write_text(html, encoding="utf-8", errors="backslashreplace")
