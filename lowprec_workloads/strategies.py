"""Mixed-precision strategies: which precision each operator of a transformer block runs in.

A strategy is frozen and validated when built: an unknown operator or a precision that
operator cannot take is a ValueError that lists the valid ones. Layer overrides say
"this depth range of the stack uses these precisions" (the layerwise strategy: early
layers 16-bit, middle FP8, late NVFP4). Pure: no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "ffn_gate", "ffn_up", "ffn_down")
OPERATORS = (*LINEARS, "attn_qk", "attn_pv", "kv_cache", "norm", "embedding")
# What each operator can run in. Linears: 16-bit, FP8 (E4M3 weights and activations),
# w4a16 (NVFP4 weights, 16-bit activations), nvfp4 (NVFP4 weights and activations).
# Attention matmuls: 16-bit or FP8. The KV cache: 16-bit, FP8 or NVFP4. Norms: 16 or 32 bits.
VALID: Mapping[str, tuple[str, ...]] = MappingProxyType({
    **{op: ("fp32", "bf16", "fp16", "fp8", "w4a16", "nvfp4") for op in LINEARS},
    "attn_qk": ("fp32", "bf16", "fp16", "fp8"),
    "attn_pv": ("fp32", "bf16", "fp16", "fp8"),
    "kv_cache": ("fp32", "bf16", "fp16", "fp8", "nvfp4"),
    "norm": ("fp32", "bf16", "fp16"),
    "embedding": ("fp32", "bf16", "fp16", "fp8"),
})
UNQUANTIZED = ("bf16", "fp16", "fp32")  # precisions that store values as they are


def _validated(mapping: Mapping[str, str], where: str) -> dict[str, str]:
    out = {}
    for op, precision in mapping.items():
        if op not in VALID:
            raise ValueError(f"{where}: unknown operator {op!r}; valid operators: {', '.join(OPERATORS)}")
        if precision not in VALID[op]:
            raise ValueError(f"{where}: {op} cannot run in {precision!r}; valid for {op}: {', '.join(VALID[op])}")
        out[op] = precision
    return out


@dataclass(frozen=True)
class LayerOverride:
    """Precisions for the layers whose relative depth (layer / layers) lies in [start, stop)."""

    start: float
    stop: float
    precisions: Mapping[str, str]

    def covers(self, layer: int, layers: int) -> bool:
        depth = layer / layers
        return self.start <= depth < self.stop


@dataclass(frozen=True)
class Strategy:
    name: str
    precisions: Mapping[str, str]
    overrides: tuple[LayerOverride, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a strategy needs a name")
        merged = _validated(self.precisions, f"strategy {self.name!r}")
        missing = [op for op in OPERATORS if op not in merged]
        if missing:
            raise ValueError(f"strategy {self.name!r} does not say a precision for {', '.join(missing)}")
        object.__setattr__(self, "precisions", MappingProxyType(merged))
        checked = []
        for o in self.overrides:
            if not 0.0 <= o.start < o.stop <= 1.0:
                raise ValueError(f"strategy {self.name!r}: layer range [{o.start}, {o.stop}) must lie in [0, 1]")
            checked.append(LayerOverride(o.start, o.stop,
                                         MappingProxyType(_validated(o.precisions, f"strategy {self.name!r}"))))
        object.__setattr__(self, "overrides", tuple(checked))

    def precision(self, op: str, layer: int = 0, layers: int = 1) -> str:
        """The precision of `op` in `layer` of a stack of `layers`."""
        if op not in VALID:
            raise ValueError(f"unknown operator {op!r}; valid operators: {', '.join(OPERATORS)}")
        for o in self.overrides:
            if o.covers(layer, layers) and op in o.precisions:
                return o.precisions[op]
        return self.precisions[op]

    def derive(self, name: str, changes: Mapping[str, str]) -> Strategy:
        """A custom strategy: this one with some operators changed."""
        return Strategy(name, {**self.precisions, **changes}, self.overrides)


def _uniform(linears: str, *, attn: str = "bf16", kv: str = "bf16") -> dict[str, str]:
    return {**{op: linears for op in LINEARS}, "attn_qk": attn, "attn_pv": attn, "kv_cache": kv,
            "norm": "fp32", "embedding": "bf16"}


def builtin_strategies() -> dict[str, Strategy]:
    """The named strategies, built fresh (frozen values, no module state)."""
    base = _uniform("bf16")
    return {s.name: s for s in (
        Strategy("fp16_baseline", base),
        Strategy("fp8_balanced", _uniform("fp8", kv="fp8")),
        Strategy("w4a16_aggressive", _uniform("w4a16")),
        Strategy("nvfp4_weights", _uniform("nvfp4", kv="fp8")),
        # Long context: the cache dominates memory, so it goes to NVFP4; compute stays FP8.
        Strategy("hybrid_long_context", _uniform("fp8", attn="fp8", kv="nvfp4")),
        Strategy("layerwise_gradient", base, (
            LayerOverride(1 / 3, 2 / 3, {op: "fp8" for op in LINEARS}),
            LayerOverride(2 / 3, 1.0, {op: "nvfp4" for op in LINEARS}),
        )),
    )}


def strategy(name: str) -> Strategy:
    """A built-in strategy by name; an unknown name lists the known ones."""
    known = builtin_strategies()
    if name not in known:
        raise ValueError(f"unknown strategy {name!r}; known strategies: {', '.join(known)}")
    return known[name]


def custom(name: str, mapping: Mapping[str, str], base: str = "fp16_baseline") -> Strategy:
    """A strategy from a mapping of operator -> precision, the rest from `base`."""
    return strategy(base).derive(name, mapping)
