"""Time-conditioned U-Net: the score network, at latent or at pixel resolution."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .layers import ResBlock, SelfAttention, norm, timestep_embedding


class UNet(nn.Module):
    """eps_theta(x_t, t) for x_t of shape [B, in_channels, R, R], R divisible by 2^(len(ch_mult)-1).

    ch_mult gives the width of each resolution level as a multiple of `channels`;
    attention runs at the lowest resolution when `attention` is set. With `target_time` it takes a
    second time s (a distilled student's step from t to s, lsgm_core.student) whose embedding adds to
    t's; that embedding starts at zero, so the network starts as the one without it.
    """

    def __init__(self, in_channels: int, channels: int = 64, ch_mult=(1, 2), num_res_blocks: int = 2,
                 attention: bool = True, dropout: float = 0.0, target_time: bool = False):
        super().__init__()
        self.in_channels = in_channels
        self.levels = len(ch_mult)
        temb_dim = 4 * channels
        self.temb_ch = channels
        self.temb = nn.Sequential(nn.Linear(channels, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.target_temb = None
        if target_time:
            self.target_temb = nn.Sequential(nn.Linear(channels, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
            nn.init.zeros_(self.target_temb[-1].weight)
            nn.init.zeros_(self.target_temb[-1].bias)
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)

        self.down = nn.ModuleList()
        skips, ch = [channels], channels
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.down.append(ResBlock(ch, channels * mult, temb_dim, dropout))
                ch = channels * mult
                skips.append(ch)
            if level < self.levels - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)

        self.mid = nn.ModuleList([ResBlock(ch, ch, temb_dim, dropout)]
                                 + ([SelfAttention(ch)] if attention else [])
                                 + [ResBlock(ch, ch, temb_dim, dropout)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(ResBlock(ch + skips.pop(), channels * mult, temb_dim, dropout))
                ch = channels * mult
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
                self.up.append(nn.Conv2d(ch, ch, 3, padding=1))

        self.norm_out = norm(ch)
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)
        # zero output at initialisation: the mixed score then starts exactly at the N(0, I) prior's
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[-1] % (2 ** (self.levels - 1)):
            raise ValueError(f"U-Net with {self.levels} levels needs a size divisible by "
                             f"{2 ** (self.levels - 1)}, got {tuple(x.shape[-2:])}")
        if (s is None) != (self.target_temb is None):
            raise ValueError("this U-Net takes a target time s" if s is None else "this U-Net takes no target time")
        temb = self.temb(timestep_embedding(t.expand(x.shape[0]), self.temb_ch))
        if s is not None:
            temb = temb + self.target_temb(timestep_embedding(s.expand(x.shape[0]), self.temb_ch))
        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, temb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, temb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), temb)
            else:
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))
