"""The HTML regression report: one self-contained file, rendered from final verdicts."""

from __future__ import annotations

import os
from pathlib import Path

import jinja2

from ..gate import Status, Verdict
from .rows import counts, verdict_frame
from .svg import accuracy_vs_speedup, speedup_chart
from .terminal import ORDER, format_baseline, format_delta, format_sides, format_value, format_verdict


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("pytest_lowprec", "report/templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
    )


def _rows(records) -> list[dict]:
    rows = []
    for rec in sorted(records, key=lambda r: r.nodeid):
        for v in rec.verdicts:
            rows.append(_row(rec, v))
    rows.sort(key=lambda r: (ORDER[Status(r["status"])], r["test"]))
    return rows


def _row(rec, v: Verdict) -> dict:
    return {"test": rec.nodeid, "precision": ",".join(rec.precision), "metric": v.metric,
            "status": v.status.value, "bound": v.bound, "value_text": format_value(v),
            "baseline_text": format_baseline(v), "delta_text": format_delta(v), "sides_text": format_sides(v),
            "verdict_text": format_verdict(v), "reasons": "; ".join(v.reasons) if v.status != Status.PASS else ""}


def _traces(records, report_dir: Path) -> list[dict]:
    out = []
    for rec in sorted(records, key=lambda r: r.nodeid):
        for name, sides in rec.traces.items():
            for side, t in sides.items():
                href = os.path.relpath(t.file, report_dir) if t.file else None
                out.append({"test": rec.nodeid, "name": name, "side": side, "href": href, "error": t.error,
                            "kernels": t.kernels})
    return out


def render(path: Path, header: dict, records) -> None:
    records = list(records)
    frame = verdict_frame(records)
    html = _environment().get_template("report.html.j2").render(
        header=header,
        counts=counts(frame),
        rows=_rows(records),
        speed_svg=speedup_chart(frame),
        accuracy_svg=accuracy_vs_speedup(frame),
        traces=_traces(records, Path(path).parent.resolve()),
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # Jinja2 escaped the markup; a lone surrogate in user text is written as its \udcXX escape.
    Path(path).write_text(html, encoding="utf-8", errors="backslashreplace")
