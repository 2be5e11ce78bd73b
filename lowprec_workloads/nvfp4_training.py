"""NVFP4 training: the FP8 suite's block stack with NVFP4 linears, after an FP8 warm-up.

The recipe (NVIDIA, "Pretraining Large Language Models with NVFP4", 2025): every
operand of a linear's three GEMMs in NVFP4 (E2M1 elements, an E4M3 scale per 16 along the
reduction, a float32 scale per tensor), and
  - weights in 16x16 tiles, so the forward's W and the data gradient's W.T hold the same values;
  - a random Hadamard transform (RHT) over 16-token blocks of both weight-gradient inputs, which
    spreads an outlier over its block before the 16-element scale sees it;
  - stochastic rounding wherever the gradient is an operand (data and weight gradients), so the
    rounding is unbiased where it accumulates over steps;
  - the last block (its two linears) in bfloat16: the paper keeps the final layers in BF16.
The naive control drops the first three: 1x16 weight blocks (W.T quantized again along the other
dimension), no transform, round to nearest.

Both start in FP8 (fp8_training's recipe) and switch once the weight gradients' amax has settled
(`Calibration`): the chapter's `--calibrate`.

GEMM paths (`training_path`): sm_100 runs cuBLASLt's NVFP4 GEMM through torch._scaled_mm
(nvfp4_gemm.gemm_native); everywhere else the GEMM is emulated: each operand's E2M1 values times
its block scales (exact in bfloat16) through a bfloat16 GEMM with float32 accumulation, its output
rounded to bfloat16 (as a native GEMM with a bfloat16 output would round it), times the two
per-tensor scales. The same products as the native GEMM, in another summation order.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pytest_lowprec.formats.hadamard import random_signs, rht
from pytest_lowprec.formats.minifloat import E2M1
from pytest_lowprec.formats.nvfp4 import BLOCK, E4M3_MAX, FLT_MAX, FP4_MAX, NVFP4Tensor, global_scales, quantize_nvfp4

from .fp8_training import RECIPE as FP8_RECIPE
from .fp8_training import Fp8Matmul, Linear, Shape, Stack, batch, objective, pair, train
from .nvfp4_gemm import NATIVE, gemm_native, gemm_path

EMULATED = "emulated-bf16-gemm"
LAST_K = 20  # final loss: the mean of the last LAST_K steps
HELD_OUT = 4  # batches no run trains on, for the held-out loss
HELD_OUT_FIRST_STEP = 1_000_000  # their seeds, far past any training step


@dataclass(frozen=True)
class Nvfp4Recipe:
    name: str
    weight_tile: tuple[int, int]
    hadamard_wgrad: bool
    stochastic_gradients: bool
    bf16_last: int = 1  # the last linears of the stack kept in bfloat16

    def __post_init__(self):
        if self.weight_tile not in ((1, BLOCK), (BLOCK, BLOCK)):
            raise ValueError(f"weight_tile is (1, 16) or (16, 16), got {self.weight_tile}")
        if self.bf16_last < 0:
            raise ValueError(f"bf16_last counts linears kept in bfloat16; it cannot be {self.bf16_last}")


# The last block (two linears) in BF16: of the suite's six-block stack, 2 of 12 linears (17%), the share the
# paper keeps (about 16% of a 62-block model's linears, mostly the final ones). On the two-block stack it
# was half the linears: held-out gaps over three draws of rounding and signs 1.28%, 1.07%, 1.41% on an
# H100, against 1.56%, 1.46%, 1.67% with only the last linear kept (2026-11-22,
# benchmarks/nvfp4_training_ablation.py).
RECIPE = Nvfp4Recipe("nvfp4", weight_tile=(BLOCK, BLOCK), hadamard_wgrad=True, stochastic_gradients=True,
                     bf16_last=2)
NAIVE = Nvfp4Recipe("naive nvfp4", weight_tile=(1, BLOCK), hadamard_wgrad=False, stochastic_gradients=False,
                    bf16_last=2)


def training_path(capability: tuple[int, int] | None, torch_has_fp4: bool | None = None) -> str:
    """NATIVE on a device whose NVFP4 GEMM path is cuBLASLt's (sm_100+), else EMULATED; None is the CPU."""
    if capability is not None and gemm_path(capability, torch_has_fp4) == NATIVE:
        return NATIVE
    return EMULATED


@dataclass(frozen=True)
class Emulated:
    """An NVFP4 operand as the emulated GEMM reads it: E2M1 values times their block scales, in bfloat16
    (exact), and the per-tensor decode scale."""

    values: torch.Tensor  # [rows, cols] bfloat16
    global_decode: torch.Tensor


def emulated_operand(x: torch.Tensor, tile: tuple[int, int] = (1, BLOCK), stochastic: bool = False,
                     generator: torch.Generator | None = None) -> Emulated:
    """quantize_nvfp4(x, tile=, stochastic=, generator=)'s block_values() and global_decode, the same bits,
    without encoding the rounded E2M1 values into codes, packing, unpacking and decoding them again, or
    repeating the block scales per element (decode(encode(v)) is v; the block scale broadcasts): about half
    the passes over the tensor, and the emulated step's time is those passes."""
    x2 = x.reshape(-1, x.shape[-1]).float()
    rows, cols = x2.shape
    blocks = x2.reshape(rows // tile[0], tile[0], cols // BLOCK, BLOCK)
    block_amax = blocks.abs().amax(dim=(1, 3), keepdim=True)
    _, decode, multiplier = global_scales(block_amax.amax())  # the largest block amax is the tensor's
    block_decode = torch.clamp(block_amax * multiplier, max=E4M3_MAX).to(torch.float8_e4m3fn).float()
    encode = torch.clamp(torch.div(1.0, block_decode * decode), max=FLT_MAX)
    scaled = torch.clamp(blocks * encode, -FP4_MAX, FP4_MAX).reshape(rows, cols)
    v = round_e2m1(scaled, stochastic=stochastic, generator=generator)
    return Emulated((v.reshape(blocks.shape) * block_decode).reshape(rows, cols).to(torch.bfloat16), decode)


def round_e2m1(x: torch.Tensor, stochastic: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """E2M1.round(x, keep_zero_sign=False) for float32 x already within +-6, in fewer passes: E2M1's
    quantum is 0.5 below 2, 1 below 4 and 2 up to 6 (frexp and ldexp find the same), and a multiple of a
    power of two is exact; stochastic rounding draws the same uniform numbers (one per element, in order)."""
    a = x.abs()
    quantum = torch.where(a >= 4.0, 2.0, torch.where(a >= 2.0, 1.0, 0.5))
    steps = a / quantum
    if stochastic:
        steps = torch.floor(steps + torch.rand(steps.shape, generator=generator, device=steps.device,
                                               dtype=torch.float32))
    else:
        steps = torch.round(steps)
    v = torch.clamp(steps * quantum, max=E2M1.max)
    return torch.where(x < 0, -v, v)


class Quantizer:
    """What the NVFP4 GEMMs of one model share: the recipe, the GEMM path, the RHT's signs and the
    generator that draws stochastic rounding (seeded: two runs of one model round alike)."""

    def __init__(self, recipe: Nvfp4Recipe, path: str, device: str | torch.device, seed: int = 0):
        self.recipe, self.path = recipe, path
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.signs = random_signs(seed)

    def operand(self, t: torch.Tensor, tile: tuple[int, int] = (1, BLOCK),
                stochastic: bool = False) -> NVFP4Tensor | Emulated:
        """t in NVFP4 as this path's GEMM reads it: packed for the native GEMM, block values for the emulation."""
        generator = self.generator if stochastic else None
        if self.path == NATIVE:
            return quantize_nvfp4(t, tile=tile, stochastic=stochastic, generator=generator, check_finite=False)
        return emulated_operand(t, tile, stochastic, generator)

    def gradient(self, g: torch.Tensor) -> NVFP4Tensor | Emulated:
        return self.operand(g, stochastic=self.recipe.stochastic_gradients)


def gemm(a: NVFP4Tensor | Emulated, b: NVFP4Tensor | Emulated, path: str, b_transposed: bool = False) -> torch.Tensor:
    """a @ b.T as float32 for a [M, K] and b [N, K], both blocked along K (the emulation's product
    passes through bfloat16 first); `b_transposed` takes b as [K, N] in 16x16 tiles (a weight in the
    data gradient), which hold the same values either way."""
    if path == NATIVE:
        b = b.transposed() if b_transposed else b
        return gemm_native(a.row_blocks(), b.row_blocks())
    out = a.values @ (b.values if b_transposed else b.values.t())
    return out.float() * (a.global_decode * b.global_decode)


class _Nvfp4Matmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, q: Quantizer):
        x2 = x.reshape(-1, x.shape[-1])
        wq = q.operand(weight, tile=q.recipe.weight_tile)
        y = gemm(q.operand(x2), wq, q.path).to(torch.bfloat16)
        if bias is not None:
            y = y + bias.to(y.dtype)
        ctx.save_for_backward(x2, weight)
        ctx.wq, ctx.q, ctx.has_bias, ctx.x_shape, ctx.x_dtype = wq, q, bias is not None, x.shape, x.dtype
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x2, weight = ctx.saved_tensors
        q = ctx.q
        g2 = grad_out.reshape(-1, grad_out.shape[-1]).float()
        # Data gradient, g [M, out] @ W [out, in]: blocks along `out`.
        gq = q.gradient(g2)
        if q.recipe.weight_tile == (BLOCK, BLOCK):
            grad_x = gemm(gq, ctx.wq, q.path, b_transposed=True)
        else:
            grad_x = gemm(gq, q.operand(weight.t()), q.path)
        # Weight gradient, g.T [out, M] @ x [M, in]: blocks along the tokens, where the RHT goes
        # (orthogonal, so it cancels in the product).
        gt, xt = g2.t(), x2.t()
        if q.recipe.hadamard_wgrad:
            gt, xt = rht(gt, q.signs), rht(xt, q.signs)
        grad_w = gemm(q.gradient(gt), q.operand(xt), q.path)
        grad_b = g2.sum(0) if ctx.has_bias else None
        ctx.wq = None
        return grad_x.reshape(ctx.x_shape).to(ctx.x_dtype), grad_w, grad_b, None


class Nvfp4Linear(torch.nn.Module):
    """A linear that trains in FP8 (`phase` "fp8") until switched to NVFP4 (`phase` "nvfp4");
    `phase` "bf16" evaluates it as the reference does."""

    def __init__(self, linear: Linear, quantizer: Quantizer):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.weight_amax = linear.weight_amax  # the FP8 phase casts the weights as fp8_training's Linear does
        self.quantizer = quantizer
        self.phase = "fp8"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.phase == "fp8":
            return Fp8Matmul.apply(x, self.weight, self.bias, FP8_RECIPE, None, self.weight_amax)
        if self.phase == "bf16":
            return F.linear(x, self.weight.to(torch.bfloat16), self.bias.to(torch.bfloat16))
        return _Nvfp4Matmul.apply(x, self.weight, self.bias, self.quantizer)


def convert(model: Stack, recipe: Nvfp4Recipe, path: str, device: str, seed: int = 0) -> list[Nvfp4Linear]:
    """Replace all linears but the last `recipe.bf16_last` with Nvfp4Linears on the same parameters
    (the rest stay bfloat16); returns the converted ones, in order."""
    linears = list(model.linears().items())
    keep = len(linears) - recipe.bf16_last
    quantizer = Quantizer(recipe, path, device, seed)
    converted = []
    for name, linear in linears[:keep]:
        parent_name, _, attr = name.rpartition(".")
        replacement = Nvfp4Linear(linear, quantizer)
        setattr(model.get_submodule(parent_name), attr, replacement)
        converted.append(replacement)
    for _, linear in linears[keep:]:
        linear.fp8 = False
    return converted


@dataclass
class Calibration:
    """FP8 warm-up until every converted linear's weight-gradient amax has settled: over the last
    `window` steps its largest value is within `settle` times its smallest, after at least `min_steps`
    and at most `max_steps` FP8 steps. NVFP4's per-tensor scale follows that amax; early in training it
    falls by orders of magnitude within a few steps."""

    min_steps: int = 10
    max_steps: int = 60
    window: int = 5
    settle: float = 1.5
    switch_step: int | None = None
    amax_history: list[list[float]] = field(default_factory=list)

    def observe(self, step: int, amaxes: list[float]) -> bool:
        """Record one step's amaxes; True when NVFP4 takes over from the next step on."""
        if self.switch_step is not None:
            return False
        self.amax_history.append(amaxes)
        fp8_steps = step + 1
        recent = self.amax_history[-self.window:]
        settled = len(recent) == self.window and all(
            max(col) <= self.settle * min(col) for col in zip(*recent, strict=True))
        if fp8_steps >= self.max_steps or (fp8_steps >= self.min_steps and settled):
            self.switch_step = fp8_steps
            return True
        return False


def held_out_loss(model: Stack, teacher: Stack, shape: Shape, device: str, phase: str = "bf16") -> float:
    """Mean loss over HELD_OUT batches no run trained on. By default every linear in bfloat16: what the
    trained weights are worth, without the NVFP4 forward's own rounding at evaluation time; `phase`
    "nvfp4" evaluates through the NVFP4 forward instead (what the training loss carries at every step)."""
    quantized = [m for m in model.modules() if isinstance(m, Nvfp4Linear)]
    phases = [m.phase for m in quantized]
    for m in quantized:
        m.phase = phase
    try:
        with torch.no_grad():
            losses = [objective(model, *batch(HELD_OUT_FIRST_STEP + i, shape, teacher, device, None)).item()
                      for i in range(HELD_OUT)]
    finally:
        for m, phase_before in zip(quantized, phases, strict=True):
            m.phase = phase_before
    return statistics.fmean(losses)


@dataclass
class Run:
    losses: list[float]
    switch_step: int | None
    skipped: list[int]
    held_out: float
    nonfinite_weights: int
    held_out_nvfp4: float | None = None  # the held-out loss through the NVFP4 forward (None: no NVFP4 layer)

    @property
    def final(self) -> float:
        """The final loss: the mean of the last LAST_K steps."""
        return statistics.fmean(self.losses[-LAST_K:])

    def gap(self, reference: Run) -> float:
        """Relative final-loss gap against `reference` (positive: this run ended higher)."""
        return (self.final - reference.final) / reference.final

    def held_out_gap(self, reference: Run) -> float:
        """Relative gap of the held-out loss (bfloat16 evaluation) against `reference`."""
        return (self.held_out - reference.held_out) / reference.held_out

    def held_out_nvfp4_gap(self, reference: Run) -> float:
        """Relative gap of the held-out loss through this run's NVFP4 forward against `reference`'s (bfloat16)."""
        return (self.held_out_nvfp4 - reference.held_out) / reference.held_out


def _finish(model: Stack, teacher: Stack, shape: Shape, device: str, losses, switch_step, skipped) -> Run:
    nonfinite = sum(int((~torch.isfinite(p)).sum()) for p in model.parameters())
    nvfp4 = any(isinstance(m, Nvfp4Linear) for m in model.modules())
    return Run(losses, switch_step, skipped, held_out_loss(model, teacher, shape, device), nonfinite,
               held_out_loss(model, teacher, shape, device, "nvfp4") if nvfp4 else None)


def train_nvfp4(student: Stack, teacher: Stack, shape: Shape, device: str, recipe: Nvfp4Recipe, path: str,
                calibration: Calibration, seed: int = 0) -> Run:
    """Train a copy of `student` under `recipe`: FP8 until `calibration` switches, NVFP4 after.
    `seed` seeds the stochastic rounding and the RHT's signs."""
    model = copy.deepcopy(student)
    converted = convert(model, recipe, path, device, seed)

    def on_gradients(step: int) -> None:
        if calibration.switch_step is not None:
            return
        amaxes = torch.stack([m.weight.grad.detach().abs().amax() for m in converted]).tolist()
        if calibration.observe(step, amaxes):
            for m in converted:
                m.phase = "nvfp4"

    losses, scaler = train(model, teacher, shape, device, on_gradients=on_gradients)
    return _finish(model, teacher, shape, device, losses, calibration.switch_step, scaler.skipped)


def train_bf16(student: Stack, teacher: Stack, shape: Shape, device: str) -> Run:
    model = copy.deepcopy(student)
    losses, scaler = train(model, teacher, shape, device)
    return _finish(model, teacher, shape, device, losses, None, scaler.skipped)


def students(shape: Shape, device: str, seed: int = 0) -> tuple[Stack, Stack]:
    """(bf16 student, teacher): every run trains a copy of the same student on the same batches."""
    bf16, _, teacher = pair(shape, device, seed)
    return bf16, teacher
