from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import jinja2  # noqa: F401
import pandas  # noqa: F401
import pytest
import torch  # noqa: F401

# The plugin imports numpy, torch, pandas and jinja2 only when a run uses it. pytester's inline runs drop
# every module first imported inside them, and numpy cannot be imported twice in one process: this
# process imports them once, up front, as a GPU user's run does when the gate starts.
import pytest_lowprec
import pytest_lowprec.recorder  # noqa: F401
import pytest_lowprec.report.html  # noqa: F401
import pytest_lowprec.report.rows  # noqa: F401 - pandas
import pytest_lowprec.session  # noqa: F401

pytest_plugins = ["pytester"]

# The checkout under test. A pytester subprocess starts in a temp folder, where `import pytest_lowprec`
# would otherwise find whichever copy the environment installed (an editable install of another worktree).
_CHECKOUT = str(Path(pytest_lowprec.__file__).resolve().parents[1])


@pytest.fixture(autouse=True)
def _subprocesses_import_this_checkout(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [_CHECKOUT, os.environ.get("PYTHONPATH")])))


@pytest.fixture
def benchmark_module(monkeypatch):
    """Imports a script of benchmarks/ by its module name, and forgets it after the test: the scripts are not a
    package, and a test's copy must not leak another test's monkeypatches."""
    monkeypatch.syspath_prepend(str(Path(_CHECKOUT) / "benchmarks"))
    imported = []

    def load(name: str):
        imported.append(name)
        return importlib.import_module(name)

    yield load
    for name in imported:
        sys.modules.pop(name, None)
