"""Deterministic stand-ins for a GPU: a scripted timer and a faked device.

Used directly by unit tests, and copied into pytester runs as a conftest helper,
so the gate's behaviour is tested without a GPU and without wall-clock noise.
"""

from __future__ import annotations

import random

from pytest_lowprec.hardware import DeviceInfo

H100 = DeviceInfo(key="h100", name="NVIDIA H100 80GB HBM3", index=0, capability=(9, 0),
                  sm_count=132, memory_bytes=85520809984, l2_bytes=52428800)


class ScriptedTimer:
    """Paired times with a chosen true speedup and relative Gaussian noise on each side.

    The callables still run once per sample, so a workload that raises still raises.
    """

    kind = "cuda"

    def __init__(self, speedup: float, noise: float = 0.01, base_ms: float = 1.0, seed: int = 0,
                 state: dict | None = None, later: float | None = None):
        """`later`: the speedup from the second warm-up on (a transient first measurement)."""
        self.speedup, self.noise, self.base_ms = speedup, noise, base_ms
        self._later = later
        self._warmups = 0
        self._rng = random.Random(seed)
        self._state = state
        self.pairs_taken = 0

    def _draw(self, ms: float) -> float:
        return max(ms * (1.0 + self.noise * self._rng.gauss(0.0, 1.0)), 1e-6)

    def warmup(self, baseline, optimized) -> None:
        self._warmups += 1
        if self._warmups > 1 and self._later is not None:
            self.speedup = self._later
        baseline()
        optimized()

    def pairs(self, baseline, optimized, n):
        out = []
        for _ in range(n):
            baseline()
            optimized()
            out.append((self._draw(self.base_ms), self._draw(self.base_ms / self.speedup)))
        self.pairs_taken += n
        return out

    def state(self):
        return self._state
