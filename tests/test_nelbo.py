"""ODE log-likelihood against closed forms, and the NELBO of the tiny trained LSGM."""
import math

import pytest
import torch
from solver_stubs import SDES, GaussianPrior, random_prior

from lsgm_core.nelbo import bits_per_dim, log_prob_ode, nelbo
from lsgm_core.solvers import ODE_EPS

torch.set_num_threads(1)


def log_normal(z, var):
    z = z.double().flatten(1)
    return -0.5 * z.pow(2).sum(1) / var - 0.5 * z.shape[1] * math.log(2 * math.pi * var)


@pytest.mark.parametrize("probes", ["rademacher", "gaussian"])
def test_alpha_zero_likelihood_is_the_standard_normal_density(probes):
    z0 = 1.5 * torch.randn(8, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    logp, nfe = log_prob_ode(random_prior(), z0, alpha=0.0, probes=probes)
    # the divergence is exactly 0, so any probe gives log N(z0; 0, I); only float32 round-off remains
    assert torch.allclose(logp, log_normal(z0, 1.0), atol=1e-4, rtol=0)
    assert nfe > 0


@pytest.mark.parametrize("sde", list(SDES))
def test_likelihood_of_the_gaussian_flow(sde):
    # the flow maps N(0, I) at t = 1 to N(0, (s_e/s_1)^2 I) at ODE_EPS: that is the model's exact density
    prior = GaussianPrior(SDES[sde], c=0.5)
    var = (prior.s(ODE_EPS) / prior.s(1.0)).item() ** 2
    z0 = math.sqrt(var) * torch.randn(16, *prior.shape, generator=torch.Generator().manual_seed(0))
    exact = log_normal(z0, var)
    # Rademacher probes are exact for a drift that is a multiple of z: e^T (k I) e = k D
    logp, _ = log_prob_ode(prior, z0, probes="rademacher")
    assert torch.allclose(logp, exact, atol=2e-3, rtol=0)  # measured error below 1e-4 nats (32 dims)
    # Gaussian probes: unbiased, error (|e|^2/D - 1) * D log(s_1/s_e), of std sqrt(2 D) log(s_1/s_e) per probe
    logp, _ = log_prob_ode(prior, z0, probes="gaussian", num_probes=4)
    d, log_ratio = z0[0].numel(), math.log((prior.s(1.0) / prior.s(ODE_EPS)).item())
    std_mean = math.sqrt(2 * d / 4) * log_ratio / math.sqrt(len(z0))
    assert abs((logp - exact).mean().item()) < 4 * std_mean
    assert not torch.allclose(logp, exact, atol=1e-2)  # a noisy estimate indeed


def test_bits_per_dim():
    assert bits_per_dim(784 * math.log(2.0), 784) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def tiny_and_images(tiny_checkpoints, data_dir):
    from lsgm_core import load_model
    from lsgm_core.data import load_dataset

    x, _ = load_dataset("binarized-mnist", "test", data_dir).batch(torch.arange(6), torch.Generator().manual_seed(0))
    return load_model(tiny_checkpoints["stage2"]), x


def test_nelbo_of_the_tiny_model(tiny_and_images):
    model, x = tiny_and_images
    out = nelbo(model, x, atol=1e-4, rtol=1e-4)
    assert set(out) == {"nelbo", "recon", "kl", "nfe"}
    assert out["nelbo"].shape == (6,) and torch.isfinite(out["nelbo"]).all()
    assert torch.allclose(out["nelbo"], out["recon"] + out["kl"])
    assert torch.equal(out["nelbo"], nelbo(model, x, atol=1e-4, rtol=1e-4)["nelbo"])  # seeded
    # the tiny prior is nearly N(0, I) (alpha ~ 0.0025): with the same z0 draw as nelbo's (seed 0),
    # log q(z0|x) - log N(z0; 0, I) must be close to its kl
    with torch.no_grad():
        mu, log_sigma = model.encode(x)
    noise = torch.randn((1,) + tuple(mu.shape), generator=torch.Generator().manual_seed(0))[0]
    z0 = mu + log_sigma.exp() * noise
    log_q = (-0.5 * noise.pow(2) - log_sigma - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1).double()
    assert (out["kl"] - (log_q - log_normal(z0, 1.0))).abs().max().item() < 1.0
    # importance weighting: -log mean_k exp(-b_k) <= mean_k b_k for every draw, sample by sample
    iw = nelbo(model, x, atol=1e-4, rtol=1e-4, iw_samples=4)
    assert torch.all(iw["nelbo"] <= iw["recon"] + iw["kl"] + 1e-6)


class PixelStub(torch.nn.Module):
    """A pixel baseline whose prior is the exact Gaussian flow: its density of y is N(0, var I)."""
    kind = "pixel"

    def __init__(self, prior):
        super().__init__()
        self.prior, self.anchor = prior, torch.nn.Parameter(torch.zeros(()))


@pytest.mark.parametrize("levels", [2, 256])
def test_the_dequantised_bound_of_a_pixel_model_against_closed_forms(levels):
    """y = 2 (k + u) / levels - 1 with u uniform: the bound is -log N(y) - D log(2 / levels). Its mean
    over u has the closed form D/2 log(2 pi var) + E|y|^2 / (2 var) - D log(2 / levels), which is
    never below the exact -log P(x) of the bins (Jensen); the draws average to it within their spread."""
    prior = GaussianPrior(SDES["vpsde"], c=0.5)
    var = (prior.s(ODE_EPS) / prior.s(1.0)).item() ** 2
    x = torch.randint(0, levels, (64, *prior.shape), generator=torch.Generator().manual_seed(1)).double() / (levels - 1)
    out = nelbo(PixelStub(prior), x.float(), seed=3, dequantize=levels)
    d, w = x[0].numel(), 2.0 / levels
    assert torch.allclose(out["nelbo"], out["recon"] + out["kl"])
    assert out["recon"][0].item() == pytest.approx(-d * math.log(w))
    a = 2.0 * (x * (levels - 1)).round() / levels - 1.0  # each pixel's bin [a, a + w)
    normal = torch.distributions.Normal(0.0, math.sqrt(var))
    exact = -(normal.cdf(a + w) - normal.cdf(a)).log().flatten(1).sum(1)
    y2 = a.pow(2) + a * w + w ** 2 / 3  # E y^2 over a bin
    y4 = ((a + w).pow(5) - a.pow(5)) / (5 * w)  # E y^4
    expected = 0.5 * d * math.log(2 * math.pi * var) + y2.flatten(1).sum(1) / (2 * var) - d * math.log(w)
    assert torch.all(expected >= exact)
    spread = ((y4 - y2.pow(2)).sum().sqrt() / (2 * var) / len(x)).item()  # std of the mean over the draws
    assert abs((out["nelbo"] - expected).mean().item()) < 4 * spread + 1e-3
    assert out["nelbo"].std().item() > 0  # the draws of u are there
    assert torch.equal(out["nelbo"], nelbo(PixelStub(prior), x.float(), seed=3, dequantize=levels)["nelbo"])


def test_dequantisation_is_refused_for_an_lsgm(tiny_and_images):
    model, x = tiny_and_images
    with pytest.raises(ValueError, match="applies to the pixel baseline"):
        nelbo(model, x, dequantize=2)
