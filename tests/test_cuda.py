"""The CUDA paths against the CPU ones: sampling with every solver, the ODE log-likelihood and the
NELBO give the CPU's results on a GPU. Skipped without a CUDA GPU (CI has none); run on one with
`python -m pytest -q tests/test_cuda.py` (tools/gpu_session.py does, in its `checks` job).

The GPU runs cuDNN's convolutions in TF32 by PyTorch's default, so agreement is to about 1e-3,
not to the last bit.
"""
from pathlib import Path

import pytest
import torch

from lsgm_core.checkpoint import load_model
from lsgm_core.nelbo import log_prob_ode, nelbo
from lsgm_core.solvers import sample

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]

CHECKPOINT = Path(__file__).parents[1] / "checkpoints" / "lsgm-bmnist-fast"


@pytest.fixture(scope="module")
def models():
    return load_model(CHECKPOINT), load_model(CHECKPOINT, "cuda")


@pytest.mark.parametrize("solver, kw, tol", [("fast", {"steps": 10}, 5e-3),
                                             ("ode", {"atol": 1e-5, "rtol": 1e-5}, 5e-3),
                                             ("sde", {"steps": 100}, 2e-2)])
def test_samples_match_the_cpu(models, solver, kw, tol, record_property):
    """The same seed draws the same z1 (and SDE noise) on the CPU for either device."""
    cpu, gpu = models
    a, b = sample(cpu, 16, solver, seed=0, **kw), sample(gpu, 16, solver, seed=0, **kw)
    assert b.images.device.type == "cuda" and b.z0.device.type == "cuda"
    z_err = ((a.z0 - b.z0.cpu()).norm() / a.z0.norm()).item()
    image_err = (a.images - b.images.cpu()).abs().mean().item()
    record_property("z0_relative_difference", z_err)  # the figures, in --junitxml's report
    record_property("image_mean_abs_difference", image_err)
    record_property("nfe_cpu_cuda", (a.nfe, b.nfe))
    assert z_err < tol, f"{solver}: relative z0 difference {z_err:.2e}"
    assert image_err < tol
    if solver == "ode":  # the adaptive solver may take a step more or less, no more
        assert abs(a.nfe - b.nfe) <= 0.1 * a.nfe, (a.nfe, b.nfe)
    else:
        assert a.nfe == b.nfe == kw["steps"]


def test_log_likelihood_and_nelbo_match_the_cpu(models, data_dir, record_property):
    from lsgm_core.data import load_dataset

    cpu, gpu = models
    x, _ = load_dataset("binarized-mnist", "test", data_dir).batch(torch.arange(4), torch.Generator().manual_seed(0))
    with torch.no_grad():
        z0 = cpu.encode(x)[0]
    # a loose solve keeps the CPU side short; its own error, a few tenths of a nat, bounds how far
    # the two devices' answers may part (an H100 gave 0.05 nats for log p and 0.15 for the NELBO)
    tol = {"atol": 1e-3, "rtol": 1e-3}
    a, _ = log_prob_ode(cpu.prior, z0, **tol)
    b, _ = log_prob_ode(gpu.prior, z0.cuda(), **tol)
    record_property("log_p_max_abs_difference", (a - b.cpu()).abs().max().item())
    assert torch.allclose(a, b.cpu(), rtol=0, atol=0.5), (a, b)
    n_cpu, n_gpu = nelbo(cpu, x, **tol)["nelbo"], nelbo(gpu, x.cuda(), **tol)["nelbo"].cpu()
    # z0 ~ q(z0|x) and the probes come from the same seeded CPU generator on either device
    record_property("nelbo_max_abs_difference", (n_cpu - n_gpu).abs().max().item())
    assert torch.allclose(n_cpu, n_gpu, rtol=0, atol=0.5), (n_cpu, n_gpu)
