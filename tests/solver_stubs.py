"""Priors with known answers, for the sampler and likelihood tests."""
import torch
from torch import nn

from lsgm_core.prior import ScorePrior
from lsgm_core.sde import GeometricVPSDE, VPSDE
from lsgm_core.student import Student

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


class MixturePrior:
    """The exact eps_hat of a mixture of k equally weighted Gaussians N(mu_j, c^2 I) (mu_j ~ N(0, I),
    seeded): at t each is N(m_t mu_j, v_t I), v_t = m_t^2 c^2 + sigma_t^2, and
    eps_hat = sigma_t sum_j r_j (z - m_t mu_j) / v_t with r_j the components' posterior weights."""

    def __init__(self, sde, c: float = 0.1, k: int = 4, shape=(2, 4, 4), seed: int = 0):
        self.sde, self.c, self.shape = sde, c, shape
        self.mu = torch.randn((k,) + shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def alpha(self, override=None):
        return torch.ones(self.shape[0])

    def eps(self, z, t, alpha=None):
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(z.shape[0])
        m, sigma = (f(t).view(-1, 1, 1, 1, 1) for f in (self.sde.mean_coef, self.sde.sigma))
        v = m ** 2 * self.c ** 2 + sigma ** 2
        diff = z.double()[:, None] - m * self.mu[None]
        r = torch.softmax(-diff.pow(2).flatten(2).sum(-1) / (2.0 * v.flatten(1)), 1)
        return (sigma[:, 0] * (r.view(*r.shape, 1, 1, 1) * diff / v).sum(1)).to(z.dtype)


class GaussianStudent(nn.Module):
    """The exact distilled student of GaussianPrior (lsgm_core.student's scheme): on the points that
    scheme visits, z_t = m_t z0 + sigma_t (z1 - m_1 z0) / sigma_1 with z0 = r z1, r = s_end / s_1, so
    z_t = k_t z1 and z0 = r z_t / k_t, a linear map the k-step distilled solver must reproduce."""

    steps = (1, 2, 4)
    decoder = None  # decodes as the model does
    segments = False  # it learned z0 alone (lsgm_core.student)
    denoise_t = 0.0  # its grids are the fast solver's without a jump

    def __init__(self, prior, t_end: float):
        super().__init__()
        self.prior, self.sde = prior, prior.sde
        self.r = (prior.s(t_end) / prior.s(1.0)).item()

    def forward(self, z, t, s=None):
        sde, t = self.prior.sde, torch.as_tensor(t, dtype=torch.float64).view(-1, 1, 1, 1)
        m1, s1 = sde.mean_coef(torch.tensor(1.0, dtype=torch.float64)), sde.sigma(torch.tensor(1.0, dtype=torch.float64))
        k = sde.mean_coef(t) * self.r + sde.sigma(t) * (1.0 - m1 * self.r) / s1
        return (self.r * z.double() / k).to(z.dtype)


def gaussian_paths(prior, z1, times) -> torch.Tensor:
    """The exact teacher paths of GaussianPrior from z1 [N, ...]: its states z1 s_t / s_1 at `times`,
    [N, len(times), ...] (as lsgm_core.distill.teacher_paths gives them)."""
    return torch.stack([z1 * (prior.s(t) / prior.s(1.0)).float() for t in times], 1)


class Wrap(nn.Module):
    """The minimum of a model that `sample` needs: a prior, identity "decoding", and a student for
    the distilled solver (the others ignore it)."""

    def __init__(self, prior, student=None):
        super().__init__()
        self.prior = prior
        self.student = student

    def decode_images(self, z0, student=False):
        return z0


def random_model(sde: str = "geometric_vpsde") -> Wrap:
    """random_prior with an untrained distilled student whose output is far from zero too."""
    prior = random_prior(sde)
    student = Student.from_config({"sde": {"kind": sde}, "net": {"channels": 8, "ch_mult": [1], "num_res_blocks": 1,
                                                                 "attention": False}, "sigma_data": 1.0}, prior)
    nn.init.normal_(student.net.conv_out.weight, std=0.5)
    return Wrap(prior, student.eval())


def random_prior(sde: str = "geometric_vpsde") -> ScorePrior:
    """A mixed prior whose network output is far from zero, so any leak of alpha would show."""
    torch.manual_seed(0)
    prior = ScorePrior((2, 4, 4), {"kind": sde}, {"channels": 8, "ch_mult": [1], "num_res_blocks": 1,
                                                  "attention": False})
    nn.init.normal_(prior.net.conv_out.weight, std=0.5)
    return prior.eval()


def untrained_student(model, segments: bool = False) -> tuple[Student, dict]:
    """A seeded, untrained student for a checkpoint's model (U-Net 8 wide, a decoder of widths 8, 16),
    its output layer drawn at random (a new U-Net's is zero) so that it moves z far from the
    Gaussian posterior mean, and so the target time's embedding of one with segments; and its
    config, as a checkpoint holds it."""
    prior = model.config["model"]["prior"]
    config = {"sde": prior["sde"], "net": {**prior["net"], "channels": 8, **({"target_time": True} if segments else {})},
              "sigma_data": 0.7, "decoder": {"out_channels": 1, "channels": [8, 16], "num_res_blocks": 1}}
    torch.manual_seed(0)
    student = Student.from_config(config, model.prior).eval()
    nn.init.normal_(student.net.conv_out.weight, std=0.2)
    if segments:
        nn.init.normal_(student.net.target_temb[-1].weight, std=0.2)
    return student, config
