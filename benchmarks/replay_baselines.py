"""Replay a stored baseline file as measured runs: realistic data for the report, its trends and `compare`.

    python benchmarks/replay_baselines.py baselines/h200.json --out reports/replay \\
        --history reports/replay/history.sqlite --commits 8 --seed 1

Each of the last `--commits` commits becomes one run, judged by the gate's own functions against the
same file: every speedup is the stored median times a scripted factor (drawn noise of the stored size,
plus the steps below), with an interval of the stored width; accuracy, memory and efficiency values are
the stored ones. Scripted steps, so the report has something to show: one speedup drifts down 2% per
commit over the last four commits (each step inside the tolerance, the sum not), one drops 12% at the
last commit, one improves 15% at the last commit. Every run is appended to the history store; the last
is saved as `run.json` (the `--lowprec-json` format) and rendered as `report.html`. Never real numbers:
the report says "replayed" in its header, the device name carries "(replayed)".
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from pytest_lowprec import gate
from pytest_lowprec.gate import BaselineView, Kind, Margin, SpeedupTolerance
from pytest_lowprec.history import HistoryStore
from pytest_lowprec.record import WorkloadRecord
from pytest_lowprec.report import html
from pytest_lowprec.review import Outcomes, ReviewData, save_run
from pytest_lowprec.stats import RatioSummary
from pytest_lowprec.trends import trend_views


def _view(gpu: str, entry: dict, metric: dict) -> BaselineView:
    sides = (metric.get("baseline_ms"), metric.get("optimized_ms"))
    return BaselineView("ok", gpu, value=metric["value"], noise=metric.get("noise"), recorded=entry.get("recorded"),
                        spread=metric.get("spread"), sides_ms=sides if None not in sides else None)


def _factor(speedups: list[str], nodeid: str, metric: str, commit: int, commits: int) -> float:
    """The scripted change of one speedup at commit `commit` (0-based, the last is commits-1)."""
    key = f"{nodeid}::{metric}"
    last = commits - 1
    if speedups and key == speedups[0]:  # the drift: 2% per commit over the last four
        return 0.98 ** max(0, commit - (last - 4))
    if len(speedups) > 1 and key == speedups[1] and commit == last:
        return 0.88
    if len(speedups) > 2 and key == speedups[2] and commit == last:
        return 1.15
    return 1.0


def replay(path: Path, commit: int, commits: int, rng: random.Random) -> list[WorkloadRecord]:
    data = json.loads(path.read_text())
    gpu, entries = data["gpu"], data["entries"]
    tol = SpeedupTolerance()
    speedups = sorted(f"{n}::{m}" for n, e in entries.items() for m, v in e["metrics"].items()
                      if v["kind"] == "speedup")
    random.Random(len(speedups)).shuffle(speedups)  # the same scripted metrics at every commit
    records = []
    for nodeid, entry in sorted(entries.items()):
        verdicts = []
        for name, m in sorted(entry["metrics"].items()):
            base = _view(gpu, entry, m)
            if m["kind"] == "speedup":
                noise = m.get("noise") or 0.005
                f = _factor(speedups, nodeid, name, commit, commits) * (1 + noise * rng.gauss(0, 0.5))
                lo, hi = m.get("ci", [m["value"], m["value"]])
                med = m["value"] * f
                summary = RatioSummary(med, lo * f, hi * f, m.get("samples", 120), noise, 0.95)
                sides = (m["baseline_ms"], m["baseline_ms"] / med) if m.get("baseline_ms") else None
                verdicts.append(gate.judge_speedup(name, summary, None, base, tol, sides_ms=sides))
            elif m["kind"] in ("accuracy", "memory", "efficiency"):
                higher = m["kind"] != "memory" and not name.startswith(("rel_", "max_", "loss", "mismatched"))
                margin = gate.MEMORY_MARGIN if m["kind"] == "memory" else Margin(abs=1e-7, rel=0.05)
                verdicts.append(gate.judge_value(name, Kind(m["kind"]), m["value"], minimum=None, maximum=None,
                                                 higher_is_better=higher, margin=margin, base=base,
                                                 unit=m.get("unit", "")))
            else:
                verdicts.append(gate.judge_info(name, m["value"], m.get("unit", "")))
        failed = any(v.failed for v in verdicts)
        records.append(WorkloadRecord(nodeid, tuple(entry.get("precision", [])), entry.get("signature", {}), verdicts,
                                  outcome="failed" if failed else "passed", device=entry.get("device", {})))
    return records


def build(baselines: Path, out: Path, history: str | None = None, commits: int = 8, seed: int = 1) -> Path:
    """Replay `commits` commits into the history store, save the last run and render its report."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    data = json.loads(baselines.read_text())
    first = next(iter(data["entries"].values()))
    device = first.get("device", {})
    with HistoryStore.open(history or str(out / "history.sqlite")) as store:
        for c in range(commits):
            records = replay(baselines, c, commits, rng)
            outcomes = Outcomes()
            for r in records:
                outcomes.add(r.outcome, r.nodeid, None)
            header = {"gpu": data["gpu"], "device_name": f"{device.get('name', data['gpu'])} (replayed)",
                      "software": first.get("software", {}), "commit": f"replay{c:02d}", "branch": "replay",
                      "date": f"2026-12-01T{c:02d}:00:00+00:00", "baselines": str(baselines),
                      "device": device, "cpu_threads": 2}
            run_id = store.append(header, records, branch="replay", outcomes=outcomes.to_dict())
        keys = {(r.nodeid, v.metric) for r in records for v in r.verdicts}
        review = ReviewData(outcomes, trend_views(store.series(data["gpu"], 20, run_id, keys)),
                            f"run #{run_id} (replayed)")
    save_run(out / "run.json", header, records, outcomes)
    html.render(out / "report.html", header, records, review)
    return out / "report.html"


def screenshot(report: Path, png: Path, width: int = 1280, height: int = 900) -> None:
    """The report's first screen as a reviewer opens it (Playwright driving Debian's chromium)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(report.resolve().as_uri())
        page.screenshot(path=str(png))
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baselines", type=Path)
    parser.add_argument("--out", type=Path, default=Path("reports/replay"))
    parser.add_argument("--history", default=None, help="history store (default: OUT/history.sqlite)")
    parser.add_argument("--commits", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--screenshot", type=Path, default=None, help="also a PNG of the report's first screen")
    args = parser.parse_args()
    report = build(args.baselines, args.out, args.history, args.commits, args.seed)
    if args.screenshot is not None:
        screenshot(report, args.screenshot)
    print(f"replayed {args.commits} commits of {args.baselines}; wrote {report} and {args.out / 'run.json'}")


if __name__ == "__main__":
    main()
