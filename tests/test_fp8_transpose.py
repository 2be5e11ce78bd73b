"""The Triton byte transpose (triton_quant.transpose_fp8_triton) on the CPU, run by Triton's interpreter in a
child process; tests/test_formats_cuda.py runs it on the GPU."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
CHILD = textwrap.dedent("""
    import sys, torch
    from pytest_lowprec.formats.triton_quant import transpose_fp8_triton
    shapes = [(1, 1), (5, 300), (256, 128), (130, 257)]
    gen = torch.Generator().manual_seed(0)
    qs = [torch.randint(0, 256, s, dtype=torch.uint8, generator=gen).view(torch.float8_e5m2) for s in shapes]
    torch.save([(q, transpose_fp8_triton(q)) for q in qs], sys.argv[1])
""")


def test_byte_transpose_kernel_gives_torchs_transpose_bit_for_bit_under_the_interpreter(tmp_path):
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "out.pt")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    for q, t in torch.load(tmp_path / "out.pt"):
        assert t.dtype == q.dtype and torch.equal(t.view(torch.uint8), q.view(torch.uint8).t().contiguous())


@pytest.mark.parametrize("bad", [torch.zeros(4, 4, dtype=torch.bfloat16), torch.zeros(16, dtype=torch.uint8)],
                         ids=["two-byte elements", "one dimension"])
def test_byte_transpose_refuses_what_it_cannot_transpose_and_names_the_alternative(bad):
    triton_quant = pytest.importorskip("pytest_lowprec.formats.triton_quant")
    with pytest.raises(ValueError, match=r"one-byte elements.*q\.t\(\)\.contiguous\(\)"):
        triton_quant.transpose_fp8_triton(bad)
