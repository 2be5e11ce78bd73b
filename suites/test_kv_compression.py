"""KV cache compression: bytes saved, batch that fits a budget, and dequantization error, per format.

Errors are against the BF16 cache itself (the values a BF16 decode reads). FP8 is held to
vLLM's dequantization tolerance (|x - y| <= 1e-3 + 0.1 |x|, every element); NVFP4 by cosine; both by
SQNR 1 dB under what the format gives on this data (EXPECTED_SQNR_DB).
"""

from __future__ import annotations

import pytest
import torch

from lowprec_workloads.kv_compression import CacheShape, cache_bytes, kv_data, largest_batch, store
from pytest_lowprec import precisions
from pytest_lowprec.formats import bounds
from pytest_lowprec.formats.metrics import cosine, sqnr_db

CPU_SHAPE = CacheShape(batch=2, layers=2, heads=4, seq=256, head_dim=128)
GPU_SHAPE = CacheShape(batch=8, layers=4, heads=32, seq=4096, head_dim=128)
BUDGET_BYTES = 8 * 2**30  # a KV budget of 8 GiB for the largest-batch figure
# Storage over BF16: FP8 halves it (scales are one float per head); NVFP4 stores 4.5 bits per element.
MIN_SAVING = {"fp8": 1.99, "nvfp4": 3.5}
# Each cache format is also the name of its precision in the registry.
KV_FORMATS = [pytest.param(f, marks=pytest.mark.lowprec(precision=precisions.get(f).name)) for f in ("fp8", "nvfp4")]
# What each format gives on kv_data's keys (four channels 10x larger) and values, computed by the reference
# quantizers on the CPU shape (kv_data seed 5); test_expected_sqnr_is_what_the_reference_gives recomputes them.
EXPECTED_SQNR_DB = {("fp8", "k"): 31.50, ("fp8", "v"): 31.54, ("nvfp4", "k"): 20.43, ("nvfp4", "v"): 20.43}


def _shape(lowprec) -> CacheShape:
    return GPU_SHAPE if lowprec.on_cuda else CPU_SHAPE


@pytest.mark.lowprec
@pytest.mark.parametrize("fmt", KV_FORMATS)
def test_kv_cache_bytes_and_batch_that_fits(lowprec, fmt):
    shape = _shape(lowprec)
    lowprec.signature(dims=str(shape.dims), budget_bytes=BUDGET_BYTES)
    bf16, low = cache_bytes(shape, "bf16"), cache_bytes(shape, fmt)
    lowprec.memory("cache_bytes", low, max=bf16 / MIN_SAVING[fmt])
    lowprec.accuracy("saving_over_bf16", bf16 / low, min=MIN_SAVING[fmt])
    base_batch, low_batch = largest_batch(BUDGET_BYTES, shape, "bf16"), largest_batch(BUDGET_BYTES, shape, fmt)
    lowprec.info("bf16_batch_in_budget", base_batch)
    lowprec.accuracy("batch_in_budget_over_bf16", low_batch / base_batch, min=MIN_SAVING[fmt] * 0.95)


@pytest.mark.lowprec
@pytest.mark.parametrize("fmt", KV_FORMATS)
def test_kv_cache_dequantization_error(lowprec, fmt):
    shape = _shape(lowprec)
    lowprec.signature(dims=str(shape.dims), seed=5, outlier_key_channels=4)
    k, v = kv_data(shape, lowprec.device, seed=5)
    for name, x in (("k", k), ("v", v)):
        ref = x.float()
        y = store(x, fmt).dequantize()
        if fmt == "fp8":
            outside = int((((ref - y).abs()) > 1e-3 + 0.1 * ref.abs()).sum())
            lowprec.accuracy(f"{name}_elements_outside_atol_rtol", outside, max=0)
        else:
            lowprec.accuracy(f"{name}_cosine", cosine(ref, y), min=0.99)
        lowprec.accuracy(f"{name}_sqnr_db", sqnr_db(ref, y), min=EXPECTED_SQNR_DB[fmt, name] - bounds.MARGIN_DB)


@pytest.mark.lowprec(device="cuda")
@pytest.mark.parametrize("fmt", KV_FORMATS)
def test_kv_cache_allocated_bytes_on_the_gpu(lowprec, fmt):
    """What the allocator hands out for the stored cache, against the BF16 cache's."""
    shape = GPU_SHAPE
    lowprec.signature(dims=str(shape.dims))
    k, v = kv_data(shape, lowprec.device, seed=5)
    allocated = {}
    for f in ("bf16", fmt):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        kept = (store(k, f), store(v, f))
        torch.cuda.synchronize()
        allocated[f] = torch.cuda.memory_allocated() - before
        del kept
    lowprec.memory("allocated_cache_bytes", allocated[fmt], max=allocated["bf16"] / (MIN_SAVING[fmt] * 0.98))
    lowprec.accuracy("allocated_saving_over_bf16", allocated["bf16"] / allocated[fmt], min=MIN_SAVING[fmt] * 0.98)


@pytest.mark.parametrize(("fmt", "name"), sorted(EXPECTED_SQNR_DB))
def test_expected_sqnr_is_what_the_reference_gives(fmt, name):
    """The floors' anchor, recomputed: the reference quantizers on CPU_SHAPE's own keys and values."""
    k, v = kv_data(CPU_SHAPE, "cpu", seed=5)
    x = {"k": k, "v": v}[name]
    assert sqnr_db(x.float(), store(x, fmt).dequantize()) == pytest.approx(EXPECTED_SQNR_DB[fmt, name], abs=0.01)
