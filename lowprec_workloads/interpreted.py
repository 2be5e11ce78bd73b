"""A workload module's Triton kernels run by Triton's interpreter on CPU tensors, in a child process.

The interpreter must be chosen before triton is imported (TRITON_INTERPRET decides what @triton.jit
returns), and in a process that runs GPU kernels, or a test process, triton is already imported. So the
module runs as `python -m MODULE IN OUT` in a child with TRITON_INTERPRET=1: its `__main__` block reads
the job saved at IN and saves its result at OUT.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import torch


def run_interpreted(module: str, job: object, what: str) -> object:
    """`module`'s `__main__` on `job` under Triton's interpreter; its result. `what` names the kernels in
    the error a failing child raises (with the child's output)."""
    with tempfile.TemporaryDirectory() as tmp:
        inputs, output = os.path.join(tmp, "in.pt"), os.path.join(tmp, "out.pt")
        torch.save(job, inputs)
        # -m, not the file: the module's relative imports need it run as part of its package.
        done = subprocess.run([sys.executable, "-m", module, inputs, output], capture_output=True, text=True,
                              env={**os.environ, "TRITON_INTERPRET": "1"}, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{what} failed under Triton's interpreter:\n{done.stdout}{done.stderr}")
        return torch.load(output)
