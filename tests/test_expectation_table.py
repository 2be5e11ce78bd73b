"""benchmarks/expectation_table.py: a saved run reads as its CSV does, and a run split over CSVs as one."""

from __future__ import annotations

import pytest

from pytest_lowprec.gate import Kind, Status, Verdict
from pytest_lowprec.record import WorkloadRecord
from pytest_lowprec.report.rows import verdict_frame, write_csv
from pytest_lowprec.review import Outcomes, save_run


@pytest.fixture
def table_module(benchmark_module):
    return benchmark_module("expectation_table")


def _record(nodeid: str, speedup: float, predicted: float) -> WorkloadRecord:
    floor = round(0.8 * predicted, 2)
    verdict = Verdict("speedup", Kind.SPEEDUP, Status.PASS, value=speedup, unit="x",
                      bound=f">= {floor:.2f}x (0.8 x predicted {predicted:.2f}x, memory/memory-bound)",
                      extra={"expectation": {"predicted": predicted}})
    return WorkloadRecord(nodeid, ("fp8",), {"n": 1}, [verdict], outcome="passed")


RECORDS = [_record("s.py::test_decode", 1.9, 2.0), _record("s.py::test_gemm", 1.8, 1.87)]


def test_a_saved_run_gives_the_table_its_csv_gives(table_module, tmp_path):
    save_run(tmp_path / "run.json", {"gpu": "h200"}, RECORDS, Outcomes())
    write_csv(verdict_frame(RECORDS), tmp_path / "run.csv")
    runs = {"h200": table_module.read_run(str(tmp_path / "run.json"))}
    from_csv = {"h200": table_module.read_run(str(tmp_path / "run.csv"))}
    assert table_module.table(runs, {"h200"}) == table_module.table(from_csv, {"h200"})
    assert "| test_decode | 2 | 1.6 | 1.9 | 0.95 |" in table_module.table(runs, {"h200"})


def test_a_run_split_over_two_csvs_reads_as_one(table_module, tmp_path, capsys):
    for i, rec in enumerate(RECORDS):
        write_csv(verdict_frame([rec]), tmp_path / f"half{i}.csv")
    table_module.main([f"b200-dry={tmp_path / 'half0.csv'},{tmp_path / 'half1.csv'}"])
    out = capsys.readouterr().out
    assert "| test_decode | 2 | 1.6 |" in out and "| test_gemm | 1.87 | 1.5 |" in out
    assert "measured" not in out  # a -dry label: its timer was scripted


def test_a_test_in_two_of_the_csvs_is_refused_by_name(table_module, tmp_path):
    for i in range(2):
        write_csv(verdict_frame(RECORDS[:1]), tmp_path / f"half{i}.csv")
    with pytest.raises(SystemExit, match="s.py::test_decode appear in more than one"):
        table_module.main([f"h200={tmp_path / 'half0.csv'},{tmp_path / 'half1.csv'}"])
