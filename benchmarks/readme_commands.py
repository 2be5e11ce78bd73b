"""How long the README's two commands take here: `pytest suites/` and `pytest tests/`, wall time.

    python benchmarks/readme_commands.py [--runs N] [--slow]

Each command runs as the README gives it (no -n), in a fresh process from the repository's root;
`--slow` adds the tests marked slow, as `.ci/run` runs them. Prints the median of N runs and pytest's
last line. A benchmark, not a test: the README states what it printed, with the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"pytest suites/": ["suites/"], "pytest tests/": ["tests/"]}


def timed(args: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", *args, "-q", "-p", "no:cacheprovider"], cwd=ROOT,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    lines = proc.stdout.strip().splitlines()
    return wall, lines[-1] if lines else f"exit {proc.returncode}: {proc.stderr.strip()[-200:]}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--slow", action="store_true", help="also run the tests marked slow")
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    print(f"{'command':<22} {'median s':>9}  last line")
    for name, paths in COMMANDS.items():
        runs = [timed(paths + (["--slow"] if args.slow else [])) for _ in range(args.runs)]
        print(f"{name:<22} {statistics.median(w for w, _ in runs):9.1f}  {runs[-1][1]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
