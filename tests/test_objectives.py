"""Tests of the training objectives: the score-matching estimate of the cross-entropy against its
closed form for Gaussian q(z0|x) and the N(0, I) prior (alpha = 0), the stage-1 and stage-2 KL
terms of LSGM.losses, the routing of gradients between the two objectives, and the decoder
likelihoods.
"""
import math
from pathlib import Path

import pytest
import torch

from lsgm_core.config import load_config
from lsgm_core.decoder_likelihoods import Bernoulli, DiscretizedLogistic, make_likelihood
from lsgm_core.model import build_model
from lsgm_core.prior import ScorePrior
from lsgm_core.sde import VPSDE, GeometricVPSDE, make_sde

SMOKE = Path(__file__).parents[1] / "configs" / "smoke.toml"
NET = {"channels": 8, "ch_mult": [1], "num_res_blocks": 1, "attention": False}
SDE_CFGS = {"vpsde": {"kind": "vpsde"}, "geometric": {"kind": "geometric_vpsde"}}
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _gaussian_prior(shape, sde_cfg, **kw) -> ScorePrior:
    """A ScorePrior whose mixing logits make alpha exactly 0 (sigmoid(-1e4) == 0 in float32)."""
    return ScorePrior(shape, sde_cfg, NET, mixing_logit_init=-1e4, **kw)


# --------------------------------------------------------------------------- the mixed score at alpha = 0

def test_alpha_zero_is_the_standard_normal_prior():
    torch.manual_seed(0)
    zt, t = torch.randn(5, 2, 4, 4), torch.rand(5)
    sigma = GeometricVPSDE().sigma(t).view(-1, 1, 1, 1)
    prior = _gaussian_prior((2, 4, 4), SDE_CFGS["geometric"])
    assert torch.equal(prior.eps(zt, t), sigma * zt)
    # an alpha override of 0 gives N(0, I) even where the network's output is not zero
    prior = ScorePrior((2, 4, 4), SDE_CFGS["geometric"], NET, mixing_logit_init=0.0)
    torch.nn.init.normal_(prior.net.conv_out.weight)
    assert not torch.allclose(prior.eps(zt, t), sigma * zt)
    assert torch.equal(prior.eps(zt, t, alpha=0.0), sigma * zt)
    torch.testing.assert_close(prior.score(zt, t, alpha=0.0), -zt)  # the score of N(0, I)
    # eps_theta = sigma_t z_t + net (the U-Net learns the residual), mixed with weight alpha
    torch.testing.assert_close(prior.eps(zt, t, alpha=0.25), sigma * zt + 0.25 * prior.net(zt, t))


def test_inactive_channels_keep_alpha_zero():
    torch.manual_seed(0)
    prior = ScorePrior((3, 4, 4), SDE_CFGS["vpsde"], NET, mixing_logit_init=2.0)
    torch.nn.init.normal_(prior.net.conv_out.weight)
    prior.active.copy_(torch.tensor([1.0, 0.0, 1.0]))
    assert prior.alpha()[1].item() == 0.0 and prior.alpha(0.7)[1].item() == 0.0
    zt, t = torch.randn(4, 3, 4, 4), torch.full((4,), 0.5)
    eps = prior.eps(zt, t)
    assert torch.equal(eps[:, 1], (VPSDE().sigma(t).view(-1, 1, 1) * zt[:, 1]))
    assert not torch.allclose(eps[:, 0], VPSDE().sigma(t).view(-1, 1, 1) * zt[:, 0])
    # the score-matching terms and their constant cover the active channels only
    assert prior.ce_constant() == pytest.approx(2 / 3 * ScorePrior((3, 4, 4), SDE_CFGS["vpsde"], NET).ce_constant())


# --------------------------------------------------------------------------- cross-entropy by score matching

@pytest.mark.parametrize("sde,sampler", [("vpsde", "ll_iw"), ("geometric", "ll_iw"), ("geometric", "ll_uniform")])
def test_score_matching_cross_entropy_matches_closed_form(sde, sampler):
    """CE(N(mu, s^2) || N(0, I)) = D/2 log(2 pi) + sum(s^2 + mu^2)/2, within 1%.

    400k samples: the Monte Carlo standard error is <= 0.13% of the CE (measured), and the
    truncation of time to [t_eps, 1] biases it by 0.03% (VPSDE) and 0.24% (geometric: q(z1) is not exactly N(0, I) at t = 1).
    """
    torch.manual_seed(0)
    shape = (2, 4, 4)
    mu, s = 0.8 * torch.randn(shape), 0.2 + 0.6 * torch.rand(shape)
    exact = math.prod(shape) * HALF_LOG_2PI + 0.5 * (s ** 2 + mu ** 2).sum().item()
    prior = _gaussian_prior(shape, SDE_CFGS[sde])
    terms = torch.cat([prior.score_matching_terms(mu + s * torch.randn(100_000, *shape), sampler, "likelihood")
                       for _ in range(4)]).double()
    estimate = terms.mean().item() + prior.ce_constant()
    se = terms.std().item() / math.sqrt(len(terms))
    assert se < 0.002 * exact
    assert estimate == pytest.approx(exact, rel=0.01)
    # sharper: the CE that time truncated to [t_eps, 1] gives (quadrature), within 5 standard errors
    truncated = _truncated_ce(make_sde(SDE_CFGS[sde]), mu ** 2 + s ** 2).sum().item()
    assert abs(estimate - truncated) < 5 * se, (estimate, truncated, se)


def _truncated_ce(sde, c, n=200_001):
    """Per-dimension CE(N(mu, s^2) || N(0, 1)) as the score-matching objective on [t_eps, 1]
    computes it at alpha = 0 (eps_hat = sigma z_t), by deterministic quadrature over t;
    c = mu^2 + s^2 (a number or a tensor).

    eps - sigma z_t = m (m eps - sigma z0), so E||.||^2 = m^2 (m^2 + sigma^2 c): linear in c.
    """
    t = torch.logspace(math.log10(sde.t_eps), 0.0, n, dtype=torch.float64)
    m2, v = sde.mean_coef(t) ** 2, sde.var(t)
    w = 0.5 * sde.ll_weight(t)

    def integral(f):
        return (0.5 * (f[1:] + f[:-1]) * (t[1:] - t[:-1])).sum().item()

    const = _gaussian_prior((1, 1, 1), sde.config()).ce_constant()
    return const + integral(w * m2 * m2) + integral(w * m2 * v) * c


def test_cross_entropy_numbers_in_one_dimension():
    """The closed form in one dimension: q(z0) = N(0.7, 0.3^2), p = N(0, 1), exact CE 1.20894
    (docs/method.md, section 3.2)."""
    assert HALF_LOG_2PI + (0.7 ** 2 + 0.3 ** 2) / 2 == pytest.approx(1.20894, abs=1e-5)
    c = 0.7 ** 2 + 0.3 ** 2
    assert _truncated_ce(VPSDE(t_eps=0.01), c) == pytest.approx(1.20934, abs=1e-5)
    assert _truncated_ce(GeometricVPSDE(sigma2_min=1e-4, sigma2_max=0.99), c) == pytest.approx(1.20604, abs=1e-5)


def test_closed_form_error_matches_the_prior():
    """The closed form used above agrees with the prior's own eps_hat at fixed t (Monte Carlo)."""
    torch.manual_seed(1)
    sde = VPSDE()
    prior = _gaussian_prior((1, 1, 1), sde.config())
    n = 200_000
    for tv in (0.02, 0.3, 0.9):
        t = torch.full((n,), tv)
        z0, eps = 0.7 + 0.3 * torch.randn(n, 1, 1, 1), torch.randn(n, 1, 1, 1)
        err = (eps - prior.eps(sde.perturb(z0, t, eps), t)).pow(2).double()
        m2, v = sde.mean_coef(torch.tensor(tv)).item() ** 2, sde.var(torch.tensor(tv)).item()
        expected = m2 * (m2 + v * 0.58)
        assert abs(err.mean().item() - expected) < 5 * err.std().item() / math.sqrt(n)


@pytest.mark.parametrize("sde", ["vpsde", "geometric"])
def test_control_variate_cross_entropy(sde):
    """prior.cross_entropy = closed-form CE to N(0, I) + w/r (||eps - eps_hat||^2 - ||eps - sigma z_t||^2).

    At alpha = 0 it is the closed form exactly. With a network, on the same draws of t and eps it
    differs from the plain estimator (score_matching_terms + ce_constant) by a term that does not
    involve the network: at alpha = 0 that term is closed form - plain estimate, whose mean is the
    truncation bias checked in test_score_matching_cross_entropy_matches_closed_form.
    """
    torch.manual_seed(0)
    shape, n = (2, 4, 4), 5_000
    mu, log_s = 0.8 * torch.randn(shape), torch.log(0.2 + 0.6 * torch.rand(shape))
    closed = math.prod(shape) * HALF_LOG_2PI + 0.5 * (mu ** 2 + (2 * log_s).exp()).sum().item()
    z0 = mu + log_s.exp() * torch.randn(n, *shape)
    mus, log_ss = mu.expand(n, *shape), log_s.expand(n, *shape)

    gaussian = _gaussian_prior(shape, SDE_CFGS[sde])
    torch.testing.assert_close(gaussian.cross_entropy(mus, log_ss, z0, "ll_iw"),
                               torch.full((n,), closed), rtol=1e-6, atol=0)

    diffs = []
    for prior in (gaussian, *(ScorePrior(shape, SDE_CFGS[sde], NET, mixing_logit_init=0.0) for _ in range(2))):
        if prior is not gaussian:
            torch.nn.init.normal_(prior.net.conv_out.weight, std=0.3)
        with torch.no_grad():
            torch.manual_seed(5)
            cv = prior.cross_entropy(mus, log_ss, z0, "ll_iw").double()
            torch.manual_seed(5)
            plain = prior.score_matching_terms(z0, "ll_iw", "likelihood").double() + prior.ce_constant()
        if prior is not gaussian:
            assert cv.mean().item() > closed + 0.1  # the network moved the prior away from N(0, I)
        diffs.append((cv - plain, plain.abs()))
    for d, scale in diffs[1:]:
        # equal up to float32 rounding of terms as large as the plain estimator's (w/r reaches ~1e5)
        assert bool(((d - diffs[0][0]).abs() <= 1e-5 * scale + 1e-6 * closed).all())


# --------------------------------------------------------------------------- KL terms of LSGM.losses

@pytest.fixture
def gaussian_lsgm():
    """The smoke-config LSGM with q(z0|x) = N(mu, s^2) fixed and a constant decoder."""
    def make(sde="geometric", **objective):
        torch.manual_seed(0)
        cfg = load_config(SMOKE, {"model": {"in_channels": 1, "crop": 2, "likelihood": "bernoulli",
                                            "prior": {"sde": SDE_CFGS[sde], "mixing_logit_init": -1e4}},
                                  "objective": objective})
        model = build_model(cfg)
        shape = model.latent_shape
        mu, log_sigma = 0.8 * torch.randn(shape), torch.log(0.2 + 0.6 * torch.rand(shape))
        model.encode = lambda x: (mu.expand(len(x), *shape), log_sigma.expand(len(x), *shape))
        model.decode = lambda z: torch.zeros(len(z), 1, 32, 32)
        kl = (0.5 * (mu ** 2 + (2 * log_sigma).exp() - 1) - log_sigma).sum().item()
        return model, mu, log_sigma, kl
    return make


def test_stage1_kl_matches_monte_carlo(gaussian_lsgm):
    model, mu, log_sigma, kl = gaussian_lsgm()
    out = model.losses(torch.zeros(3, 1, 32, 32), stage=1)
    assert out["kl"].item() == pytest.approx(kl, rel=1e-5)
    assert out["recon"].item() == pytest.approx(28 * 28 * math.log(2), rel=1e-6)  # logits 0, crop 2
    torch.testing.assert_close(out["kl_per_channel"].sum().item(), kl, rtol=1e-5, atol=0)
    # E_q[log q(z) - log N(z; 0, I)] by Monte Carlo
    torch.manual_seed(2)
    n = 20_000
    eps = torch.randn(n, *mu.shape, dtype=torch.float64)
    z = mu.double() + log_sigma.double().exp() * eps
    log_q = (-0.5 * eps ** 2 - log_sigma.double() - HALF_LOG_2PI).flatten(1).sum(1)
    log_p = (-0.5 * z ** 2 - HALF_LOG_2PI).flatten(1).sum(1)
    diff = log_q - log_p
    se = diff.std().item() / math.sqrt(n)
    assert abs(diff.mean().item() - kl) < 5 * se, (diff.mean().item(), kl, se)


@pytest.mark.parametrize("sde,objective", [
    ("geometric", {}),
    ("vpsde", {"prior_weighting": "unweighted", "prior_sampler": "drop_all_iw"}),
])
def test_stage2_kl_with_alpha_zero_is_the_analytic_kl(gaussian_lsgm, sde, objective):
    """At alpha = 0 the SGM prior is N(0, I), and stage 2's KL (entropy + control-variate CE)
    is stage 1's analytic KL for every draw."""
    model, _, _, kl = gaussian_lsgm(sde, **objective)
    torch.manual_seed(3)
    out = model.losses(torch.zeros(64, 1, 32, 32), stage=2)
    assert ("prior_loss" in out) == bool(objective)
    assert out["kl"].item() == pytest.approx(kl, rel=1e-5)


def test_separate_objectives_route_gradients():
    """With a prior objective that differs from the encoder's, the NELBO moves only the VAE and
    the prior's loss only the prior."""
    torch.manual_seed(0)
    cfg = load_config(SMOKE, {"model": {"in_channels": 1, "crop": 2, "likelihood": "bernoulli",
                                        "prior": {"mixing_logit_init": 0.0}},
                              "objective": {"prior_weighting": "unweighted"}})
    model = build_model(cfg)
    torch.nn.init.normal_(model.prior.net.conv_out.weight, std=0.1)
    out = model.losses(torch.bernoulli(torch.full((4, 1, 32, 32), 0.3)), stage=2)
    prior = list(model.prior.parameters())
    g_prior = torch.autograd.grad(out["nelbo"], prior, retain_graph=True, allow_unused=True)
    assert all(g is None or not g.any() for g in g_prior)
    g_vae = torch.autograd.grad(out["prior_loss"], model.encoder.parameters(), retain_graph=True, allow_unused=True)
    assert all(g is None or not g.any() for g in g_vae)
    # ... while the NELBO does reach the encoder through the prior's score of z_t
    g_enc = torch.autograd.grad(out["ce"], model.encoder.parameters(), retain_graph=True, allow_unused=True)
    assert any(g is not None and g.any() for g in g_enc)
    g_pr = torch.autograd.grad(out["prior_loss"], prior, allow_unused=True)
    assert any(g is not None and g.any() for g in g_pr)


# --------------------------------------------------------------------------- likelihoods

def test_discretized_logistic_sums_to_one_over_the_bins():
    torch.manual_seed(0)
    lik = make_likelihood("logistic")
    assert isinstance(lik, DiscretizedLogistic) and lik.params_per_channel == 2
    p = 2000
    mean, log_scale = 2.0 * torch.randn(p), -7.0 + 9.0 * torch.rand(p)  # scales from the clamp to e^2
    params = torch.stack([mean, log_scale]).view(1, 2, p, 1).expand(256, 2, p, 1)
    x = (torch.arange(256) / 255.0).view(256, 1, 1, 1).expand(256, 1, p, 1)
    logp = lik.log_prob(params, x)
    assert torch.isfinite(logp).all()
    # bins whose mass underflows use the density at their centre: exact up to ~1e-5 (measured 1.1e-5)
    torch.testing.assert_close(logp.logsumexp(0), torch.zeros(1, p, 1), rtol=0, atol=5e-5)


def test_discretized_logistic_mean_and_samples():
    lik = DiscretizedLogistic()
    params = torch.zeros(2, 2, 3, 3)
    params[:, 0] = 0.5
    params[:, 1] = -6.0
    torch.testing.assert_close(lik.mean(params), torch.full((2, 1, 3, 3), (math.tanh(0.5) + 1) / 2))
    x = lik.sample(params, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x * 255, (x * 255).round())
    assert (x - lik.mean(params)).abs().max() < 0.02


def test_bernoulli_log_prob_is_the_manual_formula():
    torch.manual_seed(0)
    lik = make_likelihood("bernoulli")
    assert isinstance(lik, Bernoulli) and lik.params_per_channel == 1
    logits = 4.0 * torch.randn(3, 1, 5, 5, dtype=torch.float64)
    x = torch.bernoulli(torch.full_like(logits, 0.5))
    p = torch.sigmoid(logits)
    torch.testing.assert_close(lik.log_prob(logits, x), x * p.log() + (1 - x) * (1 - p).log())
    torch.testing.assert_close(lik.mean(logits), p)
    # large logits stay finite
    big = torch.tensor([[-100.0, 100.0]])
    assert torch.isfinite(lik.log_prob(big, torch.tensor([[1.0, 0.0]]))).all()
    torch.testing.assert_close(lik.log_prob(big, torch.tensor([[0.0, 1.0]])), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="unknown decoder likelihood"):
        make_likelihood("gaussian")


def test_the_likelihoods_cross_entropies_against_their_closed_forms():
    """A student decoder's cross-entropy to the model's likelihood: exact for a Bernoulli
    (-p log q - (1 - p) log (1 - q), zero KL where q = p), and for the discretised logistic a
    one-draw estimate whose mean over 4,000 draws is the sum over the 256 bins within 3 standard errors."""
    torch.manual_seed(0)
    bern = Bernoulli()
    target, params = 3.0 * torch.randn(2, 1, 4, 4, dtype=torch.float64), 3.0 * torch.randn(2, 1, 4, 4, dtype=torch.float64)
    p, q = torch.sigmoid(target), torch.sigmoid(params)
    torch.testing.assert_close(bern.cross_entropy(params, target), -(p * q.log() + (1 - p) * (1 - q).log()))
    entropy = bern.cross_entropy(target, target)
    assert (bern.cross_entropy(params, target) >= entropy - 1e-12).all()  # Gibbs' inequality: KL >= 0
    lik = DiscretizedLogistic()
    target = torch.tensor([0.2, -1.5]).view(1, 2, 1, 1)  # mean, log scale
    params = torch.tensor([0.3, -1.0]).view(1, 2, 1, 1)
    bins = (torch.arange(256) / 255.0).view(256, 1, 1, 1)
    exact = -(lik.log_prob(target.expand(256, 2, 1, 1), bins).exp() * lik.log_prob(params.expand(256, 2, 1, 1), bins)).sum()
    draws = lik.cross_entropy(params.expand(4000, 2, 1, 1), target.expand(4000, 2, 1, 1),
                              torch.Generator().manual_seed(0)).flatten()
    assert abs(draws.mean() - exact) < 3 * draws.std() / math.sqrt(len(draws)), (draws.mean(), exact)
