"""The decode step's fused kernels (lowprec_workloads/decode_fusions.py): each gives the eager path's values
(only the sum of squares' order and the exp and rsqrt instructions differ: a few units in float32's last
place, so at most one in a 16-bit dtype's, MAX_ULPS), writes the E4M3 scale the FP8 quantizer takes from
the same tensor, and an FP8 GEMV given that scale gives the bits it gives when it takes its own amax
(tests/test_fp8_linear.py).

On the CPU the kernels run in Triton's interpreter, in one child process for the module; the CUDA tests
run them compiled, in the decode step, where a GPU exists.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from decode_steps import gpu_step

from lowprec_workloads import decode_fusions
from lowprec_workloads.transformer_block import rms_norm
from pytest_lowprec.formats.fp8 import _scale_from_amax

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
interpreter = pytest.mark.slow  # the interpreter's child process takes seconds: `pytest tests/ --slow`
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Against the eager path, in units of the output dtype's last place (at the eager value's magnitude):
# float32's exp, rsqrt and division differ by an ulp or two each (2.1 measured for SwiGLU, 2026-12-02).
MAX_ULPS = {"float32": 4.0, "bfloat16": 1.0, "float16": 1.0}
COPY_DTYPES = ("bfloat16", "float16")


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
    for name in COPY_DTYPES:  # the float32 step's output, and a copy in the dtype a linear after it reads
        calls[f"norm-copy-{name}"] = ("add_rms_norm", (a["h"], a["weight"], a["delta"]),
                                      {"fp8_scale": True, "copy_dtype": DTYPES[name]})
        calls[f"swiglu-copy-{name}"] = ("swiglu", (a["gate"], a["up"], torch.float32), {"copy_dtype": DTYPES[name]})
    # Asked for a programmatic launch, the interpreter runs the ordinary one.
    calls["add-norm-programmatic"] = ("add_rms_norm", (a["h"], a["weight"], a["delta"]),
                                      {"fp8_scale": True, "programmatic": True})
    calls["swiglu-programmatic"] = ("swiglu", (a["gate"], a["up"], torch.float32),
                                    {"workspace": decode_fusions.SwigluWorkspace("cpu"), "programmatic": True})
    for edge, (h, gate) in _edges(a).items():
        calls[f"norm-{edge}"] = ("add_rms_norm", (h, a["weight"]), {"fp8_scale": True})
        calls[f"swiglu-{edge}"] = ("swiglu", (gate, a["up"], torch.float32),
                                   {"workspace": decode_fusions.SwigluWorkspace("cpu")})
    return calls


def _edges(a: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(h, gate) whose amax is an edge of the scale: all zeros (scale 1), a NaN (NaN), an Inf."""
    nan_h, nan_gate, inf_gate = a["h"].clone(), a["gate"].clone(), a["gate"].clone()
    nan_h[1, 7], nan_gate[0, 5], inf_gate[1, 9] = float("nan"), float("nan"), float("inf")
    return {"zeros": (torch.zeros_like(a["h"]), torch.zeros_like(a["gate"])), "nan": (nan_h, nan_gate),
            "inf": (a["h"], inf_gate)}


def _same(a: torch.Tensor, b: torch.Tensor, max_ulps: float = 0.0) -> bool:
    """NaN where b has NaN (a payload is the arithmetic's, not torch's canonical one), infinities equal, and
    the finite values within `max_ulps` of b's."""
    finite = torch.isfinite(b)
    return (torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(a[torch.isinf(b)], b[torch.isinf(b)])
            and bool((_ulps(a[finite], b[finite]) <= max_ulps).all()))


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
    h_new, normed, _, _ = interpreted[f"{'add-norm' if with_delta else 'norm'}-{dtype}"]
    eager_h, eager_normed = _eager_norm(h, weight, a["delta"] if with_delta else None)
    assert h_new.dtype == normed.dtype == DTYPES[dtype]
    if with_delta:
        assert torch.equal(h_new, eager_h)  # one rounded add: the same bits
    assert _ulps(normed, eager_normed).max() <= MAX_ULPS[dtype]


@interpreter
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_swiglu_gives_the_eager_gate_in_its_dtype(interpreted, dtype):
    a = _activations(300)
    out, _, _ = interpreted[f"swiglu-{dtype}"]
    assert out.dtype == DTYPES[dtype]
    assert _ulps(out, (F.silu(a["gate"]) * a["up"]).to(DTYPES[dtype])).max() <= MAX_ULPS[dtype]


@interpreter
@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("case", ["norm", "add-norm", "swiglu", "swiglu-again"])
def test_fused_kernels_write_the_scale_the_fp8_quantizer_takes_from_their_output(interpreted, dtype, case):
    out, scale = interpreted[f"{case}-{dtype}"][-3:-1]
    expected = _scale_from_amax(out.detach().abs().amax(), torch.float8_e4m3fn)
    assert scale.dtype == torch.float32 and torch.equal(scale.view(torch.int32), expected.view(torch.int32))


@interpreter
@pytest.mark.parametrize("edge", ["zeros", "nan", "inf"])
@pytest.mark.parametrize("kernel", ["norm", "swiglu"])
def test_fused_kernels_on_edge_inputs_give_the_eager_values_and_the_quantizers_scale(interpreted, kernel, edge):
    a = _activations(300)
    h, gate = _edges(a)[edge]
    out, scale = interpreted[f"{kernel}-{edge}"][-3:-1]
    eager = _eager_norm(h, a["weight"])[1] if kernel == "norm" else F.silu(gate) * a["up"]
    assert _same(out, eager, MAX_ULPS["float32"])
    assert _same(scale, _scale_from_amax(out.abs().amax(), torch.float8_e4m3fn))
    assert edge != "zeros" or scale == 1.0


@interpreter
@pytest.mark.parametrize("copy", COPY_DTYPES)
@pytest.mark.parametrize("kernel", ["norm", "swiglu"])
def test_fused_kernels_write_the_copy_a_cast_of_their_output_gives(interpreted, kernel, copy):
    result = interpreted[f"{kernel}-copy-{copy}"]
    out, copied = result[-3], result[-1]
    assert copied.dtype == DTYPES[copy] and torch.equal(copied, out.to(DTYPES[copy]))


@pytest.mark.parametrize(("asked", "ordinary"), [("add-norm-programmatic", "add-norm-float32"),
                                                 ("swiglu-programmatic", "swiglu-float32")])
def test_a_programmatic_launch_asked_of_the_interpreter_gives_the_ordinary_launchs_bits(interpreted, asked, ordinary):
    assert all(_same(got, want) for got, want in zip(interpreted[asked], interpreted[ordinary], strict=True)
               if isinstance(got, torch.Tensor))


def test_fused_kernels_refuse_a_copy_in_a_dtype_no_linear_reads():
    with pytest.raises(ValueError, match="copy_dtype takes torch.float32, torch.bfloat16, torch.float16 or None"):
        decode_fusions.add_rms_norm(torch.zeros(1, 8), torch.ones(8), copy_dtype=torch.int8)
    with pytest.raises(ValueError, match="copy_dtype takes"):
        decode_fusions.swiglu(torch.zeros(1, 8), torch.zeros(1, 8), torch.float32, copy_dtype=torch.float8_e4m3fn)


def test_fused_kernels_refuse_cpu_tensors_outside_the_interpreter():
    with pytest.raises(ValueError, match="add_rms_norm runs on CUDA tensors"):
        decode_fusions.add_rms_norm(torch.zeros(1, 8), torch.ones(8))
    with pytest.raises(ValueError, match="swiglu runs on CUDA tensors"):
        decode_fusions.swiglu(torch.zeros(1, 8), torch.zeros(1, 8), torch.float32)


def _on_a_gpu_of(monkeypatch, capability: tuple[int, int]):
    """A stand-in for a tensor on cuda:0 of `capability`, for _launch_options' rule on a machine without one."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.version, "hip", None)
    return SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0))


def test_the_fused_kernels_launch_programmatically_where_asked_on_hopper(monkeypatch):
    monkeypatch.setattr(decode_fusions, "interpreting", lambda: False)
    on = _on_a_gpu_of(monkeypatch, (9, 0))
    assert decode_fusions._launch_options(True, on) == {"PROGRAMMATIC": True, "launch_pdl": True}
    assert decode_fusions._launch_options(False, on) == {"PROGRAMMATIC": False}


@pytest.mark.parametrize("why", ["interpreter", "pre-hopper", "cpu"])
def test_the_fused_kernels_launch_in_order_where_a_programmatic_launch_cannot_be(monkeypatch, why):
    # Triton's interpreter has no griddepcontrol; ptxas refuses it below sm_90.
    monkeypatch.setattr(decode_fusions, "interpreting", lambda: why == "interpreter")
    on = torch.zeros(1) if why == "cpu" else _on_a_gpu_of(monkeypatch, (8, 9) if why == "pre-hopper" else (9, 0))
    assert decode_fusions._launch_options(True, on) == {"PROGRAMMATIC": False}


def test_only_a_decode_sized_activation_is_fused():
    assert decode_fusions.fits(1, 4096) and decode_fusions.fits(4, 14336)
    assert not decode_fusions.fits(64, 4096)  # a prefill: eager
    assert not decode_fusions.fits(1, 32768)  # a row wider than the norm's program holds


def test_fused_kernels_refuse_tensors_of_the_wrong_shape():
    with pytest.raises(ValueError, match="weight must be \\[8\\], one per column of h, got \\(4,\\)"):
        decode_fusions.add_rms_norm(torch.zeros(1, 8), torch.ones(4))
    with pytest.raises(ValueError, match="delta must be h's shape \\(1, 8\\), got \\(2, 8\\)"):
        decode_fusions.add_rms_norm(torch.zeros(1, 8), torch.ones(8), torch.zeros(2, 8))
    with pytest.raises(ValueError, match="swiglu takes gate and up of one shape"):
        decode_fusions.swiglu(torch.zeros(1, 8), torch.zeros(1, 4), torch.float32)


def test_fused_work_counts_each_tensor_once_and_one_launch():
    assert decode_fusions.add_rms_norm_work(1, 4096, 4, None).nbytes == 4096 * 8 + 4096 * 4
    assert decode_fusions.add_rms_norm_work(1, 4096, 4, 4).nbytes == 4096 * 16 + 4096 * 4
    assert decode_fusions.swiglu_work(14336, 4, 2, 2).nbytes == 14336 * 8  # a float32 gate, a bfloat16 up
    assert {decode_fusions.swiglu_work(8, 4, 4, 4).kernels, decode_fusions.add_rms_norm_work(1, 8, 4, 4).kernels} == {1}


def test_fused_work_counts_a_copy_as_one_more_output():
    assert decode_fusions.add_rms_norm_work(1, 4096, 4, 4, 2).nbytes == 4096 * 18 + 4096 * 4
    assert decode_fusions.swiglu_work(14336, 4, 4, 4, 2).nbytes == 14336 * 14


# -- on a GPU ------------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("strategy", ["fp16_baseline", "fp8_balanced", "hybrid_long_context", "w4a16_aggressive"])
def test_fused_decode_step_gives_the_eager_steps_logits_on_cuda(strategy):
    fused, eager = gpu_step(strategy), gpu_step(strategy, fuse=False)
    assert fused.fused and not eager.fused
    fused_logits, eager_logits = fused(), eager()
    # One unit in float32's last place in a norm can move an FP8 activation code by one step; the logits
    # stay within a small fraction of their spread.
    assert (fused_logits - eager_logits).abs().max() <= 1e-2 * eager_logits.std()


@needs_cuda
@pytest.mark.parametrize("strategy", ["fp8_balanced", "hybrid_long_context", "layerwise_gradient"])
def test_fp8_gemvs_given_their_inputs_scales_give_the_bits_of_their_own_amax_passes_on_cuda(strategy):
    assert torch.equal(gpu_step(strategy)(), gpu_step(strategy, fp8_scales=False)())


@needs_cuda
@pytest.mark.parametrize("strategy", ["fp16_baseline", "w4a16_aggressive", "nvfp4_weights", "layerwise_gradient"])
def test_linears_given_their_inputs_copies_give_the_bits_of_their_own_casts_on_cuda(strategy):
    with_copies, without = gpu_step(strategy), gpu_step(strategy, copies=False)
    assert any(c.attn is not None for c in with_copies._copies_for)
    assert torch.equal(with_copies(), without())


@needs_cuda
@pytest.mark.parametrize("strategy", ["fp16_baseline", "fp8_balanced", "hybrid_long_context", "w4a16_aggressive",
                                      "nvfp4_weights"])
def test_fused_decode_step_declares_every_kernel_it_launches_on_cuda(strategy):
    """The hardware model's kernel count (launch latency) is the profiler's: a fused launch declared once."""
    step = gpu_step(strategy)
    step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    launched = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    assert sum(w.kernels for w in step.work()) == launched


@needs_cuda
@pytest.mark.parametrize("strategy", ["fp16_baseline", "fp8_balanced", "hybrid_long_context", "layerwise_gradient",
                                      "w4a16_aggressive", "nvfp4_weights"])
def test_a_decode_step_of_programmatic_launches_gives_the_ordinary_launches_logits_on_cuda(strategy):
    """The step's wiring (every kernel of a programmatic step takes what the ordinary step's does); whether each
    launch waits for the one before is the chain tests' (below, and the GEMV's and NVFP4 linear's own)."""
    expected = gpu_step(strategy, programmatic=False)()
    programmatic = gpu_step(strategy)
    for _ in range(3):
        assert torch.equal(programmatic(), expected)


@needs_cuda
@pytest.mark.parametrize("kernel", ["norm", "swiglu"])
def test_a_programmatic_fused_launch_waits_for_the_gemv_that_writes_its_input_on_cuda(kernel):
    # The FP8 GEMV before it lets the next launch start once its own wait returns, then streams its weight for
    # several microseconds and writes its output last, over NaN: a fused launch that read it early would differ.
    from lowprec_workloads.fp8_gemv_cuda import TILES, Fp8GemvKernels
    from pytest_lowprec.formats.fp8 import quantize_tensorwise

    g = torch.Generator().manual_seed(14)
    width, k = 4096, 4096
    wq, w_inv = (t.cuda() for t in quantize_tensorwise(torch.randn(2 * width, k, generator=g) / k**0.5))
    x, h, weight = (torch.randn(*shape, generator=g).cuda() for shape in ((1, k), (1, width), (width,)))
    cuda = Fp8GemvKernels("cuda")
    produced = torch.empty(1, 2 * width, device="cuda")

    def call(programmatic: bool) -> tuple[torch.Tensor, ...]:
        produced.fill_(float("nan"))
        cuda.gemv(x, wq, w_inv, TILES[1], produced, programmatic=programmatic)
        if kernel == "norm":
            return decode_fusions.add_rms_norm(h, weight, produced[:, :width], programmatic=programmatic)[:2]
        return decode_fusions.swiglu(produced[:, :width], produced[:, width:], torch.float32,
                                     programmatic=programmatic)[:1]

    expected = call(False)
    for _ in range(3):
        assert all(torch.equal(got, want) for got, want in zip(call(True), expected, strict=True))


@needs_cuda
def test_a_gpu_decode_step_launches_programmatically_unless_told_not_to():
    assert gpu_step("fp8_balanced").programmatic and not gpu_step("fp8_balanced", programmatic=False).programmatic


@needs_cuda
def test_fused_decode_step_replays_from_a_cuda_graph_with_the_same_bits():
    """The SwiGLU workspace and the GEMVs' split-K counters are back at zero after every call, replays too."""
    step = gpu_step("fp8_balanced")
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


@needs_cuda
@pytest.mark.parametrize("kernel", ["norm", "swiglu"])
def test_fused_kernels_on_cuda_give_the_eager_values_to_a_few_float32_units(kernel):
    """libdevice's exp and rsqrt, as torch's kernels call them: gates out to 16 standard deviations."""
    g = torch.Generator().manual_seed(14)
    if kernel == "norm":
        h = (torch.randn(1, 4096, generator=g) * 3).cuda()
        weight, delta = (1 + torch.randn(4096, generator=g)).cuda(), torch.randn(1, 4096, generator=g).cuda()
        _, out, _, _ = decode_fusions.add_rms_norm(h, weight, delta)
        eager = _eager_norm(h, weight, delta)[1]
    else:
        gate, up = (torch.randn(1, 14336, generator=g) * 16).cuda(), torch.randn(1, 14336, generator=g).cuda()
        out, _, _ = decode_fusions.swiglu(gate, up, torch.float32)
        eager = F.silu(gate) * up
    assert _ulps(out, eager).max() <= MAX_ULPS["float32"]
