"""The distilled sampler: a network that maps a point z_t of the prior's probability-flow ODE to the
ODE's end point z0 in one evaluation (lsgm_core.distill trains it; the solver `distilled` runs it).

Parameterisation (EDM's preconditioning written for a VP SDE): with z_t = m_t z0 + sigma_t eps,
x = z_t / m_t = z0 + s eps has noise level s = sigma_t / m_t, and

    z0_hat = c_skip x + c_out F(c_in x, t),  c_skip = d^2 / (s^2 + d^2),  c_out = s d / sqrt(s^2 + d^2),
    c_in = 1 / sqrt(s^2 + d^2),

d the data's standard deviation. Written in z_t these are finite at t = 1, where m_t is tiny
(m_1 = 0.0066 for the linear VPSDE): c_in x = z_t / sqrt(sigma^2 + m^2 d^2) and
c_skip x = m d^2 z_t / (sigma^2 + m^2 d^2). A zero F gives the Gaussian posterior mean, so an
untrained student already returns the right scale.

k steps run on the fast solver's log-SNR grid of k steps (1 -> t_end; for a student made at a
denoising time d, config "denoise_t", k - 1 steps to d and the jump from there, as the fast solver
then runs: lsgm_core.solvers.student_grid): predict z0_hat, then move deterministically to the next
time along eps_hat = (z_t - m_t z0_hat) / sigma_t, as DDIM does. The grids of 1, 2 and 4 steps
nest, so one student trained on the 4-step grid's times serves all three. Inactive channels
(alpha = 0) are the identity map of the ODE and pass through unchanged.

A student with segments (config net "target_time") also takes the time s its step goes to: it
learns, for every step of those grids, the z0_hat whose move from t lands on the teacher's own
state at s (`segment_target`; at the end, the teacher's z0). Then a 4-step sample follows the
teacher's path, each step a short one, where a student of z0 alone can only guess z0 again from
points its first guess put off that path.

A student may carry a decoder of its own (config "decoder": the VAE decoder's architecture at
smaller widths), trained to reproduce the model's mean images from the teacher's z0: the whole
path z1 -> image then costs a fraction of the model's decoder, which at full width takes most of
a 1-step sample's time. The `distilled` solver decodes with it when it is there.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .nets import Decoder, UNet
from .sde import make_sde
from .tensors import per_channel, per_sample

STEPS = (1, 2, 4)


def coefficient(fn, t, z: torch.Tensor) -> torch.Tensor:
    """fn(t) for each sample of z (t a number or [B]), shaped to broadcast over z."""
    return per_sample(fn(torch.as_tensor(t, dtype=z.dtype, device=z.device).expand(z.shape[0])), z)


def segment_target(sde, zt: torch.Tensor, t, zs: torch.Tensor, s) -> torch.Tensor:
    """The z0_hat whose move (`move`) from z_t at t lands on z_s at s: the inverse of that move,
    z_s = m_s z0 + sigma_s (z_t - m_t z0) / sigma_t, for z0 (t, s numbers or [B], s < t)."""
    ratio = coefficient(sde.sigma, s, zt) / coefficient(sde.sigma, t, zt)
    return (zs - ratio * zt) / (coefficient(sde.mean_coef, s, zt) - ratio * coefficient(sde.mean_coef, t, zt))


def move(sde, z: torch.Tensor, z0_hat: torch.Tensor, s, t) -> tuple[torch.Tensor, torch.Tensor]:
    """eps_hat = (z_s - m_s z0_hat) / sigma_s, and the deterministic move along it to time t,
    z_t = m_t z0_hat + sigma_t eps_hat (DDIM's); t None: the end, z0_hat itself."""
    eps = (z - coefficient(sde.mean_coef, s, z) * z0_hat) / coefficient(sde.sigma, s, z)
    if t is None:
        return eps, z0_hat
    return eps, coefficient(sde.mean_coef, t, z) * z0_hat + coefficient(sde.sigma, t, z) * eps


class Student(nn.Module):
    def __init__(self, shape, sde: dict, net: dict, sigma_data: float, steps=STEPS, decoder: dict | None = None,
                 denoise_t: float = 0.0):
        super().__init__()
        self.denoise_t = float(denoise_t)  # where its grids jump to z0 (module docstring); 0: none
        self.shape, self.steps = tuple(shape), tuple(int(s) for s in steps)
        self.sde = make_sde(sde)
        self.net = UNet(self.shape[0], **net)
        self.segments = bool(net.get("target_time"))  # it takes the time its step goes to (module docstring)
        # {"out_channels", "channels", "num_res_blocks"}: a Decoder from z0 to the likelihood's parameters
        self.decoder = Decoder(self.shape[0], **decoder) if decoder else None
        self.register_buffer("sigma_data", torch.tensor(float(sigma_data)))
        self.register_buffer("active", torch.ones(self.shape[0]))

    @classmethod
    def from_config(cls, config: dict, prior) -> "Student":
        student = cls(prior.shape, config["sde"], config["net"], config["sigma_data"], config.get("steps", STEPS),
                      config.get("decoder"), config.get("denoise_t", 0.0))
        if getattr(prior, "mixed", False):
            student.active.copy_(prior.active)
        return student

    def with_networks(self, net: nn.Module, decoder: nn.Module | None, **info) -> "Student":
        """This student with `net` and `decoder` in place of its own (lsgm_core.runtime's ONNX Runtime
        sessions), its buffers shared; `info` is kept as attributes (e.g. max_abs_diff)."""
        other = copy.copy(self)
        other._modules = {**self._modules, "net": net, "decoder": decoder}
        other.__dict__.update(info)
        return other

    def forward(self, zt: torch.Tensor, t, s=None) -> torch.Tensor:
        """z0_hat of the ODE through (z_t, t) for the step to time s; t, s numbers or [B]. s is
        needed by a student with segments and ignored by one without."""
        t = torch.as_tensor(t, dtype=zt.dtype, device=zt.device).expand(zt.shape[0])
        if self.segments:
            if s is None:
                raise ValueError("this student learned steps to a target time: give the time s its step goes to")
            s = torch.as_tensor(s, dtype=zt.dtype, device=zt.device).expand(zt.shape[0])
        m, sigma = per_sample(self.sde.mean_coef(t), zt), per_sample(self.sde.sigma(t), zt)
        d2 = self.sigma_data ** 2
        scale = (sigma ** 2 + m ** 2 * d2).sqrt()
        c_skip_x = m * d2 * zt / scale ** 2
        c_out = sigma * self.sigma_data / scale  # s d / sqrt(s^2 + d^2) with s = sigma / m, times m / m
        z0 = c_skip_x + c_out * (self.net(zt / scale, t, s) if self.segments else self.net(zt / scale, t))
        return torch.where(per_channel(self.active, zt) > 0, z0, zt)
