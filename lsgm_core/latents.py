"""The latent cache: a training set encoded once by a frozen encoder, for training the prior alone.

With the VAE frozen, q(z0|x) of each image never changes, so the prior's training stage
(`train.stage = "prior"`) encodes the training set once, keeps the means and log-sigmas of
q(z0|x), and draws a fresh z0 = mu + sigma * eps from them at every step, exactly as end-to-end
training draws it from the encoder. A step then costs the prior's forward and backward pass alone.
Binary data sets are binarised dynamically (a fresh Bernoulli draw at every read), so one encoding
fixes one binarisation per image; `encodings` K keeps K of them (K x the memory), each drawn afresh.
"""
from __future__ import annotations

import sys

import torch
from tqdm import tqdm

from .tensors import seeded_generator


class LatentCache:
    """mu and log_sigma of q(z0|x) [N, C, R, R] for N = encodings x images of a data set."""

    def __init__(self, mu: torch.Tensor, log_sigma: torch.Tensor):
        if mu.shape != log_sigma.shape:
            raise ValueError(f"mu and log_sigma differ in shape: {list(mu.shape)} and {list(log_sigma.shape)}")
        self.mu, self.log_sigma = mu, log_sigma

    def __len__(self) -> int:
        return len(self.mu)

    @classmethod
    def encode(cls, model, dataset, encodings: int = 1, seed: int = 0, batch_size: int = 500,
               progress: bool = False) -> "LatentCache":
        """Encode every image of `dataset` `encodings` times (each with its own binarisation, seeded)."""
        if encodings < 1:
            raise ValueError(f"the number of encodings must be at least 1, got {encodings}")
        device = next(model.parameters()).device
        gen = seeded_generator(seed)
        was_training = model.training
        model.eval()
        mus, log_sigmas = [], []
        chunks = [c for _ in range(encodings) for c in torch.arange(len(dataset)).split(batch_size)]
        with torch.no_grad():
            for chunk in tqdm(chunks, desc="encoding the training set", unit="batch", file=sys.stderr,
                              disable=not progress, dynamic_ncols=True):
                x, _ = dataset.batch(chunk, generator=gen)
                mu, log_sigma = model.encode(x.to(device))
                mus.append(mu.float().contiguous())
                log_sigmas.append(log_sigma.float().contiguous())
        model.train(was_training)
        return cls(torch.cat(mus), torch.cat(log_sigmas))

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        """mu and log_sigma of entries `idx`, concatenated along channels: [B, 2C, R, R], what
        `LSGM.losses(..., stage="prior")` takes."""
        return torch.cat([self.mu[idx], self.log_sigma[idx]], dim=1)
