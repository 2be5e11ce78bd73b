"""How many tests ran and how each ended, for a report's first line: pytest's own counts when review.py
watched the run (skipped and deselected tests included), else what the gate's records say."""

from __future__ import annotations

from collections import Counter


def run_counts(records, outcomes) -> dict:
    """pytest's counts when the run was watched by review.py; else the records' own outcomes."""
    if outcomes is not None:
        c = dict(outcomes.counts)
        return {"source": "pytest", "tests": outcomes.tests, "passed": c.get("passed", 0),
                "failed": c.get("failed", 0), "skipped": c.get("skipped", 0), "xfailed": c.get("xfailed", 0),
                "xpassed": c.get("xpassed", 0), "errors": c.get("error", 0), "deselected": outcomes.deselected}
    c = Counter(r.outcome for r in records)
    return {"source": "records", "tests": len(records), "passed": c.get("passed", 0), "failed": c.get("failed", 0),
            "skipped": c.get("skipped", 0), "xfailed": c.get("xfailed", 0), "xpassed": c.get("xpassed", 0),
            "errors": c.get("error", 0), "deselected": 0}
