"""History through the plugin: runs appended by pytest, drawn as trends, compared from the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from stores import store_url  # noqa: F401  (a fixture)
from test_report import CONFTEST, FAKES, WORKLOADS

pytest.importorskip("sqlalchemy")

SKIPS = """
import pytest

def test_plain():
    pass

@pytest.mark.skip(reason="needs a B200")
def test_b200_only():
    pass

@pytest.mark.lowprec(precision="fp8", device="cuda")
def test_cuda_only(lowprec):
    pass
"""


@pytest.fixture
def gate(pytester):
    pytester.makepyfile(fakes=FAKES)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_workloads=WORKLOADS)
    return pytester


def run_at(gate, monkeypatch, commit: str, speedup: str, *args: str):
    """One run of the gate at a commit. Options take their value after `=`: pytest reads a separate word
    that names an existing file (the SQLite store after the first run) as a path argument, which moves
    the rootdir and so every test id."""
    monkeypatch.setenv("LOWPREC_COMMIT", commit)
    monkeypatch.setenv("LOWPREC_BRANCH", "main")
    monkeypatch.setenv("FAKE_SPEEDUP", speedup)
    return gate.runpytest(*args)


def test_the_pr_summarys_counts_are_pytests_skipped_tests_included(pytester):
    pytester.makepyfile(test_mixed=SKIPS)
    pytester.runpytest("--gpu", "cpu", "--lowprec-markdown", "pr.md", "-p", "no:randomly").assert_outcomes(
        passed=1, skipped=2)
    summary = (pytester.path / "pr.md").read_text()
    assert "3 tests (as pytest counted): **0 failed**, 1 passed, 2 skipped" in summary


def test_the_reports_counts_are_pytests_with_every_skip_and_its_reason(pytester):
    pytester.makepyfile(test_mixed=SKIPS)
    pytester.runpytest("--gpu", "cpu", "--lowprec-report", "r.html", "-p", "no:randomly").assert_outcomes(
        passed=1, skipped=2)
    html = (pytester.path / "r.html").read_text()
    assert "<span>3 tests</span>" in html and "<span>2 skipped</span>" in html and "(as pytest counted)" in html
    assert "<span class=\"\">0 failed</span>" in html  # nothing failed: not red
    skipped = html[html.index('id="skipped"'):]
    assert "<summary>2 skipped: " in skipped
    assert "needs a B200" in skipped and "test_mixed.py::test_b200_only" in skipped
    assert "needs a CUDA device; this run is on cpu" in skipped


def test_each_run_is_appended_and_the_report_draws_the_trend(gate, monkeypatch, store_url):  # noqa: F811
    for i, speedup in enumerate(["1.6", "1.6", "1.6", "1.6", "1.3"]):
        result = run_at(gate, monkeypatch, f"c{i}aaaa", speedup, f"--lowprec-history={store_url}",
                        "--lowprec-report", "r.html", "-k", "1024")
    result.stdout.fnmatch_lines(["*lowprec: appended run #5 (2 verdicts) to the history*"])
    html = (gate.path / "r.html").read_text()
    trends = html[html.index('id="trends"'):html.index('id="all"')]
    assert "test_gemm[1024]" in trends and "step -" in trends and "change point at c4aaaa" in trends
    assert 'class="changepoint"' in trends


def test_the_pr_summary_links_the_trend_of_each_regressed_metric(gate, monkeypatch, store_url):  # noqa: F811
    run_at(gate, monkeypatch, "c0aaaa", "1.6", "--lowprec-update", "-k", "1024")
    args = (f"--lowprec-history={store_url}", "--lowprec-report", "out/r.html", "--lowprec-markdown", "out/pr.md",
            "-k", "1024")
    for i, speedup in enumerate(["1.6", "1.6", "1.6", "1.2"]):
        run_at(gate, monkeypatch, f"c{i + 1}aaaa", speedup, *args)
    md = (gate.path / "out" / "pr.md").read_text()
    section = md[md.index("### Trends of the regressed metrics"):]
    assert "test_gemm\\[1024\\] speedup" in section and "change point at c4aaaa" in section
    assert "([trend](r.html#trend-" in section


def test_the_trend_link_goes_to_the_uploaded_report_in_ci(gate, monkeypatch, tmp_path):
    monkeypatch.setenv("LOWPREC_REPORT_URL", "https://ci.example/run/9/lowprec.html")
    store = str(tmp_path / "h.sqlite")
    run_at(gate, monkeypatch, "c0aaaa", "1.6", "--lowprec-update", "-k", "1024")
    for i, speedup in enumerate(["1.6", "1.2"]):
        run_at(gate, monkeypatch, f"c{i + 1}aaaa", speedup, f"--lowprec-history={store}", "--lowprec-markdown",
               "pr.md", "-k", "1024")
    assert "([trend](https://ci.example/run/9/lowprec.html#trend-" in (gate.path / "pr.md").read_text()


def test_an_unreachable_history_stops_the_run_before_any_test(gate):
    pytest.importorskip("psycopg")
    result = gate.runpytest("--lowprec-history", "postgresql://ci@127.0.0.1:1/history")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--lowprec-history: cannot reach the history store*Check that the server runs*"])


def test_a_saved_run_renders_its_report_again(gate):
    gate.runpytest("--lowprec-json", "run.json")
    saved = json.loads((gate.path / "run.json").read_text())
    assert saved["format"] == "pytest-lowprec-run" and len(saved["records"]) == 3
    out = subprocess.run([sys.executable, "-m", "pytest_lowprec", "report", "run.json", "-o", "again.html"],
                         cwd=gate.path, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    html = (gate.path / "again.html").read_text()
    assert "test_workloads.py::test_regressed" in html and "<span>3 tests</span>" in html


def test_two_stored_runs_compare_from_the_command_line(gate, monkeypatch, store_url):  # noqa: F811
    for commit, speedup in (("aaaa1111", "1.6"), ("bbbb2222", "1.2")):
        run_at(gate, monkeypatch, commit, speedup, f"--lowprec-history={store_url}", "-k", "1024")
    out = subprocess.run([sys.executable, "-m", "pytest_lowprec", "compare", "aaaa", "bbbb", "--history", store_url],
                         cwd=gate.path, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if "speedup" in line and "test_gemm[1024]" in line)
    assert "-24.8%" in row and "slower, pass -> fail" in row
    md = subprocess.run([sys.executable, "-m", "pytest_lowprec", "compare", "aaaa", "bbbb", "--history", store_url,
                         "--markdown", "--only-changed"], cwd=gate.path, capture_output=True, text=True, check=False)
    assert "| test | metric | A | B | change | note |" in md.stdout and "sqnr_db" not in md.stdout


def test_compare_names_a_run_that_is_not_stored(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pytest_lowprec", "compare", "1", "2", "--history",
                          str(tmp_path / "h.sqlite")], capture_output=True, text=True, check=False)
    assert out.returncode == 2 and "no stored run is '1'" in out.stderr


def test_a_store_lost_mid_run_fails_the_run_and_still_writes_the_report(pytester):
    from stores import postgres_database

    admin, name, url = postgres_database()
    pytester.makepyfile(f"""
        import sqlalchemy as sa

        def test_the_database_goes_away(lowprec):
            lowprec.accuracy("sqnr_db", 30.0, min=25.0)
            admin = sa.create_engine("{admin.url.render_as_string(hide_password=False)}", isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(sa.text('DROP DATABASE "{name}" WITH (FORCE)'))
            admin.dispose()
    """)
    result = pytester.runpytest("--gpu", "cpu", f"--lowprec-history={url}", "--lowprec-report", "r.html")
    admin.dispose()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*lowprec: history NOT written to postgresql+psycopg://*", "*1 passed*"])
    assert (pytester.path / "r.html").exists()
