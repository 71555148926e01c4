"""The score-based prior: a U-Net noise predictor combined with N(0, I) through the mixed score."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call

from .nets import UNet
from .sde import make_sde
from .tensors import LOG_2PI, per_channel, per_sample


def noise_like(x: torch.Tensor) -> torch.Tensor:
    """N(0, I) noise of x's shape, drawn in row-major order whatever x's memory layout: randn_like
    follows a channels-last layout, so the same seed would give other draws per element."""
    return torch.randn(x.shape, dtype=x.dtype, device=x.device)


class ScorePrior(nn.Module):
    """An SGM over tensors of shape [C, R, R].

    With `mixed`, eps_hat(z_t, t) = (1 - alpha) sigma_t z_t + alpha eps_theta(z_t, t) with one
    learnable alpha = sigmoid(logit) per channel: at alpha = 0 the prior is exactly N(0, I).
    eps_theta is parameterised as sigma_t z_t plus the U-Net's output.
    Channels marked inactive keep alpha = 0 whatever the logits or an override say.
    """

    def __init__(self, shape, sde: dict, net: dict, mixed: bool = True, mixing_logit_init: float = -6.0):
        super().__init__()
        self.shape = tuple(shape)
        self.sde = make_sde(sde)
        self.net = UNet(self.shape[0], **net)
        self.mixed = mixed
        if mixed:
            self.mixing_logit = nn.Parameter(torch.full((self.shape[0],), float(mixing_logit_init)))
            self.register_buffer("active", torch.ones(self.shape[0]))

    def alpha(self, override: float | torch.Tensor | None = None) -> torch.Tensor:
        """Per-channel mixing coefficients [C]: learned, or `override` (a number or a [C] tensor)."""
        if not self.mixed:
            return torch.ones(self.shape[0], device=next(self.net.parameters()).device)
        a = torch.sigmoid(self.mixing_logit) if override is None else torch.as_tensor(
            override, dtype=self.mixing_logit.dtype, device=self.mixing_logit.device).expand(self.shape[0])
        return a * self.active

    def eps(self, zt: torch.Tensor, t: torch.Tensor, alpha: float | torch.Tensor | None = None,
            detach_params: bool = False) -> torch.Tensor:
        """Predicted noise eps_hat(z_t, t); t has shape [B] or is a scalar.

        detach_params evaluates the network with its parameters cut from the graph, so that a
        loss can send gradients to z_t (the encoder) without touching the prior.
        """
        t = torch.as_tensor(t, dtype=zt.dtype, device=zt.device).expand(zt.shape[0])
        if detach_params:
            params = {k: v.detach() for k, v in self.named_parameters()}
            params.update(dict(self.named_buffers()))
            return functional_call(self, params, (zt, t), {"alpha": alpha})
        a = self.alpha(alpha)
        if not self.mixed:
            return self.net(zt, t)
        sigma = per_sample(self.sde.sigma(t), zt)
        gaussian = sigma * zt
        if not bool((a > 0).any()):
            return gaussian  # pure N(0, I): no network evaluation needed
        # eps_theta = sigma_t z_t + net(z_t, t): the U-Net learns the residual from the Gaussian's
        # noise prediction, so a zero-initialised net is exactly N(0, I) at any alpha, and
        # (1 - alpha) sigma z + alpha eps_theta reduces to sigma z + alpha net
        return gaussian + per_channel(a, zt) * self.net(zt, t)

    def forward(self, zt, t, alpha=None):
        return self.eps(zt, t, alpha)

    def score(self, zt, t, alpha=None) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=zt.dtype, device=zt.device).expand(zt.shape[0])
        return -self.eps(zt, t, alpha) / per_sample(self.sde.sigma(t), zt)

    def score_matching_terms(self, z0: torch.Tensor, sampler: str, weighting: str,
                             detach_params: bool = False) -> torch.Tensor:
        """Per-sample w(t) ||eps - eps_hat||^2 / r(t), for one t and eps drawn per sample.

        With weighting="likelihood", its mean over t plus `ce_constant` estimates the
        cross-entropy CE(q(z0) || p(z0)) in nats over the active channels (the plain estimator of
        the paper's Theorem 1; training uses the lower-variance `cross_entropy`). Inactive channels
        carry no learning signal and are left out.
        """
        t, inv_density = self.sde.sample_time(z0.shape[0], sampler, device=z0.device)
        eps = noise_like(z0)
        zt = self.sde.perturb(z0, t, eps)
        eps_hat = self.eps(zt, t, detach_params=detach_params)
        sq = ((eps - eps_hat).float().pow(2) * self._active_mask()).flatten(1).sum(1)
        weights = {"likelihood": lambda: 0.5 * self.sde.ll_weight(t),
                   "reweighted": lambda: 0.5 * self.sde.g2(t),
                   "unweighted": lambda: torch.ones_like(t)}
        if weighting not in weights:
            raise ValueError(f"unknown prior weighting {weighting!r}; choose one of {', '.join(weights)}")
        return weights[weighting]() * inv_density * sq

    def _active_mask(self) -> torch.Tensor | float:
        return self.active.view(1, -1, 1, 1) if self.mixed else 1.0

    def cross_entropy(self, mu: torch.Tensor, log_sigma: torch.Tensor, z0: torch.Tensor, sampler: str,
                      detach_params: bool = False) -> torch.Tensor:
        """Per-sample CE(q(z0|x) || p(z0)) in nats, for q = N(mu, sigma^2) and z0 drawn from it.

        The closed-form CE to N(0, I), plus a denoising score-matching estimate of how the SGM
        prior differs from N(0, I): w(t) (||eps - eps_hat||^2 - ||eps - sigma_t z_t||^2) / r(t).
        The Gaussian term is a control variate with the same t and eps: the estimate is unbiased
        (both terms' expectations are known) and exact where alpha = 0, without the chi-square
        noise of ||eps||^2 that otherwise dominates the estimate's variance.
        """
        t, inv_density = self.sde.sample_time(z0.shape[0], sampler, device=z0.device)
        eps = noise_like(z0)
        zt = self.sde.perturb(z0, t, eps)
        gaussian = per_sample(self.sde.sigma(t), zt) * zt
        eps_hat = self.eps(zt, t, detach_params=detach_params)
        diff = ((eps - eps_hat).float().pow(2) - (eps - gaussian).float().pow(2)) * self._active_mask()
        closed_form = 0.5 * (LOG_2PI + mu.float().pow(2) + (2 * log_sigma.float()).exp())
        return closed_form.flatten(1).sum(1) + 0.5 * self.sde.ll_weight(t) * inv_density * diff.flatten(1).sum(1)

    def ce_constant(self) -> float:
        """D/2 (1 + log(2 pi sigma^2(t_eps))) over the D active dimensions: the part of the
        cross-entropy that does not depend on t."""
        d = math.prod(self.shape[1:]) * (int(self.active.sum().item()) if self.mixed else self.shape[0])
        v = self.sde.var(torch.tensor(self.sde.t_eps, dtype=torch.float64)).item()
        return 0.5 * d * (1.0 + math.log(2.0 * math.pi * v))
