"""The gate-quality benchmark: its arithmetic on made-up runs, and one study end to end on the host timer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def analysis(benchmark_module):
    return benchmark_module("gate_quality_analysis")


def row(value, low, high, status="pass", nodeid="t.py::test_a", injection=None, peers=None):
    return {"nodeid": nodeid, "metric": "speedup", "status": status, "value": value, "interval": [low, high],
            "samples": 30, "injection": injection, "peers": peers}


def run(phase, rows, slowdown=0.0, outcomes=None):
    return {"phase": phase, "slowdown": slowdown, "rows": rows, "outcomes": outcomes or {}}


def test_a_run_is_caught_only_when_its_whole_interval_lies_below_the_tolerance_line(analysis):
    base = (2.0, 0.001)  # tolerance 3% -> line 1.94
    assert analysis.regressed(row(1.90, 1.89, 1.93), base, 0.03, 2.0)
    assert not analysis.regressed(row(1.92, 1.90, 1.945), base, 0.03, 2.0)


def test_the_tolerance_grows_with_the_stored_noise(analysis):
    assert analysis.tolerance(0.03, 2.0, 0.001) == pytest.approx(0.03)
    assert analysis.tolerance(0.03, 2.0, 0.05) == pytest.approx(0.10)


def test_false_alarms_count_runs_with_a_failed_speed_verdict_and_list_accuracy_failures_apart(analysis):
    accuracy = {"nodeid": "t.py::test_b", "metric": "loss_gap", "status": "fail", "kind": "accuracy"}
    runs = [run("unchanged", [row(2.0, 1.99, 2.01)]),
            run("unchanged", [row(1.8, 1.79, 1.81, status="fail")]),
            run("overhead", [row(2.0, 1.99, 2.01), accuracy]),
            run("inject", [row(1.8, 1.79, 1.81, status="fail")], slowdown=0.1)]
    alarms = analysis.false_alarms(runs)
    assert alarms["runs"] == 3 and alarms["runs_with_a_false_alarm"] == 1
    assert alarms["by_workload"] == {"t.py::test_a speedup": 1}
    assert alarms["accuracy_failures"] == {"t.py::test_b loss_gap": 1}


def test_a_timing_failure_of_a_test_the_baseline_file_lacks_is_standing_not_an_alarm(analysis):
    unrecorded = {**row(0.9, 0.89, 0.91, status="fail"), "nodeid": "t.py::test_claim"}
    runs = [run("overhead", [row(2.0, 1.99, 2.01), unrecorded]),
            run("unchanged", [row(1.8, 1.79, 1.81, status="fail")])]
    alarms = analysis.false_alarms(runs, recorded={"t.py::test_a"})
    assert alarms["runs_with_a_false_alarm"] == 1 and alarms["by_workload"] == {"t.py::test_a speedup": 1}
    assert alarms["standing_failures"] == {"t.py::test_claim speedup": 1}


def test_replay_at_a_lower_floor_trades_false_alarms_for_detections(analysis):
    stored = {"t.py::test_a speedup": (2.0, 0.0)}
    runs = [run("unchanged", [row(1.97, 1.96, 1.975)]),  # 1.5% low: an alarm at a 1% floor, not at 3%
            run("inject", [row(1.93, 1.925, 1.945)], slowdown=0.05)]
    loose, tight = analysis.replay(runs, stored, [0.03, 0.01], 2.0)
    assert (loose["false_alarms"], loose["caught_0.05"]) == (0, (0, 1))
    assert (tight["false_alarms"], tight["caught_0.05"]) == (1, (1, 1))


def test_the_smallest_slowdown_caught_is_what_moves_the_interval_top_below_the_line(analysis):
    stored = {"t.py::test_a speedup": (2.0, 0.0)}
    runs = [run("unchanged", [row(2.0, 1.99, 2.0 * 0.97 * 1.04)])]  # needs 4% to drop below 1.94
    (caught,) = analysis.slowdown_caught(runs, stored, 0.03, 2.0)
    assert caught["slowdown_pct"] == pytest.approx(4.0)


def test_spread_is_the_coefficient_of_variation_across_processes(analysis):
    runs = [run("unchanged", [row(v, v - 0.01, v + 0.01)]) for v in (1.9, 2.0, 2.1)]
    (spread,) = analysis.spread_table(runs, {"t.py::test_a speedup": (2.0, 0.0)})
    assert spread["cv_pct"] == pytest.approx(5.0)
    assert (spread["worst_delta_pct"], spread["best_delta_pct"]) == pytest.approx((-5.0, 5.0))


def test_peers_table_sets_each_timers_spread_side_by_side(analysis):
    peers = [{"pytest_benchmark": {"speedup": s}, "do_bench": {"speedup": 2.0}} for s in (1.0, 3.0)]
    runs = [run("peers", [row(2.0, 1.99, 2.01, peers=p)]) for p in peers]
    (table,) = analysis.peers_table(runs)
    assert table["lowprec_cv_pct"] == 0 and table["do_bench_cv_pct"] == 0
    assert table["pytest_benchmark_median"] == 2.0 and table["pytest_benchmark_cv_pct"] > 50


HOST_TEST = """
import pytest

def count(n):
    total = 0
    for i in range(n):
        total += i
    return total

@pytest.mark.lowprec(precision="fp8")
def test_host_speed(lowprec):
    lowprec.speedup(baseline=lambda: count(80_000), optimized=lambda: count(10_000), device="cpu")
"""
# 8x apart: the pytest-benchmark-style peer times one side after the other on the wall clock, and on the
# 2-core CI machine it read a 2x pair as 1.28x to 2.95x (2026-12-01); at 8x its reading still tells which
# side is which (a swap reads 0.125x) with room for that spread.


@pytest.mark.slow  # a subprocess or a build of seconds: `pytest tests/ --slow` (.ci/run) runs it
def test_a_study_on_the_host_timer_records_runs_and_catches_a_large_injected_slowdown(tmp_path):
    out, study = _study_of_a_recorded_host_test(tmp_path, "--runs", "1", "--phases", "unchanged,inject,peers",
                                                "--slowdowns", "0.5")
    injected = json.loads((out / "inject-0.5-00.json").read_text())["rows"]
    (slowed,) = injected
    assert slowed["status"] == "fail" and "regressed" in slowed["reasons"][0]
    assert 0.3 < slowed["injection"]["reached"] < 0.8
    peers = json.loads((out / "peers-0-00.json").read_text())["rows"][0]["peers"]
    assert peers["pytest_benchmark"]["speedup"] > 3.0 and "do_bench" not in peers
    assert "## False alarms" in study.stdout and "## Detection of injected slowdowns" in study.stdout


@pytest.mark.slow  # a subprocess or a build of seconds: `pytest tests/ --slow` (.ci/run) runs it
def test_a_study_spread_over_devices_runs_one_process_per_device_and_names_the_device_in_each_run(tmp_path):
    out, _ = _study_of_a_recorded_host_test(tmp_path, "--runs", "2", "--phases", "unchanged", "--devices", "0,1")
    devices = {json.loads((out / f"unchanged-0-{i:02d}.json").read_text())["cuda_device"] for i in range(2)}
    assert devices == {"0", "1"}
    assert not list(out.glob("current*"))


def _study_of_a_recorded_host_test(tmp_path, *study_args: str):
    """Record HOST_TEST's baseline, run gate_quality.py over it with `study_args`; the study's folder and
    process."""
    (tmp_path / "test_host.py").write_text(HOST_TEST)
    (tmp_path / "conftest.py").write_text("")
    # A loaded 2-core CI machine gives these host pairs 2-6% noise (measured, 2026-11-30): over the
    # recording's 5% cap at times. The cap has its own tests; these are about the study.
    record = subprocess.run([sys.executable, "-m", "pytest", "test_host.py", "--gpu", "cpu", "--lowprec-update",
                             "-o", "lowprec_max_record_noise=0.25", "-q", "-p", "no:cacheprovider"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert record.returncode == 0, record.stdout + record.stderr
    out = tmp_path / "study"
    study = subprocess.run([sys.executable, str(BENCHMARKS / "gate_quality.py"), "run", "--gpu", "cpu",
                            "--root", str(tmp_path), "--baselines", str(tmp_path / "baselines"), "--out", str(out),
                            *study_args], capture_output=True, text=True)
    assert study.returncode == 0, study.stdout + study.stderr
    return out, study
