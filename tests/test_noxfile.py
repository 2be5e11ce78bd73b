"""The noxfile: a precision session, started from a shell with no virtualenv active, runs the pytest of its
own venv with this plugin loaded. Creates the venv and installs the package into it: about 45 s with the
wheels cached (torch is the CPU wheel the session installs where the base interpreter has none)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOX = shutil.which("nox", path=str(Path(sys.executable).parent))


@pytest.mark.slow  # a subprocess or a build of seconds: `pytest tests/ --slow` (.ci/run) runs it
@pytest.mark.skipif(NOX is None, reason="nox is not installed beside this interpreter (pip install -e '.[test]')")
def test_a_precision_session_runs_its_venvs_pytest_with_the_plugin_from_a_clean_shell(tmp_path):
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    # --gpu and the session's --lowprec-precision are the plugin's options: a pytest without it rejects
    # them ("unrecognized arguments"); collecting only keeps the run to the install and the collection.
    envs = tmp_path / "envs"
    try:
        result = subprocess.run([NOX, "-f", str(ROOT / "noxfile.py"), "--envdir", str(envs), "-s", "fp8",
                                 "--", "--gpu", "cpu", "--collect-only", "-q"],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    finally:
        # The session's venv holds triton and the rest of the test extras, about 1.5 GB: pytest keeps the last
        # three runs' tmp_path, and CI's disk filled with them.
        shutil.rmtree(envs, ignore_errors=True)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert re.search(r"\d+/\d+ tests collected \(\d+ deselected\)", out), out[-3000:]
