"""Sessions: one per precision, the plugin's tests, lint, and every suite.

    nox -s fp8 -- --gpu h100        # arguments after -- go to pytest
    nox -s tests

Torch is large. Each session's virtualenv sees the system's site-packages, so
an installed torch (the CUDA build on a GPU runner) is reused; where none is
importable, the session installs torch==2.13.0, the CPU wheel.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]
# Each precision session runs the suites' tests marked with these precisions.
PRECISIONS = {"fp8": "fp8,mxfp8", "fp6": "fp6,mxfp6", "fp4": "fp4,mxfp4", "nvfp4": "nvfp4"}


def _install(session: nox.Session) -> None:
    have_torch = session.run("python", "-c", "import torch; print('torch-ok')", silent=True,
                             success_codes=[0, 1])
    if "torch-ok" not in (have_torch or ""):
        session.install("torch==2.13.0")
    session.install("-e", ".[test]")


def _suites(session: nox.Session, precisions: str | None) -> None:
    _install(session)
    args = ["pytest", "suites/", "-p", "no:cacheprovider"]
    if precisions:
        args += ["--lowprec-precision", precisions]
    session.run(*args, *session.posargs)


for _name, _precisions in PRECISIONS.items():
    def _session(session: nox.Session, precisions: str = _precisions) -> None:
        _suites(session, precisions)

    _session.__doc__ = f"suites/ tests marked {_precisions} (pass --gpu KEY and other pytest options after --)"
    nox.session(name=_name, venv_params=["--system-site-packages"])(_session)


@nox.session(venv_params=["--system-site-packages"])
def suites(session: nox.Session) -> None:
    """Every suite (pass --gpu KEY and other pytest options after --)."""
    _suites(session, None)


@nox.session(venv_params=["--system-site-packages"])
def tests(session: nox.Session) -> None:
    """The plugin's own tests (CPU)."""
    _install(session)
    session.run("pytest", "tests/", "-p", "no:cacheprovider", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the whole tree."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")
