"""The CUDA C++ build: every kernel source compiles for Hopper and Blackwell (CI has nvcc and no GPU),
a broken source names its file and line, builds are cached by content, and a launcher's CUDA error
becomes an exception."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest
import torch

from lowprec_workloads import kernels

NVCC = kernels.find_nvcc()
needs_nvcc = pytest.mark.skipif(
    NVCC is None and not os.environ.get("LOWPREC_REQUIRE_NVCC"),
    reason="nvcc not installed (CI sets LOWPREC_REQUIRE_NVCC)",
)


def test_every_kernel_source_is_found():
    assert {p.name for p in kernels.sources()} >= {"nvfp4_gemm.cu", "kv_prefetch.cu"}


@pytest.mark.parametrize(("capability", "gencode"), [
    ((9, 0), "-gencode=arch=compute_90a,code=sm_90a"),
    ((10, 0), "-gencode=arch=compute_100a,code=sm_100a"),
    ((8, 9), "-gencode=arch=compute_89,code=sm_89"),
])
def test_target_follows_capability(capability, gencode):
    assert kernels.target_for(capability).gencode == gencode


def test_pre_volta_devices_are_refused():
    with pytest.raises(ValueError, match="below 7.0"):
        kernels.target_for((6, 1))


@pytest.mark.slow  # a subprocess or a build of seconds: `pytest tests/ --slow` (.ci/run) runs it
@needs_nvcc
@pytest.mark.parametrize("source", kernels.sources(), ids=lambda p: p.name)
@pytest.mark.parametrize("capability", [(9, 0), (10, 0)], ids=["sm_90a", "sm_100a"])
def test_kernel_source_compiles(source, capability):
    kernels.compile_check(source, kernels.target_for(capability))


@needs_nvcc
def test_compile_error_names_file_and_line(tmp_path):
    bad = tmp_path / "broken.cu"
    bad.write_text('#include <cstdint>\n__global__ void k(int* p) {\n  p[0] = undefined_name;\n}\n')
    with pytest.raises(kernels.KernelBuildError) as err:
        kernels.compile_check(bad, kernels.target_for((9, 0)))
    assert f"{bad}:3:" in err.value.location
    assert "undefined_name" in err.value.location


@pytest.mark.slow  # a subprocess or a build of seconds: `pytest tests/ --slow` (.ci/run) runs it
@needs_nvcc
def test_build_is_cached_by_content(tmp_path):
    src = tmp_path / "tiny.cu"
    src.write_text('#include "lowprec.cuh"\nextern "C" int tiny() { return 0; }\n')
    (tmp_path / "lowprec.cuh").write_text((kernels.KERNELS_DIR / "lowprec.cuh").read_text())
    target = kernels.target_for((9, 0))
    first = kernels.build(src, target, cache_dir=tmp_path / "cache")
    stamp = first.stat().st_mtime_ns
    assert kernels.build(src, target, cache_dir=tmp_path / "cache") == first
    assert first.stat().st_mtime_ns == stamp  # reused, not rebuilt
    src.write_text(src.read_text() + "// edited\n")
    assert kernels.build(src, target, cache_dir=tmp_path / "cache") != first


@pytest.mark.slow  # a subprocess or a build of seconds: `pytest tests/ --slow` (.ci/run) runs it
@needs_nvcc
def test_launcher_error_becomes_an_exception(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWPREC_KERNEL_CACHE", str(tmp_path))
    lib = kernels.load("nvfp4_gemm", (9, 0), {"nvfp4_gemv": [ctypes.c_int, *[ctypes.c_void_p] * 4, ctypes.c_int,
                                                             ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                                             ctypes.c_int, ctypes.c_void_p]})
    # K = 33 is refused before any launch; on a machine without a GPU, setting the device fails first.
    with pytest.raises(kernels.KernelLaunchError, match="nvfp4_gemv returned CUDA error"):
        lib.call("nvfp4_gemv", 0, None, None, None, None, 0, None, 1, 8, 33, None)


def test_missing_source_says_which_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="nvfp4_gemm.cu"):
        kernels.build(Path(tmp_path / "nope.cu"), kernels.target_for((9, 0)), nvcc="nvcc")


def _declared_parameters(source: Path) -> dict[str, list]:
    """Each extern "C" launcher's parameter types in `source`, as ctypes types."""
    import re

    types = {"int": ctypes.c_int, "int*": ctypes.POINTER(ctypes.c_int), "void*": ctypes.c_void_p,
             "const void*": ctypes.c_void_p}
    declared = {}
    for name, params in re.findall(r'extern "C" int (\w+)\(([^)]*)\)', source.read_text()):
        kinds = [" ".join(p.split()[:-1]).replace(" *", "*") for p in params.split(",") if p.strip()]
        declared[name] = [types[k] for k in kinds]
    return declared


@pytest.mark.parametrize(("module", "source"), [("nvfp4_gemm", "nvfp4_gemm"), ("kv_prefetch", "kv_prefetch"),
                                                ("fp8_gemv_cuda", "fp8_gemv")])
def test_every_launchers_ctypes_signature_matches_its_c_declaration(module, source):
    """A pointer declared as an int is cut to 32 bits: a segmentation fault on a GPU, nothing on a CPU."""
    import importlib

    signatures = importlib.import_module(f"lowprec_workloads.{module}").SIGNATURES
    declared = _declared_parameters(kernels.KERNELS_DIR / f"{source}.cu")
    for name, argtypes in signatures.items():
        assert argtypes == declared[name], name


@pytest.mark.parametrize(("capability", "hip", "takes"), [((9, 0), None, True), ((10, 0), None, True),
                                                          ((8, 9), None, False), ((9, 0), "6.2", False)],
                         ids=["hopper", "blackwell", "ada", "rocm"])
def test_programmatic_launches_are_taken_from_compute_capability_9_0_on_cuda(monkeypatch, capability, hip, takes):
    # Older GPUs have no griddepcontrol instruction; Triton's ROCm backend has no launch_pdl.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.version, "hip", hip)
    assert kernels.programmatic_launches(torch.device("cuda", 0)) is takes


def test_no_programmatic_launch_on_the_cpu():
    assert not kernels.programmatic_launches(torch.device("cpu"))
