"""A small decoder stack's decode step, run in the precisions a mixed-precision strategy names.

Each layer: RMSNorm -> Q, K, V projections -> attention of the new token over the layer's
KV cache (the context before it) -> O projection -> residual -> RMSNorm -> SwiGLU FFN
(gate, up, down) -> residual; then a final norm and a BF16 LM head. The step computes the
new token's K and V as decode must; appending them is the KV cache suites' work, not this one.

The reference is the same step in float32 on the same weights, cache values and input.
Each operator runs its strategy's precision with the real path where this device has one:
- linears: 16-bit F.linear; FP8 = E4M3 tensorwise weights and activations (fp8_linear.FP8Linear:
  on CUDA one row goes through a CUDA-core GEMV that quantizes the activation inside the kernel, more
  rows through torch._scaled_mm after a one-launch Triton quantizer); w4a16 = NVFP4 weights through
  nvfp4_gemm.linear (on CUDA the tensor-core decode linear over weights laid out once for it, as a
  model is loaded; the tiled Triton kernel above 64 rows); nvfp4 = the same with NVFP4 activations
  (quantized and dequantized, in one Triton launch on CUDA for a decode-sized activation: Hopper has no
  FP4 tensor cores). On CPU the same quantized operands are multiplied in float32.
- attention over the cache: the Triton decode kernel on CUDA (dequantizing inside), float32
  over the dequantized cache on CPU. The cache format is the strategy's kv_cache; "nvfp4" is
  stored as FP8 keys and NVFP4 values (decode_attention's fp8k_nvfp4v: keys carry outlier
  channels that 4 bits lose). attn_qk / attn_pv "fp8" put q / the 16-bit V in E4M3 (q at every
  step, in one Triton launch on CUDA).
- around them, on CUDA: each residual add with the RMSNorm after it, and each SwiGLU gate, one Triton
  launch (decode_fusions), every strategy alike. Where a one-row FP8 GEMV reads the norm's or the
  gate's output, that launch also writes its E4M3 scale and the GEMV skips its own amax pass (the O
  projection's GEMV, fed by attention, still takes its own); where the linears after it read another dtype
  than the step's (16-bit weights, NVFP4's bfloat16), it also writes its output in that dtype, so their cast
  is no launch of its own. On CPU, and for the float32 reference, the eager operators.
- q, k and v, and gate and up, read one activation each: on CUDA each group runs as one linear where the
  layer gives them one precision that stacks (Linear.stacked: 16-bit weights concatenated; FP8 weights
  through one GEMV, each row keeping its weight's scale; NVFP4 weights quantized apart and concatenated,
  each row keeping its weight's tensor scale, NVFP4Tensor.concatenated), as vLLM's merged QKV and gate-up
  linears do, the 16-bit baseline too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F

from pytest_lowprec.formats.fp8 import quantize_tensorwise
from pytest_lowprec.formats.nvfp4 import NVFP4Tensor, quantize_nvfp4
from pytest_lowprec.roofline import Work
from pytest_lowprec.traffic import eager_work

from . import decode_fusions as fused_ops
from .decode_attention import Cache, attend_cache, build_cache, decode_work
from .fp8_linear import SMALL_QUANTIZE_MAX, FP8Linear, GemvChooser, fp8_roundtrip, gemv_config, quantize_work
from .kernels import programmatic_launches
from .nvfp4_activation import fits as fits_roundtrip
from .nvfp4_activation import nvfp4_roundtrip, roundtrip_work
from .nvfp4_gemm import MMA_ROWS, CudaKernels, DecodeWeight, prepare_decode_weight
from .nvfp4_gemm import linear as nvfp4_linear
from .strategies import LINEARS, UNQUANTIZED, Strategy

NVFP4_WEIGHTS = ("w4a16", "nvfp4")  # the precisions that store a linear's weight in NVFP4
KV_CACHE = {"bf16": "bf16", "fp16": "bf16", "fp32": "bf16", "fp8": "fp8", "nvfp4": "fp8k_nvfp4v"}
QKV, GATE_UP = ("q_proj", "k_proj", "v_proj"), ("ffn_gate", "ffn_up")
# Projections that read one activation, stacked into one linear on CUDA where their precisions allow.
STACKED = {"qkv": QKV, "gate_up": GATE_UP}


class FusedScales(NamedTuple):
    """Which of a layer's fused launches write their output's E4M3 scale for the FP8 GEMVs reading it: the
    norm before q, k and v; the norm before the gate and up projections; SwiGLU, before the down one."""

    attn: bool
    ffn: bool
    down: bool


class FusedCopies(NamedTuple):
    """The dtype in which each of a layer's fused launches (as FusedScales) also writes its output for the
    linears reading it, where they read it in another dtype than the step's (16-bit weights' F.linear, the
    NVFP4 decode linear's bfloat16), so that their input's cast is no launch of its own; None: no copy."""

    attn: torch.dtype | None
    ffn: torch.dtype | None
    down: torch.dtype | None


# What a strategy's step runs on CUDA around its linears and attention, for a workload's signature.
CUDA_FUSIONS = ("triton: residual add + rmsnorm, swiglu, one launch each, writing the e4m3 scale "
                "the fp8 gemv reads and the 16-bit copy a 16-bit or nvfp4 linear reads")
CUDA_STACKED = ("q, k, v and gate, up projections stacked into one linear each where 16-bit, fp8 (one-row gemv, "
                "a scale per weight) or nvfp4 (a tensor scale per weight)")
CUDA_NVFP4_WEIGHTS = "nvfp4_gemm.linear: tensor-core decode linear, weights laid out once"
CUDA_PROGRAMMATIC = ("fused launches, fp8 gemvs and nvfp4 decode linears as programmatic dependents: the fp8 gemv "
                     "requests its first weight chunk while the launch before it runs, the others wait at their start")


@dataclass(frozen=True)
class BlockShape:
    d: int
    heads: int
    ffn: int
    layers: int
    vocab: int
    batch: int
    context: int

    @property
    def head_dim(self) -> int:
        return self.d // self.heads


# The mixed-precision suite's shapes: SMALL runs everywhere (CPU CI), LARGE on a GPU.
SMALL = BlockShape(d=256, heads=4, ffn=768, layers=3, vocab=1024, batch=4, context=256)
# Llama-3-8B's widths, two layers, one sequence decoding at 8K context: the memory-bound step
# where bytes per weight and per cached token set the time.
LARGE = BlockShape(d=4096, heads=32, ffn=14336, layers=2, vocab=4096, batch=1, context=8192)

def _fp8_roundtrip(x: torch.Tensor) -> torch.Tensor:
    q, inv = quantize_tensorwise(x)
    return q.float() * inv


@dataclass
class Linear:
    """One weight in the form its precision stores, and how to multiply by it; or weights that read one
    activation stacked along their outputs (`parts`: each one's output width), multiplied as one."""

    precision: str
    weight: torch.Tensor | None = None  # 16-bit / fp32
    decode_weight: DecodeWeight | None = None  # NVFP4
    fp8: FP8Linear | None = None
    parts: tuple[int, ...] | None = None

    @classmethod
    def build(cls, w: torch.Tensor, precision: str, fp8_gemv: GemvChooser = gemv_config,
              cuda: CudaKernels | None = None, rows: int | None = None) -> Linear:
        """`fp8_gemv(N, K)`: an FP8 weight's one-row GEMV tile (FP8Linear.build). `cuda`: an NVFP4 weight is
        laid out for the tensor-core decode linear too (prepare_decode_weight); without, calls on CUDA take
        the CUDA-core GEMV (1..2 rows) or the tiled kernel over the format's own tensor. `rows`: every call's
        rows, where known (a decode step's batch): where the decode linear takes them, the laid-out NVFP4
        weight is the only copy held."""
        if precision in NVFP4_WEIGHTS:
            return cls(precision, decode_weight=_decode_weight(quantize_nvfp4(w.to(torch.bfloat16)), cuda, rows))
        if precision == "fp8":
            return cls(precision, fp8=FP8Linear.build(w, fp8_gemv))
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        return cls(precision, weight=w.to(dtype))

    @classmethod
    def stacked(cls, weights: list[torch.Tensor], precision: str, rows: int,
                fp8_gemv: GemvChooser = gemv_config, cuda: CudaKernels | None = None) -> Linear | None:
        """Weights that read one activation as one linear in `precision`, called on `rows` rows, each weight
        quantized as it is alone: 16-bit weights concatenated; FP8 weights through one GEMV, each keeping its
        own tensorwise scale (FP8Linear.concatenated); NVFP4 weights concatenated, each row keeping its
        weight's tensor scale (NVFP4Tensor.concatenated; quantizing the stack as one tensor rounds other
        block scales: on an H200, 2026-12-02, it moved the small layerwise step's next-token KL from 0.076 to
        0.159 nats, past its 0.15 bound). None where that cannot be: FP8 on more rows than its GEMV takes
        (_scaled_mm takes one weight scale). A stacked output's parts are views: at one row contiguous, at
        more (gate, up) each a copy where a kernel needs contiguous input (the fused SwiGLU), which the
        step's declared work counts. `cuda` as for `build`."""
        widths = tuple(w.shape[0] for w in weights)
        if precision in UNQUANTIZED:
            return replace(cls.build(torch.cat(weights), precision, fp8_gemv), parts=widths)
        if precision in NVFP4_WEIGHTS:
            stack = NVFP4Tensor.concatenated([quantize_nvfp4(w.to(torch.bfloat16)) for w in weights])
            return cls(precision, decode_weight=_decode_weight(stack, cuda, rows), parts=widths)
        if precision == "fp8":
            parts = [FP8Linear.build(w, fp8_gemv) for w in weights]
            if all(p.uses_gemv(rows) for p in parts):
                stacked = FP8Linear.concatenated(parts, fp8_gemv)
                if stacked.uses_gemv(rows):  # a chooser may give the stacked shape no GEMV
                    return cls(precision, fp8=stacked, parts=widths)
        return None

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """A stacked linear's output as its parts' outputs (views), or (out,)."""
        return out.split(self.parts, dim=-1) if self.parts is not None else (out,)

    @property
    def nbytes(self) -> int:
        if self.decode_weight is not None:
            return self.decode_weight.nbytes
        if self.fp8 is not None:
            return self.fp8.nbytes
        return self.weight.numel() * self.weight.element_size()

    @property
    def out_size(self) -> int:
        """Bytes an output element takes: float32 from the NVFP4 and FP8 kernels, else the weight's dtype."""
        return 4 if self.weight is None else self.weight.element_size()

    def roundtrip_fused(self, on_cuda: bool, numel: int) -> bool:
        """Whether a call's NVFP4 activation of `numel` elements takes nvfp4_activation's one launch (CUDA,
        decode-sized) rather than the eager quantizer and dequantizer."""
        return self.precision == "nvfp4" and on_cuda and fits_roundtrip(numel)

    def takes_fp8_scale(self, rows: int) -> bool:
        """Whether a call on `rows` rows would use its input's E4M3 scale (the FP8 one-row GEMV)."""
        return self.fp8 is not None and self.fp8.uses_gemv(rows)

    @property
    def input_dtype(self) -> torch.dtype | None:
        """The dtype the linear reads its input in (it casts any other to it); None: it takes any (FP8)."""
        if self.decode_weight is not None:
            return torch.bfloat16
        return None if self.fp8 is not None else self.weight.dtype

    def __call__(self, x: torch.Tensor, cuda: CudaKernels | None, x_scale: torch.Tensor | None = None,
                 x_copy: torch.Tensor | None = None, programmatic: bool = False) -> torch.Tensor:
        """x @ weight.T; `x_scale`, x's E4M3 scale where its producer took it, spares an FP8 GEMV its amax pass;
        `x_copy`, x already in input_dtype where its producer wrote it, spares the cast; `programmatic`: an FP8
        GEMV's or the NVFP4 decode linear's launch as a programmatic dependent (FP8Linear's, nvfp4_gemm.linear's),
        for a caller that never writes the weight in the kernel before (the GEMV reads it before its wait)."""
        if x_copy is not None:
            if x_copy.dtype != self.input_dtype or x_copy.shape != x.shape:
                raise ValueError(f"x_copy must be x's shape {tuple(x.shape)} in {self.input_dtype}, the dtype this "
                                 f"{self.precision} linear reads; got {x_copy.dtype} {tuple(x_copy.shape)}")
            x = x_copy
        if self.decode_weight is not None:
            if self.precision == "nvfp4":  # NVFP4 activations: quantized, then dequantized for the kernel
                x = x.to(torch.bfloat16)
                x = (nvfp4_roundtrip(x) if self.roundtrip_fused(x.is_cuda, x.numel())
                     else quantize_nvfp4(x, check_finite=False).dequantize())
            x = x.to(torch.bfloat16).contiguous()
            if not x.is_cuda:
                return x.float() @ self.decode_weight.nvfp4.dequantize().float().t()
            out = torch.empty(x.shape[0], self.decode_weight.shape[0], device=x.device, dtype=torch.float32)
            return nvfp4_linear(x, self.decode_weight, cuda, out, programmatic)
        if self.fp8 is not None:
            return self.fp8(x, x_scale=x_scale, programmatic=programmatic)  # float32, as the callers use it
        return F.linear(x.to(self.weight.dtype), self.weight)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    x = x.to(dtype)
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(dtype) * weight.to(dtype)


@dataclass
class Weights:
    """float32 weights of the stack, the cache's float32 context, and the step's input embedding."""

    layers: list[dict[str, torch.Tensor]]
    norm: torch.Tensor
    head: torch.Tensor
    keys: list[torch.Tensor]  # per layer [batch, heads, context, head_dim]
    values: list[torch.Tensor]
    x: torch.Tensor  # [batch, d]

    @classmethod
    def random(cls, shape: BlockShape, device: str, seed: int) -> Weights:
        """Drawn on the CPU and moved: the same values on every device, so a bound set on one holds
        on another (a CUDA generator draws other numbers, and the small shape's FP8 error moved by
        up to 4 dB between draws)."""
        g = torch.Generator().manual_seed(seed)

        def w(out: int, inp: int) -> torch.Tensor:
            return torch.randn(out, inp, generator=g) / math.sqrt(inp)

        d, f = shape.d, shape.ffn
        layers = [{"q_proj": w(d, d), "k_proj": w(d, d), "v_proj": w(d, d), "o_proj": w(d, d),
                   "ffn_gate": w(f, d), "ffn_up": w(f, d), "ffn_down": w(d, f),
                   "norm1": 1 + 0.1 * torch.randn(d, generator=g),
                   "norm2": 1 + 0.1 * torch.randn(d, generator=g)} for _ in range(shape.layers)]
        dims = (shape.batch, shape.heads, shape.context, shape.head_dim)
        keys, values = [], []
        for _ in range(shape.layers):
            k = torch.randn(dims, generator=g)
            k[..., :4] *= 10.0  # outlier key channels, as real caches have
            keys.append(k.to(device))
            values.append(torch.randn(dims, generator=g).to(device))
        layers = [{name: t.to(device) for name, t in layer.items()} for layer in layers]
        return cls(layers, (1 + 0.1 * torch.randn(d, generator=g)).to(device), (w(shape.vocab, d) * 4.0).to(device),
                   keys, values, torch.randn(shape.batch, d, generator=g).to(device))


class DecodeStep:
    """The stack's decode step in one strategy's precisions (or in float32 with strategy None)."""

    def __init__(self, weights: Weights, shape: BlockShape, strategy: Strategy | None, cuda: CudaKernels | None,
                 *, fp8_gemv: GemvChooser = gemv_config, fuse: bool = True, fp8_scales: bool = True,
                 stack: bool = True, nvfp4_mma: bool = True, copies: bool = True, programmatic: bool = True):
        """`fp8_gemv(N, K)`: the one-row GEMV tile of each FP8 weight (a benchmark's choice; None: _scaled_mm).
        `fuse`: on CUDA a strategy's residual adds, norms and SwiGLU gates run fused (decode_fusions), where
        the activation is decode-sized; the float32 reference always runs eagerly. `fp8_scales`: the fused
        launches hand a one-row FP8 GEMV its input's E4M3 scale (else the GEMV takes its own amax pass).
        `stack`: on CUDA a strategy's q, k and v, and its gate and up, run as one linear each where their
        layer gives them one precision that stacks (Linear.stacked), as decode engines merge them. `nvfp4_mma`:
        with CUDA kernels, NVFP4 weights are laid out for the tensor-core decode linear, held in that layout
        alone where the batch is one it takes (else they run the CUDA-core GEMV at 1..2 rows, as the steps did
        before 2026-12-02, or the tiled kernel: a benchmark's comparison). `copies`: the fused
        launches also write their output in the dtype the linears after them read, where that is another than
        the step's (FusedCopies). `programmatic`: on CUDA the fused launches, the FP8 GEMVs and the NVFP4
        decode linears launch as programmatic dependents of the kernel before each (kernels/lowprec.cuh), on GPUs
        that take such launches (kernels.programmatic_launches): each
        starts while the one before finishes and waits for it before reading its input; an FP8 GEMV requests its
        first weight chunk before that wait (the step writes no weight, so no kernel before a GEMV does)."""
        self.shape, self.strategy, self.cuda = shape, strategy, cuda
        self.programmatic = (programmatic and strategy is not None and weights.x.is_cuda
                             and programmatic_launches(weights.x.device))
        n = shape.layers

        def prec(op: str, layer: int = 0) -> str:
            return "fp32" if strategy is None else strategy.precision(op, layer, n)

        self.dtype = torch.float32 if strategy is None else {
            "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[prec("norm")]
        self.stacked = stack and strategy is not None and weights.x.is_cuda
        laid_out = cuda if nvfp4_mma else None
        self.linears = []
        for i, lw in enumerate(weights.layers):
            layer = {}
            for name, ops in STACKED.items():
                precisions = {prec(op, i) for op in ops}
                one = (Linear.stacked([lw[op] for op in ops], precisions.pop(), shape.batch, fp8_gemv, laid_out)
                       if self.stacked and len(precisions) == 1 else None)
                layer.update({name: one} if one is not None else
                             {op: Linear.build(lw[op], prec(op, i), fp8_gemv, laid_out, shape.batch) for op in ops})
            layer.update({op: Linear.build(lw[op], prec(op, i), fp8_gemv, laid_out, shape.batch)
                          for op in LINEARS if op not in QKV + GATE_UP})
            self.linears.append(layer)
        self.norms = [(lw["norm1"], lw["norm2"]) for lw in weights.layers]
        self.final_norm = weights.norm
        self.head = weights.head.to(self.dtype)
        self.qk_fp8 = [prec("attn_qk", i) == "fp8" for i in range(n)]
        self.caches: list[Cache | tuple[torch.Tensor, torch.Tensor]] = []
        for i, (k, v) in enumerate(zip(weights.keys, weights.values, strict=True)):
            if strategy is None:
                self.caches.append((k, v))
                continue
            kv = prec("kv_cache", i)
            if kv in UNQUANTIZED and prec("attn_pv", i) == "fp8":
                v = _fp8_roundtrip(v)  # PV on E4M3 values
            if kv in UNQUANTIZED and prec("attn_qk", i) == "fp8":
                k = _fp8_roundtrip(k)
            self.caches.append(build_cache(k.to(torch.bfloat16), v.to(torch.bfloat16), KV_CACHE[kv]))
        self.x = weights.x
        self._attention_workspace = None  # made by the first CUDA attention call
        self._swiglu_workspace = None  # made by the first fused SwiGLU that writes a scale
        self.fused = fuse and strategy is not None and weights.x.is_cuda and fused_ops.fits(shape.batch, shape.d)
        hand = self.fused and fp8_scales
        self._scales_for = [FusedScales(
            attn=hand and any(lin.takes_fp8_scale(shape.batch) for lin in _computing(layer, QKV)),
            ffn=hand and any(lin.takes_fp8_scale(shape.batch) for lin in _computing(layer, GATE_UP)),
            down=hand and layer["ffn_down"].takes_fp8_scale(shape.batch)) for layer in self.linears]
        copy = self.fused and copies
        self._copies_for = [FusedCopies(
            attn=_copy_dtype(_computing(layer, QKV), self.dtype) if copy else None,
            ffn=_copy_dtype(_computing(layer, GATE_UP), self.dtype) if copy else None,
            down=_copy_dtype([layer["ffn_down"]], self.dtype) if copy else None) for layer in self.linears]

    def work(self) -> tuple[Work, ...]:
        """The step's work for the hardware model (CUDA): torch's operators read off what the step
        dispatches, plus its kernels torch does not see: the Triton decode attention over each layer's
        cache, the NVFP4 decode linear (or GEMV, or tiled GEMM) over each NVFP4 weight, the FP8 linears' kernels
        (the GEMV, or the Triton quantizer before _scaled_mm) and the one-launch E4M3 round trip of an FP8 q."""
        s = self.shape
        q = torch.empty(s.batch, s.heads, s.head_dim, dtype=torch.bfloat16)  # shape and size only
        custom = [decode_work(q, cache) for cache in self.caches if isinstance(cache, Cache)]
        for layer in self.linears:
            for lin in layer.values():
                w = lin.decode_weight
                if w is not None:
                    rows_bytes = s.batch * w.shape[1] * 2 + s.batch * w.shape[0] * 4
                    custom.append(Work(nbytes=w.linear_nbytes + rows_bytes, kernels=1))
                    if lin.roundtrip_fused(True, s.batch * w.shape[1]):
                        custom.append(roundtrip_work(s.batch * w.shape[1]))
                if lin.fp8 is not None:
                    custom.extend(lin.fp8.kernel_work(s.batch, self.dtype.itemsize))
        for fp8 in self.qk_fp8:
            if fp8:  # q float32 in, bfloat16 out; a q too large for one program takes the quantizer, then ATen
                custom.extend((Work(nbytes=q.numel() * (4 + 2), kernels=1),) if q.numel() <= SMALL_QUANTIZE_MAX
                              else quantize_work(q.numel(), 4, aten=False))
        if self.fused:  # per layer two norms (the first layer's first adds nothing) and a gate, then the final norm
            size = self.dtype.itemsize
            for i, layer in enumerate(self.linears):
                before = self.linears[i - 1]["ffn_down"].out_size if i else None
                gate, up = _computing(layer, GATE_UP, each=True)
                copies = self._copies_for[i]
                custom += [fused_ops.add_rms_norm_work(s.batch, s.d, size, before, _itemsize(copies.attn)),
                           fused_ops.add_rms_norm_work(s.batch, s.d, size, layer["o_proj"].out_size,
                                                       _itemsize(copies.ffn)),
                           fused_ops.swiglu_work(s.batch * s.ffn, gate.out_size, up.out_size, size,
                                                 _itemsize(copies.down))]
            custom.append(fused_ops.add_rms_norm_work(s.batch, s.d, size, self.linears[-1]["ffn_down"].out_size))
        return eager_work(self) + tuple(custom)

    @property
    def weight_bytes(self) -> int:
        return sum(lin.nbytes for layer in self.linears for lin in layer.values())

    @property
    def cache_bytes(self) -> int:
        return sum(c.nbytes if isinstance(c, Cache) else 0 for c in self.caches)

    def _attend(self, q: torch.Tensor, layer: int) -> torch.Tensor:
        cache = self.caches[layer]
        if isinstance(cache, tuple):  # the float32 reference
            k, v = cache
            scores = torch.einsum("bhd,bhsd->bhs", q, k) / math.sqrt(q.shape[-1])
            return torch.einsum("bhs,bhsd->bhd", torch.softmax(scores, dim=-1), v)
        if self.qk_fp8[layer]:  # on CUDA one launch rounds q and hands the kernel its bfloat16 operand
            q = fp8_roundtrip(q, torch.bfloat16 if q.is_cuda else torch.float32)
        if q.is_cuda:
            from .decode_attention_triton import DecodeWorkspace, decode_attention

            if self._attention_workspace is None:
                self._attention_workspace = DecodeWorkspace()  # every layer's call, one after another
            return decode_attention(q.to(torch.bfloat16).contiguous(), cache,
                                    workspace=self._attention_workspace).float()
        return attend_cache(q, cache, torch.float32)

    def _add_norm(self, h: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, fp8_scale: bool,
                  copy: torch.dtype | None = None) -> tuple[torch.Tensor, ...]:
        """(h + delta.to(dtype), its RMSNorm, the norm's E4M3 scale where asked and fused, the norm in `copy`
        where asked and fused)."""
        if self.fused:
            return fused_ops.add_rms_norm(h, weight, delta, fp8_scale=fp8_scale, copy_dtype=copy,
                                          programmatic=self.programmatic)
        h = h if delta is None else h + delta.to(self.dtype)
        return h, rms_norm(h, weight, self.dtype), None, None

    def _swiglu(self, gate: torch.Tensor, up: torch.Tensor, fp8_scale: bool,
                copy: torch.dtype | None = None) -> tuple[torch.Tensor, ...]:
        """(silu(gate) * up in dtype, its E4M3 scale where asked and fused, it in `copy` where asked and fused)."""
        if self.fused:
            if fp8_scale and self._swiglu_workspace is None:
                self._swiglu_workspace = fused_ops.SwigluWorkspace(gate.device)  # every layer's call in turn
            return fused_ops.swiglu(gate, up, self.dtype, workspace=self._swiglu_workspace if fp8_scale else None,
                                    copy_dtype=copy, programmatic=self.programmatic)
        return (F.silu(gate.float()) * up.float()).to(self.dtype), None, None

    def _project(self, layer: dict[str, Linear], ops: tuple[str, ...], a: torch.Tensor,
                 a_scale: torch.Tensor | None, a_copy: torch.Tensor | None) -> list[torch.Tensor]:
        """The outputs of `ops` (projections of one activation `a`), from their stacked linear or each its own."""
        return [out for lin in _computing(layer, ops)
                for out in lin.split(lin(a, self.cuda, a_scale, a_copy, self.programmatic))]

    def __call__(self) -> torch.Tensor:
        """Logits [batch, vocab] of the next token."""
        s = self.shape
        h, delta = self.x.to(self.dtype), None
        for i, lin in enumerate(self.linears):
            scales, copies = self._scales_for[i], self._copies_for[i]
            h, a, a_scale, a_copy = self._add_norm(h, delta, self.norms[i][0], scales.attn, copies.attn)
            q, _, _ = self._project(lin, QKV, a, a_scale, a_copy)  # the new token's K and V: for the caller
            q = q.float().reshape(s.batch, s.heads, s.head_dim)
            att = self._attend(q, i).reshape(s.batch, s.d).to(self.dtype)
            o = lin["o_proj"](att, self.cuda, programmatic=self.programmatic)
            h, a, a_scale, a_copy = self._add_norm(h, o, self.norms[i][1], scales.ffn, copies.ffn)
            gate, up = self._project(lin, GATE_UP, a, a_scale, a_copy)
            y, y_scale, y_copy = self._swiglu(gate, up, scales.down, copies.down)
            delta = lin["ffn_down"](y, self.cuda, y_scale, y_copy, self.programmatic)
        _, a, _, _ = self._add_norm(h, delta, self.final_norm, False)
        return F.linear(a, self.head).float()


def _decode_weight(w: NVFP4Tensor, cuda: CudaKernels | None, rows: int | None) -> DecodeWeight:
    """w prepared for nvfp4_gemm.linear, held in the decode linear's layout alone where every call's `rows`
    are ones it takes."""
    only_laid_out = rows is not None and MMA_ROWS[0] <= rows <= MMA_ROWS[1]
    return prepare_decode_weight(w, cuda, keep_format=not only_laid_out)


def _copy_dtype(linears: list[Linear], dtype: torch.dtype) -> torch.dtype | None:
    """The dtype a fused launch writes its copy in for `linears` (all reading its output): the one they all
    read, where it is not the step's `dtype`; else None."""
    wanted = {lin.input_dtype for lin in linears}
    one = wanted.pop() if len(wanted) == 1 else None
    return one if one is not None and one != dtype else None


def _itemsize(dtype: torch.dtype | None) -> int:
    """Bytes an element of a fused launch's copy takes (0: no copy)."""
    return 0 if dtype is None else dtype.itemsize


def _computing(layer: dict[str, Linear], ops: tuple[str, ...], *, each: bool = False) -> list[Linear]:
    """The linears that compute `ops`: their stacked one, or each op's own; `each`: one entry per op."""
    for name, group in STACKED.items():
        if group == ops and name in layer:
            return [layer[name]] * len(ops) if each else [layer[name]]
    return [layer[op] for op in ops]


def logit_errors(reference: torch.Tensor, got: torch.Tensor) -> dict[str, float]:
    """KL(reference || got) of the next-token distributions (nats, mean over the batch), and the share
    of sequences whose most likely next token agrees: a perplexity-style view of the logits' error."""
    ref_log, got_log = F.log_softmax(reference.double(), -1), F.log_softmax(got.double(), -1)
    kl = (ref_log.exp() * (ref_log - got_log)).sum(-1).mean()
    agree = (reference.argmax(-1) == got.argmax(-1)).double().mean()
    return {"kl_nats": float(kl), "top1_agreement": float(agree)}

