"""The plugin as a user meets it: pytester runs with a faked H100 and a scripted timer."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

FAKES = (Path(__file__).parent / "fakes.py").read_text()
CONFTEST = """
import os
from dataclasses import replace
from fakes import H100, ScriptedTimer
from pytest_lowprec.hardware import cpu_device

def pytest_lowprec_device(config):
    devices = {"h100": H100, "2 h100": replace(H100, visible=2), "4 h100": replace(H100, visible=4),
               "none": cpu_device()}
    return devices.get(os.environ.get("FAKE_GPU"))

def pytest_lowprec_make_timer(config, device, kind, options):
    return ScriptedTimer(speedup=float(os.environ.get("FAKE_SPEEDUP", "2.0")),
                         noise=float(os.environ.get("FAKE_NOISE", "0.01")),
                         seed=int(os.environ.get("FAKE_SEED", "0")),
                         later=float(os.environ["FAKE_LATER"]) if "FAKE_LATER" in os.environ else None)
"""
GEMM_TEST = """
import pytest

@pytest.mark.lowprec(precision="fp8")
@pytest.mark.parametrize("n", [1024])
def test_gemm(lowprec, n):
    lowprec.accuracy("sqnr_db", float(SQNR), min=25.0)
    lowprec.speedup(baseline=lambda: None, optimized=lambda: None, min=1.2)
"""


@pytest.fixture
def gate(pytester, monkeypatch):
    pytester.makepyfile(fakes=FAKES)
    pytester.makeconftest(CONFTEST)
    monkeypatch.setenv("FAKE_GPU", "h100")
    return pytester


def gemm(pytester, sqnr="28.0"):
    pytester.makepyfile(test_gemm=GEMM_TEST.replace("SQNR", sqnr))


def stored(pytester, gpu="h100"):
    return json.loads((pytester.path / "baselines" / f"{gpu}.json").read_text())["entries"]


def test_every_option_is_documented_in_help(pytester):
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines([
        "*low-precision regression gate*", "*--gpu=KEY*", "*--lowprec-update*", "*--lowprec-baselines=DIR*",
        "*--lowprec-precision=LIST*", "*--lowprec-strict*", "*--lowprec-report=PATH*", "*--lowprec-trace=DIR*",
    ])


def test_unknown_gpu_key_is_a_usage_error_listing_valid_keys(gate):
    result = gate.runpytest("--gpu", "h1000")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown GPU key 'h1000'; valid keys: auto, *h100*cpu*"])


def test_unknown_precision_is_a_usage_error_listing_valid_ones(gate):
    result = gate.runpytest("--lowprec-precision", "fp8,fp7")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown precision 'fp7'; valid precisions: fp8, fp6, fp4, nvfp4*"])


def test_gpu_key_not_matching_the_device_stops_the_run_before_any_test(gate):
    gemm(gate)
    result = gate.runpytest("--gpu", "b200")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--gpu b200 does not match this machine's device 'NVIDIA H100*use --gpu h100*"])
    assert "test_gemm" not in result.stdout.str()


def test_gpu_key_on_a_machine_without_cuda_is_a_usage_error(gate, monkeypatch):
    monkeypatch.setenv("FAKE_GPU", "none")
    result = gate.runpytest("--gpu", "h100", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*no CUDA device is visible; run with --gpu cpu*"])


def test_passing_workload_passes_and_every_verdict_shows_in_the_summary_table_under_v(gate):
    gemm(gate)
    result = gate.runpytest("-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "*lowprec gate on h100 (NVIDIA H100 80GB HBM3)*",
        "test*precision*metric*value [[]interval[]]*bound*baseline*delta*verdict*",
        "*test_gemm[[]1024[]]*fp8*sqnr_db*28 dB*>= 25*pass (no-baseline)*",
        "*test_gemm[[]1024[]]*fp8*speedup*2.0*x [[]*>= 1.20x*pass (no-baseline)*",
    ])


def test_every_failed_verdict_is_in_one_message_of_the_failing_test(gate, monkeypatch):
    gemm(gate, sqnr="20.0")
    monkeypatch.setenv("FAKE_SPEEDUP", "1.05")
    result = gate.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*lowprec gate: 2 of 2 verdicts failed for test_gemm.py::test_gemm[[]1024[]] on h100 "
        "(no stored baseline for h100)*",
        "*sqnr_db: sqnr_db 20 < bound 25  (at *test_gemm.py:6)*",
        "*speedup: below floor: 95% interval [[]1.0*, 1.0*[]] < 1.20x  (at *test_gemm.py:7)*",
    ])


def test_nan_metric_fails_with_the_word_nan(gate):
    gemm(gate, sqnr="'nan'")
    result = gate.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*sqnr_db: sqnr_db is NaN*"])


def test_update_records_the_tests_that_ran_with_fingerprint_device_and_signature(gate):
    gemm(gate)
    result = gate.runpytest("--lowprec-update")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*lowprec: recorded 1 entry in *baselines/h100.json*"])
    entry = stored(gate)["test_gemm.py::test_gemm[1024]"]
    assert entry["signature"] == {"param.n": 1024, "precision": "fp8"}
    assert entry["device"]["name"] == "NVIDIA H100 80GB HBM3" and entry["device"]["capability"] == [9, 0]
    assert {"torch", "cuda", "driver", "cublas", "python"} <= set(entry["software"])
    assert entry["recorded"] and "commit" in entry
    speed = entry["metrics"]["speedup"]
    assert speed["value"] == pytest.approx(2.0, rel=0.02) and speed["samples"] >= 30
    assert speed["ci"][0] < speed["value"] < speed["ci"][1] and 0 < speed["noise"] < 0.05
    assert entry["metrics"]["sqnr_db"]["value"] == 28.0


def test_merge_adds_a_recording_of_the_same_commit_and_the_gate_allows_their_spread(gate, monkeypatch):
    """Unchanged code moved 4% between two GPUs: merged, the entry sits between them and a run at either
    passes, where the first recording alone (3% tolerance) would fail the slower one."""
    gemm(gate)
    monkeypatch.setenv("LOWPREC_COMMIT", "abc123")
    monkeypatch.setenv("FAKE_SPEEDUP", "2.08")
    gate.runpytest("--lowprec-update").assert_outcomes(passed=1)
    monkeypatch.setenv("FAKE_SPEEDUP", "2.0")
    monkeypatch.setenv("FAKE_SEED", "1")
    gate.runpytest().assert_outcomes(failed=1)
    gate.runpytest("--lowprec-update", "--lowprec-merge").assert_outcomes(passed=1)
    speedup = stored(gate)["test_gemm.py::test_gemm[1024]"]["metrics"]["speedup"]
    assert len(speedup["recordings"]) == 2 and speedup["value"] == pytest.approx(2.04, rel=0.01)
    assert speedup["spread"] == pytest.approx(0.04, abs=0.01)
    monkeypatch.setenv("FAKE_SEED", "2")
    gate.runpytest().assert_outcomes(passed=1)


def test_merge_records_another_commit_anew_and_says_so(gate, monkeypatch):
    gemm(gate)
    monkeypatch.setenv("LOWPREC_COMMIT", "abc123")
    gate.runpytest("--lowprec-update").assert_outcomes(passed=1)
    monkeypatch.setenv("LOWPREC_COMMIT", "def456")
    result = gate.runpytest("--lowprec-update", "--lowprec-merge")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_gemm[[]1024[]]: recorded anew, not merged: the stored entry was recorded at "
                                 "abc123, this run is at def456*"])
    assert "recordings" not in stored(gate)["test_gemm.py::test_gemm[1024]"]["metrics"]["speedup"]


def test_merge_without_update_is_a_usage_error(gate):
    result = gate.runpytest("--lowprec-merge")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--lowprec-merge adds this run's recordings*needs --lowprec-update*"])


def test_five_percent_regression_with_one_percent_noise_is_caught(gate, monkeypatch):
    gemm(gate)
    monkeypatch.setenv("FAKE_SPEEDUP", "1.6")
    gate.runpytest("--lowprec-update").assert_outcomes(passed=1)
    monkeypatch.setenv("FAKE_SPEEDUP", str(1.6 / 1.05))
    monkeypatch.setenv("FAKE_SEED", "1")
    result = gate.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*lowprec gate: 1 of 2 verdicts failed for test_gemm.py::test_gemm[[]1024[]] on h100 (baseline recorded 20*",
        "*speedup*1.5*x [[]*>= 1.20x*1.6*x*-*%*FAIL (confirmed)*",
        "*speedup: regressed: interval [[]1.5*, 1.5*[]] below baseline 1.6*x - 3.0% tolerance = 1.55*x*",
    ])


def test_a_regression_is_measured_twice_before_it_fails(gate, monkeypatch):
    gemm(gate)
    monkeypatch.setenv("FAKE_SPEEDUP", "1.6")
    gate.runpytest("--lowprec-update").assert_outcomes(passed=1)
    monkeypatch.setenv("FAKE_SPEEDUP", "1.4")
    result = gate.runpytest("--lowprec-csv", "out.csv")
    result.assert_outcomes(failed=1)
    assert "confirmed" in (gate.path / "out.csv").read_text()


def test_a_failing_measurement_that_a_second_one_refutes_passes_and_says_so(gate, monkeypatch):
    gemm(gate)
    monkeypatch.setenv("FAKE_SPEEDUP", "1.6")
    gate.runpytest("--lowprec-update").assert_outcomes(passed=1)
    monkeypatch.setenv("FAKE_SPEEDUP", "0.8")  # one transient slow measurement, then the true speed
    monkeypatch.setenv("FAKE_LATER", "1.6")
    result = gate.runpytest("--lowprec-csv", "out.csv")
    result.assert_outcomes(passed=1)
    assert "remeasured" in (gate.path / "out.csv").read_text()


def test_without_confirmation_one_failing_measurement_fails(gate, monkeypatch):
    gemm(gate)
    monkeypatch.setenv("FAKE_SPEEDUP", "1.6")
    gate.runpytest("--lowprec-update").assert_outcomes(passed=1)
    monkeypatch.setenv("FAKE_SPEEDUP", "0.8")
    monkeypatch.setenv("FAKE_LATER", "1.6")
    gate.runpytest("-o", "lowprec_confirm=0").assert_outcomes(failed=1)


def test_equal_speed_with_three_percent_noise_passes(gate, monkeypatch):
    gemm(gate)
    monkeypatch.setenv("FAKE_SPEEDUP", "1.6")
    monkeypatch.setenv("FAKE_NOISE", "0.03")
    gate.runpytest("--lowprec-update").assert_outcomes(passed=1)
    for seed in range(1, 6):
        monkeypatch.setenv("FAKE_SEED", str(seed))
        gate.runpytest().assert_outcomes(passed=1)


def test_update_leaves_other_entries_and_other_gpus_files_untouched(gate):
    gemm(gate)
    baselines = gate.path / "baselines"
    baselines.mkdir()
    other = {"schema": 1, "gpu": "h100", "entries": {"elsewhere.py::test_x": {
        "recorded": "2026-01-01", "signature": {}, "metrics": {"speedup": {"value": 9.0}}}}}
    (baselines / "h100.json").write_text(json.dumps(other))
    (baselines / "b200.json").write_text('{"schema": 1, "gpu": "b200", "entries": {}}')
    gate.runpytest("--lowprec-update").assert_outcomes(passed=1)
    entries = stored(gate)
    assert entries["elsewhere.py::test_x"] == other["entries"]["elsewhere.py::test_x"]
    assert "test_gemm.py::test_gemm[1024]" in entries
    assert (baselines / "b200.json").read_text() == '{"schema": 1, "gpu": "b200", "entries": {}}'


def test_failing_test_is_not_recorded_as_a_baseline(gate):
    gemm(gate, sqnr="10.0")
    result = gate.runpytest("--lowprec-update")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*recorded 0 entries*1 not recorded*"])


def test_corrupt_baseline_is_an_error_naming_the_file_and_is_not_overwritten(gate):
    gemm(gate)
    path = gate.path / "baselines" / "h100.json"
    path.parent.mkdir()
    path.write_text('{"schema": 1, "gpu": "h100", "entr')
    result = gate.runpytest("--lowprec-update")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*baselines/h100.json: not valid JSON*corrupt or truncated*"])
    assert path.read_text() == '{"schema": 1, "gpu": "h100", "entr'


def test_unknown_schema_is_an_error_naming_the_file(gate):
    gemm(gate)
    path = gate.path / "baselines" / "h100.json"
    path.parent.mkdir()
    path.write_text('{"schema": 7, "gpu": "h100", "entries": {}}')
    result = gate.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*h100.json: unknown baseline schema 7*"])


def test_changed_workload_signature_is_reported_stale_and_fails_under_strict(gate):
    source = """
        def test_gemm(lowprec):
            lowprec.signature(k=K)
            lowprec.speedup(baseline=lambda: None, optimized=lambda: None)
    """
    gate.makepyfile(test_sig=source.replace("K", "4096"))
    gate.runpytest("--lowprec-update").assert_outcomes(passed=1)
    gate.makepyfile(test_sig=source.replace("K", "8192"))
    gate.runpytest().stdout.fnmatch_lines(["*speedup*UNGATED (stale)*"])
    result = gate.runpytest("--lowprec-strict")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*stale baseline, workload changed (k: 4096 -> 8192) (--lowprec-strict)*"])


def test_missing_baseline_fails_only_under_strict(gate):
    gemm(gate)
    gate.runpytest().assert_outcomes(passed=1)
    result = gate.runpytest("--lowprec-strict")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*no baseline for h100 (--lowprec-strict)*"])


def test_speed_gate_over_cuda_work_skips_with_a_reason_on_cpu(gate):
    gate.makepyfile("""
        def test_speed_only(lowprec):
            lowprec.speedup(baseline=lambda: None, optimized=lambda: None, min=1.5)

        def test_accuracy_and_speed(lowprec):
            lowprec.accuracy("sqnr_db", 30.0, min=25.0)
            lowprec.speedup(baseline=lambda: None, optimized=lambda: None, min=1.5)
    """)
    result = gate.runpytest("--gpu", "cpu", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*speed gate over CUDA work skipped: no CUDA device (gpu key cpu)*"])


def test_cuda_marker_skips_the_test_on_a_cpu_run(gate):
    gate.makepyfile("""
        import pytest
        @pytest.mark.lowprec(precision="fp8", device="cuda")
        def test_big(lowprec):
            raise AssertionError("must not run on the cpu")
    """)
    result = gate.runpytest("--gpu", "cpu", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*needs a CUDA device; this run is on cpu*"])


def test_cpu_work_is_gated_end_to_end_with_the_host_timer(pytester):
    # No faked device, no scripted timer: the real host timer under the cpu key.
    pytester.makepyfile("""
        def spin(n):
            s = 0
            for i in range(n):
                s += i
            return s

        def test_cpu_speed(lowprec):
            # 10x less work on the optimized side: the ratio is far from the 2x floor.
            lowprec.speedup(baseline=lambda: spin(400_000), optimized=lambda: spin(40_000), min=2.0, device="cpu")
    """)
    # A loaded 2-core CI machine gives host pairs 2-6% noise (measured): the recording cap is tested apart.
    result = pytester.runpytest("--gpu", "cpu", "--lowprec-update", "-o", "lowprec_max_record_noise=0.25")
    result.assert_outcomes(passed=1)
    entry = stored(pytester, "cpu")["test_cpu_work_is_gated_end_to_end_with_the_host_timer.py::test_cpu_speed"]
    assert entry["metrics"]["speedup"]["timer"] == "host" and entry["metrics"]["speedup"]["value"] > 2.0


def test_workload_that_raises_or_runs_out_of_memory_fails_only_its_own_test(gate):
    gate.makepyfile("""
        import torch

        def test_raises(lowprec):
            lowprec.speedup(baseline=lambda: None, optimized=lambda: 1 / 0)

        def test_oom(lowprec):
            big = [0] * 10
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

        def test_fine(lowprec):
            lowprec.accuracy("sqnr_db", 30.0, min=25.0)
    """)
    result = gate.runpytest()
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines(["*ZeroDivisionError*", "*OutOfMemoryError*"])


def test_precision_filter_runs_only_matching_tests(gate):
    gate.makepyfile("""
        import pytest

        @pytest.mark.lowprec(precision="fp8")
        def test_fp8(lowprec): pass

        @pytest.mark.lowprec(precision=("nvfp4", "fp8"))
        def test_both(lowprec): pass

        @pytest.mark.lowprec(precision="nvfp4")
        def test_nvfp4(lowprec): pass

        def test_unmarked(): pass
    """)
    result = gate.runpytest("--lowprec-precision", "fp8", "-v")
    result.assert_outcomes(passed=2, deselected=2)
    result.stdout.fnmatch_lines(["*test_fp8 PASSED*", "*test_both PASSED*"])


def test_unknown_precision_in_a_marker_is_an_error_naming_the_test(gate):
    gate.makepyfile("""
        import pytest
        @pytest.mark.lowprec(precision="fp9")
        def test_x(lowprec): pass
    """)
    result = gate.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_x: unknown precision 'fp9'*"])


def test_junit_xml_attributes_the_failure_and_carries_metrics_as_properties(gate, monkeypatch):
    gemm(gate)
    monkeypatch.setenv("FAKE_SPEEDUP", "1.0")
    gate.runpytest("--junitxml=out.xml").assert_outcomes(failed=1)
    xml = (gate.path / "out.xml").read_text()
    assert '<testcase classname="test_gemm" name="test_gemm[1024]"' in xml
    assert "below floor" in xml
    assert '<property name="lowprec.speedup"' in xml and '<property name="lowprec.sqnr_db" value="28.0"' in xml


def test_metric_recorded_twice_is_an_error(gate):
    gate.makepyfile("""
        def test_twice(lowprec):
            lowprec.accuracy("sqnr_db", 30.0, min=25.0)
            lowprec.accuracy("sqnr_db", 31.0, min=25.0)
    """)
    result = gate.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*metric 'sqnr_db' recorded twice*"])


def test_ini_options_set_defaults(gate):
    gemm(gate)
    gate.makeini("[pytest]\nlowprec_gpu = cpu\nlowprec_baselines = stored\n")
    result = gate.runpytest("--lowprec-update")
    result.assert_outcomes(passed=1)
    assert (gate.path / "stored" / "cpu.json").exists()


@pytest.mark.slow  # a subprocess or a build of seconds: `pytest tests/ --slow` (.ci/run) runs it
def test_xdist_workers_send_records_to_the_controller_which_alone_writes(pytester):
    pytest.importorskip("xdist")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.lowprec(precision="fp8")
        @pytest.mark.parametrize("i", range(8))
        def test_many(lowprec, i):
            lowprec.accuracy("rel_l2", 0.001 * (i + 1), max=0.05)
    """)
    result = pytester.runpytest_subprocess("-n", "4", "--gpu", "cpu", "--lowprec-update", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(["*recorded 8 entries in *cpu.json*"])
    entries = stored(pytester, "cpu")
    assert sorted(entries) == sorted(f"test_xdist_workers_send_records_to_the_controller_which_alone_writes.py"
                                     f"::test_many[{i}]" for i in range(8))
    assert not list((pytester.path / "baselines").glob("*.tmp"))


def test_a_finished_test_does_not_keep_its_tensors_alive(gate):
    gate.makepyfile(test_release="""
        import gc
        import weakref

        class Tensor:
            pass

        refs = []

        def test_a(lowprec):
            big = Tensor()
            refs.append(weakref.ref(big))
            lowprec.speedup(baseline=lambda: big, optimized=lambda: big)

        def test_b():
            gc.collect()
            assert refs[0]() is None, "test_a's inputs outlived it"
    """)
    gate.runpytest("test_release.py").assert_outcomes(passed=2)


def test_memory_and_efficiency_failures_name_the_line_of_the_test(gate):
    gate.makepyfile(test_bounds="""
        import pytest

        @pytest.mark.lowprec(precision="fp16")
        def test_bounds(lowprec):
            lowprec.memory("cache_bytes", 2048, max=1024)
            lowprec.efficiency("overlap_efficiency", 0.5, min=0.9)
    """)
    result = gate.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*cache_bytes: cache_bytes 2048 > bound 1024  (at *test_bounds.py:5)*",
        "*overlap_efficiency: overlap_efficiency 0.5 < bound 0.9  (at *test_bounds.py:6)*",
    ])


MULTI_GPU_TESTS = """
import pytest

@pytest.mark.lowprec(precision="fp8", gpus=2)
def test_two(lowprec):
    lowprec.efficiency("scaling_efficiency", 0.95, min=0.9)

@pytest.mark.lowprec(precision="fp8")
def test_one(lowprec):
    lowprec.accuracy("rel_l2", 0.01, max=0.05)
"""


def test_multi_gpu_run_holds_only_multi_gpu_tests_and_records_them_under_its_own_key(gate, monkeypatch):
    monkeypatch.setenv("FAKE_GPU", "2 h100")
    gate.makepyfile(test_multi=MULTI_GPU_TESTS)
    result = gate.runpytest("--gpu", "2x_h100", "--lowprec-update", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*a single-GPU test: a --gpu 2x_h100 run holds multi-GPU tests only; run --gpu h100*"])
    assert list(stored(gate, "2x_h100")) == ["test_multi.py::test_two"]
    assert not (gate.path / "baselines" / "h100.json").exists()


def test_multi_gpu_test_skips_on_a_single_gpu_run_saying_which_key_runs_it(gate):
    gate.makepyfile(test_multi=MULTI_GPU_TESTS)
    result = gate.runpytest("--gpu", "h100", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*a 2-GPU test: run it with --gpu 2x_h100 on a host with 2 GPUs*"])


def test_multi_gpu_test_runs_on_a_cpu_run(gate):
    gate.makepyfile(test_multi=MULTI_GPU_TESTS)
    gate.runpytest("--gpu", "cpu").assert_outcomes(passed=2)


ANY_GPU_COUNT_TESTS = """
import pytest

@pytest.mark.lowprec(precision="fp8", gpus="all")
def test_all(lowprec):
    lowprec.info("world", lowprec.gpu.gpus if lowprec.on_cuda else 2)

@pytest.mark.lowprec(precision="fp8")
def test_one(lowprec):
    lowprec.accuracy("rel_l2", 0.01, max=0.05)
"""


@pytest.mark.parametrize("count", [2, 4])
def test_a_test_for_all_gpus_runs_on_every_multi_gpu_key_and_reads_its_count(gate, monkeypatch, count):
    monkeypatch.setenv("FAKE_GPU", f"{count} h100")
    gate.makepyfile(test_multi=ANY_GPU_COUNT_TESTS)
    result = gate.runpytest("--gpu", f"{count}x_h100", "--lowprec-update")
    result.assert_outcomes(passed=1, skipped=1)
    assert stored(gate, f"{count}x_h100")["test_multi.py::test_all"]["metrics"]["world"]["value"] == count


def test_a_test_for_all_gpus_skips_on_a_single_gpu_run_saying_which_keys_run_it(gate):
    gate.makepyfile(test_multi=ANY_GPU_COUNT_TESTS)
    result = gate.runpytest("--gpu", "h100", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*a multi-GPU test: run it with --gpu Nx_h100 (N >= 2)*(this run is --gpu h100)*"])


def test_a_test_for_all_gpus_runs_on_a_cpu_run(gate):
    gate.makepyfile(test_multi=ANY_GPU_COUNT_TESTS)
    gate.runpytest("--gpu", "cpu").assert_outcomes(passed=2)


def test_multi_gpu_key_with_xdist_workers_is_a_usage_error(gate, monkeypatch):
    pytest.importorskip("xdist")
    monkeypatch.setenv("FAKE_GPU", "2 h100")
    gate.makepyfile(test_multi=MULTI_GPU_TESTS)
    result = gate.runpytest_subprocess("--gpu", "2x_h100", "-n", "2", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*each test of a multi-GPU run uses all 2 GPUs*run it without -n*"])


def test_gpus_marker_must_be_a_whole_number(gate):
    gate.makepyfile("""
        import pytest
        @pytest.mark.lowprec(precision="fp8", gpus="two")
        def test_x(lowprec): pass
    """)
    result = gate.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_x: lowprec gpus= must be a whole number >= 1 or 'all', got 'two'*"])


def test_per_gpu_picks_the_value_for_this_runs_gpu_and_its_multi_gpu_key(gate, monkeypatch):
    monkeypatch.setenv("FAKE_GPU", "2 h100")
    gate.makepyfile("""
        import pytest

        def test_single(lowprec):
            assert lowprec.per_gpu({"h100": 2.5, "h200": 2.2}) == 2.5
            assert lowprec.per_gpu({"h200": 2.2}) is None
            assert lowprec.per_gpu({"h200": 2.2}, default=1.0) == 1.0

        @pytest.mark.lowprec(gpus=2)
        def test_pair(lowprec):
            assert lowprec.per_gpu({"h100": 0.9}) == 0.9
    """)
    gate.runpytest("--gpu", "h100", "-k", "single").assert_outcomes(passed=1, deselected=1)
    gate.runpytest("--gpu", "2x_h100", "-k", "pair").assert_outcomes(passed=1, deselected=1)


# -- baseline files and folders as the run meets them ----------------------------------------------------------


def baseline_file(pytester, entries: dict) -> Path:
    path = pytester.path / "baselines" / "h100.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"schema": 1, "gpu": "h100", "entries": entries}))
    return path


def test_a_wrongly_typed_baseline_entry_is_a_usage_error_before_any_test_runs(gate):
    gemm(gate)
    baseline_file(gate, {"test_gemm.py::test_gemm[1024]": {"signature": {"param.n": 1024, "precision": "fp8"},
                                                           "metrics": {"speedup": {"value": "2.0"}}}})
    result = gate.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*baselines/h100.json: entry 'test_gemm.py::test_gemm[[]1024[]]' metric 'speedup' "
                                 "field 'value' must be a finite number, found the string '2.0'*"])
    assert "test_gemm" not in result.stdout.str()


def test_a_nan_stored_accuracy_is_a_usage_error_not_a_gate_that_passes_any_drop(gate):
    gemm(gate)
    baseline_file(gate, {"test_gemm.py::test_gemm[1024]": {"signature": {"param.n": 1024, "precision": "fp8"},
                                                           "metrics": {"sqnr_db": {"value": float("nan")}}}})
    result = gate.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*metric 'sqnr_db' field 'value' must be a finite number, found NaN*"])


def test_a_failed_baseline_write_is_one_error_and_every_report_is_still_written(gate, monkeypatch):
    # A read-only mount refuses the lock file first; tests run as root here, so the OSError is simulated.
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(gate.path / "baselines" / "h100.json.lock"))

    monkeypatch.setattr("pytest_lowprec.baselines._hard_lock", read_only)
    gemm(gate)
    result = gate.runpytest("--lowprec-update", "--lowprec-report", "r.html", "--lowprec-csv", "v.csv",
                            "--lowprec-markdown", "pr.md", "--lowprec-table=all")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*lowprec gate on h100*", "*test_gemm[[]1024[]]*sqnr_db*",
                                 "lowprec: baselines NOT written: *h100.json: the file system is read-only (*"])
    assert "INTERNALERROR" not in result.stdout.str() and "Traceback" not in result.stdout.str()
    assert all((gate.path / name).exists() for name in ("r.html", "v.csv", "pr.md"))


def test_an_update_creates_a_missing_baselines_folder_and_says_so(gate):
    gemm(gate)
    result = gate.runpytest("--lowprec-update", "--lowprec-baselines", "new/gpus")
    result.stdout.fnmatch_lines(["lowprec: created the baselines folder */new/gpus",
                                 "lowprec: recorded 1 entry in */new/gpus/h100.json"])


def test_a_missing_baselines_folder_without_update_is_a_warning_in_the_summary(gate):
    gemm(gate)
    result = gate.runpytest("--lowprec-baselines", "baselnies")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["lowprec: WARNING: the baselines folder */baselnies does not exist (a typo in "
                                 "--lowprec-baselines?)*"])


@pytest.mark.parametrize(("value", "message"), [
    ("pyproject.toml", "*pyproject.toml is a file, not a folder*"),
    ("/dev/null", "*/dev/null is a character device, not a folder*"),
    ("", "*--lowprec-baselines is empty*"),
])
def test_a_baselines_option_that_cannot_be_a_folder_is_a_usage_error(gate, value, message):
    gemm(gate)
    (gate.path / "pyproject.toml").write_text("")
    result = gate.runpytest("--lowprec-update", "--lowprec-baselines", value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert not list(gate.path.glob("*.json"))


def test_an_update_through_a_symlinked_baseline_file_writes_its_target_and_says_so(gate):
    gemm(gate)
    shared = gate.path / "shared"
    shared.mkdir()
    (shared / "h100.json").write_text('{"schema": 1, "gpu": "h100", "entries": {}}')
    (gate.path / "baselines").mkdir()
    (gate.path / "baselines" / "h100.json").symlink_to(shared / "h100.json")
    result = gate.runpytest("--lowprec-update")
    result.stdout.fnmatch_lines(["lowprec: */baselines/h100.json is a symbolic link: wrote the file it points to, "
                                 "*/shared/h100.json; the link is unchanged"])
    assert (gate.path / "baselines" / "h100.json").is_symlink()
    assert list(json.loads((shared / "h100.json").read_text())["entries"]) == ["test_gemm.py::test_gemm[1024]"]
