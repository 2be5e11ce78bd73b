"""Allocator monitoring: a workload that fragments the CUDA caching allocator, and compaction that
undoes it without changing a byte of any live tensor.

On the GPU, under a per-process memory budget: half of 3 MiB tensors freed leave holes inside
split segments (fragmentation > 0.5); an allocation larger than any hole fails although the
free total would hold it; `allocate_with_retry` compacts the live tensors and succeeds; every
live tensor is compared with its host copy taken before, and the fragmentation left (the
rounding tails of the arena's and the new tensor's segments) is under half. On CPU, the free-space arithmetic and
the retry logic run on a recorded snapshot and a fake allocator.
"""

from __future__ import annotations

import pytest
import torch

from lowprec_workloads.allocator import allocate_with_retry, compact, device_free_space, fragment, free_space

BUDGET_BYTES = 1 << 30
TENSOR_BYTES = 3 << 20


def _snapshot(*segments: list[tuple[int, str]]) -> list[dict]:
    return [{"device": 0, "total_size": sum(s for s, _ in blocks),
             "blocks": [{"size": s, "state": st} for s, st in blocks]} for blocks in segments]


def test_fragmentation_is_one_minus_largest_free_over_total_free():
    snap = _snapshot([(4, "active_allocated"), (2, "inactive"), (4, "active_allocated"), (6, "inactive")],
                     [(8, "inactive")])
    space = free_space(snap)
    assert (space.total_free, space.largest_free, space.reserved) == (16, 8, 24)
    assert space.fragmentation == pytest.approx(0.5)


def test_no_free_block_is_no_fragmentation():
    assert free_space(_snapshot([(4, "active_allocated")])).fragmentation == 0.0


def test_retry_compacts_then_allocates_once_more():
    calls, emptied = [], []
    live = {"a": torch.arange(10), "b": torch.ones(3, 4)}
    before = {k: v.clone() for k, v in live.items()}

    def allocate():
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("fake")
        return torch.empty(5)

    _, retried = allocate_with_retry(allocate, live, empty_cache=lambda: emptied.append(1))
    assert retried and len(calls) == 2 and emptied == [1]
    assert all(torch.equal(live[k], before[k]) for k in before)


def test_second_out_of_memory_says_compaction_did_not_help():
    def allocate():
        raise torch.OutOfMemoryError("fake")

    with pytest.raises(torch.OutOfMemoryError, match="even after compacting 1 live tensors"):
        allocate_with_retry(allocate, {"a": torch.ones(2)}, empty_cache=lambda: None)


def test_compaction_keeps_contents_shapes_and_dtypes():
    live = {"f": torch.randn(3, 5), "i": torch.arange(7, dtype=torch.int16), "h": torch.randn(4).half()}
    before = {k: v.clone() for k, v in live.items()}
    compact(live, empty_cache=lambda: None)
    for k, v in before.items():
        assert live[k].dtype == v.dtype and live[k].shape == v.shape and torch.equal(live[k], v)
    base = {live[k].untyped_storage().data_ptr() for k in live}
    assert len(base) == 1  # one arena


@pytest.mark.lowprec(device="cuda")
def test_compaction_undoes_fragmentation_under_a_memory_budget(lowprec):
    index = torch.device(lowprec.device).index
    lowprec.signature(budget=BUDGET_BYTES, tensor_bytes=TENSOR_BYTES)
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(index).total_memory
    # The budget sits on top of what this process already holds (earlier tests, graph pools).
    limit = torch.cuda.memory_reserved(index) + BUDGET_BYTES
    torch.cuda.set_per_process_memory_fraction(limit / total, index)
    try:
        count = int(0.8 * BUDGET_BYTES) // TENSOR_BYTES
        live = fragment(lowprec.device, count, TENSOR_BYTES)
        expected = {k: v.cpu() for k, v in live.items()}
        before = device_free_space(index)
        lowprec.info("fragmentation_before", before.fragmentation)
        lowprec.info("free_in_cache_before_mib", before.total_free / 2**20)
        assert before.fragmentation > 0.5, f"the workload did not fragment the cache: {before}"
        # More than the budget has left and than any hole, less than both together: it fits only
        # once the holes are merged.
        headroom = limit - torch.cuda.memory_reserved(index)
        want = (headroom + before.total_free) // 2
        assert want > max(headroom, before.largest_free), (want, headroom, before)
        big, retried = allocate_with_retry(lambda: torch.empty(want, dtype=torch.uint8, device=lowprec.device),
                                           live)
        after = device_free_space(index)
        lowprec.info("fragmentation_after", after.fragmentation)
        lowprec.info("retried_after_compaction", int(retried))
        mismatched = sum(int((live[k].cpu() != v).sum()) for k, v in expected.items())
        lowprec.accuracy("mismatched_live_elements", mismatched, max=0)
        lowprec.memory("reserved_after", after.reserved, max=limit)  # compaction kept the process in its budget
        assert retried, "the allocation fit without compaction: the workload did not fragment enough"
        # What free space is left is the tails of the two new allocations' segments.
        assert after.fragmentation < 0.5 < before.fragmentation
        del big
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, index)
        torch.cuda.empty_cache()
