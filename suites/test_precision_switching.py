"""Adaptive precision: per-token format selection from activation statistics, and a decode loop
that switches between FP8 and 16-bit on the model's confidence (lowprec_workloads.adaptive).

The decode model is built here: a small recurrent language model (embedding, a recurrent
linear, a two-layer MLP, an LM head), greedy decoding from fixed prompts. Its 16-bit run is the
reference; the switching run uses the same weights and prompts, runs its linears in FP8 (E4M3
weights and activations, tensorwise) while the top-2 logit margin is large, and reads the margin
on the host only every few steps. Thresholds come from a separate calibration set: a margin above
twice the largest FP8 logit error seen there cannot flip the argmax; an FP8 step whose own margin
was below that is doubtful, and the next check rolls back to it and recomputes it in 16-bit
(ConfidenceSwitch). Gated: tokens identical to the 16-bit run >= 99%, and a real share of steps
run in FP8. Without the rollback, confidence read from past steps cannot foresee the step where
a confident run ends, and tokens flipped there.
"""

from __future__ import annotations

import math

import pytest
import torch

from lowprec_workloads.adaptive import (
    FP8,
    ActivationStats,
    ConfidenceSwitch,
    EmaScale,
    calibrated_amax,
    outlier_ratio,
    select_per_token,
)
from pytest_lowprec.formats.fp8 import quantize_tensorwise

VOCAB, D, HIDDEN = 512, 256, 1024
PROMPTS, PROMPT_LEN, NEW_TOKENS = 16, 8, 64
CHECK_EVERY = 4


def fp8(x: torch.Tensor) -> torch.Tensor:
    q, inv = quantize_tensorwise(x)
    return q.float() * inv


class TinyLM:
    def __init__(self, device: str, seed: int = 3):
        g = torch.Generator(device=device).manual_seed(seed)

        def w(o, i, gain=1.0):
            return torch.randn(o, i, generator=g, device=device) * gain / math.sqrt(i)

        self.embed = torch.randn(VOCAB, D, generator=g, device=device)
        self.linears = {"rec": w(D, D, 0.9), "up": w(HIDDEN, D), "down": w(D, HIDDEN), "head": w(VOCAB, D, 4.0)}
        # Like a language model's, most tokens (90%) have a likely successor (a bigram bonus, in
        # 16-bit as an embedding lookup is) and the rest do not: runs of confident steps, some unsure ones.
        self.successor = torch.randperm(VOCAB, generator=g, device=device)
        self.bonus = 12.0 * (torch.rand(VOCAB, generator=g, device=device) < 0.9).float()

    def step(self, token: torch.Tensor, state: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        def lin(name, x):
            weight = self.linears[name]
            if mode == FP8:
                return fp8(x) @ fp8(weight).t()
            return (x.bfloat16() @ weight.bfloat16().t()).float()

        state = torch.tanh(lin("rec", state) + self.embed[token])
        hidden = state + lin("down", torch.relu(lin("up", state)))
        logits = lin("head", hidden)
        logits[torch.arange(token.shape[0], device=token.device), self.successor[token]] += self.bonus[token]
        return logits, state

    def generate(self, prompts: torch.Tensor, switch: ConfidenceSwitch | None = None) -> torch.Tensor:
        state = torch.zeros(prompts.shape[0], D, device=prompts.device)
        mode = "bf16"
        for t in range(prompts.shape[1]):  # the prompt is read in 16-bit
            logits, state = self.step(prompts[:, t], state, "bf16")
        # history[i]: the logits and state before generated token i, kept to roll back to
        history = [(logits, state)]
        out: list[torch.Tensor] = []
        while len(out) < NEW_TOKENS:
            token = logits.argmax(-1)
            out.append(token)
            logits, state = self.step(token, state, mode)
            history.append((logits, state))
            if switch is not None:
                mode, back = switch.observe(logits)
                if back is not None:  # the step that produced token back+1 was doubtful
                    del out[back + 1:], history[back + 1:]
                    logits, state = self.step(out[back], history[back][1], "bf16")
                    history.append((logits, state))
        return torch.stack(out, dim=1)

    def largest_fp8_error(self, prompts: torch.Tensor) -> float:
        """max |FP8 logits - 16-bit logits| along 16-bit generations of the calibration prompts."""
        state = torch.zeros(prompts.shape[0], D, device=prompts.device)
        worst = 0.0
        logits = None
        for t in range(prompts.shape[1] + NEW_TOKENS):
            token = prompts[:, t] if t < prompts.shape[1] else logits.argmax(-1)
            low, _ = self.step(token, state, FP8)
            logits, state = self.step(token, state, "bf16")
            worst = max(worst, float((low - logits).abs().max()))
        return worst


def prompts(device: str, seed: int) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randint(0, VOCAB, (PROMPTS, PROMPT_LEN), generator=g, device=device)


@pytest.mark.slow  # a CPU training of minutes: CI runs it with --slow; a GPU run always
@pytest.mark.lowprec(precision="fp8")
def test_confidence_switching_keeps_the_16bit_tokens(lowprec):
    model = TinyLM(lowprec.device)
    delta = model.largest_fp8_error(prompts(lowprec.device, seed=100))  # calibration set, not the test's
    lowprec.signature(vocab=VOCAB, d=D, prompts=PROMPTS, new_tokens=NEW_TOKENS, check_every=CHECK_EVERY)
    test_prompts = prompts(lowprec.device, seed=7)
    # Sequence by sequence, as the switching run goes: a batch of 16 may round differently in bf16.
    reference = torch.cat([model.generate(test_prompts[i:i + 1]) for i in range(PROMPTS)])
    # One switch per sequence: a batch-wide switch waits for its least confident sequence.
    switches = [ConfidenceSwitch(upper=3 * delta, lower=2 * delta, check_every=CHECK_EVERY)
                for _ in range(PROMPTS)]
    switched = torch.cat([model.generate(test_prompts[i:i + 1], sw) for i, sw in enumerate(switches)])
    always_fp8 = torch.cat([model.generate(test_prompts[i:i + 1], ConfidenceSwitch(-1.0, -2.0, check_every=1))
                            for i in range(PROMPTS)])
    fp8_steps = sum(sw.steps_in[FP8] for sw in switches)
    all_steps = sum(sum(sw.steps_in.values()) for sw in switches)
    transitions = [(i, *t) for i, sw in enumerate(switches) for t in sw.transitions]
    lowprec.accuracy("token_agreement", float((switched == reference).double().mean()), min=0.99)
    lowprec.info("token_agreement_always_fp8", float((always_fp8 == reference).double().mean()))
    lowprec.accuracy("fp8_step_share", fp8_steps / all_steps, min=0.1)
    lowprec.info("rollbacks", sum(len(sw.rollbacks) for sw in switches))
    lowprec.info("transitions", len(transitions))
    lowprec.info("largest_fp8_logit_error", delta)
    for seq, step, before, after, ema in transitions[:12]:  # the trace (pytest -s shows it)
        print(f"sequence {seq:2d} step {step:3d}: {before} -> {after} (margin EMA {ema:.2f})")


def test_per_token_selection_keeps_outlier_tokens_in_16bit():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 4096, generator=g)
    x[5, 17] = 60.0  # one outlier token
    x[9, :8] = 12.0  # a token with a few large channels
    chosen = select_per_token(x)
    assert chosen[5] == "bf16" and chosen[9] == "bf16"
    assert all(c == "nvfp4" for i, c in enumerate(chosen) if i not in (5, 9))  # Gaussian rows: ratio ~1.2


def test_per_tensor_statistics_match_their_definitions():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 1024, generator=g, dtype=torch.float64)
    stats = ActivationStats.of(x)
    assert float(stats.absmax) == pytest.approx(float(x.abs().max()))
    assert float(stats.std) == pytest.approx(float(x.std()))
    assert float(stats.p99) == pytest.approx(float(x.abs().flatten().kthvalue(round(0.99 * x.numel())).values))
    expected = float(x.abs().max() / (x.mean().abs() + 3 * x.std()))
    assert float(stats.outlier_ratio) == pytest.approx(expected)
    assert float(outlier_ratio(x)) == pytest.approx(expected)


def test_percentile_calibration_clips_outliers_that_absmax_keeps():
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(3))
    x[0] = 500.0
    assert calibrated_amax(x, "absmax") == 500.0
    assert calibrated_amax(x, "percentile", 99.9) < 5.0
    with pytest.raises(ValueError, match="'absmax' or 'percentile'"):
        calibrated_amax(x, "mse")


def test_ema_scale_follows_a_rise_at_once_and_a_fall_slowly():
    ema = EmaScale(decay=0.9)
    assert ema.update(1.0) == 1.0
    assert ema.update(4.0) == 4.0  # a new maximum must never overflow the scale
    assert ema.update(0.0) == pytest.approx(3.6)


def test_a_switch_without_hysteresis_is_refused():
    with pytest.raises(ValueError, match="upper > lower"):
        ConfidenceSwitch(upper=1.0, lower=1.0)
