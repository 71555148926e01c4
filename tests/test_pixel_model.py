"""The pixel-space SGM (lsgm_core.model.PixelSGM) on a Gaussian data set in pixel space, against
closed forms: with the exact noise prediction of Gaussian images in place of its U-Net, its training
loss is the irreducible denoising error, and its samplers map z1 where the Gaussian's flow does."""
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from lsgm_core.config import load_config
from lsgm_core.model import build_model
from lsgm_core.solvers import ODE_EPS, sample

torch.set_num_threads(1)
ROOT = Path(__file__).parents[1]
SHAPE = (1, 32, 32)


class ExactGaussianEps(nn.Module):
    """The U-Net's place for pixels y = 2x - 1 ~ N(mu, s^2), independent per pixel: the marginal at t
    is N(m_t mu, v_t), v_t = m_t^2 s^2 + sigma_t^2, and E[eps | z_t] = sigma_t (z_t - m_t mu) / v_t."""

    def __init__(self, sde, mu: torch.Tensor, s: torch.Tensor):
        super().__init__()
        self.sde = sde
        self.mu, self.s = nn.Parameter(mu, requires_grad=False), nn.Parameter(s, requires_grad=False)

    def moments(self, t):
        t = torch.as_tensor(t, dtype=torch.float64).view(-1, 1, 1, 1)
        m, var = self.sde.mean_coef(t), self.sde.var(t)
        return m, var.sqrt(), m ** 2 * self.s.double() ** 2 + var

    def forward(self, z, t):
        m, sigma, v = self.moments(t)
        return (sigma * (z.double() - m * self.mu.double()) / v).to(z.dtype)


def _pixel_model(weighting: str = "unweighted", sampler: str = "ll_uniform"):
    """configs/bmnist_pixel_vp.toml's SDE and objective, its U-Net replaced by the exact Gaussian one."""
    cfg = load_config(ROOT / "configs" / "bmnist_pixel_vp.toml",
                      {"objective": {"prior_weighting": weighting, "prior_sampler": sampler},
                       "model": {"in_channels": 1, "image_size": 32, "crop": 2}})  # binarized MNIST's, padded
    model = build_model(cfg)
    g = torch.Generator().manual_seed(0)
    mu = 0.4 * (2 * torch.rand(SHAPE, generator=g) - 1)
    s = 0.1 + 0.15 * torch.rand(SHAPE, generator=g)
    model.prior.net = ExactGaussianEps(model.prior.sde, mu, s)
    return model.eval(), mu, s


@pytest.mark.parametrize("weighting,sampler", [("unweighted", "ll_uniform"), ("likelihood", "ll_iw")])
def test_the_loss_is_the_irreducible_denoising_error(weighting, sampler):
    """E_t w(t) sum_d E||eps - E[eps|z_t]||^2 = integral over [t_eps, 1] of w(t) sum_d m_t^2 s_d^2 / v_t,
    by quadrature; the loss's Monte Carlo mean over 20,000 images lies within 4 standard errors of it
    (the recipe's unweighted loss at uniform t, and the likelihood weighting with its importance sampler)."""
    model, mu, s = _pixel_model(weighting, sampler)
    sde, net = model.prior.sde, model.prior.net
    t = torch.logspace(math.log10(sde.t_eps), 0.0, 200_001, dtype=torch.float64)
    m, _, v = net.moments(t)
    w = torch.ones_like(t) if weighting == "unweighted" else 0.5 * sde.ll_weight(t)
    f = w * (m ** 2 * s.double() ** 2 / v).flatten(1).sum(1)
    exact = (0.5 * (f[1:] + f[:-1]) * (t[1:] - t[:-1])).sum().item()
    torch.manual_seed(1)
    y = mu + s * torch.randn(20_000, *SHAPE)
    with torch.no_grad():
        terms = torch.cat([model.prior.score_matching_terms(c, sampler, weighting) for c in y.split(500)]).double()
        # the model's own loss is the mean of these terms on y = 2x - 1, for x in [0, 1]
        torch.manual_seed(5)
        loss = model.losses((y[:500] + 1) / 2)["loss"]
        torch.manual_seed(5)
        assert loss.item() == pytest.approx(model.prior.score_matching_terms(y[:500], sampler, weighting).mean().item(),
                                            rel=1e-4)
    se = terms.std().item() / math.sqrt(len(terms))
    assert abs(terms.mean().item() - exact) < 4 * se, (terms.mean().item(), exact, se)
    assert se < 0.03 * exact


def _flow_end(net, z1: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE of the Gaussian from t = 1 to ODE_EPS: z = m mu + (z1 - m1 mu) sqrt(v / v1)."""
    m1, _, v1 = net.moments(1.0)
    m, _, v = net.moments(ODE_EPS)
    mu = net.mu.double()
    return (m * mu + (z1.double() - m1 * mu) * (v / v1).sqrt()).float()


# measured: 4e-6 (ODE, 128 evaluations) and 6.6e-3 (20 fast steps; 10 steps: 7.5e-2)
@pytest.mark.parametrize("solver,options,tol", [("ode", {"atol": 1e-6, "rtol": 1e-6}, 5e-5),
                                                ("fast", {"steps": 20}, 1.5e-2)])
def test_the_samplers_follow_the_gaussian_flow_and_decode_to_its_pixels(solver, options, tol):
    model, _, _ = _pixel_model()
    z1 = torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(2))
    out = sample(model, 16, solver, z1=z1, denoise_t=0.0, **options)
    exact = _flow_end(model.prior.net, z1)
    assert (out.z0 - exact).abs().max().item() < tol
    # decoding: y in [-1, 1] back to x in [0, 1], the 2-pixel padding of the 28x28 images cropped
    assert torch.equal(out.images, ((out.z0[..., 2:30, 2:30] + 1) / 2).clamp(0, 1))


def test_the_reverse_sde_draws_the_gaussian():
    """1,000 Euler-Maruyama steps from z1 ~ N(0, I): the pixels, standardised by the data's mu and s,
    have mean 0 and variance 1 within what 300 x 1,024 draws allow (and the discretisation's bias)."""
    model, mu, s = _pixel_model()
    z0 = sample(model, 300, "sde", steps=1000, seed=3, denoise_t=0.0).z0
    r = ((z0 - mu) / s).double()
    n = r.numel()
    assert abs(r.mean().item()) < 4 / math.sqrt(n) + 0.01
    assert r.var().item() == pytest.approx(1.0, abs=4 * math.sqrt(2 / n) + 0.03)
