"""Decoder likelihoods p(x|z0): Bernoulli for binary images, discretised logistic for 8-bit ones."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class Bernoulli:
    name = "bernoulli"
    params_per_channel = 1

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-element log p(x | logits) for x in {0, 1}."""
        return -F.binary_cross_entropy_with_logits(params, x, reduction="none")

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)

    def sample(self, params: torch.Tensor, generator=None) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(params), generator=generator)

    def cross_entropy(self, params: torch.Tensor, target: torch.Tensor, generator=None) -> torch.Tensor:
        """Per-element E_{x ~ p(.|target)}[-log p(x | params)], exact: the KL from the target's
        distribution to this one up to the target's entropy."""
        return -self.log_prob(params, self.mean(target))


class DiscretizedLogistic:
    """256-bin logistic per channel on x in [0, 1] (pixel values k/255), as in PixelCNN++."""

    name = "logistic"
    params_per_channel = 2
    bins = 256

    def _split(self, params):
        mean, log_scale = params.chunk(2, dim=1)
        return torch.tanh(mean), log_scale.clamp(min=-7.0)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mean, log_scale = self._split(params)
        x = 2.0 * x - 1.0  # bins of width 2/255 on [-1, 1]
        half = 1.0 / (self.bins - 1)
        inv_s = torch.exp(-log_scale)
        plus, minus = inv_s * (x - mean + half), inv_s * (x - mean - half)
        log_cdf_plus = plus - F.softplus(plus)            # log sigmoid(plus)
        log_one_minus_cdf_min = -F.softplus(minus)          # log (1 - sigmoid(minus))
        cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
        mid = inv_s * (x - mean)
        # where the bin mass underflows, use the density at the bin centre times the bin width
        log_pdf_mid = mid - log_scale - 2.0 * F.softplus(mid) + math.log(2.0 * half)
        inner = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid)
        return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, inner))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return (self._split(params)[0] + 1.0) / 2.0

    def cross_entropy(self, params: torch.Tensor, target: torch.Tensor, generator=None) -> torch.Tensor:
        """Per-element E_{x ~ p(.|target)}[-log p(x | params)], estimated from one draw of x."""
        return -self.log_prob(params, self.sample(target.detach(), generator))

    def sample(self, params: torch.Tensor, generator=None) -> torch.Tensor:
        mean, log_scale = self._split(params)
        u = torch.rand(mean.shape, generator=generator, device=mean.device).clamp(1e-5, 1 - 1e-5)
        x = mean + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))
        return ((x.clamp(-1, 1) + 1.0) / 2.0 * 255.0).round() / 255.0


LIKELIHOODS = {"bernoulli": Bernoulli, "logistic": DiscretizedLogistic}


def make_likelihood(name: str):
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown decoder likelihood {name!r}; choose one of {', '.join(LIKELIHOODS)}")
    return LIKELIHOODS[name]()
