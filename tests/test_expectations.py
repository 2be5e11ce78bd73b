"""The gate protects from a GPU's first run: floors from the hardware model, visible ungated and
inconclusive verdicts, a capped tolerance, refused noisy recordings, rounds, fixed CPU threads.
pytester runs with a faked device and a scripted timer, as a user of a new GPU meets the gate."""

from __future__ import annotations

import ast
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
FAKES = (Path(__file__).parent / "fakes.py").read_text()
CONFTEST = """
import os
from dataclasses import replace
from fakes import H100, ScriptedTimer

def pytest_lowprec_device(config):
    key = os.environ.get("FAKE_KEY", "h100")
    return replace(H100, key=key, name=f"NVIDIA {key.upper()} (faked)",
                   capability=(10, 0) if key.startswith("b") else (9, 0))

def pytest_lowprec_make_timer(config, device, kind, options):
    return ScriptedTimer(speedup=float(os.environ.get("FAKE_SPEEDUP", "1.9")),
                         noise=float(os.environ.get("FAKE_NOISE", "0.01")))
"""
DECODE = """
import pytest
from pytest_lowprec.roofline import Work

@pytest.mark.lowprec(precision="fp8")
def test_decode(lowprec):
    floor = lowprec.expect(Work(nbytes=2e9), Work(nbytes=1e9), fraction=0.8, why="test")
    lowprec.speedup(baseline=lambda: None, optimized=lambda: None, min=floor)
"""
UNFLOORED = """
import pytest

@pytest.mark.lowprec(precision="fp8")
def test_unfloored(lowprec):
    lowprec.speedup(baseline=lambda: None, optimized=lambda: None)
    lowprec.accuracy("bulk_sqnr_db", 30.0, higher_is_better=True)
"""


@pytest.fixture
def gate(pytester, monkeypatch):
    pytester.makepyfile(fakes=FAKES)
    pytester.makeconftest(CONFTEST)
    monkeypatch.setenv("FAKE_KEY", "b200")
    return pytester


def _csv(pytester, *args) -> tuple[pd.DataFrame, object]:
    result = pytester.runpytest("--lowprec-csv", "v.csv", *args)
    return pd.read_csv(pytester.path / "v.csv"), result


def test_on_a_gpu_with_no_baseline_the_speedup_is_floored_from_its_datasheet(gate):
    gate.makepyfile(test_decode=DECODE)
    frame, result = _csv(gate)
    result.assert_outcomes(passed=1)
    row = frame[frame["metric"] == "speedup"].iloc[0]
    assert row["status"] == "pass" and row["predicted"] == pytest.approx(1.99, abs=0.005)
    assert row["bound"] == ">= 1.59x (0.8 x predicted 1.99x, memory/memory-bound, datasheet ceilings, default launch)"


def test_a_slowdown_under_the_models_floor_fails_with_no_baseline(gate, monkeypatch):
    gate.makepyfile(test_decode=DECODE)
    monkeypatch.setenv("FAKE_SPEEDUP", "1.4")
    result = gate.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*speedup: below floor: 95% interval*< 1.59x (0.8 x predicted 1.99x*"])


def test_the_same_work_predicts_less_on_a_gpu_whose_launch_weighs_more(gate, monkeypatch):
    gate.makepyfile(test_decode=DECODE.replace("2e9", "2e6").replace("1e9", "1e6"))
    b200, _ = _csv(gate)
    monkeypatch.setenv("FAKE_KEY", "h200")
    h200, _ = _csv(gate)
    # 2 MB against 1 MB: one kernel's launch is a third of the time at 8 TB/s, less at 4.25 TB/s.
    assert b200["predicted"].dropna().iloc[0] < h200["predicted"].dropna().iloc[0] < 2.0


def test_ungated_verdicts_are_visible_in_every_output_and_pass(gate):
    gate.makepyfile(test_unfloored=UNFLOORED)
    result = gate.runpytest("--lowprec-csv", "v.csv", "--lowprec-markdown", "pr.md", "--junitxml", "j.xml",
                            "--lowprec-report", "r.html")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*speedup*UNGATED (no-baseline)*", "*bulk_sqnr_db*UNGATED (no-baseline)*"])
    frame = pd.read_csv(gate.path / "v.csv")
    assert set(frame["status"]) == {"ungated"}
    markdown = (gate.path / "pr.md").read_text()
    assert "### Ungated (neither a bound nor a usable baseline)" in markdown and "2 ungated" in markdown
    properties = {p.get("name"): p.get("value") for p in ET.parse(gate.path / "j.xml").iter("property")}
    assert properties["lowprec.speedup.status"] == "ungated"
    assert 'class="ungated"' in (gate.path / "r.html").read_text()


def test_ungated_verdicts_fail_under_strict_saying_how_to_gate_them(gate):
    gate.makepyfile(test_unfloored=UNFLOORED)
    result = gate.runpytest("--lowprec-strict")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*speedup: ungated: neither a bound nor a usable baseline (--lowprec-strict)*"])


def test_a_verdict_still_undecided_when_the_budget_ends_is_inconclusive_and_fails_under_strict(gate, monkeypatch):
    gate.makepyfile(test_edge="""
        import pytest

        @pytest.mark.lowprec(precision="fp8")
        def test_edge(lowprec):
            lowprec.speedup(baseline=lambda: None, optimized=lambda: None, min=1.5)
    """)
    monkeypatch.setenv("FAKE_SPEEDUP", "1.5")
    monkeypatch.setenv("FAKE_NOISE", "0.05")
    options = ("--lowprec-time-budget", "0.001", "-o", "lowprec_max_pairs=30")
    frame, result = _csv(gate, *options)
    result.assert_outcomes(passed=1)
    assert frame[frame["metric"] == "speedup"]["status"].iloc[0] == "inconclusive"
    strict = gate.runpytest("--lowprec-strict", *options)
    strict.assert_outcomes(failed=1)
    strict.stdout.fnmatch_lines(["*inconclusive: the interval still straddles a decision line*"])


def test_recording_refuses_a_noisy_speedup_naming_the_test_and_the_noise(gate, monkeypatch):
    gate.makepyfile(test_decode=DECODE)
    monkeypatch.setenv("FAKE_NOISE", "0.2")
    result = gate.runpytest("--lowprec-update")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*test_decode.py::test_decode*", "*not recorded: the pairs' noise is *%, over the "
                                 "recording cap 5%; record on an idle machine*"])
    assert not (gate.path / "baselines" / "b200.json").exists()


def test_a_noisy_recording_cannot_widen_the_tolerance_past_its_cap(gate, monkeypatch):
    gate.makepyfile(test_decode=DECODE.replace("fraction=0.8", "fraction=0.05"))
    monkeypatch.setenv("FAKE_NOISE", "0.3")
    gate.runpytest("--lowprec-update", "-o", "lowprec_max_record_noise=0.9").assert_outcomes(passed=1)
    stored = json.loads((gate.path / "baselines" / "b200.json").read_text())["entries"]
    assert next(iter(stored.values()))["metrics"]["speedup"]["noise"] > 0.3  # 2x noise would allow 60%+
    monkeypatch.setenv("FAKE_NOISE", "0.01")
    monkeypatch.setenv("FAKE_SPEEDUP", "1.6")  # 16% under the 1.9x recorded
    result = gate.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*regressed:*below baseline*- 10.0% tolerance*"])


def test_a_first_baseline_recorded_in_rounds_keeps_each_rounds_median_and_their_spread(gate):
    gate.makepyfile(test_decode=DECODE)
    gate.runpytest("--lowprec-update", "--lowprec-rounds", "3").assert_outcomes(passed=1)
    entry = next(iter(json.loads((gate.path / "baselines" / "b200.json").read_text())["entries"].values()))
    speedup = entry["metrics"]["speedup"]
    assert len(speedup["rounds"]) == 3 and 0 <= speedup["spread"] < 0.05
    assert speedup["samples"] == 3 * 120 and speedup["predicted"] == pytest.approx(2.0, rel=0.01)


def test_rounds_must_be_a_whole_number(gate):
    result = gate.runpytest("--lowprec-rounds", "two")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*expected a whole number >= 1, got 'two'*"])


def test_each_speed_row_shows_both_sides_and_their_change_against_the_baseline(gate, monkeypatch):
    gate.makepyfile(test_decode=DECODE)
    gate.runpytest("--lowprec-update").assert_outcomes(passed=1)
    monkeypatch.setenv("FAKE_SPEEDUP", "1.8")
    frame, _ = _csv(gate)
    row = frame[frame["metric"] == "speedup"].iloc[0]
    assert row["baseline_ms"] == pytest.approx(1.0, rel=0.02)
    assert row["baseline_ms_delta_pct"] == pytest.approx(0, abs=2)
    assert row["optimized_ms_delta_pct"] == pytest.approx(100 * (1.9 / 1.8 - 1), abs=2)  # the optimized side slowed


SUM = """
import pytest
import torch

@pytest.mark.lowprec(precision="bf16")
def test_reduction(lowprec):
    x = torch.randn(4_000_000, generator=torch.Generator().manual_seed(0))
    lowprec.accuracy("sum", float(x.sum()), max=1e9)
    lowprec.info("threads", torch.get_num_threads())
"""


def _cpu_values(pytester, monkeypatch, omp: str, *options: str) -> dict:
    monkeypatch.setenv("OMP_NUM_THREADS", omp)
    result = pytester.runpytest_subprocess("--gpu", "cpu", "--lowprec-csv", "v.csv", *options)
    result.assert_outcomes(passed=1)
    frame = pd.read_csv(pytester.path / "v.csv")
    return dict(zip(frame["metric"], frame["value"], strict=True))


@pytest.mark.slow  # a subprocess or a build of seconds: `pytest tests/ --slow` (.ci/run) runs it
def test_cpu_values_do_not_depend_on_the_machines_thread_count(pytester, monkeypatch):
    pytester.makepyfile(test_sum=SUM)
    one, sixteen = _cpu_values(pytester, monkeypatch, "1"), _cpu_values(pytester, monkeypatch, "16")
    assert one == sixteen and one["threads"] == 2  # the plugin's fixed count, whatever OMP_NUM_THREADS says


@pytest.mark.slow  # a subprocess or a build of seconds: `pytest tests/ --slow` (.ci/run) runs it
def test_the_fixed_thread_count_is_what_makes_them_equal(pytester, monkeypatch):
    pytester.makepyfile(test_sum=SUM)
    one = _cpu_values(pytester, monkeypatch, "2", "-o", "lowprec_cpu_threads=1")
    two = _cpu_values(pytester, monkeypatch, "2", "-o", "lowprec_cpu_threads=2")
    assert one["sum"] != two["sum"]  # a parallel reduction's order follows the thread count


def _speedup_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "speedup" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "lowprec":
            yield node


def test_every_speed_gate_in_the_suites_declares_a_floor_and_faster_claims_never_go_under_one():
    for path in sorted((ROOT / "suites").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            claim = "faster" in function.name or "faster" in (ast.get_docstring(function) or "")
            expects = [c for c in ast.walk(function) if isinstance(c, ast.Call)
                       and isinstance(c.func, ast.Attribute) and c.func.attr == "expect"]
            for call in _speedup_calls(function):
                floor = {k.arg: k.value for k in call.keywords}.get("min")
                where = f"{path.name}:{call.lineno}"
                assert floor is not None and not (isinstance(floor, ast.Constant) and floor.value is None), where
                if claim and isinstance(floor, ast.Constant):
                    assert floor.value >= 1.0, where
                elif claim:
                    assert expects and all(any(k.arg == "faster" and getattr(k.value, "value", None) is True
                                               for k in e.keywords) for e in expects), where


@pytest.mark.slow  # a subprocess or a build of seconds: `pytest tests/ --slow` (.ci/run) runs it
def test_a_dry_run_on_a_faked_b200_floors_every_speed_gate_from_the_registry(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("FAKE_GPU", "b200")
    pytester.makepyfile(test_decode=DECODE, test_claim="""
        import pytest
        from pytest_lowprec.roofline import Work

        @pytest.mark.lowprec(precision="nvfp4")
        def test_four_bits_faster(lowprec):
            same = Work(nbytes=1e9)
            floor = lowprec.expect(same, same, fraction=0.9, faster=True, why="test")
            lowprec.speedup(baseline=lambda: None, optimized=lambda: None, min=floor)
    """)
    result = pytester.runpytest_subprocess("-p", "fake_device", "--gpu", "b200", "--lowprec-csv", "v.csv")
    frame = pd.read_csv(pytester.path / "v.csv")
    speed = frame[frame["kind"] == "speedup"]
    assert len(speed) == 2 and "ungated" not in set(speed["status"])
    assert all("datasheet ceilings" in bound for bound in speed["bound"])
    assert speed.set_index("test").loc["test_claim.py::test_four_bits_faster", "bound"].startswith(">= 1.00x")
    result.stdout.fnmatch_lines(["*lowprec gate on b200 (NVIDIA B200 (faked))*"])


@pytest.mark.parametrize(("call", "message"), [
    ('lowprec.accuracy("sqnr_db", 30.0, min=float("nan"))', "sqnr_db min= must be a finite number or None, got nan"),
    ('lowprec.speedup(baseline=lambda: None, optimized=lambda: None, min=float("nan"))',
     "speedup min= must be a finite number or None, got nan"),
    ('lowprec.accuracy("sqnr_db", "35.0", min=25.0)', "accuracy 'sqnr_db' must be a number .*got str '35.0'"),
    ('lowprec.memory("cache_bytes", -1, max=10)', "memory 'cache_bytes' is a byte count, >= 0; got -1"),
])
def test_a_value_or_bound_the_gate_cannot_judge_is_an_error_at_the_call(gate, call, message):
    gate.makepyfile(test_values=f"""
        import pytest

        @pytest.mark.lowprec(precision="fp8")
        def test_values(lowprec):
            {call}
    """)
    result = gate.runpytest("--lowprec-update")
    result.assert_outcomes(failed=1)
    result.stdout.re_match_lines([f".*{message}.*"])
    assert not (gate.path / "baselines" / "b200.json").exists()


def test_a_nan_info_value_fails_instead_of_vanishing_from_the_entry(gate):
    gate.makepyfile(test_info="""
        import pytest

        @pytest.mark.lowprec(precision="fp8")
        def test_info(lowprec):
            lowprec.info("tokens_per_s", float("nan"))
    """)
    result = gate.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*tokens_per_s: tokens_per_s is NaN*"])


def test_an_update_records_neither_an_xpass_nor_a_test_whose_teardown_failed(gate):
    gate.makepyfile(test_phases="""
        import pytest

        @pytest.fixture
        def broken_teardown():
            yield
            raise RuntimeError("teardown failed")

        @pytest.mark.xfail(reason="expected to fail")
        @pytest.mark.lowprec(precision="fp8")
        def test_xpass(lowprec):
            lowprec.accuracy("sqnr_db", 30.0, min=25.0)

        @pytest.mark.lowprec(precision="fp8")
        def test_teardown(lowprec, broken_teardown):
            lowprec.accuracy("sqnr_db", 30.0, min=25.0)

        @pytest.mark.lowprec(precision="fp8")
        def test_fine(lowprec):
            lowprec.accuracy("sqnr_db", 30.0, min=25.0)
    """)
    gate.runpytest("--lowprec-update")
    stored = json.loads((gate.path / "baselines" / "b200.json").read_text())["entries"]
    assert list(stored) == ["test_phases.py::test_fine"]


def test_an_update_says_which_metrics_leave_a_renamed_entry(gate):
    source = """
        import pytest

        @pytest.mark.lowprec(precision="fp8")
        def test_renamed(lowprec):
            lowprec.accuracy("NAME", 30.0, min=25.0)
    """
    gate.makepyfile(test_renamed=source.replace("NAME", "sqnr_db"))
    gate.runpytest("--lowprec-update").assert_outcomes(passed=1)
    gate.makepyfile(test_renamed=source.replace("NAME", "output_sqnr_db"))
    result = gate.runpytest("--lowprec-update")
    result.stdout.fnmatch_lines(["*test_renamed.py::test_renamed no longer records sqnr_db: this update removes "
                                 "them from its baseline entry*"])


@pytest.mark.slow  # a subprocess or a build of seconds: `pytest tests/ --slow` (.ci/run) runs it
def test_a_worker_that_crashes_during_an_update_is_named_and_the_update_fails(gate):
    gate.makepyfile(test_crash="""
        import os
        import pytest

        @pytest.mark.lowprec(precision="fp8")
        def test_a_passes(lowprec):
            lowprec.accuracy("sqnr_db", 30.0, min=25.0)

        @pytest.mark.lowprec(precision="fp8")
        def test_b_crashes(lowprec):
            os._exit(3)
    """)
    result = gate.runpytest_subprocess("-n", "1", "-p", "no:randomly", "--lowprec-update")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*lowprec: worker gw0*went down before handing over its records*none of them "
                                 "was recorded*"])
