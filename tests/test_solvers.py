"""The solvers' own properties beyond the contract every registered solver meets (test_solver_contract.py):
closed forms on Gaussian priors, then the tiny trained LSGM."""
import math

import pytest
import torch
from solver_stubs import SDES, GaussianPrior, MixturePrior, Wrap, random_prior

from lsgm_core import solvers
from lsgm_core.sde import GeometricVPSDE
from lsgm_core.solvers import (ODE_EPS, exp_weights, interpolate, ode_decode, ode_encode, ode_solve, sample,
                               time_grid)

torch.set_num_threads(1)


# closed forms ---------------------------------------------------------------------------------
def test_alpha_zero_prior_is_standard_normal_and_its_flow_is_the_identity():
    # eps_hat = sigma_t z makes the drift -beta/2 (z - eps_hat/sigma_t) vanish: z(t) = z(1) for all t
    prior = random_prior()
    z1 = torch.randn(16, *prior.shape, generator=torch.Generator().manual_seed(1))
    z0, _, _ = ode_solve(prior, z1, 1.0, ODE_EPS, alpha=0.0)
    # the drift is exactly 0; what remains is float32 round-off of dopri5's dense output (measured 3e-6)
    assert (z0 - z1).abs().max().item() < 1e-5
    fast = sample(Wrap(prior), 16, "fast", alpha=0.0, z1=z1)
    assert torch.equal(fast.z0, z1)  # the exponential integrator is exact here, not just close
    assert fast.nfe == 20


@pytest.mark.parametrize("sde", list(SDES))
def test_ode_matches_the_gaussian_closed_form(sde):
    prior = GaussianPrior(SDES[sde], c=0.3)
    z1 = torch.randn(8, *prior.shape, generator=torch.Generator().manual_seed(0))
    z0, _, traj = ode_solve(prior, z1, 1.0, ODE_EPS, atol=1e-6, rtol=1e-6, record_times=5)
    scale = lambda t: (prior.s(t) / prior.s(1.0)).float()  # noqa: E731
    assert torch.allclose(z0, z1 * scale(ODE_EPS), atol=1e-4, rtol=1e-4)
    for t, zt in zip(traj.times.tolist(), traj.zt):
        assert torch.allclose(zt, z1 * scale(t), atol=1e-4, rtol=1e-4)
    # the exact eps_hat makes z0_hat the posterior mean E[z0 | z_t] = m_t c^2 / s_t^2 z_t
    t = traj.times[2].item()
    m = prior.sde.mean_coef(torch.tensor(t, dtype=torch.float64))
    assert torch.allclose(traj.z0_hat[2], traj.zt[2] * (m * prior.c ** 2 / prior.s(t) ** 2).float(), atol=1e-5)
    assert traj.step_sizes and all(h > 0 for h in traj.step_sizes)
    assert traj.step_times[0] == 1.0 and all(a > b for a, b in zip(traj.step_times, traj.step_times[1:]))


@pytest.mark.parametrize("sde", list(SDES))
def test_fast_solver_converges_to_the_gaussian_closed_form(sde):
    # the Gaussian is the hard case for this solver: it sees alpha = 1, the whole field nonlinear
    prior = GaussianPrior(SDES[sde], c=0.3)
    z1 = torch.randn(8, *prior.shape, generator=torch.Generator().manual_seed(0))
    exact = z1 * (prior.s(ODE_EPS) / prior.s(1.0)).float()
    err = {n: (sample(Wrap(prior), 8, "fast", steps=n, z1=z1).z0 - exact).abs().max().item() / exact.abs().max().item()
           for n in (10, 20)}
    assert err[20] < 1.5e-2  # measured 7e-4 (geometric), 7e-3 (vpsde)
    assert err[10] / err[20] > 6.0  # third order: halving the step divides the error by ~8 (measured 11, 15)


@pytest.mark.parametrize("denoise_t", [0.0, 0.15])
def test_fast_states_follow_the_gaussian_path_through_given_times(denoise_t):
    """The teacher paths of distillation: the fast solver's states at the 4-step grid's times, those
    above the denoising time on the closed-form path z1 s_t / s_1, those below on the jump's line
    z_t = m_t z0_hat + sigma_t eps_hat from the state at denoise_t (the stub's exact eps_hat)."""
    prior = GaussianPrior(SDES["vpsde"], c=0.3)
    sde = prior.sde
    z1 = torch.randn(8, *prior.shape, generator=torch.Generator().manual_seed(0))
    times = time_grid(sde, 4, ODE_EPS)[0].tolist()
    field = solvers.ProbabilityFlow(prior)
    states = solvers.fast_states(field, z1, times, steps=40, denoise_t=denoise_t)
    assert field.nfe == 40 and states.shape == (len(times), *z1.shape) and torch.equal(states[0], z1)
    path = lambda t: z1 * (prior.s(t) / prior.s(1.0)).float()  # noqa: E731
    coef = lambda f, t: f(torch.tensor(t, dtype=torch.float64)).item()  # noqa: E731
    end = denoise_t or ODE_EPS
    z_end = path(end)
    z0 = z_end * coef(sde.mean_coef, end) * prior.c ** 2 / prior.s(end).item() ** 2 if denoise_t else z_end
    eps = z_end * coef(sde.sigma, end) / prior.s(end).item() ** 2
    for t, got in zip(times, states):
        want = path(t) if t >= end else (z0 if t == ODE_EPS else coef(sde.mean_coef, t) * z0 + coef(sde.sigma, t) * eps)
        assert (got - want).abs().max().item() < 2e-3 * want.abs().max().item(), t  # measured 6e-4 at most
    with pytest.raises(ValueError, match="decrease from 1"):
        solvers.fast_states(field, z1, times[::-1], steps=40)
    with pytest.raises(ValueError, match="cannot hold"):
        solvers.fast_states(field, z1, times, steps=2)


@pytest.mark.parametrize("denoise_t", [0.0, 0.15])
def test_a_students_grids_are_the_fast_solvers_and_nest(denoise_t):
    """The distilled student's k-step grid (its evaluation times, then t_end) is the fast solver's
    at k steps, the jump included where it denoises; the 1- and 2-step grids lie in the 4-step one."""
    sde = SDES["vpsde"]
    grids = {k: solvers.student_grid(sde, k, denoise_t) for k in (1, 2, 4)}
    for k, grid in grids.items():
        assert len(grid) == k + 1 and grid[0] == 1.0 and grid[-1] == ODE_EPS
        assert all(a > b for a, b in zip(grid, grid[1:]))
        assert grid[:k] == solvers.fixed_grid(sde, k, ODE_EPS, denoise_t)[0].tolist()[:k]
        assert all(any(abs(t - u) < 1e-12 for u in grids[4]) for t in grid)
    if denoise_t:
        assert grids[2] == [1.0, denoise_t, ODE_EPS] and grids[1] == [1.0, ODE_EPS]
    else:
        assert grids[4] == time_grid(sde, 4, ODE_EPS)[0].tolist()


def dpm_solver_pp_2m(prior, z, steps):
    """DPM-Solver++(2M) as its paper writes it (data prediction D, log-SNR grid, a first-order first
    and, below 10 steps, last step): the reference the fast solver follows at few steps."""
    sde = prior.sde
    t, lam = time_grid(sde, steps, ODE_EPS)
    prev = h_prev = None
    for i in range(steps):
        s, nxt, h = t[i].item(), t[i + 1].item(), (lam[i + 1] - lam[i]).item()
        eps = prior.eps(z, s)
        x0 = (z - sde.sigma(torch.tensor(s)) * eps) / sde.mean_coef(torch.tensor(s))
        d = x0 if prev is None or (i == steps - 1 and steps < 10) else x0 + h / (2 * h_prev) * (x0 - prev)
        z = sde.sigma(torch.tensor(nxt)) / sde.sigma(torch.tensor(s)) * z \
            + sde.mean_coef(torch.tensor(nxt)) * -math.expm1(-h) * d
        prev, h_prev = x0, h
    return z


def test_the_fast_solver_at_few_steps_is_dpm_solver_pp_2m_and_beats_third_order_there(monkeypatch):
    """A Gaussian mixture under the linear VPSDE (closed-form eps_hat; the reference is dopri5 at 1e-9):
    below solvers.FEW_STEPS the fast solver is DPM-Solver++(2M) to round-off, more accurate there than
    its third-order update, which wins from 10 steps on (RMS errors measured: 5 steps 0.345 against
    0.446; 10 steps 0.124 against 0.174 for 2M; 20 steps 0.0078 against 0.065)."""
    prior = MixturePrior(SDES["vpsde"])
    z1 = torch.randn(400, *prior.shape, generator=torch.Generator().manual_seed(1))
    exact = sample(Wrap(prior), 400, "ode", atol=1e-9, rtol=1e-9, z1=z1).z0

    def rms(steps):
        return (sample(Wrap(prior), 400, "fast", steps=steps, z1=z1).z0 - exact).pow(2).mean().sqrt().item()

    for steps in (3, 5, 8):
        assert torch.allclose(sample(Wrap(prior), 400, "fast", steps=steps, z1=z1).z0,
                              dpm_solver_pp_2m(prior, z1, steps), atol=5e-5)  # float32 round-off (1e-5 of 3.9)
    few = {n: rms(n) for n in (5, 10, 20)}
    monkeypatch.setattr(solvers, "FEW_STEPS", 0)  # the third-order update at every step count
    third = {n: rms(n) for n in (5, 10, 20)}
    assert few[5] < 0.85 * third[5], (few, third)
    assert few[10] == third[10] and few[20] == third[20]  # from FEW_STEPS on, one update
    assert third[10] < 0.8 * (dpm_2m := (dpm_solver_pp_2m(prior, z1, 10) - exact).pow(2).mean().sqrt().item()), dpm_2m


def test_exponential_integrator_weights_match_their_closed_forms():
    lam_s, lam_t = -1.5, -0.8
    h = lam_t - lam_s
    m = lambda lam: math.sqrt(1.0 / (1.0 + math.exp(-2.0 * lam)))  # noqa: E731
    phi, (w0, w1) = exp_weights(lam_s, lam_t, torch.tensor([1.0, 0.0]), [lam_s, lam_s - 0.4])
    # alpha = 1: DPM-Solver++ (sigma_t/sigma_s, m_t (1 - e^-h), m_t (h - 1 + e^-h))
    assert phi[0].item() == pytest.approx(math.sqrt((1 + math.exp(2 * lam_s)) / (1 + math.exp(2 * lam_t))), rel=1e-12)
    assert w0[0].item() == pytest.approx(m(lam_t) * (1 - math.exp(-h)), rel=1e-12)
    assert w1[0].item() == pytest.approx(m(lam_t) * (h - 1 + math.exp(-h)), rel=1e-12)
    # alpha = 0: no propagation of z, and int m dlambda = asinh(e^lambda)
    assert phi[1].item() == 1.0
    assert w0[1].item() == pytest.approx(math.asinh(math.exp(lam_t)) - math.asinh(math.exp(lam_s)), rel=1e-12)


def test_exponential_integrator_weights_for_all_steps_at_once_equal_the_per_step_ones():
    _, lam = time_grid(GeometricVPSDE(), 10)
    alpha = torch.tensor([1.0, 0.0, 0.3])
    nodes = lam[(torch.arange(10)[:, None] - torch.arange(3)[None]).clamp(min=0)]
    phis, ws = exp_weights(lam[:-1], lam[1:], alpha, nodes)
    assert phis.shape == (10, 3) and ws.shape == (10, 3, 3)
    for i in range(10):
        history = [lam[j].item() for j in range(i, max(-1, i - 3), -1)]  # what step i has
        phi, w = exp_weights(lam[i].item(), lam[i + 1].item(), alpha, history)
        assert torch.allclose(phi, phis[i], rtol=1e-12, atol=0)
        assert torch.allclose(w, ws[i, :len(history)], rtol=1e-12, atol=1e-15)


def test_time_grid_is_uniform_in_log_snr_and_spans_one_to_ode_eps():
    t, lam = time_grid(GeometricVPSDE(), 10)
    assert t[0].item() == 1.0 and t[-1].item() == ODE_EPS
    assert torch.all(t[1:] < t[:-1])
    assert torch.allclose(lam[1:] - lam[:-1], (lam[1] - lam[0]).expand(10))


# seeds, options, bad input ---------------------------------------------------------------------------
def test_batching_temperature_trajectory_and_callback():
    model = Wrap(random_prior())
    full = sample(model, 6, "fast", steps=6, alpha=0.5, temperature=0.5, record_times=3)
    chunked = sample(model, 6, "fast", steps=6, alpha=0.5, temperature=0.5, record_times=3, batch_size=4)
    assert torch.allclose(full.z0, chunked.z0, rtol=1e-5, atol=1e-5)  # batch-size-dependent conv kernels
    assert full.nfe == 7 and chunked.nfe == 14  # 6 steps, and z0_hat at t_end for the record
    z1 = torch.randn(6, *model.prior.shape, generator=torch.Generator().manual_seed(0))
    traj = full.trajectory
    assert torch.equal(traj.zt[0], 0.5 * z1) and torch.equal(traj.zt[-1], full.z0)
    assert traj.times[0].item() == 1.0 and traj.times[-1].item() == pytest.approx(ODE_EPS)
    assert traj.zt.shape == traj.z0_hat.shape == (3, 6, *model.prior.shape)
    assert len(traj.step_sizes) == len(traj.step_times) == 6
    seen = []
    sample(model, 2, "ode", atol=1e-3, rtol=1e-3, alpha=0.5, callback=seen.append)
    assert seen and seen[-1]["nfe"] == len(seen) and 0.0 <= seen[-1]["done"] <= 1.0

    class Stop(Exception):
        pass

    def cancel(info):
        if info["nfe"] == 3:
            raise Stop
    with pytest.raises(Stop):
        sample(model, 2, "sde", steps=50, callback=cancel)


@pytest.mark.parametrize("kw,match", [({"num": 0}, "positive"), ({"solver": "euler"}, "unknown solver"),
                                      ({"solver": "ode", "atol": 0.0}, "positive"),
                                      ({"solver": "ode", "steps": 5}, "atol and rtol"),
                                      ({"steps": 0}, "at least 1"), ({"record_times": [2.0]}, "record_times")])
def test_sample_rejects_bad_arguments(kw, match):
    args = {"num": 2, **kw}
    with pytest.raises(ValueError, match=match):
        sample(Wrap(random_prior()), args.pop("num"), **args)


# the tiny trained LSGM ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tiny_checkpoints):
    from lsgm_core import load_model

    return load_model(tiny_checkpoints["stage2"])


@pytest.fixture(scope="module")
def test_images(data_dir):
    from lsgm_core.data import load_dataset

    x, _ = load_dataset("binarized-mnist", "test", data_dir).batch(torch.arange(8), torch.Generator().manual_seed(0))
    return x


def test_encode_then_decode_returns_the_latent(tiny, test_images):
    # alpha = 1 switches the mixing off and gives the bare network's field: the tiny model's learned
    # alpha (~0.0025) moves z by only ~5e-4 between t = 0 and 1, too little to test anything
    with torch.no_grad():
        z0 = tiny.encode(test_images)[0]
    z1, _ = ode_encode(tiny.prior, z0, alpha=1.0)
    back, _ = ode_decode(tiny.prior, z1, alpha=1.0)
    assert (z1 - z0).abs().max().item() > 5e-2  # the round trip went somewhere
    assert (back - z0).abs().max().item() < 5e-3  # at atol = rtol = 1e-5, latents of size ~4


def test_nfe_grows_as_the_tolerance_tightens(tiny):
    nfe = [sample(tiny, 8, "ode", atol=tol, rtol=tol, alpha=1.0).nfe for tol in (1e-2, 1e-3, 1e-4)]
    assert nfe[0] < nfe[1] < nfe[2]


@pytest.mark.parametrize("alpha,tol", [(None, 2e-3), (1.0, 2e-2)])
def test_fast_solver_agrees_with_the_adaptive_ode(tiny, alpha, tol):
    """20 fast steps against dopri5 at 1e-5 from the same z1, max |dz0| (latents of size ~4).

    Measured against dopri5 at 1e-7: learned alpha, fast 7e-6 and dopri5 at 1e-5 3e-4 (the field is
    nearly zero); alpha = 1, fast 7e-3 (20 NFE) and dopri5 at 1e-5 1.2e-3 (98 NFE).
    """
    ref = sample(tiny, 16, "ode", atol=1e-5, rtol=1e-5, alpha=alpha)
    fast = sample(tiny, 16, "fast", steps=20, alpha=alpha)
    assert fast.nfe == 20
    assert (fast.z0 - ref.z0).abs().max().item() < tol
    assert (fast.images - ref.images).abs().max().item() < tol


def test_interpolation_modes(tiny, test_images):
    with torch.no_grad():
        mu = tiny.encode(test_images[:2])[0]
    for mode in ("linear_z0", "slerp_z1"):
        images, z0 = interpolate(tiny, test_images[0], test_images[1], 5, mode=mode)
        assert images.shape == (5, 1, 28, 28) and z0.shape == (5, *tiny.latent_shape)
        assert torch.allclose(z0[[0, -1]], mu, atol=1e-3)
    with pytest.raises(ValueError, match="mode"):
        interpolate(tiny, test_images[0], test_images[1], 5, mode="cubic")


def test_ode_solve_only_takes_adaptive_methods():
    with pytest.raises(ValueError, match="unknown ODE method"):
        ode_solve(random_prior(), torch.zeros(1, 2, 4, 4), 1.0, ODE_EPS, method="rk4")


def test_an_ode_solve_that_cannot_proceed_is_a_clear_error():
    """A field with a non-finite value (as a degenerate input can give) drives dopri5's step size to
    zero; torchdiffeq says so with an AssertionError, which reaches the user as what to do."""
    class Broken(GaussianPrior):
        def eps(self, z, t, alpha=None):
            return torch.where(torch.as_tensor(t).reshape(-1)[:1] < 0.5, torch.nan, 1.0) * super().eps(z, t)

    with pytest.raises(ValueError, match="could not meet atol=0.001, rtol=0.001.*fast solver"):
        sample(Wrap(Broken(SDES["vpsde"], c=0.3)), 2, "ode", atol=1e-3, rtol=1e-3)
