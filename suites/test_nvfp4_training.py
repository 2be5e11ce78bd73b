"""NVFP4 training against BF16: identical weights, data, seeds and number of steps.

Every run trains a copy of one student on the same batches (lowprec_workloads/nvfp4_training.py): BF16,
the NVFP4 recipe (16x16 weight tiles, RHT on the weight gradient's inputs, stochastic rounding
of gradients, the last block in BF16) and the naive control (1x16 weights, no RHT, round to
nearest, the same layers in BF16), both after the same FP8 warm-up. The stack has six blocks, so the
BF16 block is 2 of its 12 linears (17%: the paper keeps about 16%, the last ones); on the GPU at d=2048,
where the emulated NVFP4 GEMMs keep the four NVFP4 trainings near a minute on the H200. Losses per run:
  - the held-out loss: the trained weights evaluated with every linear in BF16 on batches no run
    trained on, what training produced, gated within the NVFP4 paper's 1.5% of BF16;
  - the training loss (mean of the last 20 steps) and the held-out loss through the NVFP4 forward,
    reported: test_nvfp4_training_matches_bf16 says why they do not decide.
The recipe trains SEEDS times, each with its own draws of stochastic rounding and RHT signs (the
weights, data and steps stay identical), and the gate holds the mean of their held-out gaps: one
draw's gap moved by up to 0.2 points from another's on an H100 (1.28%, 1.07%, 1.41%, 2026-11-22),
as much as the margin to the bound.

The control shows the recipe matters where it was made for: on the GPU the naive run's training loss
must end at least a point further from BF16 than the recipe's (on the two-block stack at d=4096 it ended
3.62% above BF16 against 1.89-1.96%). At the CPU's d=64 the ordering can reverse (stochastic rounding's
variance costs more than the bias it removes in so small a model), so there the control is reported,
not gated.
"""

from __future__ import annotations

import copy
import statistics

import pytest
import torch

from lowprec_workloads.fp8_training import Shape, batch, step_function
from lowprec_workloads.nvfp4_gemm import NATIVE
from lowprec_workloads.nvfp4_training import (
    EMULATED,
    NAIVE,
    RECIPE,
    Calibration,
    Nvfp4Recipe,
    Quantizer,
    _Nvfp4Matmul,
    convert,
    emulated_operand,
    round_e2m1,
    students,
    train_bf16,
    train_nvfp4,
    training_path,
)
from pytest_lowprec.formats.nvfp4 import BLOCK, quantize_nvfp4
from pytest_lowprec.formats.packing import unpack_fp4
from pytest_lowprec.traffic import eager_work

CPU_SHAPE = Shape(d=64, blocks=6, tokens=512, steps=150)
# Chosen among the candidates of `benchmarks/nvfp4_training_ablation.py --candidates` (six blocks at d=2048
# first; lr: see fp8_training.Shape.lr, stable at d=4096 with 3e-4).
GPU_SHAPE = Shape(d=2048, blocks=6, tokens=4096, steps=150, lr=3e-4)
BOUND = 0.015  # the NVFP4 paper's final-loss gap at scale
SEEDS = (0, 1, 2)  # the recipe's draws of stochastic rounding and RHT signs
# At the real shape the naive control must end at least a point of training loss behind the recipe.
CONTROL_MARGIN = 0.01
# The emulated step's cost, as a fraction of what the hardware model predicts from both steps' operators:
# 0.85 on the H200, 0.88 on the H100 (docs/measurements/gate-expectations-h200-2026-11-30.md).
STEP_COST_FRACTION = 0.75


def _shape(lowprec) -> Shape:
    return GPU_SHAPE if lowprec.on_cuda else CPU_SHAPE


def _path(lowprec) -> str:
    return training_path(torch.cuda.get_device_capability(lowprec.device) if lowprec.on_cuda else None)


def _signature(lowprec, shape: Shape, calibration: Calibration) -> None:
    lowprec.signature(d=shape.d, blocks=shape.blocks, tokens=shape.tokens, steps=shape.steps,
                      bf16_linears=f"{RECIPE.bf16_last} of {2 * shape.blocks}",
                      optimizer=f"adamw {shape.lr:g}", path=_path(lowprec),
                      recipe=f"16x16 weights, rht wgrad, stochastic gradients, last {RECIPE.bf16_last} linears bf16",
                      control=f"1x16 weights, no rht, round to nearest, last {NAIVE.bf16_last} linears bf16",
                      recipe_seeds=len(SEEDS),
                      warmup=f"fp8 {calibration.min_steps}-{calibration.max_steps} steps, settle "
                             f"{calibration.settle:g} over {calibration.window}")


@pytest.fixture(scope="module")
def runs():
    """Trained runs by (device, name), shared by this module's tests: training is the cost here."""
    return {}


def _runs(lowprec, runs: dict, names: tuple[str, ...]):
    shape = _shape(lowprec)
    key = str(lowprec.device)
    if key not in runs:
        student, teacher = students(shape, lowprec.device)
        bf16 = train_bf16(student, teacher, shape, lowprec.device)
        runs[key] = {"student": student, "teacher": teacher, "bf16": bf16}
    have = runs[key]
    for name in names:
        if name not in have:
            recipe, seeds = {"recipe": (RECIPE, SEEDS), "naive": (NAIVE, (0,))}[name]
            have[name] = [train_nvfp4(have["student"], have["teacher"], shape, lowprec.device, recipe,
                                      _path(lowprec), Calibration(), seed) for seed in seeds]
    return have



@pytest.mark.slow  # a CPU training of minutes: CI runs it with --slow; a GPU run always
@pytest.mark.lowprec(precision="nvfp4")
def test_nvfp4_training_matches_bf16(lowprec, runs):
    """The held-out loss decides: it evaluates what training produced, the weights, through the reference's
    own BF16 forward on batches no run trained on. An NVFP4 run's training loss is computed through its
    NVFP4 forward on each step's batch, so it also carries the rounding of evaluating in NVFP4 (the held-out
    loss through that forward, reported beside it, measures how much), which is the inference precision's
    error rather than the training recipe's; both are reported, with the BF16 layers' share."""
    shape = _shape(lowprec)
    _signature(lowprec, shape, Calibration())
    have = _runs(lowprec, runs, ("recipe",))
    ref, recipe_runs = have["bf16"], have["recipe"]
    gaps = [run.held_out_gap(ref) for run in recipe_runs]
    gap = statistics.fmean(gaps)
    lowprec.accuracy("held_out_loss_gap", gap, max=BOUND)
    lowprec.info("margin_to_bound", BOUND - gap)
    for seed, one in zip(SEEDS, gaps, strict=True):
        lowprec.info(f"held_out_loss_gap.seed{seed}", one)
    lowprec.info("training_loss_gap", statistics.fmean(run.gap(ref) for run in recipe_runs))
    lowprec.info("held_out_loss_gap_nvfp4_forward",
                 statistics.fmean(run.held_out_nvfp4_gap(ref) for run in recipe_runs))
    lowprec.info("bf16_linear_share", RECIPE.bf16_last / (2 * shape.blocks))
    lowprec.info("fp8_warmup_steps", max(run.switch_step for run in recipe_runs))  # the step NVFP4 took over
    lowprec.info("bf16_loss_first_over_last", ref.losses[0] / ref.final)
    lowprec.accuracy("skipped_steps", sum(len(run.skipped) for run in recipe_runs) + len(ref.skipped), max=0)
    lowprec.accuracy("nonfinite_weights", sum(run.nonfinite_weights for run in recipe_runs), max=0)


@pytest.mark.slow  # a CPU training of minutes: CI runs it with --slow; a GPU run always
@pytest.mark.lowprec(precision="nvfp4")
def test_naive_nvfp4_control_ends_further_from_bf16(lowprec, runs):
    shape = _shape(lowprec)
    _signature(lowprec, shape, Calibration())
    have = _runs(lowprec, runs, ("recipe", "naive"))
    ref, recipe_runs, (naive,) = have["bf16"], have["recipe"], have["naive"]  # naive draws nothing: one run
    recipe_gap = statistics.fmean(run.gap(ref) for run in recipe_runs)
    recipe_held_out = statistics.fmean(run.held_out_gap(ref) for run in recipe_runs)
    lowprec.info("naive_training_loss_gap", naive.gap(ref))
    lowprec.info("naive_held_out_loss_gap", naive.held_out_gap(ref))
    lowprec.info("naive_minus_recipe_held_out_gap", naive.held_out_gap(ref) - recipe_held_out)
    lead = naive.gap(ref) - recipe_gap
    if shape == GPU_SHAPE:
        lowprec.accuracy("naive_minus_recipe_training_gap", lead, min=CONTROL_MARGIN)
    else:
        lowprec.info("naive_minus_recipe_training_gap", lead)


@pytest.mark.lowprec(precision="nvfp4", device="cuda")
def test_nvfp4_training_step_cost(lowprec):
    """On Hopper the NVFP4 GEMMs are emulated: the step costs more than BF16's, measured and kept."""
    shape = GPU_SHAPE
    lowprec.signature(d=shape.d, blocks=shape.blocks, tokens=shape.tokens, optimizer="adamw", path=_path(lowprec))
    student, teacher = students(shape, lowprec.device)
    nvfp4 = copy.deepcopy(student)
    for linear in convert(nvfp4, RECIPE, _path(lowprec), lowprec.device):
        linear.phase = "nvfp4"
    x, y = batch(0, shape, teacher, lowprec.device, None)
    step = step_function((student, nvfp4), x, y, shape.lr)
    # Every kernel of both steps is torch's on the emulated path: both sides' work is read off their operators.
    floor = lowprec.expect(eager_work(lambda: step(student)), eager_work(lambda: step(nvfp4)),
                           fraction=STEP_COST_FRACTION, why="docs/measurements/gate-expectations-h200-2026-11-30.md")
    lowprec.speedup(baseline=lambda: step(student), optimized=lambda: step(nvfp4), min=floor)


@pytest.mark.parametrize(("capability", "has_fp4", "path"), [
    ((10, 0), True, NATIVE), ((12, 0), True, NATIVE), ((10, 0), False, EMULATED), ((9, 0), True, EMULATED),
    (None, True, EMULATED)])
def test_training_gemm_path_follows_capability(capability, has_fp4, path):
    # No Blackwell GPU is at hand: its dispatch is checked with a faked capability.
    assert training_path(capability, torch_has_fp4=has_fp4) == path


def _unblock(flat: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of nvfp4_gemm.to_blocked: [rows, cols] scales back from cuBLAS's 128x4 tiles."""
    pr, pc = -(-rows // 128) * 128, -(-cols // 4) * 4
    tiles = flat.reshape(pr // 128, pc // 4, 32, 4, 4).transpose(2, 3).reshape(pr // 128, pc // 4, 128, 4)
    return tiles.permute(0, 2, 1, 3).reshape(pr, pc)[:rows, :cols]


def _cublaslt_nvfp4_on_cpu(mat1, mat2, *, scale_a, scale_b, out_dtype):
    """What cuBLASLt's block-scaled NVFP4 GEMM computes, read from the operands exactly as it is
    handed them: packed E2M1 pairs and E4M3 scales in the 128x4 layout."""
    from pytest_lowprec.formats.minifloat import E2M1

    a = mat1.view(torch.uint8)
    b = mat2.t().view(torch.uint8)
    (m, k2), n = a.shape, b.shape[0]

    def values(packed, rows, scales):
        s = _unblock(scales, rows, k2 * 2 // BLOCK).float().repeat_interleave(BLOCK, dim=1)
        return E2M1.decode(unpack_fp4(packed)) * s

    return (values(a, m, scale_a) @ values(b, n, scale_b).t()).to(out_dtype)


@pytest.mark.parametrize("recipe", [RECIPE, NAIVE], ids=["recipe", "naive"])
def test_native_path_computes_what_the_emulation_computes(monkeypatch, recipe):
    """The sm_100 path (packed operands, transposed 16x16 weights, swizzled scales) against the
    emulated one, forward and backward, with torch._scaled_mm replaced by a CPU reading of its
    operands: the operand plumbing is what a Blackwell run would otherwise be the first to test."""
    monkeypatch.setattr(torch, "_scaled_mm", _cublaslt_nvfp4_on_cpu)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(48, 64, generator=gen).to(torch.bfloat16)
    weight = torch.randn(32, 64, generator=gen) / 8
    grad = torch.randn(48, 32, generator=gen).to(torch.bfloat16)
    results = {}
    for path in (EMULATED, NATIVE):
        xi, wi = x.clone().requires_grad_(), weight.clone().requires_grad_()
        out = _Nvfp4Matmul.apply(xi, wi, None, Quantizer(recipe, path, "cpu", seed=3))
        out.backward(grad)
        results[path] = (out.float(), xi.grad.float(), wi.grad.float())
    for emulated, native in zip(results[EMULATED], results[NATIVE], strict=True):
        # The same products summed in another order, then rounded to bfloat16 at different points.
        assert torch.allclose(native, emulated, rtol=2e-2, atol=1e-2 * emulated.abs().max().item())


def test_calibration_switches_once_every_amax_has_settled():
    calibration = Calibration(min_steps=2, max_steps=50, window=3, settle=1.5)
    amaxes = [[8.0, 1.0], [4.0, 1.0], [2.0, 1.1], [1.9, 1.0], [1.8, 1.2], [1.7, 1.1]]
    switched = [calibration.observe(step, a) for step, a in enumerate(amaxes)]
    # Steps 2-4 are the first window whose every column stays within 1.5x: NVFP4 from step 5 on.
    assert switched == [False, False, False, False, True, False]
    assert calibration.switch_step == 5


def test_calibration_switches_at_max_steps_if_never_settled():
    calibration = Calibration(min_steps=1, max_steps=4, window=2, settle=1.1)
    switched = [calibration.observe(step, [2.0 ** -step]) for step in range(6)]
    assert switched == [False, False, False, True, False, False] and calibration.switch_step == 4


def test_recipe_rejects_a_weight_tile_it_has_no_path_for():
    with pytest.raises(ValueError, match=r"weight_tile is \(1, 16\) or \(16, 16\)"):
        Nvfp4Recipe("bad", weight_tile=(8, 8), hadamard_wgrad=True, stochastic_gradients=True)


@pytest.mark.parametrize(("tile", "stochastic"), [((1, BLOCK), False), ((1, BLOCK), True), ((BLOCK, BLOCK), False)],
                         ids=["1x16", "1x16-stochastic", "16x16"])
def test_emulated_operand_is_the_quantizers_block_values(tile, stochastic):
    """The emulation's shortcut (no codes, no packing) against quantize_nvfp4's block values and tensor scale,
    bit for bit, stochastic rounding drawing the same numbers from the same generator state; signed zeros,
    an all-zero block and tiny values included."""
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(48, 64, generator=gen) * 3
    x[0, :16] = 0.0
    x[1, :5] = torch.tensor([-0.0, -1e-30, 1e-30, -2e-7, 5e-8])
    x[2] *= 1e-4
    ref = quantize_nvfp4(x, tile=tile, stochastic=stochastic, generator=torch.Generator().manual_seed(1))
    out = emulated_operand(x, tile, stochastic, torch.Generator().manual_seed(1))
    assert torch.equal(out.values.view(torch.int16), ref.block_values().view(torch.int16))
    assert torch.equal(out.global_decode, ref.global_decode)


@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
def test_round_e2m1_is_the_minifloat_rounding(stochastic):
    """Every float32 magnitude class up to 6 (the grid, ties, binade edges, subnormals, signed zeros) and a
    dense sweep, against E2M1.round with TransformerEngine's zero sign, from the same generator state."""
    from pytest_lowprec.formats.minifloat import E2M1

    edges = torch.tensor([0.0, -0.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, 1.9999999, 2.0, 3.9999998, 4.0,
                          1e-45, -1e-45, -0.24, -5.5, 5.9999995])
    x = torch.cat([edges, torch.linspace(-6, 6, 200_001)])
    out = round_e2m1(x, stochastic, torch.Generator().manual_seed(2))
    ref = E2M1.round(x, stochastic=stochastic, generator=torch.Generator().manual_seed(2), keep_zero_sign=False)
    assert torch.equal(out.view(torch.int32), ref.view(torch.int32))
