"""Final verdicts as one table (pandas), the source of every report: HTML, CSV, markdown."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from ..names import csv_cell

COLUMNS = ["test", "precision", "metric", "kind", "value", "low", "high", "unit", "bound", "baseline",
           "baseline_date", "delta_pct", "baseline_ms", "optimized_ms", "baseline_ms_delta_pct",
           "optimized_ms_delta_pct", "predicted", "status", "flags", "reasons", "where"]
NUMBERS = ["value", "low", "high", "baseline", "delta_pct", "baseline_ms", "optimized_ms", "baseline_ms_delta_pct",
           "optimized_ms_delta_pct", "predicted"]


def verdict_frame(records: Iterable) -> pd.DataFrame:
    rows = []
    for rec in records:
        for v in rec.verdicts:
            rows.append({
                "test": rec.nodeid,
                "precision": ",".join(rec.precision),
                "metric": v.metric,
                "kind": v.kind.value,
                "value": v.value,
                "low": v.interval[0] if v.interval else None,
                "high": v.interval[1] if v.interval else None,
                "unit": v.unit,
                "bound": v.bound,
                "baseline": v.baseline,
                "baseline_date": v.baseline_date,
                "delta_pct": v.delta_pct,
                "baseline_ms": v.extra.get("baseline_ms"),
                "optimized_ms": v.extra.get("optimized_ms"),
                "baseline_ms_delta_pct": v.extra.get("baseline_ms_delta_pct"),
                "optimized_ms_delta_pct": v.extra.get("optimized_ms_delta_pct"),
                "predicted": (v.extra.get("expectation") or {}).get("predicted"),
                "status": v.status.value,
                "flags": ",".join(v.flags),
                "reasons": "; ".join(v.reasons),
                "where": v.where,
            })
    # Text stays Python strings (object): pandas 3 with pyarrow installed stores inferred text as Arrow
    # strings, which refuse a lone surrogate, and a metric name may hold one (names.py); every renderer
    # escapes the text for its own format.
    frame = pd.DataFrame(rows, columns=COLUMNS, dtype=object)
    frame[NUMBERS] = frame[NUMBERS].apply(pd.to_numeric)
    return frame


def counts(frame: pd.DataFrame) -> dict[str, int]:
    """Tests by outcome: a test fails if any verdict fails; it is skipped if every verdict is. Verdicts
    the gate could not decide (inconclusive) or had nothing to decide by (ungated) are counted apart."""
    if frame.empty:
        return {"tests": 0, "failed": 0, "passed": 0, "skipped": 0, "improved": 0, "inconclusive": 0, "ungated": 0}
    by_test = frame.groupby("test")["status"].agg(list)
    failed = sum("fail" in s for s in by_test)
    skipped = sum(all(x == "skip" for x in s) for s in by_test)
    improved = int(frame["flags"].str.contains("improved").groupby(frame["test"]).any().sum())
    return {"tests": len(by_test), "failed": failed, "passed": len(by_test) - failed - skipped,
            "skipped": skipped, "improved": improved, "inconclusive": int((frame["status"] == "inconclusive").sum()),
            "ungated": int((frame["status"] == "ungated").sum())}


def write_csv(frame: pd.DataFrame, path) -> None:
    """The table as CSV; a text cell that starts like a formula (=, +, -, @) is written as text."""
    text_columns = [c for c in frame.columns if pd.api.types.is_string_dtype(frame[c]) or frame[c].dtype == object]
    frame.assign(**{c: frame[c].map(csv_cell) for c in text_columns}).to_csv(path, index=False)
