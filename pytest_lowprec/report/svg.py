"""Inline SVG plots, drawn by hand so the report opens with no network and no plotting library.

Every string that reaches the SVG goes through html.escape: test ids are user text.
"""

from __future__ import annotations

import math
from html import escape

import pandas as pd

_W, _ROW, _LEFT, _RIGHT = 760, 22, 300, 40


def speedup_chart(frame: pd.DataFrame) -> str:
    """One bar per speedup verdict: the median with its interval, and the stored baseline as a tick."""
    rows = frame[(frame["kind"] == "speedup") & frame["value"].notna()]
    if rows.empty:
        return ""
    top = max(float(rows[["high", "baseline"]].max(numeric_only=True).max(skipna=True)), 1.0) * 1.1
    height = 30 + _ROW * len(rows)
    def x(v: float) -> float:
        return _LEFT + (_W - _LEFT - _RIGHT) * v / top
    parts = [f'<svg class="plot" role="img" aria-label="speedup against baseline per test" '
             f'viewBox="0 0 {_W} {height}" width="{_W}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
             f'<line x1="{x(1):.1f}" y1="10" x2="{x(1):.1f}" y2="{height - 5}" stroke="#999" stroke-dasharray="2,3"/>',
             f'<text x="{x(1):.1f}" y="9" font-size="9" text-anchor="middle">1x</text>']
    for i, row in enumerate(rows.itertuples()):
        y = 20 + i * _ROW
        colour = {"fail": "#c0392b", "pass": "#2e86c1", "inconclusive": "#e67e22", "ungated": "#e67e22"}.get(
            row.status, "#999")
        name = row.test.split("::", 1)[-1]  # the file is in the table; the chart has room for the test
        label = escape(f"{name} {row.metric}"[-48:])
        parts.append(f'<text x="{_LEFT - 6}" y="{y + 10}" font-size="10" text-anchor="end">{label}</text>')
        parts.append(f'<rect x="{_LEFT}" y="{y + 2}" width="{x(row.value) - _LEFT:.1f}" height="12" '
                     f'fill="{colour}" opacity="0.75"/>')
        if not (math.isnan(row.low) or math.isnan(row.high)):
            parts.append(f'<line x1="{x(row.low):.1f}" y1="{y + 8}" x2="{x(row.high):.1f}" y2="{y + 8}" '
                         f'stroke="#000"/>')
        if row.baseline is not None and not math.isnan(row.baseline):
            parts.append(f'<line x1="{x(row.baseline):.1f}" y1="{y}" x2="{x(row.baseline):.1f}" y2="{y + 16}" '
                         f'stroke="#000" stroke-width="2"><title>baseline {row.baseline:.3f}x</title></line>')
        parts.append(f'<text x="{x(row.value) + 4:.1f}" y="{y + 12}" font-size="9">{row.value:.2f}x</text>')
    parts.append("</svg>")
    return "".join(parts)


def accuracy_vs_speedup(frame: pd.DataFrame, metric: str = "sqnr_db") -> str:
    """Each test with both a speedup and `metric`: the accuracy-versus-throughput picture, per precision."""
    speed = frame[(frame["kind"] == "speedup") & (frame["metric"] == "speedup") & frame["value"].notna()]
    acc = frame[(frame["metric"] == metric) & frame["value"].notna()]
    both = speed.merge(acc, on="test", suffixes=("_s", "_a"))
    if both.empty:
        return ""
    w, h, pad = 520, 320, 50
    xs, ys = both["value_s"].astype(float), both["value_a"].astype(float)
    x0, x1 = min(xs.min(), 1.0) * 0.9, xs.max() * 1.1
    y0, y1 = ys.min() - 2, ys.max() + 2
    def px(v: float) -> float:
        return pad + (w - 2 * pad) * (v - x0) / (x1 - x0 or 1)
    def py(v: float) -> float:
        return h - pad - (h - 2 * pad) * (v - y0) / (y1 - y0 or 1)
    palette = ["#2e86c1", "#c0392b", "#27ae60", "#8e44ad", "#d35400", "#16a085"]
    precisions = sorted(both["precision_s"].unique())
    parts = [f'<svg class="plot" role="img" aria-label="{escape(metric)} against speedup per precision" '
             f'viewBox="0 0 {w} {h}" width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg">',
             f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#000"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#000"/>',
             f'<text x="{w / 2}" y="{h - 12}" font-size="11" text-anchor="middle">speedup (x)</text>',
             f'<text x="14" y="{h / 2}" font-size="11" transform="rotate(-90 14 {h / 2})" '
             f'text-anchor="middle">{escape(metric)}</text>']
    for tick in (x0, (x0 + x1) / 2, x1):
        parts.append(f'<text x="{px(tick):.1f}" y="{h - pad + 14}" font-size="9" '
                     f'text-anchor="middle">{tick:.2f}</text>')
    for tick in (y0, (y0 + y1) / 2, y1):
        parts.append(f'<text x="{pad - 4}" y="{py(tick):.1f}" font-size="9" text-anchor="end">{tick:.1f}</text>')
    for row in both.itertuples():
        colour = palette[precisions.index(row.precision_s) % len(palette)]
        parts.append(f'<circle cx="{px(row.value_s):.1f}" cy="{py(row.value_a):.1f}" r="5" fill="{colour}">'
                     f'<title>{escape(row.test)}: {row.value_s:.2f}x, {row.value_a:.2f}</title></circle>')
    for i, p in enumerate(precisions):
        parts.append(f'<text x="{w - pad}" y="{pad + 14 * i}" font-size="10" text-anchor="end" '
                     f'fill="{palette[i % len(palette)]}">{escape(p)}</text>')
    parts.append("</svg>")
    return "".join(parts)
