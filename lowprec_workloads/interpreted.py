"""A workload module's Triton kernels run by Triton's interpreter on CPU tensors, in a child process.

The interpreter must be chosen before triton is imported (TRITON_INTERPRET decides what @triton.jit
returns), and in a process that runs GPU kernels, or a test process, triton is already imported. So the
module runs as `python -m MODULE IN OUT` in a child with TRITON_INTERPRET=1: its `__main__` block calls
`mend_interpreter_scalars()`, reads the job saved at IN and saves its result at OUT.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import torch


def interpreting() -> bool:
    """Whether this process's @triton.jit kernels run in Triton's interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def mend_interpreter_scalars() -> None:
    """Let this process's Triton interpreter turn a scalar tensor into a Python int under NumPy 2.3 and later.

    The interpreter holds a scalar as a one-element 1-D array. Triton 3.6's converts it with int() of that
    array, which NumPy 2.3+ refuses (only 0-d arrays convert), so every loop bounded by a value derived
    from a program id fails (Triton 3.6 with NumPy 2.4-2.5 is what the H200 machines of 2026-12 run);
    Triton 3.9 squeezes the array first. Here the interpreter's patch of `tl.tensor` is wrapped to do the
    same, once a process, and only where NumPy refuses: the conversion is then Triton 3.9's. Call it in a
    process that runs the interpreter (TRITON_INTERPRET=1), after triton is imported.
    """
    import numpy as np
    from triton.runtime import interpreter

    try:
        int(np.ones(1, dtype=np.int32))
        return  # this NumPy still converts a one-element array
    except TypeError:
        pass
    patch = getattr(interpreter, "_patch_lang_tensor", None)
    if patch is None or getattr(patch, "mends_scalars", False):
        return  # a Triton without that private patch (3.6-3.9 have it), or mended already

    def patch_and_mend(tensor, scope) -> None:
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patch_and_mend.mends_scalars = True
    interpreter._patch_lang_tensor = patch_and_mend


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
