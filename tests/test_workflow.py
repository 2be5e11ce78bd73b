"""The CI workflow parses, and every command it runs names things that exist in this project."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
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


FAKE_GH = """#!/usr/bin/env bash
# gh, as the comment step uses it: list the comments (filtered by --jq through jq, as gh does), edit or post one.
echo "$*" >> "$GH_LOG"
if [ "$2" = "-X" ]; then
    for arg in "$@"; do case "$arg" in body=@*) cp "${arg#body=@}" "$GH_BODY";; esac; done
    exit 0
fi
while [ $# -gt 0 ]; do [ "$1" = "--jq" ] && { jq -r "$2" "$FAKE_COMMENTS"; exit 0; }; shift; done
"""
SUMMARY = "## lowprec gate on h200\n\n- t.py::test_gemm speedup: step -12.0% ([trend](lowprec.html#trend-0123abcd))\n"


def comment_step() -> dict:
    return next(s for s in workflow()["jobs"]["gate"]["steps"] if "comment" in s.get("name", "").lower())


def run_comment_step(tmp_path, comments: list[dict]) -> tuple[list[str], str]:
    """Run the step's script as GitHub would (bash -eo pipefail) with a fake gh; returns its calls and the body."""
    if shutil.which("jq") is None:
        pytest.skip("jq is needed to play gh's --jq filter (apt-get install jq; .ci/run installs it)")
    bin_dir, work = tmp_path / "bin", tmp_path / "work"
    bin_dir.mkdir()
    (work / "reports").mkdir(parents=True)
    (work / "reports" / "lowprec.md").write_text(SUMMARY)
    gh = bin_dir / "gh"
    gh.write_text(FAKE_GH)
    gh.chmod(0o755)
    (tmp_path / "comments.json").write_text(json.dumps(comments))
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "GH_LOG": str(tmp_path / "log"),
           "GH_BODY": str(tmp_path / "body"), "FAKE_COMMENTS": str(tmp_path / "comments.json"), "GPU": "h200",
           "PR": "7", "REPO": "o/r", "ARTIFACT_URL": "https://github.com/o/r/actions/runs/1/artifacts/2"}
    subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", comment_step()["run"]],
                   cwd=work, env=env, check=True, timeout=60)
    return (tmp_path / "log").read_text().splitlines(), (tmp_path / "body").read_text()


def test_the_gate_comments_on_every_pull_request_run_even_a_failing_one():
    step = comment_step()
    assert step["if"] == "always() && github.event_name == 'pull_request'"
    assert step["env"]["GPU"] == "${{ matrix.gpu }}" and "artifact-url" in step["env"]["ARTIFACT_URL"]
    upload = next(s for s in workflow()["jobs"]["gate"]["steps"] if s.get("uses", "").startswith("actions/upload"))
    assert upload["id"] == "upload" and "steps.upload.outputs" in step["env"]["ARTIFACT_URL"]


def test_the_comment_of_this_gpu_key_is_edited_not_posted_again(tmp_path):
    comments = [{"id": 40, "body": "looks good"}, {"id": 41, "body": "<!-- lowprec-gate:h100 -->\nold h100"},
                {"id": 42, "body": "<!-- lowprec-gate:h200 -->\nold h200"}]
    calls, _ = run_comment_step(tmp_path, comments)
    assert calls[-1].startswith("api -X PATCH repos/o/r/issues/comments/42 ")
    assert not [c for c in calls if "POST" in c]


def test_the_first_run_on_a_gpu_key_posts_its_comment(tmp_path):
    calls, _ = run_comment_step(tmp_path, [{"id": 41, "body": "<!-- lowprec-gate:h100 -->\nh100"}])
    assert calls[-1].startswith("api -X POST repos/o/r/issues/7/comments ")


def test_the_comment_carries_its_marker_the_summary_and_links_into_the_report_artifact(tmp_path):
    _, body = run_comment_step(tmp_path, [])
    assert body.startswith("<!-- lowprec-gate:h200 -->\n## lowprec gate on h200")
    assert "([trend](https://github.com/o/r/actions/runs/1/artifacts/2#trend-0123abcd))" in body
    assert "[lowprec-h200](https://github.com/o/r/actions/runs/1/artifacts/2)" in body


def test_the_gate_appends_to_the_history_and_saves_its_run():
    options = {w.split("=")[0] for args in pytest_args() for w in args if w.startswith("--")}
    assert {"--lowprec-history", "--lowprec-json"} <= options
