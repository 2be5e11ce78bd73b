"""FP8 training against BF16: identical weights, data, seeds and number of steps.

The runs differ only in their linears (FP8 `_scaled_mm` against bfloat16
F.linear); both train with torch's AdamW. Both see one poisoned batch (inputs
scaled to overflow) that the loss-scale manager must skip and count. CPU runs a
small stack; the GPU runs the chapter's shape (LayerNorm -> Linear 4096->16384 ->
GELU -> Linear 16384->4096), each FP8 linear alone (fp8_training.Fp8Matmul). The
two fusions, each block's linears and GELU as one function (fp8_training.Fp8Mlp,
FUSE_BLOCKS) and the FP8 weights cast in the optimizer's update (Fp8AdamW,
OPTIMIZER_CASTS), are options, off because they made the H200's step slower
(docs/measurements/fp8-training-step-h200-2026-12-01.md); the signatures name the
path that runs. The plain tests below check the fusions against the unfused path:
bit for bit on the CPU's eager path, the Triton kernels under Triton's interpreter
on the CPU and against torch's CUDA ops on a GPU.
"""

from __future__ import annotations

import statistics

import pytest
import torch

from lowprec_workloads import fp8_training
from lowprec_workloads.fp8_training import (
    E4M3,
    E5M2,
    RECIPE,
    AmaxHistory,
    Fp8AdamW,
    Fp8Matmul,
    Fp8Mlp,
    Fp8Recipe,
    LossScaler,
    Shape,
    Stack,
    WeightAmax,
    adamw,
    batch,
    fusable,
    fused_quantize,
    objective,
    pair,
    quantize_weight,
    step_function,
    train,
    triton_quantizer_work,
)
from pytest_lowprec.formats.fp8 import quantize_tensorwise
from pytest_lowprec.formats.metrics import sqnr_db
from pytest_lowprec.traffic import eager_work

CPU_SHAPE = Shape(d=64, blocks=2, tokens=512, steps=150)
GPU_SHAPE = Shape(d=4096, blocks=2, tokens=4096, steps=150, lr=3e-4)  # lr: see Shape.lr
POISON_STEP = 40
LAST_K = 20
FP8_GEMM_KERNEL = r"nvjet_sm\d+_qq|e4m3|f8f8"
TENSORWISE_CAST_KERNEL = r"_fp8_tensorwise_kernel"  # pytest_lowprec.formats.triton_quant's cast
BLOCK_KERNELS = r"_amax_kernel|_cast_kernel"  # fp8_training_triton's fused block passes
ADAMW_KERNEL = r"_adamw_fp8_kernel"
# The step's floor: a fraction of what the hardware model predicts from each step's operators (read off
# what they dispatch, the Triton quantizers added by hand). Measured over predicted on the H200: 0.978-0.980
# in three processes (docs/measurements/gate-expectations-h200-2026-11-30.md); the floor sits 7% under it, so a 10%
# slower FP8 step fails without a baseline.
STEP_FRACTION = 0.91


def _grads() -> str:
    return "e4m3" if RECIPE.grad_dtype == E4M3 else "e5m2"


def _block() -> str:
    return "fused" if fp8_training.FUSE_BLOCKS else "per linear"


def _weight_cast() -> str:
    return "in the optimizer" if fp8_training.OPTIMIZER_CASTS else "in the forward"


def _shape(lowprec) -> Shape:
    return GPU_SHAPE if lowprec.on_cuda else CPU_SHAPE


@pytest.mark.slow  # a CPU training of minutes: CI runs it with --slow; a GPU run always
@pytest.mark.lowprec(precision="fp8")
def test_fp8_training_final_loss_matches_bf16(lowprec):
    shape = _shape(lowprec)
    lowprec.signature(d=shape.d, blocks=shape.blocks, tokens=shape.tokens, steps=shape.steps,
                      poison_step=POISON_STEP, optimizer=f"adamw {shape.lr:g}, fp8 weights cast {_weight_cast()}",
                      scaling=f"per-tensor, weight amax {RECIPE.weight_amax}, activation amax {RECIPE.activation_amax}",
                      gradients=_grads(), fast_accumulation="+".join(RECIPE.fast_accum),
                      objective="cross-entropy, 64 classes, teacher argmax", block=_block())
    bf16, fp8, teacher = pair(shape, lowprec.device)
    ref, ref_scaler = train(bf16, teacher, shape, lowprec.device, POISON_STEP)
    low, low_scaler = train(fp8, teacher, shape, lowprec.device, POISON_STEP)
    ref_final = statistics.fmean(ref[-LAST_K:])
    low_final = statistics.fmean(low[-LAST_K:])
    lowprec.accuracy("loss_gap", abs(low_final - ref_final) / ref_final, max=0.01)
    # How far training went: a 1% bound means little if the loss never moved.
    lowprec.info("bf16_loss_first_over_last", ref[0] / ref_final)
    lowprec.info("fp8_final_loss", low_final)
    unexpected = sum(len(set(s.skipped) ^ {POISON_STEP}) for s in (ref_scaler, low_scaler))
    lowprec.accuracy("unhandled_or_unexpected_skips", unexpected, max=0)
    bad = sum(int((~torch.isfinite(p)).sum()) for p in fp8.parameters())
    lowprec.accuracy("nonfinite_fp8_weights", bad, max=0)


@pytest.mark.lowprec(precision="fp8")
def test_fp8_weight_gradients_per_layer(lowprec):
    """One step from identical weights on one batch: each layer's FP8 weight gradient against BF16's."""
    shape = _shape(lowprec)
    lowprec.signature(d=shape.d, blocks=shape.blocks, tokens=shape.tokens, gradients=_grads(),
                      fast_accumulation="+".join(RECIPE.fast_accum), weight_amax=RECIPE.weight_amax,
                      activation_amax=RECIPE.activation_amax, block=_block())
    bf16, fp8, teacher = pair(shape, lowprec.device)
    x, y = batch(0, shape, teacher, lowprec.device, None)
    for model in (bf16, fp8):
        objective(model, x, y).backward()
    ref = bf16.linears()
    for name, linear in fp8.linears().items():
        lowprec.accuracy(f"grad_sqnr_db.{name}", sqnr_db(ref[name].weight.grad, linear.weight.grad), min=17.0)


@pytest.mark.lowprec(precision="fp8", device="cuda")
def test_fp8_training_step_speed_and_memory(lowprec):
    shape = GPU_SHAPE
    lowprec.signature(d=shape.d, blocks=shape.blocks, tokens=shape.tokens, optimizer="adamw fused", gradients=_grads(),
                      fast_accumulation="+".join(RECIPE.fast_accum), quantizer=f"triton, both layouts, {_block()}",
                      weight_amax=RECIPE.weight_amax, activation_amax=RECIPE.activation_amax,
                      weight_cast=_weight_cast())
    bf16, fp8, teacher = pair(shape, lowprec.device)
    x, y = batch(0, shape, teacher, lowprec.device, None)
    step = step_function((bf16, fp8), x, y, shape.lr, fused=True)
    bf16_work, fp8_work = eager_work(lambda: step(bf16)), eager_work(lambda: step(fp8)) + triton_quantizer_work(shape)
    floor = lowprec.expect(bf16_work, fp8_work, fraction=STEP_FRACTION,
                           why="docs/measurements/gate-expectations-h200-2026-11-30.md")
    lowprec.speedup(baseline=lambda: step(bf16), optimized=lambda: step(fp8), min=floor)
    # The FP8 GEMMs and the Triton quantizer run; fp8_training_triton's block passes and AdamW kernel run
    # only where their option is on, so the step timed is the path the signature names.
    require, forbid = [FP8_GEMM_KERNEL, TENSORWISE_CAST_KERNEL], []
    (require if fp8_training.FUSE_BLOCKS else forbid).append(BLOCK_KERNELS)
    (require if fp8_training.OPTIMIZER_CASTS else forbid).append(ADAMW_KERNEL)
    lowprec.expect_kernels("optimized", require=require, forbid=forbid)
    # A step's peak above what was resident before it (weights, optimizer state, inputs): the
    # absolute peak would also count whatever else the process holds. The FP8 weights the optimizer cast
    # at the previous step are the FP8 step's own, held between steps: they count in its peak.
    peaks = {}
    for name, model in (("bf16", bf16), ("fp8", fp8)):
        torch.cuda.synchronize()
        resident = torch.cuda.memory_allocated() - sum(m.weight_amax.held_bytes for m in model.linears().values())
        torch.cuda.reset_peak_memory_stats()
        step(model)
        torch.cuda.synchronize()
        peaks[name] = torch.cuda.max_memory_allocated() - resident
    lowprec.info("bf16_step_peak_above_resident_bytes", peaks["bf16"], "B")
    # The FP8 step saves FP8 copies for its backward instead of BF16 activations: it peaks no higher.
    lowprec.memory("fp8_step_peak_above_resident_bytes", peaks["fp8"], max=peaks["bf16"])


def _differing_codes(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((a.reshape(-1).view(torch.uint8) != b.reshape(-1).view(torch.uint8)).sum())


def _differing(fused, eager) -> int:
    """Differing bytes over (q, q transposed, inverse scale) of two quantizations."""
    return sum(_differing_codes(a, b) for a, b in zip(fused[:3], eager[:3], strict=True))


# The fused GELU-backward pass (FUSE_BLOCKS, off by default) differs from torch's bfloat16 GELU backward then
# the cast in 233 of 4.2M codes on an H200 (2026-12-01); not double rounding: against torch's float32 GELU
# backward 34,255 differ. Unexplained, so the case is an expected failure, strict: it must be looked at
# when it changes. "registers" also misplaces codes (1.05M differ): the transposed tile is wrong.
_GELU_BACKWARD_DIFFERS = pytest.mark.xfail(strict=True, reason="fused GELU backward differs from torch's in 233 "
                                           "of 4.2M codes on the H200 (2026-12-01), unexplained")


@pytest.mark.lowprec(precision="fp8", device="cuda")
@pytest.mark.parametrize("op", ["identity", "gelu", pytest.param("gelu_backward", marks=_GELU_BACKWARD_DIFFERS)])
@pytest.mark.parametrize("gelu_cast", ["written", "recomputed", "registers"])
def test_fused_quantization_passes_give_the_eager_paths_bits_on_cuda(lowprec, monkeypatch, gelu_cast, op):
    """fused_quantize's Triton passes against torch's CUDA GELU, GELU backward and column sum followed by
    the Triton cast of their bfloat16 output: the same FP8 codes and scales (libdevice's erf and exp, as
    torch's kernels call them), the bias gradients within float32 summation order; with an amax history,
    the same codes as the eager cast with the history's amax, and the same history after."""
    from lowprec_workloads import fp8_training
    from lowprec_workloads.fp8_training import AmaxHistory, fused_quantize, quantize_operand

    monkeypatch.setattr(fp8_training, "GELU_CAST", gelu_cast)
    gen = torch.Generator(device="cuda").manual_seed(11)
    pre = (torch.randn(1024, 4096, device="cuda", generator=gen) * 2).to(torch.bfloat16)
    grad = (torch.randn(1024, 4096, device="cuda", generator=gen) * 1e-3).to(torch.bfloat16)
    lowprec.signature(rows=1024, cols=4096, seed=11)
    cases = {"identity": (grad, None, E5M2), "gelu": (pre, None, E4M3), "gelu_backward": (grad, pre, E5M2)}
    for a, b, dtype in [cases[op]]:
        t = {"identity": a, "gelu": torch.nn.functional.gelu(a)}.get(op) if b is None else \
            torch.ops.aten.gelu_backward(a, b)
        eager = (*quantize_operand(t, dtype, transpose=True), t.sum(0, dtype=torch.float32))
        fused = fused_quantize(a, dtype, op, b=b, colsum=True)
        lowprec.accuracy(f"{op}_codes_differing", _differing(fused, eager), max=0)
        lowprec.accuracy(f"{op}_column_sum_rel_err", float((fused[3] - eager[3]).norm() / eager[3].norm()), max=1e-5)
        history, start = AmaxHistory(), t.float().abs().amax() / 2  # half the amax: the cast saturates
        history.value = start.clone()
        fused = fused_quantize(a, dtype, op, b=b, history=history)
        eager = quantize_operand(t, dtype, transpose=True, amax=start)
        lowprec.accuracy(f"{op}_history_codes_differing", _differing(fused, eager), max=0)
        lowprec.accuracy(f"{op}_history_amax_differs", float(history.value != t.float().abs().amax()), max=0)


@pytest.mark.lowprec(precision="fp8", device="cuda")
def test_adamw_kernel_follows_torchs_fused_adamw_on_cuda(lowprec):
    """Five steps of adamw_fp8 (torch's rule in float32) against torch's fused AdamW from the same weight and
    gradients: the largest difference within 1e-5 of the weight's RMS (a few float32 units in the last place
    of a typical weight; an elementwise relative difference measures nothing where a weight crosses zero: on
    an H200, 2026-12-01, it read 0.23 at |w| = 3e-9 with |d| = 7e-10, while the largest |d| was 9.5e-7 of
    the RMS); every step's FP8 weight is exactly the cast of the weight it wrote, in both layouts."""
    from lowprec_workloads.fp8_training_triton import adamw_fp8

    gen = torch.Generator(device="cuda").manual_seed(12)
    w = torch.randn(1024, 4096, device="cuda", generator=gen) / 64
    lowprec.signature(rows=1024, cols=4096, seed=12, steps=5)
    param = torch.nn.Parameter(w.clone())
    optimizer = torch.optim.AdamW([param], lr=3e-4, fused=True)
    weight, m, v, amax = w.clone(), torch.zeros_like(w), torch.zeros_like(w), w.abs().amax()
    worst, differing = 0.0, 0
    for step in range(1, 6):
        g = torch.randn(1024, 4096, device="cuda", generator=gen) / 1e3
        param.grad = g.clone()
        optimizer.step()
        q, qt, inv, seen = adamw_fp8(weight, g, m, v, lr=3e-4, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2,
                                     step=step, amax=amax)
        worst = max(worst, float((weight - param.detach()).abs().max() / param.detach().pow(2).mean().sqrt()))
        ref, ref_inv = quantize_tensorwise(weight, E4M3, amax=amax)
        differing += _differing_codes(q, ref) + _differing_codes(qt, ref.t().contiguous())
        differing += int(not torch.equal(inv, ref_inv)) + int(float(seen) != float(weight.abs().amax()))
        amax = seen
    lowprec.accuracy("weight_max_diff_over_rms_vs_torch", worst, max=1e-5)
    lowprec.accuracy("cast_codes_differing", differing, max=0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"gemms": ("fprop", "bwd")}, "unknown GEMM"), ({"fast_accum": ("dgrad", "x")}, "unknown GEMM"),
    ({"grad_dtype": torch.bfloat16}, "E4M3 or E5M2"), ({"scaling": "block"}, "is not one of tensor, row"),
    ({"weight_amax": "history"}, "is not one of current, previous"),
    ({"activation_amax": "previous"}, "is not one of current, history"),
    ({"activation_amax": "history", "scaling": "row"}, "runs in a fused block")])
def test_fp8_recipe_rejects_what_it_cannot_run(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Fp8Recipe(**kwargs)


def test_weights_are_cast_with_the_amax_their_previous_cast_saw():
    """Delayed scaling for the weights: the first cast uses the current amax, each later one the amax
    the cast before it recorded, and every cast records the weights' amax as it found them."""
    state = WeightAmax()
    w = torch.randn(64, 32)
    q1, _, inv1 = quantize_weight(w, RECIPE, state)
    assert torch.equal(inv1, quantize_tensorwise(w, E4M3)[1]) and float(state.value) == float(w.abs().amax())
    grown = w * 1.5  # an update that raised the amax: this cast still uses the old one, and saturates
    q2, q2t, inv2 = quantize_weight(grown, RECIPE, state)
    old_q, old_inv = quantize_tensorwise(grown, E4M3, amax=w.abs().amax())
    assert torch.equal(inv2, old_inv) and torch.equal(q2.float(), old_q.float()) and torch.equal(q2t, q2.t())
    assert float(state.value) == float(grown.abs().amax())
    assert float(q2.float().abs().max()) == float(torch.finfo(E4M3).max)


def test_a_weights_amax_state_keeps_its_buffer_from_cast_to_cast():
    """A CUDA graph of a training step replays the addresses its capture found: the amax the next cast
    scales by must be written where the captured cast reads it, not into a new tensor a step."""
    state = WeightAmax()
    w = torch.randn(64, 32)
    quantize_weight(w, RECIPE, state)
    buffers = state.value.data_ptr(), state.seen(w.device).data_ptr()
    for scale in (1.5, 0.5):
        quantize_weight(w * scale, RECIPE, state)
        assert (state.value.data_ptr(), state.seen(w.device).data_ptr()) == buffers
        assert float(state.value) == float((w * scale).abs().amax())


def test_a_recipe_with_the_current_weight_amax_keeps_no_state():
    state = WeightAmax()
    w = torch.randn(64, 32)
    _, _, inv = quantize_weight(w, Fp8Recipe(weight_amax="current"), state)
    assert state.value is None and torch.equal(inv, quantize_tensorwise(w, E4M3)[1])


def _block_inputs(seed: int = 4):
    gen = torch.Generator().manual_seed(seed)
    stack = Stack(64, 1, fp8=True, seed=seed, device="cpu")
    h = torch.randn(96, 64, generator=gen).to(torch.bfloat16)
    grad = (torch.randn(96, 64, generator=gen) * 1e-2).to(torch.bfloat16)
    return stack.blocks[0], h, grad


def test_blocks_run_their_linears_one_by_one_by_default():
    block, _, _ = _block_inputs()
    assert not fp8_training.FUSE_BLOCKS and not fusable(block.fc1, block.fc2)


def test_fused_block_computes_what_its_two_linears_and_gelu_compute(monkeypatch):
    """Fp8Mlp (GELU and the bias gradients folded into the quantization) against fc2(gelu(fc1(h))) through
    two Fp8Matmuls, on the CPU's eager path: the same output and every gradient, bit for bit."""
    monkeypatch.setattr(fp8_training, "FUSE_BLOCKS", True)
    block, h, grad = _block_inputs()
    assert fusable(block.fc1, block.fc2)
    results = []
    for fused in (True, False):
        fc1, fc2 = block.fc1, block.fc2
        for linear in (fc1, fc2):
            linear.weight_amax = WeightAmax()  # each path casts the weights afresh
            linear.weight.grad = linear.bias.grad = None
        x = h.clone().requires_grad_()
        if fused:
            y = Fp8Mlp.apply(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, fc1, fc2)
        else:
            y = fc2(torch.nn.functional.gelu(fc1(x)))
        y.backward(grad)
        results.append([y, x.grad, fc1.weight.grad, fc1.bias.grad, fc2.weight.grad, fc2.bias.grad])
    for fused, unfused in zip(*results, strict=True):
        assert torch.equal(fused, unfused)


def test_a_block_runs_fused_only_under_the_plain_recipe(monkeypatch):
    monkeypatch.setattr(fp8_training, "FUSE_BLOCKS", True)
    block, _, _ = _block_inputs()
    assert fusable(block.fc1, block.fc2)
    for linear in (block.fc1, block.fc2):
        linear.recipe = Fp8Recipe(scaling="row")
    assert not fusable(block.fc1, block.fc2)
    block.fc2.recipe = block.fc1.recipe = RECIPE
    block.fc2.fp8 = False
    assert not fusable(block.fc1, block.fc2)


def test_an_amax_history_scales_each_cast_by_the_largest_finite_amax_before_it():
    """activation_amax "history": the first cast takes its own amax; later casts the history's (a larger
    tensor saturates), each adding its own finite amax; a tensor holding a NaN or an Inf adds only its
    finite values (an overflowed step's NaNs never reach a later scale)."""
    history, x = AmaxHistory(), torch.randn(64, 32).to(torch.bfloat16)
    first = fused_quantize(x, E4M3, history=history)
    assert torch.equal(first[2], quantize_tensorwise(x, E4M3)[1])
    assert float(history.value) == float(x.float().abs().amax())
    grown = x * 4
    q, qt, inv, _ = fused_quantize(grown, E4M3, history=history)
    old_q, old_inv = quantize_tensorwise(grown, E4M3, amax=x.float().abs().amax())
    assert torch.equal(q.float(), old_q.float()) and torch.equal(inv, old_inv) and torch.equal(qt, q.t())
    assert float(history.value) == float(grown.float().abs().amax())
    poisoned = grown.clone()
    poisoned[0, 0], poisoned[1, 1] = float("nan"), float("inf")
    fused_quantize(poisoned * 2, E4M3, history=history)
    finite = (poisoned * 2).float().nan_to_num(0.0, 0.0, 0.0).abs().amax()
    assert float(history.value) == float(finite)


def test_a_linear_alone_refuses_the_history_recipe():
    recipe = Fp8Recipe(activation_amax="history")
    with pytest.raises(ValueError, match="keeps its amaxes in a fused block"):
        Fp8Matmul.apply(torch.randn(4, 16), torch.randn(8, 16), None, recipe)


def test_an_offered_weight_cast_is_taken_once_and_only_for_the_weight_it_was_made_from():
    state, w = WeightAmax(), torch.randn(64, 32)
    cast = quantize_weight(w, RECIPE, state)
    state.offer(w, cast)
    assert state.take(w) is cast and state.take(w) is None
    state.offer(w, cast)
    w.add_(1.0)  # changed in place after the cast: the cast is stale
    assert state.take(w) is None


def _trained(make_optimizer, steps: int = 4):
    shape = Shape(d=64, blocks=2, tokens=128, steps=steps)
    _, model, teacher = pair(shape, "cpu", seed=7)
    optimizer = make_optimizer(model)
    scaler, losses = LossScaler(), []
    for step in range(steps):
        x, y = batch(step, shape, teacher, "cpu", None)
        loss = objective(model, x, y)
        scaler.step(loss, list(model.parameters()), optimizer, step)
        losses.append(loss.item())
    return model, losses


def test_fp8_weights_from_the_optimizer_are_the_forwards_own_casts():
    """Training with Fp8AdamW (which casts each FP8 weight as it updates it, for the next forward to take)
    ends where training with torch's AdamW and the forward's own casts ends: the same losses and weights."""
    with_casts, losses = _trained(lambda m: Fp8AdamW(m, lr=1e-3))
    plain, plain_losses = _trained(lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3))
    assert losses == plain_losses
    for a, b in zip(with_casts.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)
    offered = [linear.weight_amax._cast is not None for linear in with_casts.linears().values()]
    assert all(offered)  # the last step's casts wait for a forward


def test_an_fp8_model_trains_with_torchs_adamw_by_default():
    _, fp8, _ = pair(Shape(d=64, blocks=1, tokens=16, steps=1), "cpu")
    assert not fp8_training.OPTIMIZER_CASTS and type(adamw(fp8, 1e-3)) is torch.optim.AdamW


def test_an_fp8_model_trains_with_fp8_adamw_when_optimizer_casts_are_on(monkeypatch):
    monkeypatch.setattr(fp8_training, "OPTIMIZER_CASTS", True)
    _, fp8, _ = pair(Shape(d=64, blocks=1, tokens=16, steps=1), "cpu")
    assert isinstance(adamw(fp8, 1e-3), Fp8AdamW)


def test_a_bf16_model_trains_with_torchs_adamw_even_with_optimizer_casts_on(monkeypatch):
    monkeypatch.setattr(fp8_training, "OPTIMIZER_CASTS", True)
    bf16, _, _ = pair(Shape(d=64, blocks=1, tokens=16, steps=1), "cpu")
    assert type(adamw(bf16, 1e-3)) is torch.optim.AdamW


def test_triton_quantizer_work_by_default_counts_each_linears_own_passes():
    """Per linear: its input and output gradient (bfloat16) an amax pass (2 bytes an element) and a cast
    writing both layouts (2 + 2); its float32 weight one cast pass (4 + 2) under weight amax "previous"."""
    shape = Shape(d=64, blocks=2, tokens=128, steps=1)
    d, h, tokens = shape.d, 4 * shape.d, shape.tokens
    work = triton_quantizer_work(shape)
    activations = 2 * (tokens * d + tokens * h)  # per block: fc1's input and gradient, fc2's
    assert len(work) == shape.blocks * (2 * 2 * 2 + 2)
    assert sum(w.nbytes for w in work) == shape.blocks * ((2 + 4) * activations + 2 * (4 + 2) * d * h)


def test_triton_quantizer_work_declares_the_fused_passes_when_the_options_are_on(monkeypatch):
    shape = Shape(d=64, blocks=2, tokens=128, steps=1)
    monkeypatch.setattr(fp8_training, "FUSE_BLOCKS", True)
    monkeypatch.setattr(fp8_training, "OPTIMIZER_CASTS", True)
    assert triton_quantizer_work(shape) == triton_quantizer_work(shape, fuse_blocks=True, optimizer_casts=True)
    assert triton_quantizer_work(shape) != triton_quantizer_work(shape, fuse_blocks=False, optimizer_casts=False)


def test_triton_quantizer_work_counts_the_optimizers_weight_pass_instead_of_the_forwards_cast():
    shape = Shape(d=64, blocks=2, tokens=128, steps=1)
    weights = sum(m.weight.numel() for m in Stack(64, 2, fp8=True, seed=0, device="cpu").linears().values())
    with_casts = sum(w.nbytes for w in triton_quantizer_work(shape, fuse_blocks=True, optimizer_casts=True))
    without = sum(w.nbytes for w in triton_quantizer_work(shape, fuse_blocks=True, optimizer_casts=False))
    assert with_casts - without == (4 * 4 + 3 * 4 + 2) * weights - (4 + 2) * weights


@pytest.fixture(scope="module")
def interpreted_kernels():
    """fp8_training_triton's kernels on small tensors under Triton's interpreter (one child process), with
    their inputs: the CPU's check of what the GPU path computes."""
    from lowprec_workloads.fp8_training_triton import GELU, GELU_BACKWARD, interpreted

    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(64, 96, generator=gen) * 3).to(torch.bfloat16)
    x[5, 7] = -0.0
    pre = (torch.randn(64, 96, generator=gen) * 2).to(torch.bfloat16)
    dy = (torch.randn(64, 96, generator=gen) * 1e-3).to(torch.bfloat16)
    w = torch.randn(48, 80, generator=gen) / 8
    grads = [torch.randn(48, 80, generator=gen) / 100 for _ in range(3)]
    tile = {"tile": (32, 64, 4)}
    gelu, gelu_grad = _gelu_float64(pre), _gelu_backward_float64(dy, pre)
    calls = [("amax_of", (x,), {"colsum": True, **tile}),
             ("quantize_transposed", (x, x.float().abs().amax(), E4M3), tile),
             ("quantize_transposed", (x, x.float().abs().amax(), E5M2), tile),
             ("amax_of", (pre,), {"op": GELU, **tile}),
             ("quantize_transposed", (pre, gelu.float().abs().amax(), E4M3), {"op": GELU, **tile}),
             ("amax_of", (dy, pre), {"op": GELU_BACKWARD, "colsum": True, **tile}),
             ("quantize_transposed", (dy, gelu_grad.float().abs().amax(), E5M2), {"b": pre, "op": GELU_BACKWARD,
                                                                                  **tile})]
    # A cast scaled by an amax history (half the tensor's amax: it saturates) that adds the tensor's largest
    # finite magnitude to the history and sums its columns; one NaN and one Inf in it.
    poisoned = x.clone()
    poisoned[3, 1], poisoned[60, 90] = float("nan"), float("inf")
    history = x.float().abs().amax() / 2
    calls += [("quantize_transposed", (poisoned, history, E4M3, None, 0, history.clone()), {"colsum": True, **tile}),
              ("amax_of", (dy, pre), {"op": GELU_BACKWARD, "out": True, **tile}),
              ("quantize_transposed", (dy, gelu_grad.float().abs().amax(), E5M2), {"b": pre, "op": GELU_BACKWARD,
                                                                                  "registers": True, **tile})]
    # Three AdamW steps on one weight and its moments (shared by the three calls), each cast with the amax
    # of the weight before the first (the optimizer carries each cast's amax to the next; tested above).
    weight, m, v, amax = w.clone(), torch.zeros_like(w), torch.zeros_like(w), w.abs().amax()
    adam = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 1e-2, "tile": (32, 32, 4)}
    calls += [("adamw_fp8", (weight, g, m, v), {**adam, "step": number, "amax": amax})
              for number, g in enumerate(grads, start=1)]
    done = interpreted(calls)
    steps = [(args[0], cast, amax) for cast, args in done[-len(grads):]]
    return {"x": x, "gelu": gelu, "gelu_grad": gelu_grad, "results": [r for r, _ in done], "w": w, "grads": grads,
            "adam": adam, "steps": steps, "poisoned": poisoned, "history": history, "seen": done[7][1][5]}


def _gelu_float64(pre):
    x = pre.double()
    return (x * 0.5 * (1 + torch.erf(x / 2 ** 0.5))).to(torch.bfloat16)


def _gelu_backward_float64(dy, pre):
    x = pre.double()
    pdf = torch.exp(-0.5 * x * x) / (2 * torch.pi) ** 0.5
    return (dy.double() * (0.5 * (1 + torch.erf(x / 2 ** 0.5)) + x * pdf)).to(torch.bfloat16)


def _codes(q):
    return q.view(torch.uint8)


def test_interpreted_amax_pass_finds_the_amax_and_the_column_sums(interpreted_kernels):
    x = interpreted_kernels["x"]
    amax, sums, _ = interpreted_kernels["results"][0]
    assert float(amax) == float(x.float().abs().amax())
    assert torch.allclose(sums, x.float().sum(0), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize(("index", "dtype"), [(1, E4M3), (2, E5M2)], ids=["e4m3", "e5m2"])
def test_interpreted_cast_gives_quantize_tensorwise_bits_in_both_layouts(interpreted_kernels, index, dtype):
    x = interpreted_kernels["x"]
    q, qt, inv, _ = interpreted_kernels["results"][index]
    ref, ref_inv = quantize_tensorwise(x, dtype)
    assert torch.equal(_codes(q), _codes(ref)) and torch.equal(_codes(qt), _codes(ref.t().contiguous()))
    assert torch.equal(inv, ref_inv)


@pytest.mark.parametrize(("amax_index", "cast_index", "name", "dtype"),
                         [(3, 4, "gelu", E4M3), (5, 6, "gelu_grad", E5M2)], ids=["gelu", "gelu_backward"])
def test_interpreted_gelu_passes_quantize_what_torch_gelu_computes(interpreted_kernels, amax_index, cast_index,
                                                                     name, dtype):
    """Against GELU (and its backward) in float64 rounded once to bfloat16: the interpreter computes erf and
    exp in float32 with numpy, a last-bit difference that moves a bfloat16 rounding, and so an FP8 code by
    one step, rarely (on the GPU the kernels call libdevice as torch's kernels do; the CUDA tests compare bits)."""
    reference = interpreted_kernels[name]
    amax, sums, _ = interpreted_kernels["results"][amax_index]
    assert abs(float(amax) - float(reference.float().abs().amax())) <= float(reference.float().abs().amax()) * 2 ** -8
    if sums is not None:
        assert torch.allclose(sums, reference.float().sum(0), rtol=1e-2, atol=1e-6)
    q, qt, inv, _ = interpreted_kernels["results"][cast_index]
    ref, ref_inv = quantize_tensorwise(reference, dtype)
    steps = (_codes(q).int() - _codes(ref).int()).abs()
    assert torch.equal(inv, ref_inv) and int(steps.max()) <= 1 and float((steps > 0).float().mean()) < 0.005
    assert torch.equal(_codes(qt), _codes(q.t().contiguous()))


def test_interpreted_amax_pass_can_write_the_ops_output(interpreted_kernels):
    """The GELU backward written in bfloat16 by the amax pass (for a cast that reads it): the op's values
    whose amax is the one returned. Against float64 within a bfloat16 rounding, and an absolute error far
    below the tensor's amax where cdf + x * pdf cancels (large negative x: the interpreter's float32 erf
    and exp, like torch's, lose relative precision there)."""
    reference = interpreted_kernels["gelu_grad"].float()
    amax, _, written = interpreted_kernels["results"][8]
    assert written.dtype == torch.bfloat16 and float(amax) == float(written.float().abs().amax())
    assert torch.allclose(written.float(), reference, rtol=2 ** -8, atol=float(reference.abs().max()) * 2 ** -12)


def test_interpreted_cast_transposing_in_registers_gives_the_rereading_casts_bits(interpreted_kernels):
    rereading, in_registers = interpreted_kernels["results"][6], interpreted_kernels["results"][9]
    assert _differing(rereading, in_registers) == 0


def test_interpreted_cast_with_a_history_adds_the_largest_finite_amax_and_sums_columns(interpreted_kernels):
    x, history = interpreted_kernels["poisoned"], interpreted_kernels["history"]
    q, qt, inv, sums = interpreted_kernels["results"][7]
    ref, ref_inv = quantize_tensorwise(x, E4M3, amax=history)
    nan = torch.isnan(ref.float())  # a NaN's code carries the arithmetic's sign (x86's -NaN): any NaN matches
    assert torch.equal(torch.isnan(q.float()), nan) and torch.equal(_codes(q)[~nan], _codes(ref)[~nan])
    assert torch.equal(_codes(qt), _codes(q.t().contiguous()))
    finite = torch.where(torch.isfinite(x.float()), x.float().abs(), 0).amax()
    assert torch.equal(inv, ref_inv) and float(interpreted_kernels["seen"]) == float(finite) > float(history)
    clean = torch.isfinite(x.float()).all(0)
    assert torch.allclose(sums[clean], x.float().sum(0)[clean], rtol=1e-6, atol=1e-5)
    assert not torch.isfinite(sums[~clean]).any()


def test_interpreted_adamw_follows_torchs_adamw_and_casts_what_it_wrote(interpreted_kernels):
    """Three steps of adamw_fp8 against torch.optim.AdamW from the same weight and gradients (float32, in
    another operation order: within a few units in the last place); each step's E4M3 weight is the weight
    it wrote, cast with the previous step's amax, in both layouts, and its amax the written weight's."""
    adam = interpreted_kernels["adam"]
    param = torch.nn.Parameter(interpreted_kernels["w"].clone())
    optimizer = torch.optim.AdamW([param], lr=adam["lr"], betas=(adam["beta1"], adam["beta2"]), eps=adam["eps"],
                                  weight_decay=adam["weight_decay"])
    for g, (weight, (q, qt, inv, seen), amax) in zip(interpreted_kernels["grads"], interpreted_kernels["steps"],
                                                      strict=True):
        param.grad = g.clone()
        optimizer.step()
        assert torch.allclose(weight, param.detach(), rtol=4e-6, atol=1e-9)
        ref, ref_inv = quantize_tensorwise(weight, E4M3, amax=amax)
        assert torch.equal(_codes(q), _codes(ref)) and torch.equal(_codes(qt), _codes(ref.t().contiguous()))
        assert torch.equal(inv, ref_inv) and float(seen) == float(weight.abs().amax())
