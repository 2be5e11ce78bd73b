"""Which deeper stack the NVFP4 training suite trains, and what each part of the recipe is worth (issue 25).

    python benchmarks/nvfp4_training_ablation.py --candidates --json out.json [--budget 120]   # the decision run
    python benchmarks/nvfp4_training_ablation.py --candidates --dry-run                       # the CPU, toy shapes
    python benchmarks/nvfp4_training_ablation.py [--d 2048] [--blocks 6] [--tokens 4096] [--steps 150] [--lr 3e-4]
                                                 [--bf16-last 2] [--only NAME ...] [--seeds 0 1 2]

`--candidates`: stacks deep enough that the BF16 linears (the last ones, as the paper keeps them) are at
most 20% of the linears, each trained as the suite trains it: BF16, the recipe with three draws of
stochastic rounding and RHT signs (weights, data and steps identical), the naive control, and an FP8 run
(the paper compares NVFP4's training loss with FP8's). Per run: the held-out loss gap against BF16 (every
linear in BF16 on batches no run trained on: what the suite gates, bound 1.5% on the mean of the three
draws), the training-loss gap (mean of the last 20 steps, through the run's own forward), the held-out
gap through the NVFP4 forward, and the wall time of the training. Then the ablations on the first
candidate: the recipe with one part off at a time (one draw each). The first two candidates, the
ablations, the FP8 runs, then the third; each run skipped when the budget would not cover it. The first
candidate is the suite's GPU_SHAPE.

The rule the suite's shape follows (stated before the run): the first candidate, in the order below (the
paper's share first, then the widest), whose mean held-out gap meets the bound and whose naive control
ends at least a point of training loss further from BF16 than the recipe. A benchmark: it prints and
asserts nothing; the last table is the decision's.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time

import torch

from lowprec_workloads.fp8_training import Shape, train
from lowprec_workloads.nvfp4_training import (
    NAIVE,
    RECIPE,
    Calibration,
    Run,
    students,
    train_bf16,
    train_nvfp4,
    training_path,
)

BOUND = 0.015
CONTROL_MARGIN = 0.01
SEEDS = (0, 1, 2)
# (label, shape, BF16 linears at the end)
CANDIDATES = [
    ("6 blocks d=2048, last block bf16 (2/12)", Shape(d=2048, blocks=6, tokens=4096, steps=150, lr=3e-4), 2),
    ("5 blocks d=2048, last block bf16 (2/10)", Shape(d=2048, blocks=5, tokens=4096, steps=150, lr=3e-4), 2),
    ("12 blocks d=1024, last 2 blocks bf16 (4/24)", Shape(d=1024, blocks=12, tokens=4096, steps=150, lr=3e-4), 4),
]
DRY_CANDIDATES = [
    ("dry: 6 blocks d=32, last block bf16", Shape(d=32, blocks=6, tokens=128, steps=70, lr=1e-3), 2),
    ("dry: 5 blocks d=32, last block bf16", Shape(d=32, blocks=5, tokens=128, steps=70, lr=1e-3), 2),
]
# name -> (recipe change, calibration), each applied to a candidate's recipe (its bf16_last kept)
ABLATIONS = {
    "no stochastic rounding": ({"stochastic_gradients": False}, Calibration()),
    "no RHT": ({"hadamard_wgrad": False}, Calibration()),
    "1x16 weights": ({"weight_tile": (1, 16)}, Calibration()),
    "no FP8 warm-up": ({}, Calibration(min_steps=0, max_steps=0)),
    "no BF16 layers": ({"bf16_last": 0}, Calibration()),
}
VARIANTS = {"recipe": ({}, Calibration()), **ABLATIONS}


class Budget:
    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def _row(label: str, run: Run, ref: Run, seconds: float) -> dict:
    row = {"run": label, "held_out_gap": run.held_out_gap(ref), "training_gap": run.gap(ref), "seconds": seconds,
           "fp8_warmup_steps": run.switch_step, "skipped": run.skipped, "nonfinite_weights": run.nonfinite_weights}
    if run.held_out_nvfp4 is not None:
        row["held_out_gap_nvfp4_forward"] = run.held_out_nvfp4_gap(ref)
    nvfp4_forward = row.get("held_out_gap_nvfp4_forward")
    print(f"    {label:34} held-out {100 * row['held_out_gap']:+6.2f}%  training {100 * row['training_gap']:+6.2f}%  "
          f"held-out nvfp4 fwd {'-' if nvfp4_forward is None else f'{100 * nvfp4_forward:+6.2f}%':>7}  "
          f"warm-up {run.switch_step!s:>4}  {seconds:5.1f} s", flush=True)
    return row


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


class Candidate:
    """One stack: its student, teacher, BF16 reference and the runs trained so far."""

    def __init__(self, label: str, shape: Shape, bf16_last: int, device: str, path: str):
        self.label, self.shape, self.device, self.path = label, shape, device, path
        self.recipe = dataclasses.replace(RECIPE, bf16_last=bf16_last)
        self.naive = dataclasses.replace(NAIVE, bf16_last=bf16_last)
        self.student, self.teacher = students(shape, device)
        self.ref, self.bf16_s = _timed(lambda: train_bf16(self.student, self.teacher, shape, device))
        self.rows: list[dict] = []
        self.nvfp4_s: float | None = None
        share = bf16_last / (2 * shape.blocks)
        print(f"\n  {label}: {shape}, BF16 linears {100 * share:.0f}%; bf16 first/last loss "
              f"{self.ref.losses[0] / self.ref.final:.2f}x ({self.bf16_s:.1f} s)", flush=True)

    def nvfp4(self, label: str, recipe, calibration: Calibration, seed: int, budget: Budget) -> dict | None:
        needs = self.nvfp4_s or 0.0
        if budget.left() < needs * 1.1:
            print(f"    {label:34} skipped: {budget.left():.0f} s left, a run takes about {needs:.0f} s")
            self.rows.append({"run": label, "skipped": "budget"})
            return None
        run, seconds = _timed(lambda: train_nvfp4(self.student, self.teacher, self.shape, self.device, recipe,
                                                  self.path, dataclasses.replace(calibration), seed))
        self.nvfp4_s = max(self.nvfp4_s or 0.0, seconds)
        row = _row(label, run, self.ref, seconds)
        self.rows.append(row)
        return row

    def fp8(self, budget: Budget) -> None:
        if budget.left() < self.bf16_s * 1.5:
            return
        model = copy.deepcopy(self.student).set_fp8(True)
        losses, seconds = _timed(lambda: train(model, self.teacher, self.shape, self.device)[0])
        final = statistics.fmean(losses[-20:])
        self.fp8_final = final
        print(f"    {'fp8 (fp8_training recipe)':34} training {100 * (final - self.ref.final) / self.ref.final:+6.2f}% "
              f"against bf16 ({seconds:.1f} s)", flush=True)

    def summary(self) -> dict:
        recipe = [r for r in self.rows if r["run"].startswith("recipe, seed") and "held_out_gap" in r]
        naive = next((r for r in self.rows if r["run"] == "naive" and "held_out_gap" in r), None)
        out = {"label": self.label, "shape": dataclasses.asdict(self.shape), "bf16_linears": self.recipe.bf16_last,
               "linears": 2 * self.shape.blocks, "draws": len(recipe), "bf16_final": self.ref.final,
               "bf16_s": self.bf16_s, "rows": self.rows}
        if recipe:
            out["held_out_gap"] = statistics.fmean(r["held_out_gap"] for r in recipe)
            out["training_gap"] = statistics.fmean(r["training_gap"] for r in recipe)
            out["held_out_gap_nvfp4_forward"] = statistics.fmean(r["held_out_gap_nvfp4_forward"] for r in recipe)
            out["nvfp4_run_s"] = statistics.fmean(r["seconds"] for r in recipe)
        if naive and recipe:
            out["naive_minus_recipe_training_gap"] = naive["training_gap"] - out["training_gap"]
            out["naive_minus_recipe_held_out_gap"] = naive["held_out_gap"] - out["held_out_gap"]
        if hasattr(self, "fp8_final"):
            out["fp8_training_gap"] = (self.fp8_final - self.ref.final) / self.ref.final
            if recipe:
                out["recipe_training_gap_vs_fp8"] = (statistics.fmean(
                    self.ref.final * (1 + r["training_gap"]) for r in recipe) - self.fp8_final) / self.fp8_final
        return out


def candidates(args, device: str, path: str) -> dict:
    """The runs, in the order the docstring gives; the JSON rewritten after each training (a run cut short
    still leaves what it measured)."""
    budget = Budget(args.budget)
    chosen = DRY_CANDIDATES if args.dry_run else CANDIDATES
    results: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "path": path,
                     "candidates": [], "ablations": None}
    built: list[Candidate] = []

    def save() -> None:
        results["candidates"] = [c.summary() for c in built]
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1, default=str)

    def core(label: str, shape: Shape, bf16_last: int) -> None:
        """BF16, recipe draw 0, the naive control, draws 1 and 2."""
        if budget.left() < 20 and built:
            print(f"\n  {label}: skipped ({budget.left():.0f} s left)")
            return
        candidate = Candidate(label, shape, bf16_last, device, path)
        built.append(candidate)
        candidate.nvfp4("recipe, seed 0", candidate.recipe, Calibration(), 0, budget)
        save()
        candidate.nvfp4("naive", candidate.naive, Calibration(), 0, budget)
        save()
        for seed in SEEDS[1:]:
            candidate.nvfp4(f"recipe, seed {seed}", candidate.recipe, Calibration(), seed, budget)
            save()

    # What the decision needs first: the first two candidates, the ablations on the first, the FP8
    # references, then the rest of the candidates.
    for candidate in chosen[:2]:
        core(*candidate)
    first = built[0]
    print(f"\n  ablations on {first.label} (one draw each)")
    for name, (change, calibration) in ABLATIONS.items():
        first.nvfp4(f"ablation: {name}", dataclasses.replace(first.recipe, **change), calibration, 0, budget)
        save()
    for candidate in built:
        candidate.fp8(budget)
    save()
    for candidate in chosen[2:]:
        core(*candidate)
    save()
    return results


def decision(results: dict) -> None:
    print(f"\nNVFP4 training on {results['device']} ({results['path']}): the recipe's mean over its draws against "
          f"BF16; bound {100 * BOUND:.1f}% held-out, control margin {100 * CONTROL_MARGIN:.0f} point")
    print(f"{'candidate':44} {'draws':>5} {'held-out':>9} {'training':>9} {'nvfp4 fwd':>9} {'vs fp8':>7} "
          f"{'naive lead':>10} {'s/run':>6} {'verdict':>8}")
    chosen = None
    for c in results["candidates"]:
        if "held_out_gap" not in c:
            print(f"{c['label']:44} {'-':>5} (no recipe run)")
            continue
        lead = c.get("naive_minus_recipe_training_gap")
        meets = c["draws"] == len(SEEDS) and c["held_out_gap"] <= BOUND and lead is not None and lead >= CONTROL_MARGIN
        if meets and chosen is None:
            chosen = c["label"]
        vs_fp8 = c.get("recipe_training_gap_vs_fp8")
        print(f"{c['label']:44} {c['draws']:5d} {100 * c['held_out_gap']:+8.2f}% {100 * c['training_gap']:+8.2f}% "
              f"{100 * c['held_out_gap_nvfp4_forward']:+8.2f}% "
              f"{'-' if vs_fp8 is None else f'{100 * vs_fp8:+.2f}%':>7} "
              f"{'-' if lead is None else f'{100 * lead:+.2f}pt':>10} {c['nvfp4_run_s']:6.1f} "
              f"{'meets' if meets else 'fails':>8}")
    first = results["candidates"][0] if results["candidates"] else None
    ablations = [r for r in (first or {}).get("rows", []) if r["run"].startswith("ablation") and "held_out_gap" in r]
    if ablations:
        print(f"ablations on the first ({first['label']}), one draw each:")
        for r in ablations:
            name = r["run"].removeprefix("ablation: ")
            print(f"  {name:34} held-out {100 * r['held_out_gap']:+6.2f}%  "
                  f"training {100 * r['training_gap']:+6.2f}%")
    print(f"suite shape by the rule: {chosen or 'none of the candidates meets it'}")


def manual(args, device: str, path: str) -> None:
    tokens = args.tokens or (4096 if device == "cuda" else 512)
    shape = Shape(d=args.d, blocks=args.blocks, tokens=tokens, steps=args.steps, lr=args.lr)
    student, teacher = students(shape, device)
    ref, seconds = _timed(lambda: train_bf16(student, teacher, shape, device))
    print(f"{shape}, path {path}, last {args.bf16_last} linears bf16: bf16 first/last-20 loss "
          f"{ref.losses[0] / ref.final:.2f}x ({seconds:.1f} s)")
    base = {"recipe": dataclasses.replace(RECIPE, bf16_last=args.bf16_last),
            "naive": dataclasses.replace(NAIVE, bf16_last=args.bf16_last)}
    names = args.only or ["recipe", "naive", *ABLATIONS]
    for name, seed in ((n, s) for n in names for s in args.seeds):
        if name == "naive":
            recipe, calibration = base["naive"], Calibration()
        else:
            change, calibration = VARIANTS[name]
            recipe = dataclasses.replace(base["recipe"], **change)
        run, seconds = _timed(lambda recipe=recipe, calibration=calibration, seed=seed: train_nvfp4(
            student, teacher, shape, device, recipe, path, dataclasses.replace(calibration), seed))
        _row(f"{name}, seed {seed}" if seed else name, run, ref, seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", action="store_true", help="the suite's shape: candidates, then ablations")
    parser.add_argument("--dry-run", action="store_true", help="the CPU at toy shapes: checks this script's code")
    parser.add_argument("--json", help="write every number here")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds for --candidates")
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--tokens", type=int)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--bf16-last", type=int, default=RECIPE.bf16_last)
    parser.add_argument("--only", nargs="*", choices=["naive", *VARIANTS])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    path = training_path(torch.cuda.get_device_capability() if device == "cuda" else None)
    if not args.candidates:
        manual(args, device, path)
        return 0
    decision(candidates(args, device, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
