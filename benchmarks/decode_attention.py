"""Decode attention over BF16, FP8 and FP8-K/NVFP4-V caches on a GPU, against the copy ceiling.

    python benchmarks/decode_attention.py [--seq 32768]

Batch 8, 32 heads, head_dim 128, one query token per sequence. Each row times one
call with the plugin's CUDA-event timer (L2 flushed, CUDA-graph replay, median of
30 pairs against a device-to-device copy of 1 GiB into a preallocated buffer, which
gives the copy ceiling beside it; a read-only kernel may pass it, since a copy also
writes). "TB/s" counts the cache bytes the kernel must read (elements and
scales); torch's scaled_dot_product_attention over the BF16 cache is the outside
reference for the BF16 kernel. The issue's targets: FP8 >= 1.7x the BF16 cache, NVFP4 V
faster still. A benchmark: it prints a table and asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "suites"))

from decode_attention import CACHES, DecodeShape, build_cache, make_inputs  # noqa: E402
from decode_attention_triton import TILES, decode_attention  # noqa: E402

from pytest_lowprec.hardware import probe_cuda  # noqa: E402
from pytest_lowprec.timing import CudaEventTimer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq", type=int, default=32768)
    args = parser.parse_args()
    device = probe_cuda()
    if device is None:
        print("needs a CUDA device")
        return 1
    shape = DecodeShape(batch=8, heads=32, seq=args.seq, head_dim=128)
    q, k, v = make_inputs(shape, "cuda", seed=11, outlier_channels=4)
    timer = CudaEventTimer(device.index, l2_bytes=device.l2_bytes, uuid=device.uuid, graphs=True)
    caches = {name: build_cache(k, v, name) for name in CACHES}
    src = torch.empty(2**29, dtype=torch.int16, device="cuda")
    dst = torch.empty_like(src)

    def copy():
        dst.copy_(src)

    def time_ms(fn) -> tuple[float, float]:
        """(median ms of fn, copy TB/s measured alongside)."""
        fn()
        timer.warmup(copy, fn)
        pairs = timer.pairs(copy, fn, 30)
        copy_ms, ms = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
        return ms, 2 * src.numel() * src.element_size() / (copy_ms * 1e-3) / 1e12

    tiles = [(b, w) for b in (16, 32, 64, 128) for w in (2, 4, 8)]
    print(f"tile sweep, ms (BLOCK_N x num_warps; decode_attention_triton.TILES holds the defaults: {TILES}):")
    print(f"{'cache':12}" + "".join(f"{f'{b}x{w}':>7}" for b, w in tiles))
    for name, c in caches.items():
        ms = [time_ms(lambda c=c, t=t: decode_attention(q, c, tile=t))[0] for t in tiles]
        print(f"{name:12}" + "".join(f"{x:7.3f}" for x in ms))
    q4 = q[:, :, None]
    cases = {f"triton {name}": (lambda c=c: decode_attention(q, c), c.nbytes) for name, c in caches.items()}
    cases["torch sdpa bf16"] = (lambda: F.scaled_dot_product_attention(q4, k, v), caches["bf16"].nbytes)
    rows = []
    for name, (fn, nbytes) in cases.items():
        ms, ceiling = time_ms(fn)
        rows.append((name, nbytes, ms, nbytes / (ms * 1e-3) / 1e12, ceiling))
    bf16_ms = rows[0][2]
    print(f"device: {device.name}, torch {torch.__version__}, cache {shape.cache_dims} x (K, V)")
    print(f"{'kernel':20} {'cache MiB':>10} {'ms':>8} {'TB/s':>6} {'copy TB/s':>10} {'of copy':>8} {'vs bf16':>8}")
    for name, nbytes, ms, tbps, ceiling in rows:
        print(f"{name:20} {nbytes / 2**20:10.0f} {ms:8.3f} {tbps:6.2f} {ceiling:10.2f} {tbps / ceiling:8.0%} "
              f"{bf16_ms / ms:7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
