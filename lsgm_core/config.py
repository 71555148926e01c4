"""Run configuration: defaults, loading from TOML or JSON, and validation of unknown keys."""
from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path

DEFAULTS: dict = {
    "model": {
        "kind": "lsgm",               # "lsgm" (VAE + latent SGM prior) or "pixel" (SGM on pixels)
        "latent_channels": 16,
        "vae_channels": [32, 64],     # one resolution level each: 32x32 images -> 8x8 latents
        "vae_res_blocks": 1,
        "likelihood": "auto",         # bernoulli for binary data, logistic otherwise
        "in_channels": None,          # filled from the data set
        "image_size": 32,
        "crop": None,                 # padding stripped before the likelihood (2 for 28x28 data)
        "prior": {
            "net": {"channels": 64, "ch_mult": [1, 2], "num_res_blocks": 1, "attention": True, "dropout": 0.0},
            "sde": {"kind": "geometric_vpsde", "sigma2_min": 1e-4, "sigma2_max": 0.99, "t_eps": 0.01},
            "mixed": True,
            "mixing_logit_init": -6.0,
        },
    },
    "objective": {
        "vae_sampler": "ll_iw",       # the encoder always uses the likelihood weighting
        "prior_weighting": "likelihood",  # likelihood | unweighted | reweighted
        "prior_sampler": "ll_iw",     # ll_iw | drop_all_iw | ll_uniform
    },
    "data": {"dataset": "binarized-mnist", "image_size": 32, "channels": None},
    "sampling": {
        "denoise_t": 0.0,             # the fast, ODE and SDE solvers stop here and jump to E[z0 | z_t] (0: no jump)
    },
    "train": {
        "stage": 1,                   # 1: VAE with N(0, I) prior; 2: VAE and SGM prior end to end;
                                      # "prior": the prior alone on cached latents of init_from's frozen VAE
        "init_from": None,            # stage 2 starts from this stage-1 checkpoint; "prior" from an LSGM one
        "init_prior": True,           # stage "prior": start from init_from's prior (false: a new one, model.prior)
        "latent_encodings": 1,        # stage "prior": encodings of each training image kept (fresh binarisations)
        "batch_size": 128,
        "max_steps": 10000,
        "lr_vae": 1e-3,
        "lr_prior": 3e-4,
        "lr_mixing_logit": 1e-2,      # the per-channel mixing logits move from their init in few steps
        "lr_min_frac": 0.1,           # cosine decay of the VAE's learning rate down to this fraction
        "lr_prior_schedule": "constant",  # the prior's: "constant" after warm-up, or "cosine" like the VAE's
        "warmup_steps": 100,
        "kl_start": 0.1,              # KL coefficient rises from kl_start to 1 over kl_warmup_frac
        "kl_warmup_frac": 0.2,
        "ema": 0.999,
        "grad_clip": 100.0,
        "seed": 0,
        "log_every": 50,
        "ckpt_every": 500,
        "keep_checkpoints": 2,
        "max_bad_steps": 20,          # consecutive non-finite losses that stop the run
        "inactive_kl_threshold": 0.1, # stage-2 channels with less KL (nats) get alpha fixed to 0
        "num_threads": None,
        "precision": "fp32",          # fp32 | bf16 (autocast of the networks on CUDA and CPU)
        "eval_every": 0,              # every N steps, log an LSGM's test NELBO bound of eval_images images
        "eval_images": 1000,
        "eval_fid": 0,                # with eval_every: also the FID of this many samples (an LSGM's with its
                                      # posterior floor); a pixel model logs only this
    },
}

SECTIONS = tuple(DEFAULTS)


class ConfigError(ValueError):
    pass


def merge(base: dict, override: dict, where: str = "") -> dict:
    """Deep-merge `override` into a copy of `base`, refusing keys that base does not know."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        path = f"{where}{key}"
        if key not in base:
            raise ConfigError(f"unknown config key {path!r}; known keys here: {', '.join(base)}")
        if isinstance(base[key], dict) and not isinstance(value, dict):
            raise ConfigError(f"config key {path!r} must be a table/object")
        if key == "sde":
            # each SDE kind has its own options: a new kind replaces the table, the same kind updates it
            same = value.get("kind", base[key].get("kind")) == base[key].get("kind")
            out[key] = {**base[key], **value} if same else dict(value)
        elif isinstance(base[key], dict):
            out[key] = merge(base[key], value, path + ".")
        else:
            out[key] = value
    return out


def fill_defaults(saved: dict, base: dict = DEFAULTS) -> dict:
    """A copy of a saved config with the keys it predates taken from `base`; keys it has (also ones
    a run recorded there) are kept as saved."""
    out = copy.deepcopy(saved)
    for key, value in base.items():
        if key not in out:
            out[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(out[key], dict) and key != "sde":
            out[key] = fill_defaults(out[key], value)
    return out


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Defaults, then the file (TOML or JSON), then `overrides`."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        text = path.read_text()
        try:
            data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"config file {path} is not valid {path.suffix[1:].upper()}: {e}") from None
        cfg = merge(cfg, data)
    if overrides:
        cfg = merge(cfg, overrides)
    return cfg
