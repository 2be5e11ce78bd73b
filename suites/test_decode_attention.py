"""Decode attention over a quantized KV cache against the same attention over the BF16 cache.

Accuracy is against float64 attention over the BF16 cache (the unquantized K and V the decode
would read). On N(0, 1) keys and values the output's SQNR is gated 1 dB under what the format gives
at each size (EXPECTED_SQNR_DB, computed by the CPU reference): an absolute tolerance cannot gate
it, since at 32K tokens the median |output| is 0.006, under any atol a 1K-token run would use. With
four key channels 10x larger (as real K caches have) E4M3's relative step on those channels moves
the scores of a few heads a lot: the SQNR then varied from 15.9 to 20.0 dB between draws of the data
at 32K tokens (CPU reference), so there the cache is held to vLLM's cosine > 0.99 and the SQNR is
reported.
On a GPU the output is the Triton kernel's, which dequantizes inside the kernel, and
the kernel is also held to float64 attention over the very values its cache stores
(relative L2 1e-5), so a kernel bug cannot hide inside the quantization error. On CPU
the quantized cache is dequantized and attended eagerly: the accuracy gates still run.
Speed (GPU): the kernel over the BF16 cache against the same kernel over the quantized
cache, at batch 8, 32 heads, head_dim 128, 32K tokens, where decode is memory-bound. The speed tests
allocate their caches in new expandable segments (and check they do): in plain segments the same kernel
read the same cache up to 15% slower or faster depending on what earlier tests in the process had
allocated and freed, and a gate must time the kernel, not that history
(lowprec_workloads/allocator_settings.py, docs/measurements/decode-kernels-h200-2026-12-01.md).
"""

from __future__ import annotations

import pytest
import torch

from lowprec_workloads.allocator_settings import expandable_segments, outside_expandable_segments
from lowprec_workloads.decode_attention import (
    CACHES,
    DecodeShape,
    attend,
    attend_cache,
    build_cache,
    decode_work,
    format_bytes,
    make_inputs,
)
from pytest_lowprec.formats.metrics import cosine, rel_l2, sqnr_db

CPU_SHAPE = DecodeShape(batch=2, heads=4, seq=1024, head_dim=128)
GPU_SHAPE = DecodeShape(batch=8, heads=32, seq=32768, head_dim=128)
OUTLIER_CHANNELS = {"normal": 0, "outlier_keys": 4}
# SQNR (dB) of attention over each quantized cache against float64 over the BF16 cache, N(0, 1) keys and
# values, as the CPU reference (dequantize, then float32 attention) gives it: at CPU_SHAPE on its own
# data, and at 32K tokens over 16 heads (make_inputs' draws on the CPU: two draws gave 27.97-28.16 dB
# and 20.03-20.49 dB; the GPU draws its own data). test_expected_sqnr_is_what_the_reference_gives
# recomputes the CPU_SHAPE entries.
EXPECTED_SQNR_DB = {(1024, "fp8"): 28.62, (1024, "fp8k_nvfp4v"): 20.66,
                    (32768, "fp8"): 28.16, (32768, "fp8k_nvfp4v"): 20.03}
MARGIN_DB = 1.0
PRECISION = {"bf16": "bf16", "fp8": "fp8", "fp8k_nvfp4v": "nvfp4"}
# Fractions of the bytes model's speedup (about 2.0x for FP8, 2.56x for FP8 K / NVFP4 V; which the kernel
# reaches on each GPU is in docs/measurements/gate-expectations-h200-2026-11-30.md): FP8 reached 0.97 of it on the H100
# and 0.89-0.93 on the H200; FP8 K / NVFP4 V 0.85 and 0.62-0.69 with the H100's CUDA-core tiles. With the
# H200's tensor-core tiles (2026-12-01, benchmarks/decode_attention_variants.py) 0.95 and 0.80, and in the
# gate with the caches in expandable segments 0.94 and 0.81; once the NVFP4 decode took one multiply
# (d65d9d4) the gate gave 0.94-0.95 and 0.90-0.91. FP8 K / NVFP4 V's fraction sits 10% under the lowest
# of the two GPUs.
FRACTION = {"fp8": 0.8, "fp8k_nvfp4v": 0.72}
# NVFP4 V over FP8 V is claimed faster: at least 1.0, and 0.85 of the bytes model (1.28x), which the H100
# met (0.87) and the H200 barely does (0.70-0.75 with the H100's tiles; with its own tensor-core tiles
# 0.84-0.86: 1.078x in the sweep, 1.090-1.096x in the gate with the caches in expandable segments,
# 2026-12-01, against a 1.087x floor; 0.93-0.95 since d65d9d4's one-multiply decode: 1.187-1.218x). The
# fraction stays: where the kernel is not faster than that, the test should fail.
NVFP4_OVER_FP8_FRACTION = 0.85
KERNEL = r"_decode_partial_kernel"
# A dequantize-then-attend path would launch elementwise conversion kernels on the optimized side.
ELEMENTWISE = r"elementwise_kernel"


def _cache_param(name: str):
    return pytest.param(name, marks=pytest.mark.lowprec(precision=PRECISION[name]))


def _attend_fast(lowprec, q, cache):
    if not lowprec.on_cuda:
        return attend_cache(q, cache, torch.float32)
    from lowprec_workloads.decode_attention_triton import decode_attention

    return decode_attention(q, cache)


def _timed_caches(lowprec, first: str, second: str):
    """(q, the `first` cache, the `second` cache) over GPU_SHAPE's outlier-key data, for a speed test: the caches
    in new expandable segments (the module docstring), checked there, and the kernel run once over each so
    that neither side's first call (Triton's compile) is timed."""
    from lowprec_workloads.decode_attention_triton import decode_attention

    shape = GPU_SHAPE
    lowprec.signature(dims=str(shape.cache_dims), kernel="triton split-k", caches="expandable segments",
                      combine="fused, one workspace a side")
    with expandable_segments(lowprec.device):
        q, k, v = make_inputs(shape, lowprec.device, seed=11, outlier_channels=4)
        caches = build_cache(k, v, first), build_cache(k, v, second)
        del k, v
    tensors = [t for cache in caches for kv in (cache.k, cache.v) for t in kv.tensors]
    outside = outside_expandable_segments(tensors)
    assert not outside, f"decode cache tensors outside an expandable segment: {'; '.join(outside)}"
    for cache in caches:
        decode_attention(q, cache)
    return (q, *caches)


@pytest.mark.parametrize("keys", ["normal", "outlier_keys"])
@pytest.mark.parametrize("name", [_cache_param(n) for n in CACHES])
def test_decode_attention_accuracy(lowprec, name, keys):
    shape = GPU_SHAPE if lowprec.on_cuda else CPU_SHAPE
    outliers = OUTLIER_CHANNELS[keys]
    lowprec.signature(dims=str(shape.cache_dims), seed=11, outlier_key_channels=outliers,
                      path="triton" if lowprec.on_cuda else "eager")
    q, k, v = make_inputs(shape, lowprec.device, seed=11, outlier_channels=outliers)
    cache = build_cache(k, v, name)
    out = _attend_fast(lowprec, q, cache)
    reference = attend(q, k, v)  # float64 over the BF16 cache
    if lowprec.on_cuda:
        own = attend_cache(q, cache)  # float64 over the values this cache stores
        lowprec.accuracy("kernel_rel_l2_vs_its_cache", rel_l2(own, out), max=1e-5)
    lowprec.info("max_abs_error_vs_bf16", (out.double() - reference).abs().max())
    if name == "bf16":
        return
    if keys == "normal":
        expected = EXPECTED_SQNR_DB[shape.seq, name]
        lowprec.accuracy("sqnr_db_vs_bf16", sqnr_db(reference, out), min=expected - MARGIN_DB)
    else:
        lowprec.info("sqnr_db_vs_bf16", sqnr_db(reference, out), "dB")
        lowprec.accuracy("cosine_vs_bf16", cosine(reference, out), min=0.99)


@pytest.mark.lowprec(device="cuda")
@pytest.mark.parametrize("name", [_cache_param(n) for n in FRACTION])
def test_decode_attention_speed(lowprec, name):
    from lowprec_workloads.decode_attention_triton import DecodeWorkspace, decode_attention

    shape = GPU_SHAPE
    q, bf16, low = _timed_caches(lowprec, "bf16", name)
    lowprec.memory("cache_bytes", low.nbytes, max=format_bytes(shape, name))
    lowprec.info("bytes_over_bf16", low.nbytes / bf16.nbytes)
    floor = lowprec.expect(decode_work(q, bf16), decode_work(q, low), fraction=FRACTION[name],
                           why="docs/measurements/gate-expectations-h200-2026-11-30.md")
    on_bf16, on_low = DecodeWorkspace(), DecodeWorkspace()  # each side's own, kept across calls as a decode step's
    lowprec.speedup(baseline=lambda: decode_attention(q, bf16, workspace=on_bf16),
                    optimized=lambda: decode_attention(q, low, workspace=on_low), min=floor, graphs=True)
    lowprec.expect_kernels("optimized", require=KERNEL, forbid=ELEMENTWISE)
    lowprec.work(nbytes=low.nbytes + q.numel() * q.element_size())


@pytest.mark.lowprec(device="cuda", precision="nvfp4")
def test_nvfp4_values_decode_faster_than_fp8(lowprec):
    """The cache a quarter smaller than FP8's must also be read faster, not just stored smaller."""
    from lowprec_workloads.decode_attention_triton import DecodeWorkspace, decode_attention

    q, fp8, nvfp4 = _timed_caches(lowprec, "fp8", "fp8k_nvfp4v")
    lowprec.info("bytes_over_fp8", nvfp4.nbytes / fp8.nbytes)
    floor = lowprec.expect(decode_work(q, fp8), decode_work(q, nvfp4), fraction=NVFP4_OVER_FP8_FRACTION,
                           faster=True, why="docs/measurements/gate-expectations-h200-2026-11-30.md")
    on_fp8, on_nvfp4 = DecodeWorkspace(), DecodeWorkspace()
    lowprec.speedup(baseline=lambda: decode_attention(q, fp8, workspace=on_fp8),
                    optimized=lambda: decode_attention(q, nvfp4, workspace=on_nvfp4), min=floor, graphs=True)


@pytest.mark.parametrize("name", ["fp8", "fp8k_nvfp4v"])
def test_expected_sqnr_is_what_the_reference_gives(name):
    """The floors' anchor, recomputed: the CPU reference on CPU_SHAPE's own data."""
    q, k, v = make_inputs(CPU_SHAPE, "cpu", seed=11)
    got = sqnr_db(attend(q, k, v), attend_cache(q, build_cache(k, v, name), torch.float32))
    assert got == pytest.approx(EXPECTED_SQNR_DB[CPU_SHAPE.seq, name], abs=0.01)
