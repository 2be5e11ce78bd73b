"""The repository's conftest.py: tests marked slow skip on a CPU-only run unless --slow."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT_CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"
SLOW_TEST = """
import pytest

@pytest.mark.slow
def test_long():
    pass

def test_short():
    pass
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(ROOT_CONFTEST.read_text())
    pytester.makepyfile(test_marked=SLOW_TEST)
    return pytester


def test_a_slow_test_skips_on_a_cpu_run_and_says_how_to_run_it(project):
    result = project.runpytest("--gpu", "cpu", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*slow on a CPU-only run: pass --slow to run it*"])


def test_slow_runs_the_slow_tests_too(project):
    project.runpytest("--gpu", "cpu", "--slow").assert_outcomes(passed=2)


def test_without_the_plugin_the_machine_decides_whether_slow_tests_run(project):
    # no option the plugin would add is asked for; whether CUDA is there decides, as --gpu auto would
    import torch

    result = project.runpytest("-p", "no:lowprec")
    if torch.cuda.is_available():
        result.assert_outcomes(passed=2)
    else:
        result.assert_outcomes(passed=1, skipped=1)
