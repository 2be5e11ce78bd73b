"""The cell pytest-html shows for a test: its lowprec metrics and links to its traces (escaped)."""

from __future__ import annotations

from html import escape
from pathlib import Path


def html_cell(user_properties: list[tuple[str, object]]) -> str:
    metrics, links = [], []
    for key, value in user_properties:
        if not key.startswith("lowprec."):
            continue
        name = key[len("lowprec."):]
        if name.startswith("trace."):
            links.append(f'<a href="{escape(Path(str(value)).as_uri())}">{escape(name[len("trace."):])}</a>')
        elif isinstance(value, (int, float)):
            metrics.append(f"{escape(name)}={value:.4g}")
    return "<br>".join(["; ".join(metrics)] + links) if metrics or links else ""
