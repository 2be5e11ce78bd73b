"""Everyday use: the plugin costs nothing until a run uses it, and says little until something needs a look."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_plugin import CONFTEST, FAKES, gemm

HEAVY = ("torch", "numpy", "pandas", "jinja2")


def test_importing_the_plugin_imports_no_torch_numpy_pandas_or_jinja2():
    code = ("import sys, pytest_lowprec.plugin, pytest_lowprec; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_unrelated_test_file_runs_with_the_plugin_loaded_without_importing_torch(pytester, monkeypatch):
    pytester.makepyfile(test_plain="""
        import sys

        def test_plain():
            assert "torch" not in sys.modules and "numpy" not in sys.modules
            assert "pytest_lowprec.session" not in sys.modules
    """)
    # This plugin alone: other installed plugins may import torch or numpy (jaxtyping's does).
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    result = pytester.runpytest_subprocess("-p", "pytest_lowprec.plugin", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "lowprec gate" not in result.stdout.str()


def test_a_lowprec_marker_alone_starts_the_gate_after_collection(pytester, monkeypatch):
    pytester.makepyfile(fakes=FAKES)
    pytester.makeconftest(CONFTEST)
    monkeypatch.setenv("FAKE_GPU", "h100")
    gemm(pytester)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*lowprec gate on h100*", "lowprec: 2 verdicts in 1 test: 2 pass"])


def test_collect_only_starts_no_gate_for_lowprec_tests(pytester):
    pytester.makeconftest("""
        import sys

        def pytest_collection_finish(session):
            print("gate started:", "pytest_lowprec.session" in sys.modules)
    """)
    pytester.makepyfile("def test_x(lowprec): pass")
    result = pytester.runpytest_subprocess("--collect-only", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*<Function test_x>*", "gate started: False"])


@pytest.fixture
def gate(pytester, monkeypatch):
    pytester.makepyfile(fakes=FAKES)
    pytester.makeconftest(CONFTEST)
    monkeypatch.setenv("FAKE_GPU", "h100")
    pytester.makepyfile(test_mixed="""
        import pytest

        @pytest.mark.lowprec(precision="fp8")
        def test_good(lowprec):
            lowprec.accuracy("sqnr_db", 30.0, min=25.0)
            lowprec.speedup(baseline=lambda: None, optimized=lambda: None, min=1.2)

        @pytest.mark.lowprec(precision="fp8")
        def test_bad(lowprec):
            lowprec.accuracy("sqnr_db", 20.0, min=25.0)

        def test_unbounded(lowprec):
            lowprec.accuracy("rel_l2", 0.01, higher_is_better=False)
    """)
    return pytester


def test_the_summary_lists_only_verdicts_that_need_a_look_under_a_count_line_by_default(gate):
    result = gate.runpytest()
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*lowprec gate on h100*",
        "lowprec: 4 verdicts in 3 tests: 2 pass, 1 fail, 1 ungated",
        "test*precision*metric*verdict*",
        "*test_bad*sqnr_db*FAIL*",
        "*test_unbounded*rel_l2*UNGATED*",
        "(2 passing or skipped verdicts not listed: -v or --lowprec-table=all lists every verdict)",
    ])
    table = result.stdout.str().split("lowprec gate on h100")[1]
    assert "test_good" not in table


@pytest.mark.parametrize("option", ["-v", "--lowprec-table=all"])
def test_every_verdict_is_listed_under_v_or_lowprec_table_all(gate, option):
    result = gate.runpytest(option)
    table = result.stdout.str().split("lowprec gate on h100")[1]
    assert table.count("test_good") == 2 and "not listed" not in table


def test_lowprec_table_problems_keeps_the_short_table_under_v(gate):
    result = gate.runpytest("-v", "--lowprec-table=problems")
    assert "test_good" not in result.stdout.str().split("lowprec gate on h100")[1]


def test_each_measurement_is_logged_live_under_log_cli_level_info(gate):
    result = gate.runpytest("--log-cli-level=INFO", "-k", "good")
    result.stdout.fnmatch_lines(["*test_mixed.py::test_good speedup: measurement 1: 2.0*x [[]*] from * pairs in *s*"])


def test_measurement_progress_stays_out_of_quiet_output(gate):
    result = gate.runpytest("-q", "-k", "good")
    assert "measurement 1" not in result.stdout.str()


def test_lowprec_trace_without_cuda_warns_that_it_did_nothing(pytester):
    pytester.makepyfile("""
        def test_speed(lowprec):
            lowprec.speedup(baseline=lambda: None, optimized=lambda: None, min=1.0)
    """)
    result = pytester.runpytest("--gpu", "cpu", "--lowprec-trace", "traces", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["lowprec: WARNING: --lowprec-trace */traces did nothing: this run has no CUDA "
                                 "device (--gpu cpu); traces are taken of CUDA speedups only"])
    assert not (pytester.path / "traces").exists()


@pytest.mark.slow  # a subprocess or a build of seconds: `pytest tests/ --slow` (.ci/run) runs it
@pytest.mark.parametrize("args", [(), ("--lowprec-update",), ("--lowprec-update", "-n", "2")],
                         ids=["gate", "update", "update-under-xdist"])
def test_no_lock_file_is_left_in_the_baselines_folder_after_a_run(pytester, monkeypatch, args):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # a machine with no GPU: --gpu auto finds the CPU
    pytester.makepyfile(test_many="""
        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_many(lowprec, i):
            lowprec.accuracy("sqnr_db", 30.0, min=25.0)
    """)
    pytester.runpytest_subprocess("--lowprec-update", "-p", "no:cacheprovider").assert_outcomes(passed=4)
    result = pytester.runpytest_subprocess(*args, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    assert sorted(p.name for p in Path(pytester.path / "baselines").iterdir()) == ["cpu.json"]


def test_the_too_many_workers_error_says_what_gpu_cpu_runs():
    from pytest_lowprec.session import _too_many_workers

    message = _too_many_workers(4, 2)
    assert "accuracy only" not in message
    assert "--gpu cpu (accuracy gates and CPU-timed speedups; speed gates over CUDA work skip)" in message


@pytest.mark.slow  # a subprocess or a build of seconds: `pytest tests/ --slow` (.ci/run) runs it
def test_an_xdist_run_that_names_no_lowprec_option_still_ends_with_the_gate_summary(pytester, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # a machine with no GPU: --gpu auto finds the CPU
    pytester.makepyfile("""
        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_many(lowprec, i):
            lowprec.accuracy("sqnr_db", 30.0, min=25.0)
    """)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*lowprec gate on cpu*", "lowprec: 4 verdicts in 4 tests: 4 pass"])
