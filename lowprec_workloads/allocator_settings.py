"""The CUDA caching allocator's settings for a span of allocations: a speed test's tensors in
expandable segments whatever the process allocated and freed before, every other setting kept.

Why a speed test wants it: on an H200 the same decode-attention kernel read the same BF16 cache in
0.94 ms or 1.08 ms depending on what earlier work in the process had allocated and freed, and
torch.cuda.empty_cache() alone did not change it; with the caches in expandable segments it read it in
0.94 ms in every round of the probes' processes (docs/measurements/decode-kernels-h200-2026-12-01.md).
A speed gate should time the kernel, not the process's history.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

from .allocator import segment_of

KEY = "expandable_segments"


def allocator_settings() -> str:
    """The caching allocator's settings as torch holds them now (PYTORCH_CUDA_ALLOC_CONF's syntax)."""
    getter = getattr(torch._C, "_accelerator_getAllocatorSettings", None)
    if getter is not None:
        return getter()
    return os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")  # a torch without the getter: as the process began


def _set_allocator_settings(settings: str) -> None:
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None)
    if setter is None:
        setter = torch.cuda.memory._set_allocator_settings
    setter(settings)


def _entries(settings: str) -> list[str]:
    """key:value entries, split at the commas outside brackets (roundup_power2_divisions takes a list)."""
    entries, depth, start = [], 0, 0
    for i, ch in enumerate(settings + ","):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            if settings[start:i].strip():
                entries.append(settings[start:i].strip())
            start = i + 1
    return entries


def _names(settings: str) -> set[str]:
    return {entry.split(":", 1)[0].strip() for entry in _entries(settings)}


def with_expandable_segments(settings: str, on: bool) -> str:
    """`settings` with expandable segments on or off and every other entry as it was. Each entry must be
    restated: torch's parser resets the sizes a new settings string leaves out (max_split_size_mb,
    roundup_power2_divisions, garbage_collection_threshold)."""
    kept = [entry for entry in _entries(settings) if entry.split(":", 1)[0].strip() != KEY]
    return ",".join(kept + [f"{KEY}:{'True' if on else 'False'}"])


SMALL_REQUEST = 1 << 20  # torch's small pool (2 MiB segments) serves requests up to 1 MiB


def plain_free_blocks(snapshot: list[dict], device: int, stream: int) -> list[tuple[int, bool]]:
    """(size, in a small segment) of each free block of a plain (not expandable) segment that torch could
    hand an allocation on `stream` of `device`, smallest first, from torch.cuda.memory_snapshot()'s
    segments. Private pools' blocks (CUDA graphs, MemPool) are never handed to other allocations."""
    return sorted((block["size"], segment.get("segment_type") == "small") for segment in snapshot
                  if segment.get("device") == device and segment.get("stream") == stream
                  and not segment.get("is_expandable", False)
                  and tuple(segment.get("segment_pool_id", (0, 0))) == (0, 0)
                  for block in segment["blocks"] if block["state"] == "inactive")


def hold_requests(blocks: list[tuple[int, bool]]) -> list[int]:
    """Allocation sizes that take those blocks under torch's default settings, where a request of a free
    block's exact size is best fit by a block of that size: one request a large segment's block; a small
    segment's in requests of at most 1 MiB, since a larger one would go to the large pool."""
    requests = []
    for size, small in blocks:
        while small and size > SMALL_REQUEST:
            requests.append(SMALL_REQUEST)
            size -= SMALL_REQUEST
        requests.append(size)
    return requests


def _hold_plain_free_blocks(device: torch.device, rounds: int = 4) -> list[torch.Tensor]:
    """Tensors that take every free block of a plain segment the current stream could reuse, allocated
    under torch's default settings (no rounding of the user's to miss a block by, expandable segments
    off). A free block survives torch.cuda.empty_cache() when its segment still holds a live tensor, and
    torch hands it out with expandable segments on (in a full gate run, 2026-12-01, one of a decode test's
    caches landed in one). A request that splits a larger block leaves a remainder the next round takes;
    what no round takes is named in a warning."""
    stream = torch.cuda.current_stream(device).cuda_stream
    held: list[torch.Tensor] = []
    last: list[tuple[int, bool]] = []
    for _ in range(rounds):
        blocks = plain_free_blocks(torch.cuda.memory_snapshot(), device.index, stream)
        if not blocks or blocks == last:  # none left, or torch would not hand these out (allocating anew)
            break
        held += [torch.empty(size, dtype=torch.uint8, device=device) for size in hold_requests(blocks)]
        last = blocks
    left = plain_free_blocks(torch.cuda.memory_snapshot(), device.index, stream)
    if left:
        warnings.warn(f"{len(left)} free blocks of plain segments could not be held ({sum(s for s, _ in left)} "
                      "bytes); tensors allocated inside may land in them", RuntimeWarning, stacklevel=3)
    return held


def _native_allocator() -> bool:
    """Whether torch's own caching allocator serves CUDA memory (not cudaMallocAsync's), the one with
    segments, expandable segments and snapshots."""
    return torch.cuda.get_allocator_backend() == "native"


@contextmanager
def expandable_segments(device: str) -> Iterator[None]:
    """Tensors allocated inside lie in new expandable segments (mapped 2 MiB page by page); the settings
    are as they were on exit. No-op off CUDA and under another allocator backend (cudaMallocAsync has no
    segments). With the setting on, torch still hands out a free block of a plain segment it holds, and
    earlier tests free blocks of the very sizes a speed test asks for: the cache is emptied first, and
    the free blocks that emptying cannot release are held until exit."""
    if not str(device).startswith("cuda") or not _native_allocator():
        yield
        return
    device = torch.device(device)
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    before = allocator_settings()
    held: list[torch.Tensor] = []
    torch.cuda.empty_cache()
    try:
        _set_allocator_settings(f"{KEY}:False")  # every other setting at torch's default while holding
        held = _hold_plain_free_blocks(device)
        _set_allocator_settings(with_expandable_segments(before, True))
        yield
    finally:
        _set_allocator_settings(before if KEY in _names(before) else with_expandable_segments(before, False))
        del held


def outside_expandable_segments(tensors: Iterable[torch.Tensor]) -> list[str]:
    """Each tensor whose memory lies outside an expandable segment, described with the segment that holds
    it (from the allocator's snapshot)."""
    if not _native_allocator():
        raise RuntimeError(f"tensor placement needs torch's native caching allocator; this process runs "
                           f"{torch.cuda.get_allocator_backend()!r} (PYTORCH_CUDA_ALLOC_CONF's backend): unset it")
    segments = torch.cuda.memory_snapshot()
    outside = []
    for t in tensors:
        segment = segment_of(t.data_ptr(), segments)
        if not (segment or {}).get("is_expandable", False):
            where = f"a plain {segment['total_size']}-byte segment" if segment else "no allocator segment"
            outside.append(f"{t.dtype} {tuple(t.shape)} in {where}")
    return outside


def in_expandable_segments(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every tensor's memory lies in an expandable segment."""
    return not outside_expandable_segments(tensors)
