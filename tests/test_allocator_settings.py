"""expandable_segments(): the caches a speed test times sit in expandable segments, and nothing else changes."""

from __future__ import annotations

import pytest
import torch

from lowprec_workloads.allocator import allocator_settings, expandable_segments

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_off_cuda_the_allocator_settings_are_left_alone():
    before = allocator_settings()
    with expandable_segments("cpu"):
        assert allocator_settings() == before
    assert allocator_settings() == before


def _segment_of(t: torch.Tensor) -> dict:
    ptr = t.data_ptr()
    return next(s for s in torch.cuda.memory_snapshot()
                if s["address"] <= ptr < s["address"] + s["total_size"])


@CUDA
def test_a_tensor_allocated_inside_lies_in_an_expandable_segment_and_one_after_does_not():
    if "expandable_segments:true" in allocator_settings().replace(" ", "").lower():
        pytest.skip("this process runs every segment expandable (PYTORCH_CUDA_ALLOC_CONF)")
    with expandable_segments("cuda"):
        inside = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
    after = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
    assert _segment_of(inside)["is_expandable"]
    assert not _segment_of(after)["is_expandable"]
