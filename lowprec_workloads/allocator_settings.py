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


def plain_free_blocks(snapshot: list[dict], device: int, stream: int) -> list[int]:
    """Sizes of the free blocks in plain (not expandable) segments that an allocation on `stream` of
    `device` could be handed, smallest first, from torch.cuda.memory_snapshot()'s segments."""
    return sorted(block["size"] for segment in snapshot
                  if segment.get("device") == device and segment.get("stream") == stream
                  and not segment.get("is_expandable", False)
                  for block in segment["blocks"] if block["state"] == "inactive")


def _hold_plain_free_blocks(device: torch.device, rounds: int = 4) -> list[torch.Tensor]:
    """Tensors that take every free block of a plain segment the current stream could reuse, allocated
    with expandable segments off. A free block survives torch.cuda.empty_cache() when its segment
    still holds a live tensor, and torch hands it out with the setting on (in a full gate run, 2026-12-01,
    one of a decode test's caches landed in one). Each size asked for exactly is the best fit, a block of
    that size; a larger block it splits leaves a remainder, which the next round takes."""
    stream = torch.cuda.current_stream(device).cuda_stream
    held: list[torch.Tensor] = []
    for _ in range(rounds):
        sizes = plain_free_blocks(torch.cuda.memory_snapshot(), device.index, stream)
        if not sizes:
            break
        held += [torch.empty(size, dtype=torch.uint8, device=device) for size in sizes]
    return held


@contextmanager
def expandable_segments(device: str) -> Iterator[None]:
    """Tensors allocated inside lie in new expandable segments (mapped 2 MiB page by page); the settings
    are as they were on exit. No-op off CUDA. With the setting on, torch still hands out a free block of
    a plain segment it holds, and earlier tests free blocks of the very sizes a speed test asks for: the
    cache is emptied first, and the free blocks that emptying cannot release are held until exit."""
    if not str(device).startswith("cuda"):
        yield
        return
    device = torch.device(device)
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    before = allocator_settings()
    torch.cuda.empty_cache()
    held = _hold_plain_free_blocks(device)
    _set_allocator_settings(with_expandable_segments(before, True))
    try:
        yield
    finally:
        _set_allocator_settings(before if KEY in _names(before) else with_expandable_segments(before, False))
        del held


def outside_expandable_segments(tensors: Iterable[torch.Tensor]) -> list[str]:
    """Each tensor whose memory lies outside an expandable segment, described with the segment that holds
    it (from the allocator's snapshot)."""
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
