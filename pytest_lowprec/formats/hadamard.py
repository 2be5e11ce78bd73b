"""The random Hadamard transform (RHT) of the NVFP4 training recipe, over blocks of 16.

y = x @ (D H) / 4 per 16-element block, with H the Sylvester Hadamard matrix and
D a diagonal of random signs (TransformerEngine's construction). It is computed
as a fast Walsh-Hadamard butterfly of elementwise adds, so the order of every
float operation is fixed and the CPU and GPU give the same bits. The transform
is orthogonal: `inverse_rht(rht(x, s), s)` recovers x up to rounding.
"""

from __future__ import annotations

import torch

from .minifloat import require_block_multiple

RHT_SIZE = 16


def hadamard_matrix(n: int = RHT_SIZE) -> torch.Tensor:
    """Sylvester construction, entries +-1."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard size must be a power of two, got {n}")
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def random_signs(seed: int, n: int = RHT_SIZE) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randint(0, 2, (n,), generator=gen).float() * 2 - 1


def _butterfly(x: torch.Tensor) -> torch.Tensor:
    """x @ H over the last dimension (length a power of two), by log2(n) add/sub stages."""
    n = x.shape[-1]
    h = 1
    while h < n:
        y = x.unflatten(-1, (n // (2 * h), 2, h))
        a, b = y[..., 0, :], y[..., 1, :]
        x = torch.stack((a + b, a - b), dim=-2).flatten(-3)
        h *= 2
    return x


def rht(x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Blockwise x @ (diag(signs) H) / sqrt(16) over the last dimension, in float32."""
    require_block_multiple(x.shape[-1], RHT_SIZE, "the last dimension of an RHT input")
    blocks = x.float().unflatten(-1, (-1, RHT_SIZE)) * signs.to(x.device)
    return (_butterfly(blocks) * 0.25).flatten(-2)


def inverse_rht(y: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    blocks = y.float().unflatten(-1, (-1, RHT_SIZE))
    return (_butterfly(blocks) * 0.25 * signs.to(y.device)).flatten(-2)
