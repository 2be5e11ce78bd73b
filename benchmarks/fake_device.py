"""A pytest plugin for dry runs of the gate: the device it reports and the timer it times with are fakes.

    pytest suites/ -p fake_device --gpu b200          # with benchmarks/ on PYTHONPATH, FAKE_GPU=b200

FAKE_GPU names the GPU the gate believes it runs on (a key of the registry: b200, h100, h200, ...);
the workloads still run on the real device (their code paths follow torch's own capability), and
every speedup is "timed" by a scripted timer at FAKE_SPEEDUP (default 1.0) with no noise, so a run
takes seconds per test and shows what each speed gate would assert on that GPU: its floor, the
prediction behind it, and no measurement. Never for recording baselines: it refuses --lowprec-update.
"""

from __future__ import annotations

import os

import pytest

from pytest_lowprec.hardware import DeviceInfo, spec_for

# What torch would report for each faked GPU (capability, SMs, memory, L2): enough for the registry.
FAKES = {
    "b200": ("NVIDIA B200", (10, 0), 148, 192 * 2**30, 126 * 2**20),
    "gb200": ("NVIDIA GB200", (10, 0), 152, 192 * 2**30, 126 * 2**20),
    "b300": ("NVIDIA B300", (10, 3), 148, 288 * 2**30, 126 * 2**20),
    "h100": ("NVIDIA H100 80GB HBM3", (9, 0), 132, 80 * 2**30, 50 * 2**20),
    "h200": ("NVIDIA H200", (9, 0), 132, 141 * 2**30, 60 * 2**20),
}


class ScriptedTimer:
    kind = "cuda"

    def __init__(self, speedup: float):
        self.speedup = speedup

    def warmup(self, baseline, optimized) -> None:
        baseline()
        optimized()

    def pairs(self, baseline, optimized, n):
        return [(1.0, 1.0 / self.speedup)] * n

    def state(self):
        return None


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("lowprec_update", default=None):
        raise pytest.UsageError("fake_device: a dry run never records baselines; drop --lowprec-update")


def pytest_lowprec_device(config: pytest.Config) -> DeviceInfo | None:
    key = os.environ.get("FAKE_GPU")
    if key is None:
        return None
    if key not in FAKES or spec_for(key) is None:
        raise pytest.UsageError(f"FAKE_GPU={key!r}: choose one of {', '.join(FAKES)}")
    name, capability, sms, memory, l2 = FAKES[key]
    return DeviceInfo(key=key, name=f"{name} (faked)", index=0, capability=capability, sm_count=sms,
                      memory_bytes=memory, l2_bytes=l2, visible=1)


def pytest_lowprec_make_timer(config, device, kind, options):
    if os.environ.get("FAKE_GPU") is None:
        return None
    return ScriptedTimer(float(os.environ.get("FAKE_SPEEDUP", "1.0")))
