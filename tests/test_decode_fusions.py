"""The decode step's fused kernels (lowprec_workloads/decode_fusions.py): each gives the eager path's values
(only the sum of squares' order and the exp and rsqrt instructions differ: a few units in float32's last
place, so at most one in a 16-bit dtype's, MAX_ULPS), writes the E4M3 scale the FP8 quantizer takes from
the same tensor, and an FP8 GEMV given that scale gives the bits it gives when it takes its own amax
(tests/test_fp8_linear.py).

On the CPU the kernels run in Triton's interpreter, in one child process for the module; the CUDA tests
run them compiled, in the decode step, where a GPU exists.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lowprec_workloads import decode_fusions
from lowprec_workloads.transformer_block import rms_norm
from pytest_lowprec.formats.fp8 import _scale_from_amax

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
interpreter = pytest.mark.slow  # the interpreter's child process takes seconds: `pytest tests/ --slow`
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Against the eager path, in units of the output dtype's last place (at the eager value's magnitude):
# float32's exp, rsqrt and division differ by an ulp or two each (2.1 measured for SwiGLU, 2026-12-02).
MAX_ULPS = {"float32": 4.0, "bfloat16": 1.0, "float16": 1.0}


def _activations(width: int, rows: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(12)
    return {"h": torch.randn(rows, width, generator=g) * 3, "delta": torch.randn(rows, width, generator=g),
            "weight": 1 + 0.1 * torch.randn(width, generator=g), "gate": torch.randn(rows, 3 * width, generator=g) * 4,
            "up": torch.randn(rows, 3 * width, generator=g)}


def _jobs() -> dict[str, tuple[str, tuple, dict]]:
    a = _activations(300)  # not a power of two: the masked lanes must not reach the sums or the amax
    calls = {}
    for name, dtype in DTYPES.items():
        h = a["h"].to(dtype)
        calls[f"norm-{name}"] = ("add_rms_norm", (h, a["weight"]), {"fp8_scale": True})
        calls[f"add-norm-{name}"] = ("add_rms_norm", (h, a["weight"], a["delta"]), {"fp8_scale": True})
        # Two calls on one workspace, the second's amax smaller: the first must leave it at zero.
        workspace = decode_fusions.SwigluWorkspace("cpu")
        calls[f"swiglu-{name}"] = ("swiglu", (a["gate"], a["up"], dtype), {"workspace": workspace})
        calls[f"swiglu-again-{name}"] = ("swiglu", (a["gate"] / 4, a["up"], dtype), {"workspace": workspace})
    return calls


@pytest.fixture(scope="module")
def interpreted() -> dict:
    """Each case's result, the kernels run once by Triton's interpreter."""
    calls = _jobs()
    return dict(zip(calls, decode_fusions.interpreted(list(calls.values())), strict=True))


def _ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in units of the last place of a's dtype, at b's magnitude."""
    spacing = torch.finfo(a.dtype).eps * b.float().abs().clamp_min(torch.finfo(a.dtype).tiny)
    return (a.float() - b.float()).abs() / spacing


def _eager_norm(h, weight, delta=None):
    h = h if delta is None else h + delta.to(h.dtype)
    return h, rms_norm(h, weight, h.dtype)


@interpreter
@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("with_delta", [False, True], ids=["norm", "add-norm"])
def test_add_rms_norm_gives_the_eager_residual_and_norm(interpreted, dtype, with_delta):
    a = _activations(300)
    h, weight = a["h"].to(DTYPES[dtype]), a["weight"]
    h_new, normed, _ = interpreted[f"{'add-norm' if with_delta else 'norm'}-{dtype}"]
    eager_h, eager_normed = _eager_norm(h, weight, a["delta"] if with_delta else None)
    assert h_new.dtype == normed.dtype == DTYPES[dtype]
    assert torch.equal(h_new, eager_h)  # one rounded add: the same bits
    assert _ulps(normed, eager_normed).max() <= MAX_ULPS[dtype]


@interpreter
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_swiglu_gives_the_eager_gate_in_its_dtype(interpreted, dtype):
    a = _activations(300)
    out, _ = interpreted[f"swiglu-{dtype}"]
    assert out.dtype == DTYPES[dtype]
    assert _ulps(out, (F.silu(a["gate"]) * a["up"]).to(DTYPES[dtype])).max() <= MAX_ULPS[dtype]


@interpreter
@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("case", ["norm", "add-norm", "swiglu", "swiglu-again"])
def test_fused_kernels_write_the_scale_the_fp8_quantizer_takes_from_their_output(interpreted, dtype, case):
    *_, out, scale = interpreted[f"{case}-{dtype}"]
    expected = _scale_from_amax(out.detach().abs().amax(), torch.float8_e4m3fn)
    assert scale.dtype == torch.float32 and torch.equal(scale.view(torch.int32), expected.view(torch.int32))


def test_fused_kernels_refuse_cpu_tensors_outside_the_interpreter():
    with pytest.raises(ValueError, match="add_rms_norm runs on CUDA tensors"):
        decode_fusions.add_rms_norm(torch.zeros(1, 8), torch.ones(8))
    with pytest.raises(ValueError, match="swiglu runs on CUDA tensors"):
        decode_fusions.swiglu(torch.zeros(1, 8), torch.zeros(1, 8), torch.float32)


def test_only_a_decode_sized_activation_is_fused():
    assert decode_fusions.fits(1, 4096, row_at_once=True) and decode_fusions.fits(1, 14336, row_at_once=False)
    assert not decode_fusions.fits(64, 4096, row_at_once=True)  # a prefill: eager
    assert not decode_fusions.fits(1, 32768, row_at_once=True)  # a row wider than a program holds


def test_fused_work_counts_each_tensor_once_and_one_launch():
    assert decode_fusions.add_rms_norm_work(1, 4096, 4, None).nbytes == 4096 * 8 + 4096 * 4
    assert decode_fusions.add_rms_norm_work(1, 4096, 4, 4).nbytes == 4096 * 16 + 4096 * 4
    assert decode_fusions.swiglu_work(14336, 4, 2).nbytes == 14336 * 10
    assert {decode_fusions.swiglu_work(8, 4, 4).kernels, decode_fusions.add_rms_norm_work(1, 8, 4, 4).kernels} == {1}


# -- on a GPU ------------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("strategy", ["fp16_baseline", "fp8_balanced", "hybrid_long_context", "w4a16_aggressive"])
def test_fused_decode_step_gives_the_eager_steps_logits_on_cuda(strategy):
    from lowprec_workloads.nvfp4_gemm import CudaKernels
    from lowprec_workloads.strategies import builtin_strategies
    from lowprec_workloads.transformer_block import BlockShape, DecodeStep, Weights

    shape = BlockShape(d=512, heads=4, ffn=1536, layers=2, vocab=512, batch=1, context=1024)
    weights = Weights.random(shape, "cuda:0", seed=11)
    step = DecodeStep(weights, shape, builtin_strategies()[strategy], CudaKernels(torch.device("cuda:0")))
    assert step.fused
    fused = step()
    step.fused = False  # the same weights, caches and kernels, the eager norms and gates
    eager = step()
    # One unit in float32's last place in a norm can move an FP8 activation code by one step; the logits
    # stay within a small fraction of their spread.
    assert (fused - eager).abs().max() <= 1e-2 * eager.std()


@needs_cuda
def test_fused_decode_step_replays_from_a_cuda_graph_with_the_same_bits():
    """The SwiGLU workspace and the GEMVs' split-K counters are back at zero after every call, replays too."""
    from lowprec_workloads.nvfp4_gemm import CudaKernels
    from lowprec_workloads.strategies import builtin_strategies
    from lowprec_workloads.transformer_block import BlockShape, DecodeStep, Weights

    shape = BlockShape(d=512, heads=4, ffn=1536, layers=2, vocab=512, batch=1, context=1024)
    step = DecodeStep(Weights.random(shape, "cuda:0", seed=11), shape, builtin_strategies()["fp8_balanced"],
                      CudaKernels(torch.device("cuda:0")))
    direct = step()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        step()
        with torch.cuda.graph(graph, stream=stream):
            captured = step()
    torch.cuda.current_stream().wait_stream(stream)
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(captured, direct)
