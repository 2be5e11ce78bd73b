"""lowprec_workloads.graph_safe_ops: the replacements for torch's `_chunk_cat` and `split_with_sizes_copy`
give torch's bytes, and installing them routes the operators through them (in a subprocess: the
registration holds for the whole process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lowprec_workloads.graph_safe_ops import chunk_cat, chunk_cat_out, split_with_sizes_copy_out

ROOT = Path(__file__).resolve().parent.parent

CASES = [  # shapes, dim, chunks: even, padded (5 and 7 rows over 2 and 4), a leading dimension, a negative dim
    ([(8, 3), (6,), (4, 4, 2)], 0, 2),
    ([(8, 3), (5,), (7, 4)], 0, 4),
    ([(3, 8, 3), (3, 5)], 1, 3),
    ([(2, 6)], -1, 4),
]


@pytest.mark.parametrize("shapes, dim, chunks", CASES)
def test_chunk_cat_gives_torchs_chunk_cat(shapes, dim, chunks):
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(s, generator=gen) for s in shapes]
    expected = torch._chunk_cat(tensors, dim, chunks)
    got = chunk_cat(tensors, dim, chunks)
    assert got.shape == expected.shape and torch.equal(got, expected)


@pytest.mark.parametrize("shapes, dim, chunks", CASES)
def test_chunk_cat_out_writes_torchs_result_into_the_buffer_given(shapes, dim, chunks):
    gen = torch.Generator().manual_seed(1)
    tensors = [torch.randn(s, generator=gen) for s in shapes]
    expected = torch._chunk_cat(tensors, dim, chunks)
    out = torch.full(expected.shape, float("nan"))
    assert chunk_cat_out(tensors, dim, chunks, out=out) is out
    assert torch.equal(out, expected)


def test_chunk_cat_out_casts_bfloat16_pieces_into_a_float32_buffer():
    tensors = [torch.randn(8, 3).to(torch.bfloat16), torch.randn(5).to(torch.bfloat16)]
    out = torch.empty(2, 15)
    chunk_cat_out(tensors, 0, 2, out=out)
    assert torch.equal(out, torch._chunk_cat(tensors, 0, 2).float())


@pytest.mark.parametrize("tensors, dim, chunks, message", [
    ([], 0, 2, "no tensors"),
    ([torch.zeros(4)], 0, 0, "at least 1"),
    ([torch.zeros(4, 2)], 2, 2, "out of range"),
    ([torch.zeros(4), torch.zeros(4, dtype=torch.bfloat16)], 0, 2, "one dtype and device"),
    ([torch.zeros(3, 4), torch.zeros(2, 4)], 1, 2, "first 1 dimensions"),
], ids=["empty", "no chunks", "dim", "dtypes", "leading"])
def test_chunk_cat_refuses_what_torchs_kernel_refuses(tensors, dim, chunks, message):
    with pytest.raises(ValueError, match=message):
        chunk_cat(tensors, dim, chunks)


def test_split_with_sizes_copy_out_copies_each_piece_into_its_tensor():
    source = torch.randn(10, 4)
    out, expected = [torch.empty(3, 4), torch.empty(7, 4)], [torch.empty(3, 4), torch.empty(7, 4)]
    split_with_sizes_copy_out(source, [3, 7], 0, out=out)
    torch.split_with_sizes_copy(source, [3, 7], 0, out=expected)
    assert all(torch.equal(a, b) for a, b in zip(out, expected, strict=True))


def test_split_with_sizes_copy_out_splits_gathered_bytes_along_dim_one_into_views():
    """FSDP2's copy-out: the all-gather output [ranks, bytes a rank] split along dim 1 into views of the
    parameters' storage, each [ranks, its bytes a rank]."""
    source = torch.randint(0, 256, (2, 30), dtype=torch.uint8)
    storage = torch.zeros(60, dtype=torch.uint8)
    out = [storage[:20].view(2, 10), storage[20:].view(2, 20)]
    split_with_sizes_copy_out(source, [10, 20], 1, out=out)
    expected = [torch.empty(2, 10, dtype=torch.uint8), torch.empty(2, 20, dtype=torch.uint8)]
    torch.split_with_sizes_copy(source, [10, 20], 1, out=expected)
    assert torch.equal(out[0], expected[0]) and torch.equal(out[1], expected[1])


def test_split_with_sizes_copy_out_refuses_a_count_shape_or_dtype_that_does_not_match():
    source = torch.randn(10, 4)
    with pytest.raises(ValueError, match="2 sizes for 1 outputs"):
        split_with_sizes_copy_out(source, [3, 7], 0, out=[torch.empty(3, 4)])
    with pytest.raises(ValueError, match=r"shape \(8, 4\) for a piece of shape \(7, 4\)"):
        split_with_sizes_copy_out(source, [3, 7], 0, out=[torch.empty(3, 4), torch.empty(8, 4)])
    with pytest.raises(ValueError, match="torch.float64 for a piece of torch.float32"):
        split_with_sizes_copy_out(source, [3, 7], 0, out=[torch.empty(3, 4), torch.empty(7, 4, dtype=torch.float64)])


def test_split_with_sizes_copy_out_resizes_an_empty_output_as_torch_does():
    source = torch.randn(10, 4)
    out = [torch.empty(0), torch.empty(0)]
    split_with_sizes_copy_out(source, [3, 7], 0, out=out)
    assert out[1].shape == (7, 4) and torch.equal(out[1], source[3:])


def test_installed_replacements_carry_the_operators_on_their_dispatch_key():
    """install("CPU") in a fresh process: torch._chunk_cat (plain and out=) and split_with_sizes_copy go
    through the replacements (each wrapped to record its call before it is installed)."""
    script = textwrap.dedent("""
        import torch
        from lowprec_workloads import graph_safe_ops
        calls = []
        for name in ("chunk_cat", "chunk_cat_out", "split_with_sizes_copy_out"):
            def counted(*args, _name=name, _fn=getattr(graph_safe_ops, name), **kwargs):
                calls.append(_name)
                return _fn(*args, **kwargs)
            setattr(graph_safe_ops, name, counted)
        library = graph_safe_ops.install("CPU")
        tensors = [torch.randn(8, 3), torch.randn(5)]
        plain = torch._chunk_cat(tensors, 0, 2)
        out = torch.empty(2, 15)
        torch._chunk_cat(tensors, 0, 2, out=out)
        pieces = [torch.empty(3, 4), torch.empty(7, 4)]
        source = torch.randn(10, 4)
        torch.split_with_sizes_copy(source, [3, 7], 0, out=pieces)
        assert calls == ["chunk_cat", "chunk_cat_out", "split_with_sizes_copy_out"], calls
        assert torch.equal(plain, out) and torch.equal(pieces[1], source[3:])
        print("routed")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and "routed" in done.stdout, done.stdout + done.stderr[-2000:]


def test_dropping_the_installed_library_gives_the_operators_back_to_torch():
    script = textwrap.dedent("""
        import gc
        import torch
        from lowprec_workloads import graph_safe_ops
        calls = []
        replacement = graph_safe_ops.chunk_cat
        graph_safe_ops.chunk_cat = lambda *args: calls.append(1) or replacement(*args)
        library = graph_safe_ops.install("CPU")
        torch._chunk_cat([torch.randn(4)], 0, 2)
        del library
        gc.collect()
        torch._chunk_cat([torch.randn(4)], 0, 2)
        assert calls == [1], calls
        print("restored")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and "restored" in done.stdout, done.stdout + done.stderr[-2000:]
