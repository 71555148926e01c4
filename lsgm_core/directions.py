"""Principal directions of a sampler's z1 -> z0 map: where moving the starting noise moves the sample most.

z1 ~ N(0, I) is isotropic, so a PCA of z1 itself prefers no direction, and a PCA of z0 gives
directions in z0, which a move of z1 cannot follow. These are the right singular vectors of the
map's least-squares linear fit z0 ~ A z1 + b over seeded draws of z1: the unit directions of z1
whose (linearised, averaged) effect on z0 is largest, each with its gain, the singular value (how
far z0 moves per unit of z1). Only the active latent channels count: inactive ones pass through
the ODE unchanged and the decoder ignores them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .tensors import seeded_generator


@dataclass(frozen=True)
class Directions:
    vectors: torch.Tensor  # [k, *shape], unit norm, zero on inactive channels
    gains: torch.Tensor  # [k], descending: the fit's singular values


def principal_directions(flow: Callable[[torch.Tensor], torch.Tensor], shape, k: int, num: int,
                         active: torch.Tensor | None = None, seed: int = 0, batch_size: int = 512) -> Directions:
    """The top `k` directions of z1 -> flow(z1) from `num` seeded z1 ~ N(0, I) of `shape` (C, H, W);
    `active` [C] marks the channels that count (default all)."""
    shape = tuple(shape)
    mask = torch.ones(shape[0], dtype=torch.bool) if active is None else torch.as_tensor(active).cpu() > 0
    dims = int(mask.sum()) * (int(torch.tensor(shape[1:]).prod()) if len(shape) > 1 else 1)
    if not 1 <= k <= dims:
        raise ValueError(f"k must be from 1 to the {dims} active dimensions, got {k}")
    if num <= k:
        raise ValueError(f"num must exceed k = {k} draws, got {num}")
    z1 = torch.randn((num,) + shape, generator=seeded_generator(seed))
    z0 = torch.cat([flow(chunk).detach().float().cpu() for chunk in z1.split(batch_size)])
    x, y = z1[:, mask].reshape(num, -1), z0[:, mask].reshape(num, -1)
    x, y = x - x.mean(0), y - y.mean(0)
    fit = torch.linalg.lstsq(x.double(), y.double()).solution  # A^T: [dims of z1, dims of z0]
    u, s, _ = torch.linalg.svd(fit, full_matrices=False)  # A^T = V S U^T: its left vectors are A's right ones
    u = u[:, :k]
    u = u * torch.sign(u[u.abs().argmax(0), torch.arange(k)])  # sign fixed (largest entry positive): reproducible
    vectors = torch.zeros((k,) + shape)
    vectors[:, mask] = u.T.float().reshape(k, int(mask.sum()), *shape[1:])
    return Directions(vectors, s[:k].float())
