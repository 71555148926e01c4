"""The prior stage (train.stage = "prior"): the prior alone on cached latents of a frozen VAE.

Its loss is the end-to-end prior loss for the same batch, t and noise; the VAE does not move; the
cache holds what the encoder gives; --resume continues it exactly (tests/test_training.py); bad
configurations are refused with a message.
"""
import copy

import pytest
import torch

from lsgm_core.checkpoint import load_model, read_checkpoint
from lsgm_core.config import ConfigError, load_config
from lsgm_core.data import load_dataset
from lsgm_core.latents import LatentCache
from lsgm_core.train import Trainer

from test_training import SMOKE, _log, _resume_and_compare

UNWEIGHTED = {"prior_weighting": "unweighted", "prior_sampler": "ll_uniform", "vae_sampler": "ll_iw"}


def _prior_config(init_from, **train) -> dict:
    return load_config(SMOKE, {"objective": UNWEIGHTED,
                               "train": {"stage": "prior", "init_from": str(init_from), **train}})


def test_prior_stage_loss_equals_the_end_to_end_prior_loss(tiny_checkpoints, data_dir):
    """One batch of images through stage 2, and the same images' cache entries through the prior
    stage: the same z0 is drawn from the same seed, and with the same t and noise (the random state
    at the prior loss's entry) the loss and the prior's gradients are equal."""
    model = load_model(tiny_checkpoints["stage2"], use_ema=False).train()
    model.objective = UNWEIGHTED
    x, _ = load_dataset("binarized-mnist", "test", data_dir).batch(torch.arange(32), torch.Generator().manual_seed(0))
    seen = []
    original = model.prior_loss

    def recording(z0, state=None):
        if state is not None:
            torch.set_rng_state(state)
        seen.append((z0.detach().clone(), torch.get_rng_state()))
        return original(z0)

    model.prior_loss = recording
    torch.manual_seed(5)
    end_to_end = model.losses(x, 2)["prior_loss"]
    grads_e2e = torch.autograd.grad(end_to_end, list(model.prior.net.parameters()))
    z0_e2e, state = seen[0]

    with torch.no_grad():
        mu, log_sigma = model.encode(x)
    batch = LatentCache(mu, log_sigma).batch(torch.arange(32))
    model.prior_loss = lambda z0: recording(z0, state)
    torch.manual_seed(5)
    cached = model.losses(batch, "prior")
    assert set(cached) == {"loss", "prior_loss"}
    assert torch.equal(seen[1][0], z0_e2e)
    assert torch.equal(cached["loss"], end_to_end)
    grads_cached = torch.autograd.grad(cached["loss"], list(model.prior.net.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(grads_cached, grads_e2e))


def test_latent_cache_holds_the_encoders_posteriors(tiny_checkpoints, data_dir):
    """K encodings of every image, each of a fresh binarisation, equal to the encoder's output."""
    model = load_model(tiny_checkpoints["stage2"])
    dataset = load_dataset("binarized-mnist", "test", data_dir)
    small = copy.copy(dataset)
    small.images, small.labels = dataset.images[:300], dataset.labels[:300]
    cache = LatentCache.encode(model, small, encodings=2, seed=4, batch_size=128)
    assert len(cache) == 600 and cache.mu.shape[1:] == model.latent_shape
    gen = torch.Generator().manual_seed(4)
    chunks = [c for _ in range(2) for c in torch.arange(300).split(128)]
    with torch.no_grad():
        expected = torch.cat([model.encode(small.batch(c, gen)[0])[0] for c in chunks])
    torch.testing.assert_close(cache.mu, expected, rtol=0, atol=1e-5)
    assert not torch.equal(cache.mu[:300], cache.mu[300:])  # two binarisations, two posteriors
    assert cache.batch(torch.tensor([0, 5])).shape == (2, 2 * model.latent_shape[0], *model.latent_shape[1:])
    with pytest.raises(ValueError, match="at least 1"):
        LatentCache.encode(model, small, encodings=0)


@pytest.mark.slow
def test_prior_stage_trains_the_prior_alone_and_logs_the_gap(tiny_checkpoints, data_dir, tmp_path):
    """The VAE's weights stay those of init_from, the prior moves, the EMA prior starts from
    init_from's; train.eval_fid logs the FID, its posterior floor and their ratio."""
    cfg = _prior_config(tiny_checkpoints["stage2"], max_steps=6, batch_size=32, log_every=3, eval_every=6,
                        eval_images=50, eval_fid=100, num_threads=1)
    trainer = Trainer(cfg, tmp_path / "prior", data_dir, device="cpu", show_progress=False)
    assert len(trainer.latents) == 60000 and set(trainer.optimizers) == {"prior"}
    result = trainer.train()
    assert result["stage"] == "prior" and result["step"] == 6
    _, _, start = read_checkpoint(tiny_checkpoints["stage2"], parts=("model", "ema"))
    _, meta, end = read_checkpoint(tmp_path / "prior", parts=("model",))
    vae = [k for k in start["model"] if k.startswith(("encoder.", "decoder."))]
    assert vae and all(torch.equal(end["model"][k], start["model"][k]) for k in vae)
    net = [k for k in start["ema"] if k.startswith("net.")]
    assert any(not torch.equal(end["model"][f"prior.{k}"], start["ema"][k]) for k in net)
    assert meta["inactive_channels"] == read_checkpoint(tiny_checkpoints["stage2"], parts=())[1]["inactive_channels"]
    evals = [r for r in _log(tmp_path / "prior") if "test_fid" in r]
    assert len(evals) == 1 and evals[0]["fid_samples"] == 100
    assert evals[0]["posterior_fid"] > 0 and evals[0]["fid_ratio"] == pytest.approx(
        evals[0]["test_fid"] / evals[0]["posterior_fid"], rel=1e-2)


@pytest.mark.slow
def test_prior_stage_can_start_a_new_prior(tiny_checkpoints, data_dir, tmp_path):
    """train.init_prior = false builds the config's own prior (here another SDE), zero at the start
    (N(0, I)), with the inactive channels found from the KL as stage 2 finds them."""
    cfg = _prior_config(tiny_checkpoints["stage2"], init_prior=False, max_steps=2)
    cfg["model"]["prior"]["sde"] = {"kind": "vpsde", "beta0": 0.1, "beta1": 20.0, "t_eps": 1e-5}
    trainer = Trainer(cfg, tmp_path / "new", data_dir, device="cpu", show_progress=False)
    assert trainer.model.prior.sde.name == "vpsde"
    assert all(float(p.detach().abs().max()) == 0.0 for p in trainer.model.prior.net.conv_out.parameters())
    _, meta, _ = read_checkpoint(tiny_checkpoints["stage2"], parts=())
    assert trainer.inactive == meta["inactive_channels"]


@pytest.mark.parametrize("train, match", [
    ({"init_from": None}, "train.init_from"),
    ({"init_prior": True, "_sde": True}, "init_prior=false"),
    ({"stage": "priors"}, "train.stage"),
    ({"stage": True}, "train.stage"),
    ({"eval_fid": 10, "_folder": True}, "train.eval_fid"),
])
def test_prior_stage_refuses_bad_configs(tiny_checkpoints, data_dir, tmp_path, train, match):
    train = dict(train)
    cfg = _prior_config(tiny_checkpoints["stage2"])
    if train.pop("_sde", False):
        cfg["model"]["prior"]["sde"] = {"kind": "vpsde", "beta0": 0.1, "beta1": 20.0, "t_eps": 1e-5}
    if train.pop("_folder", False):
        folder = tmp_path / "images"
        folder.mkdir()
        from PIL import Image
        for i in range(40):
            Image.new("L", (32, 32), i * 5).save(folder / f"{i}.png")
        cfg["data"]["dataset"] = f"folder:{folder}"
    cfg["train"].update(train)
    with pytest.raises(ConfigError, match=match):
        Trainer(cfg, tmp_path / "bad", data_dir, device="cpu", show_progress=False)


@pytest.mark.slow
def test_prior_stage_resume_continues_exactly(tiny_checkpoints, data_dir, tmp_path):
    """20 steps in one go against 10 stopped by SIGTERM and 10 more with --resume: the same loss
    curve and weights, bit for bit (the latent cache is encoded again, from the same seeds)."""
    cfg = _prior_config(tiny_checkpoints["stage2"], max_steps=20, batch_size=16, log_every=5, ckpt_every=10,
                        warmup_steps=4, seed=3, num_threads=1)
    threads = torch.get_num_threads()
    try:
        _resume_and_compare(cfg, data_dir, tmp_path)
    finally:
        torch.set_num_threads(threads)
