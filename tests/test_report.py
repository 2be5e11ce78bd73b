"""Reports and traces as a reviewer meets them: pytester runs with a faked H100 and a scripted timer."""

from __future__ import annotations

import csv
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_lowprec.profiling import host_functions, kernel_table, match_kernels, stream_rows, trace_path

FAKES = (Path(__file__).parent / "fakes.py").read_text()
CONFTEST = """
import os
from fakes import H100, ScriptedTimer

def pytest_lowprec_device(config):
    return H100

def pytest_lowprec_make_timer(config, device, kind, options):
    return ScriptedTimer(speedup=float(os.environ.get("FAKE_SPEEDUP", "1.6")))
"""
WORKLOADS = """
import pytest

@pytest.mark.lowprec(precision="fp8")
@pytest.mark.parametrize("n", [1024, "<script>alert(1)</script>"])
def test_gemm(lowprec, n):
    lowprec.accuracy("sqnr_db", 28.0, min=25.0)
    lowprec.speedup(baseline=lambda: None, optimized=lambda: None, min=1.5)

@pytest.mark.lowprec(precision="nvfp4")
def test_regressed(lowprec):
    lowprec.accuracy("sqnr_db", 5.0, min=8.0)
    lowprec.speedup(baseline=lambda: None, optimized=lambda: None, min=1.2)
"""


@pytest.fixture
def gate(pytester):
    pytester.makepyfile(fakes=FAKES)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_workloads=WORKLOADS)
    return pytester


def test_html_report_leads_with_pytests_counts_and_what_changed(gate):
    result = gate.runpytest("--lowprec-report", "out/report.html")
    result.stdout.fnmatch_lines(["*lowprec: wrote *out/report.html*"])
    html = (gate.path / "out" / "report.html").read_text()
    assert "lowprec gate on h100" in html and "NVIDIA H100 80GB HBM3" in html and "torch" in html
    assert "<span>3 tests</span>" in html and '<span class="bad">1 failed</span>' in html
    changed = html[html.index('id="changed"'):html.index('id="all"')]
    assert "test_workloads.py::test_regressed" in changed and "sqnr_db 5 &lt; bound 8" in changed


def test_html_report_shows_a_script_in_a_test_id_as_text(gate):
    gate.runpytest("--lowprec-report", "r.html")
    html = (gate.path / "r.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert" not in html and html.count("<script") == 1  # the report's own script only


def test_csv_has_one_row_per_verdict(gate):
    gate.runpytest("--lowprec-csv", "v.csv")
    rows = list(csv.DictReader((gate.path / "v.csv").open()))
    assert len(rows) == 6 and {"test", "metric", "value", "low", "high", "status"} <= set(rows[0])
    speed = [r for r in rows if r["metric"] == "speedup" and r["test"].endswith("[1024]")][0]
    assert float(speed["low"]) < float(speed["value"]) < float(speed["high"])


def test_markdown_puts_regressions_first_and_collapses_the_rest(gate):
    gate.runpytest("--lowprec-markdown", "pr.md")
    md = (gate.path / "pr.md").read_text()
    assert md.index("### Regressions and failures") < md.index("<details>")
    assert "test_workloads.py::test_regressed | sqnr_db" in md and "&lt;script&gt;" in md


def test_improvements_get_their_own_section(gate, monkeypatch):
    gate.runpytest("--lowprec-update")
    monkeypatch.setenv("FAKE_SPEEDUP", "2.4")
    gate.runpytest("--lowprec-markdown", "pr.md")
    md = (gate.path / "pr.md").read_text()
    assert "### Improvements" in md and "pass (improved)" in md


@pytest.mark.slow  # a subprocess or a build of seconds: `pytest tests/ --slow` (.ci/run) runs it
def test_report_written_once_for_an_xdist_run(pytester):
    pytest.importorskip("xdist")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.parametrize("i", range(6))
        def test_many(lowprec, i):
            lowprec.accuracy("rel_l2", 0.001 * (i + 1), max=0.05)
    """)
    result = pytester.runpytest_subprocess("-n", "2", "--gpu", "cpu", "--lowprec-report", "r.html",
                                           "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)
    assert result.stdout.str().count("lowprec: wrote") == 1
    assert (pytester.path / "r.html").read_text().count('<tr class="test ') == 6


def test_a_trace_with_no_device_time_fails_its_test_loudly(gate):
    gate.makeconftest(CONFTEST + """
import pytest_lowprec.profiling as profiling
from pytest_lowprec.profiling import SideTrace

def no_cupti(side, fn, path):
    return SideTrace(side, [], 0.0, None, "the profiler recorded no device time for this call: CUPTI failed")

profiling.profile_side = no_cupti
""")
    result = gate.runpytest("--lowprec-trace", "traces", "-k", "1024", "--lowprec-report", "r.html")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*trace:speedup.baseline: the profiler recorded no device time*"])
    assert "CUPTI failed" in (gate.path / "r.html").read_text()


def test_kernel_proof_is_skipped_without_cuda(pytester):
    pytester.makepyfile("""
        def test_path(lowprec):
            lowprec.speedup(baseline=lambda: None, optimized=lambda: None)
            lowprec.expect_kernels("optimized", require=r"f8f8")
    """)
    result = pytester.runpytest("--gpu", "cpu", "-rs")
    result.assert_outcomes(skipped=1)


def test_kernel_proof_needs_its_speedup_first(gate):
    gate.makepyfile(test_order="""
        def test_path(lowprec):
            lowprec.expect_kernels("optimized", require=r"f8f8")
    """)
    result = gate.runpytest("test_order.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*expect_kernels(name='speedup') needs lowprec.speedup(name='speedup')*"])


def test_kernel_table_sums_launches_by_name_and_ranks_by_time():
    rows, total = kernel_table([("gemm", 10.0), ("quant", 2.0), ("gemm", 10.0), ("amax", 3.0)])
    assert total == 25.0
    assert [(r.name, r.calls, r.device_us) for r in rows] == [("gemm", 2, 20.0), ("amax", 1, 3.0), ("quant", 1, 2.0)]
    assert rows[0].share == pytest.approx(0.8)


def _device_event(stream, ts, dur, name, cat="kernel"):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": stream,
            "args": {"stream": stream, "device": 0}}


def test_stream_rows_count_each_streams_overlapping_events_once_and_the_idle_time_between_all():
    trace = {"traceEvents": [
        _device_event(7, 0.0, 10.0, "gemm"), _device_event(7, 5.0, 10.0, "gemm"),  # overlap: busy 15
        _device_event(7, 30.0, 4.0, "cast"),
        _device_event(21, 12.0, 10.0, "ncclDevKernel_ReduceScatter"),
        _device_event(21, 40.0, 2.0, "copy", "gpu_memcpy"),
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 100.0, "dur": 50.0, "tid": 1},  # host, not counted
    ]}
    rows, span, busy = stream_rows(trace)
    assert [(r.stream, r.events, r.busy_us, r.top) for r in rows] == [
        (7, 3, 19.0, "gemm"), (21, 2, 12.0, "ncclDevKernel_ReduceScatter")]
    assert span == 42.0
    assert busy == 15.0 + 7.0 + 4.0 + 2.0  # 0-15, 15-22 (the collective past the gemms), 30-34, 40-42


def test_stream_rows_of_a_trace_without_device_events_are_empty():
    assert stream_rows({"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 1}]}) \
        == ([], 0.0, 0.0)


def test_host_functions_rank_cprofiles_own_time_per_repeat_and_name_builtins_plainly():
    stats = {("/src/fsdp.py", 12, "pre_forward"): (4, 4, 0.008, 0.020, {}),
             ("~", 0, "<built-in method torch._chunk_cat>"): (2, 2, 0.012, 0.012, {}),
             ("/src/step.py", 3, "step"): (2, 2, 0.001, 0.040, {})}
    rows = host_functions(stats, repeats=2, top=2)
    assert [(r.name, r.calls, r.own_ms, r.total_ms) for r in rows] == [
        ("<built-in method torch._chunk_cat>", 1.0, 6.0, 6.0), ("fsdp.py:12(pre_forward)", 2.0, 4.0, 10.0)]


def test_kernel_matching_names_what_is_missing_and_what_is_forbidden():
    names = ["sm90_xmma_gemm_e4m3e4m3_f32", "vectorized_elementwise_kernel"]
    assert match_kernels(names, [r"e4m3"], [r"gemm_f32f32"]) == []
    assert match_kernels(names, [r"nvfp4"], []) == ["no kernel matches required /nvfp4/"]
    assert match_kernels(names, [], [r"elementwise"]) == [
        "forbidden /elementwise/ matched 'vectorized_elementwise_kernel'"]


def test_a_kernel_proof_sees_kernels_outside_the_reports_top_fifteen():
    from pytest_lowprec.profiling import SideTrace

    events = [(f"elementwise_{i}", 10.0) for i in range(20)] + [("_add_rms_norm_kernel", 1.0), ("gemm_f32f32", 0.5)]
    rows, total = kernel_table(events, top=None)
    trace = SideTrace.from_dict(SideTrace("optimized", rows[:15], total, ran=[r.name for r in rows]).to_dict())
    assert len(trace.kernels) == 15 and "_add_rms_norm_kernel" not in [k.name for k in trace.kernels]
    assert match_kernels(trace.names(), [r"_add_rms_norm_kernel"], []) == []
    assert match_kernels(trace.names(), [], [r"f32f32"]) == ["forbidden /f32f32/ matched 'gemm_f32f32'"]


def test_a_trace_saved_before_every_kernel_name_was_kept_proves_from_its_table():
    from pytest_lowprec.profiling import KernelRow, SideTrace

    old = {"side": "optimized", "kernels": [KernelRow("k", 1, 5.0, 1.0).to_dict()], "device_us": 5.0, "file": None,
           "error": None}
    assert SideTrace.from_dict(old).names() == ["k"]


def test_trace_file_names_are_safe_for_shells_and_browsers(tmp_path):
    path = trace_path(tmp_path, "suites/test_x.py::test_y[<a b>/c]", "speedup", "optimized")
    assert path.parent == tmp_path
    assert re.fullmatch(r"suites_test_x\.py_test_y_a_b_c\.speedup\.optimized\.[0-9a-f]{10}\.json", path.name)


def test_an_eager_speedup_measured_after_a_trace_is_flagged(gate):
    gate.makeconftest(CONFTEST + """
import pytest_lowprec.profiling as profiling
from pytest_lowprec.profiling import KernelRow, SideTrace

profiling.profile_side = lambda side, fn, path: SideTrace(side, [KernelRow("k", 1, 5.0, 1.0)], 5.0, None, None)
""")
    gate.makepyfile(test_order="""
        def test_a_first(lowprec):
            lowprec.speedup(baseline=lambda: None, optimized=lambda: None)

        def test_b_eager(lowprec):
            lowprec.speedup(baseline=lambda: None, optimized=lambda: None)
    """)
    result = gate.runpytest("test_order.py", "--lowprec-trace", "traces")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_b_eager*speedup*UNGATED (no-baseline, after-trace)*"])
    assert "test_a_first" not in [line for line in result.stdout.lines if "after-trace" in line][0]


def test_pytest_html_shows_metrics_and_trace_links_in_its_table(gate):
    pytest.importorskip("pytest_html")
    gate.makeconftest(CONFTEST + """
import pytest_lowprec.profiling as profiling
from pytest_lowprec.profiling import KernelRow, SideTrace

def fake_profile(side, fn, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")
    return SideTrace(side, [KernelRow("k", 1, 5.0, 1.0)], 5.0, str(path), None)

profiling.profile_side = fake_profile
""")
    gate.runpytest("-k", "1024", "--html", "ph.html", "--self-contained-html", "--lowprec-trace", "traces")
    page = (gate.path / "ph.html").read_text()
    assert "lowprec" in page and "sqnr_db=28" in page and "speedup.optimized" in page


HOSTILE_NAMES = r'''
def test_hostile(lowprec):
    lowprec.accuracy("=HYPERLINK(\"http://evil.example\")", 5.0, min=8.0)
    lowprec.accuracy("+cmd|a\r\nb", 30.0, min=25.0)
    lowprec.accuracy("![x](http://evil.example/x.png) @octocat", 30.0, min=25.0)
    lowprec.accuracy("\x1b[31mred\x1b[0m\x01", 30.0, min=25.0)
    lowprec.accuracy("-sqnr\udc80", 30.0, min=25.0)
'''


@pytest.fixture
def hostile(pytester):
    pytester.makepyfile(fakes=FAKES)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_hostile=HOSTILE_NAMES)
    return pytester


def test_csv_cells_from_metric_names_and_reasons_are_never_formulas(hostile):
    hostile.runpytest("--lowprec-csv", "v.csv").assert_outcomes(failed=1)
    rows = list(csv.DictReader((hostile.path / "v.csv").open(encoding="utf-8")))
    cells = [row[column] for row in rows for column in ("test", "metric", "reasons")]
    assert len(rows) == 5 and not [c for c in cells if c.startswith(("=", "+", "-", "@", "\t", "\r"))]
    assert any(row["metric"] == "'=HYPERLINK(\"http://evil.example\")" for row in rows)


def test_markdown_rows_from_hostile_names_stay_whole_and_inert(hostile):
    hostile.runpytest("--lowprec-markdown", "pr.md").assert_outcomes(failed=1)
    md = (hostile.path / "pr.md").read_text(encoding="utf-8")
    rows = [line for line in md.splitlines() if line.startswith("| test_hostile.py")]
    assert len(rows) == 5 and {line.replace("\\|", "").count("|") for line in rows} == {9}  # 8 columns
    assert "![x](" not in md and "@octocat" not in md and "\x1b" not in md


def test_terminal_output_carries_no_escape_sequence_from_a_metric_name(hostile):
    result = hostile.runpytest()
    result.assert_outcomes(failed=1)
    assert "\x1b" not in result.stdout.str() and "\x01" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*red*pass*"])


def test_junit_xml_with_control_characters_in_metric_names_parses(hostile):
    hostile.runpytest("--junitxml=out.xml").assert_outcomes(failed=1)
    names = [p.get("name") for p in ET.parse(hostile.path / "out.xml").iter("property")]
    values = [n for n in names if not n.endswith(".status")]
    assert "lowprec.[31mred[0m" in names and len(values) == 5
    assert 'lowprec.=HYPERLINK("http://evil.example").status' in names  # the failing verdict's status


def test_a_lone_surrogate_in_a_metric_name_still_writes_every_report(hostile):
    result = hostile.runpytest("--lowprec-report", "r.html", "--lowprec-csv", "v.csv", "--lowprec-markdown", "pr.md")
    result.assert_outcomes(failed=1)
    for name in ("r.html", "v.csv", "pr.md"):
        assert "sqnr\\udc80" in (hostile.path / name).read_text(encoding="utf-8").replace("\\\\", "\\")
    result.stdout.fnmatch_lines(["*sqnr\\udc80*pass*"])


def test_trace_files_of_hostile_metric_names_stay_in_the_trace_folder(gate):
    gate.makeconftest(CONFTEST + """
import pytest_lowprec.profiling as profiling
from pytest_lowprec.profiling import KernelRow, SideTrace

def fake_profile(side, fn, path):
    path.write_text("{}")
    return SideTrace(side, [KernelRow("k", 1, 5.0, 1.0)], 5.0, str(path), None)

profiling.profile_side = fake_profile
""")
    gate.makepyfile(test_paths="""
        def test_paths(lowprec):
            lowprec.speedup(baseline=lambda: None, optimized=lambda: None, name="../../escaped")
            lowprec.speedup(baseline=lambda: None, optimized=lambda: None, name="sub/folder")
    """)
    (gate.path / "traces").mkdir()
    gate.runpytest("test_paths.py", "--lowprec-trace", "traces").assert_outcomes(passed=1)
    written = sorted(p.relative_to(gate.path) for p in gate.path.rglob("*.json"))
    assert len(written) == 4 and all(p.parent == Path("traces") for p in written)


def test_the_markdown_header_escapes_the_commit_and_device_name_it_was_handed(gate, monkeypatch):
    monkeypatch.setenv("LOWPREC_COMMIT", "@octocat|![x](http://evil.example/x.png)")
    gate.makepyfile(test_workloads=WORKLOADS)
    gate.runpytest("--lowprec-markdown", "pr.md")
    header = (gate.path / "pr.md").read_text(encoding="utf-8").splitlines()[2]
    assert "![x](" not in header and "@octocat" not in header and "\\|" in header
