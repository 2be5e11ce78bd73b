"""pytest -n N on a host with N GPUs: each worker measures on a GPU of its own. Needs 2 GPUs."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs at least 2 CUDA devices")


def test_each_xdist_worker_gets_its_own_gpu_and_records_it(pytester):
    pytest.importorskip("xdist")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.parametrize("i", range(8))
        def test_where(lowprec, i):
            lowprec.accuracy("rel_l2", 0.01, max=0.05)
    """)
    result = pytester.runpytest_subprocess("-n", "2", "--lowprec-update", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=8)
    (path,) = (pytester.path / "baselines").glob("*.json")
    entries = json.loads(path.read_text())["entries"].values()
    assert len({e["device"]["uuid"] for e in entries}) == 2


def test_more_workers_than_gpus_is_refused(pytester):
    pytest.importorskip("xdist")
    pytester.makepyfile("def test_x(lowprec): pass")
    result = pytester.runpytest_subprocess("-n", str(torch.cuda.device_count() + 1), "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*workers sharing a GPU disturb each other's timings*"])


def test_a_run_that_names_no_lowprec_option_still_pins_each_worker_to_its_own_gpu(pytester):
    pytest.importorskip("xdist")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.parametrize("i", range(8))
        def test_where(lowprec, i, tmp_path_factory):
            (tmp_path_factory.getbasetemp().parent.parent / f"where-{i}.txt").write_text(str(lowprec.gpu.uuid))
            lowprec.accuracy("rel_l2", 0.01, max=0.05)
    """)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=8)
    assert len({p.read_text() for p in pytester.path.rglob("where-*.txt")}) == 2
