"""Plain-text tables: the failure message of one test, and the session summary."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..gate import Status, Verdict
from ..names import terminal_text

_HEADERS = ("metric", "value [interval]", "bound", "baseline", "delta", "ms base / opt (vs stored)", "verdict")
# Failures first, then what the gate could not decide or had nothing to decide by, then the rest.
ORDER = {Status.FAIL: 0, Status.INCONCLUSIVE: 1, Status.UNGATED: 2, Status.PASS: 3, Status.SKIP: 4}
# What the session table lists by default: a verdict someone has to look at.
PROBLEMS = (Status.FAIL, Status.INCONCLUSIVE, Status.UNGATED)
_COUNT_ORDER = (Status.PASS, Status.FAIL, Status.INCONCLUSIVE, Status.UNGATED, Status.SKIP)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def format_number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "B":
        return format_bytes(value)
    if unit == "x":
        return f"{value:.3f}x"
    text = f"{value:.4g}"
    return f"{text} {unit}" if unit else text


def format_value(v: Verdict) -> str:
    if v.status == Status.SKIP and v.value is None:
        return "-"
    text = format_number(v.value, v.unit)
    if v.interval is not None:
        lo, hi = v.interval
        text += f" [{lo:.3f}, {hi:.3f}]"
    return text


def format_baseline(v: Verdict) -> str:
    if v.baseline is None:
        return "-"
    return format_number(v.baseline, v.unit)


def format_delta(v: Verdict) -> str:
    return "-" if v.delta_pct is None else f"{v.delta_pct:+.1f}%"


def format_sides(v: Verdict) -> str:
    """Both sides' median ms of a speedup and each one's change against the stored baseline's: a lower
    speedup from a faster reference reads differently from one with a slower optimized side."""
    if "baseline_ms" not in v.extra:
        return "-"
    text = f"{v.extra['baseline_ms']:.4g} / {v.extra['optimized_ms']:.4g}"
    deltas = [v.extra.get(f"{side}_ms_delta_pct") for side in ("baseline", "optimized")]
    if all(d is not None for d in deltas):
        text += f" ({deltas[0]:+.1f}% / {deltas[1]:+.1f}%)"
    return text


def format_verdict(v: Verdict) -> str:
    word = v.status.value.upper() if v.status != Status.PASS else "pass"
    return word + (f" ({', '.join(v.flags)})" if v.flags else "")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    rows = [[terminal_text(c) for c in r] for r in rows]  # user text: no escape sequence reaches the terminal
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    def line(cells):
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
    return [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]


def verdict_row(v: Verdict) -> list[str]:
    return [v.metric, format_value(v), v.bound or "-", format_baseline(v), format_delta(v), format_sides(v),
            format_verdict(v)]


def failure_message(nodeid: str, gpu: str, verdicts: Sequence[Verdict]) -> str:
    """One message for every failed verdict of a test: what, how much, against what, where."""
    failed = [v for v in verdicts if v.failed]
    dates = sorted({v.baseline_date for v in verdicts if v.baseline_date})
    baseline_note = f"baseline recorded {', '.join(dates)}" if dates else f"no stored baseline for {gpu}"
    lines = [f"lowprec gate: {len(failed)} of {len(verdicts)} verdicts failed for {nodeid} "
             f"on {gpu} ({baseline_note})"]
    lines += ["  " + row for row in table(_HEADERS, (verdict_row(v) for v in verdicts))]
    for v in failed:
        for reason in v.reasons:
            lines.append(f"  {v.metric}: {reason}  (at {v.where})" if v.where else f"  {v.metric}: {reason}")
    return "\n".join(terminal_text(line) for line in lines)


def count_line(records: Sequence) -> str:
    """'lowprec: 197 verdicts in 60 tests: 190 pass, 3 fail, 4 ungated; 2 improved': every status seen."""
    verdicts = [v for rec in records for v in rec.verdicts]
    counts = {status: sum(v.status == status for v in verdicts) for status in _COUNT_ORDER}
    parts = [f"{n} {status.value}" for status, n in counts.items() if n]
    improved = sum("improved" in v.flags for v in verdicts)
    return (f"lowprec: {len(verdicts)} verdict{'s' if len(verdicts) != 1 else ''} in {len(records)} "
            f"test{'s' if len(records) != 1 else ''}: {', '.join(parts) or 'none'}"
            + (f"; {improved} improved" if improved else ""))


def summary_lines(records: Sequence, *, every: bool = False) -> list[str]:
    """The session table under its count line: failures first, then what the gate could not decide or had
    nothing to decide by; passing and skipped verdicts too when `every` (-v, --lowprec-table=all)."""
    rows, hidden = [], 0
    for rec in records:
        for v in rec.verdicts:
            if not every and v.status not in PROBLEMS:
                hidden += 1
            else:
                rows.append((ORDER[v.status], rec.nodeid, [rec.nodeid, ",".join(rec.precision)] + verdict_row(v)))
    rows.sort(key=lambda r: (r[0], r[1]))
    lines = [count_line(records)]
    if rows:
        lines += table(("test", "precision") + _HEADERS, (r[2] for r in rows))
    if hidden:
        lines.append(f"({hidden} passing or skipped verdict{'s' if hidden != 1 else ''} not listed: "
                     "-v or --lowprec-table=all lists every verdict)")
    reasons = sorted({v.reasons[0] for rec in records for v in rec.verdicts if v.status == Status.SKIP and v.reasons})
    return lines + [terminal_text(f"skipped: {reason}") for reason in reasons]
