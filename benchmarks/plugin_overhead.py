"""How much wall time the gate adds around the work it measures.

Runs pytest in-process on the given arguments (default: suites/) and compares
the run's wall time with the sum of the timed samples the verdicts rest on, and
with the time spent inside the timer (warm-up, L2 flushes and samples).

    python benchmarks/plugin_overhead.py suites/ --gpu h100

A benchmark, not a test: it prints a table and asserts nothing.
"""

from __future__ import annotations

import sys
import time

import pytest


class _Collect:
    """Receives every finished record on the controller (the plugin's pytest_lowprec_record hook)."""

    def __init__(self) -> None:
        self.records = []

    def pytest_lowprec_record(self, config, record) -> None:
        self.records.append(record)


def main(argv: list[str]) -> int:
    args = argv or ["suites/"]
    collect = _Collect()
    start = time.perf_counter()
    code = pytest.main([*args, "-q", "-p", "no:cacheprovider"], plugins=[collect])
    wall = time.perf_counter() - start
    timed = sum(r.timed_s for r in collect.records)
    in_timer = sum(r.timer_wall_s for r in collect.records)
    speed_tests = sum(1 for r in collect.records if r.timed_s > 0)
    print()
    print("test                                                        timed s   in timer s")
    for r in sorted(collect.records, key=lambda r: r.nodeid):
        if r.timed_s > 0:
            print(f"{r.nodeid[:58]:58}  {r.timed_s:8.3f}  {r.timer_wall_s:10.3f}")
    print()
    print(f"pytest exit code            {int(code)}")
    print(f"tests with a speed verdict  {speed_tests} of {len(collect.records)}")
    print(f"run wall time               {wall:8.2f} s")
    print(f"sum of timed samples        {timed:8.2f} s")
    print(f"time inside the timer       {in_timer:8.2f} s  (warm-up, L2 flush, samples, syncs)")
    if timed > 0:
        print(f"wall / timed work           {wall / timed:8.2f}x")
        print(f"timer overhead over samples {100 * (in_timer - timed) / timed:7.1f} %")
    print(f"outside the timer           {wall - in_timer:8.2f} s  (startup, collection, test bodies and "
          "references, reports)")
    return int(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
