"""Convolutional encoder q(z0|x) and decoder p(x|z0) of the VAE.

Each entry of `channels` is one resolution level, entered by a stride-2 convolution: with two
levels a 32x32 image maps to an 8x8 latent. No 3x3 convolution runs at full resolution except
the decoder's last, which keeps the networks fast enough for CPU training.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .layers import ResBlock, norm


class Encoder(nn.Module):
    """x [B, C, H, W] in [0, 1] -> (mu, log_sigma) of a diagonal Gaussian over z0."""

    def __init__(self, in_channels: int, latent_channels: int, channels=(32, 64), num_res_blocks: int = 1):
        super().__init__()
        layers, ch = [], in_channels
        for width in channels:
            layers.append(nn.Conv2d(ch, width, 4, stride=2, padding=1))
            layers += [ResBlock(width, width) for _ in range(num_res_blocks)]
            ch = width
        layers += [norm(ch), nn.SiLU(), nn.Conv2d(ch, 2 * latent_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, raw = self.net(2.0 * x - 1.0).chunk(2, dim=1)
        # a soft floor on sigma keeps log q finite and the score-matching weights bounded
        log_sigma = -7.0 + F.softplus(raw + 7.0)
        return mu, log_sigma


class Decoder(nn.Module):
    """z0 -> the parameters of p(x|z0): [B, out_channels, H, W]."""

    def __init__(self, latent_channels: int, out_channels: int, channels=(32, 64), num_res_blocks: int = 1):
        super().__init__()
        layers = [nn.Conv2d(latent_channels, channels[-1], 3, padding=1)]
        for i in reversed(range(len(channels))):
            layers += [ResBlock(channels[i], channels[i]) for _ in range(num_res_blocks)]
            layers += [norm(channels[i]), nn.SiLU(),
                       nn.ConvTranspose2d(channels[i], channels[max(i - 1, 0)], 4, stride=2, padding=1)]
        layers += [norm(channels[0]), nn.SiLU(), nn.Conv2d(channels[0], out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
