"""Priors with known answers, for the sampler and likelihood tests."""
import torch
from torch import nn

from lsgm_core.prior import ScorePrior
from lsgm_core.sde import GeometricVPSDE, VPSDE

SDES = {"geometric": GeometricVPSDE(), "vpsde": VPSDE()}


class GaussianPrior:
    """The exact eps_hat of data N(0, c^2 I): the marginal at t is N(0, s_t^2 I), s_t^2 = m_t^2 c^2 + sigma_t^2.

    The probability-flow ODE is then linear, dz/dt = beta/2 (1/s_t^2 - 1) z, and maps z1 to
    z(t) = z1 s_t / s_1 (its drift is d log s_t/dt times z).
    """

    def __init__(self, sde, c: float, shape=(2, 4, 4)):
        self.sde, self.c, self.shape = sde, c, shape

    def alpha(self, override=None):
        return torch.ones(self.shape[0])  # not a mixed prior: the fast solver sees alpha = 1

    def s(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return (self.sde.mean_coef(t) ** 2 * self.c ** 2 + self.sde.var(t)).sqrt()

    def eps(self, z, t, alpha=None):
        t = torch.as_tensor(t, dtype=z.dtype).view(-1, 1, 1, 1)
        return self.sde.sigma(t) * z / self.s(t).to(z.dtype) ** 2


class Wrap(nn.Module):
    """The minimum of a model that `sample` needs: a prior and identity "decoding"."""

    def __init__(self, prior):
        super().__init__()
        self.prior = prior

    def decode_images(self, z0):
        return z0


def random_prior(sde: str = "geometric_vpsde") -> ScorePrior:
    """A mixed prior whose network output is far from zero, so any leak of alpha would show."""
    torch.manual_seed(0)
    prior = ScorePrior((2, 4, 4), {"kind": sde}, {"channels": 8, "ch_mult": [1], "num_res_blocks": 1,
                                                  "attention": False})
    nn.init.normal_(prior.net.conv_out.weight, std=0.5)
    return prior.eval()
