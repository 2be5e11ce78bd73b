"""Which FP8 training step to keep (issue 25: >= 1.5x the BF16 step on the H200), and where its time goes.

    python benchmarks/fp8_training_step.py --json out.json [--budget 95]   # the decision run (H200: about 100 s)
    python benchmarks/fp8_training_step.py --gemms                         # the step's twelve GEMMs alone

The chapter's shape (two blocks, d=4096, 4096 tokens). The BF16 side is the suite's: the BF16 stack with
torch's fused AdamW. In order, each part guarded (a part that fails prints its error and the run goes on;
a part that would overrun --budget is skipped and says so):
  1. bits: the fused passes against the eager path on the real shapes (FP8 codes that differ: 0 expected),
     and one fused block's forward and backward against its two Fp8Matmuls;
  2. steps: BF16 against FP8 variants, timed as the gate times them (alternating pairs, L2 flushed; median
     of per-pair ratios and its bootstrap interval): the suite before this change, each fusion alone, both,
     both with each way of getting GELU's output to its cast (fp8_training.GELU_CAST), and both with the
     activations' amax from a history (Fp8Recipe(activation_amax="history"));
  3. loss: the suite's final-loss gap (150 steps, a poisoned step) for each recipe, bound 1% (one training
     per recipe, as the first variant of it runs);
  4. profile: device time per kernel category of one step of BF16, of the default step, of the two fastest
     other variants;
  5. kernels: the fused GELU passes against the eager operations they replace, each GELU_CAST, the
     recomputing cast's tiles, and the optimizer: torch's fused AdamW with the forward's weight casts
     against Fp8AdamW's tiles (the fastest tiles are fp8_training_triton's constants to keep);
  6. BF16 under torch.compile against the fastest candidate (what a user who compiles would compare).
The variants set fp8_training's options (FUSE_BLOCKS, OPTIMIZER_CASTS, GELU_CAST) and restore them.
A variant is a candidate unless a fused pass it runs gave other FP8 codes than the eager path in the bits
part (linears run one by one run none of those passes). Decision: the fastest candidate whose interval's
low end is >= 1.5x and whose loss gap is <= 1%; if two are within each other's intervals, the simpler one
(fewer fusions, the recipe as it was: amax from the tensor itself); the default (fp8_training's
FUSE_BLOCKS and OPTIMIZER_CASTS) is the fastest candidate, whether or not it meets the target.
A benchmark: it prints and asserts nothing; the last table is the decision's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import traceback

import torch

from lowprec_workloads import fp8_training
from lowprec_workloads.fp8_training import E4M3, E5M2, RECIPE, Fp8Recipe, Shape, batch, pair
from pytest_lowprec.formats.fp8 import quantize_tensorwise, scaled_mm

SHAPE = Shape(d=4096, blocks=2, tokens=4096, steps=150, lr=3e-4)
HISTORY = Fp8Recipe(activation_amax="history")
# name -> (fp8_training.FUSE_BLOCKS, fp8_training.OPTIMIZER_CASTS, recipe, fp8_training.GELU_CAST)
VARIANTS = {
    "before (per linear, forward casts)": (False, False, RECIPE, "written"),
    "fused block": (True, False, RECIPE, "written"),
    "optimizer casts": (False, True, RECIPE, "written"),
    "fused + optimizer casts": (True, True, RECIPE, "written"),
    "fused + optimizer casts, gelu recomputed": (True, True, RECIPE, "recomputed"),
    "fused + optimizer casts, gelu registers": (True, True, RECIPE, "registers"),
    "both + amax history, gelu recomputed": (True, True, HISTORY, "recomputed"),
    "both + amax history, gelu registers": (True, True, HISTORY, "registers"),
}
DEFAULT = "before (per linear, forward casts)"  # fp8_training's defaults (FUSE_BLOCKS, OPTIMIZER_CASTS off)
TILES = {"cast": [(64, 128, 4), (64, 64, 4)], "adamw": [(64, 64, 4), (32, 64, 4), (64, 64, 8)]}


class Budget:
    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


class Run:
    """Where the parts run: the H200 at the chapter's shape, or (--dry-run) the CPU at a toy shape, to check
    the script's own code before it spends GPU time."""

    def __init__(self, dry: bool):
        self.dry = dry
        self.device = "cpu" if dry else "cuda"
        self.shape = Shape(d=64, blocks=2, tokens=256, steps=30) if dry else SHAPE
        self.name = "cpu (dry run)" if dry else torch.cuda.get_device_name()

    def timer(self):
        from pytest_lowprec.timing import CudaEventTimer, HostTimer

        if self.dry:
            return HostTimer()
        from pytest_lowprec.hardware import probe_cuda

        device = probe_cuda()
        return CudaEventTimer(device.index, l2_bytes=device.l2_bytes, uuid=device.uuid)

    def ms(self, fn, reps: int = 20) -> float:
        from pytest_lowprec.timing import cuda_event_times_ms

        if self.dry:
            fn()
            start = time.perf_counter()
            for _ in range(3):
                fn()
            return (time.perf_counter() - start) / 3 * 1e3
        return statistics.median(cuda_event_times_ms(fn, reps=reps, warmup=3))

    def sync(self) -> None:
        if not self.dry:
            torch.cuda.synchronize()

    def empty_cache(self) -> None:
        if not self.dry:
            torch.cuda.empty_cache()


def _part(name: str, budget: Budget, needs_s: float, results: dict, fn, json_path: str | None = None) -> None:
    """Run one part unless less than `needs_s` seconds are left; a failure is printed and recorded. The JSON
    is rewritten after each part, so a run cut short still leaves what it measured."""
    if budget.left() < needs_s:
        print(f"\n[{name}] skipped: {budget.left():.0f} s left of the budget, it needs about {needs_s:.0f} s")
        results[name] = {"skipped": f"budget ({budget.left():.0f} s left)"}
        return
    print(f"\n[{name}]", flush=True)
    start = time.perf_counter()
    try:
        results[name] = fn()
    except Exception as error:  # noqa: BLE001 - a part that cannot run is reported, not fatal
        traceback.print_exc()
        results[name] = {"error": f"{type(error).__name__}: {error}"[:500]}
    print(f"[{name}] {time.perf_counter() - start:.1f} s", flush=True)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=1, default=str)


OPTIONS = ("FUSE_BLOCKS", "OPTIMIZER_CASTS", "GELU_CAST")


@contextlib.contextmanager
def _options(fuse_blocks: bool, optimizer_casts: bool = False, gelu_cast: str = fp8_training.GELU_CAST):
    """fp8_training's options for a variant (blocks fused or run as two Fp8Matmuls and GELU; Fp8AdamW or
    torch's AdamW from `adamw`; how the GELU casts get GELU's output), restored after."""
    original = {name: getattr(fp8_training, name) for name in OPTIONS}
    fp8_training.FUSE_BLOCKS, fp8_training.OPTIMIZER_CASTS = fuse_blocks, optimizer_casts
    fp8_training.GELU_CAST = gelu_cast
    try:
        yield
    finally:
        for name, value in original.items():
            setattr(fp8_training, name, value)


def _fused_passes(name: str) -> tuple[str, ...]:
    """The bits part's fused passes variant `name` runs (its keys' prefixes): a fused block's three under its
    GELU_CAST; none for linears run one by one, whose quantizer is the eager path the passes are checked
    against (the optimizer's casts are the suite's CUDA test's)."""
    fused, _, _, how = VARIANTS[name]
    return (f"gelu {how}", f"gelu_backward {how}", "identity any") if fused else ()


def _wrong_codes(name: str, checked: dict) -> dict[str, float]:
    """The fused passes `name` runs that gave other FP8 codes than the eager path, with how many."""
    counts = {p: checked.get(f"{p}: codes differing") for p in _fused_passes(name)}
    return {p: n for p, n in counts.items() if n}


def _candidates(results: dict) -> tuple[str, ...]:
    """Variants whose fused passes all gave the eager path's codes (all of them when bits did not run)."""
    checked = results.get("bits", {})
    return tuple(name for name in VARIANTS if not _wrong_codes(name, checked))


def _differing(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((a.reshape(-1).view(torch.uint8) != b.reshape(-1).view(torch.uint8)).sum())


def bits(run: Run) -> dict:
    t, d, h = run.shape.tokens, run.shape.d, 4 * run.shape.d
    gen = torch.Generator(device=run.device).manual_seed(1)
    pre = (torch.randn(t, h, device=run.device, generator=gen) * 2).to(torch.bfloat16)
    grad = (torch.randn(t, h, device=run.device, generator=gen) * 1e-3).to(torch.bfloat16)
    out = {}
    cases = (("gelu", pre, None, E4M3), ("gelu_backward", grad, pre, E5M2), ("identity", grad, None, E5M2))
    # Every GELU_CAST, with and without an amax history (half the tensor's amax: the cast saturates).
    for op, a, b, dtype in cases:
        ref = {"gelu": torch.nn.functional.gelu(pre), "identity": grad}.get(op) if b is None else \
            torch.ops.aten.gelu_backward(a, b)
        eager = fp8_training.quantize_operand(ref, dtype, transpose=True)
        half = ref.float().abs().amax() / 2
        eager_history = fp8_training.quantize_operand(ref, dtype, transpose=True, amax=half)
        sums = ref.sum(0, dtype=torch.float32)
        for how in fp8_training.GELU_CASTS if op != "identity" else ("any",):
            with _options(True, gelu_cast=how if how != "any" else fp8_training.GELU_CAST):
                fused = fp8_training.fused_quantize(a, dtype, op, b=b, colsum=True)
                history = fp8_training.AmaxHistory()
                history.value = half.clone()
                fused_history = fp8_training.fused_quantize(a, dtype, op, b=b, history=history)
            out[f"{op} {how}: codes differing"] = (
                sum(_differing(x, y) for x, y in zip(fused[:3], eager, strict=True))
                + sum(_differing(x, y) for x, y in zip(fused_history[:3], eager_history, strict=True)))
            out[f"{op} {how}: column sums rel err"] = float((fused[3] - sums).norm() / sums.norm())
    # One block, fused against two Fp8Matmuls, from the same weights (each with fresh amax states).
    stack = fp8_training.Stack(d, 1, fp8=True, seed=3, device=run.device)
    block = stack.blocks[0]
    x = (torch.randn(t, d, device=run.device, generator=gen)).to(torch.bfloat16)
    dy = (torch.randn(t, d, device=run.device, generator=gen) * 1e-3).to(torch.bfloat16)
    got = {}
    for fused in (True, False):
        for linear in (block.fc1, block.fc2):
            linear.weight_amax = fp8_training.WeightAmax()
            linear.weight.grad = linear.bias.grad = None
        xi = x.clone().requires_grad_()
        with _options(fused):
            y = block(xi)
        y.backward(dy)
        got[fused] = {"y": y.detach(), "dx": xi.grad, **{f"{n}.{p}": getattr(getattr(block, n), p).grad
                                               for n in ("fc1", "fc2") for p in ("weight", "bias")}}
    for key in got[True]:
        a, b = got[True][key].float(), got[False][key].float()
        out[f"block {key} max rel diff"] = float((a - b).abs().max() / b.abs().max())
    for key, value in out.items():
        print(f"  {key:48} {value:g}")
    return out


def kernels(run: Run) -> dict:
    from lowprec_workloads import fp8_training_triton as k
    from lowprec_workloads.fp8_training import fused_quantize, quantize_operand

    t, h = run.shape.tokens, 4 * run.shape.d
    gen = torch.Generator(device=run.device).manual_seed(2)
    pre = (torch.randn(t, h, device=run.device, generator=gen) * 2).to(torch.bfloat16)
    grad = (torch.randn(t, h, device=run.device, generator=gen) * 1e-3).to(torch.bfloat16)
    out = {}

    def eager_gelu():
        quantize_operand(torch.nn.functional.gelu(pre), E4M3, transpose=True)

    def eager_gelu_backward():
        g = torch.ops.aten.gelu_backward(grad, pre)
        g.sum(0, dtype=torch.float32)
        quantize_operand(g, E5M2, transpose=True)

    amax = pre.float().abs().amax()
    history = fp8_training.AmaxHistory()
    out["gelu fwd: eager gelu, amax, cast ms"] = run.ms(eager_gelu)
    out["gelu bwd: eager gelu_bwd, sum, amax, cast ms"] = run.ms(eager_gelu_backward)
    for how in fp8_training.GELU_CASTS:
        with _options(True, gelu_cast=how):
            out[f"gelu fwd: fused, gelu {how} ms"] = run.ms(lambda: fused_quantize(pre, E4M3, "gelu"))
            out[f"gelu bwd: fused, gelu {how} ms"] = run.ms(
                lambda: fused_quantize(grad, E5M2, "gelu_backward", b=pre, colsum=True))
            history.value = amax
            out[f"gelu bwd: fused with amax history, gelu {how} ms"] = run.ms(
                lambda: fused_quantize(grad, E5M2, "gelu_backward", b=pre, colsum=True, history=history))
    for tile in TILES["cast"]:
        out[f"gelu bwd recomputing cast pass, tile {tile} ms"] = run.ms(
            lambda tile=tile: k.quantize_transposed(grad, amax, E5M2, b=pre, op=k.GELU_BACKWARD, tile=tile))
    # The optimizer: the FP8 model's parameters, torch's fused AdamW and then the forward's four weight casts
    # (before) against Fp8AdamW (the casts in the update), and torch's fused AdamW alone (the BF16 side's).
    bf16, fp8, teacher = pair(run.shape, run.device)
    del teacher, bf16
    params = list(fp8.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    linears = list(fp8.linears().values())
    for linear in linears:
        fp8_training.quantize_weight(linear.weight, RECIPE, linear.weight_amax)  # a previous amax to scale by
    torch_adamw = torch.optim.AdamW(params, lr=1e-7, fused=True)

    def before():
        torch_adamw.step()
        for linear in linears:
            fp8_training.quantize_weight(linear.weight, RECIPE, linear.weight_amax)

    out["optimizer: torch fused AdamW alone ms"] = run.ms(torch_adamw.step)
    out["optimizer: torch fused AdamW + 4 weight casts ms"] = run.ms(before)
    for tile in TILES["adamw"]:
        optimizer = fp8_training.Fp8AdamW(fp8, lr=1e-7, fused=True, tile=tile)
        out[f"optimizer: Fp8AdamW tile {tile} ms"] = run.ms(optimizer.step)
    for key, value in out.items():
        print(f"  {key:52} {value:8.3f}")
    return out


def _step_fn(model, optimizer, x, y):
    def step() -> None:
        fp8_training.objective(model, x, y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def steps(run: Run, pairs_n: int = 30) -> dict:
    from pytest_lowprec.stats import side_medians, summarize_pairs

    timer = run.timer()
    bf16, fp8, teacher = pair(run.shape, run.device)
    x, y = batch(0, run.shape, teacher, run.device, None)
    del teacher
    bf16_step = _step_fn(bf16, torch.optim.AdamW(bf16.parameters(), lr=run.shape.lr, fused=True), x, y)
    out = {"device": run.name, "torch": torch.__version__}
    print(f"  {run.name}, torch {torch.__version__}; {pairs_n} alternating pairs per variant")
    for name, (fused, casts, recipe, gelu_cast) in VARIANTS.items():
        try:
            model = pair(run.shape, run.device)[1].set_fp8(True, recipe)
            with _options(fused, casts, gelu_cast):
                optimizer = fp8_training.adamw(model, run.shape.lr, fused=True)
                fp8_step = _step_fn(model, optimizer, x, y)
                timer.warmup(bf16_step, fp8_step)
                measured = timer.pairs(bf16_step, fp8_step, pairs_n)
                peak = _peak_above_resident(run, model, fp8_step)
            if "bf16_peak_bytes" not in out:
                out["bf16_peak_bytes"] = _peak_above_resident(run, bf16, bf16_step)
            summary = summarize_pairs(measured)
            b_ms, f_ms = side_medians(measured)
            out[name] = {"bf16_ms": b_ms, "fp8_ms": f_ms, "peak_bytes": peak, **summary.as_dict()}
            print(f"  {name:42} bf16 {b_ms:6.2f} ms  fp8 {f_ms:6.2f} ms  {summary.median:.3f}x "
                  f"[{summary.low:.3f}, {summary.high:.3f}]  peak {peak / 2**30:.2f} GiB "
                  f"(bf16 {out['bf16_peak_bytes'] / 2**30:.2f})", flush=True)
            del model, optimizer, fp8_step
        except Exception as error:  # noqa: BLE001
            traceback.print_exc()
            out[name] = {"error": f"{type(error).__name__}: {error}"[:300]}
        run.empty_cache()
    return out


def _peak_above_resident(run: Run, model, step) -> int:
    """A step's peak memory above what was resident before it, the FP8 weights the optimizer holds between
    steps counted in the step's (as the suite's memory gate counts them); 0 on the CPU."""
    if run.dry:
        return 0
    torch.cuda.synchronize()
    held = sum(m.weight_amax.held_bytes for m in model.linears().values())
    resident = torch.cuda.memory_allocated() - held
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - resident


def _category(kernel: str) -> str:
    name = kernel.lower()
    for category, keys in (("gemm", ("nvjet", "gemm", "cutlass", "sm90_xmma")), ("adamw", ("adam",)),
                           ("fp8 quantize (triton)", ("_cast_kernel", "_amax_kernel", "_fp8_tensorwise", "_absmax")),
                           ("gelu", ("gelu",)), ("layernorm", ("layer_norm", "layernorm")),
                           ("reduce (bias grads, sums)", ("reduce",)), ("copy / cast", ("copy", "convert", "to_copy")),
                           ("elementwise", ("elementwise", "vectorized"))):
        if any(k in name for k in keys):
            return category
    return "other"


def _self_ms(event, run: Run) -> float:
    return (event.self_cpu_time_total if run.dry else event.self_device_time_total) / 1e3


def profile(run: Run, results: dict | None = None) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    bf16, fp8, teacher = pair(run.shape, run.device)
    x, y = batch(0, run.shape, teacher, run.device, None)
    del teacher, fp8
    out = {}
    # BF16, the default step, and the two fastest other candidates of the steps part (the next two without it).
    steps_done = (results or {}).get("steps", {})
    timed = {n: r["median"] for n, r in steps_done.items() if isinstance(r, dict) and "median" in r}
    others = [n for n in _candidates(results or {}) if n != DEFAULT]
    kept = sorted((n for n in others if n in timed), key=lambda n: -timed[n])[:2] or others[:2]
    for name in ("bf16", DEFAULT, *kept):
        fused, casts, recipe, gelu_cast = VARIANTS.get(name, (False, False, RECIPE, fp8_training.GELU_CAST))
        with _options(fused, casts, gelu_cast):
            if name == "bf16":
                model, bf16 = bf16, None
                optimizer = torch.optim.AdamW(model.parameters(), lr=run.shape.lr, fused=True)
            else:
                model = pair(run.shape, run.device)[1].set_fp8(True, recipe)
                optimizer = fp8_training.adamw(model, run.shape.lr, fused=True)
            step = _step_fn(model, optimizer, x, y)
            for _ in range(3):
                step()
            run.sync()
            with torch_profile(activities=[ProfilerActivity.CPU if run.dry else ProfilerActivity.CUDA]) as prof:
                step()
                run.sync()
        del model, optimizer, step
        run.empty_cache()
        kind = "CPU" if run.dry else "CUDA"  # the dry run reads the CPU's operators, to check the code
        kernels = [e for e in prof.key_averages() if e.device_type.name == kind and _self_ms(e, run) > 0]
        categories: dict[str, float] = {}
        for e in kernels:
            categories[_category(e.key)] = categories.get(_category(e.key), 0.0) + _self_ms(e, run)
        top = sorted(kernels, key=lambda e: _self_ms(e, run), reverse=True)[:12]
        out[name] = {"kernel_ms": sum(categories.values()), "launches": sum(e.count for e in kernels),
                     "categories_ms": categories, "top": [(e.key[:80], e.count, _self_ms(e, run)) for e in top]}
        print(f"  {name}: {out[name]['kernel_ms']:.2f} ms of kernels, {out[name]['launches']} launches")
        for category, ms in sorted(categories.items(), key=lambda kv: -kv[1]):
            print(f"    {category:28} {ms:7.3f} ms")
        for key, count, ms in out[name]["top"]:
            print(f"      {ms:7.3f} ms x{count:<3} {key}")
    return out


def loss(run: Run, budget: Budget) -> dict:
    from lowprec_workloads.fp8_training import train

    poison, out = 40, {}
    bf16, _, teacher = pair(run.shape, run.device)
    start = time.perf_counter()
    ref, _ = train(bf16, teacher, run.shape, run.device, poison)
    ref_final = statistics.fmean(ref[-20:])
    bf16_s = time.perf_counter() - start
    print(f"  bf16 final loss {ref_final:.4f} (first/last {ref[0] / ref_final:.2f}x, {bf16_s:.1f} s)")
    # The fusions and every GELU_CAST compute the eager path's bits (the bits part and the suite check it):
    # one training per recipe, as its first variant runs.
    by_recipe: dict = {}
    for name, (fused, casts, recipe, gelu_cast) in VARIANTS.items():
        if recipe not in by_recipe:
            if budget.left() < 2 * bf16_s:
                print(f"  {name}: skipped (budget)")
                continue
            model = pair(run.shape, run.device)[1].set_fp8(True, recipe)
            start = time.perf_counter()
            with _options(fused, casts, gelu_cast):
                low, scaler = train(model, teacher, run.shape, run.device, poison)
            gap = (statistics.fmean(low[-20:]) - ref_final) / ref_final
            by_recipe[recipe] = {"loss_gap": gap, "skipped_steps": scaler.skipped,
                                 "seconds": time.perf_counter() - start, "trained_as": name}
            print(f"  {recipe.label} ({name}): loss gap {100 * gap:+.3f}% (bound 1%), "
                  f"skipped steps {scaler.skipped}")
        if recipe in by_recipe:
            out[name] = by_recipe[recipe]
    return out


def compiled(run: Run, results: dict) -> dict:
    """BF16 under torch.compile (its step: the compiled model's forward and backward, fused AdamW) against
    the fastest candidate measured in `steps`."""
    from pytest_lowprec.stats import side_medians, summarize_pairs

    candidates = _candidates(results)
    timed = {n: r for n, r in results.get("steps", {}).items() if n in candidates and "median" in r}
    name = max(timed, key=lambda n: timed[n]["median"]) if timed else DEFAULT
    fused, casts, recipe, gelu_cast = VARIANTS[name]
    timer = run.timer()
    bf16, fp8, teacher = pair(run.shape, run.device)
    fp8.set_fp8(True, recipe)
    x, y = batch(0, run.shape, teacher, run.device, None)
    del teacher
    compiled_bf16 = torch.compile(bf16)
    bf16_step = _step_fn(compiled_bf16, torch.optim.AdamW(bf16.parameters(), lr=run.shape.lr, fused=True), x, y)
    start = time.perf_counter()
    bf16_step()
    run.sync()
    compile_s = time.perf_counter() - start
    with _options(fused, casts, gelu_cast):
        fp8_step = _step_fn(fp8, fp8_training.adamw(fp8, run.shape.lr, fused=True), x, y)
        timer.warmup(bf16_step, fp8_step)
        measured = timer.pairs(bf16_step, fp8_step, 30)
    summary, (b_ms, f_ms) = summarize_pairs(measured), side_medians(measured)
    print(f"  bf16 compiled {b_ms:.2f} ms against {name} {f_ms:.2f} ms: {summary.median:.3f}x "
          f"[{summary.low:.3f}, {summary.high:.3f}] (compile {compile_s:.0f} s)")
    return {"fp8_variant": name, "bf16_compiled_ms": b_ms, "fp8_ms": f_ms, "compile_s": compile_s, **summary.as_dict()}


def decision(results: dict) -> None:
    """The last table: each variant's speedup, and the candidates' loss gaps."""
    timed = results.get("steps", {})
    losses = results.get("loss", {})
    print("\nFP8 training step on the chapter's shape against the suite's BF16 step (fused AdamW); "
          "target >= 1.5x, loss gap <= 1%")
    print(f"{'variant':42} {'bf16 ms':>8} {'fp8 ms':>8} {'speedup [95% CI]':>24} {'loss gap':>9} {'peak GiB':>9}")
    checked = results.get("bits", {})
    for name in VARIANTS:
        r = timed.get(name, {})
        wrong = _wrong_codes(name, checked)
        if wrong:
            passes = ", ".join(f"{p} {int(n)}" for p, n in wrong.items())
            print(f"  ({name}: FP8 codes differ from the eager path's in the fused passes it runs ({passes}): "
                  "not a candidate)")
        gap = losses.get(name, {}).get("loss_gap") if isinstance(losses.get(name), dict) else None
        gap_cell = f"{100 * gap:+.2f}%" if gap is not None else "-"
        if "median" in r:
            ci = f"{r['median']:.3f}x [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"
            print(f"{name:42} {r['bf16_ms']:8.2f} {r['fp8_ms']:8.2f} {ci:>24} {gap_cell:>9} "
                  f"{r['peak_bytes'] / 2**30:9.2f}")
        else:
            print(f"{name:42} {'':>8} {'':>8} {str(r.get('error') or r.get('skipped') or 'not run')[:24]:>24}")
    if "bf16_peak_bytes" in timed:
        print(f"{'(bf16 step peak above resident)':42} {'':>8} {'':>8} {'':>24} {'':>9} "
              f"{timed['bf16_peak_bytes'] / 2**30:9.2f}")
    c = results.get("bf16 compiled", {})
    if "median" in c:
        print(f"{'  against BF16 under torch.compile':42} {c['bf16_compiled_ms']:8.2f} {c['fp8_ms']:8.2f} "
              f"{c['median']:.3f}x [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}]  ({c['fp8_variant']})")


def _ms(fn, reps: int) -> float:
    from pytest_lowprec.timing import cuda_event_times_ms

    return statistics.median(cuda_event_times_ms(fn, reps=reps, warmup=3))


def gemms() -> None:
    """Each GEMM of one block's two linears (the step runs each twice), as the suite's FP8 path calls it."""
    t, d, h = SHAPE.tokens, SHAPE.d, 4 * SHAPE.d
    cases = [("fc1 fprop", t, d, h, E4M3, torch.bfloat16), ("fc1 dgrad", t, h, d, E5M2, torch.bfloat16),
             ("fc1 wgrad", h, t, d, E5M2, torch.float32), ("fc2 fprop", t, h, d, E4M3, torch.bfloat16),
             ("fc2 dgrad", t, d, h, E5M2, torch.bfloat16), ("fc2 wgrad", d, t, h, E5M2, torch.float32)]
    print(f"{'gemm':10} {'m':>6} {'k':>6} {'n':>6} {'bf16 ms':>8} {'fp8 ms':>8} {'speedup':>8}")
    for name, m, k, n, a_dtype, out in cases:
        a, b = torch.randn(m, k, device="cuda"), torch.randn(n, k, device="cuda")
        ab, bb = a.bfloat16(), b.bfloat16()
        aq, sa = quantize_tensorwise(a, a_dtype)
        bq, sb = quantize_tensorwise(b, E4M3)
        bf16 = _ms(lambda ab=ab, bb=bb, out=out: torch.mm(ab, bb.t()).to(out), 30)
        fp8 = _ms(lambda aq=aq, sa=sa, bq=bq, sb=sb, out=out, name=name: scaled_mm(
            aq, sa, bq.t(), sb, out_dtype=out, fast_accum="fprop" in name), 30)
        print(f"{name:10} {m:6} {k:6} {n:6} {bf16:8.3f} {fp8:8.3f} {bf16 / fp8:7.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write every number here")
    parser.add_argument("--budget", type=float, default=95.0, help="seconds; parts that would overrun are skipped")
    parser.add_argument("--gemms", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="the CPU at a toy shape: checks this script's code")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.dry_run:
        print("needs a CUDA device (or --dry-run)")
        return 1
    if args.gemms:
        gemms()
        return 0
    run, budget, results, out = Run(args.dry_run), Budget(args.budget), {}, args.json
    _part("bits", budget, 5, results, lambda: bits(run), out)
    _part("steps", budget, 25, results, lambda: steps(run, 4 if run.dry else 30), out)
    _part("loss", budget, 12, results, lambda: loss(run, budget), out)
    _part("profile", budget, 6, results, lambda: profile(run, results), out)
    if run.dry:
        print("\n[kernels] and [bf16 compiled] need CUDA (the Triton kernels, a compiled GPU step)")
    else:
        _part("kernels", budget, 10, results, lambda: kernels(run), out)
        _part("bf16 compiled", budget, 45, results, lambda: compiled(run, results), out)
    decision(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
