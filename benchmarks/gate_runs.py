"""Full gate runs side by side: how far each speed verdict landed from the entry it was gated against.

    python benchmarks/gate_runs.py benchmarks/data/gate-run-h200-2026-12-01-*.tar.gz --baselines baselines/h200.json

Each argument is a saved run: a folder or a .tar.gz holding the run's `--lowprec-csv` file (run.csv) and,
where the device script wrote one, nvidia-smi's smi.txt (which GPU it ran on). One row per speed workload,
one column per run: the run's delta to the baseline it ran against (the CSV's delta_pct), `*` where the
verdict was not a pass. The last columns are the tolerance the given baseline file allows that entry now
(gate.SpeedupTolerance over its stored noise and spread) and the entry's commit. Rows are sorted by the
lowest delta, so the workloads nearest a false alarm come first. Runs of unchanged code on other GPUs of
one key show how far that code moves between GPUs; a run against an entry recorded since compares
another baseline (its column says which date). A benchmark: it prints a table and asserts nothing.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import tarfile
from pathlib import Path

from pytest_lowprec.gate import SpeedupTolerance


def read_run(path: Path) -> tuple[str, list[dict], str]:
    """(label, the CSV's rows, the GPU's UUID or '') of a saved run."""
    files: dict[str, str] = {}
    if path.is_dir():
        for name in ("run.csv", "smi.txt"):
            found = sorted(path.rglob(name))
            if found:
                files[name] = found[0].read_text()
    else:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if member.isfile() and name in ("run.csv", "smi.txt") and name not in files:
                    files[name] = tar.extractfile(member).read().decode()
    if "run.csv" not in files:
        raise SystemExit(f"{path}: no run.csv in it (the run's --lowprec-csv file)")
    uuid = re.search(r"GPU-[0-9a-f]{8}", files.get("smi.txt", ""))
    label = re.sub(r"\.tar\.gz$", "", path.name)
    return label, list(csv.DictReader(io.StringIO(files["run.csv"]))), uuid.group(0) if uuid else ""


def speed_deltas(rows: list[dict]) -> dict[str, tuple[float, bool]]:
    """{'test metric': (delta %, passed)} of a run's speed verdicts that ran against a baseline."""
    return {f"{r['test']} {r['metric']}": (float(r["delta_pct"]), r["status"] == "pass")
            for r in rows if r["kind"] == "speedup" and r.get("delta_pct")}


def tolerances(entries: dict, tolerance: SpeedupTolerance) -> dict[str, tuple[float, str]]:
    """{'test metric': (the allowed drop, the entry's commit)} of every speed metric of a baseline file."""
    out = {}
    for nodeid, entry in entries.items():
        for metric, m in entry.get("metrics", {}).items():
            if m.get("kind") == "speedup":
                out[f"{nodeid} {metric}"] = (tolerance.relative(m.get("noise"), m.get("spread")), entry.get("commit"))
    return out


def table(runs: list[tuple[str, dict[str, tuple[float, bool]], str]], allowed: dict[str, tuple[float, str]]) -> str:
    names = sorted({k for _, deltas, _ in runs for k in deltas}, key=lambda k: min(
        deltas[k][0] for _, deltas, _ in runs if k in deltas))
    width = max((len(n) for n in names), default=10)
    labels = [label for label, _, _ in runs]
    common = len(os.path.commonprefix(labels)) if len(labels) > 1 else 0
    head = " ".join(f"{label[common:][-10:]:>10}" for label in labels)
    gpus = " ".join(f"{gpu[-8:]:>10}" for _, _, gpu in runs)
    lines = [f"{'workload':<{width}} {head} {'tolerance':>9} entry", f"{'GPU':<{width}} {gpus}"]
    for name in names:
        cells = []
        for _, deltas, _ in runs:
            if name in deltas:
                delta, passed = deltas[name]
                cells.append(f"{delta:+9.1f}{' ' if passed else '*'}")
            else:
                cells.append(" " * 10)
        tol, commit = allowed.get(name, (float("nan"), "-"))
        lines.append(f"{name:<{width}} {' '.join(cells)} {100 * tol:8.1f}% {commit}")
    lines.append("delta: % from the baseline each run was gated against; * the verdict was not a pass; tolerance: "
                 "what the baseline file allows the entry now")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="saved runs: folders or .tar.gz with run.csv")
    parser.add_argument("--baselines", type=Path, required=True, help="the baseline file whose tolerances to show")
    args = parser.parse_args()
    runs = []
    for path in args.runs:
        label, rows, gpu = read_run(path)
        runs.append((label, speed_deltas(rows), gpu))
    entries = json.loads(args.baselines.read_text())["entries"]
    print(table(runs, tolerances(entries, SpeedupTolerance())))


if __name__ == "__main__":
    main()
