"""How far apart two runs of the same training end when only summation order differs: the noise floor
under the training suites' final-loss bounds.

Each configuration trains the suite's stack twice from identical weights on identical batches for the
same steps; the second run sees every batch's tokens in a fixed shuffled order. The loss is a mean over
tokens and each row's forward is independent of the others, so the two runs are the same computation
up to the order of the weight-gradient sums (and, in FP8, the per-tensor amax, which a permutation does
not change). Their final-loss gap is how much a bound on that gap can resolve: a bound below it gates noise.

    python benchmarks/training_noise_floor.py                 # GPU: d=4096, 4096 tokens, 150 steps
    python benchmarks/training_noise_floor.py --d 64 --tokens 512   # CPU size
"""

from __future__ import annotations

import argparse
import statistics

import torch

from lowprec_workloads.fp8_training import LossScaler, Shape, Stack, batch, objective


def run(shape: Shape, fp8: bool, lr: float, shuffle: bool, device: str, seed: int = 0) -> list[float]:
    model = Stack(shape.d, shape.blocks, fp8=fp8, seed=seed, device=device)
    teacher = Stack(shape.d, shape.blocks, fp8=False, seed=seed + 1, device=device)
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scaler = LossScaler()
    perm = torch.randperm(shape.tokens, generator=torch.Generator().manual_seed(99)).to(device)
    losses = []
    for step in range(shape.steps):
        x, y = batch(step, shape, teacher, device, None)
        if shuffle:
            x, y = x[perm], y[perm]
        loss = objective(model, x, y)
        scaler.step(loss, params, optimizer, step)
        losses.append(loss.item())
    return losses


def final(losses: list[float], k: int) -> float:
    return statistics.fmean(losses[-k:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--last-k", type=int, default=20)
    parser.add_argument("--lr", type=float, nargs="+", default=[1e-3, 3e-4, 1e-4])
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = Shape(d=args.d, blocks=2, tokens=args.tokens, steps=args.steps)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}, d={shape.d}, tokens={shape.tokens}, steps={shape.steps}, "
          f"last {args.last_k} steps")
    print(f"{'lr':>7s} {'bf16 first/last':>15s} {'bf16 vs shuffled':>16s} {'fp8 vs shuffled':>15s} "
          f"{'fp8 vs bf16':>11s} {'fp8(shuf) vs bf16(shuf)':>23s} {'bf16 max jump':>13s}")
    for lr in args.lr:
        curves = {(fp8, shuffle): run(shape, fp8, lr, shuffle, device) for fp8 in (False, True)
                  for shuffle in (False, True)}
        f = {key: final(c, args.last_k) for key, c in curves.items()}

        def gap(a, b, f=f):
            return abs(f[a] - f[b]) / f[b]

        bf16 = curves[(False, False)]
        jump = max(b / a for a, b in zip(bf16, bf16[1:], strict=False))  # largest step-to-step rise
        print(f"{lr:7.0e} {bf16[0] / f[(False, False)]:15.2f} {gap((False, True), (False, False)):16.2%} "
              f"{gap((True, True), (True, False)):15.2%} {gap((True, False), (False, False)):11.2%} "
              f"{gap((True, True), (False, True)):23.2%} {jump:13.2f}")


if __name__ == "__main__":
    main()
