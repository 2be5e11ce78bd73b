"""Accuracy metrics of a low-precision result against a higher-precision reference, computed in float64."""

from __future__ import annotations

import math

import torch


def _pair(reference: torch.Tensor, result: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if reference.shape != result.shape:
        raise ValueError(f"reference shape {tuple(reference.shape)} != result shape {tuple(result.shape)}")
    return reference.detach().double(), result.detach().to(reference.device).double()


def sqnr_db(reference: torch.Tensor, result: torch.Tensor) -> float:
    """20*log10(||ref|| / ||ref - result||): inf for an exact result, NaN if the result has NaN."""
    ref, res = _pair(reference, result)
    noise = torch.linalg.vector_norm(ref - res).item()
    signal = torch.linalg.vector_norm(ref).item()
    if math.isnan(noise):
        return math.nan
    if noise == 0.0:
        return math.inf
    return 20.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def rel_l2(reference: torch.Tensor, result: torch.Tensor) -> float:
    """||ref - result|| / ||ref||."""
    ref, res = _pair(reference, result)
    signal = torch.linalg.vector_norm(ref).item()
    noise = torch.linalg.vector_norm(ref - res).item()
    return noise / signal if signal > 0 else (0.0 if noise == 0 else math.inf)


def cosine(reference: torch.Tensor, result: torch.Tensor) -> float:
    ref, res = _pair(reference, result)
    return torch.nn.functional.cosine_similarity(ref.flatten(), res.flatten(), dim=0, eps=1e-300).item()


def max_abs(reference: torch.Tensor, result: torch.Tensor) -> float:
    ref, res = _pair(reference, result)
    return (ref - res).abs().max().item()
