"""lowprec_workloads.interpreted: a module's kernels under Triton's interpreter in a child process."""

from __future__ import annotations

import pytest

from lowprec_workloads.interpreted import run_interpreted


def test_a_failing_child_raises_naming_the_kernels_with_the_childs_output():
    with pytest.raises(RuntimeError, match=r"(?s)the probe kernels failed under Triton's interpreter.*No module"):
        run_interpreted("lowprec_workloads.no_such_module", {"x": 1}, "the probe kernels")


def test_after_mending_the_interpreter_turns_a_one_element_scalar_into_an_int():
    """Triton 3.6's interpreter converts a scalar (a one-element 1-D array) with int(), which NumPy 2.3+
    refuses; mended, any Triton converts it, as 3.9 does. In a child process: the mend changes Triton's
    module there."""
    import subprocess
    import sys

    probe = """
import operator, types
import numpy as np
from triton.runtime import interpreter
from lowprec_workloads.interpreted import mend_interpreter_scalars
mend_interpreter_scalars()
mend_interpreter_scalars()  # a second call changes nothing
class Scalar:
    pass
scope = interpreter._LangPatchScope()
interpreter._patch_lang_tensor(Scalar, scope)
s = Scalar()
s.handle = types.SimpleNamespace(data=np.array([7], dtype=np.int32))
print(operator.index(s), range(0, s)[-1])
scope.restore()
print(hasattr(Scalar, "__index__"))
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["7", "6", "False"]
