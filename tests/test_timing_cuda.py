"""The CUDA-event timer on a real GPU. Needs CUDA."""

from __future__ import annotations

import pytest
import torch

from pytest_lowprec.hardware import probe_cuda
from pytest_lowprec.timing import CudaEventTimer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_graph_replay_runs_each_callable_even_when_earlier_ones_were_freed():
    device = probe_cuda()
    timer = CudaEventTimer(device.index, l2_bytes=device.l2_bytes, graphs=True)
    out = torch.zeros(8, device="cuda")
    for i in range(8):
        # Fresh lambdas each round: once freed, an id() could be reused by the next one.
        timer.pairs(lambda i=i: out[i].fill_(i + 1), lambda i=i: out[i].add_(0), 2)
    torch.cuda.synchronize()
    assert out.tolist() == [float(i + 1) for i in range(8)]


def test_event_timings_are_positive_and_order_by_work():
    device = probe_cuda()
    timer = CudaEventTimer(device.index, l2_bytes=device.l2_bytes)
    a = torch.randn(4096, 4096, device="cuda")
    pairs = timer.pairs(lambda: a @ a, lambda: a + 1, 10)
    assert all(small > 0 and big > small for big, small in pairs)
