"""Tests of lsgm_core.sde: closed-form marginals against a simulation of the forward SDE, the
inverse of sigma^2(t), beta against the derivative of sigma^2(t), and the importance samplers
of t (density, samples, and unbiasedness of E_r[f(t) / r(t)]).
"""
import math

import numpy as np
import pytest
import torch

from lsgm_core.sde import TIME_SAMPLERS, VPSDE, GeometricVPSDE, make_sde

F64 = torch.float64

SDES = {
    "vpsde": VPSDE(),
    "geometric": GeometricVPSDE(),
    "geometric_ll": GeometricVPSDE(sigma2_min=3e-5, sigma2_max=0.999),  # the authors' likelihood runs
}


def _samplers(sde):
    return [s for s in TIME_SAMPLERS if not (s == "drop_all_iw" and sde.name != "vpsde")]


CASES = [pytest.param(sde, s, id=f"{name}-{s}") for name, sde in SDES.items() for s in _samplers(sde)]


def _t(x):
    return torch.tensor(x, dtype=F64)


def _grid(sde, n=40001):
    """Times in [t_eps, 1], dense near t_eps where the likelihood densities peak."""
    return torch.logspace(math.log10(sde.t_eps), 0.0, n, dtype=F64)


# --------------------------------------------------------------------------- marginals

def _simulate(sde, z0, times, n, gen, max_db=0.01, max_dt=5e-3):
    """Euler-Maruyama paths of dz = -beta/2 z dt + sqrt(beta) dW from z ~ q(z_0 | z0) at t = 0.

    Steps are short enough that beta dt <= max_db (beta grows ~100x near t = 1 for the geometric
    SDE) and beta is taken at each step's midpoint. For these settings the deterministic bias of
    the scheme is below 1.3% on m_t and 0.4% on sigma_t^2 (computed from its moment recursion).
    Returns the paths' values at each of `times`.
    """
    v0 = sde.var(_t(0.0))
    z = (1 - v0).sqrt() * z0 + v0.sqrt() * torch.randn(n, generator=gen, dtype=F64)
    t, out = 0.0, []
    for tc in times:
        while t < tc - 1e-12:
            b = sde.beta(_t(min(t + 0.5 * max_dt, tc))).item()
            dt = min(max_dt, max_db / b, tc - t)
            b = sde.beta(_t(t + 0.5 * dt)).item()
            z.mul_(1 - 0.5 * b * dt).add_(torch.randn(n, generator=gen, dtype=F64), alpha=math.sqrt(b * dt))
            t += dt
        out.append(z.clone())
    return out


@pytest.mark.parametrize("sde", [SDES["vpsde"], SDES["geometric"]], ids=["vpsde", "geometric"])
def test_marginals_match_simulated_forward_sde(sde):
    torch.manual_seed(0)
    n, z0 = 40_000, 1.5
    times = [sde.t_eps, 0.1, 0.3, 0.5, 0.8, 1.0]
    paths = _simulate(sde, z0, times, n, torch.Generator().manual_seed(1))
    for t, z in zip(times, paths):
        m, v = sde.mean_coef(_t(t)).item(), sde.var(_t(t)).item()
        # 5 Monte Carlo standard errors, plus the scheme's bias (see _simulate)
        assert abs(z.mean().item() - m * z0) <= 5 * math.sqrt(v / n) + 0.015 * m * z0, (t, z.mean().item(), m * z0)
        assert abs(z.var().item() / v - 1) <= 5 * math.sqrt(2 / n) + 0.005, (t, z.var().item(), v)


@pytest.mark.parametrize("sde", SDES.values(), ids=SDES.keys())
def test_variance_preserving_and_perturb(sde):
    t = torch.linspace(0, 1, 101, dtype=F64)
    torch.testing.assert_close(sde.mean_coef(t) ** 2 + sde.var(t), torch.ones_like(t), rtol=0, atol=1e-12)
    z0, eps = torch.randn(101, 3, 2, 2, dtype=F64), torch.randn(101, 3, 2, 2, dtype=F64)
    expected = sde.mean_coef(t).view(-1, 1, 1, 1) * z0 + sde.sigma(t).view(-1, 1, 1, 1) * eps
    torch.testing.assert_close(sde.perturb(z0, t, eps), expected, rtol=0, atol=1e-12)
    assert bool((sde.var(t[1:]) > sde.var(t[:-1])).all()), "sigma^2(t) must increase"


@pytest.mark.parametrize("sde", SDES.values(), ids=SDES.keys())
def test_inv_var_inverts_var(sde):
    t = torch.linspace(0.0, 1.0, 1001, dtype=F64)
    torch.testing.assert_close(sde.inv_var(sde.var(t)), t, rtol=0, atol=1e-9)
    v = torch.logspace(math.log10(sde.var(_t(1e-4)).item()), math.log10(sde.var(_t(1.0)).item()), 1001, dtype=F64)
    torch.testing.assert_close(sde.var(sde.inv_var(v)), v, rtol=1e-9, atol=0)
    # float32, as the samplers hand it on
    torch.testing.assert_close(sde.inv_var(sde.var(t.float())), t.float(), rtol=0, atol=2e-4)


@pytest.mark.parametrize("sde", SDES.values(), ids=SDES.keys())
def test_beta_is_the_derivative_of_var(sde):
    t = torch.linspace(0.001, 0.999, 999, dtype=F64)
    h = 1e-6
    dvar = (sde.var(t + h) - sde.var(t - h)) / (2 * h)
    torch.testing.assert_close(sde.beta(t), dvar / (1 - sde.var(t)), rtol=1e-6, atol=0)
    torch.testing.assert_close(sde.g2(t), sde.beta(t))
    torch.testing.assert_close(sde.ll_weight(t), sde.beta(t) / sde.var(t))


def test_vpsde_closed_forms():
    sde = VPSDE(beta0=0.1, beta1=20.0)
    t = torch.linspace(0, 1, 11, dtype=F64)
    torch.testing.assert_close(sde.beta(t), 0.1 + 19.9 * t)
    torch.testing.assert_close(sde.mean_coef(t), torch.exp(-0.1 * t / 2 - 19.9 * t ** 2 / 4))


def test_geometric_closed_forms():
    sde = GeometricVPSDE(sigma2_min=1e-4, sigma2_max=0.99)
    torch.testing.assert_close(sde.var(_t([0.0, 0.5, 1.0])), _t([1e-4, math.sqrt(0.99e-4), 0.99]))
    # d log sigma^2 / dt is constant, so ll_iw draws t uniformly
    t = torch.linspace(sde.t_eps, 1, 101, dtype=F64)
    torch.testing.assert_close(sde.density(t, "ll_iw"), sde.density(t, "ll_uniform"))


# --------------------------------------------------------------------------- time samplers

def _cumulative(y, x):
    """Cumulative trapezoid integral of y over x, starting at 0."""
    return torch.cat([torch.zeros(1, dtype=F64), torch.cumsum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1]), 0)])


@pytest.mark.parametrize("sde,sampler", CASES)
def test_density_integrates_to_one(sde, sampler):
    t = _grid(sde)
    r = sde.density(t, sampler)
    assert bool((r > 0).all())
    assert _cumulative(r, t)[-1].item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("sde,sampler", CASES)
def test_samples_follow_density(sde, sampler):
    """Kolmogorov-Smirnov distance between the samples and the CDF of the density (by quadrature)."""
    n = 20_000
    t, inv_r = sde.sample_time(n, sampler, generator=torch.Generator().manual_seed(3))
    assert t.dtype == torch.float32 and t.shape == (n,)
    assert float(t.min()) >= sde.t_eps and float(t.max()) <= 1.0
    torch.testing.assert_close(inv_r, (1 / sde.density(t.double(), sampler)).float(), rtol=1e-4, atol=0)
    grid = _grid(sde)
    cdf = _cumulative(sde.density(grid, sampler), grid)
    ts = t.double().sort().values
    model_cdf = torch.from_numpy(np.interp(ts.numpy(), grid.numpy(), cdf.numpy()))
    emp_hi = torch.arange(1, n + 1, dtype=F64) / n
    ks = torch.maximum(emp_hi - model_cdf, model_cdf - (emp_hi - 1 / n)).max().item()
    assert ks < 1.95 / math.sqrt(n), f"KS distance {ks:.4f} (critical value at p = 0.001: {1.95 / math.sqrt(n):.4f})"


def _h(t):
    return 1.0 + 0.5 * torch.sin(6.0 * t)


def _f_likelihood(sde, t):
    """Shaped like the likelihood objective: w_ll(t) * E||eps - eps_hat||^2 with the N(0, I) prior
    (which carries the 1 - sigma^2 factor) times a bounded smooth h(t)."""
    v = sde.var(t)
    return sde.beta(t) / v * (1 - v) * _h(t)


def _f_unweighted(sde, t):
    return (1 - sde.var(t)) * _h(t)


def _estimate(sde, sampler, f, n, seed):
    t, inv_r = sde.sample_time(n, sampler, generator=torch.Generator().manual_seed(seed))
    vals = f(sde, t.double()) * inv_r.double()
    return vals.mean().item(), vals.std().item() / math.sqrt(n)


@pytest.mark.parametrize("sde,sampler", CASES)
@pytest.mark.parametrize("f", [_f_likelihood, _f_unweighted], ids=["ll_integrand", "unweighted_integrand"])
def test_importance_sampling_is_unbiased(sde, sampler, f):
    if sde.name == "vpsde" and sampler == "ll_iw" and f is _f_unweighted:
        # 1/r(t) reaches ~2e4 at t = 1: for integrands that do not vanish there this estimator is
        # heavy-tailed (that pairing is not used; drop_all_iw serves the unweighted objective)
        pytest.skip("heavy-tailed pairing")
    grid = _grid(sde)
    exact = _cumulative(f(sde, grid), grid)[-1].item()
    est, se = _estimate(sde, sampler, f, 200_000, seed=5)
    uni, se_uni = _estimate(sde, "ll_uniform", f, 200_000, seed=6)
    assert abs(est - exact) < 4 * se, (est, exact, se)
    assert abs(est - exact) < 0.01 * exact
    assert abs(est - uni) < 4 * math.hypot(se, se_uni), (est, uni)


def test_importance_samplers_reduce_variance():
    sde = SDES["vpsde"]
    n = 50_000
    _, se_uni = _estimate(sde, "ll_uniform", _f_likelihood, n, 7)
    _, se_iw = _estimate(sde, "ll_iw", _f_likelihood, n, 7)
    assert se_iw < 0.1 * se_uni
    _, se_uni = _estimate(sde, "ll_uniform", _f_unweighted, n, 8)
    _, se_drop = _estimate(sde, "drop_all_iw", _f_unweighted, n, 8)
    assert se_drop < 0.5 * se_uni


def test_sampling_is_seeded():
    sde = SDES["vpsde"]
    a = sde.sample_time(100, "ll_iw", generator=torch.Generator().manual_seed(11))
    b = sde.sample_time(100, "ll_iw", generator=torch.Generator().manual_seed(11))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# --------------------------------------------------------------------------- errors

def test_drop_all_iw_needs_the_vpsde():
    sde = SDES["geometric"]
    with pytest.raises(ValueError, match="drop_all_iw.*vpsde"):
        sde.sample_time(4, "drop_all_iw")
    with pytest.raises(ValueError, match="drop_all_iw.*vpsde"):
        sde.density(_t([0.5]), "drop_all_iw")


def test_unknown_sampler_and_bad_settings():
    with pytest.raises(ValueError, match="unknown time sampler 'nope'.*ll_iw"):
        SDES["vpsde"].sample_time(4, "nope")
    with pytest.raises(ValueError, match="t_eps"):
        VPSDE(t_eps=0.0)
    with pytest.raises(ValueError, match="beta0"):
        VPSDE(beta0=5.0, beta1=1.0)
    with pytest.raises(ValueError, match="sigma2_min"):
        GeometricVPSDE(sigma2_min=0.5, sigma2_max=0.1)
    with pytest.raises(ValueError, match="unknown SDE kind"):
        make_sde({"kind": "ve"})
    with pytest.raises(ValueError, match="bad options"):
        make_sde({"kind": "vpsde", "sigma2_min": 0.1})
    assert make_sde(VPSDE(beta0=0.2, beta1=10.0, t_eps=0.02).config()).config() == \
        {"kind": "vpsde", "beta0": 0.2, "beta1": 10.0, "t_eps": 0.02}
