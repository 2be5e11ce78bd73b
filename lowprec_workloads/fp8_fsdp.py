"""FSDP2 over the FP8 training stack, with the FP8 weights all-gathered as FP8.

`fully_shard` (per block, then the root) keeps 1/N of every float32 master weight, its gradient and its
AdamW state on each rank: gradients are reduce-scattered while the backward runs and the optimizer
updates only the local shards. Without more, FSDP2 all-gathers the float32 weights and every rank casts
the whole weight to E4M3 itself: four bytes a weight moved and the cast repeated N times.

With `use_fp8_all_gather` each linear's weight becomes an `Fp8ShardedWeight`, a tensor subclass that
FSDP2's all-gather extension hooks recognise (the design torchao's float8 training uses with FSDP2):
before the all-gather each rank casts only its shard (`fsdp_pre_all_gather`), the all-gather moves one
byte a weight, and after it the weight is an `Fp8GatheredWeight` (the E4M3 bytes and their inverse
scale, `fsdp_post_all_gather`) that `Fp8AllGatherLinear` feeds to _scaled_mm without another cast.

One scale per weight, on every rank: a shard cast with its own amax would make the gathered weight a
patchwork of scales that no single inverse scale decodes. `sync_weight_scales` sets every weight's scale
from the group's amax with one all-reduce for all weights, after each optimizer step. Under the stack's
recipe (Fp8Recipe.weight_amax "previous") that amax is the one the last cast saw, recorded by the cast
itself, so the weights are read once a step, as in one process; under "current" it is the amax of the
updated weights (one pass over the local shards). Either way the gathered E4M3 bytes are the bytes one
process casts from the whole weight (tests/test_fp8_fsdp.py checks it bit for bit).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.utils._pytree as pytree

from pytest_lowprec.formats.fp8 import scaled_mm

from .fp8_training import E4M3, Fp8Recipe, Linear, Stack, quantize_operand

REDUCE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
UNITS = ("block", "linear", "model")


@dataclass(frozen=True)
class Fsdp2Config:
    """How the stack is sharded. `fp8_all_gather`: weights all-gathered in E4M3 (else in float32, each
    rank casting the whole weight). `reshard_after_forward`: free the gathered weights after a block's
    forward and gather them again for its backward (less memory, one more all-gather). `reduce_dtype`:
    the gradients' dtype in the reduce-scatter; the weights' and the optimizer's stay float32."""

    fp8_all_gather: bool = True
    reshard_after_forward: bool = False
    reduce_dtype: str = "float32"
    # What one all-gather and one reduce-scatter hold: a block's parameters; each linear's apart (the
    # backward's last reduce-scatter, which nothing is left to hide, then holds one linear's gradient); or
    # the whole model's ("model": one all-gather before the forward and one reduce-scatter after the
    # backward, nothing overlapped, FSDP2's hooks run once a step: on one H200, 2026-12-01, FSDP2 per block
    # took 19 ms of host time to issue a step whose kernels ran 11.7 ms, the step waiting on the host).
    unit: str = "block"
    # Explicit forward prefetching: each block's forward issues the next block's all-gather before its
    # own compute. FSDP2 overlaps that all-gather with the block's compute by default too (its own
    # stream, issued once the host reaches the next block), and prefetches the backward's in reverse
    # forward order; explicit prefetching changes only when the host issues it, which matters when the
    # host, not the GPU, sets the step's pace (the first two-GPU run, 2026-12-01, left 1.5 ms of FSDP2's
    # step unexplained: see Scaling.host_ms).
    prefetch: bool = False

    def __post_init__(self):
        if self.reduce_dtype not in REDUCE_DTYPES:
            raise ValueError(f"reduce_dtype {self.reduce_dtype!r} is not one of {', '.join(REDUCE_DTYPES)}")
        if self.unit not in UNITS:
            raise ValueError(f"unit {self.unit!r} is not one of {', '.join(UNITS)}")
        if self.prefetch and self.unit != "block":
            raise ValueError("prefetch orders the blocks' all-gathers: it needs unit 'block'")

    @property
    def label(self) -> str:
        gather = "fp8" if self.fp8_all_gather else "fp32"
        reshard = "reshard" if self.reshard_after_forward else "keep"
        return (f"fsdp2 {gather} all-gather, {reshard} after forward, {self.reduce_dtype} reduce-scatter"
                + ("" if self.unit == "block" else f", per {self.unit}") + (", prefetch" if self.prefetch else ""))


class WeightScale:
    """One weight's FP8 scale, shared by every tensor that wraps a piece of it (FSDP2 re-wraps shards
    when it pads, slices and views them, so the state cannot live on one wrapper object).

    `amax` is the group's amax the next cast scales by; `seen` receives this rank's shard amax from
    that cast. Both are allocated once: the cast runs on FSDP2's all-gather stream and the sync on the
    compute stream, and fixed buffers keep the caching allocator from handing one stream's freed block
    to the other."""

    def __init__(self, recipe: Fp8Recipe, device: torch.device):
        self.current = recipe.weight_amax == "current"
        self.amax = torch.zeros((), dtype=torch.float32, device=device)
        self.seen = torch.zeros((), dtype=torch.float32, device=device)
        self.ready = False  # no group amax yet: sync_weight_scales before the first forward


def _wrap_like(cls, out, scale: WeightScale):
    return pytree.tree_map_only(torch.Tensor, lambda t: cls(t, scale), out)


# Ops FSDP2 applies to a parameter's shard while it shards, pads and views it (and `detach`, which
# nn.Parameter uses): their results stay shards of the same weight. Every other op (the optimizer's,
# a state dict's copy) sees the plain float32 tensor.
_SHARD_OPS = {
    torch.ops.aten.detach.default, torch.ops.aten.alias.default, torch.ops.aten.view.default,
    torch.ops.aten.as_strided.default, torch.ops.aten.slice.Tensor, torch.ops.aten.narrow.default,
    torch.ops.aten.split.Tensor, torch.ops.aten.split_with_sizes.default, torch.ops.aten.new_zeros.default,
    torch.ops.aten.empty_like.default, torch.ops.aten.clone.default, torch.ops.aten.copy_.default,
    torch.ops.aten._to_copy.default, torch.ops.aten._pin_memory.default,
}


class Fp8ShardedWeight(torch.Tensor):
    """A float32 master weight (or FSDP2's shard of it) that FSDP2 all-gathers as E4M3."""

    @staticmethod
    def __new__(cls, tensor: torch.Tensor, scale: WeightScale):
        return torch.Tensor._make_wrapper_subclass(
            cls, tensor.size(), strides=tensor.stride(), storage_offset=tensor.storage_offset(),
            dtype=tensor.dtype, layout=tensor.layout, device=tensor.device, requires_grad=tensor.requires_grad)

    def __init__(self, tensor: torch.Tensor, scale: WeightScale):
        self._tensor = tensor
        self._scale = scale

    def __repr__(self) -> str:
        return f"Fp8ShardedWeight({self._tensor!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args, kwargs=None):
        scales = []

        def unwrap(t: Fp8ShardedWeight) -> torch.Tensor:
            scales.append(t._scale)
            return t._tensor

        args, kwargs = pytree.tree_map_only(Fp8ShardedWeight, unwrap, (args, kwargs or {}))
        out = func(*args, **kwargs)
        if func not in _SHARD_OPS:
            return out
        return _wrap_like(cls, out, scales[0])

    def fsdp_pre_all_gather(self, mesh, outer_size, outer_stride, module, mp_policy):
        """This rank's shard cast to E4M3 with the group's scale, as bytes (gloo gathers no FP8 dtype)."""
        scale = self._scale
        if not scale.ready:
            raise RuntimeError("an FP8 all-gather before its scale was set: call sync_weight_scales(model) "
                               "after fully_shard and after every optimizer step")
        scale.seen.zero_()  # the cast takes the max into it
        q, inv = quantize_operand(self._tensor, E4M3, amax=scale.amax, seen_amax=scale.seen)
        q = q.view(torch.uint8)
        # FSDP2 all-gathers equal pieces of ceil(rows / N) rows: where the rows do not split evenly (65 over 2
        # ranks) a short shard goes out padded with zero bytes, and the gathered weight is cut back to `rows`.
        rows = outer_size[0]
        padded = -(-rows // mesh.size())
        if q.shape[0] != padded:
            q = torch.cat([q, q.new_zeros(padded - q.shape[0], *q.shape[1:])])
        return (q,), (inv, rows)

    def fsdp_post_all_gather(self, all_gather_outputs, metadata, param_dtype, *, out=None):
        (data,) = all_gather_outputs
        inv, rows = metadata
        if out is not None:  # FSDP2 gathered into the same storage again: only the scale is new
            out._inv.copy_(inv)
            return None
        return Fp8GatheredWeight(data[:rows].view(E4M3), inv.clone(), param_dtype), (data,)


# What FSDP2 and autograd do to the unsharded parameter: wrap it in nn.Parameter (detach) and take a
# view of its full size (as_strided). Only Fp8AllGatherLinear reads the bytes.
_GATHERED_OPS = {torch.ops.aten.detach.default, torch.ops.aten.alias.default, torch.ops.aten.view.default,
                 torch.ops.aten.as_strided.default}


class Fp8GatheredWeight(torch.Tensor):
    """A whole weight after the all-gather: E4M3 bytes [out, in] (row-major) and one inverse scale.

    It presents the master weight's dtype, so autograd accepts the float32 gradient the linear returns
    for it and FSDP2 reduce-scatters that gradient like any other."""

    @staticmethod
    def __new__(cls, data: torch.Tensor, inv: torch.Tensor, dtype: torch.dtype):
        return torch.Tensor._make_wrapper_subclass(cls, data.size(), strides=data.stride(), dtype=dtype,
                                                   device=data.device, requires_grad=False)

    def __init__(self, data: torch.Tensor, inv: torch.Tensor, dtype: torch.dtype):
        self._data = data
        self._inv = inv

    def __repr__(self) -> str:
        return f"Fp8GatheredWeight({tuple(self.shape)}, inv_scale={self._inv!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args, kwargs=None):
        if func in _GATHERED_OPS:
            source = args[0]
            if func is torch.ops.aten.as_strided.default:
                size, stride = tuple(args[1]), tuple(args[2])
                offset = args[3] if len(args) > 3 else (kwargs or {}).get("storage_offset", 0)
                if size != tuple(source.shape) or stride != source._data.stride() or offset:
                    raise NotImplementedError(f"as_strided{size, stride, offset} of an FP8 all-gathered weight")
            elif func is torch.ops.aten.view.default and tuple(args[1]) != tuple(source.shape):
                raise NotImplementedError(f"view {tuple(args[1])} of an FP8 all-gathered weight")
            return cls(source._data, source._inv, source.dtype)
        raise NotImplementedError(f"{func} on an FP8 all-gathered weight: only Fp8AllGatherLinear reads it")


def _transposed(q: torch.Tensor) -> torch.Tensor:
    """q.t().contiguous(): on CUDA in one Triton pass (torch's strided one-byte copy took 0.4 ms a weight at
    d=4096 on an H200, 1.6 ms of each step's 11.7 ms), elsewhere torch's."""
    if q.is_cuda:
        try:
            from pytest_lowprec.formats.triton_quant import transpose_fp8_triton
        except ImportError:  # a CUDA torch without Triton
            pass
        else:
            return transpose_fp8_triton(q)
    return q.t().contiguous()


class Fp8GatheredMatmul(torch.autograd.Function):
    """y = x @ W.T + b with W already in E4M3: Fp8Matmul's tensorwise path with the weight cast skipped.

    The same _scaled_mm calls on the same operands (x and the output gradient quantized with the group's
    amax, the weight's E4M3 transposed once in the backward for the data gradient), so a step is the one
    the stack takes in one process, bit for bit, when the gathered weight equals its cast."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: Fp8GatheredWeight, bias: torch.Tensor | None, recipe: Fp8Recipe,
                reduce_amax):
        x2 = x.reshape(-1, x.shape[-1])
        xq, xqt, xs = quantize_operand(x2, E4M3, reduce_amax, transpose=True)
        ws = weight._inv.clone()  # the next all-gather rewrites _inv in place
        y = scaled_mm(xq, xs, weight._data.t(), ws, fast_accum="fprop" in recipe.fast_accum,
                      bias=None if bias is None else bias.to(torch.bfloat16))
        ctx.save_for_backward(xqt, xs, ws)
        # Not saved: the gathered weight's storage is freed after the forward when FSDP2 reshards
        # (reshard_after_forward) and gathered again before this backward runs.
        ctx.weight, ctx.recipe, ctx.reduce_amax = weight, recipe, reduce_amax
        ctx.has_bias, ctx.x_shape, ctx.x_dtype = bias is not None, x.shape, x.dtype
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        xqt, xs, ws = ctx.saved_tensors
        recipe = ctx.recipe
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        grad_b = g2.sum(0, dtype=torch.float32) if ctx.has_bias else None
        gq, gqt, gs = quantize_operand(g2, recipe.grad_dtype, ctx.reduce_amax, transpose=True)
        wqt = _transposed(ctx.weight._data)  # [in, out]: _scaled_mm's B operand must be K-major
        grad_x = scaled_mm(gq, gs, wqt.t(), ws, fast_accum="dgrad" in recipe.fast_accum)
        grad_w = scaled_mm(gqt, gs, xqt.t(), xs, out_dtype=torch.float32, fast_accum="wgrad" in recipe.fast_accum)
        return grad_x.reshape(ctx.x_shape).to(ctx.x_dtype), grad_w, grad_b, None, None


class Fp8AllGatherLinear(torch.nn.Module):
    """fp8_training.Linear with its weight all-gathered in E4M3 by FSDP2 (same parameters, same recipe)."""

    def __init__(self, linear: Linear):
        super().__init__()
        recipe = linear.recipe
        if not linear.fp8 or recipe.scaling != "tensor" or set(recipe.gemms) != {"fprop", "dgrad", "wgrad"}:
            raise ValueError(f"FP8 all-gather needs an FP8 linear with all three GEMMs on tensor scales, "
                             f"got fp8={linear.fp8}, {recipe.label}")
        weight = linear.weight.detach()
        self.scale = WeightScale(recipe, weight.device)
        self.weight = torch.nn.Parameter(Fp8ShardedWeight(weight, self.scale))
        self.bias = linear.bias
        self.recipe = recipe
        self.reduce_amax = linear.reduce_amax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(self.weight, Fp8GatheredWeight):
            raise RuntimeError("Fp8AllGatherLinear runs under fully_shard: its weight is cast by FSDP2's all-gather")
        return Fp8GatheredMatmul.apply(x, self.weight, self.bias, self.recipe, self.reduce_amax)


def use_fp8_all_gather(model: Stack) -> Stack:
    """Swap every block's FP8 linears for Fp8AllGatherLinear, before fully_shard."""
    for block in model.blocks:
        block.fc1 = Fp8AllGatherLinear(block.fc1)
        block.fc2 = Fp8AllGatherLinear(block.fc2)
    return model


def fp8_linears(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The stack's FP8 linears, swapped or not: what an amax reduction is set on."""
    return [m for m in model.modules() if isinstance(m, Linear | Fp8AllGatherLinear)]


def rows_leave_a_rank_empty(rows: int, ranks: int) -> bool:
    """Whether FSDP2's split of `rows` (ceil(rows / ranks) a rank, the last ones fewer: torch.chunk's) leaves
    a rank nothing, as 5 rows over 4 ranks do (2, 2, 1, 0)."""
    return -(-rows // ranks) * (ranks - 1) >= rows


def shard(model: Stack, mesh, config: Fsdp2Config) -> Stack:
    """fully_shard each block (each linear first, for unit "linear"; no block for unit "model"), then the root,
    and with `prefetch` have each block's forward issue the next block's all-gather (Fsdp2Config.prefetch).
    The parameters stay float32 (param_dtype None): the FP8 recipe casts the float32 master weights, and a
    bfloat16 copy in between would round them twice; the LayerNorm takes float32 weights. Only the
    gradients' reduce-scatter may be bfloat16 (reduce_dtype)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if config.fp8_all_gather:
        for name, linear in model.named_modules():
            rows = linear.weight.shape[0] if isinstance(linear, Linear) and linear.fp8 else 0
            if rows and rows_leave_a_rank_empty(rows, mesh.size()):
                raise ValueError(f"{name}: {rows} rows over {mesh.size()} ranks leave a rank no rows (FSDP2 gives "
                                 "each ceil(rows / ranks)); the FP8 all-gather casts every rank's shard with its "
                                 "amax: use fewer ranks or fp8_all_gather=False")
        use_fp8_all_gather(model)
    policy = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=REDUCE_DTYPES[config.reduce_dtype])
    for block in model.blocks if config.unit != "model" else ():
        if config.unit == "linear":
            for linear in (block.fc1, block.fc2):
                fully_shard(linear, mesh=mesh, reshard_after_forward=config.reshard_after_forward, mp_policy=policy)
        fully_shard(block, mesh=mesh, reshard_after_forward=config.reshard_after_forward, mp_policy=policy)
    fully_shard(model, mesh=mesh, reshard_after_forward=config.reshard_after_forward, mp_policy=policy)
    if config.prefetch:
        blocks = list(model.blocks)
        for before, after in zip(blocks, blocks[1:], strict=False):
            before.set_modules_to_forward_prefetch([after])
    if config.fp8_all_gather:
        sync_weight_scales(model, mesh.get_group())
    return model


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The plain float32 tensor behind a sharded parameter (DTensor -> Fp8ShardedWeight -> tensor)."""
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        t = t._local_tensor
    return t._tensor if isinstance(t, Fp8ShardedWeight) else t


@torch.no_grad()
def sync_weight_scales(model: torch.nn.Module, group) -> None:
    """Every FP8 all-gathered weight's scale from the group's amax: one all-reduce (MAX) for all of them.

    Call it after fully_shard and after every optimizer step (a skipped step too). The first call, and
    every call under weight_amax "current", reads the local shards' amax now; later calls under
    "previous" reduce the amaxes the last casts recorded, which is what one process's cast records."""
    import torch.distributed as dist

    states = [(m.scale, local_tensor(m.weight)) for m in model.modules() if isinstance(m, Fp8AllGatherLinear)]
    if not states:
        return
    local = torch.stack([shard.abs().amax().float() if scale.current or not scale.ready else scale.seen
                         for scale, shard in states])
    dist.all_reduce(local, op=dist.ReduceOp.MAX, group=group)
    for i, (scale, _) in enumerate(states):
        scale.amax.copy_(local[i])
        scale.ready = True


def gathered_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Each FP8 all-gathered weight as the forward sees it, its E4M3 bytes (uint8 [out, in]) and inverse
    scale, after FSDP2 unshards every sharded module; they are copied and the modules resharded."""
    from torch.distributed.fsdp import FSDPModule

    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in sharded:
        m.unshard()
    try:
        out = {}
        for name, module in model.named_modules():
            if isinstance(module, Fp8AllGatherLinear):
                out[f"{name}.weight"] = module.weight._data.view(torch.uint8).clone()
                out[f"{name}.weight_inv_scale"] = module.weight._inv.clone()
        return out
    finally:
        for m in sharded:
            m.reshard()


def one_piece_fp8_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What one process casts: each FP8 all-gathered weight's whole float32 master (gathered from the
    shards) cast to E4M3 with its scale's current amax. Equal bytes to gathered_weights' when the
    shards were cast with one scale."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, Fp8AllGatherLinear):
            master = whole(module.weight)
            q, inv = quantize_operand(master, E4M3, amax=module.scale.amax)
            out[f"{name}.weight"] = q.view(torch.uint8)
            out[f"{name}.weight_inv_scale"] = inv
    return out


def whole(param: torch.Tensor) -> torch.Tensor:
    """A sharded parameter's whole float32 value on every rank (an all-gather of the plain local shards)."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    if not isinstance(param, DTensor):
        return local_tensor(param).detach().clone()
    local = local_tensor(param).detach()
    group = param.device_mesh.get_group()
    world = dist.get_world_size(group)
    # FSDP2 gives each rank ceil(rows / N) rows, the last ones fewer where the rows do not split evenly:
    # every piece goes out padded to that size, and the padding, all at the end, is cut off.
    padded = local.new_zeros((-(-param.shape[0] // world), *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat(parts)[: param.shape[0]]
