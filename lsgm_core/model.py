"""LSGM: a VAE whose prior over the latent z0 is a score-based model, and its training losses.

The pixel-space SGM baseline shares the interface (`PixelSGM`): the same prior class over the
image itself, with identity "encoder" and "decoder".
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .decoder_likelihoods import make_likelihood
from .nets import Decoder, Encoder
from .prior import ScorePrior, noise_like
from .student import Student
from .tensors import LOG_2PI, crop, kl_standard_normal


class LSGM(nn.Module):
    """VAE encoder q(z0|x), decoder p(x|z0) and ScorePrior p(z0), built from a resolved config."""

    kind = "lsgm"

    def __init__(self, config: dict):
        super().__init__()
        m = config["model"]
        self.config = config
        self.likelihood = make_likelihood(m["likelihood"])
        self.in_channels, self.image_size, self.crop = m["in_channels"], m["image_size"], m["crop"]
        z, res = m["latent_channels"], m["image_size"] // 2 ** len(m["vae_channels"])
        self.encoder = Encoder(self.in_channels, z, m["vae_channels"], m["vae_res_blocks"])
        self.decoder = Decoder(z, self.in_channels * self.likelihood.params_per_channel,
                               m["vae_channels"], m["vae_res_blocks"])
        self.prior = ScorePrior((z, res, res), **m["prior"])
        self.student = build_student(config, self.prior)
        self.objective = config["objective"]

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.prior.shape

    def vae_parameters(self):
        return list(self.encoder.parameters()) + list(self.decoder.parameters())

    # encoding and decoding -------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, C, H, W] in [0, 1] -> (mu, log_sigma) of q(z0|x)."""
        return self.encoder(x)

    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        """z0 -> parameters of p(x|z0)."""
        return self.decoder(z0)

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        return crop(x, self.crop)

    def decode_images(self, z0: torch.Tensor, decoder: nn.Module | None = None) -> torch.Tensor:
        """z0 -> mean images in [0, 1], cropped to the data's own size, through `decoder` in place of
        the model's where given (a student's distilled decoder, lsgm_core.student)."""
        return self._crop(self.likelihood.mean((decoder or self.decoder)(z0))).clamp(0, 1)

    def recon_nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x|z0) per sample, in nats, over the uncropped pixels."""
        return -self._crop(self.likelihood.log_prob(params, x)).flatten(1).sum(1)

    # the NELBO ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, stage: int, kl_coeff: float = 1.0) -> dict:
        return self.losses(x, stage, kl_coeff)

    def losses(self, x: torch.Tensor, stage: int, kl_coeff: float = 1.0) -> dict:
        """Training losses for a batch, per-sample means. `loss` is what to back-propagate.

        stage 1: NELBO with a N(0, I) prior (analytic KL).
        stage 2: KL = log q(z0|x) + CE(q || p_SGM), the CE by denoising score matching.
        With an objective for the prior that differs from the encoder's, the encoder's CE sees the
        prior with detached parameters and the prior learns from its own term on a detached z0.
        stage "prior": `x` holds the encoder's output instead of images, mu and log_sigma of q(z0|x)
        concatenated along channels (a `LatentCache` batch); the loss is the prior's own term alone,
        for a z0 drawn as stage 2 draws it.
        """
        if stage == "prior":
            mu, log_sigma = x.chunk(2, dim=1)
            prior_loss = self.prior_loss(mu + log_sigma.exp() * noise_like(mu))
            return {"loss": prior_loss.mean(), "prior_loss": prior_loss.mean()}
        mu, log_sigma = self.encode(x)
        z0 = mu + log_sigma.exp() * noise_like(mu)
        recon = self.recon_nll(self.decode(z0), x)
        out = {}
        if stage == 1:
            kl_per = kl_standard_normal(mu, log_sigma)
            out["kl_per_channel"] = kl_per.detach().sum((2, 3)).mean(0)
            kl = kl_per.flatten(1).sum(1)
            loss = recon + kl_coeff * kl
        elif stage == 2:
            o = self.objective
            shared = o["prior_weighting"] == "likelihood" and o["prior_sampler"] == o["vae_sampler"]
            neg_entropy = -log_sigma.flatten(1).sum(1) - 0.5 * z0[0].numel() * (1.0 + LOG_2PI)
            ce = self.prior.cross_entropy(mu, log_sigma, z0, o["vae_sampler"], detach_params=not shared)
            kl = neg_entropy + ce
            loss = recon + kl_coeff * kl
            if not shared:
                prior_loss = self.prior_loss(z0.detach())
                out["prior_loss"] = prior_loss.mean()
                loss = loss + prior_loss
            out["ce"] = ce.mean()
        else:
            raise ValueError(f"stage must be 1 or 2, got {stage!r}")
        out.update(loss=loss.mean(), nelbo=(recon + kl).mean(), recon=recon.mean(), kl=kl.mean())
        return out

    def prior_loss(self, z0: torch.Tensor) -> torch.Tensor:
        """Per-sample loss of the prior with its own objective (weighting and time sampler) at z0."""
        o = self.objective
        return self.prior.score_matching_terms(z0, o["prior_sampler"], o["prior_weighting"])


class PixelSGM(nn.Module):
    """The pixel-space baseline: the same ScorePrior trained on images scaled to [-1, 1]."""

    kind = "pixel"

    def __init__(self, config: dict):
        super().__init__()
        m = config["model"]
        self.config = config
        self.in_channels, self.image_size, self.crop = m["in_channels"], m["image_size"], m["crop"]
        prior_cfg = dict(m["prior"], mixed=False)
        self.prior = ScorePrior((self.in_channels, self.image_size, self.image_size), **prior_cfg)
        self.student = build_student(config, self.prior)
        self.objective = config["objective"]

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.prior.shape

    def vae_parameters(self):
        return []

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return 2.0 * x - 1.0, torch.full_like(x, -math.inf)

    def decode_images(self, z0: torch.Tensor, decoder: nn.Module | None = None) -> torch.Tensor:
        return crop((z0 + 1.0) / 2.0, self.crop).clamp(0, 1)

    def forward(self, x: torch.Tensor, stage: int = 2, kl_coeff: float = 1.0) -> dict:
        return self.losses(x, stage, kl_coeff)

    def losses(self, x: torch.Tensor, stage: int = 2, kl_coeff: float = 1.0) -> dict:
        o = self.objective
        terms = self.prior.score_matching_terms(2.0 * x - 1.0, o["prior_sampler"], o["prior_weighting"])
        return {"loss": terms.mean()}


def build_student(config: dict, prior) -> Student | None:
    """The distilled sampler of a checkpoint that has one (config["student"], lsgm_core.distill)."""
    return Student.from_config(config["student"], prior) if config.get("student") else None


MODELS = {"lsgm": LSGM, "pixel": PixelSGM}


def build_model(config: dict) -> nn.Module:
    kind = config["model"]["kind"]
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(MODELS)}")
    return MODELS[kind](config)
