"""The CI workflow parses, and every command it runs names things that exist in this project."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from pytest_lowprec.hardware import validate_key

yaml = pytest.importorskip("yaml")
ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "lowprec.yml"


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def commands() -> list[str]:
    steps = [s for job in workflow()["jobs"].values() for s in job["steps"]]
    return [s["run"] for s in steps if "run" in s]


def pytest_args() -> list[list[str]]:
    out = []
    for command in commands():
        text = re.sub(r"\$\{\{[^}]*\}\}", "h100", command)  # expressions stand for a GPU key
        for line in text.replace("\\\n", " ").splitlines():
            words = shlex.split(line)
            if words[:3] == ["python", "-m", "pytest"]:
                out.append(words[3:])
    return out


def test_workflow_has_a_gate_job_on_pull_requests_and_a_manual_record_job():
    wf = workflow()
    triggers = wf[True] if True in wf else wf["on"]  # YAML 1.1 reads the key `on` as True
    assert "pull_request" in triggers and "workflow_dispatch" in triggers
    assert set(wf["jobs"]) == {"gate", "record"}


def test_every_matrix_gpu_is_a_key_the_plugin_accepts():
    for key in workflow()["jobs"]["gate"]["strategy"]["matrix"]["gpu"]:
        assert validate_key(key) == key


def test_every_pytest_option_the_workflow_passes_is_registered(pytester):
    options = {w.split("=")[0] for args in pytest_args() for w in args if w.startswith("--")}
    assert {"--gpu", "--lowprec-report", "--lowprec-trace", "--lowprec-update"} <= options
    help_text = pytester.runpytest("--help").stdout.str()
    for option in options:
        assert option in help_text, f"{option} is not a registered pytest option"


def test_every_path_the_workflow_runs_against_exists():
    for args in pytest_args():
        for word in args:
            if not word.startswith("-") and "/" in word and not word.startswith("reports/"):
                assert (ROOT / word).exists(), word
    assert "baselines/" in "\n".join(commands())
    assert (ROOT / "baselines").is_dir()


def test_the_gate_publishes_its_report_and_summary_even_when_it_fails():
    steps = workflow()["jobs"]["gate"]["steps"]
    always = [s for s in steps if s.get("if") == "always()"]
    assert any("GITHUB_STEP_SUMMARY" in s.get("run", "") for s in always)
    assert any(s.get("uses", "").startswith("actions/upload-artifact") for s in always)
