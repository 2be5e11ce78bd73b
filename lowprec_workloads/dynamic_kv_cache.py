"""A KV cache whose pages change precision mid-run: BF16, FP8 E4M3 (per-head scales) or NVFP4.

Three policies decide, in this order, on every append:
- activation statistics: the page's outlier ratio absmax / (|mean| + 3 std) picks the
  layer's format for new pages (>= 2.0 keeps 16-bit, >= 1.5 FP8, else NVFP4). A layer
  moves to a higher precision at once and to a lower one only once the ratio is
  `hysteresis` below the threshold, so a ratio hovering at a threshold does not flap;
- accuracy budget: a page is stored in the lowest precision whose error bound stays
  within `error_budget` (relative L2 against the appended values), else one step higher;
- memory pressure: past `high_water` of `byte_budget` the oldest pages are demoted one
  step at a time (BF16 -> FP8 -> NVFP4) until `low_water`, if their bound allows it.
A page is never promoted: bits rounded away cannot come back, so a higher precision
applies to pages written after the switch. A demotion re-quantizes the page's stored
values; its error bound is the bound it had plus the new rounding error (triangle
inequality), so every page carries a certified bound on its error against the values
first appended, and at most two demotions a page means no drift however long the run.
Non-finite values: the page is kept in BF16, flagged in the trace, and never demoted.
A cache that cannot fit raises CacheBudgetError and leaves its pages as they were, or
with on_full="evict_oldest" drops the oldest pages (recorded in the trace).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from .adaptive import outlier_ratio
from .kv_compression import StoredKV, store

FORMATS = ("bf16", "fp8", "nvfp4")
_RANK = {f: i for i, f in enumerate(FORMATS)}  # higher rank = fewer bits


class CacheBudgetError(RuntimeError):
    """The cache cannot hold another page within its byte budget."""


@dataclass(frozen=True)
class Policy:
    error_budget: float = 0.12  # relative L2 error of a page against its appended values
    byte_budget: int | None = None
    high_water: float = 0.9
    low_water: float = 0.75
    outlier_bf16: float = 2.0
    outlier_fp8: float = 1.5
    hysteresis: float = 0.1
    on_full: str = "error"  # or "evict_oldest"

    def __post_init__(self):
        if self.on_full not in ("error", "evict_oldest"):
            raise ValueError(f"on_full must be 'error' or 'evict_oldest', got {self.on_full!r}")
        if not 0 < self.low_water < self.high_water <= 1:
            raise ValueError(f"need 0 < low_water < high_water <= 1, got {self.low_water}, {self.high_water}")


@dataclass(frozen=True)
class Transition:
    step: int
    layer: int
    tokens: tuple[int, int]
    src: str  # "new" for an appended page
    dst: str  # a format, or "evicted"
    reason: str
    error_before: float  # certified relative error bound before and after
    error_after: float


@dataclass
class Page:
    layer: int
    start: int
    stop: int
    k: StoredKV
    v: StoredKV
    norms: tuple[float, float]  # L2 norms of the appended K and V
    errors: tuple[float, float]  # bounds on ||appended - stored|| for K and V
    flagged: bool = False
    at_floor: bool = False  # a demotion was refused by the error budget: it would be again

    @property
    def elements(self) -> int:
        """Values in K (and in V)."""
        data = self.k.data
        return data.packed.numel() * 2 if self.k.fmt == "nvfp4" else data.numel()

    @property
    def fmt(self) -> str:
        return self.k.fmt

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    @property
    def bound(self) -> float:
        return max(e / n if n else 0.0 for e, n in zip(self.errors, self.norms, strict=True))


def _store_fast(x: torch.Tensor, fmt: str) -> StoredKV:
    """store() through the Triton quantizers: the same bits (tests/test_formats_cuda.py). The NVFP4
    kernel reads bfloat16; a demotion re-quantizes float32 values, and those take the eager path."""
    from pytest_lowprec.formats import triton_quant

    if fmt == "fp8":
        q, inv = triton_quant.quantize_fp8_rowwise_triton(x.reshape(x.shape[0], -1))
        return StoredKV(fmt, q.reshape(x.shape), inv.reshape(x.shape[0], 1, 1))
    if fmt == "nvfp4" and x.dtype == torch.bfloat16:
        t = triton_quant.quantize_nvfp4_triton(x.reshape(-1, x.shape[-1]))
        return StoredKV(fmt, replace(t, shape=tuple(x.shape)))
    return store(x, fmt)


def _quantize(x: torch.Tensor, fmt: str, fast: bool) -> tuple[StoredKV, float]:
    """(stored, ||x - dequantized||) for x [heads, tokens, head_dim]."""
    stored = _store_fast(x, fmt) if fast and x.is_cuda else store(x, fmt)
    return stored, float((x.double() - stored.dequantize().double()).norm())


@dataclass
class DynamicKVCache:
    layers: int
    policy: Policy = field(default_factory=Policy)
    fast: bool = False  # Triton quantizers on CUDA tensors
    pages: list[Page] = field(default_factory=list)
    trace: list[Transition] = field(default_factory=list)
    layer_format: dict[int, str] = field(default_factory=dict)
    step: int = 0
    nbytes: int = 0  # kept as pages come, change and go: summing every page on every check was quadratic

    @property
    def bf16_nbytes(self) -> int:
        """What the same pages take in BF16."""
        return sum(2 * 2 * p.elements for p in self.pages)

    def values(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Dequantized K and V of a layer, [heads, tokens, head_dim], in token order."""
        pages = sorted((p for p in self.pages if p.layer == layer), key=lambda p: p.start)
        return (torch.cat([p.k.dequantize() for p in pages], dim=1),
                torch.cat([p.v.dequantize() for p in pages], dim=1))

    def _layer_choice(self, layer: int, ratio: float) -> tuple[str, str]:
        pol = self.policy

        def pick(margin: float) -> str:
            if ratio >= pol.outlier_bf16 - margin:
                return "bf16"
            return "fp8" if ratio >= pol.outlier_fp8 - margin else "nvfp4"

        current = self.layer_format.get(layer)
        at_once = pick(0.0)
        if current is None or _RANK[at_once] < _RANK[current]:
            return at_once, f"outlier ratio {ratio:.2f}"
        past_margin = pick(pol.hysteresis)
        if _RANK[past_margin] > _RANK[current]:
            return past_margin, f"outlier ratio {ratio:.2f} (< threshold - {pol.hysteresis})"
        return current, ""

    def append(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> Page:
        """Store a page of K and V [heads, tokens, head_dim] for tokens start.. of `layer`."""
        if not 0 <= layer < self.layers:
            raise ValueError(f"layer {layer} out of range: the cache has {self.layers} layers")
        if k.shape != v.shape or k.ndim != 3:
            raise ValueError(f"K and V must be [heads, tokens, head_dim] of one shape, got {tuple(k.shape)}, "
                             f"{tuple(v.shape)}")
        self.step += 1
        tokens = (start, start + k.shape[1])
        norms = (float(k.double().norm()), float(v.double().norm()))
        if not (torch.isfinite(k).all() and torch.isfinite(v).all()):
            bad = int((~torch.isfinite(k)).sum() + (~torch.isfinite(v)).sum())
            page = Page(layer, *tokens, store(k, "bf16"), store(v, "bf16"), norms, (0.0, 0.0), flagged=True)
            reason = f"{bad} non-finite values: kept in 16-bit and flagged"
            self._admit(page, Transition(self.step, layer, tokens, "new", "bf16", reason, 0.0, 0.0))
            return page
        fmt, why = self._layer_choice(layer, max(float(outlier_ratio(k)), float(outlier_ratio(v))))
        previous = self.layer_format.get(layer)
        if fmt != previous:
            self.trace.append(Transition(self.step, layer, tokens, previous or "new", fmt,
                                         f"layer format: {why}", 0.0, 0.0))
            self.layer_format[layer] = fmt
        reason = "appended"
        while True:  # the accuracy budget: one step up in precision until the page fits it
            (sk, ek), (sv, ev) = _quantize(k, fmt, self.fast), _quantize(v, fmt, self.fast)
            page = Page(layer, *tokens, sk, sv, norms, (ek, ev))
            if page.bound <= self.policy.error_budget or fmt == "bf16":
                break
            reason = f"{fmt} error {page.bound:.3g} over the budget {self.policy.error_budget}"
            fmt = FORMATS[_RANK[fmt] - 1]
        self._admit(page, Transition(self.step, layer, tokens, "new", fmt, reason, 0.0, page.bound))
        return page

    def _admit(self, page: Page, record: Transition) -> None:
        self.pages.append(page)
        self.nbytes += page.nbytes
        self.trace.append(record)
        budget = self.policy.byte_budget
        if budget is None:
            return
        if self.nbytes > self.policy.high_water * budget:
            self._relieve(self.policy.low_water * budget)
        while self.nbytes > budget:
            if self.policy.on_full == "error":
                self.pages.remove(page)
                self.nbytes -= page.nbytes
                self.trace.pop()
                raise CacheBudgetError(
                    f"KV cache over its byte budget: {self.nbytes} bytes with the new page (layer {page.layer}, "
                    f"tokens {page.start}..{page.stop}), budget {budget}, and no page can be demoted within the "
                    f"error budget {self.policy.error_budget}; raise byte_budget, relax error_budget, or use "
                    f"on_full='evict_oldest'. The new page was not stored; stored pages keep their values "
                    f"(demotions made while trying are in the trace).")
            oldest = min((p for p in self.pages if p is not page), key=lambda p: (p.start, p.layer), default=None)
            if oldest is None:
                raise CacheBudgetError(f"one page ({page.nbytes} bytes) is larger than the byte budget {budget}")
            self.pages.remove(oldest)
            self.nbytes -= oldest.nbytes
            self.trace.append(Transition(self.step, oldest.layer, (oldest.start, oldest.stop), oldest.fmt,
                                         "evicted", "over the byte budget", oldest.bound, oldest.bound))

    def _relieve(self, target: float) -> None:
        """Demote the oldest demotable pages one format step each until at most `target` bytes."""
        for page in self.pages:  # appended in time order: oldest first
            while self.nbytes > target and not (page.flagged or page.at_floor) and page.fmt != FORMATS[-1]:
                dst = FORMATS[_RANK[page.fmt] + 1]
                k_now, v_now = page.k.dequantize(), page.v.dequantize()
                (sk, ek), (sv, ev) = _quantize(k_now, dst, self.fast), _quantize(v_now, dst, self.fast)
                errors = (page.errors[0] + ek, page.errors[1] + ev)
                candidate = Page(page.layer, page.start, page.stop, sk, sv, page.norms, errors)
                if candidate.bound > self.policy.error_budget:
                    page.at_floor = True
                    break
                self.trace.append(Transition(self.step, page.layer, (page.start, page.stop), page.fmt, dst,
                                             f"memory pressure: {self.nbytes / self.policy.byte_budget:.2f} "
                                             f"of the byte budget", page.bound, candidate.bound))
                self.nbytes += candidate.nbytes - page.nbytes
                page.k, page.v, page.errors = sk, sv, errors
            if self.nbytes <= target:
                return

    def trace_table(self) -> str:
        lines = [f"{'step':>6} {'layer':>5} {'tokens':>13} {'from':>6} -> {'to':8} {'bound before':>12} "
                 f"{'after':>8}  reason"]
        for t in self.trace:
            lines.append(f"{t.step:6d} {t.layer:5d} {f'{t.tokens[0]}..{t.tokens[1]}':>13} {t.src:>6} -> "
                         f"{t.dst:8} {t.error_before:12.4f} {t.error_after:8.4f}  {t.reason}")
        return "\n".join(lines)

