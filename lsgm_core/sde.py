"""Variance-preserving SDEs of the latent diffusion, in closed form.

All SDEs here are variance preserving: f(z, t) = -beta(t)/2 z and g(t)^2 = beta(t), so
q(z_t | z_0) = N(m_t z_0, sigma_t^2 I) with m_t^2 + sigma_t^2 = 1.

Time samplers draw t for the denoising score-matching objective and return, with each t, the
importance weight 1 / r(t) that turns an expectation under r into the integral over [t_eps, 1].
"""
from __future__ import annotations

import math

import torch

TIME_SAMPLERS = ("ll_iw", "drop_all_iw", "ll_uniform")


class SDE:
    """Base class: subclasses define var(t), beta(t) and inv_var(v) in closed form."""

    name = "sde"

    def __init__(self, t_eps: float = 0.01):
        if not 0.0 < t_eps < 1.0:
            raise ValueError(f"t_eps must lie in (0, 1), got {t_eps}")
        self.t_eps = t_eps

    def var(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def inv_var(self, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def config(self) -> dict:
        raise NotImplementedError

    def g2(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta(t)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.var(t).sqrt()

    def mean_coef(self, t: torch.Tensor) -> torch.Tensor:
        return (1.0 - self.var(t)).sqrt()

    def perturb(self, z0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """z_t = m_t z0 + sigma_t eps, with t of shape [B]."""
        shape = (-1,) + (1,) * (z0.dim() - 1)
        return self.mean_coef(t).view(shape) * z0 + self.sigma(t).view(shape) * eps

    def ll_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Likelihood weighting g^2 / sigma^2 of ||eps - eps_hat||^2 (the 1/2 is applied by the objective)."""
        return self.beta(t) / self.var(t)

    def _log_var_range(self) -> tuple[float, float]:
        ends = self.var(torch.tensor([self.t_eps, 1.0], dtype=torch.float64)).log()
        return ends[0].item(), ends[1].item()

    def sample_time(self, n: int, sampler: str, generator: torch.Generator | None = None,
                    device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw n times in [t_eps, 1] by inverting the sampler's CDF, with their weights 1 / r(t).

        E_r[f(t) / r(t)] equals the integral of f over [t_eps, 1] for every sampler.
        """
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
        if sampler == "ll_uniform":
            t = self.t_eps + (1.0 - self.t_eps) * u
        elif sampler == "ll_iw":
            # sigma^2 log-uniform between sigma^2(t_eps) and sigma^2(1)
            lo, hi = self._log_var_range()
            t = self.inv_var(torch.exp(lo + (hi - lo) * u))
        elif sampler == "drop_all_iw":
            mu, s, c_lo, c_hi, _ = self._drop_all_params()
            p = c_lo + (c_hi - c_lo) * u
            t = mu + s * math.sqrt(2.0) * torch.erfinv(2.0 * p - 1.0)
        else:
            raise ValueError(f"unknown time sampler {sampler!r}; choose one of {', '.join(TIME_SAMPLERS)}")
        t = t.clamp(self.t_eps, 1.0)
        return t.float(), (1.0 / self.density(t, sampler)).float()

    def density(self, t: torch.Tensor, sampler: str) -> torch.Tensor:
        """The sampler's density r(t) on [t_eps, 1]."""
        t = t.to(torch.float64)
        if sampler == "ll_uniform":
            return torch.full_like(t, 1.0 / (1.0 - self.t_eps))
        if sampler == "ll_iw":
            lo, hi = self._log_var_range()
            v = self.var(t)
            return self.beta(t) * (1.0 - v) / v / (hi - lo)
        if sampler == "drop_all_iw":
            return (1.0 - self.var(t)) / self._drop_all_params()[4]
        raise ValueError(f"unknown time sampler {sampler!r}; choose one of {', '.join(TIME_SAMPLERS)}")

    def _drop_all_params(self):
        raise ValueError(f"the 'drop_all_iw' time sampler needs the linear VPSDE, not {self.name}; "
                         "use 'll_iw' or 'll_uniform', or set sde.kind to 'vpsde'")


class VPSDE(SDE):
    """Linear beta(t) = beta0 + (beta1 - beta0) t (Song et al.)."""

    name = "vpsde"

    def __init__(self, beta0: float = 0.1, beta1: float = 20.0, t_eps: float = 0.01):
        super().__init__(t_eps)
        if not 0.0 < beta0 < beta1:
            raise ValueError(f"VPSDE needs 0 < beta0 < beta1, got beta0={beta0}, beta1={beta1}")
        self.beta0, self.beta1 = beta0, beta1

    def config(self) -> dict:
        return {"kind": self.name, "beta0": self.beta0, "beta1": self.beta1, "t_eps": self.t_eps}

    def _integral(self, t):
        return self.beta0 * t + 0.5 * (self.beta1 - self.beta0) * t * t

    def beta(self, t):
        return self.beta0 + (self.beta1 - self.beta0) * t

    def var(self, t):
        return -torch.expm1(-self._integral(t))

    def mean_coef(self, t):
        return torch.exp(-0.5 * self._integral(t))

    def inv_var(self, v):
        # var = 1 - exp(-B(t)) with B quadratic in t: solve a t^2 + beta0 t - B = 0 for t >= 0
        big_b = -torch.log1p(-v)
        a = 0.5 * (self.beta1 - self.beta0)
        return 2.0 * big_b / (self.beta0 + torch.sqrt(self.beta0 ** 2 + 4.0 * a * big_b))

    def _drop_all_params(self):
        # r(t) ∝ 1 - sigma_t^2 = exp(-B(t)): a Gaussian N(mu, s^2) in t truncated to [t_eps, 1]
        a = 0.5 * (self.beta1 - self.beta0)
        mu = -self.beta0 / (2.0 * a)
        s = math.sqrt(0.5 / a)
        cdf = lambda x: 0.5 * (1.0 + math.erf((x - mu) / (s * math.sqrt(2.0))))  # noqa: E731
        c_lo, c_hi = cdf(self.t_eps), cdf(1.0)
        norm = math.exp(self.beta0 ** 2 / (4.0 * a)) * s * math.sqrt(2.0 * math.pi) * (c_hi - c_lo)
        return mu, s, c_lo, c_hi, norm


class GeometricVPSDE(SDE):
    """sigma_t^2 = sigma2_min (sigma2_max / sigma2_min)^t: d log sigma_t^2 / dt is constant."""

    name = "geometric_vpsde"

    def __init__(self, sigma2_min: float = 1e-4, sigma2_max: float = 0.99, t_eps: float = 0.01):
        super().__init__(t_eps)
        if not 0.0 < sigma2_min < sigma2_max < 1.0:
            raise ValueError("GeometricVPSDE needs 0 < sigma2_min < sigma2_max < 1, "
                             f"got {sigma2_min}, {sigma2_max}")
        self.sigma2_min, self.sigma2_max = sigma2_min, sigma2_max
        self._log_ratio = math.log(sigma2_max / sigma2_min)

    def config(self) -> dict:
        return {"kind": self.name, "sigma2_min": self.sigma2_min, "sigma2_max": self.sigma2_max,
                "t_eps": self.t_eps}

    def var(self, t):
        return self.sigma2_min * torch.exp(self._log_ratio * t)

    def beta(self, t):
        v = self.var(t)
        return self._log_ratio * v / (1.0 - v)

    def inv_var(self, v):
        return torch.log(v / self.sigma2_min) / self._log_ratio


def make_sde(cfg: dict) -> SDE:
    """Build an SDE from its config dict ({"kind": "vpsde" | "geometric_vpsde", ...})."""
    cfg = dict(cfg)
    kind = cfg.pop("kind", "geometric_vpsde")
    classes = {"vpsde": VPSDE, "geometric_vpsde": GeometricVPSDE}
    if kind not in classes:
        raise ValueError(f"unknown SDE kind {kind!r}; choose one of {', '.join(classes)}")
    try:
        return classes[kind](**cfg)
    except TypeError as e:
        raise ValueError(f"bad options for SDE {kind!r}: {e}") from None
