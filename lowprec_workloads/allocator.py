"""CUDA caching-allocator monitoring: fragmentation from a memory snapshot, compaction of live
tensors into one arena, and an allocation that compacts and retries on out-of-memory.

Why compaction and not just empty_cache: torch already frees cached segments with no live block
and retries before it raises out-of-memory. What it cannot free is a segment split between live
and free blocks: holes between live tensors. Only moving the live tensors closes those.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

ALIGN = 512  # bytes; every view in an arena starts on this boundary (the allocator's own rounding)


@dataclass(frozen=True)
class FreeSpace:
    total_free: int  # bytes in cached blocks that hold no tensor
    largest_free: int
    reserved: int

    @property
    def fragmentation(self) -> float:
        """1 - largest free block / total free: 0 when the free space is one block (or none)."""
        return 1.0 - self.largest_free / self.total_free if self.total_free else 0.0


def free_space(snapshot: list[dict], device: int | None = None) -> FreeSpace:
    """From torch.cuda.memory_snapshot()'s segments: blocks in state 'inactive' are free."""
    total = largest = reserved = 0
    for segment in snapshot:
        if device is not None and segment.get("device") != device:
            continue
        reserved += segment["total_size"]
        for block in segment["blocks"]:
            if block["state"] == "inactive":
                total += block["size"]
                largest = max(largest, block["size"])
    return FreeSpace(total, largest, reserved)


def segment_of(ptr: int, segments: list[dict]) -> dict | None:
    """The snapshot segment whose memory holds address `ptr`, or None."""
    return next((s for s in segments if s["address"] <= ptr < s["address"] + s["total_size"]), None)


def device_free_space(device: int) -> FreeSpace:
    return free_space(torch.cuda.memory_snapshot(), device)


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def compact(live: dict[str, torch.Tensor], empty_cache: Callable[[], None] = torch.cuda.empty_cache) -> None:
    """Move every tensor of `live` into one arena, in place: the dict must hold the only references.
    The tensors are staged through host memory, so compaction needs no free device memory."""
    if not live:
        return
    devices = {t.device for t in live.values()}
    if len(devices) != 1:
        raise ValueError(f"compact() takes tensors of one device, got {sorted(map(str, devices))}")
    device = devices.pop()
    for name, t in live.items():
        if not t.is_contiguous():
            raise ValueError(f"tensor {name!r} is not contiguous; compact() moves whole storages")
    staged = {name: (t.to("cpu"), t.shape, t.dtype) for name, t in live.items()}
    live.clear()  # drop the old storages, leaving their segments with no live block
    empty_cache()
    offsets, size = {}, 0
    for name, (host, _, _) in staged.items():
        offsets[name] = size
        size += _aligned(host.numel() * host.element_size())
    arena = torch.empty(size, dtype=torch.uint8, device=device)
    for name, (host, shape, dtype) in staged.items():
        nbytes = host.numel() * host.element_size()
        view = arena[offsets[name]:offsets[name] + nbytes].view(dtype).view(shape)
        view.copy_(host)
        live[name] = view


def allocate_with_retry(allocate: Callable[[], torch.Tensor], live: dict[str, torch.Tensor],
                        empty_cache: Callable[[], None] = torch.cuda.empty_cache) -> tuple[torch.Tensor, bool]:
    """`allocate()`, and on out-of-memory compact `live` and try once more. Returns the tensor and
    whether it took the retry. A second failure re-raises, with the free-space figures added."""
    try:
        return allocate(), False
    except torch.OutOfMemoryError:
        compact(live, empty_cache)
    try:
        return allocate(), True
    except torch.OutOfMemoryError as err:
        detail = ""
        if torch.cuda.is_available():
            space = device_free_space(torch.cuda.current_device())
            detail = (f" (after compaction: {space.total_free / 2**20:.1f} MiB free in cache, largest block "
                      f"{space.largest_free / 2**20:.1f} MiB, fragmentation {space.fragmentation:.2f})")
        raise torch.OutOfMemoryError(f"allocation failed even after compacting {len(live)} live tensors{detail}: "
                                     f"{err}") from err


def fragment(device: str, count: int, nbytes: int) -> dict[str, torch.Tensor]:
    """Allocate `count` tensors of `nbytes` with a known pattern, then free every other one: the
    survivors keep their segments split, with a hole beside each."""
    tensors = {}
    for i in range(count):
        tensors[f"t{i}"] = torch.arange(i, i + nbytes // 4, dtype=torch.int32, device=device)
    for i in range(0, count, 2):
        del tensors[f"t{i}"]
    return tensors
