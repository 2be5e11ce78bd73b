"""With no baseline file at all, the suites' accuracy gates catch a broken quantizer: their floors come
from what the formats give (formats.bounds), not from a recording of the GPU that runs them.

Each case runs real suites on the CPU in a subprocess, with a plugin that breaks one quantizer the way
a real bug would: NVFP4 with 32-element blocks, truncation instead of round-to-nearest-even, the NVFP4
block scale from amax/5 instead of amax/6, E5M2 elements where E4M3 is required.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
BREAK = '''
import os
import types

import torch

from pytest_lowprec.formats import fp8, minifloat, nvfp4

broken = os.environ["LOWPREC_BROKEN"]
if broken == "nvfp4_block32":
    quantize = nvfp4.quantize_nvfp4
    nvfp4.BLOCK = 32  # what the tensor's dequantize and its other methods read

    def blocks_of_32(x, *, tile=(1, 16), **options):
        return quantize(x, tile=tuple(32 if t == 16 else t for t in tile), **options)

    nvfp4.quantize_nvfp4 = blocks_of_32  # the suites import it after this plugin loads
elif broken == "truncation":
    names = {n: getattr(torch, n) for n in dir(torch) if not n.startswith("__")}
    minifloat.torch = types.SimpleNamespace(**{**names, "round": torch.trunc})
elif broken == "nvfp4_amax_over_5":
    nvfp4.FP4_MAX = 5.0
elif broken == "e5m2_for_e4m3":
    cast = fp8.saturating_cast

    def through_e5m2(x, dtype):
        if dtype == torch.float8_e4m3fn:
            return cast(cast(x, torch.float8_e5m2).float(), dtype)
        return cast(x, dtype)

    fp8.saturating_cast = through_e5m2
else:
    raise ValueError(broken)
'''
# broken quantizer -> (suites and -k selection to run, (test id part, metric) pairs that must fail)
CASES = {
    "nvfp4_block32": (["suites/test_quantization.py", "suites/test_kv_compression.py"],
                      "nvfp4 and (dequantize or dequantization)",
                      # On N(0, 1) 32-element blocks cost only 0.6 dB (19.86 against 20.44); where a block
                      # shares an outlier they cost 2-3 dB, which the outlier data and the K cache catch.
                      [("nvfp4-outliers", "sqnr_db"), ("nvfp4-outliers", "bulk_sqnr_db"),
                       ("error[nvfp4]", "k_sqnr_db")]),
    "truncation": (["suites/test_quantization.py"], "dequantize and (nvfp4 or mxfp4)",
                   [("[nvfp4-normal]", "sqnr_db"), ("[mxfp4-normal]", "sqnr_db")]),
    "nvfp4_amax_over_5": (["suites/test_quantization.py", "suites/test_decode_attention.py"],
                          "(dequantize and nvfp4) or (accuracy and fp8k_nvfp4v and normal)",
                          [("[nvfp4-normal]", "sqnr_db"), ("fp8k_nvfp4v-normal", "sqnr_db_vs_bf16")]),
    "e5m2_for_e4m3": (["suites/test_quantization.py", "suites/test_fp8_gemm.py", "suites/test_kv_compression.py"],
                      "(dequantize and e4m3) or (fp8_gemm and 256) or error[fp8]",
                      [("fp8_e4m3_tensorwise-normal", "sqnr_db"), ("[256-gemm]", "sqnr_db"),
                       ("error[fp8]", "v_sqnr_db")]),
}


def _run(tmp_path: Path, broken: str) -> pd.DataFrame:
    (tmp_path / "break_quantizer.py").write_text(BREAK)
    paths, selection, _ = CASES[broken]
    csv = tmp_path / "verdicts.csv"
    env = {**os.environ, "LOWPREC_BROKEN": broken,
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "pytest", *paths, "-k", selection, "-p", "break_quantizer",
                           "--gpu", "cpu", "--lowprec-baselines", str(tmp_path / "no-baselines"),
                           "--lowprec-csv", str(csv), "-q", "-p", "no:cacheprovider", "-p", "no:randomly"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert csv.exists(), done.stdout + done.stderr
    return pd.read_csv(csv)


@pytest.mark.slow  # a subprocess or a build of seconds: `pytest tests/ --slow` (.ci/run) runs it
@pytest.mark.parametrize("broken", sorted(CASES))
def test_a_broken_quantizer_fails_the_suites_accuracy_gates_without_any_baseline(tmp_path, broken):
    verdicts = _run(tmp_path, broken)
    assert not verdicts["flags"].fillna("").str.contains("recording").any()
    for test_part, metric in CASES[broken][2]:
        rows = verdicts[verdicts["test"].str.contains(test_part, regex=False) & (verdicts["metric"] == metric)]
        assert len(rows) == 1, (broken, test_part, metric, verdicts[["test", "metric"]].to_string())
        row = rows.iloc[0]
        assert row["status"] == "fail" and "< bound" in row["reasons"], (broken, row.to_dict())
        assert pd.isna(row["baseline"])  # failed on the format's floor, with no baseline to compare
