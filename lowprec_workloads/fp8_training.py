"""FP8 training workload: the chapter's block stack with FP8 linears and a loss-scale manager.

Each linear runs its three GEMMs through torch._scaled_mm: the forward with E4M3
activations and weights, the two backward GEMMs with FP8 gradients (E5M2 in the
suite's RECIPE) against E4M3 operands; every operand gets a dynamic per-tensor scale.
Fp8Recipe names other recipes (GEMMs left in bfloat16, E4M3 gradients, row scales)
for benchmarks/fp8_training_diagnosis.py. The BF16 reference is
the same module with F.linear in bfloat16: the two runs differ only in the linears.

By default each linear runs alone (Fp8Matmul: per linear, its input and its output gradient each an amax
pass and a cast pass writing both layouts, its weight one cast pass) and torch's AdamW updates the
weights. Two fusions are options (FUSE_BLOCKS, OPTIMIZER_CASTS, off: both made the H200's step slower),
each computing the same numbers (on CUDA, fp8_training_triton's kernels; elsewhere the same operations
eagerly, in the same order):
  - a block's two linears and the GELU between them run as one autograd function (Fp8Mlp): GELU's
    output and the GELU backward's output are quantized (amax pass, then one cast pass writing both
    layouts) from GELU's input without being written in bfloat16, and the bias gradients are the
    column sums those amax passes take;
  - the optimizer (Fp8AdamW, made by `adamw`) writes each FP8 linear's next forward weight, in both
    layouts, in its own pass over the weight, as TransformerEngine's FusedAdam does for FP8
    parameters: the forward casts no weight. The casts are the ones the forward would make (the
    weights' amax from their previous cast), so the numbers are the recipe's.
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
ACTIVATION_AMAX = ("current", "history")


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
    # Activations' and gradients' scales from their own amax at this cast ("current": an amax pass, then the
    # cast), or from the largest finite amax their earlier casts saw ("history": TransformerEngine's
    # DelayedScaling with its default 1024-step history, longer than these runs; the cast itself adds this
    # amax, one pass). A cast of a value past the history's amax saturates. Fused blocks (Fp8Mlp) only.
    activation_amax: str = "current"

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
        if self.activation_amax not in ACTIVATION_AMAX:
            raise ValueError(f"activation_amax {self.activation_amax!r} is not one of {', '.join(ACTIVATION_AMAX)}")
        if self.activation_amax == "history" and (self.scaling != "tensor" or set(self.gemms) != set(GEMMS)):
            raise ValueError("activation_amax 'history' runs in a fused block: tensor scales, all three GEMMs in FP8")

    @property
    def label(self) -> str:
        grads = "e4m3" if self.grad_dtype == E4M3 else "e5m2"
        gemms = "all" if set(self.gemms) == set(GEMMS) else "+".join(self.gemms) or "none"
        fast = "+".join(self.fast_accum) or "none"
        return (f"fp8 {gemms}, {grads} gradients, {self.scaling} scales, fast accumulation {fast}, "
                f"weight amax {self.weight_amax}, activation amax {self.activation_amax}")


# The two fusions, off: on an NVIDIA H200 at the chapter's shape (2026-12-01, benchmarks/fp8_training_step.py,
# docs/measurements/fp8-training-step-h200-2026-12-01.md) the FP8 step per linear with the forward's weight
# casts was 1.425x BF16 [1.424, 1.427]; the fused block 1.377x, the optimizer's casts 1.290x, both 1.254x.
# Fp8AdamW's pass took 3.2-3.5 ms against 2.9 ms for torch's fused AdamW and the four weight casts, and the
# fused block's amax and cast passes were no cheaper than the separate ones. The benchmark sets them to time
# each option; fusable() and adamw() read them.
FUSE_BLOCKS = False
OPTIMIZER_CASTS = False

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
    takes the weights' amax from the previous step (Fp8Recipe.weight_amax == "previous"); and the
    cast itself when the optimizer made it (`offer`), for the next forward to take instead of casting."""

    def __init__(self):
        # Both amaxes live in one buffer each for the linear's life: a CUDA graph of a training step replays
        # the addresses its capture found, so a new tensor a step would leave it reading the one the capture
        # replaced (freed memory) and writing one no later step reads.
        self.value: torch.Tensor | None = None
        self._seen: torch.Tensor | None = None
        self._cast: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._key: tuple[int, int] | None = None

    def seen(self, device: torch.device) -> torch.Tensor:
        """A float32 scalar holding 0, for the next cast to write its own amax into (its buffer, zeroed)."""
        if self._seen is None:
            self._seen = torch.zeros((), dtype=torch.float32, device=device)
        else:
            self._seen.zero_()
        return self._seen

    def record(self, seen: torch.Tensor) -> None:
        """The amax a cast found, as the next cast's scale: copied into `value`'s buffer."""
        if self.value is None:
            self.value = seen.detach().clone()
        else:
            self.value.copy_(seen)

    def offer(self, weight: torch.Tensor, cast: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        """(wq, wq transposed, inv) of `weight` as it is now, cast with `value` (which the caster then updated)."""
        self._cast, self._key = cast, (weight.data_ptr(), weight._version)

    @property
    def held_bytes(self) -> int:
        """Bytes of the offered cast not yet taken (the FP8 weight a model holds between steps)."""
        return 0 if self._cast is None else sum(t.numel() * t.element_size() for t in self._cast)

    def take(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The offered cast if `weight` is still the tensor it was made from (no in-place change since: its
        version counter), else None; taken once, so the step holds no second copy."""
        cast, self._cast = self._cast, None
        return cast if cast is not None and self._key == (weight.data_ptr(), weight._version) else None


def quantize_weight(weight: torch.Tensor, recipe: Fp8Recipe, state: WeightAmax | None):
    """(wq, wq transposed, inv) in E4M3. Under weight_amax "previous" the scale is the amax the last
    cast saw and the cast records this one's, so the weights are read once a step (the amax pass over
    the float32 master weights was 0.37 ms of a 10.7 ms FP8 step on an H100); the first cast and a
    linear without a state use the current amax. The optimizer moves each weight by about the learning
    rate a step, so a weight past the previous amax saturates by about that much."""
    if recipe.weight_amax == "current" or state is None:
        return quantize_operand(weight, E4M3, transpose=True)
    offered = state.take(weight)
    if offered is not None:  # the optimizer cast the weight as it wrote it: the same bits as casting here
        return offered
    seen = state.seen(weight.device)
    out = quantize_operand(weight, E4M3, transpose=True, amax=state.value, seen_amax=seen)
    state.record(seen)  # after the cast, which reads the old value first (stream order)
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
        if recipe.activation_amax != "current":
            raise ValueError("activation_amax 'history' keeps its amaxes in a fused block (Fp8Mlp): this linear "
                             "runs alone (a block whose linears differ, or a sharded weight)")
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


def _kernels(t: torch.Tensor):
    """fp8_training_triton for a CUDA tensor, None elsewhere (or without Triton): the eager operations
    then compute the same numbers, and are the CPU's path."""
    if not t.is_cuda:
        return None
    try:
        from . import fp8_training_triton
    except ImportError:
        return None
    return fp8_training_triton


def _reduced(amax: torch.Tensor, reduce_amax) -> torch.Tensor:
    return amax if reduce_amax is None else reduce_amax(amax)


class AmaxHistory:
    """The largest finite amax one tensor's casts have seen (None before the first): its next cast's
    scale under activation_amax "history"."""

    def __init__(self):
        self.value: torch.Tensor | None = None


OPS = ("identity", "gelu", "gelu_backward")
# On CUDA, how the cast of GELU's output (or its backward's) gets it: "written", the amax pass writes it in
# bfloat16 and the cast reads it (GELU evaluated once; one more write and read of 128 MB at the chapter's
# shape); "recomputed", the cast computes it from GELU's input, for the transposed copy too, rereading the
# tile (no bfloat16 copy, GELU evaluated three times, which erf and exp can make compute-bound);
# "registers", the cast computes it once and transposes the FP8 tile with tl.trans (see fp8_training_triton).
# With an amax history, "recomputed" and "registers" cast in one pass. The same bits every way;
# benchmarks/fp8_training_step.py times each.
GELU_CASTS = ("written", "recomputed", "registers")
GELU_CAST = "written"


def _eager_op(a: torch.Tensor, b: torch.Tensor | None, op: str) -> torch.Tensor:
    if op == "gelu":
        return F.gelu(a)
    if op == "gelu_backward":
        return torch.ops.aten.gelu_backward(a, b)
    return a


def fused_quantize(a: torch.Tensor, dtype: torch.dtype, op: str = "identity", b: torch.Tensor | None = None,
                   colsum: bool = False, reduce_amax=None, history: AmaxHistory | None = None):
    """(q, q transposed, inv, column sums in float32 or None) of op(a, b) for 2D tensors: op is "identity",
    "gelu" (F.gelu(a)) or "gelu_backward" (GELU's backward of the gradient a at GELU's input b), `colsum`
    sums op(a, b) over its rows (a bias gradient). The scale comes from op(a, b)'s own amax (reduced by
    `reduce_amax`), or, with `history`, from the history's amax, the cast adding this one's finite amax.

    On CUDA for bfloat16 (fp8_training_triton): an amax pass that also takes the sums (and writes op(a, b)
    in bfloat16 when GELU_CAST is "written"), then one cast pass writing both layouts; with a history and
    op(a, b) computed in the cast (the identity, or GELU_CAST "recomputed" or "registers"), the cast pass
    alone. Elsewhere the same operations eagerly: op, sums, amax, quantize_operand.
    """
    if op not in OPS:
        raise ValueError(f"op {op!r} is not one of {', '.join(OPS)}")
    a = a.contiguous()
    b = None if b is None else b.contiguous()
    kernels = _kernels(a)
    if kernels is None or a.dtype != torch.bfloat16 or (b is not None and b.dtype != torch.bfloat16):
        t = _eager_op(a, b, op)
        sums = t.sum(0, dtype=torch.float32) if colsum else None
        if history is None:
            return (*quantize_operand(t, dtype, reduce_amax, transpose=True), sums)
        finite = torch.where(torch.isfinite(t), t.detach().abs(), 0).amax().float()
        if history.value is None:  # the first cast: its own amax
            amax = _reduced(t.detach().abs().amax().float(), reduce_amax)
            history.value = _reduced(finite, reduce_amax)
        else:
            amax = history.value
            history.value = _reduced(torch.maximum(amax, finite), reduce_amax)
        return (*quantize_operand(t, dtype, transpose=True, amax=amax), sums)
    code = OPS.index(op)
    if GELU_CAST not in GELU_CASTS:
        raise ValueError(f"GELU_CAST {GELU_CAST!r} is not one of {', '.join(GELU_CASTS)}")
    # The identity's cast reads `a` itself: nothing to write first, and the reread transposed tile is a load.
    computed = op == "identity" or GELU_CAST != "written"
    registers = op != "identity" and GELU_CAST == "registers"
    if history is not None and history.value is not None and computed:  # one pass, the scale known
        seen = history.value.clone()
        out = kernels.quantize_transposed(a, history.value, dtype, b=b, op=code, seen=seen, colsum=colsum,
                                          registers=registers)
        history.value = _reduced(seen, reduce_amax)
        return out
    amax, sums, written = kernels.amax_of(a, b, op=code, colsum=colsum, out=not computed)
    source, source_b, source_op = (a, b, code) if computed else (written, None, kernels.IDENTITY)
    if history is None:
        amax = _reduced(amax, reduce_amax)
        if source_op == kernels.IDENTITY:  # the quantizer every FP8 linear's input takes (the same bits)
            from pytest_lowprec.formats.triton_quant import quantize_fp8_tensorwise_triton

            return (*quantize_fp8_tensorwise_triton(source, dtype, amax=amax, transpose=True), sums)
        return (*kernels.quantize_transposed(source, amax, dtype, b=source_b, op=source_op,
                                             registers=registers)[:3], sums)
    first = history.value is None  # the first cast takes its own amax; the history keeps the finite one
    seen = torch.zeros((), dtype=torch.float32, device=a.device) if first else history.value.clone()
    scale_amax = _reduced(amax, reduce_amax) if first else history.value
    q, qt, inv, _ = kernels.quantize_transposed(source, scale_amax, dtype, b=source_b, op=source_op, seen=seen,
                                                registers=registers)
    history.value = _reduced(seen, reduce_amax)
    return q, qt, inv, sums


def fusable(fc1: torch.nn.Module, fc2: torch.nn.Module) -> bool:
    """Whether a block's fc2(gelu(fc1(h))) runs as Fp8Mlp: FUSE_BLOCKS is on and both are this module's FP8
    Linears under one tensorwise recipe with all three GEMMs in FP8 and one amax reduction, holding
    unsharded weights (a sharded weight, e.g. FSDP2's per-linear DTensor, is gathered by the linear's own
    call)."""
    linears = (fc1, fc2)
    return (FUSE_BLOCKS and all(type(m) is Linear and m.fp8 for m in linears) and fc1.recipe == fc2.recipe
            and fc1.recipe.scaling == "tensor" and set(fc1.recipe.gemms) == set(GEMMS)
            and fc1.reduce_amax is fc2.reduce_amax
            and all(_plain(p) for m in linears for p in (m.weight, m.bias)))


class Fp8Mlp(torch.autograd.Function):
    """fc2(gelu(fc1(h))) for a block whose two FP8 Linears are `fusable`: the GEMMs two Fp8Matmuls run, on
    the same FP8 operands, with GELU, its backward and the bias gradients folded into the quantization
    passes (fused_quantize). Saves what the two Fp8Matmuls and GELU save: the transposed FP8 copies the
    backward's GEMMs read, and GELU's input. The linears hold the recipe, the amax reduction and the
    amax states (their weights' and, under activation_amax "history", their inputs' and gradients')."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                fc1: Linear, fc2: Linear) -> torch.Tensor:
        recipe, reduce_amax = fc1.recipe, fc1.reduce_amax
        history = recipe.activation_amax == "history"
        ctx.fc1, ctx.fc2, ctx.h_shape, ctx.h_dtype = fc1, fc2, h.shape, h.dtype
        fprop = "fprop" in recipe.fast_accum
        hq, hqt, hs, _ = fused_quantize(h.reshape(-1, h.shape[-1]), E4M3, reduce_amax=reduce_amax,
                                        history=fc1.input_amax if history else None)
        w1q, w1qt, w1s = quantize_weight(w1, recipe, fc1.weight_amax)
        pre = scaled_mm(hq, hs, w1q.t(), w1s, fast_accum=fprop, bias=b1.to(torch.bfloat16))
        del hq, w1q
        aq, aqt, as_, _ = fused_quantize(pre, E4M3, "gelu", reduce_amax=reduce_amax,
                                         history=fc2.input_amax if history else None)
        w2q, w2qt, w2s = quantize_weight(w2, recipe, fc2.weight_amax)
        y = scaled_mm(aq, as_, w2q.t(), w2s, fast_accum=fprop, bias=b2.to(torch.bfloat16))
        ctx.save_for_backward(hqt, hs, w1qt, w1s, pre, aqt, as_, w2qt, w2s)
        return y.reshape(*h.shape[:-1], w2.shape[0])

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        hqt, hs, w1qt, w1s, pre, aqt, as_, w2qt, w2s = ctx.saved_tensors
        fc1, fc2 = ctx.fc1, ctx.fc2
        recipe, reduce_amax = fc1.recipe, fc1.reduce_amax
        history = recipe.activation_amax == "history"
        dgrad, wgrad = "dgrad" in recipe.fast_accum, "wgrad" in recipe.fast_accum
        gq, gqt, gs, grad_b2 = fused_quantize(grad_y.reshape(-1, grad_y.shape[-1]), recipe.grad_dtype, colsum=True,
                                              reduce_amax=reduce_amax, history=fc2.grad_amax if history else None)
        grad_a = scaled_mm(gq, gs, w2qt.t(), w2s, fast_accum=dgrad)
        grad_w2 = scaled_mm(gqt, gs, aqt.t(), as_, out_dtype=torch.float32, fast_accum=wgrad)
        del gq, gqt
        g1q, g1qt, g1s, grad_b1 = fused_quantize(grad_a, recipe.grad_dtype, "gelu_backward", b=pre, colsum=True,
                                                 reduce_amax=reduce_amax, history=fc1.grad_amax if history else None)
        del grad_a
        grad_h = scaled_mm(g1q, g1s, w1qt.t(), w1s, fast_accum=dgrad)
        grad_w1 = scaled_mm(g1qt, g1s, hqt.t(), hs, out_dtype=torch.float32, fast_accum=wgrad)
        return grad_h.reshape(ctx.h_shape).to(ctx.h_dtype), grad_w1, grad_b1, grad_w2, grad_b2, None, None


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
        # Under activation_amax "history", in a fused block: this linear's input's and output gradient's.
        self.input_amax, self.grad_amax = AmaxHistory(), AmaxHistory()

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
        fc1, fc2 = self.fc1, self.fc2
        if fusable(fc1, fc2):
            return x + Fp8Mlp.apply(h, fc1.weight, fc1.bias, fc2.weight, fc2.bias, fc1, fc2)
        return x + fc2(F.gelu(fc1(h)))


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


def emits_weights(recipe: Fp8Recipe) -> bool:
    """Whether a linear under `recipe` can take its FP8 weight from the optimizer: the plain recipe's forward
    casts the weight once, with the amax its previous cast recorded, which the optimizer has at hand."""
    return recipe.scaling == "tensor" and set(recipe.gemms) == set(GEMMS) and recipe.weight_amax == "previous"


class Fp8AdamW:
    """AdamW that writes each FP8 linear's next forward weight (E4M3, both layouts) as it updates it.

    On CUDA an FP8 linear's float32 weight is updated by fp8_training_triton.adamw_fp8, torch's AdamW rule in
    float32, which casts the updated tile in the same pass (the weight is read once a step instead of twice);
    every other parameter (and every weight elsewhere) goes through torch.optim.AdamW, after which the
    eager cast runs. Either way the cast is quantize_weight's, offered to the linear's WeightAmax, so the
    forward's weights are the bits it would have cast itself. `step` and `zero_grad` as LossScaler uses them.
    """

    def __init__(self, model: torch.nn.Module, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, fused: bool | None = None, tile=None):
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.tile = tile  # the kernel's (BLOCK_M, BLOCK_N, warps), None for its default (benchmarks try others)
        self.linears = [m for m in model.modules() if isinstance(m, Linear)]
        self._kernel = [m for m in self.linears if _adamw_kernel_takes(m.weight)]
        own = {id(m.weight) for m in self._kernel}
        rest = [p for p in model.parameters() if id(p) not in own]
        self.base = torch.optim.AdamW(rest, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      fused=fused) if rest else None
        self.state: dict[int, list] = {}  # id(weight) -> [exp_avg, exp_avg_sq, step]

    def step(self) -> None:
        if self.base is not None:
            self.base.step()
        for linear in self._kernel:
            self._kernel_step(linear)
        for linear in self.linears:
            # A sharded weight (FSDP2's DTensor) is cast by its linear's own forward, after gathering.
            if linear not in self._kernel and linear.fp8 and emits_weights(linear.recipe) and _plain(linear.weight) \
                    and linear.weight_amax.value is not None and linear.weight.grad is not None:
                with torch.no_grad():
                    linear.weight_amax.offer(linear.weight, quantize_weight(linear.weight, linear.recipe,
                                                                            linear.weight_amax))

    def _kernel_step(self, linear: Linear) -> None:
        from .fp8_training_triton import adamw_fp8

        weight = linear.weight
        if weight.grad is None:
            return
        state = self.state.setdefault(id(weight), [torch.zeros_like(weight), torch.zeros_like(weight), 0])
        state[2] += 1
        amax = linear.weight_amax
        emit = linear.fp8 and emits_weights(linear.recipe) and amax.value is not None
        out = adamw_fp8(weight.detach(), weight.grad.contiguous(), state[0], state[1], lr=self.lr, beta1=self.betas[0],
                        beta2=self.betas[1], eps=self.eps, weight_decay=self.weight_decay, step=state[2],
                        amax=amax.value if emit else None, **({} if self.tile is None else {"tile": self.tile}))
        torch.autograd.graph.increment_version(weight)  # written outside torch: a cast made before is stale
        if emit:
            wq, wqt, inv, seen = out
            amax.record(seen)
            amax.offer(weight, (wq, wqt, inv))

    def zero_grad(self, set_to_none: bool = True) -> None:
        if self.base is not None:
            self.base.zero_grad(set_to_none=set_to_none)
        for linear in self._kernel:
            if set_to_none:
                linear.weight.grad = None
            elif linear.weight.grad is not None:
                linear.weight.grad.zero_()


def _plain(t: torch.Tensor) -> bool:
    """A tensor that is its own storage (not a subclass such as a DTensor shard)."""
    return type(t) in (torch.Tensor, torch.nn.Parameter)


def _adamw_kernel_takes(weight: torch.Tensor) -> bool:
    if not (weight.is_cuda and _plain(weight) and weight.dtype == torch.float32
            and weight.ndim == 2 and weight.is_contiguous()):
        return False
    try:
        from . import fp8_training_triton  # noqa: F401
    except ImportError:
        return False
    return True


def adamw(model: torch.nn.Module, lr: float, weight_decay: float = 1e-2, fused: bool | None = None):
    """The optimizer a model trains with: torch.optim.AdamW (what a BF16 user runs), or Fp8AdamW where
    OPTIMIZER_CASTS is on and the model has FP8 linears, both with torch's defaults otherwise."""
    if OPTIMIZER_CASTS and any(isinstance(m, Linear) and m.fp8 for m in model.modules()):
        return Fp8AdamW(model, lr=lr, weight_decay=weight_decay, fused=fused)
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=fused)


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
    optimizer = adamw(model, shape.lr, weight_decay=0.0)
    scaler = LossScaler()
    losses = []
    for step in range(shape.steps):
        x, y = batch(step, shape, teacher, device, poison_step)
        loss = objective(model, x, y)
        scaler.step(loss, params, optimizer, step, on_gradients)
        losses.append(loss.item())
    return losses, scaler


def step_function(models, x: torch.Tensor, labels: torch.Tensor, lr: float, fused: bool | None = None):
    """step(model): forward, backward and an AdamW update (`adamw`'s optimizer, `fused` as torch's AdamW
    takes it) of one of `models` on (x, labels), each model with its own optimizer; for timing a step."""
    optimizers = {id(m): adamw(m, lr, fused=fused) for m in models}

    def step(model) -> None:
        objective(model, x, labels).backward()
        optimizers[id(model)].step()
        optimizers[id(model)].zero_grad(set_to_none=True)

    return step


def triton_quantizer_work(shape: Shape, recipe: Fp8Recipe = RECIPE, fuse_blocks: bool | None = None,
                          optimizer_casts: bool | None = None, gelu_cast: str | None = None) -> tuple[Work, ...]:
    """The Triton kernels of one FP8 training step under `recipe` (steady state), which traffic.eager_work
    cannot see: bytes through memory per pass (GELU's erf and exp are left out of the FLOPs, as eager_work
    leaves out the BF16 side's GELU). `fuse_blocks` and `optimizer_casts` default to FUSE_BLOCKS and
    OPTIMIZER_CASTS, the path that runs.

    Per linear alone (Fp8Matmul): its input and its output gradient (bfloat16) each an amax pass and a cast
    pass writing both layouts. Per fused block, as fused_quantize runs them (`gelu_cast`: GELU_CAST): the
    normalized input and fc2's output gradient (whose pass also sums the bias gradient) each an amax pass and
    a cast pass writing both layouts, or the cast alone under an amax history; GELU's output an amax pass
    over GELU's input writing GELU's output and a cast pass over that (or, computed in the cast, an amax
    pass and a cast pass over GELU's input, the cast alone under a history); the GELU backward's output the
    same over the gradient and GELU's input. Per weight, with `optimizer_casts` (Fp8AdamW on CUDA), the
    AdamW pass itself (torch's optimizer no longer sees these weights): read weight, gradient and both
    moments, write weight, moments and the two FP8 layouts; without, a cast pass over the float32 weight
    (after an amax pass under weight_amax "current")."""
    fuse_blocks = FUSE_BLOCKS if fuse_blocks is None else fuse_blocks
    optimizer_casts = OPTIMIZER_CASTS if optimizer_casts is None else optimizer_casts
    computed = (GELU_CAST if gelu_cast is None else gelu_cast) != "written"
    history = recipe.activation_amax == "history"
    tokens, d, h = shape.tokens, shape.d, 4 * shape.d

    def passes(read: int, elements: int, computed: bool) -> list[Work]:
        """An op over `read` bytes of inputs per element, its output cast in both layouts (2 bytes)."""
        if computed:  # the cast computes the op from its inputs: after an amax pass unless under a history
            return ([] if history else [Work(nbytes=read * elements)]) + [Work(nbytes=(read + 2) * elements)]
        return [Work(nbytes=(read + 2) * elements), Work(nbytes=(2 + 2) * elements)]  # op written, then cast

    work = []
    for _ in range(shape.blocks):
        if fuse_blocks:
            work += passes(2, tokens * d, True) + passes(2, tokens * d, True)  # normalized input, fc2's gradient
            work += passes(2, tokens * h, computed) + passes(4, tokens * h, computed)  # GELU, GELU backward
        else:
            for d_in, d_out in ((d, h), (h, d)):
                for elements in (tokens * d_in, tokens * d_out):  # input, output gradient
                    work += [Work(nbytes=2 * elements), Work(nbytes=(2 + 2) * elements)]
        for _ in range(2):
            weight = d * h
            if optimizer_casts:
                work.append(Work(nbytes=(4 * 4 + 3 * 4 + 2) * weight))
            elif recipe.weight_amax == "previous":
                work.append(Work(nbytes=4 * weight + 2 * weight))
            else:
                work += [Work(nbytes=4 * weight), Work(nbytes=4 * weight + 2 * weight)]
    return tuple(work)


def pair(shape: Shape, device: str, seed: int = 0) -> tuple[Stack, Stack, Stack]:
    """(bf16 model, fp8 model, teacher): the two students start from identical weights."""
    bf16 = Stack(shape.d, shape.blocks, fp8=False, seed=seed, device=device)
    fp8 = copy.deepcopy(bf16).set_fp8(True)
    teacher = Stack(shape.d, shape.blocks, fp8=False, seed=seed + 1, device=device)
    return bf16, fp8, teacher
