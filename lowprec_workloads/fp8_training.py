"""FP8 training workload: the chapter's block stack with FP8 linears and a loss-scale manager.

Each linear runs its three GEMMs through torch._scaled_mm: the forward with E4M3
activations and weights, the two backward GEMMs with FP8 gradients (E5M2 in the
suite's RECIPE) against E4M3 operands; every operand gets a dynamic per-tensor scale.
Fp8Recipe names other recipes (GEMMs left in bfloat16, E4M3 gradients, row scales)
for benchmarks/fp8_training_diagnosis.py. The BF16 reference is
the same module with F.linear in bfloat16: the two runs differ only in the linears.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pytest_lowprec.formats.fp8 import quantize_over, quantize_tensorwise, scaled_mm
from pytest_lowprec.roofline import Work

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
# The first CLASSES outputs are the logits: a 4096-way argmax of a random teacher barely moved in 150
# steps on an H100 (loss ratio 1.08), too little learning for a 1% final-loss bound to mean anything.
CLASSES = 64
GEMMS = ("fprop", "dgrad", "wgrad")
SCALINGS = ("tensor", "row")
WEIGHT_AMAX = ("current", "previous")


@dataclass(frozen=True)
class Fp8Recipe:
    """Which of a linear's three GEMMs run in FP8 (the others in bfloat16), the gradients' FP8 format,
    and the scaling: "tensor" is one dynamic scale per operand; "row" is one per row of each operand
    along the dimensions the GEMM does not reduce (per token and per output channel in the forward,
    per token and per input channel in the data gradient, per output and input channel over the
    tokens in the weight gradient), which _scaled_mm applies as row and column scales."""

    gemms: tuple[str, ...] = GEMMS
    grad_dtype: torch.dtype = E5M2
    scaling: str = "tensor"
    # GEMMs that accumulate in the tensor cores' fast, reduced-precision FP8 accumulator; the others
    # promote partial sums to float32 (cuBLAS's split accumulator), as TransformerEngine does for
    # both backward GEMMs. With fast accumulation in the data gradient, whose reduction runs over
    # 16384 outputs of fc1, the final loss ended 1.32% above BF16 on an H100 against 0.41% for the
    # forward alone and -0.05% for the weight gradient alone (2026-11-22).
    fast_accum: tuple[str, ...] = ("fprop",)
    # The weights' scale from their amax at this step's cast ("current") or at the previous step's
    # ("previous", delayed scaling for the weights alone); activations and gradients always use their own.
    weight_amax: str = "previous"

    def __post_init__(self):
        unknown = (set(self.gemms) | set(self.fast_accum)) - set(GEMMS)
        if unknown:
            raise ValueError(f"unknown GEMM(s) {sorted(unknown)}; a linear has {', '.join(GEMMS)}")
        if self.grad_dtype not in (E4M3, E5M2):
            raise ValueError(f"gradients are E4M3 or E5M2, got {self.grad_dtype}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"scaling {self.scaling!r} is not one of {', '.join(SCALINGS)}")
        if self.weight_amax not in WEIGHT_AMAX:
            raise ValueError(f"weight_amax {self.weight_amax!r} is not one of {', '.join(WEIGHT_AMAX)}")

    @property
    def label(self) -> str:
        grads = "e4m3" if self.grad_dtype == E4M3 else "e5m2"
        gemms = "all" if set(self.gemms) == set(GEMMS) else "+".join(self.gemms) or "none"
        fast = "+".join(self.fast_accum) or "none"
        return (f"fp8 {gemms}, {grads} gradients, {self.scaling} scales, fast accumulation {fast}, "
                f"weight amax {self.weight_amax}")


# The suite's recipe: FP8 in all three GEMMs, E5M2 gradients, a dynamic scale per tensor for activations
# and gradients, the weights' from their amax at the previous step's cast.
RECIPE = Fp8Recipe()


def quantize_operand(t: torch.Tensor, dtype: torch.dtype, reduce_amax=None, transpose: bool = False,
                     amax: torch.Tensor | None = None, seen_amax: torch.Tensor | None = None):
    """Per-tensor FP8: (q, inv) or, with `transpose`, (q, q.t().contiguous(), inv).

    The scale comes from t's own amax (dynamic scaling) unless `amax` is given (an earlier step's:
    delayed scaling); `reduce_amax` (data parallelism) turns the local amax into the group's, as
    TransformerEngine's amax reduction does; `seen_amax` (a float32 scalar holding 0) receives t's own
    amax. On CUDA the Triton quantizer gives the same bits as the eager one in one cast pass that writes
    both layouts (and finds t's amax), after an amax pass when no amax is given; the eager path moves
    about five times the bytes, which held the FP8 step at 0.69x BF16 on an H100.
    """
    if t.is_cuda and t.ndim == 2:
        try:
            from pytest_lowprec.formats.triton_quant import absmax, quantize_fp8_tensorwise_triton
        except ImportError:  # a CUDA torch without Triton: the eager path gives the same bits
            pass
        else:
            t = t.detach().contiguous()
            if amax is None:
                amax = absmax(t) if reduce_amax is None else reduce_amax(absmax(t))
            return quantize_fp8_tensorwise_triton(t, dtype, amax=amax, transpose=transpose, seen_amax=seen_amax)
    return quantize_operand_eager(t, dtype, reduce_amax, transpose, amax, seen_amax)


def quantize_operand_eager(t: torch.Tensor, dtype: torch.dtype, reduce_amax=None, transpose: bool = False,
                           amax: torch.Tensor | None = None, seen_amax: torch.Tensor | None = None):
    """quantize_operand in torch operations (the CPU's path; benchmarks time it on the GPU)."""
    own = t.detach().abs().amax().float()
    if seen_amax is not None:
        seen_amax.copy_(own)
    if amax is None:
        amax = own if reduce_amax is None else reduce_amax(own)
    q, inv = quantize_tensorwise(t, dtype, amax=amax)
    return (q, q.t().contiguous(), inv) if transpose else (q, inv)


class WeightAmax:
    """A linear's weight amax as its last FP8 cast found it: the next cast's scale when the recipe
    takes the weights' amax from the previous step (Fp8Recipe.weight_amax == "previous")."""

    def __init__(self):
        self.value: torch.Tensor | None = None


def quantize_weight(weight: torch.Tensor, recipe: Fp8Recipe, state: WeightAmax | None):
    """(wq, wq transposed, inv) in E4M3. Under weight_amax "previous" the scale is the amax the last
    cast saw and the cast records this one's, so the weights are read once a step (the amax pass over
    the float32 master weights was 0.37 ms of a 10.7 ms FP8 step on an H100); the first cast and a
    linear without a state use the current amax. The optimizer moves each weight by about the learning
    rate a step, so a weight past the previous amax saturates by about that much."""
    if recipe.weight_amax == "current" or state is None:
        return quantize_operand(weight, E4M3, transpose=True)
    seen = torch.zeros((), dtype=torch.float32, device=weight.device)
    out = quantize_operand(weight, E4M3, transpose=True, amax=state.value, seen_amax=seen)
    state.value = seen
    return out


def _operands(a: torch.Tensor, b_rows: torch.Tensor, a_dtype, b_dtype, recipe: Fp8Recipe, reduce_amax):
    """FP8 operands of a @ b_rows.T (both given row-major, reduction over their last dimension):
    (aq, a_inv, bq column-major, b_inv) as _scaled_mm takes them."""
    a, b_rows = a.contiguous(), b_rows.contiguous()
    if recipe.scaling == "row":
        aq, a_inv = quantize_over(a, (-1,), a_dtype)  # [M, 1]
        bq, b_inv = quantize_over(b_rows, (-1,), b_dtype)  # [N, 1]
        return aq, a_inv, bq.t(), b_inv.t()
    aq, a_inv = quantize_operand(a, a_dtype, reduce_amax)
    bq, b_inv = quantize_operand(b_rows, b_dtype, reduce_amax)
    return aq, a_inv, bq.t(), b_inv


def _gemm(name: str, a, b_rows, a_dtype, b_dtype, recipe: Fp8Recipe, reduce_amax, out_dtype=torch.bfloat16):
    """GEMM `name`, a @ b_rows.T, in FP8 under `recipe`. Row scales take a bfloat16 output (the
    row-scaled kernel on Hopper has no float32 one)."""
    aq, a_inv, bq, b_inv = _operands(a, b_rows, a_dtype, b_dtype, recipe, reduce_amax)
    fast = name in recipe.fast_accum
    if recipe.scaling == "row":
        return scaled_mm(aq, a_inv, bq, b_inv, fast_accum=fast).to(out_dtype)
    return scaled_mm(aq, a_inv, bq, b_inv, out_dtype=out_dtype, fast_accum=fast)


class Fp8Matmul(torch.autograd.Function):
    """y = x @ weight.T + bias with the GEMMs `recipe` names in FP8 and the rest in bfloat16."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                recipe: Fp8Recipe = RECIPE, reduce_amax=None, weight_amax: WeightAmax | None = None) -> torch.Tensor:
        if recipe.scaling == "row" and reduce_amax is not None:
            raise ValueError("row scales are per rank; data parallelism needs tensor scales (scaling='tensor')")
        ctx.recipe, ctx.reduce_amax = recipe, reduce_amax
        ctx.has_bias, ctx.x_shape, ctx.x_dtype = bias is not None, x.shape, x.dtype
        x2 = x.reshape(-1, x.shape[-1])
        tensorwise = recipe.scaling == "tensor"
        if "fprop" in recipe.gemms and tensorwise and {"dgrad", "wgrad"} <= set(recipe.gemms):
            # The plain recipe quantizes x and the weight once, and keeps for the backward only the
            # transposed copies its GEMMs read (_scaled_mm's operands are K-major on Hopper).
            xq, xqt, xs = quantize_operand(x2, E4M3, reduce_amax, transpose=True)
            wq, wqt, ws = quantize_weight(weight, recipe, weight_amax)  # replicas hold the same weights
            y = scaled_mm(xq, xs, wq.t(), ws, fast_accum="fprop" in recipe.fast_accum,
                          bias=None if bias is None else bias.to(torch.bfloat16))
            ctx.save_for_backward(xqt, xs, wqt, ws)
            ctx.saved_fp8 = True
            return y.reshape(*x.shape[:-1], weight.shape[0])
        else:
            if "fprop" in recipe.gemms:
                y = _gemm("fprop", x2, weight, E4M3, E4M3, recipe, reduce_amax)
            else:
                y = x2.to(torch.bfloat16) @ weight.to(torch.bfloat16).t()
            ctx.save_for_backward(x2, weight)
            ctx.saved_fp8 = False
        if bias is not None:
            y = y + bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        recipe, reduce_amax = ctx.recipe, ctx.reduce_amax
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        grad_b = g2.sum(0, dtype=torch.float32) if ctx.has_bias else None
        if ctx.saved_fp8:
            xqt, xs, wqt, ws = ctx.saved_tensors
            gq, gqt, gs = quantize_operand(g2, recipe.grad_dtype, reduce_amax, transpose=True)
            # [M, out] @ [out, in], then [out, M] @ [M, in]; B's transposed copies are column-major views
            grad_x = scaled_mm(gq, gs, wqt.t(), ws, fast_accum="dgrad" in recipe.fast_accum)
            grad_w = scaled_mm(gqt, gs, xqt.t(), xs, out_dtype=torch.float32,
                               fast_accum="wgrad" in recipe.fast_accum)
            return grad_x.reshape(ctx.x_shape).to(ctx.x_dtype), grad_w, grad_b, None, None, None
        x2, weight = ctx.saved_tensors
        if "dgrad" in recipe.gemms:  # [M, out] @ [out, in]: reduce over out
            grad_x = _gemm("dgrad", g2, weight.t(), recipe.grad_dtype, E4M3, recipe, reduce_amax)
        else:
            grad_x = g2.to(torch.bfloat16) @ weight.to(torch.bfloat16)
        if "wgrad" in recipe.gemms:  # [out, M] @ [M, in]: reduce over tokens
            grad_w = _gemm("wgrad", g2.t(), x2.t(), recipe.grad_dtype, E4M3, recipe, reduce_amax, torch.float32)
        else:
            grad_w = (g2.to(torch.bfloat16).t() @ x2.to(torch.bfloat16)).float()
        return grad_x.reshape(ctx.x_shape).to(ctx.x_dtype), grad_w, grad_b, None, None, None


class Linear(torch.nn.Module):
    """float32 master weights; the matmul in FP8 (`fp8=True`, under `recipe`) or in bfloat16."""

    def __init__(self, d_in: int, d_out: int, fp8: bool, generator: torch.Generator, device: str):
        super().__init__()
        bound = 1.0 / math.sqrt(d_in)
        self.weight = torch.nn.Parameter(
            (torch.rand(d_out, d_in, generator=generator, device=device) * 2 - 1) * bound)
        self.bias = torch.nn.Parameter(torch.zeros(d_out, device=device))
        self.fp8 = fp8
        self.recipe = RECIPE
        self.reduce_amax = None  # data parallelism: local amax -> the group's
        self.weight_amax = WeightAmax()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp8:
            return Fp8Matmul.apply(x, self.weight, self.bias, self.recipe, self.reduce_amax, self.weight_amax)
        return F.linear(x, self.weight.to(torch.bfloat16), self.bias.to(torch.bfloat16))


class Block(torch.nn.Module):
    """LayerNorm -> Linear d->4d -> GELU -> Linear 4d->d, with a residual; bfloat16 activations."""

    def __init__(self, d: int, fp8: bool, generator: torch.Generator, device: str):
        super().__init__()
        self.norm = torch.nn.LayerNorm(d, device=device)
        self.fc1 = Linear(d, 4 * d, fp8, generator, device)
        self.fc2 = Linear(4 * d, d, fp8, generator, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x.float()).to(torch.bfloat16)
        return x + self.fc2(F.gelu(self.fc1(h)))


class Stack(torch.nn.Module):
    def __init__(self, d: int, blocks: int, fp8: bool, seed: int, device: str):
        super().__init__()
        gen = torch.Generator(device=device).manual_seed(seed)
        self.blocks = torch.nn.ModuleList(Block(d, fp8, gen, device) for _ in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def set_fp8(self, fp8: bool, recipe: Fp8Recipe = RECIPE) -> Stack:
        for module in self.modules():
            if isinstance(module, Linear):
                module.fp8, module.recipe = fp8, recipe
        return self

    def linears(self) -> dict[str, Linear]:
        return {name: m for name, m in self.named_modules() if isinstance(m, Linear)}


class LossScaler:
    """The loss-scale manager: grows after `growth_interval` finite steps, halves on a non-finite
    gradient, and skips (and counts) that step so no NaN reaches the weights."""

    def __init__(self, scale: float = 2.0**12, growth: float = 2.0, backoff: float = 0.5,
                 growth_interval: int = 25):
        self.scale, self.growth, self.backoff, self.interval = scale, growth, backoff, growth_interval
        self.good_steps = 0
        self.skipped: list[int] = []

    def step(self, loss: torch.Tensor, params: list[torch.nn.Parameter], optimizer, step_index: int,
             on_gradients=None) -> bool:
        """Backward, then the update if every gradient is finite; `on_gradients(step_index)` sees the
        unscaled gradients just before the optimizer does."""
        (loss * self.scale).backward()
        grads = [p.grad for p in params if p.grad is not None]
        finite = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) and math.isfinite(loss.item())
        if not finite:
            optimizer.zero_grad(set_to_none=True)
            self.scale *= self.backoff
            self.good_steps = 0
            self.skipped.append(step_index)
            return False
        for g in grads:
            g.div_(self.scale)
        if on_gradients is not None:
            on_gradients(step_index)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.good_steps += 1
        if self.good_steps == self.interval:
            self.scale *= self.growth
            self.good_steps = 0
        return True


@dataclass(frozen=True)
class Shape:
    d: int
    blocks: int
    tokens: int
    steps: int
    # AdamW's learning rate. At d=4096, 1e-3 is unstable: BF16's loss jumps up to 4.3x from one step
    # to the next, and the same training with each batch's tokens shuffled (only summation order
    # differs) ends 0.31% (BF16) and 1.15% (FP8) apart, so a 1% bound would gate noise. 3e-4 learns as
    # much (first/last loss 2.10x) and the shuffled runs end 0.00% apart (H100, 2026-11-22,
    # benchmarks/training_noise_floor.py). d=64 is stable at 1e-3.
    lr: float = 1e-3


def batch(step: int, shape: Shape, teacher: Stack, device: str, poison_step: int | None):
    """The same inputs and labels for every run: a seeded draw per step, labels the fixed teacher's argmax.

    A classification over the d outputs (like a language model's next token over its vocabulary): a
    regression to the teacher's outputs instead ends at an MSE so small that FP8's forward noise is a
    large part of it (a 10% final-loss gap on an H100 at d=4096, 2026-11-22), a regime nobody trains in.
    """
    gen = torch.Generator(device=device).manual_seed(10_000 + step)
    x = torch.randn(shape.tokens, shape.d, generator=gen, device=device).to(torch.bfloat16)
    with torch.no_grad():
        y = teacher(x)[:, :CLASSES].float().argmax(dim=-1)
    if step == poison_step:
        x = x * 1e38  # bf16 overflows to inf: the step must be skipped, not applied
    return x, y


def objective(model: Stack, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x)[:, :CLASSES].float(), labels)


def train(model: Stack, teacher: Stack, shape: Shape, device: str, poison_step: int | None = None,
          on_gradients=None):
    """Losses per step and the scaler, after `shape.steps` steps of AdamW on the teacher's outputs.
    `on_gradients(step)` runs after each finite step's backward, before the update."""
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=shape.lr, weight_decay=0.0)
    scaler = LossScaler()
    losses = []
    for step in range(shape.steps):
        x, y = batch(step, shape, teacher, device, poison_step)
        loss = objective(model, x, y)
        scaler.step(loss, params, optimizer, step, on_gradients)
        losses.append(loss.item())
    return losses, scaler


def step_function(models, x: torch.Tensor, labels: torch.Tensor, lr: float, fused: bool | None = None):
    """step(model): forward, backward and an AdamW update (`fused` as AdamW takes it) of one of
    `models` on (x, labels), each model with its own optimizer; for timing a training step."""
    optimizers = {id(m): torch.optim.AdamW(m.parameters(), lr=lr, fused=fused) for m in models}

    def step(model) -> None:
        objective(model, x, labels).backward()
        optimizers[id(model)].step()
        optimizers[id(model)].zero_grad(set_to_none=True)

    return step


def triton_quantizer_work(shape: Shape) -> tuple[Work, ...]:
    """The Triton quantizer kernels of one FP8 training step (steady state), which traffic.eager_work
    cannot see: per linear, its input and its output gradient (bfloat16) each take an amax pass and a
    cast pass writing both layouts; its float32 master weight, scaled by the previous step's amax, one
    cast pass that also finds the next amax."""
    work = []
    for _ in range(shape.blocks):
        for d_in, d_out in ((shape.d, 4 * shape.d), (4 * shape.d, shape.d)):
            for elements in (shape.tokens * d_in, shape.tokens * d_out):  # input, output gradient
                work += [Work(nbytes=2 * elements), Work(nbytes=2 * elements + 2 * elements)]
            if RECIPE.weight_amax == "previous":
                work.append(Work(nbytes=4 * d_in * d_out + 2 * d_in * d_out))
            else:
                work += [Work(nbytes=4 * d_in * d_out), Work(nbytes=4 * d_in * d_out + 2 * d_in * d_out)]
    return tuple(work)


def pair(shape: Shape, device: str, seed: int = 0) -> tuple[Stack, Stack, Stack]:
    """(bf16 model, fp8 model, teacher): the two students start from identical weights."""
    bf16 = Stack(shape.d, shape.blocks, fp8=False, seed=seed, device=device)
    fp8 = copy.deepcopy(bf16).set_fp8(True)
    teacher = Stack(shape.d, shape.blocks, fp8=False, seed=seed + 1, device=device)
    return bf16, fp8, teacher
