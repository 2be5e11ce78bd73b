"""`compare`'s output: a terminal table and a markdown table of two runs' metrics, largest moves first."""

from __future__ import annotations

from ..compare import Change
from ..names import markdown_text, terminal_text
from .terminal import format_number, table

HEADERS = ("test", "metric", "A", "B", "change", "")


def _value(value: float | None, interval: tuple[float, float] | None, unit: str) -> str:
    if value is None:
        return "-"
    text = format_number(value, unit)
    return text + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def _mark(c: Change) -> str:
    """What a reader should make of the change: separated intervals, a status that moved, presence."""
    notes = []
    if c.presence:
        notes.append(c.presence)
    if c.separated:
        notes.append("faster" if c.kind == "speedup" and (c.change_pct or 0) > 0 else
                     "slower" if c.kind == "speedup" else "separated")
    elif c.separated is False:
        notes.append("within noise")
    if c.a_status and c.b_status and c.a_status != c.b_status:
        notes.append(f"{c.a_status} -> {c.b_status}")
    return ", ".join(notes)


def rows(changes: list[Change]) -> list[list[str]]:
    return [[c.test, c.metric, _value(c.a, c.a_interval, c.unit), _value(c.b, c.b_interval, c.unit),
             "-" if c.change_pct is None else f"{c.change_pct:+.1f}%", _mark(c)] for c in changes]


def terminal(title: list[str], changes: list[Change]) -> str:
    return "\n".join([terminal_text(line) for line in title] + [""] + table(HEADERS, rows(changes)))


def markdown(title: list[str], changes: list[Change]) -> str:
    lines = [markdown_text(line) + "  " for line in title] + [""]
    lines += ["| " + " | ".join(HEADERS[:-1]) + " | note |", "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(markdown_text(cell) for cell in r) + " |" for r in rows(changes)]
    return "\n".join(lines) + "\n"
