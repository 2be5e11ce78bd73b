"""Several recordings of the same code in one baseline entry (`--lowprec-update --lowprec-merge`).

One recording measures one process on one GPU. Unchanged code measured in a full gate on other GPUs of
the same key, or in later processes, moved further than that: over six full H200 gates on five GPUs
(2026-12-01) the NVFP4 training step's cost ran 0.6% over to 5.5% under its entry (a 3% tolerance: one
false alarm, one inconclusive verdict), and the one-row NVFP4 linear ran 3.3-6.5% under an entry whose
recording had caught BF16's side 8% slow. Merging adds a recording of the same commit, software and
workload to the entry:
- each speedup's value becomes the median of its recordings;
- its `rounds` hold every recording's rounds, and its `spread` their range over that median, so the
  tolerance (2x the spread, up to the cap) covers how far unchanged code moved between them;
- its `noise` is the largest pair noise of the recordings.

A merged spread over the recording cap is refused like a noisy round: the entry keeps what it had, and a
note says so. Code that may differ (another commit, a `-dirty` tree, an unknown commit, other software,
another signature) is recorded anew, never merged, and a note says why. Other metrics (accuracy, memory)
take the new recording's values. Pure: entries in, entry and notes out.
"""

from __future__ import annotations

import statistics

# Recordings one metric keeps, the newest last: a fleet's spread, not a history (that is the history store's).
MAX_RECORDINGS = 16


def merge_entry(nodeid: str, stored: dict | None, new: dict, max_spread: float) -> tuple[dict, list[str]]:
    """(the entry to write, notes for the run's summary): `new` merged into `stored` where both record the
    same code, else `new` as it is."""
    if stored is None:
        return new, []
    why = _not_same_code(stored, new)
    if why:
        return new, [f"lowprec: {nodeid}: recorded anew, not merged: {why}"]
    metrics, notes = dict(new["metrics"]), []
    for name, metric in new["metrics"].items():
        old = stored["metrics"].get(name)
        if metric.get("kind") != "speedup" or old is None or old.get("kind") != "speedup":
            continue
        merged = merge_speedup(old, stored, metric, new)
        if merged["spread"] > max_spread:
            values = [r["value"] for r in merged["recordings"]]
            notes.append(
                f"lowprec: {nodeid} {name}: not merged: its {len(values)} recordings ({min(values):.3f}x to "
                f"{max(values):.3f}x) spread {merged['spread']:.1%}, over the recording cap {max_spread:.0%}; the "
                "entry keeps its stored value. Unchanged code moves that much between runs here: re-record it "
                "anew (--lowprec-update without --lowprec-merge) if one recording was off, or raise the ini "
                "option lowprec_max_record_noise to let the gate's tolerance widen to that spread")
            metrics[name] = old
        else:
            metrics[name] = merged
    return {**new, "metrics": metrics}, notes


def merge_speedup(old: dict, old_entry: dict, new: dict, new_entry: dict) -> dict:
    """One speedup metric holding both recordings (`old` may already hold several)."""
    recordings = (old.get("recordings") or [_recording(old, old_entry)]) + [_recording(new, new_entry)]
    recordings = recordings[-MAX_RECORDINGS:]
    value = statistics.median(r["value"] for r in recordings)
    rounds = [x for r in recordings for x in r["rounds"]]
    sides = {side: _median_or_none(r.get(side) for r in recordings) for side in ("baseline_ms", "optimized_ms")}
    noises = [r["noise"] for r in recordings if r.get("noise") is not None]
    return {**new, "value": value, "median": value, "rounds": rounds,
            "spread": (max(rounds) - min(rounds)) / value, "noise": max(noises) if noises else None,
            **sides, "recordings": recordings}


def _recording(metric: dict, entry: dict) -> dict:
    return {"value": metric["value"], "rounds": list(metric.get("rounds") or [metric["value"]]),
            "noise": metric.get("noise"), "baseline_ms": metric.get("baseline_ms"),
            "optimized_ms": metric.get("optimized_ms"), "device": (entry.get("device") or {}).get("uuid"),
            "recorded": entry.get("recorded")}


def _median_or_none(values) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _not_same_code(stored: dict, new: dict) -> str:
    """Why two entries may not record the same code ('' when they do)."""
    commit = new.get("commit")
    if not commit:
        return "this run's commit is unknown (no git, no LOWPREC_COMMIT): nothing shows it is the stored code"
    if commit.endswith("-dirty"):
        return f"this run's tree has uncommitted changes ({commit}): nothing shows it is the stored code"
    if stored.get("commit") != commit:
        return f"the stored entry was recorded at {stored.get('commit')}, this run is at {commit}"
    for field in ("software", "signature"):
        if stored.get(field) != new.get(field):
            return f"its {field} differs from the stored entry's"
    return ""
