"""Two of torch's CUDA kernels that a CUDA graph cannot replay safely, and replacements made of torch operations.

FSDP2 copies its all-gather output into the parameters with `split_with_sizes_copy` and its gradients into
the reduce-scatter input with `_chunk_cat`. On CUDA both pack their kernel's metadata, device addresses
among it, into pinned host memory and copy it to the device with a non-blocking copy (ATen's `pack_vecs`).
A capture records that copy with its host source; the caching host allocator hands the same pinned block to
a later call, whose metadata the replay then copies: the kernel writes to another tensor's addresses
(torch 2.11, the GPU machines' version; pytorch/pytorch#166765).

The replacements split, pad, reshape and concatenate with torch operations whose kernels take their
addresses as launch arguments, which a capture keeps. They give the same bytes (tests/test_graph_safe_ops.py)
and launch a few kernels more, which a replayed graph does not pay for on the host.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _chunks(tensors: Sequence[torch.Tensor], dim: int, num_chunks: int) -> tuple[list[torch.Tensor], int]:
    """Each tensor padded with zeros along `dim` to a multiple of `num_chunks` and viewed as
    [*leading, num_chunks, its chunk's elements]; and the dimension to lay them side by side along. Refuses
    what torch's kernel refuses, so a misuse fails here too instead of laying out other bytes."""
    if not tensors:
        raise ValueError("_chunk_cat: no tensors")
    if num_chunks < 1:
        raise ValueError(f"_chunk_cat: num_chunks must be at least 1, got {num_chunks}")
    ndim = tensors[0].dim()
    if not -ndim <= dim < ndim:
        raise ValueError(f"_chunk_cat: dim {dim} is out of range for a {ndim}-dimensional tensor")
    dim %= ndim
    leading = tuple(tensors[0].shape[:dim])
    for t in tensors:
        if t.dtype != tensors[0].dtype or t.device != tensors[0].device:
            raise ValueError(f"_chunk_cat: tensors of {t.dtype} on {t.device} and {tensors[0].dtype} on "
                             f"{tensors[0].device}; all must share one dtype and device")
        if t.dim() <= dim or tuple(t.shape[:dim]) != leading:
            raise ValueError(f"_chunk_cat: a tensor of shape {tuple(t.shape)} does not share the first {dim} "
                             f"dimensions {leading} and a dimension {dim}")
    pieces = []
    for t in tensors:
        size = t.shape[dim]
        padded = -(-size // num_chunks) * num_chunks
        if padded != size:
            tail = list(t.shape)
            tail[dim] = padded - size
            t = torch.cat([t, t.new_zeros(tail)], dim=dim)
        pieces.append(t.reshape(*leading, num_chunks, -1))
    return pieces, dim + 1


def chunk_cat(tensors: Sequence[torch.Tensor], dim: int, num_chunks: int) -> torch.Tensor:
    """torch._chunk_cat: each tensor padded with zeros along `dim` to a multiple of `num_chunks`, cut into
    that many chunks (everything from `dim` on flattened), and chunk i of every tensor laid side by side
    in row i: shape tensors[0].shape[:dim] + (num_chunks, the chunks' elements together)."""
    pieces, along = _chunks(tensors, dim, num_chunks)
    return torch.cat(pieces, dim=along)


def chunk_cat_out(tensors: Sequence[torch.Tensor], dim: int, num_chunks: int, *, out: torch.Tensor) -> torch.Tensor:
    """torch._chunk_cat(..., out=out), concatenated straight into `out` (resized to the result's shape, as
    torch's kernel does), cast to out's dtype in the same pass (FSDP2 may pass bfloat16 gradients into a
    float32 buffer)."""
    pieces, along = _chunks(tensors, dim, num_chunks)
    return torch.cat(pieces, dim=along, out=out)


def split_with_sizes_copy_out(source: torch.Tensor, split_sizes: Sequence[int], dim: int = 0, *,
                              out: Sequence[torch.Tensor]) -> None:
    """torch.split_with_sizes_copy(source, split_sizes, dim, out=out): each piece copied into its tensor, of
    the piece's shape and dtype (an empty one is resized to it, as torch does; anything else is refused
    rather than broadcast or cast)."""
    if len(out) != len(split_sizes):
        raise ValueError(f"split_with_sizes_copy: {len(split_sizes)} sizes for {len(out)} outputs")
    for piece, target in zip(source.split_with_sizes(list(split_sizes), dim), out, strict=True):
        if target.dtype != piece.dtype:
            raise ValueError(f"split_with_sizes_copy: an output of {target.dtype} for a piece of {piece.dtype}")
        if target.shape != piece.shape:
            if target.numel():
                raise ValueError(f"split_with_sizes_copy: an output of shape {tuple(target.shape)} for a piece "
                                 f"of shape {tuple(piece.shape)}")
            target.resize_(piece.shape)
        target.copy_(piece)


def install(dispatch_key: str = "CUDA") -> torch.library.Library:
    """Route `_chunk_cat`, `_chunk_cat.out` and `split_with_sizes_copy.out` on `dispatch_key` through the
    functions above for this process. Keep the returned library alive: dropping it restores torch's kernels.
    Call it only where steps are captured (Job.graphs): elsewhere torch's single kernels are faster."""
    library = torch.library.Library("aten", "IMPL")
    library.impl("_chunk_cat", chunk_cat, dispatch_key)
    library.impl("_chunk_cat.out", chunk_cat_out, dispatch_key)
    library.impl("split_with_sizes_copy.out", split_with_sizes_copy_out, dispatch_key)
    return library
