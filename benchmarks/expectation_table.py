"""Each speed gate's prediction, floor and measurement, side by side, from the gate's CSV reports.

    python benchmarks/expectation_table.py h200=reports/h200.csv b200=reports/b200-dry.csv ...
    python benchmarks/expectation_table.py h200=run.json h100-dry=a.csv,b.csv ...

Each argument is LABEL=PATH[,PATH...]: a CSV report (`pytest ... --lowprec-csv PATH`) or a run saved by
`--lowprec-json`; several paths (a run split over processes) are read as one. A label ending in `-dry`
is a fake-device run (its timer scripted), so it gets no measured columns. Per speed verdict it prints
the model's predicted speedup and the floor for each label, and for every other label the measured
speedup and its share of the prediction: the fraction a suite's floor is a share of.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pandas as pd


def _floor(bound: object) -> float | None:
    match = re.match(r">= ([0-9.]+)x", str(bound))
    return float(match.group(1)) if match else None


def table(runs: dict[str, pd.DataFrame], measured: set[str]) -> list[str]:
    speed = {label: df[df["kind"] == "speedup"].set_index(["test", "metric"]) for label, df in runs.items()}
    keys = sorted(set().union(*(s.index for s in speed.values())))
    head = ["test"]
    for label in runs:
        head += [f"{label} predicted", f"{label} floor"] + ([f"{label} measured", f"{label} of model"]
                                                            if label in measured else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        cells = [f"{key[0].split('::', 1)[-1]}" + ("" if key[1] == "speedup" else f" {key[1]}")]
        for label, rows in speed.items():
            row = rows.loc[key] if key in rows.index else None
            if row is None:
                cells += ["-", "-"] + (["-", "-"] if label in measured else [])
                continue
            predicted, floor = row["predicted"], _floor(row["bound"])
            cells += [_num(predicted), _num(floor) + ("" if row["status"] != "ungated" else " ungated")]
            if label in measured:
                value = row["value"]
                cells += [_num(value), _num(value / predicted if _finite(predicted) and _finite(value) else None)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _finite(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def _num(x) -> str:
    return f"{x:.3g}" if _finite(x) else "-"


def read_run(path: str) -> pd.DataFrame:
    """One report's verdicts: its CSV, or the saved JSON run put through the same table the CSV is."""
    if not path.endswith(".json"):
        return pd.read_csv(path)
    from pytest_lowprec.report.rows import verdict_frame
    from pytest_lowprec.review import load_run

    return verdict_frame(load_run(Path(path))[1])


def main(argv: list[str]) -> None:
    runs, measured = {}, set()
    for arg in argv:
        label, _, paths = arg.partition("=")
        frame = pd.concat([read_run(p) for p in paths.split(",")], ignore_index=True)
        speed = frame[frame["kind"] == "speedup"]
        twice = sorted(set(speed.loc[speed.duplicated(["test", "metric"]), "test"]))
        if twice:
            raise SystemExit(f"{label}: {', '.join(twice)} appear in more than one of {paths}; "
                             "give each test's verdicts once (split a run by test files)")
        runs[label] = frame
        if not label.endswith("-dry"):
            measured.add(label)
    print("\n".join(table(runs, measured)))


if __name__ == "__main__":
    main(sys.argv[1:])
