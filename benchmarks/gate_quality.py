"""Gate quality: how often the gate fails unchanged code, and how small a real slowdown it catches.

    python benchmarks/gate_quality.py run --gpu h100 --out reports/gate-quality
    python benchmarks/gate_quality.py report --gpu h100 --out reports/gate-quality --markdown docs/gate-quality.md

`run` starts one pytest process per run, over the tests that have a speed baseline in
baselines/<gpu>.json, with benchmarks/gate_quality_probe.py loaded:
- unchanged: the code as it is, gated against the stored baselines (false alarms, spread);
- inject: the same with every optimized side slowed by 2%, 5%, 10% (detections);
- peers: each speedup also timed the pytest-benchmark way and with triton's do_bench (spread);
- overhead: full `pytest suites/` runs (--overhead-runs): false alarms of the whole suite, and its
  wall time split into measured work and the rest.
The phases of one run index are interleaved, in rotated order, so slow drifts of the machine
fall on all of them alike. With --devices 0,1 the runs go to those GPUs, one pytest process per GPU
at a time (CUDA_VISIBLE_DEVICES), each run's file saying which GPU it ran on.
Each run is one JSON file in --out; a file already there is kept, so a study split over several
invocations (a deadline per invocation) resumes where it stopped.
`report` reads them and prints every table. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

# A script run from anywhere: python puts its own folder, benchmarks/, first on sys.path.
import gate_quality_analysis as analysis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

FLOORS = [0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05]


def stored_speedups(path: Path) -> analysis.Stored:
    """{workload: (value, noise)} of every speedup in a baseline file."""
    if not path.exists():
        raise SystemExit(f"no baseline file {path}: record one first (pytest suites/ --gpu KEY --lowprec-update)")
    entries = json.loads(path.read_text())["entries"]
    return {f"{nodeid} {metric}": (m["value"], m.get("noise"))
            for nodeid, entry in entries.items()
            for metric, m in entry.get("metrics", {}).items() if m.get("kind") == "speedup"}


def recorded_tests(path: Path) -> set[str]:
    """The test ids the baseline file holds an entry for (each passed when it was recorded)."""
    return set(json.loads(path.read_text())["entries"])


def select(stored: analysis.Stored, exclude: list[str], only: list[str] | None = None) -> list[str]:
    ids = sorted({name.split(" ")[0] for name in stored})
    ids = [i for i in ids if not any(x in i for x in exclude)]
    if only:
        ids = [i for i in ids if any(x in i for x in only)]
    if not ids:
        raise SystemExit("no test selected: check --exclude / --inject-only against the baseline file")
    return ids


def parse_slowdowns(text: str) -> list[tuple[float, int | None]]:
    out = []
    for part in text.split(","):
        level, _, runs = part.partition(":")
        out.append((float(level), int(runs) if runs else None))
    return out


def pytest_run(tests: list[str], out: Path, args: argparse.Namespace, extra: list[str],
               device: str | None = None) -> dict:
    env = dict(os.environ)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "pytest", *tests, "--gpu", args.gpu, "--lowprec-baselines", str(args.baselines),
           "-p", "gate_quality_probe", "--gq-out", str(out), "-q", "-p", "no:cacheprovider", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=args.root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    # 0: passed, 1: some test failed (a finding); anything else (usage, internal error, nothing
    # collected) means the study did not measure what it says.
    if proc.returncode not in (0, 1) or not out.exists():
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"pytest exited {proc.returncode}: {' '.join(cmd)}")
    run = json.loads(out.read_text())
    run["wall_s"] = wall
    run["tail"] = proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else []
    run["cuda_device"] = device
    return run


def jobs(args: argparse.Namespace, stored: analysis.Stored) -> list[tuple[str, float, int, list[str], list[str]]]:
    """(phase, slowdown, index, tests, extra pytest args) for every run, phases interleaved."""
    tests = select(stored, args.exclude)
    injected = select(stored, args.exclude, args.inject_only)
    phases = set(args.phases)
    out = []
    for i in range(args.runs):
        round_ = []
        if "overhead" in phases and i < args.overhead_runs:
            round_.append(("overhead", 0.0, i, args.overhead_tests, []))
        if "unchanged" in phases:
            round_.append(("unchanged", 0.0, i, tests if i < (args.full_runs or args.runs) else injected, []))
        if "inject" in phases:
            round_ += [("inject", s, i, injected, ["--gq-slowdown", str(s)])
                       for s, n in args.slowdowns if i < (n or args.runs)]
        if "peers" in phases and i < args.peer_runs:
            round_.append(("peers", 0.0, i, tests, ["--gq-peers"]))
        shift = i % max(1, len(round_))
        out += round_[shift:] + round_[:shift]
    return out


def run_study(args: argparse.Namespace) -> None:
    stored = stored_speedups(args.baselines / f"{args.gpu}.json")
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    pending = [job for job in jobs(args, stored) if not job_path(args.out, job).exists()]
    queue_lock = threading.Lock()
    longest: dict[str, float] = {}
    stop = threading.Event()

    def work(device: str | None) -> None:
        current = args.out / f"current-{device or 'default'}.json"
        while not stop.is_set():
            with queue_lock:
                if not pending:
                    return
                elapsed = time.perf_counter() - start
                # The next job is the first whose longest-so-far run still ends before the deadline.
                if args.deadline_s and elapsed + longest.get(pending[0][0], 0.0) > args.deadline_s:
                    print(f"deadline: stopped after {elapsed:.0f} s; run again to resume", flush=True)
                    stop.set()
                    return
                job = pending.pop(0)
            phase, slowdown, index, tests, extra = job
            current.unlink(missing_ok=True)  # a run that writes nothing must not read an earlier run's file
            run = pytest_run(tests, current, args, extra, device)
            run.update(phase=phase, slowdown=slowdown, index=index)
            path = job_path(args.out, job)
            path.write_text(json.dumps(run, indent=1))
            current.unlink(missing_ok=True)
            with queue_lock:
                longest[phase] = max(longest.get(phase, 0.0), run["wall_s"])
            failed = sum(r["status"] == "fail" for r in run["rows"])
            print(f"{path.name:28} gpu {device or '-':>2} {run['wall_s']:6.1f} s  {len(run['rows']):3} rows  "
                  f"{failed} failed  {' '.join(run['tail'])}", flush=True)

    devices = args.devices or [None]
    errors: list[BaseException] = []

    def guarded(device: str | None) -> None:
        try:
            work(device)
        except BaseException as exc:  # a failed run stops the study; the other GPUs finish their run
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=guarded, args=(d,)) for d in devices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def job_path(out: Path, job: tuple) -> Path:
    phase, slowdown, index = job[:3]
    return out / f"{phase}-{slowdown:g}-{index:02d}.json"


def report(args: argparse.Namespace) -> str:
    stored = stored_speedups(args.baselines / f"{args.gpu}.json")
    runs = [json.loads(p.read_text()) for p in sorted(args.out.glob("*.json")) if not p.name.startswith("current")]
    if not runs:
        raise SystemExit(f"no runs in {args.out}: run `gate_quality.py run` first")
    k = args.noise_k
    parts = []
    alarms = analysis.false_alarms(runs, recorded_tests(args.baselines / f"{args.gpu}.json"))
    parts.append(f"## False alarms (unchanged code, default settings)\n\n{alarms['runs_with_a_false_alarm']} of "
                 f"{alarms['runs']} runs failed a speed or efficiency verdict of a test the baseline file holds; "
                 f"by workload: {alarms['by_workload'] or 'none'}. Standing failures (tests that failed when the "
                 f"baselines were recorded, so the file holds none of their values; claims this GPU does not "
                 f"meet, not alarms): {alarms['standing_failures'] or 'none'}. Accuracy bounds that failed (real "
                 f"failures, not alarms): {alarms['accuracy_failures'] or 'none'}\n")
    parts.append("## Spread of each speedup across processes (unchanged runs)\n\n"
                 + analysis.markdown(analysis.spread_table(runs, stored)))
    parts.append("## Detection of injected slowdowns (default settings)\n\n"
                 + analysis.markdown(analysis.detection_table(runs)))
    parts.append(f"## The same runs replayed at other tolerance floors (noise multiplier {k})\n\n"
                 + analysis.markdown(analysis.replay(runs, stored, FLOORS, k)))
    parts.append(f"## Smallest slowdown caught in 95% of runs, at the {args.floor:.1%} floor\n\n"
                 + analysis.markdown(analysis.slowdown_caught(runs, stored, args.floor, k)))
    parts.append("## The plugin beside pytest-benchmark's default timing and triton's do_bench\n\n"
                 + analysis.markdown(analysis.peers_table(runs)))
    over = [r for r in runs if r["phase"] == "overhead"]
    if over:
        parts.append("## Where a full suite run's wall time goes\n\n"
                     + analysis.markdown([analysis.overhead(r) for r in over]))
    walls = {}
    for r in runs:
        walls.setdefault(r["phase"], []).append(r["wall_s"])
    parts.append("## Process wall time per phase\n\n" + analysis.markdown(
        [{"phase": p, "runs": len(w), "median_s": sorted(w)[len(w) // 2], "total_s": sum(w)}
         for p, w in walls.items()]))
    text = "\n".join(parts)
    if args.markdown:
        args.markdown.write_text(text)
    return text


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "report"):
        p = sub.add_parser(name)
        p.add_argument("--gpu", required=True, help="baseline key, e.g. h100")
        p.add_argument("--out", type=Path, default=ROOT / "reports" / "gate-quality")
        p.add_argument("--baselines", type=Path, default=ROOT / "baselines")
        p.add_argument("--root", type=Path, default=ROOT, help="where pytest runs (the suites' rootdir)")
        p.add_argument("--floor", type=float, default=0.03, help="the tolerance floor to evaluate in the report")
        p.add_argument("--noise-k", type=float, default=2.0, help="the gate's multiple of the stored noise")
        p.add_argument("--markdown", type=Path, default=None, help="also write the tables to this file")
    run = sub.choices["run"]
    run.add_argument("--runs", type=int, default=20)
    run.add_argument("--peer-runs", type=int, default=5)
    run.add_argument("--phases", type=lambda s: s.split(","), default=["overhead", "unchanged", "inject", "peers"])
    run.add_argument("--slowdowns", type=parse_slowdowns, default=[(0.02, None), (0.05, None), (0.10, None)],
                     help="injected slowdowns, each FRACTION[:RUNS] (runs default to --runs), e.g. 0.02:10,0.05:20")
    run.add_argument("--exclude", nargs="*", default=[], help="leave out tests whose id holds one of these")
    run.add_argument("--inject-only", nargs="*", default=None, help="inject only into tests whose id holds one")
    run.add_argument("--overhead-runs", type=int, default=1, help="full suite runs (wall time split, context)")
    run.add_argument("--full-runs", type=int, default=0,
                     help="unchanged runs over every speed test; later ones run only the injected tests (0: all)")
    run.add_argument("--overhead-tests", nargs="*", default=["suites/"], help="what the overhead run runs")
    run.add_argument("--devices", type=lambda s: s.split(","), default=None,
                     help="CUDA devices to spread the runs over, one process per device at a time, e.g. 0,1")
    run.add_argument("--deadline-s", type=float, default=0.0, help="start no run that could end past this")
    args = parser.parse_args(argv)
    args.baselines = args.baselines.resolve()
    if args.command == "run":
        run_study(args)
    print(report(args))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
