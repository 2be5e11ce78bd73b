"""The sweep behind the decode GEMV's shape (kernels/nvfp4_gemm.cu): variants of the M = 1 kernel,
BF16 F.linear, and a kernel that only reads the same bytes, each a CUDA-graph replay after an L2 flush.

    python benchmarks/gemv_variants.py          # on a GPU; prints one row per variant, microseconds
"""

from __future__ import annotations

import ctypes
import statistics
import subprocess
import tempfile
from pathlib import Path

import torch

from lowprec_workloads.kernels import Target
from lowprec_workloads.nvfp4_gemm import CudaKernels
from pytest_lowprec.formats.nvfp4 import quantize_nvfp4

N = K = 8192
SAMPLES = 300
HERE = Path(__file__).resolve().parent


def build(capability: tuple[int, int]) -> ctypes.CDLL:
    so = Path(tempfile.mkdtemp()) / "gemv_variants.so"
    subprocess.run(["nvcc", "-O3", "-std=c++17", Target(*capability).gencode, "-shared", "-Xcompiler", "-fPIC",
                    "-o", str(so), str(HERE / "gemv_variants.cu")], check=True)
    lib = ctypes.CDLL(str(so))
    lib.variant_name.restype = ctypes.c_char_p
    return lib


def replay_us(fn, flush: torch.Tensor) -> float:
    """Median microseconds of one graph replay of `fn`, L2 flushed before each."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(SAMPLES)]
    for start, end in events:
        flush.zero_()
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events) * 1e3


def main() -> None:
    dev = torch.device("cuda:0")
    lib = build(torch.cuda.get_device_capability(dev))
    g = torch.Generator(device="cpu").manual_seed(6)
    x = torch.randn(1, K, generator=g).bfloat16().to(dev)
    w_bf16 = torch.randn(N, K, generator=g).bfloat16().to(dev)
    w = quantize_nvfp4(w_bf16)
    cuda = CudaKernels(dev)
    out = torch.empty(1, N, device=dev)
    ref = cuda.gemv(x, w, torch.empty(1, N, device=dev)).clone()
    flush = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device=dev)

    def ptr(t: torch.Tensor) -> ctypes.c_void_p:
        return ctypes.c_void_p(t.data_ptr())

    def stream() -> ctypes.c_void_p:
        return ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)

    t_bf16 = replay_us(lambda: torch.nn.functional.linear(x, w_bf16), flush)
    t_gemv = replay_us(lambda: cuda.gemv(x, w, out), flush)
    rows = [("bf16 F.linear", t_bf16, 2 * N * K), ("kernels/nvfp4_gemm.cu gemv", t_gemv, w.nbytes)]
    i = 0
    while (name := lib.variant_name(i)) is not None:
        def variant(i: int = i) -> int:
            return lib.gemv_variant(i, ptr(x), ptr(w.packed), ptr(w.block_scales), ptr(w.global_decode), ptr(out),
                                    N, K, stream())

        out.fill_(float("nan"))
        if variant() != 0:
            raise RuntimeError(f"variant {name.decode()} failed to launch")
        torch.cuda.synchronize()
        err = float((out - ref).norm() / ref.norm())
        rows.append((f"{name.decode()} (rel diff {err:.1e})", replay_us(variant, flush), w.nbytes))
        i += 1
    sink = torch.empty(1, device=dev)
    for nbytes, blocks, threads in ((w.nbytes, 132 * 4, 256), (w.nbytes, 132 * 16, 256), (w.nbytes, 4096, 512),
                                    (2 * N * K, 132 * 16, 256)):
        buf = torch.empty(nbytes // 16 * 16, dtype=torch.uint8, device=dev)

        def read(buf: torch.Tensor = buf, blocks: int = blocks, threads: int = threads) -> int:
            return lib.read_bytes(ptr(buf), ctypes.c_size_t(buf.numel()), ptr(sink), blocks, threads, stream())

        rows.append((f"read only, {buf.numel() / 2**20:.0f} MiB, {blocks} x {threads}", replay_us(read, flush),
                     buf.numel()))
    print(f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}")
    print(f"{'variant':64s} {'us':>8s} {'TB/s':>6s} {'bf16 / this':>11s}")
    for name, us, nbytes in rows:
        print(f"{name:64s} {us:8.2f} {nbytes / us / 1e6:6.2f} {t_bf16 / us:11.2f}")


if __name__ == "__main__":
    main()
