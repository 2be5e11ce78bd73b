"""benchmarks/gate_runs.py: saved full gate runs side by side, each speed verdict's distance from its entry."""

from __future__ import annotations

import csv
import io
import tarfile

import pytest

from pytest_lowprec.gate import SpeedupTolerance

FIELDS = ["test", "metric", "kind", "value", "delta_pct", "status"]


@pytest.fixture
def gate_runs(benchmark_module):
    return benchmark_module("gate_runs")


def _csv(rows: list[tuple]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FIELDS)
    writer.writeheader()
    for row in rows:
        writer.writerow(dict(zip(FIELDS, row, strict=True)))
    return out.getvalue()


def test_a_saved_run_reads_from_a_folder_or_a_tarball_with_its_gpu(gate_runs, tmp_path):
    folder = tmp_path / "gate-run-abc" / "r"
    folder.mkdir(parents=True)
    (folder / "run.csv").write_text(_csv([("t::a", "speedup", "speedup", "2.0", "-1.5", "pass")]))
    (folder / "smi.txt").write_text("name, uuid\nNVIDIA H200, GPU-3a819cdb-d032-6280, 580\n")
    tarball = tmp_path / "gate-run-abc.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(folder.parent, arcname="gate-run-abc")
    for path in (folder.parent, tarball):
        label, rows, gpu = gate_runs.read_run(path)
        assert (label, gpu) == ("gate-run-abc", "GPU-3a819cdb") and rows[0]["delta_pct"] == "-1.5"


def test_a_run_without_its_csv_is_refused_by_name(gate_runs, tmp_path):
    with pytest.raises(SystemExit, match="no run.csv"):
        gate_runs.read_run(tmp_path)


def test_only_speed_verdicts_gated_against_a_baseline_count(gate_runs):
    rows = list(csv.DictReader(io.StringIO(_csv([
        ("t::a", "speedup", "speedup", "2.0", "-5.5", "fail"),
        ("t::a", "sqnr_db", "accuracy", "28", "-0.1", "pass"),
        ("t::b", "speedup", "speedup", "1.5", "", "pass"),  # no baseline for it
    ]))))
    assert gate_runs.speed_deltas(rows) == {"t::a speedup": (-5.5, False)}


def test_the_table_puts_the_workload_nearest_a_false_alarm_first_with_its_tolerance(gate_runs):
    runs = [("gate-run-x-aaa", {"t::a speedup": (-1.0, True), "t::b speedup": (-0.5, True)}, "GPU-1"),
            ("gate-run-x-bbb", {"t::a speedup": (0.5, True), "t::b speedup": (-5.5, False)}, "GPU-2")]
    entries = {"t::a": {"commit": "c1", "metrics": {"speedup": {"kind": "speedup", "value": 2.0, "noise": 0.01}}},
               "t::b": {"commit": "c2", "metrics": {"speedup": {"kind": "speedup", "value": 1.5, "noise": 0.03}}}}
    lines = gate_runs.table(runs, gate_runs.tolerances(entries, SpeedupTolerance())).splitlines()
    assert lines[0].split()[1:3] == ["aaa", "bbb"]  # the labels' common prefix is dropped
    assert lines[2].split() == ["t::b", "speedup", "-0.5", "-5.5*", "6.0%", "c2"]
    assert lines[3].split() == ["t::a", "speedup", "-1.0", "+0.5", "3.0%", "c1"]
