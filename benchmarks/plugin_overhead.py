"""What pytest-lowprec costs: the startup it adds to a run that does not use it, and the wall time the gate
adds around the work it measures.

    python benchmarks/plugin_overhead.py                 # idle cost: an unrelated project, 7 runs each
    python benchmarks/plugin_overhead.py --runs 15
    python benchmarks/plugin_overhead.py suites/ --gpu h100   # pytest arguments: the gate's cost around its work

The idle cost runs an unrelated one-test project in fresh interpreters with the plugin loaded (it is a
pytest11 plugin: every pytest run of the environment loads it) and with `-p no:lowprec`, and prints the
medians. A benchmark, not a test: it prints tables and asserts nothing.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_UNRELATED = "def test_unrelated():\n    assert sum(range(10)) == 45\n"


def _wall(args: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=cwd, env=env,
                   check=True, capture_output=True)
    return time.perf_counter() - start


def idle_cost(runs: int) -> None:
    """Median wall time of an unrelated project's run, with the plugin and without, alternating."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "test_unrelated.py").write_text(_UNRELATED)
        loaded, disabled = [], []
        _wall([], Path(tmp), env)  # warm the file cache
        for _ in range(runs):
            loaded.append(_wall([], Path(tmp), env))
            disabled.append(_wall(["-p", "no:lowprec"], Path(tmp), env))
    with_ms, without_ms = 1e3 * statistics.median(loaded), 1e3 * statistics.median(disabled)
    print(f"unrelated one-test project, median of {runs} runs each (plugin from {root})")
    print("run                         median ms   min ms")
    print(f"plugin loaded               {with_ms:9.0f}  {1e3 * min(loaded):7.0f}")
    print(f"-p no:lowprec               {without_ms:9.0f}  {1e3 * min(disabled):7.0f}")
    print(f"cost of being installed     {with_ms - without_ms:9.0f}")


class _Collect:
    """Receives every finished record on the controller (the plugin's pytest_lowprec_record hook)."""

    def __init__(self) -> None:
        self.records = []

    def pytest_lowprec_record(self, config, record) -> None:
        self.records.append(record)


def gate_cost(args: list[str]) -> int:
    """Run pytest in-process on `args`; compare its wall time with the timed samples the verdicts rest on."""
    import pytest

    collect = _Collect()
    start = time.perf_counter()
    code = pytest.main([*args, "-q", "-p", "no:cacheprovider"], plugins=[collect])
    wall = time.perf_counter() - start
    timed = sum(r.timed_s for r in collect.records)
    in_timer = sum(r.timer_wall_s for r in collect.records)
    print()
    print("test                                                        timed s   in timer s")
    for r in sorted(collect.records, key=lambda r: r.nodeid):
        if r.timed_s > 0:
            print(f"{r.nodeid[:58]:58}  {r.timed_s:8.3f}  {r.timer_wall_s:10.3f}")
    print()
    print(f"pytest exit code            {int(code)}")
    print(f"tests with a speed verdict  {sum(1 for r in collect.records if r.timed_s > 0)} of {len(collect.records)}")
    print(f"run wall time               {wall:8.2f} s")
    print(f"sum of timed samples        {timed:8.2f} s")
    print(f"time inside the timer       {in_timer:8.2f} s  (warm-up, L2 flush, samples, syncs)")
    if timed > 0:
        print(f"wall / timed work           {wall / timed:8.2f}x")
        print(f"timer overhead over samples {100 * (in_timer - timed) / timed:7.1f} %")
    print(f"outside the timer           {wall - in_timer:8.2f} s  (startup, collection, test bodies and "
          "references, reports)")
    return int(code)


def main(argv: list[str]) -> int:
    if argv and argv[0] != "--runs":
        return gate_cost(argv)
    idle_cost(int(argv[1]) if len(argv) > 1 else 7)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
