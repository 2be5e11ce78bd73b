"""FP8 training workload: the chapter's block stack with FP8 linears and a loss-scale manager.

Each linear runs its three GEMMs through torch._scaled_mm: the forward with E4M3
activations and weights, the two backward GEMMs with FP8 gradients (GRAD_DTYPE)
against E4M3 operands; every operand gets a dynamic per-tensor scale. The BF16 reference is
the same module with F.linear in bfloat16: the two runs differ only in the linears.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pytest_lowprec.formats.fp8 import quantize_tensorwise, scaled_mm

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
# The first CLASSES outputs are the logits: a 4096-way argmax of a random teacher barely moved in 150
# steps on an H100 (loss ratio 1.08), too little learning for a 1% final-loss bound to mean anything.
CLASSES = 64
# Gradients' FP8 format in the two backward GEMMs (E4M3 or E5M2), each with a dynamic per-tensor scale.
GRAD_DTYPE = E5M2


def _col_major(t: torch.Tensor) -> torch.Tensor:
    return t.t().contiguous().t()


def _quantize(t: torch.Tensor, dtype: torch.dtype, reduce_amax) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor FP8 with a dynamic scale; `reduce_amax` (data parallelism) turns the local amax into
    the group's, as TransformerEngine's amax reduction does."""
    if reduce_amax is None:
        return quantize_tensorwise(t, dtype)
    return quantize_tensorwise(t, dtype, amax=reduce_amax(t.detach().abs().amax()))


class _Fp8Matmul(torch.autograd.Function):
    """FP8 in both passes; `passes` ("both", "forward", "backward") keeps the other pass in bfloat16,
    to find which pass costs the accuracy (a diagnostic; the suite trains with "both")."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                passes: str = "both", grad_dtype: torch.dtype = E5M2, reduce_amax=None) -> torch.Tensor:
        ctx.passes, ctx.grad_dtype, ctx.reduce_amax = passes, grad_dtype, reduce_amax
        if passes == "backward":
            ctx.save_for_backward(x, weight)
            ctx.has_bias, ctx.x_shape, ctx.x_dtype = bias is not None, x.shape, x.dtype
            return F.linear(x, weight.to(torch.bfloat16), None if bias is None else bias.to(torch.bfloat16))
        x2 = x.reshape(-1, x.shape[-1])
        xq, xs = _quantize(x2, E4M3, reduce_amax)
        # [out, in]; .t() is column-major as _scaled_mm wants. Replicas hold the same weights: no reduction.
        wq, ws = quantize_tensorwise(weight, E4M3)
        y = scaled_mm(xq, xs, wq.t(), ws)
        if bias is not None:
            y = y + bias.to(y.dtype)
        if passes == "forward":
            ctx.save_for_backward(x, weight)
        else:
            ctx.save_for_backward(xq, xs, wq, ws)
        ctx.has_bias, ctx.x_shape, ctx.x_dtype = bias is not None, x.shape, x.dtype
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        if ctx.passes == "forward":
            x, weight = ctx.saved_tensors
            x2 = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
            grad_x = g2.to(torch.bfloat16) @ weight.to(torch.bfloat16)
            grad_w = (g2.to(torch.bfloat16).t() @ x2).float()
            grad_b = g2.float().sum(0) if ctx.has_bias else None
            return grad_x.reshape(ctx.x_shape).to(ctx.x_dtype), grad_w, grad_b, None, None, None
        if ctx.passes == "backward":
            x, weight = ctx.saved_tensors
            xq, xs = _quantize(x.reshape(-1, x.shape[-1]), E4M3, ctx.reduce_amax)
            wq, ws = quantize_tensorwise(weight, E4M3)
        else:
            xq, xs, wq, ws = ctx.saved_tensors
        gq, gs = _quantize(g2, ctx.grad_dtype, ctx.reduce_amax)
        grad_x = scaled_mm(gq, gs, _col_major(wq), ws)  # [M, out] @ [out, in]
        grad_w = scaled_mm(gq.t().contiguous(), gs, _col_major(xq), xs, out_dtype=torch.float32)  # [out, M] @ [M, in]
        grad_b = g2.float().sum(0) if ctx.has_bias else None
        return grad_x.reshape(ctx.x_shape).to(ctx.x_dtype), grad_w, grad_b, None, None, None


class Linear(torch.nn.Module):
    """float32 master weights; the matmul in FP8 (`fp8=True`) or in bfloat16."""

    def __init__(self, d_in: int, d_out: int, fp8: bool, generator: torch.Generator, device: str):
        super().__init__()
        bound = 1.0 / math.sqrt(d_in)
        self.weight = torch.nn.Parameter(
            (torch.rand(d_out, d_in, generator=generator, device=device) * 2 - 1) * bound)
        self.bias = torch.nn.Parameter(torch.zeros(d_out, device=device))
        self.fp8 = fp8
        self.passes = "both"
        self.grad_dtype = GRAD_DTYPE
        self.reduce_amax = None  # data parallelism: local amax -> the group's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp8:
            return _Fp8Matmul.apply(x, self.weight, self.bias, self.passes, self.grad_dtype, self.reduce_amax)
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

    def set_fp8(self, fp8: bool, passes: str = "both", grad_dtype: torch.dtype = GRAD_DTYPE) -> Stack:
        for module in self.modules():
            if isinstance(module, Linear):
                module.fp8, module.passes, module.grad_dtype = fp8, passes, grad_dtype
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

    def step(self, loss: torch.Tensor, params: list[torch.nn.Parameter], optimizer, step_index: int) -> bool:
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


def train(model: Stack, teacher: Stack, shape: Shape, device: str, poison_step: int | None = None):
    """Losses per step and the scaler, after `shape.steps` steps of AdamW on the teacher's outputs."""
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=shape.lr, weight_decay=0.0)
    scaler = LossScaler()
    losses = []
    for step in range(shape.steps):
        x, y = batch(step, shape, teacher, device, poison_step)
        loss = objective(model, x, y)
        scaler.step(loss, params, optimizer, step)
        losses.append(loss.item())
    return losses, scaler


def pair(shape: Shape, device: str, seed: int = 0) -> tuple[Stack, Stack, Stack]:
    """(bf16 model, fp8 model, teacher): the two students start from identical weights."""
    bf16 = Stack(shape.d, shape.blocks, fp8=False, seed=seed, device=device)
    fp8 = copy.deepcopy(bf16).set_fp8(True)
    teacher = Stack(shape.d, shape.blocks, fp8=False, seed=seed + 1, device=device)
    return bf16, fp8, teacher
