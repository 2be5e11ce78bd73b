"""The README is the user's guide: short, and its example test runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_stays_a_guide_of_at_most_12_kb():
    assert len(README.read_bytes()) <= 12 * 1024


def test_the_readmes_example_test_passes_on_the_cpu_and_skips_its_gpu_size_with_a_reason(pytester):
    (example,) = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    pytester.makepyfile(test_example=example)
    result = pytester.runpytest_subprocess("--gpu", "cpu", "-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*needs a CUDA device*"])
