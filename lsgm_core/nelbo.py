"""Likelihoods: log p(z0) of the prior through the probability-flow ODE, and the model's NELBO.

Along the ODE dz/dt = f(z, t) the log-density changes as d log p_t(z(t))/dt = -div f, so with the
latent z0 placed at t = ODE_EPS (see solvers.py for that choice) and integrated up to t = 1,

    log p(z0) = log N(z1; 0, I) + int_{ODE_EPS}^{1} div f(z(t), t) dt,

the divergence estimated by Hutchinson's trace estimator e^T (df/dz) e with probes e fixed for
the whole solve (unbiased for Rademacher and Gaussian e; exact for Rademacher whenever df/dz is
diagonal). Derivation: docs/method.md, section 6.
"""
from __future__ import annotations

import math

import torch

from .solvers import ODE_EPS, ProbabilityFlow, integrate
from .tensors import LOG_2PI, seeded_generator

PROBES = ("rademacher", "gaussian")


def _probes(kind: str, num: int, shape, generator: torch.Generator) -> torch.Tensor:
    if kind == "rademacher":
        return torch.randint(0, 2, (num,) + tuple(shape), generator=generator).float() * 2.0 - 1.0
    if kind == "gaussian":
        return torch.randn((num,) + tuple(shape), generator=generator)
    raise ValueError(f"unknown probe kind {kind!r}; choose one of {', '.join(PROBES)}")


def log_prob_ode(prior, z0: torch.Tensor, *, atol: float = 1e-5, rtol: float = 1e-5, probes: str = "rademacher",
                 num_probes: int = 1, alpha=None, seed: int | None = 0) -> tuple[torch.Tensor, int]:
    """Per-sample log p(z0) in nats (float64) under the prior, and the number of network evaluations.

    Each evaluation is one forward pass and num_probes backward passes of the network, over the
    whole batch in one solve. The estimate averages num_probes probe vectors drawn from a local
    generator seeded with `seed`.
    """
    if atol <= 0 or rtol <= 0:
        raise ValueError(f"atol and rtol must be positive, got atol={atol}, rtol={rtol}")
    if num_probes < 1:
        raise ValueError(f"num_probes must be at least 1, got {num_probes}")
    generator = seeded_generator(seed)
    e = _probes(probes, num_probes, z0.shape, generator).to(z0)
    field = ProbabilityFlow(prior, alpha)

    def augmented(t, state):
        z = state[0].detach().requires_grad_(True)
        with torch.enable_grad():
            f = field.drift(t, z)
            div = sum((torch.autograd.grad(f, z, e[k], retain_graph=k < num_probes - 1)[0] * e[k]).flatten(1).sum(1)
                      for k in range(num_probes))
        return f.detach(), div.detach() / num_probes

    state = (z0.detach().float(), torch.zeros(z0.shape[0], dtype=torch.float32, device=z0.device))
    z1, delta = (s[-1] for s in integrate(augmented, state, [ODE_EPS, 1.0], atol=atol, rtol=rtol))
    z1 = z1.double().flatten(1)
    log_n = -0.5 * z1.pow(2).sum(1) - 0.5 * z1.shape[1] * LOG_2PI
    return log_n + delta.double(), field.nfe


def bits_per_dim(nats, num_dims: int):
    """Nats per example -> bits per dimension."""
    return nats / (num_dims * math.log(2.0))


def data_dims(model) -> int:
    """Dimensions the likelihood is over: the data's own pixels (padding cropped)."""
    c, r = model.in_channels, model.image_size - 2 * model.crop
    return c * r * r


def dequantized(x: torch.Tensor, levels: int, generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """Uniform dequantisation of images x in [0, 1] with `levels` values per pixel (2: binary, 256:
    8-bit): y = 2 (k + u) / levels - 1 in [-1, 1) for pixel value k and u ~ U[0, 1), seeded, and the
    log-volume of one image's bin in y-space, D log(2 / levels).

    Whatever density p a model puts on y, P(x) = int_bin p(y) dy >= exp(E_u log p(y) + that volume)
    (Jensen), so -log p(y) - D log(2 / levels) bounds -log P(x) of the discrete image from above."""
    if levels < 2:
        raise ValueError(f"dequantisation needs at least 2 levels per pixel, got {levels}")
    k = (x * (levels - 1)).round()
    u = torch.rand(x.shape, generator=generator).to(x)
    return 2.0 * (k + u) / levels - 1.0, x[0].numel() * math.log(2.0 / levels)


def nelbo(model, x: torch.Tensor, *, atol: float = 1e-5, rtol: float = 1e-5, iw_samples: int = 1,
          probes: str = "rademacher", seed: int | None = 0, dequantize: int | None = None) -> dict:
    """Per-sample NELBO of images x [B, C, H, W] in [0, 1], in nats, with the ODE prior likelihood.

    LSGM: nelbo = recon + kl with recon = -log p(x|z0), kl = log q(z0|x) - log p_ODE(z0), one
    z0 ~ q(z0|x) per image; with iw_samples K > 1, nelbo is the importance-weighted bound
    -log mean_k p(x, z0_k) / q(z0_k|x) and recon, kl are averages over the K draws (so they no
    longer add up to nelbo). Returns float64 tensors [B] under "nelbo", "recon", "kl", and the
    network evaluations under "nfe".

    Pixel baseline: there is no encoder, so nelbo = kl = -log p_ODE(2x - 1) and recon = 0: the
    density of x as continuous pixels in [-1, 1] space, not dequantised; for binary or 8-bit data
    it is not a likelihood of the discrete images and does not compare with an LSGM's NELBO. With
    `dequantize` = the number of levels per pixel (2 for binary data), kl = -log p_ODE(y) of the
    uniformly dequantised y (`dequantized`), recon = -D log(2 / levels) and nelbo = recon + kl, an
    upper bound on -log P(x) of the discrete images, as an LSGM's NELBO is.
    """
    if iw_samples < 1:
        raise ValueError(f"iw_samples must be at least 1, got {iw_samples}")
    device = next(model.parameters()).device
    x = x.to(device)
    if model.kind == "pixel":
        if iw_samples != 1:
            raise ValueError("the pixel baseline has no encoder: importance weighting (iw_samples > 1) does not apply")
        y, log_volume = 2.0 * x - 1.0, 0.0
        if dequantize is not None:  # u and the probes from one stream, so that they are independent draws
            generator = seeded_generator(seed)
            y, log_volume = dequantized(x, dequantize, generator)
            seed = int(torch.randint(2 ** 62, (1,), generator=generator))
        logp, nfe = log_prob_ode(model.prior, y, atol=atol, rtol=rtol, probes=probes, seed=seed)
        return {"nelbo": -logp - log_volume, "recon": torch.full_like(logp, -log_volume), "kl": -logp, "nfe": nfe}
    if dequantize is not None:
        raise ValueError("dequantisation applies to the pixel baseline: an LSGM's decoder already gives the discrete "
                         "images' likelihood")
    generator = seeded_generator(seed)
    b, k = x.shape[0], iw_samples
    with torch.no_grad():
        mu, log_sigma = model.encode(x)
        noise = torch.randn((k,) + tuple(mu.shape), generator=generator).to(mu)
        z0 = (mu + log_sigma.exp() * noise).flatten(0, 1)  # [K * B, ...], draw-major
        x_k = x.expand((k,) + tuple(x.shape)).flatten(0, 1)
        recon = model.recon_nll(model.decode(z0), x_k).double().view(k, b)
        log_q = (-0.5 * noise.pow(2) - log_sigma - 0.5 * LOG_2PI).flatten(2).sum(2).double()
    logp, nfe = log_prob_ode(model.prior, z0, atol=atol, rtol=rtol, probes=probes, seed=seed)
    kl = log_q - logp.view(k, b)
    bound = recon + kl
    if k > 1:
        bound = -(torch.logsumexp(-bound, 0) - math.log(k))
    else:
        bound = bound[0]
    return {"nelbo": bound, "recon": recon.mean(0), "kl": kl.mean(0), "nfe": nfe}
