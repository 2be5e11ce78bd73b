"""A summary sized for a pull-request comment or a CI step summary: regressions first."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..gate import Status
from ..names import markdown_text
from .counts import run_counts
from .rows import counts, verdict_frame
from .terminal import format_baseline, format_delta, format_sides, format_value, format_verdict


def _cell(text: str) -> str:
    """Test ids and metric names are user text: no table breaks, no markup, no mentions."""
    return markdown_text(text)


def _table(rows) -> list[str]:
    lines = ["| test | metric | value [interval] | bound | baseline | delta | ms base / opt (vs stored) | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for rec, v in rows:
        verdict = format_verdict(v) + (f": {'; '.join(v.reasons)}" if v.status == Status.FAIL else "")
        cells = (rec.nodeid, v.metric, format_value(v), v.bound or "-", format_baseline(v), format_delta(v),
                 format_sides(v), verdict)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def render(path: Path, header: dict, records, appendix: Sequence[str] = (), outcomes=None) -> None:
    """`appendix`: lines placed after the regressions (review.py's trend of each regressed metric);
    `outcomes`: pytest's own (review.Outcomes), so the counts are pytest's, skipped tests included."""
    records = sorted(records, key=lambda r: r.nodeid)
    pairs = [(r, v) for r in records for v in r.verdicts]
    failed = [(r, v) for r, v in pairs if v.status == Status.FAIL]
    inconclusive = [(r, v) for r, v in pairs if v.status == Status.INCONCLUSIVE]
    ungated = [(r, v) for r, v in pairs if v.status == Status.UNGATED]
    improved = [(r, v) for r, v in pairs if v.status == Status.PASS and "improved" in v.flags]
    shown = failed + inconclusive + ungated + improved
    rest = [(r, v) for r, v in pairs if (r, v) not in shown]
    c, p = counts(verdict_frame(records)), run_counts(records, outcomes)
    said = " (as pytest counted)" if p["source"] == "pytest" else ""
    lines = [f"## lowprec gate on {_cell(header['gpu'])} ({_cell(header['device_name'])})", "",
             f"{p['tests']} tests{said}: **{p['failed']} failed**, {p['passed']} passed, {p['skipped']} skipped; "
             f"{c['tests']} with lowprec verdicts, {c['improved']} improved; verdicts {c['inconclusive']} "
             f"inconclusive, {c['ungated']} ungated. Commit {_cell(header.get('commit') or 'unknown')}, "
             f"{header['date']}.", ""]
    if failed:
        lines += ["### Regressions and failures", ""] + _table(failed) + [""]
    lines += list(appendix)
    if inconclusive:
        lines += ["### Inconclusive (the interval still straddled a decision line)", ""] + _table(inconclusive) + [""]
    if ungated:
        lines += ["### Ungated (neither a bound nor a usable baseline)", ""] + _table(ungated) + [""]
    if improved:
        lines += ["### Improvements", ""] + _table(improved) + [""]
    if rest:
        lines += ["<details><summary>All other verdicts</summary>", ""] + _table(rest) + ["", "</details>", ""]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines), encoding="utf-8")
