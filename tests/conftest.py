from __future__ import annotations

import os
from pathlib import Path

import pytest

import pytest_lowprec

pytest_plugins = ["pytester"]

# The checkout under test. A pytester subprocess starts in a temp folder, where `import pytest_lowprec`
# would otherwise find whichever copy the environment installed (an editable install of another worktree).
_CHECKOUT = str(Path(pytest_lowprec.__file__).resolve().parents[1])


@pytest.fixture(autouse=True)
def _subprocesses_import_this_checkout(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [_CHECKOUT, os.environ.get("PYTHONPATH")])))
