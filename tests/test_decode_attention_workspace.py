"""The decode-attention kernel's fused combine (the last split of each sequence-head merges the splits) and
the workspace that keeps its arrival counters between calls (lowprec_workloads.decode_attention_triton):
on the CPU, by Triton's interpreter; on a GPU, call after call and replayed from a CUDA graph."""

from __future__ import annotations

import gc
import weakref
from dataclasses import replace

import pytest
import torch

from lowprec_workloads.decode_attention import CACHES, DecodeShape, attend_cache, build_cache, make_inputs
from pytest_lowprec.formats.metrics import rel_l2

# The suite's bound on the kernel against float64 attention over its own cache.
MAX_REL_L2 = 1e-5
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def kernel():
    from lowprec_workloads import decode_attention_triton

    return decode_attention_triton


def _inputs(seq: int, device: str = "cpu", batch: int = 1, heads: int = 2):
    q, k, v = make_inputs(DecodeShape(batch=batch, heads=heads, seq=seq, head_dim=128), device, seed=7,
                          outlier_channels=2)
    return q, {name: build_cache(k, v, name) for name in CACHES}


def test_a_tile_fuses_the_combine_unless_told_otherwise_and_names_only_the_second_kernel(kernel):
    assert kernel.Tile().combine == "fused"
    assert "combine" not in kernel.Tile().name
    assert kernel.Tile(combine="kernel").name.endswith("combine=kernel")
    with pytest.raises(ValueError, match="combine takes fused, kernel"):
        kernel.Tile(combine="atomic")


def test_a_workspace_keeps_its_buffers_and_zeroes_new_counters_only_when_it_grows(kernel):
    workspace = kernel.DecodeWorkspace()
    acc, ml, arrivals = workspace.buffers(8, 2, 16, torch.device("cpu"))
    assert acc.shape == (8, 16) and ml.shape == (8, 2) and arrivals.shape == (2,)
    assert torch.equal(arrivals, torch.zeros(2, dtype=torch.int32))
    arrivals[0] = 3  # what a launch that did not finish would leave: the workspace keeps it, as documented
    again = workspace.buffers(4, 2, 16, torch.device("cpu"))
    assert again[0].data_ptr() == acc.data_ptr() and again[2][0] == 3
    grown = workspace.buffers(16, 4, 16, torch.device("cpu"))
    assert grown[0].shape == (16, 16) and torch.equal(grown[2], torch.zeros(4, dtype=torch.int32))


def test_a_workspace_keeps_the_buffers_it_outgrew_for_the_graphs_captured_on_them(kernel):
    workspace = kernel.DecodeWorkspace()
    acc, ml, arrivals = workspace.buffers(8, 2, 16, torch.device("cpu"))
    outgrown = [weakref.ref(t._base if t._base is not None else t) for t in (acc, ml, arrivals)]
    workspace.buffers(64, 8, 16, torch.device("cpu"))
    del acc, ml, arrivals
    gc.collect()
    assert all(ref() is not None for ref in outgrown)


def test_under_the_interpreter_the_fused_combine_gives_the_second_kernels_output_bit_for_bit(kernel):
    """The same merge in the same split order: 300 tokens in 3 splits (one ragged) and in 8 (some empty).
    The interpreter sums in one order everywhere, and runs the programs one after another (the last split
    always merges); on a GPU a sum's tree follows the program's warps, which the second kernel has its own
    of, and any split may arrive last (the GPU test below)."""
    q, caches = _inputs(300)
    tile = kernel.Tile("mma_t", "mma_pairs", 32, 1, 2, e2m1="bitwise")
    for name, cache in caches.items():
        runs = [(tile, 3), (replace(tile, combine="kernel"), 3), (tile, 8), (replace(tile, combine="kernel"), 8)]
        fused3, kernel3, fused8, kernel8 = kernel.decode_attention_interpreted(q, cache, runs)
        assert torch.equal(fused3, kernel3) and torch.equal(fused8, kernel8), name


def test_one_workspace_serves_calls_of_other_split_counts_and_sequence_heads(kernel):
    """The interpreter's calls share one workspace: each must find its counters at zero, so a call whose
    merge left a counter behind would make the next call's output wrong (never written)."""
    q, caches = _inputs(300, heads=3)
    cache = caches["fp8"]
    tile = kernel.Tile("mma_t", "mma_pairs", 32, 1, 2, e2m1="bitwise")
    outs = kernel.decode_attention_interpreted(q, cache, [(tile, 8), (tile, 3), (tile, 5), (tile, 3)])
    reference = attend_cache(q, cache)
    for splits, out in zip((8, 3, 5, 3), outs, strict=True):
        assert rel_l2(reference, out) < MAX_REL_L2, f"{splits} splits"


@needs_cuda
@pytest.mark.parametrize("name", list(CACHES))
def test_on_the_gpu_the_fused_combine_gives_the_same_bits_call_after_call_and_replayed(kernel, name):
    """Every format at its shipped tile, on one workspace: eager calls, then 20 replays of a CUDA graph, each
    the first call's output bit for bit (whichever split arrives last), within float32 rounding of the
    second kernel's merge (its sums' trees follow its own warps) and within the suite's bound of float64
    attention over the cache; the counters back at zero after the last."""
    q, caches = _inputs(4096, "cuda", batch=2, heads=8)
    cache = caches[name]
    tile = kernel._device_tile(q, *CACHES[name])
    workspace = kernel.DecodeWorkspace()
    first = kernel.decode_attention(q, cache, tile=tile, workspace=workspace)
    assert rel_l2(attend_cache(q, cache), first) < MAX_REL_L2
    assert rel_l2(kernel.decode_attention(q, cache, tile=replace(tile, combine="kernel")), first) < 1e-6
    for _ in range(3):
        assert torch.equal(kernel.decode_attention(q, cache, tile=tile, workspace=workspace), first)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernel.decode_attention(q, cache, tile=tile, workspace=workspace)
    for _ in range(20):
        out.zero_()
        graph.replay()
        assert torch.equal(out, first)
    arrivals = workspace.buffers(1, 2 * 8, 128, q.device)[2]
    assert torch.equal(arrivals[: 2 * 8], torch.zeros(2 * 8, dtype=torch.int32, device=q.device))


@needs_cuda
def test_on_the_gpu_a_workspace_refuses_to_grow_inside_a_graph_capture(kernel):
    q, caches = _inputs(1024, "cuda", batch=1, heads=4)
    workspace = kernel.DecodeWorkspace()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="run one call with this workspace before capturing"):
        with torch.cuda.graph(graph):
            kernel.decode_attention(q, caches["fp8"], workspace=workspace)


@needs_cuda
def test_on_the_gpu_a_graph_captured_before_its_workspace_grew_still_gives_its_output(kernel):
    """A bigger call grows the workspace after the capture; the graph's replays keep using the buffers it
    captured, which the workspace keeps."""
    q, caches = _inputs(2048, "cuda", batch=1, heads=4)
    big_q, big_caches = _inputs(2048, "cuda", batch=4, heads=8)
    workspace = kernel.DecodeWorkspace()
    expected = kernel.decode_attention(q, caches["fp8"], workspace=workspace)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernel.decode_attention(q, caches["fp8"], workspace=workspace)
    big = kernel.decode_attention(big_q, big_caches["fp8"], workspace=workspace)
    assert rel_l2(attend_cache(big_q, big_caches["fp8"]), big) < MAX_REL_L2
    for _ in range(5):
        out.zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, expected)
