"""Samplers of the score-based prior: probability-flow ODE, reverse SDE and a fast exponential integrator.

All of them integrate from t = 1 down to ODE_EPS and work for any model whose `prior` is a
ScorePrior (LSGM, or the pixel baseline PixelSGM whose "latent" is the image in [-1, 1]).

End time. Training draws t in [t_eps, 1] (t_eps = 0.01); sampling and likelihood stop at
ODE_EPS = 1e-5, the paper's protocol. For the default geometric VPSDE this is
almost the same point: sigma(1e-5) = 0.01000 against sigma(t_eps) = 0.01047 (sigma2_min = 1e-4
means sigma(0) = 0.01 and m(0) = 0.99995), so the network is asked barely outside its training
range and z(ODE_EPS) still carries the SDE's noise floor of 0.01, far below the encoder's own
posterior width. For the linear VPSDE sigma falls from 0.045 to 0.001 below t_eps = 0.01, a range
the network never saw: train such models with a smaller t_eps, or pass t_end to `ode_solve`
(or to ode_encode / ode_decode).

Denoising time. A model may set `sampling.denoise_t` (`denoise_time`): the fast, ODE and SDE
solvers then stop the flow there and end with one jump to z0_hat = E[z0 | z_t] (`denoise`), the last
of a fixed-step solver's steps (docs/method.md, section 5.5). The likelihood and the encoders
(`ode_encode`, `fast_encode`) always run the whole flow.

In log-SNR time lambda = log(m_t / sigma_t) (dlambda/dt = -beta / (2 sigma^2) for every VP SDE)
the probability-flow ODE reads dz/dlambda = sigma^2 z - sigma eps_hat. With the mixed score
eps_hat = (1 - alpha) sigma z + alpha eps_theta this is

    dz/dlambda = -alpha m^2 z + m v,    v = alpha x0_theta = (alpha z - sigma (eps_hat - (1 - alpha) sigma z)) / m

whose linear part has the exact propagator (sigma_t / sigma_s)^alpha per channel. The fast
solver integrates that part exactly and v as the polynomial in lambda through its last three
evaluations (a multistep exponential integrator in the family of DPM-Solver++(3M), which it
becomes at alpha = 1, the pixel baseline, up to integrating the quadratic term exactly where
DPM-Solver++(3M) weights it by half as much); at alpha = 0 it is exact: v = 0 and z stays
z1 ~ N(0, I). Below FEW_STEPS steps it takes DPM-Solver++(2M)'s update instead, more accurate
there. Derivation: docs/method.md, section 5.
"""
from __future__ import annotations

import itertools
import numbers
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchdiffeq import odeint

from .runtime import RUNTIMES, check_runtime, student_on
from .student import STEPS as STUDENT_STEPS, coefficient, move as student_move
from .tensors import per_channel, per_sample, seeded_generator

ODE_EPS = 1e-5
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")  # torchdiffeq's, for ode_solve
# the fast solver's multistep order (its first steps use the history they have). Third order against
# second, 20 steps, max |z0 - z0_exact|: Gaussian data 7e-4..7e-3 relative against 1e-2..4e-2; the tiny
# trained model at alpha = 1, 7e-3 against 5e-2 (dopri5 at 1e-7 as reference)
FAST_ORDER = 3
# Below FEW_STEPS steps the fast solver takes DPM-Solver++(2M)'s update instead (second order, the
# difference term weighted by h/2 times the first-order weight, a first-order last step), which wins
# there: on a 4-component Gaussian mixture, linear VPSDE, 5 steps, RMS error 0.35 against 0.45 for
# the third-order update; from 10 steps on the third order wins (tests/test_solvers.py)
FEW_STEPS = 10
# Gauss-Legendre nodes for the exponential-integrator weights, which have no closed form for
# fractional alpha; the integrands are smooth in lambda, so 16 nodes are exact to float64 round-off
_GL_X, _GL_W = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(16))


@dataclass
class Trajectory:
    times: torch.Tensor        # [T] the recorded times, descending from 1 to the end time
    zt: torch.Tensor           # [T, N, *latent_shape]
    z0_hat: torch.Tensor       # [T, N, *latent_shape]  (z_t - sigma_t eps_hat) / m_t
    step_sizes: list[float]    # accepted step sizes of the solver (adaptive ODE), or the fixed steps
    step_times: list[float]    # time at which each accepted step started


@dataclass
class SampleResult:
    z0: torch.Tensor           # [N, *latent_shape]
    images: torch.Tensor | None  # [N, C, H, W] float in [0, 1]; None where sample(..., decode=False)
    nfe: int                   # network evaluations of this call, summed over batches
    seconds: float
    trajectory: Trajectory | None


class ProbabilityFlow:
    """The prior's eps_hat at a fixed alpha and its probability-flow drift, counting network evaluations.

    Every solver evaluates the prior through one of these: `nfe` counts the calls, `report(t, nfe)`
    (progress, cancellation) sees each one, and `on_step(t, h)` each accepted step of an adaptive
    solve (torchdiffeq calls `callback_accept_step`).
    """

    def __init__(self, prior, alpha=None, report: Callable[[float, int], None] | None = None, student=None):
        self.prior, self.alpha, self.report, self.nfe = prior, alpha, report, 0
        self.student = student  # the model's distilled sampler (lsgm_core.student), if it has one
        self.on_step: Callable[[float, float], None] | None = None

    @staticmethod
    def _ts(t, z: torch.Tensor) -> torch.Tensor:
        """t expanded to [B] as ScorePrior.eps does, so that sigma_t z here and there agree to the last bit
        (vectorised and scalar kernels of exp may differ in the last ulp)."""
        return torch.as_tensor(t, dtype=z.dtype, device=z.device).expand(z.shape[0])

    coef = staticmethod(coefficient)  # fn(t) per sample, shaped to broadcast over z

    def _evaluated(self, t) -> None:
        self.nfe += 1
        if self.report is not None:
            self.report(float(t), self.nfe)

    def eps(self, z: torch.Tensor, t) -> torch.Tensor:
        out = self.prior.eps(z, self._ts(t, z), self.alpha)
        self._evaluated(t)
        return out

    def student_z0(self, z: torch.Tensor, t, s) -> torch.Tensor:
        """The distilled student's z0_hat at (z_t, t) for its step to time s, one network evaluation."""
        out = self.student(z, self._ts(t, z), self._ts(s, z))
        self._evaluated(t)
        return out

    def drift(self, t, z: torch.Tensor) -> torch.Tensor:
        """-beta/2 (z - eps_hat/sigma), written as beta/(2 sigma) (eps_hat - sigma z): exactly 0 at alpha = 0."""
        sigma = self.coef(self.prior.sde.sigma, t, z)
        return self.coef(self.prior.sde.beta, t, z) / (2.0 * sigma) * (self.eps(z, t) - sigma * z)

    def z0_hat(self, z: torch.Tensor, t, eps: torch.Tensor | None = None) -> torch.Tensor:
        if eps is None:
            eps = self.eps(z, t)
        return (z - self.coef(self.prior.sde.sigma, t, z) * eps) / self.coef(self.prior.sde.mean_coef, t, z)

    # torchdiffeq calls these on the function it integrates; times arrive in the original direction
    def __call__(self, t, z):
        return self.drift(t, z)

    def callback_accept_step(self, t0, y0, dt):
        if self.on_step is not None:
            self.on_step(float(t0), abs(float(dt)))


def _record_grid(record_times: int | Sequence[float], t_start: float, t_end: float) -> list[float]:
    """Requested times, ordered from t_start to t_end: an int K gives K evenly spaced ones."""
    lo, hi = min(t_start, t_end), max(t_start, t_end)
    if isinstance(record_times, numbers.Integral):
        if record_times < 2:
            raise ValueError(f"record_times as a count must be at least 2, got {record_times}")
        times = np.linspace(t_start, t_end, int(record_times)).tolist()
    else:
        times = [float(t) for t in record_times]
        bad = [t for t in times if not lo <= t <= hi]
        if bad:
            raise ValueError(f"record_times must lie in [{lo:g}, {hi:g}], got {bad[:3]}")
    return sorted(set(times), reverse=t_start > t_end)


def integrate(func, y0, times: Sequence[float], *, atol: float, rtol: float, method: str = "dopri5"):
    """torchdiffeq's odeint through `times` (monotone; y0 at the first), every step clipped at the last:
    a step past it would evaluate the SDE outside [0, 1] (geometric VPSDE: sigma^2 > 1 beyond t = 1;
    VPSDE: negative variance below t = 0), where its coefficients are NaN."""
    if method not in ADAPTIVE_METHODS:
        raise ValueError(f"unknown ODE method {method!r}; choose one of {', '.join(ADAPTIVE_METHODS)}")
    device = (y0[0] if isinstance(y0, tuple) else y0).device
    t = torch.tensor(list(times), dtype=torch.float64, device=device)
    try:
        return odeint(func, y0, t, rtol=rtol, atol=atol, method=method, options={"step_t": t[-1:]})
    except AssertionError as e:  # torchdiffeq's way of saying the step size fell to nothing
        if "underflow in dt" not in str(e):
            raise
        raise ValueError(f"the adaptive ODE solver could not meet atol={atol:g}, rtol={rtol:g} (its step size fell "
                         "to zero, a stiff or non-finite field): loosen the tolerance or use the fast solver") from None


class Recorder:
    """An observer that keeps a trajectory: the states a solver reports at or nearest the requested times.

    Solvers report every state of their path (`state(t, z, eps)`, eps where they evaluated it there)
    and every step (`step(t, h)`). A solver with dense output (the adaptive ODE) integrates through
    `times` and reports exactly there; fixed-step solvers report their own grid, and the recorder keeps
    the grid point nearest each requested time (so maybe fewer, where two times share one). Only those
    states are held, whatever the number of steps. z0_hat comes from the solver's eps where it had one,
    else from one more network evaluation (counted in the field's NFE) when the trajectory is built.
    """

    def __init__(self, record_times: int | Sequence[float], t_start: float, t_end: float):
        self.times = _record_grid(record_times, t_start, t_end)
        self._best: list[tuple[float, float, torch.Tensor, torch.Tensor | None] | None] = [None] * len(self.times)
        self.step_times: list[float] = []
        self.step_sizes: list[float] = []

    def state(self, t: float, z: torch.Tensor, eps: torch.Tensor | None = None) -> None:
        for i, r in enumerate(self.times):
            gap = abs(t - r)
            if self._best[i] is None or gap < self._best[i][0]:  # ties: the earlier state, as argmin
                self._best[i] = (gap, t, z, eps)

    def step(self, t: float, h: float) -> None:
        self.step_times.append(t)
        self.step_sizes.append(h)

    def trajectory(self, field: ProbabilityFlow) -> Trajectory:
        kept, seen = [], set()
        for best in self._best:
            if best is not None and best[1] not in seen:
                seen.add(best[1])
                kept.append(best[1:])
        z0_hat = torch.stack([field.z0_hat(z, t, eps) for t, z, eps in kept])
        return Trajectory(torch.tensor([t for t, _, _ in kept]).float(), torch.stack([z for _, z, _ in kept]),
                          z0_hat, self.step_sizes, self.step_times)


def _flow(field: ProbabilityFlow, z: torch.Tensor, t_start: float, t_end: float, atol: float, rtol: float,
          observer: Recorder | None = None, method: str = "dopri5") -> torch.Tensor:
    """The probability-flow ODE from t_start to t_end by an adaptive method, whole batch in one solve;
    an observer's times are dense-output points of the solve (no extra steps)."""
    if atol <= 0 or rtol <= 0:
        raise ValueError(f"atol and rtol must be positive, got atol={atol}, rtol={rtol}")
    lo, hi = min(t_start, t_end), max(t_start, t_end)
    wanted = [r for r in observer.times if lo <= r <= hi] if observer is not None else []
    times = sorted({t_start, t_end, *wanted}, reverse=t_start > t_end)
    field.on_step = observer.step if observer is not None else None
    with torch.no_grad():
        path = integrate(field, z, times, atol=atol, rtol=rtol, method=method)
    for r in wanted:
        observer.state(r, path[times.index(r)])
    return path[-1]


def ode_solve(prior, z: torch.Tensor, t_start: float, t_end: float, *, atol: float = 1e-5, rtol: float = 1e-5,
              alpha=None, record_times: int | Sequence[float] | None = None, method: str = "dopri5",
              callback: Callable[[dict], None] | None = None) -> tuple[torch.Tensor, int, Trajectory | None]:
    """Integrate the probability-flow ODE from t_start to t_end (either direction), whole batch in one solve.

    Returns z(t_end), the number of network evaluations, and the trajectory at record_times
    (dense output of the solver, so recording adds no steps; z0_hat costs one evaluation per time).
    The error norm is the RMS over the whole batch, as with scipy's RK45.
    """
    report = None
    if callback is not None:
        span = abs(t_start - t_end)
        report = lambda t, n: callback({"t": t, "nfe": n, "done": abs(t_start - t) / span})  # noqa: E731
    field = ProbabilityFlow(prior, alpha, report)
    recorder = Recorder(record_times, t_start, t_end) if record_times is not None else None
    z_end = _flow(field, z, t_start, t_end, atol, rtol, recorder, method)
    with torch.no_grad():
        traj = recorder.trajectory(field) if recorder is not None else None
    return z_end, field.nfe, traj


def ode_encode(prior, z0: torch.Tensor, **kw) -> tuple[torch.Tensor, int]:
    """z0 -> z1 through the probability-flow ODE (deterministic; the inverse of ode_decode)."""
    z1, nfe, _ = ode_solve(prior, z0, kw.pop("t_end", ODE_EPS), 1.0, **kw)
    return z1, nfe


def ode_decode(prior, z1: torch.Tensor, **kw) -> tuple[torch.Tensor, int]:
    """z1 -> z0 through the probability-flow ODE."""
    z0, nfe, _ = ode_solve(prior, z1, 1.0, kw.pop("t_end", ODE_EPS), **kw)
    return z0, nfe


# fixed-step solvers ----------------------------------------------------------------------------
def log_snr(sde, t: torch.Tensor) -> torch.Tensor:
    """lambda(t) = log(m_t / sigma_t)."""
    v = sde.var(t)
    return 0.5 * (torch.log1p(-v) - torch.log(v))


def time_grid(sde, steps: int, t_end: float = ODE_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """steps + 1 times from 1 to t_end, uniform in log-SNR, and their lambdas (float64).

    Uniform lambda keeps beta dt = 2 sigma^2 dlambda bounded near t = 1, where the geometric
    VPSDE's beta(t) grows to ~900: uniform t would make Euler-Maruyama steps there unstable.
    """
    ends = log_snr(sde, torch.tensor([1.0, t_end], dtype=torch.float64))
    lam = torch.linspace(ends[0].item(), ends[1].item(), steps + 1, dtype=torch.float64)
    t = sde.inv_var(torch.sigmoid(-2.0 * lam))
    t[0], t[-1] = 1.0, t_end
    return t, lam


def exp_weights(lam_s, lam_t, alpha: torch.Tensor, nodes) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel propagator phi = (sigma_t / sigma_s)^alpha of one step from lambda_s to lambda_t, and
    the weights w_k = int_{lambda_s}^{lambda_t} (sigma_t / sigma_l)^alpha m_l prod_{j<k} (l - nodes[j]) dl
    of the Newton basis on `nodes` (the latest lambdas, lambda_s first), shapes [C] and [len(nodes), C].

    For S steps at once, lam_s and lam_t are [S] tensors and nodes an [S, K] tensor: shapes [S, C]
    and [S, K, C] (one call per solve instead of one per step, which cost 0.2 ms a step on a CPU).
    """
    log_sigma = lambda lam: -0.5 * F.softplus(2.0 * lam)  # noqa: E731  sigma^2 = sigmoid(-2 lambda)
    lam_s_, lam_t_, nodes_ = (torch.as_tensor(v, dtype=torch.float64) for v in (lam_s, lam_t, nodes))
    batched = lam_s_.dim() == 1
    if not batched:
        lam_s_, lam_t_, nodes_ = lam_s_[None], lam_t_[None], nodes_[None]
    a = alpha.double()
    half = 0.5 * (lam_t_ - lam_s_)
    lam = lam_s_[:, None] + half[:, None] * (_GL_X + 1.0)  # [S, nodes of the quadrature]
    kernel = torch.exp(a[None, :, None] * (log_sigma(lam_t_)[:, None, None] - log_sigma(lam)[:, None])
                       - 0.5 * F.softplus(-2.0 * lam)[:, None])
    basis = torch.cumprod(torch.cat([torch.ones_like(lam)[:, None], lam[:, None] - nodes_[:, :-1, None]], 1), 1)
    w = torch.einsum("scg,skg->skc", kernel, basis * (half[:, None, None] * _GL_W))
    phi = torch.exp(a[None] * (log_sigma(lam_t_) - log_sigma(lam_s_))[:, None])
    return (phi, w) if batched else (phi[0], w[0])


def _newton_differences(lams: list[float], values: list[torch.Tensor]) -> list[torch.Tensor]:
    """Divided differences v[l0], v[l0, l1], v[l0, l1, l2], ... of values at lams (latest first)."""
    table, out = list(values), [values[0]]
    for k in range(1, len(values)):
        table = [(table[j] - table[j + 1]) / (lams[j] - lams[j + k]) for j in range(len(table) - 1)]
        out.append(table[0])
    return out


def _report_grid(observer: Recorder | None, t: torch.Tensor, z: torch.Tensor) -> None:
    """A fixed-step solve's end: its last state and every step of its grid."""
    if observer is None:
        return
    observer.state(t[-1].item(), z)
    for start, h in zip(t[:-1].tolist(), (t[:-1] - t[1:]).tolist()):
        observer.step(start, h)


def _observed_eps(field: ProbabilityFlow, z: torch.Tensor, s: float, observer: Recorder | None) -> torch.Tensor:
    """eps_hat at a grid point of a fixed-step solve, the state reported to the observer with it."""
    eps = field.eps(z, s)
    if observer is not None:
        observer.state(s, z, eps)
    return eps


def denoise_time(model) -> float:
    """The model's denoising time (config `sampling.denoise_t`, 0 where it has none): where the
    solvers that take it stop the flow and jump to E[z0 | z_t] (`denoise`)."""
    return float((getattr(model, "config", None) or {}).get("sampling", {}).get("denoise_t", 0.0))


def denoise(field: ProbabilityFlow, z: torch.Tensor, s: float, observer: Recorder | None) -> torch.Tensor:
    """The last step of a denoised solve: from z_s straight to z0_hat = E[z0 | z_s], one network
    evaluation (the first-order, DDIM, step from lambda_s to lambda = infinity); the caller reports
    its end as the state at t_end. Below the model's denoising time the flow only puts back noise as fine as the
    encoder's own posterior, where a prior trained with uniform t has seen few samples (docs/method.md,
    section 5)."""
    return field.z0_hat(z, s, _observed_eps(field, z, s, observer))


def fixed_grid(sde, steps: int, t_end: float, denoise_t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-SNR grid a fixed-step solver steps through: `steps` steps from 1 to t_end, or, when it
    denoises, steps - 1 of them to denoise_t (only t = 1 for one step), the jump being the last step."""
    if not denoise_t:
        return time_grid(sde, steps, t_end)
    if steps == 1:
        one = torch.ones(1, dtype=torch.float64)
        return one, log_snr(sde, one)
    return time_grid(sde, steps - 1, denoise_t)


def student_grid(sde, steps: int, denoise_t: float = 0.0, t_end: float = ODE_EPS) -> list[float]:
    """A distilled student's k-step grid: the times it evaluates at, then t_end. Those of the fast
    solver (`fixed_grid`): uniform in log-SNR from 1 to t_end, or, for a student made at a denoising
    time, k - 1 steps to it and the jump from there. The grids of 1, 2 and 4 steps nest either way."""
    t = fixed_grid(sde, steps, t_end, denoise_t)[0].tolist()
    return t + [t_end] if denoise_t else t


# The solvers. One signature: (field, z1, *, t_end, steps, atol, rtol, generator, observer) -> z(t_end),
# and denoise_t for those registered with denoises=True; each reads the options it is set by and
# ignores the others, which `solver_options` has refused.
def ode(field: ProbabilityFlow, z: torch.Tensor, *, t_end: float = ODE_EPS, steps=None, atol: float = 1e-5,
        rtol: float = 1e-5, generator=None, observer: Recorder | None = None, denoise_t: float = 0.0) -> torch.Tensor:
    """Adaptive dopri5 on the probability-flow ODE, at atol/rtol; to denoise_t and the jump (one more
    evaluation) where that is set."""
    if not denoise_t:
        return _flow(field, z, 1.0, t_end, atol, rtol, observer)
    z = denoise(field, _flow(field, z, 1.0, denoise_t, atol, rtol, observer), denoise_t, observer)
    if observer is not None:
        observer.state(t_end, z)
        observer.step(denoise_t, denoise_t - t_end)
    return z


def fast(field: ProbabilityFlow, z: torch.Tensor, *, t_end: float = ODE_EPS, steps: int = 20, atol=None, rtol=None,
         generator=None, observer: Recorder | None = None, denoise_t: float = 0.0) -> torch.Tensor:
    """The multistep exponential integrator of the probability-flow ODE (module docstring), on a
    log-SNR grid of `steps` steps, one network evaluation each (`fixed_grid`: with denoise_t, the last
    one is the jump)."""
    t, lam = fixed_grid(field.prior.sde, steps, t_end, denoise_t)
    if len(t) > 1:
        z = _exponential_integrator(field, z, t, lam, observer)
    return _end_of_grid(field, z, t, t_end, denoise_t, observer)


def _end_of_grid(field: ProbabilityFlow, z: torch.Tensor, t: torch.Tensor, t_end: float, denoise_t: float,
                 observer: Recorder | None) -> torch.Tensor:
    """A fixed-step solve's end: from the last grid time, the jump to t_end where it denoises; then
    its grid, the jump included, reported to the observer."""
    if denoise_t:
        z = denoise(field, z, t[-1].item(), observer)
        t = torch.cat([t, t.new_tensor([t_end])])
    _report_grid(observer, t, z)
    return z


def fast_encode(prior, z0: torch.Tensor, *, steps: int = 20, alpha=None, t_start: float = ODE_EPS) -> tuple[torch.Tensor, int]:
    """z0 -> z1 by the fast solver run forwards in time on its own grid of `steps` steps, reversed
    (the exponential integrator holds in either direction of lambda): the cheap inverse of `fast`."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    t, lam = time_grid(prior.sde, steps, t_start)
    field = ProbabilityFlow(prior, alpha)
    with torch.no_grad():
        z1 = _exponential_integrator(field, z0, t.flip(0), lam.flip(0), None)
    return z1, field.nfe


class _States:
    """An observer that keeps every state a fixed-step solve reports, in order."""

    def __init__(self):
        self.z: list[torch.Tensor] = []

    def state(self, t: float, z: torch.Tensor, eps: torch.Tensor | None = None) -> None:
        self.z.append(z)


def fast_states(field: ProbabilityFlow, z: torch.Tensor, times: Sequence[float], *, steps: int = 20,
                t_end: float = ODE_EPS, denoise_t: float = 0.0) -> torch.Tensor:
    """The fast solver's path from z at t = 1 through `times` (decreasing, 1 first, t_end last),
    its states there stacked as [len(times), B, ...]: a distilled student's targets (lsgm_core.distill).

    The solve is the fast solver's with `steps` network evaluations, on a log-SNR grid that holds
    each of `times` above the flow's end as a node: the pieces between them share the steps in
    proportion to their log-SNR lengths (at least one each). With denoise_t the flow stops there and
    jumps to z0_hat (`denoise`, one of the steps); the times below it lie on that jump's move, the
    DDIM line z_s = m_s z0_hat + sigma_s eps_hat, where the jump from any of them lands on z0_hat too.
    """
    times = [float(s) for s in times]
    if times[0] != 1.0 or times[-1] != t_end or any(a <= b for a, b in zip(times, times[1:])):
        raise ValueError(f"times must decrease from 1 to t_end = {t_end:g}, got {times}")
    sde = field.prior.sde
    end = denoise_t or t_end
    knots = [1.0] + [s for s in times[1:-1] if s > end] + [end]
    flow_steps = steps - 1 if denoise_t else steps
    if flow_steps < len(knots) - 1:
        raise ValueError(f"{steps} steps cannot hold the {len(knots) - 2} inner times {knots[1:-1]} as grid nodes: "
                         f"give at least {len(knots) - 1 + bool(denoise_t)}")
    lam_knots = log_snr(sde, torch.tensor(knots, dtype=torch.float64)).tolist()
    lengths = [b - a for a, b in zip(lam_knots, lam_knots[1:])]
    counts = [1] * len(lengths)
    for _ in range(flow_steps - len(lengths)):  # each further step to the piece with the longest steps
        k = max(range(len(lengths)), key=lambda i: lengths[i] / counts[i])
        counts[k] += 1
    lam = torch.cat([torch.linspace(a, b, n + 1, dtype=torch.float64)[:-1]
                     for a, b, n in zip(lam_knots, lam_knots[1:], counts)]
                    + [torch.tensor(lam_knots[-1:], dtype=torch.float64)])
    t = sde.inv_var(torch.sigmoid(-2.0 * lam))
    nodes = [0] + list(itertools.accumulate(counts))
    for i, knot in zip(nodes, knots):
        t[i] = knot  # the nodes at exactly the given times
    observer = _States()
    z_end = _exponential_integrator(field, z, t, lam, observer)
    path = {knot: (observer.z[i] if i < len(observer.z) else z_end) for i, knot in zip(nodes, knots)}
    if denoise_t:
        z0 = field.z0_hat(z_end, end)
        path.update({s: student_move(sde, z_end, z0, end, s)[1] for s in times if s < end and s != t_end})
        path[t_end] = z0
    return torch.stack([path[s] for s in times])


def _exponential_integrator(field: ProbabilityFlow, z: torch.Tensor, t: torch.Tensor, lam: torch.Tensor,
                            observer: Recorder | None) -> torch.Tensor:
    """The fast solver's steps through the times t (their log-SNRs lam), in either direction."""
    prior = field.prior
    prior_sde = prior.sde
    steps = len(t) - 1
    alpha = prior.alpha(field.alpha).detach().to(torch.float64).cpu()
    a = per_channel(alpha.to(z), z)
    # every step's weights depend on the grid and alpha alone: all of them in one call. Step i's
    # nodes are lambda_i, lambda_i-1, ...; the first steps pad theirs with lambda_0 and use only
    # the nodes and weights their history has
    order = 2 if steps < FEW_STEPS else FAST_ORDER
    nodes = lam[(torch.arange(steps)[:, None] - torch.arange(order)[None]).clamp(min=0)]
    phis, ws = exp_weights(lam[:-1], lam[1:], alpha, nodes)
    if order == 2:
        ws[:, 1] = ws[:, 0] * (lam[1:] - lam[:-1])[:, None] / 2.0
        ws[-1, 1] = 0.0
    phis, ws = phis.to(z), ws.to(z)
    hist_v: list[torch.Tensor] = []  # the latest v, newest first, for the multistep update
    for i in range(steps):
        s = t[i].item()
        eps = _observed_eps(field, z, s, observer)
        sigma, m = field.coef(prior_sde.sigma, s, z), field.coef(prior_sde.mean_coef, s, z)
        v = (a * z - sigma * (eps - (1.0 - a) * (sigma * z))) / m
        hist_v = [v] + hist_v[:order - 1]
        z_next = per_channel(phis[i], z) * z
        for w_k, d_k in zip(ws[i], _newton_differences(nodes[i, :len(hist_v)].tolist(), hist_v)):
            z_next = z_next + per_channel(w_k, z) * d_k
        z = z_next
    return z


def sde(field: ProbabilityFlow, z: torch.Tensor, *, t_end: float = ODE_EPS, steps: int = 1000, atol=None,
        rtol=None, generator: torch.Generator | None = None, observer: Recorder | None = None,
        denoise_t: float = 0.0) -> torch.Tensor:
    """Euler-Maruyama on the reverse SDE, on a log-SNR grid of `steps` steps; the last one without
    noise, or with denoise_t the jump (`fixed_grid`). The noise comes from `generator` (a CPU one),
    so a seed gives the same samples anywhere."""
    prior_sde = field.prior.sde
    t, _ = fixed_grid(prior_sde, steps, t_end, denoise_t)
    moves = len(t) - 1
    for i in range(moves):
        s = t[i].item()
        eps = _observed_eps(field, z, s, observer)
        sigma, beta = field.coef(prior_sde.sigma, s, z), field.coef(prior_sde.beta, s, z)
        dt = s - t[i + 1].item()
        z_next = z - dt * (0.5 * beta * z + beta / sigma * (eps - sigma * z))
        if i < moves - 1 or denoise_t:
            noise = torch.randn(z.shape, generator=generator).to(z)
            z_next = z_next + (beta * dt).sqrt() * noise
        z = z_next
    return _end_of_grid(field, z, t, t_end, denoise_t, observer)


NO_STUDENT = ("this model has no distilled student: make one with python -m lsgm_core.distill --checkpoint C --out D, "
              "then sample from D")


def distilled(field: ProbabilityFlow, z: torch.Tensor, *, t_end: float = ODE_EPS, steps: int = 1, atol=None,
              rtol=None, generator=None, observer: Recorder | None = None) -> torch.Tensor:
    """The model's distilled student (lsgm_core.student) in `steps` evaluations on the log-SNR grid:
    z0_hat at each time, then a deterministic move to the next along eps_hat."""
    student = field.student
    if student is None:
        raise ValueError(NO_STUDENT)
    if steps not in student.steps:
        raise ValueError(f"the student was distilled for {', '.join(map(str, student.steps))} steps, not {steps}")
    prior_sde = field.prior.sde
    t = student_grid(prior_sde, steps, student.denoise_t, t_end)
    for i in range(steps):
        s = t[i]
        z0_hat = field.student_z0(z, s, t[i + 1])
        eps, z_next = student_move(prior_sde, z, z0_hat, s, t[i + 1] if i < steps - 1 else None)
        if observer is not None:
            observer.state(s, z, eps)
        z = z_next
    _report_grid(observer, torch.tensor(t), z)
    return z


@dataclass(frozen=True)
class SolverSpec:
    """A sampler as `sample`, the CLIs, `bench` and the app see it."""
    fn: Callable[..., torch.Tensor]
    controlled_by: str                 # "steps" (fixed steps) or "tolerance" (atol and rtol of an adaptive method)
    label: str                         # a short description for --help and the app
    default_steps: int | None = None   # for "steps"
    default_tol: float | None = None   # for "tolerance": atol = rtol
    stochastic: bool = False           # draws noise of its own beyond z1 (then batch_size changes samples)
    takes_alpha: bool = True           # False: the prior's mixing coefficients do not enter it
    steps_choices: tuple[int, ...] | None = None  # the only step counts it takes (None: any from 1)
    student_decoder: bool = False      # decodes through the student's distilled decoder where there is one
    runtimes: tuple[str, ...] = ("torch",)  # lsgm_core.runtime's runtimes its networks can run on
    needs_student: bool = False        # runs the model's distilled student (lsgm_core.student)
    denoises: bool = False             # takes denoise_t: ends with the jump to E[z0 | z_t] (`denoise`)


# Adding a solver: one function with the signature above and one entry here.
SOLVERS: dict[str, SolverSpec] = {
    "ode": SolverSpec(ode, "tolerance", "adaptive dopri5 on the probability-flow ODE", default_tol=1e-5,
                      denoises=True),
    "sde": SolverSpec(sde, "steps", "Euler-Maruyama on the reverse SDE", default_steps=1000, stochastic=True,
                      denoises=True),
    "fast": SolverSpec(fast, "steps", "multistep exponential integrator of the probability-flow ODE",
                       default_steps=20, denoises=True),
    # a student learned the flow at the model's own alpha: an override has nothing to act on
    "distilled": SolverSpec(distilled, "steps", "the model's distilled student (python -m lsgm_core.distill)",
                            default_steps=1, takes_alpha=False, steps_choices=STUDENT_STEPS, student_decoder=True,
                            runtimes=RUNTIMES, needs_student=True),
}


def check_model_for(model, solver: str) -> None:
    """Refuses a solver the model cannot run (the distilled one without a student) before any work."""
    if SOLVERS[solver].needs_student and getattr(model, "student", None) is None:
        raise ValueError(NO_STUDENT)


def check_denoise_t(solver: str, denoise_t: float | None, model=None, flag: Callable[[str], str] = str) -> dict:
    """{"denoise_t": T} for a solver that takes it (T: `denoise_t`, or the model's where None), else {};
    a denoising time asked of a solver that does not take one, or outside [0, 1), is refused."""
    spec = SOLVERS[solver]
    if denoise_t is not None:
        if not spec.denoises and denoise_t:
            raise ValueError(f"{flag('denoise_t')} applies to the {', '.join(solvers_that_denoise())} solvers, not {solver}")
        if not (denoise_t == 0 or ODE_EPS < denoise_t < 1):
            raise ValueError(f"{flag('denoise_t')} must be 0 (no denoising) or lie in ({ODE_EPS:g}, 1), got {denoise_t}")
    if not spec.denoises:
        return {}
    return {"denoise_t": float(denoise_time(model) if denoise_t is None else denoise_t)}


def solvers_that_denoise() -> list[str]:
    """The registered solvers that take a denoising time (`SolverSpec.denoises`), in registry order."""
    return [name for name, spec in SOLVERS.items() if spec.denoises]


def solvers_set_by(kind: str) -> list[str]:
    """The registered solvers set by "steps" or by "tolerance", in registry order."""
    return [name for name, spec in SOLVERS.items() if spec.controlled_by == kind]


def solvers_on(runtime: str) -> list[str]:
    """The registered solvers whose networks run on `runtime` (every one runs on "torch"), in registry order."""
    return [name for name, spec in SOLVERS.items() if runtime in spec.runtimes]


def solver_options(solver: str, steps: int | None = None, atol: float | None = None, rtol: float | None = None,
                   flag: Callable[[str], str] = str) -> dict:
    """The checked options of `solver`, defaults filled in: {"steps": N} or {"atol": a, "rtol": r}.

    Options of the other kind are refused, not ignored. `flag` names the options in messages
    (the CLI passes lambda n: "--" + n).
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    spec = SOLVERS[solver]
    if spec.controlled_by == "tolerance":
        if steps is not None:
            raise ValueError(f"{flag('steps')} applies to the {', '.join(solvers_set_by('steps'))} solvers; the {solver} solver "
                             f"is set by {flag('atol')} and {flag('rtol')}")
        options = {"atol": spec.default_tol if atol is None else atol, "rtol": spec.default_tol if rtol is None else rtol}
        for name, value in options.items():
            if not value > 0:
                raise ValueError(f"{flag(name)} must be positive, got {value}")
        return options
    if atol is not None or rtol is not None:
        raise ValueError(f"{flag('atol')} and {flag('rtol')} apply to the {', '.join(solvers_set_by('tolerance'))} solvers; "
                         f"the {solver} solver takes {flag('steps')}")
    steps = spec.default_steps if steps is None else steps
    if steps < 1:
        raise ValueError(f"{flag('steps')} must be at least 1, got {steps}")
    if spec.steps_choices is not None and steps not in spec.steps_choices:
        raise ValueError(f"{flag('steps')} must be one of {', '.join(map(str, spec.steps_choices))} for the {solver} "
                         f"solver, got {steps}")
    return {"steps": int(steps)}


def setting_forms() -> str:
    """How to write a setting of each registered solver: "ode:TOL, sde:STEPS, fast:STEPS", and
    "[@RUNTIME]" after those whose networks run on more than one runtime."""
    return ", ".join(f"{n}:{'TOL' if s.controlled_by == 'tolerance' else 'STEPS'}"
                     + (f"[@{'|'.join(s.runtimes[1:])}]" if len(s.runtimes) > 1 else "") for n, s in SOLVERS.items())


def check_runtime_for(solver: str, runtime: str) -> None:
    check_runtime(runtime)
    if runtime not in SOLVERS[solver].runtimes:
        raise ValueError(f"the {solver} solver runs on {', '.join(SOLVERS[solver].runtimes)}, not {runtime}; the "
                         f"{runtime} runtime serves the {', '.join(solvers_on(runtime))} "
                         "solver")


def parse_setting(text: str) -> dict:
    """"ode:1e-5" (atol = rtol), "fast:10" (steps) or "distilled:1@onnxruntime" (steps, runtime) ->
    sample()'s keyword arguments, checked."""
    setting, _, runtime = text.partition("@")
    solver, _, value = setting.partition(":")
    spec = SOLVERS.get(solver)
    try:
        if spec is None or not value:
            raise ValueError
        if spec.controlled_by == "tolerance":
            options = {"solver": solver, **solver_options(solver, atol=float(value), rtol=float(value))}
        else:
            options = {"solver": solver, **solver_options(solver, steps=int(value))}
    except ValueError:
        raise ValueError(f"solver setting {text!r}: write {setting_forms()} (TOL > 0, STEPS > 0)") from None
    if runtime:
        check_runtime_for(solver, runtime)
        options["runtime"] = runtime
    return options


# sampling ----------------------------------------------------------------------------------------
def _model_device(model) -> torch.device:
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def sample(model, num: int, solver: str = "fast", *, atol: float | None = None, rtol: float | None = None,
           steps: int | None = None, alpha: float | torch.Tensor | None = None, temperature: float = 1.0,
           seed: int | None = 0, record_times: int | Sequence[float] | None = None, device=None,
           batch_size: int | None = None, z1: torch.Tensor | None = None,
           callback: Callable[[dict], None] | None = None, runtime: str = "torch", decode: bool = True,
           denoise_t: float | None = None) -> SampleResult:
    """Draw `num` samples: z1 ~ N(0, T^2 I), integrate to ODE_EPS with `solver`, decode.

    `solver` names an entry of SOLVERS: "ode" is set by atol/rtol (default 1e-5), "sde" (default
    1000 steps) and "fast" (default 20) by `steps`; options of the other kind are refused. All random
    draws (z1, SDE noise) come from a local CPU generator seeded with `seed`, so a seed gives the same
    samples on any device (seed None: fresh ones); z1 does not depend on batch_size, the SDE's noise
    does. A given `z1` is used as is. `alpha` overrides the prior's mixing coefficients; `device`
    moves the model there (default: where it is). `record_times` keeps a trajectory (`Recorder`).
    `callback` receives {"solver", "t", "nfe", "done", "batch", "batches"} at every network
    evaluation; raising from it aborts the sampling. `runtime` runs the networks of a solver that
    takes it (`SolverSpec.runtimes`: the distilled student's) on lsgm_core.runtime's ONNX Runtime.
    `decode=False` stops at z0 (images None): for callers that need the latents only, the decoder
    costs more than the prior's steps at large batches. `denoise_t` (None: the model's own,
    `denoise_time`; 0: none) makes the solvers that take it stop at that time and jump to E[z0 | z_t],
    the last of their steps (`denoise`); a solver that does not take it ignores the model's.
    """
    options = solver_options(solver, steps, atol, rtol)
    check_runtime_for(solver, runtime)
    check_model_for(model, solver)
    if alpha is not None and not SOLVERS[solver].takes_alpha:
        raise ValueError(f"alpha does not apply to the {solver} solver (it learned the flow at the model's own "
                         "alpha); leave it unset")
    if num <= 0:
        raise ValueError(f"the number of samples must be positive, got {num}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if batch_size is not None and batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    denoising = check_denoise_t(solver, denoise_t, model)
    if record_times is not None:
        _record_grid(record_times, 1.0, ODE_EPS)  # refuses bad times before any work
    device = torch.device(device) if device is not None else _model_device(model)
    if _model_device(model) != device:
        model.to(device)  # walks every module: 9 ms a call for the default model, most of a 1-step sample
    shape = tuple(model.prior.shape)
    generator = seeded_generator(seed)
    if z1 is None:
        z1 = temperature * torch.randn((num,) + shape, generator=generator)
    elif tuple(z1.shape) != (num,) + shape:
        raise ValueError(f"z1 must have shape {[num, *shape]}, got {list(z1.shape)}")
    z1 = z1.to(device=device, dtype=torch.float32)
    student = student_on(model, runtime)

    batch_size = batch_size or num
    chunks = z1.split(batch_size)
    start = time.perf_counter()
    outs, trajs, nfe = [], [], 0
    for b, chunk in enumerate(chunks):
        report = None
        if callback is not None:
            report = lambda t, n, b=b, base=nfe: callback({  # noqa: E731
                "solver": solver, "t": t, "nfe": base + n, "batch": b, "batches": len(chunks),
                "done": (b + (1.0 - t) / (1.0 - ODE_EPS)) / len(chunks)})
        field = ProbabilityFlow(model.prior, alpha, report, student)
        recorder = Recorder(record_times, 1.0, ODE_EPS) if record_times is not None else None
        with torch.no_grad():
            outs.append(SOLVERS[solver].fn(field, chunk, t_end=ODE_EPS, generator=generator, observer=recorder,
                                           **options, **denoising))
            trajs.append(recorder.trajectory(field) if recorder is not None else None)
        nfe += field.nfe
    z0 = torch.cat(outs)
    images = None
    if decode:
        with torch.no_grad():
            decoder = student.decoder if SOLVERS[solver].student_decoder and student is not None else None
            images = torch.cat([model.decode_images(c, decoder) for c in z0.split(batch_size)])
    seconds = time.perf_counter() - start
    return SampleResult(z0, images, nfe, seconds, _join(trajs) if record_times is not None else None)


def _join(trajs: list[Trajectory]) -> Trajectory:
    """One trajectory from the batches' ones: samples side by side, the batches' steps one after another."""
    first = trajs[0]
    return Trajectory(first.times, torch.cat([t.zt for t in trajs], 1), torch.cat([t.z0_hat for t in trajs], 1),
                      [s for t in trajs for s in t.step_sizes], [s for t in trajs for s in t.step_times])


def slerp(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Points on the great circle from a to b (scaled between their norms) at fractions w [K, 1, ...]."""
    theta = torch.arccos((a * b).sum() / (a.norm() * b.norm())).clamp(min=1e-6)
    return (torch.sin((1.0 - w) * theta) * a + torch.sin(w * theta) * b) / torch.sin(theta)


def interpolate(model, x_a: torch.Tensor, x_b: torch.Tensor, num: int, mode: str = "slerp_z1",
                steps: int | None = None, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [num, C, H, W] and latents z0 [num, ...] between two images ([C, H, W] or [1, C, H, W]).

    "linear_z0": straight line between the encoder means; "slerp_z1": the means are encoded to z1
    through the ODE, interpolated on the sphere (where N(0, I) puts its mass), decoded back.
    kw (atol, rtol, alpha) go to the adaptive ODE; with `steps` the fast solver does both ways
    instead (fast_encode, then fast), `steps` network evaluations each, and kw holds alpha only.
    """
    modes = ("linear_z0", "slerp_z1")
    if mode not in modes:
        raise ValueError(f"unknown interpolation mode {mode!r}; choose one of {', '.join(modes)}")
    if num < 2:
        raise ValueError(f"num must be at least 2, got {num}")
    device = _model_device(model)
    x = torch.stack([x_a.reshape(x_a.shape[-3:]), x_b.reshape(x_b.shape[-3:])]).to(device)
    with torch.no_grad():
        mu = model.encode(x)[0]
    w = per_sample(torch.linspace(0.0, 1.0, num, device=device), mu)
    if mode == "linear_z0":
        z0 = (1.0 - w) * mu[0] + w * mu[1]
    elif steps is None:
        z1, _ = ode_encode(model.prior, mu, **kw)
        z0, _ = ode_decode(model.prior, slerp(z1[0], z1[1], w), **kw)
    else:
        z1, _ = fast_encode(model.prior, mu, steps=steps, **kw)
        with torch.no_grad():
            z0 = fast(ProbabilityFlow(model.prior, kw.get("alpha")), slerp(z1[0], z1[1], w), steps=steps)
    with torch.no_grad():
        return model.decode_images(z0), z0
