"""The report's content as plain values (html.context) and its SVG, without a browser or a pytest run."""

from __future__ import annotations

import re

from stores import header, record

from pytest_lowprec.gate import Kind, Status, Verdict
from pytest_lowprec.record import WorkloadRecord as Record
from pytest_lowprec.report import html, svg
from pytest_lowprec.review import Outcomes, ReviewData


def context(records, review=None) -> dict:
    return html.context(header("abc"), records, review)


def test_one_row_per_test_however_many_verdicts_it_has():
    ctx = context([record("t.py::a"), record("t.py::b")])
    assert [t["id"] for t in ctx["tests"]] == ["t.py::a", "t.py::b"]
    assert all(len(t["verdicts"]) == 2 for t in ctx["tests"])


def test_regressions_come_first_then_inconclusive_ungated_and_improvements():
    improved = Verdict("speedup", Kind.SPEEDUP, Status.PASS, value=2.0, baseline=1.6, delta_pct=25.0,
                       flags=("improved",))
    odd = [Verdict("sqnr_db", Kind.ACCURACY, Status.UNGATED, value=9.0),
           Verdict("speedup", Kind.SPEEDUP, Status.INCONCLUSIVE, value=1.5)]
    records = [record("t.py::slow", speedup=1.2, status="fail"), Record("t.py::fast", ("fp8",), {}, [improved]),
               Record("t.py::odd", ("fp8",), {}, odd)]
    ctx = context(records)
    assert [s["key"] for s in ctx["sections"]] == ["fail", "inconclusive", "ungated", "improved"]
    assert ctx["sections"][0]["rows"][0]["tolerance_text"] == "±3.0%"
    assert ctx["tests"][0]["id"] == "t.py::slow"  # the failing test leads the table too


def test_failing_tests_sort_first_in_the_table_and_carry_their_worst_status():
    ctx = context([record("t.py::a"), record("t.py::z", speedup=1.2, status="fail")])
    assert [(t["id"], t["status"]) for t in ctx["tests"]] == [("t.py::z", "fail"), ("t.py::a", "pass")]


def test_without_pytests_outcomes_the_counts_say_they_are_the_records():
    assert context([record()])["counts"]["source"] == "records"


def test_skipped_tests_are_grouped_by_reason_most_common_first():
    outcomes = Outcomes()
    for test, reason in (("t.py::a", "needs a B200"), ("t.py::b", "no CUDA"), ("t.py::c", "no CUDA")):
        outcomes.add("skipped", test, ("t.py", 1, f"Skipped: {reason}"))
    groups = context([], ReviewData(outcomes=outcomes))["skipped"]
    assert groups == [{"reason": "no CUDA", "tests": ["t.py::b", "t.py::c"]},
                      {"reason": "needs a B200", "tests": ["t.py::a"]}]


def test_the_delta_chart_is_centred_on_zero_with_a_tolerance_band_and_whiskers():
    chart = svg.delta_chart([{"test": "t.py::a", "metric": "speedup", "status": "fail", "delta_pct": -12.0,
                              "baseline": 1.6, "low": 1.39, "high": 1.42, "tolerance_pct": 3.0}])
    assert "baseline (0%)" in chart and 'class="band"' in chart and 'class="whisker"' in chart
    assert "-12.0%" in chart and "tolerance ±3.0%" in chart


def test_absolute_speedups_share_a_log_axis_so_small_ones_stay_readable():
    rows = [{"test": f"t.py::{n}", "metric": "speedup", "status": "pass", "value": v, "low": v, "high": v,
             "baseline": v} for n, v in (("a", 73.9), ("b", 52.4), ("c", 1.8))]
    chart = svg.speedup_chart(rows)
    widths = [float(w) for w in re.findall(r'<rect x="[\d.]+" y="[\d.]+" width="([\d.]+)"', chart)]
    assert ">1x<" in chart and ">10x<" in chart and widths[2] > widths[0] / 8  # linear: 1/41


def test_the_scatter_labels_each_point_and_includes_named_speedups():
    named = Verdict("decode", Kind.SPEEDUP, Status.PASS, value=3.0, interval=(2.9, 3.1), unit="x")
    rec = Record("t.py::kv_cache", ("fp8",), {}, [named, Verdict("sqnr_db", Kind.ACCURACY, Status.PASS, value=30)])
    ctx = context([record("t.py::gemm"), rec])
    assert ctx["scatter_metric"] == "sqnr_db"
    assert ctx["scatter_svg"].count('class="point"') == 2 and "kv_cache decode" in ctx["scatter_svg"]


def test_names_in_the_svg_are_escaped():
    chart = svg.delta_chart([{"test": "t.py::<script>x</script>", "metric": "speedup", "status": "fail",
                              "delta_pct": -5.0, "baseline": 1.0, "low": None, "high": None}])
    assert "<script>" not in chart and "&lt;script&gt;" in chart
