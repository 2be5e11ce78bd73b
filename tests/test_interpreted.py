"""lowprec_workloads.interpreted: a module's kernels under Triton's interpreter in a child process."""

from __future__ import annotations

import pytest

from lowprec_workloads.interpreted import run_interpreted


def test_a_failing_child_raises_naming_the_kernels_with_the_childs_output():
    with pytest.raises(RuntimeError, match=r"(?s)the probe kernels failed under Triton's interpreter.*No module"):
        run_interpreted("lowprec_workloads.no_such_module", {"x": 1}, "the probe kernels")
