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

In log-SNR time lambda = log(m_t / sigma_t) (dlambda/dt = -beta / (2 sigma^2) for every VP SDE)
the probability-flow ODE reads dz/dlambda = sigma^2 z - sigma eps_hat. With the mixed score
eps_hat = (1 - alpha) sigma z + alpha eps_theta this is

    dz/dlambda = -alpha m^2 z + m v,    v = alpha x0_theta = (alpha z - sigma (eps_hat - (1 - alpha) sigma z)) / m

whose linear part has the exact propagator (sigma_t / sigma_s)^alpha per channel. The fast
solver integrates that part exactly and v as the polynomial in lambda through its last three
evaluations (a multistep exponential integrator: DPM-Solver++(3M) at alpha = 1, the pixel
baseline); at alpha = 0 it is exact: v = 0 and z stays z1 ~ N(0, I).
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

ODE_EPS = 1e-5
SOLVERS = ("ode", "sde", "fast")
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")  # torchdiffeq's, for ode_solve
DEFAULT_STEPS = {"sde": 1000, "fast": 20}
# the fast solver's multistep order (its first steps use the history they have). Third order against
# second, 20 steps, max |z0 - z0_exact|: Gaussian data 7e-4..7e-3 relative against 1e-2..4e-2; the tiny
# trained model at alpha = 1, 7e-3 against 5e-2 (dopri5 at 1e-7 as reference)
FAST_ORDER = 3
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
    images: torch.Tensor       # [N, C, H, W] float in [0, 1]
    nfe: int                   # network evaluations of this call, summed over batches
    seconds: float
    trajectory: Trajectory | None


class _Field:
    """The prior's eps_hat at a fixed alpha and the probability-flow drift, counting evaluations."""

    def __init__(self, prior, alpha=None, report: Callable[[float, int], None] | None = None):
        self.prior, self.alpha, self.report, self.nfe = prior, alpha, report, 0
        self.step_sizes: list[float] = []
        self.step_times: list[float] = []

    @staticmethod
    def _ts(t, z: torch.Tensor) -> torch.Tensor:
        """t expanded to [B] as ScorePrior.eps does, so that sigma_t z here and there agree to the last bit
        (vectorised and scalar kernels of exp may differ in the last ulp)."""
        return torch.as_tensor(t, dtype=z.dtype, device=z.device).expand(z.shape[0])

    @classmethod
    def coef(cls, fn, t, z: torch.Tensor) -> torch.Tensor:
        """fn(t) per sample, shaped to broadcast over z."""
        return fn(cls._ts(t, z)).view((-1,) + (1,) * (z.dim() - 1))

    def eps(self, z: torch.Tensor, t) -> torch.Tensor:
        self.nfe += 1
        out = self.prior.eps(z, self._ts(t, z), self.alpha)
        if self.report is not None:
            self.report(float(t), self.nfe)
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
        self.step_times.append(float(t0))
        self.step_sizes.append(abs(float(dt)))


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
    return odeint(func, y0, t, rtol=rtol, atol=atol, method=method, options={"step_t": t[-1:]})


def ode_solve(prior, z: torch.Tensor, t_start: float, t_end: float, *, atol: float = 1e-5, rtol: float = 1e-5,
              alpha=None, record_times: int | Sequence[float] | None = None, method: str = "dopri5",
              callback: Callable[[dict], None] | None = None) -> tuple[torch.Tensor, int, Trajectory | None]:
    """Integrate the probability-flow ODE from t_start to t_end (either direction), whole batch in one solve.

    Returns z(t_end), the number of network evaluations, and the trajectory at record_times
    (dense output of the solver, so recording adds no steps; z0_hat costs one evaluation per time).
    The error norm is the RMS over the whole batch, as with scipy's RK45.
    """
    if atol <= 0 or rtol <= 0:
        raise ValueError(f"atol and rtol must be positive, got atol={atol}, rtol={rtol}")
    report = None
    if callback is not None:
        span = abs(t_start - t_end)
        report = lambda t, n: callback({"t": t, "nfe": n, "done": abs(t_start - t) / span})  # noqa: E731
    field = _Field(prior, alpha, report)
    record = _record_grid(record_times, t_start, t_end) if record_times is not None else []
    times = sorted({t_start, t_end, *record}, reverse=t_start > t_end)
    with torch.no_grad():
        path = integrate(field, z, times, atol=atol, rtol=rtol, method=method)
    traj = None
    if record:
        idx = [times.index(r) for r in record]
        with torch.no_grad():
            z0_hat = torch.stack([field.z0_hat(path[i], times[i]) for i in idx])
        traj = Trajectory(torch.tensor(record), path[idx], z0_hat, field.step_sizes, field.step_times)
    return path[-1], field.nfe, traj


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


def _grid_record(record_times, t: torch.Tensor) -> list[int]:
    """Grid indices nearest to the requested times (fixed-step solvers record on their own grid)."""
    req = _record_grid(record_times, 1.0, t[-1].item())
    return sorted({int((t - r).abs().argmin()) for r in req})


def _fixed_step_solve(field: _Field, z: torch.Tensor, solver: str, steps: int, generator: torch.Generator,
                      record_times, t_end: float = ODE_EPS) -> tuple[torch.Tensor, Trajectory | None]:
    """The fast exponential integrator or Euler-Maruyama on the reverse SDE, on a log-SNR grid."""
    prior = field.prior
    sde = prior.sde
    t, lam = time_grid(sde, steps, t_end)
    view = (1, -1) + (1,) * (z.dim() - 2)
    alpha = prior.alpha(field.alpha).detach().to(torch.float64).cpu()
    rec = _grid_record(record_times, t) if record_times is not None else []
    zs, hats = [], []
    hist_v: list[torch.Tensor] = []  # the latest v, newest first, for the multistep update
    if solver == "fast":
        a = alpha.to(z).view(view)
        # every step's weights depend on the grid and alpha alone: all of them in one call. Step i's
        # nodes are lambda_i, lambda_i-1, ...; the first steps pad theirs with lambda_0 and use only
        # the nodes and weights their history has
        nodes = lam[(torch.arange(steps)[:, None] - torch.arange(FAST_ORDER)[None]).clamp(min=0)]
        phis, ws = (w.to(z) for w in exp_weights(lam[:-1], lam[1:], alpha, nodes))
    for i in range(steps):
        s = t[i].item()
        eps = field.eps(z, s)
        sigma, m = field.coef(sde.sigma, s, z), field.coef(sde.mean_coef, s, z)
        if i in rec:
            zs.append(z)
            hats.append(field.z0_hat(z, s, eps))
        if solver == "fast":
            v = (a * z - sigma * (eps - (1.0 - a) * (sigma * z))) / m
            hist_v = [v] + hist_v[:FAST_ORDER - 1]
            z_next = phis[i].view(view) * z
            for w_k, d_k in zip(ws[i], _newton_differences(nodes[i, :len(hist_v)].tolist(), hist_v)):
                z_next = z_next + w_k.view(view) * d_k
        else:
            dt = s - t[i + 1].item()
            beta = field.coef(sde.beta, s, z)
            z_next = z - dt * (0.5 * beta * z + beta / sigma * (eps - sigma * z))
            if i < steps - 1:  # the last step is taken without noise
                noise = torch.randn(z.shape, generator=generator).to(z)
                z_next = z_next + (beta * dt).sqrt() * noise
        z = z_next
    if steps in rec:
        zs.append(z)
        hats.append(field.z0_hat(z, t_end))
    if not rec:
        return z, None
    dts = (t[:-1] - t[1:]).tolist()
    return z, Trajectory(t[rec].float(), torch.stack(zs), torch.stack(hats), dts, t[:-1].tolist())


# sampling ----------------------------------------------------------------------------------------
def _model_device(model) -> torch.device:
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def sample(model, num: int, solver: str = "fast", *, atol: float = 1e-5, rtol: float = 1e-5,
           steps: int | None = None, alpha: float | torch.Tensor | None = None, temperature: float = 1.0,
           seed: int | None = 0, record_times: int | Sequence[float] | None = None, device=None,
           batch_size: int | None = None, z1: torch.Tensor | None = None,
           callback: Callable[[dict], None] | None = None) -> SampleResult:
    """Draw `num` samples: z1 ~ N(0, T^2 I), integrate to ODE_EPS with `solver`, decode.

    solver "ode": adaptive dopri5 at atol/rtol; "sde": Euler-Maruyama with `steps` (default 1000),
    the last step noise-free; "fast": the exponential integrator with `steps` (default 20), one
    network evaluation per step. All random draws (z1, SDE noise) come from a local CPU generator
    seeded with `seed`, so a seed gives the same samples on any device (seed None: fresh ones);
    z1 does not depend on batch_size, the SDE's noise does. A given `z1` is used as is.
    `alpha` overrides the prior's mixing coefficients; `device` moves the model there (default: where
    it is). `callback` receives {"solver", "t", "nfe", "done", "batch", "batches"} at every
    network evaluation; raising from it aborts the sampling.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if num <= 0:
        raise ValueError(f"the number of samples must be positive, got {num}")
    if solver == "ode":
        if steps is not None:
            raise ValueError("steps applies to the sde and fast solvers; the ode solver is set by atol and rtol")
        if atol <= 0 or rtol <= 0:
            raise ValueError(f"atol and rtol must be positive, got atol={atol}, rtol={rtol}")
    else:
        steps = DEFAULT_STEPS[solver] if steps is None else steps
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if batch_size is not None and batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = torch.device(device) if device is not None else _model_device(model)
    model.to(device)
    shape = tuple(model.prior.shape)
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    if z1 is None:
        z1 = temperature * torch.randn((num,) + shape, generator=generator)
    elif tuple(z1.shape) != (num,) + shape:
        raise ValueError(f"z1 must have shape {[num, *shape]}, got {list(z1.shape)}")
    z1 = z1.to(device=device, dtype=torch.float32)

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
        if solver == "ode":
            z0, n, traj = ode_solve(model.prior, chunk, 1.0, ODE_EPS, atol=atol, rtol=rtol, alpha=alpha,
                                    record_times=record_times,
                                    callback=(lambda d: report(d["t"], d["nfe"])) if report else None)
        else:
            field = _Field(model.prior, alpha, report)
            with torch.no_grad():
                z0, traj = _fixed_step_solve(field, chunk, solver, steps, generator, record_times)
            n = field.nfe
        outs.append(z0)
        trajs.append(traj)
        nfe += n
    z0 = torch.cat(outs)
    with torch.no_grad():
        images = torch.cat([model.decode_images(c) for c in z0.split(batch_size)])
    seconds = time.perf_counter() - start
    return SampleResult(z0, images, nfe, seconds, _join(trajs) if record_times is not None else None)


def _join(trajs: list[Trajectory]) -> Trajectory:
    """One trajectory from the batches' ones: samples side by side, the batches' steps one after another."""
    first = trajs[0]
    return Trajectory(first.times, torch.cat([t.zt for t in trajs], 1), torch.cat([t.z0_hat for t in trajs], 1),
                      [s for t in trajs for s in t.step_sizes], [s for t in trajs for s in t.step_times])


def interpolate(model, x_a: torch.Tensor, x_b: torch.Tensor, num: int, mode: str = "slerp_z1",
                **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [num, C, H, W] and latents z0 [num, ...] between two images ([C, H, W] or [1, C, H, W]).

    "linear_z0": straight line between the encoder means; "slerp_z1": the means are encoded to z1
    through the ODE, interpolated on the sphere (where N(0, I) puts its mass), decoded back.
    kw (atol, rtol, alpha) go to the ODE.
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
    w = torch.linspace(0.0, 1.0, num, device=device).view((-1,) + (1,) * (mu.dim() - 1))
    if mode == "linear_z0":
        z0 = (1.0 - w) * mu[0] + w * mu[1]
    else:
        z1, _ = ode_encode(model.prior, mu, **kw)
        a, b = z1[0], z1[1]
        theta = torch.arccos((a * b).sum() / (a.norm() * b.norm())).clamp(min=1e-6)
        zt = (torch.sin((1.0 - w) * theta) * a + torch.sin(w * theta) * b) / torch.sin(theta)
        z0, _ = ode_decode(model.prior, zt, **kw)
    with torch.no_grad():
        return model.decode_images(z0), z0
