"""Small tensor helpers that several modules share, each written once."""
from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2.0 * math.pi)


def seeded_generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded with `seed` (None: a fresh, non-deterministic seed). Draws come from
    the CPU so that a seed gives the same numbers whatever device the work then runs on."""
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


def crop(x: torch.Tensor, c: int | None) -> torch.Tensor:
    """x without `c` pixels of padding on each side of its last two dimensions."""
    return x[..., c:x.shape[-2] - c, c:x.shape[-1] - c] if c else x


def kl_standard_normal(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) per element, in nats."""
    return 0.5 * (mu.pow(2) + (2 * log_sigma).exp() - 1.0) - log_sigma


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] values shaped [B, 1, ..., 1] to broadcast over a batch `like` [B, ...]."""
    return values.view((-1,) + (1,) * (like.dim() - 1))


def per_channel(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[C] values shaped [1, C, 1, ..., 1] to broadcast over a batch `like` [B, C, ...]."""
    return values.view((1, -1) + (1,) * (like.dim() - 2))
