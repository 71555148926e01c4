"""One contract for every solver of the registry (lsgm_core.solvers.SOLVERS), as diffusers runs one
test class over all its schedulers: a solver added there is tested here without a line more."""
import argparse

import pytest
import torch
from solver_stubs import SDES, GaussianPrior, GaussianStudent, Wrap, random_model

from lsgm_core import solvers
from lsgm_core.sample import add_solver_args, solver_kwargs
from lsgm_core.solvers import ODE_EPS, SOLVERS, SolverSpec, parse_setting, sample, solver_options

torch.set_num_threads(1)
NAMES = list(SOLVERS)


def coarse_and_fine(spec: SolverSpec) -> tuple[dict, dict]:
    """A cheap setting and a more accurate one: tolerance / 1000, steps x 4 (x 16 for a stochastic
    solver, whose weak error falls as 1 / steps), or the fewest and most steps a solver takes."""
    if spec.controlled_by == "tolerance":
        return {"atol": 1e-3, "rtol": 1e-3}, {"atol": 1e-6, "rtol": 1e-6}
    if spec.steps_choices is not None:
        return {"steps": spec.steps_choices[0]}, {"steps": spec.steps_choices[-1]}
    return ({"steps": 16}, {"steps": 256}) if spec.stochastic else ({"steps": 8}, {"steps": 32})


def gaussian_model(sde: str) -> Wrap:
    """Data N(0, 0.3^2 I) with its exact score, and its exact distilled student."""
    prior = GaussianPrior(SDES[sde], c=0.3)
    return Wrap(prior, GaussianStudent(prior, ODE_EPS))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sde", list(SDES))
def test_converges_to_the_gaussian_closed_form(name, sde):
    """Data N(0, c^2 I): the flow maps z1 to z1 s_t / s_1 (solver_stubs); the SDE's samples have std c;
    an exact student gives the flow's end in any of its step counts."""
    spec, model = SOLVERS[name], gaussian_model(sde)
    prior = model.prior
    coarse, fine = coarse_and_fine(spec)
    if spec.stochastic:
        # the std of 2,000 x 32 values, against s_t at the end: Monte Carlo error 0.3 %; the
        # Euler-Maruyama bias, measured: geometric 3.6 % / 0.04 % at 16 / 256 steps, vpsde 22 % / 0.9 %
        err = {k: abs(sample(model, 2000, name, seed=0, **o).z0.std().item() / prior.s(ODE_EPS).item() - 1.0)
               for k, o in (("coarse", coarse), ("fine", fine))}
        assert err["fine"] < 0.02 and err["fine"] < err["coarse"]
        return
    z1 = torch.randn(8, *prior.shape, generator=torch.Generator().manual_seed(0))
    exact = z1 * (prior.s(ODE_EPS) / prior.s(1.0)).float()
    err = {k: (sample(model, 8, name, z1=z1, **o).z0 - exact).abs().max().item() / exact.abs().max().item()
           for k, o in (("coarse", coarse), ("fine", fine))}
    assert err["fine"] < 2e-3 and err["fine"] <= err["coarse"] + 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_exact_at_alpha_zero(name):
    """At alpha = 0 the prior is N(0, I) and its flow the identity: deterministic solvers return z1
    (the fast one to the bit, the adaptive ODE to its dense output's round-off), the SDE keeps N(0, I).
    A solver that does not take alpha refuses it, and passes channels the prior marks inactive through."""
    spec, model = SOLVERS[name], random_model()
    if not spec.takes_alpha:
        with pytest.raises(ValueError, match="alpha does not apply"):
            sample(model, 2, name, alpha=0.0)
        model.prior.active.zero_()
        model.student.active.zero_()
        z1 = torch.randn(4, *model.prior.shape, generator=torch.Generator().manual_seed(1))
        assert torch.equal(sample(model, 4, name, z1=z1).z0, z1)
        return
    if spec.stochastic:
        out = sample(model, 512, name, alpha=0.0, seed=3, steps=100)
        assert abs(out.z0.std().item() - 1.0) < 0.05 and abs(out.z0.mean().item()) < 0.05
        return
    z1 = torch.randn(16, *model.prior.shape, generator=torch.Generator().manual_seed(1))
    assert (sample(model, 16, name, alpha=0.0, z1=z1).z0 - z1).abs().max().item() < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_nfe_is_counted_per_call(name):
    spec, model = SOLVERS[name], random_model()
    options = coarse_and_fine(spec)[0]
    seen = []
    alpha = 0.5 if spec.takes_alpha else None
    first = sample(model, 6, name, alpha=alpha, batch_size=4, callback=seen.append, **options)
    again = sample(model, 6, name, alpha=alpha, batch_size=4, **options)
    assert first.nfe == again.nfe == len(seen) == seen[-1]["nfe"] > 0  # not carried over between calls
    if spec.controlled_by == "steps":
        assert first.nfe == 2 * options["steps"]  # two batches, one evaluation a step


@pytest.mark.parametrize("name", NAMES)
def test_the_same_seed_gives_the_same_samples_decoded_or_not(name):
    model, options = random_model(), coarse_and_fine(SOLVERS[name])[0]
    kw = {"alpha": 0.5} if SOLVERS[name].takes_alpha else {}
    a = sample(model, 4, name, seed=7, **kw, **options).z0
    assert torch.equal(a, sample(model, 4, name, seed=7, **kw, **options).z0)
    assert not torch.allclose(a, sample(model, 4, name, seed=8, **kw, **options).z0)
    latents_only = sample(model, 4, name, seed=7, **kw, **options, decode=False)  # the same z0, no images
    assert torch.equal(latents_only.z0, a) and latents_only.images is None


@pytest.mark.parametrize("name", NAMES)
def test_bad_arguments_are_refused(name):
    spec, model = SOLVERS[name], random_model()
    wrong_kind = {"atol": 1e-3} if spec.controlled_by == "steps" else {"steps": 5}
    with pytest.raises(ValueError, match="apply to|applies to"):
        sample(model, 2, name, **wrong_kind)
    bad_value = {"steps": 0} if spec.controlled_by == "steps" else {"atol": 0.0}
    with pytest.raises(ValueError, match="at least 1|positive"):
        sample(model, 2, name, **bad_value)
    if spec.steps_choices is not None:
        with pytest.raises(ValueError, match="must be one of"):
            sample(model, 2, name, steps=max(spec.steps_choices) + 1)


@pytest.mark.parametrize("name", NAMES)
def test_records_a_trajectory_from_one_to_the_end(name):
    model, options = random_model(), coarse_and_fine(SOLVERS[name])[1]
    kw = {"alpha": 0.5} if SOLVERS[name].takes_alpha else {}
    out = sample(model, 3, name, record_times=3, seed=0, **kw, **options)
    traj = out.trajectory
    assert traj.times[0].item() == 1.0 and traj.times[-1].item() == pytest.approx(ODE_EPS)
    assert torch.equal(traj.zt[-1], out.z0) and traj.zt.shape == traj.z0_hat.shape
    assert traj.step_sizes and all(h > 0 for h in traj.step_sizes)


def test_adding_a_solver_is_one_function_and_one_entry(monkeypatch):
    """Probability-flow Euler in log-SNR steps, registered at run time: sample, the CLI's options and
    the setting parser of bench take it with no other change."""
    def euler(field, z, *, t_end, steps, atol=None, rtol=None, generator=None, observer=None):
        t, _ = solvers.time_grid(field.prior.sde, steps, t_end)
        for i in range(steps):
            z = z - (t[i] - t[i + 1]).item() * field.drift(t[i].item(), z)
        if observer is not None:
            observer.state(t_end, z)
        return z

    monkeypatch.setitem(SOLVERS, "euler", SolverSpec(euler, "steps", "Euler on the probability-flow ODE",
                                                     default_steps=50))
    prior = GaussianPrior(SDES["vpsde"], c=0.3)
    z1 = torch.randn(4, *prior.shape, generator=torch.Generator().manual_seed(0))
    out = sample(Wrap(prior), 4, "euler", z1=z1, steps=200)
    exact = z1 * (prior.s(ODE_EPS) / prior.s(1.0)).float()
    assert out.nfe == 200 and (out.z0 - exact).abs().max().item() < 0.05 * exact.abs().max().item()
    assert parse_setting("euler:10") == {"solver": "euler", "steps": 10}
    ap = argparse.ArgumentParser()
    add_solver_args(ap)
    assert solver_kwargs(ap.parse_args(["--solver", "euler"])) == {"steps": 50, "runtime": "torch"}
    with pytest.raises(ValueError, match="--atol and --rtol apply"):
        solver_kwargs(ap.parse_args(["--solver", "euler", "--atol", "1e-3"]))
    assert solver_options("euler") == {"steps": 50}


DENOISERS = [n for n, s in SOLVERS.items() if s.denoises]


@pytest.mark.parametrize("name", DENOISERS)
@pytest.mark.parametrize("sde", list(SDES))
def test_denoising_ends_at_the_posterior_mean_of_the_flow_at_denoise_t(name, sde):
    """Data N(0, c^2 I): the flow takes z1 to z_T = z1 s_T / s_1 and the jump gives E[z0 | z_T] =
    m_T c^2 / s_T^2 z_T; the SDE's z_T ~ N(0, s_T^2) makes its samples' std m_T c^2 / s_T. The jump is
    the last of a fixed-step solver's steps (one step: the jump from t = 1), one evaluation more for the ODE."""
    spec, model, T = SOLVERS[name], gaussian_model(sde), 0.1
    prior = model.prior
    m_T = prior.sde.mean_coef(torch.tensor(T, dtype=torch.float64))
    posterior_mean = (m_T * prior.c ** 2 / prior.s(T) ** 2).item()
    coarse, fine = coarse_and_fine(spec)
    if spec.stochastic:
        std = sample(model, 2000, name, seed=0, denoise_t=T, **fine).z0.std().item()
        assert std == pytest.approx(posterior_mean * prior.s(T).item(), rel=0.02)  # Monte Carlo error 0.3 %
        return
    z1 = torch.randn(8, *prior.shape, generator=torch.Generator().manual_seed(0))
    exact = z1 * (prior.s(T) / prior.s(1.0) * posterior_mean).float()
    out = sample(model, 8, name, z1=z1, denoise_t=T, **fine)
    assert (out.z0 - exact).abs().max().item() < 2e-3 * exact.abs().max().item()
    if spec.controlled_by == "steps":
        assert out.nfe == fine["steps"]
        one = sample(model, 8, name, z1=z1, denoise_t=T, steps=1)  # the jump from t = 1 itself
        assert torch.equal(one.z0, solvers.ProbabilityFlow(prior).z0_hat(z1, 1.0)) and one.nfe == 1


@pytest.mark.parametrize("name", DENOISERS)
def test_a_denoised_trajectory_ends_with_the_sample_at_the_end_time(name):
    model, options = random_model(), coarse_and_fine(SOLVERS[name])[0]
    out = sample(model, 3, name, record_times=[1.0, 0.3, 0.05, ODE_EPS], seed=0, alpha=0.5, denoise_t=0.2, **options)
    traj = out.trajectory
    assert traj.times[0].item() == 1.0 and traj.times[-1].item() == pytest.approx(ODE_EPS)
    assert torch.equal(traj.zt[-1], out.z0)
    assert traj.step_times[-1] == pytest.approx(0.2) and traj.step_sizes[-1] == pytest.approx(0.2 - ODE_EPS)


def test_the_model_sets_the_denoising_time_and_a_call_overrides_it():
    model = gaussian_model("vpsde")
    z1 = torch.randn(4, *model.prior.shape, generator=torch.Generator().manual_seed(0))
    model.config = {"sampling": {"denoise_t": 0.1}}
    own = sample(model, 4, "fast", z1=z1).z0
    assert torch.equal(own, sample(model, 4, "fast", z1=z1, denoise_t=0.1).z0)
    assert not torch.allclose(own, sample(model, 4, "fast", z1=z1, denoise_t=0.0).z0)
    assert torch.equal(sample(model, 4, "distilled", z1=z1).z0, sample(model, 4, "distilled", z1=z1, denoise_t=0.0).z0)


@pytest.mark.parametrize("kw,match", [({"solver": "distilled", "denoise_t": 0.1}, "applies to the ode, sde, fast"),
                                      ({"denoise_t": 1.0}, r"must be 0 \(no denoising\) or lie in"),
                                      ({"denoise_t": -0.1}, "must be 0"), ({"denoise_t": 1e-6}, "must be 0")])
def test_bad_denoising_times_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        sample(random_model(), 2, **kw)
    ap = argparse.ArgumentParser()
    add_solver_args(ap)
    argv = ["--solver", kw.get("solver", "fast"), "--denoise-t", str(kw["denoise_t"])]
    with pytest.raises(ValueError, match="--denoise-t"):
        solver_kwargs(ap.parse_args(argv))
