"""This repository's tests and suites: the long tests run on a CPU-only run only with `--slow`.

The README's two commands (`pytest suites/`, `pytest tests/`) are meant to answer in about two minutes
on two idle cores; a few tests (the suites' CPU trainings, the wheel build, a nox session) take most of
that time alone. They are marked `slow`: skipped with a reason on a run without a GPU unless `--slow`
is given (`.ci/run` gives it, so CI runs every one); a GPU run (`--gpu KEY`, or `auto` finding a GPU)
runs them always, since there they are the gate.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run the tests marked slow on a run without a GPU (the suites' CPU trainings, "
                          "the wheel build, a nox session); .ci/run passes it")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long on a CPU-only run; skipped there unless --slow (conftest.py)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow = [item for item in items if item.get_closest_marker("slow")]
    if not slow or config.getoption("--slow") or _runs_on_a_gpu(config):
        return
    skip = pytest.mark.skip(reason="slow on a CPU-only run: pass --slow to run it (.ci/run does)")
    for item in slow:
        item.add_marker(skip)


def _runs_on_a_gpu(config: pytest.Config) -> bool:
    # A source tree on PYTHONPATH (the GPU machines' copy) runs without the plugin's entry point, so
    # neither --gpu nor its ini key exists there: the machine decides, as `auto` would.
    gpu = config.getoption("lowprec_gpu", None)
    if gpu is None:
        try:
            gpu = config.getini("lowprec_gpu")
        except ValueError:
            gpu = "auto"
    if gpu == "cpu":
        return False
    if gpu != "auto":
        return True
    import torch

    return torch.cuda.is_available()
