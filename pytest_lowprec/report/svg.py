"""Inline SVG plots, drawn by hand so the report opens with no network and no plotting library.

Every string that reaches the SVG goes through html.escape: test ids are user text. Inputs are plain
dicts (see html.py's `_verdict_view`), so drawing needs neither pandas nor numpy.
"""

from __future__ import annotations

import math
from html import escape

_COLOUR = {"fail": "#c0392b", "pass": "#2e86c1", "inconclusive": "#d68910", "ungated": "#d68910", "skip": "#999"}


def _open(width: int, height: int, label: str, css: str = "plot") -> str:
    return (f'<svg class="{css}" role="img" aria-label="{escape(label)}" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">')


def _short(test: str, metric: str, room: int = 60) -> str:
    """The test without its file (the table names it), and the metric; cut from the left, the end differs."""
    text = f"{test.split('::', 1)[-1]} {metric}"
    return text if len(text) <= room else "…" + text[-(room - 1):]


def delta_chart(rows: list[dict], limit_pct: float = 50.0) -> str:
    """Each speedup's change against its stored baseline, centred on 0%: a bar to the median's change,
    whiskers over the interval's, the shaded band the tolerance allows. Values past ±limit are clipped
    with an arrow and their number written out."""
    rows = [r for r in rows if r.get("delta_pct") is not None and r.get("baseline")]
    if not rows:
        return ""
    w, row_h, left, right, top = 1000, 18, 380, 70, 26
    spans = []
    for r in rows:
        spans.append(abs(r["delta_pct"]))
        spans.append(r.get("tolerance_pct") or 0.0)
        for end in (r.get("low"), r.get("high")):
            if end is not None:
                spans.append(abs(100.0 * (end - r["baseline"]) / r["baseline"]))
    half = next(h for h in (2, 5, 10, 15, 20, 30, 50, 100) if h >= min(max(spans) * 1.1, limit_pct))
    height = top + row_h * len(rows) + 8
    mid = left + (w - left - right) / 2
    scale = (w - left - right) / 2 / half
    def x(pct: float) -> float:
        return mid + scale * max(-half, min(half, pct))
    parts = [_open(w, height, "change of each speedup against its stored baseline, with tolerance bands")]
    for tick in (-half, -half / 2, 0.0, half / 2, half):
        style = 'stroke="#555"' if tick == 0 else 'stroke="#ddd" stroke-dasharray="2,3"'
        parts.append(f'<line x1="{x(tick):.1f}" y1="{top - 6}" x2="{x(tick):.1f}" y2="{height - 4}" {style}/>')
        label = "baseline (0%)" if tick == 0 else f"{tick:+g}%"
        parts.append(f'<text x="{x(tick):.1f}" y="{top - 10}" font-size="10" text-anchor="middle">{label}</text>')
    for i, r in enumerate(rows):
        y = top + i * row_h
        colour = _COLOUR.get(r["status"], "#999")
        parts.append(_row_label(r, left - 8, y + 12))
        tol = r.get("tolerance_pct")
        if tol:
            parts.append(f'<rect class="band" x="{x(-tol):.1f}" y="{y + 1}" width="{x(tol) - x(-tol):.1f}" '
                         f'height="{row_h - 2}" fill="#e8eef3"><title>tolerance ±{tol:.1f}%</title></rect>')
        d = r["delta_pct"]
        parts.append(f'<rect x="{min(x(0), x(d)):.1f}" y="{y + 4}" width="{abs(x(d) - x(0)):.1f}" height="{row_h - 8}" '
                     f'fill="{colour}" opacity="0.8"/>')
        if r.get("low") is not None and r.get("high") is not None:
            lo = 100.0 * (r["low"] - r["baseline"]) / r["baseline"]
            hi = 100.0 * (r["high"] - r["baseline"]) / r["baseline"]
            parts.append(f'<line class="whisker" x1="{x(lo):.1f}" y1="{y + row_h / 2}" x2="{x(hi):.1f}" '
                         f'y2="{y + row_h / 2}" stroke="#000"/>')
            for end in (lo, hi):
                parts.append(f'<line x1="{x(end):.1f}" y1="{y + 5}" x2="{x(end):.1f}" y2="{y + row_h - 5}" '
                             f'stroke="#000"/>')
        clipped = abs(d) > half
        text = f"{d:+.1f}%" + (" ▸" if clipped and d > 0 else "") + (" ◂" if clipped and d < 0 else "")
        parts.append(f'<text x="{w - right + 6}" y="{y + 12}" font-size="11" fill="{colour}">{escape(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks between lo and hi on a log axis."""
    out = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0 ** e
            if lo <= v <= hi:
                out.append(v)
    return out


def speedup_chart(rows: list[dict]) -> str:
    """Absolute speedups on a log axis (73.9x and 1.8x both readable): the median, its interval, and the
    stored baseline as a labelled tick; the 1x line is where the optimized side stops paying."""
    rows = [r for r in rows if r.get("value") is not None and r["value"] > 0]
    if not rows:
        return ""
    w, row_h, left, right, top = 1000, 18, 380, 60, 26
    ends = [v for r in rows for v in (r["value"], r.get("low"), r.get("high"), r.get("baseline")) if v and v > 0]
    lo, hi = min(min(ends), 1.0) / 1.15, max(ends) * 1.15
    def x(v: float) -> float:
        return left + (w - left - right) * (math.log(max(v, lo)) - math.log(lo)) / (math.log(hi) - math.log(lo))
    height = top + row_h * len(rows) + 8
    parts = [_open(w, height, "speedup of each test on a log axis, with its interval and stored baseline")]
    for tick in _log_ticks(lo, hi):
        parts.append(f'<line x1="{x(tick):.1f}" y1="{top - 6}" x2="{x(tick):.1f}" y2="{height - 4}" '
                     f'stroke="{"#555" if tick == 1 else "#e3e3e3"}"/>')
        parts.append(f'<text x="{x(tick):.1f}" y="{top - 10}" font-size="10" text-anchor="middle">{tick:g}x</text>')
    for i, r in enumerate(rows):
        y = top + i * row_h
        colour = _COLOUR.get(r["status"], "#999")
        parts.append(_row_label(r, left - 8, y + 12))
        parts.append(f'<rect x="{x(lo):.1f}" y="{y + 4}" width="{x(r["value"]) - x(lo):.1f}" height="{row_h - 8}" '
                     f'fill="{colour}" opacity="0.75"/>')
        if r.get("low") and r.get("high"):
            parts.append(f'<line x1="{x(r["low"]):.1f}" y1="{y + row_h / 2}" x2="{x(r["high"]):.1f}" '
                         f'y2="{y + row_h / 2}" stroke="#000"/>')
        if r.get("baseline"):
            parts.append(f'<line x1="{x(r["baseline"]):.1f}" y1="{y + 1}" x2="{x(r["baseline"]):.1f}" '
                         f'y2="{y + row_h - 1}" stroke="#000" stroke-width="2"><title>stored baseline '
                         f'{r["baseline"]:.3f}x</title></line>')
        label = f'{r["value"]:.2f}x' + (f' (baseline {r["baseline"]:.2f}x)' if r.get("baseline") else "")
        parts.append(f'<text x="{x(r["value"]) + 4:.1f}" y="{y + 12}" font-size="10">{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def accuracy_vs_speedup(points: list[dict], metric: str) -> str:
    """Each speedup verdict (named ones too) against the test's `metric`, speedup on a log axis, every
    point labelled with its test; a label that would overprint an earlier one keeps only its tooltip."""
    if not points:
        return ""
    w, h, pad_l, pad_r, pad_t, pad_b = 1000, 420, 60, 30, 20, 46
    xs = [p["speedup"] for p in points]
    ys = [p["accuracy"] for p in points]
    x0, x1 = min(min(xs), 1.0) / 1.2, max(xs) * 1.2
    y0, y1 = min(ys) - 2, max(ys) + 2
    def px(v: float) -> float:
        return pad_l + (w - pad_l - pad_r) * (math.log(v) - math.log(x0)) / (math.log(x1) - math.log(x0))
    def py(v: float) -> float:
        return h - pad_b - (h - pad_t - pad_b) * (v - y0) / ((y1 - y0) or 1)
    palette = ["#2e86c1", "#c0392b", "#27ae60", "#8e44ad", "#d35400", "#16a085", "#7f8c8d"]
    precisions = sorted({p["precision"] or "none" for p in points})
    parts = [_open(w, h, f"{metric} against speedup per test and precision"),
             f'<line x1="{pad_l}" y1="{h - pad_b}" x2="{w - pad_r}" y2="{h - pad_b}" stroke="#000"/>',
             f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{h - pad_b}" stroke="#000"/>',
             f'<text x="{w / 2}" y="{h - 8}" font-size="11" text-anchor="middle">speedup (x, log axis)</text>',
             f'<text x="14" y="{h / 2}" font-size="11" transform="rotate(-90 14 {h / 2})" '
             f'text-anchor="middle">{escape(metric)}</text>']
    for tick in _log_ticks(x0, x1):
        parts.append(f'<line x1="{px(tick):.1f}" y1="{pad_t}" x2="{px(tick):.1f}" y2="{h - pad_b}" stroke="#eee"/>'
                     f'<text x="{px(tick):.1f}" y="{h - pad_b + 14}" font-size="10" '
                     f'text-anchor="middle">{tick:g}x</text>')
    for k in range(5):
        tick = y0 + (y1 - y0) * k / 4
        parts.append(f'<text x="{pad_l - 4}" y="{py(tick) + 3:.1f}" font-size="10" text-anchor="end">{tick:.1f}</text>')
    placed: list[tuple[float, float]] = []
    for p in sorted(points, key=lambda p: (p["speedup"], p["accuracy"])):
        cx, cy = px(p["speedup"]), py(p["accuracy"])
        colour = palette[precisions.index(p["precision"] or "none") % len(palette)]
        label = _short(p["test"], p["metric"] if p["metric"] != "speedup" else "", 40).strip()
        parts.append(f'<circle class="point" cx="{cx:.1f}" cy="{cy:.1f}" r="4.5" fill="{colour}">'
                     f'<title>{escape(p["test"])} {escape(p["metric"])}: {p["speedup"]:.2f}x, '
                     f'{escape(metric)} {p["accuracy"]:.2f}</title></circle>')
        if all(abs(cx - ax) > 120 or abs(cy - ay) > 11 for ax, ay in placed):
            anchor = "end" if cx > w * 0.7 else "start"
            dx = -7 if anchor == "end" else 7
            parts.append(f'<text class="label" x="{cx + dx:.1f}" y="{cy + 3:.1f}" font-size="10" '
                         f'text-anchor="{anchor}">{escape(label)}</text>')
            placed.append((cx, cy))
    for i, name in enumerate(precisions):
        parts.append(f'<text x="{w - pad_r}" y="{pad_t + 12 + 14 * i}" font-size="11" text-anchor="end" '
                     f'fill="{palette[i % len(palette)]}">● {escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def sparkline(values: list[float], shifts: list[int], statuses: list[str], labels: list[str],
              width: int = 260, height: int = 54) -> str:
    """A metric over commits (oldest left): a point per commit coloured by its verdict, each change point a
    dashed line, the segments' levels drawn as steps."""
    if not values:
        return ""
    pad = 6
    lo, hi = min(values), max(values)
    span = (hi - lo) or abs(hi) * 0.01 or 1.0
    lo, hi = lo - span * 0.15, hi + span * 0.15
    n = len(values)
    def x(i: int) -> float:
        return pad + (width - 2 * pad) * (i / (n - 1) if n > 1 else 0.5)
    def y(v: float) -> float:
        return height - pad - (height - 2 * pad) * (v - lo) / (hi - lo)
    parts = [_open(width, height, "trend over commits with change points", "spark")]
    path = " ".join(f"{'M' if i == 0 else 'L'}{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
    parts.append(f'<path d="{path}" fill="none" stroke="#7f8c8d" stroke-width="1"/>')
    bounds = [0, *shifts, n]
    for a, b in zip(bounds, bounds[1:], strict=False):
        level = sum(values[a:b]) / (b - a)
        parts.append(f'<line class="level" x1="{x(a):.1f}" y1="{y(level):.1f}" x2="{x(b - 1):.1f}" '
                     f'y2="{y(level):.1f}" stroke="#2c3e50" stroke-width="2" opacity="0.5"/>')
    for s in shifts:
        xs = (x(s - 1) + x(s)) / 2
        parts.append(f'<line class="changepoint" x1="{xs:.1f}" y1="2" x2="{xs:.1f}" y2="{height - 2}" '
                     f'stroke="#c0392b" stroke-dasharray="3,2"><title>change point before {escape(labels[s])}'
                     f'</title></line>')
    for i, (v, st, lab) in enumerate(zip(values, statuses, labels, strict=True)):
        parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.6" fill="{_COLOUR.get(st, "#999")}">'
                     f'<title>{escape(lab)}: {v:.4g}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def _row_label(row: dict, x: float, y: float) -> str:
    """A chart row's short name, right-aligned at (x, y), with the full test id and metric on hover."""
    return (f'<text x="{x}" y="{y}" font-size="11" text-anchor="end">'
            f'<title>{escape(row["test"])} {escape(row["metric"])}</title>'
            f'{escape(_short(row["test"], row["metric"]))}</text>')
