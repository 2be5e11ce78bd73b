"""Hooks pytest-lowprec offers to conftests and other plugins."""

from __future__ import annotations

import pytest


@pytest.hookspec(firstresult=True)
def pytest_lowprec_device(config):
    """Return the DeviceInfo the run should treat as detected, or None to probe CUDA.

    For tests of dispatch and key handling on machines without that device
    (a faked B200 on an H100, a faked H100 in CPU CI).
    """


@pytest.hookspec(firstresult=True)
def pytest_lowprec_make_timer(config, device, kind, options):
    """Return a Timer for `kind` ("cuda" or "cpu") work, or None for the default.

    `options` holds the speedup call's timing options (graphs, flush_l2). The
    plugin's own tests inject deterministic timers here.
    """


def pytest_lowprec_record(config, record):
    """Called on the controller once per finished test that used the `lowprec` fixture."""
