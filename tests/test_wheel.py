"""The built wheel: it carries the CUDA sources of kernels/, and the workload package installed from it
finds and compiles them (no checkout beside it). Builds the wheel in an isolated build (network or a
local index for setuptools; without one the tests skip, but under LOWPREC_REQUIRE_BUILD=1) and installs
it into a fresh venv: about 30 s."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from lowprec_workloads import kernels

ROOT = Path(__file__).resolve().parent.parent
# What the wheel is made of; the copy keeps the build's own build/ and *.egg-info out of the checkout.
WHEEL_INPUTS = ("pyproject.toml", "README.md", "pytest_lowprec", "lowprec_workloads", "kernels")
needs_nvcc = pytest.mark.skipif(
    kernels.find_nvcc() is None and not os.environ.get("LOWPREC_REQUIRE_NVCC"),
    reason="nvcc not installed (CI sets LOWPREC_REQUIRE_NVCC)",
)
# Runs inside the venv, from a folder with no checkout in it: the package's file, the sources it finds,
# and (given a cache folder) the library it builds from one of them.
PROBE = """
import json, sys
from pathlib import Path
from lowprec_workloads import kernels
found = {"module": kernels.__file__, "sources": [p.name for p in kernels.sources()]}
if len(sys.argv) > 1:
    found["library"] = str(kernels.build(kernels.KERNELS_DIR / "nvfp4_gemm.cu", kernels.target_for((9, 0)),
                                         cache_dir=Path(sys.argv[1])))
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed; it sees this environment's packages (filelock) after its own."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in WHEEL_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    build_wheel(source, work / "dist")
    wheel = next((work / "dist").glob("*.whl"))
    venv = work / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel))
    own = run(str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip()
    # A .pth line appends a folder without running that folder's .pth files, so an editable install of
    # pytest-lowprec in this environment stays inactive in the venv.
    (Path(own) / "outer-environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def run(*command: str, cwd: Path | None = None, env: dict | None = None) -> str:
    """The command's stdout; a failure shows what the command said."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


# What pip says when the isolated build cannot reach a package index for its build requirements.
OFFLINE = ("NewConnectionError", "Failed to establish a new connection", "Temporary failure in name resolution")


def build_wheel(source: Path, dist: Path) -> None:
    """The wheel of `source` into `dist`, built in isolation. Where no package index is reachable (the
    GPU machines have none) the build cannot fetch setuptools: the test skips, saying so, except under
    LOWPREC_REQUIRE_BUILD=1 (CI), where it fails."""
    command = (sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(source))
    result = subprocess.run(command, capture_output=True, text=True)
    said = result.stdout + result.stderr
    if result.returncode != 0 and any(s in said for s in OFFLINE) and not os.environ.get("LOWPREC_REQUIRE_BUILD"):
        pytest.skip("the isolated wheel build found no package index for its build requirements "
                    "(CI sets LOWPREC_REQUIRE_BUILD)")
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def probe(python: Path, cwd: Path, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return json.loads(run(str(python), "-c", PROBE, *args, cwd=cwd, env=env))


@pytest.mark.slow  # a subprocess or a build of seconds: `pytest tests/ --slow` (.ci/run) runs it
def test_the_installed_workload_package_finds_the_kernel_sources_the_wheel_carries(venv_python, tmp_path):
    found = probe(venv_python, tmp_path)
    assert Path(found["module"]).is_relative_to(venv_python.parent.parent)
    assert set(found["sources"]) == {p.name for p in kernels.sources()}


@pytest.mark.slow  # a subprocess or a build of seconds: `pytest tests/ --slow` (.ci/run) runs it
@needs_nvcc
def test_a_kernel_compiles_from_the_installed_wheel(venv_python, tmp_path):
    found = probe(venv_python, tmp_path, str(tmp_path / "cache"))
    assert Path(found["module"]).is_relative_to(venv_python.parent.parent)
    assert Path(found["library"]).is_file()
