"""Sessions: one per precision, the plugin's tests, lint, and every suite.

    nox -s fp8 -- --gpu h100        # arguments after -- go to pytest
    nox -s tests

Torch is large. Each session's virtualenv sees the system's site-packages, so
an installed torch (the CUDA build on a GPU runner) is reused; where none is
importable, the session installs torch==2.13.0, the CPU wheel.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import nox

nox.options.sessions = ["tests", "lint"]


def _registry() -> ModuleType:
    """This checkout's precision registry, read by path: nox's interpreter need not have the package (or
    numpy) installed, and an installed copy may be another checkout's."""
    spec = importlib.util.spec_from_file_location("_lowprec_precisions",
                                                  Path(__file__).parent / "pytest_lowprec" / "precisions.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _install(session: nox.Session) -> None:
    have_torch = session.run("python", "-c", "import torch; print('torch-ok')", silent=True,
                             success_codes=[0, 1])
    if "torch-ok" not in (have_torch or ""):
        session.install("torch==2.13.0")
    session.install("-e", ".[test]")


def _suites(session: nox.Session, precisions: str | None) -> None:
    _install(session)
    # `python -m pytest`: the venv's interpreter, which sees this checkout's install. A bare `pytest` may be a
    # script from PATH (the venv reuses the system's site-packages and so may have no script of its own).
    args = ["python", "-m", "pytest", "suites/", "-p", "no:cacheprovider"]
    if precisions:
        args += ["--lowprec-precision", precisions]
    session.run(*args, *session.posargs)


# One session per nox session the registry names, over the suites' tests marked with its precisions.
for _name, _names in _registry().sessions().items():
    def _session(session: nox.Session, precisions: str = ",".join(_names)) -> None:
        _suites(session, precisions)

    _session.__doc__ = f"suites/ tests marked {','.join(_names)} (pass --gpu KEY and other pytest options after --)"
    nox.session(name=_name, venv_params=["--system-site-packages"])(_session)


@nox.session(venv_params=["--system-site-packages"])
def suites(session: nox.Session) -> None:
    """Every suite (pass --gpu KEY and other pytest options after --)."""
    _suites(session, None)


@nox.session(venv_params=["--system-site-packages"])
def tests(session: nox.Session) -> None:
    """The plugin's own tests (CPU)."""
    _install(session)
    session.run("python", "-m", "pytest", "tests/", "-p", "no:cacheprovider", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the whole tree."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")
