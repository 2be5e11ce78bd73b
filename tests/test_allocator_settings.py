"""allocator_settings: a speed test's tensors in expandable segments, and every other setting kept."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from lowprec_workloads.allocator_settings import (
    allocator_settings,
    expandable_segments,
    hold_requests,
    in_expandable_segments,
    plain_free_blocks,
    with_expandable_segments,
)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_turning_expandable_segments_on_restates_every_other_entry():
    before = "max_split_size_mb:256,roundup_power2_divisions:[256:1,512:2,>:8],garbage_collection_threshold:0.6"
    assert with_expandable_segments(before, True) == before + ",expandable_segments:True"


def test_an_expandable_segments_entry_already_there_is_replaced_not_repeated():
    assert with_expandable_segments("expandable_segments:True,max_split_size_mb:64", False) == \
        "max_split_size_mb:64,expandable_segments:False"


def test_empty_settings_get_the_one_entry():
    assert with_expandable_segments("", True) == "expandable_segments:True"


def test_off_cuda_the_allocator_settings_are_left_alone():
    before = allocator_settings()
    with expandable_segments("cpu"):
        assert allocator_settings() == before
    assert allocator_settings() == before


def _segment(size: int, blocks: list[tuple[int, str]], expandable: bool = False, device: int = 0, stream: int = 0,
             kind: str = "large", pool: tuple[int, int] = (0, 0)):
    return {"device": device, "stream": stream, "total_size": size, "is_expandable": expandable,
            "segment_type": kind, "segment_pool_id": pool, "blocks": [{"size": b, "state": st} for b, st in blocks]}


def test_the_free_blocks_to_hold_are_those_of_plain_segments_on_the_stream_and_device():
    snapshot = [
        _segment(96, [(32, "active_allocated"), (64, "inactive")]),
        _segment(40, [(8, "inactive"), (32, "active_allocated")], kind="small"),
        _segment(64, [(64, "inactive")], expandable=True),  # expandable: where the test wants its tensors
        _segment(16, [(16, "inactive")], stream=7),  # another stream's blocks are not handed to this one
        _segment(16, [(16, "inactive")], device=1),
        _segment(16, [(16, "inactive")], pool=(1, 0)),  # a CUDA graph's private pool
    ]
    assert plain_free_blocks(snapshot, device=0, stream=0) == [(8, True), (64, False)]


def test_a_small_segments_free_block_is_held_in_requests_the_small_pool_serves():
    """A request over 1 MiB goes to the large pool, so a small segment's larger free block takes several."""
    mib = 1 << 20
    assert hold_requests([(2 * mib - 512, True)]) == [mib, mib - 512]
    assert hold_requests([(3 * mib, False), (4096, True)]) == [3 * mib, 4096]


@pytest.fixture
def plain_segments():
    """The CUDA tests below build plain segments, which a process running every segment expandable has not."""
    if "expandable_segments:true" in allocator_settings().replace(" ", "").lower():
        pytest.skip("this process runs every segment expandable (PYTORCH_CUDA_ALLOC_CONF)")


def _plain_free_blocks_now() -> list[tuple[int, bool]]:
    return plain_free_blocks(torch.cuda.memory_snapshot(), torch.cuda.current_device(),
                             torch.cuda.current_stream().cuda_stream)


@CUDA
def test_a_free_block_of_a_segment_still_in_use_is_not_reused_inside(plain_segments):
    """empty_cache() cannot release a segment that still holds a live tensor; its free block must not
    take what the context allocates."""
    whole = torch.empty(128 << 20, dtype=torch.uint8, device="cuda")
    del whole
    live = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")  # half of that segment; the rest is free
    torch.cuda.empty_cache()
    assert (64 << 20, False) in _plain_free_blocks_now()
    with expandable_segments("cuda"):
        inside = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
    assert in_expandable_segments([inside])
    assert live.is_cuda


@CUDA
def test_a_small_segments_free_block_is_not_reused_inside(plain_segments):
    """One live 512-byte tensor keeps its 2 MiB small segment, and the rest of it free, past empty_cache()."""
    live = torch.empty(512, dtype=torch.uint8, device="cuda")
    torch.cuda.empty_cache()
    assert any(small for _, small in _plain_free_blocks_now())
    with expandable_segments("cuda"):
        inside = torch.empty(4096, dtype=torch.uint8, device="cuda")
    assert in_expandable_segments([inside])
    assert live.is_cuda


@CUDA
def test_a_block_an_earlier_tensor_freed_is_not_reused_inside(plain_segments):
    freed = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
    del freed  # a 64 MiB free block of a plain segment, in the allocator's cache
    with expandable_segments("cuda"):
        inside = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
    after = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
    assert in_expandable_segments([inside])
    assert not in_expandable_segments([after])


@CUDA
def test_the_users_other_settings_survive_the_context():
    code = ("import torch; from lowprec_workloads.allocator_settings import allocator_settings, expandable_segments\n"
            "torch.empty(1, device='cuda')\n"
            "with expandable_segments('cuda'): pass\n"
            "print(allocator_settings())")
    env = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:256"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "max_split_size_mb:256" in done.stdout
