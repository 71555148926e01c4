"""A training run as its config and its folder make it, before the first step: the processes of a
(possibly distributed) job, the data, the model (started from train.init_from), the optimisers, the
prior's EMA and, with --resume, everything its latest checkpoint saved. lsgm_core.train's Trainer is
the loop over it; `checkpoint_state` is the inverse of what --resume loads.
"""
from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from . import atomic
from .checkpoint import (CheckpointError, check_fit, load_state, optimizers_from_tensors, optimizers_to_tensors,
                         read_checkpoint, resolve_checkpoint)
from .config import ConfigError, fill_defaults, merge
from .data import config_dataset
from .device import pick_device
from .ema import EMA
from .latents import LatentCache
from .model import build_model
from .tensors import kl_standard_normal, seeded_generator

PRECISIONS = ("fp32", "bf16")
STAGES = (1, 2, "prior")
# the optimisers' parameter-group keys that follow the config (which --set may change) on --resume
CONFIGURED = ("base_lr", "schedule")


def resolve_model_config(cfg: dict, dataset) -> dict:
    """Fill the model fields that follow from the data: channels, crop and decoder likelihood."""
    m = cfg["model"]
    m["in_channels"] = int(dataset.images.shape[1])
    m["image_size"] = int(dataset.images.shape[-1])
    m["crop"] = int(dataset.crop)
    if m["likelihood"] == "auto":
        m["likelihood"] = "bernoulli" if dataset.kind == "binary" else "logistic"
    return cfg


def kl_per_channel(model, dataset, n: int = 2048, batch_size: int = 256, seed: int = 0) -> torch.Tensor:
    """Mean KL(q(z0|x) || N(0, I)) of each latent channel, in nats, over n training images."""
    device = next(model.parameters()).device
    gen = seeded_generator(seed)
    idx = torch.randperm(len(dataset), generator=gen)[:n]
    total = torch.zeros(model.latent_shape[0], dtype=torch.float64)
    with torch.no_grad():
        for chunk in idx.split(batch_size):
            x, _ = dataset.batch(chunk, generator=gen)
            mu, log_sigma = model.encode(x.to(device))
            total += kl_standard_normal(mu, log_sigma).sum((0, 2, 3)).double().cpu()
    return (total / len(idx)).float()


def check_train_config(t: dict, model_kind: str, world: int) -> None:
    """A ConfigError for train settings that cannot run."""
    if t["stage"] not in STAGES or isinstance(t["stage"], bool):
        raise ConfigError(f"train.stage must be 1, 2 or \"prior\", got {t['stage']!r}")
    if t["stage"] == "prior" and (model_kind != "lsgm" or not t["init_from"]):
        raise ConfigError('train.stage "prior" trains the prior of an LSGM on the latents of a trained '
                          "VAE: set model.kind to \"lsgm\" and train.init_from to an LSGM checkpoint")
    if t["precision"] not in PRECISIONS:
        raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {t['precision']!r}")
    if t["lr_prior_schedule"] not in ("constant", "cosine"):
        raise ConfigError(f"train.lr_prior_schedule must be \"constant\" or \"cosine\", got {t['lr_prior_schedule']!r}")
    if t["batch_size"] < world:
        raise ConfigError(f"train.batch_size {t['batch_size']} is smaller than the {world} processes")


def _logged_step(line: str) -> float:
    """The step of a log.jsonl line; infinity (the line is dropped) for a blank one or one torn by a
    kill in mid-write."""
    try:
        return json.loads(line).get("step", 0)
    except ValueError:
        return math.inf


class Run:
    """One training run, in one process of a (possibly distributed) job, ready for its next step."""

    def __init__(self, config: dict, out: str | Path, data_dir=None, device: str | None = None,
                 resume: bool = False, show_progress: bool = True, overrides: dict | None = None):
        """With `resume`, the run goes on with the config saved in its checkpoint, not `config`
        (only its train.max_steps is taken), with `overrides` (e.g. the CLI's --set) applied on top."""
        self.out = Path(out)
        self._start_processes(device)
        self.show_progress = show_progress and self.rank == 0

        self.resume_from = None
        if resume:
            try:
                self.resume_from = resolve_checkpoint(self.out)
            except CheckpointError:
                self.resume_from = None  # nothing saved yet: --resume starts from scratch
        if self.resume_from is not None:
            saved, _, _ = read_checkpoint(self.resume_from, parts=())
            saved["train"]["max_steps"] = config["train"]["max_steps"]
            # a run saved before a config key existed takes its default
            config = merge(fill_defaults(saved), overrides or {})
        self.cfg = config
        t = config["train"]
        if t["num_threads"]:
            torch.set_num_threads(int(t["num_threads"]))
        check_train_config(t, config["model"]["kind"], self.world)
        self.stage = t["stage"]

        d = config["data"]
        self.data_dir = data_dir
        self.dataset = config_dataset(d, "train", data_dir)
        self.test_set = (config_dataset(d, "test", data_dir)
                         if not d["dataset"].startswith("folder:") else self.dataset)
        resolve_model_config(config, self.dataset)
        if t["eval_fid"]:
            from .features import load_classifier

            try:
                load_classifier(d["dataset"])
            except CheckpointError as e:
                raise ConfigError(f"train.eval_fid needs a feature classifier for {d['dataset']}; none is shipped "
                                  f"({e}): set train.eval_fid=0") from None

        torch.manual_seed(t["seed"])
        self.model = build_model(config).to(self.device)
        self.inactive: list[int] = []
        self.step = 0
        self.bad_steps = 0
        self.elapsed = 0.0
        if self.resume_from is None and self.stage in (2, "prior") and t["init_from"] and self.model.kind == "lsgm":
            self._init_from(t["init_from"])
        self._build_optimizers()
        if len(self.dataset) < t["batch_size"]:
            raise ConfigError(f"the data set has {len(self.dataset)} images, fewer than train.batch_size "
                              f"{t['batch_size']}; lower the batch size or add images")
        if self.resume_from is not None:
            self._load_resume_state()
        # the prior stage's data: the frozen encoder's q(z0|x), computed again (the same, seeded) on --resume
        self.latents = (LatentCache.encode(self.model, self.dataset, t["latent_encodings"], t["seed"],
                                           progress=self.show_progress) if self.stage == "prior" else None)
        self.ddp = (DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
                    if self.distributed else None)

    def _start_processes(self, device: str | None) -> None:
        """Join the torchrun job (when WORLD_SIZE says there is one) and pick this process's device."""
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.distributed and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
            dist.init_process_group(backend)
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.device = pick_device(device)
        if self.device.type == "cuda" and self.distributed:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(self.device)

    def _build_optimizers(self) -> None:
        """Adam for what the stage trains (the VAE, the prior, or both), and the prior's EMA."""
        t = self.cfg["train"]
        trains_vae = self.model.kind == "lsgm" and self.stage != "prior"
        trains_prior = self.stage != 1 or self.model.kind == "pixel"
        for p in self.model.prior.parameters():
            p.requires_grad_(trains_prior)
        for p in self.model.vae_parameters():
            p.requires_grad_(trains_vae)
        self.optimizers = {}
        if trains_vae:
            self.optimizers["vae"] = torch.optim.Adam(
                [{"params": self.model.vae_parameters(), "base_lr": t["lr_vae"], "schedule": "cosine"}])
        if trains_prior:
            net = [p for n, p in self.model.prior.named_parameters() if n != "mixing_logit"]
            groups = [{"params": net, "base_lr": t["lr_prior"], "schedule": t["lr_prior_schedule"]}]
            if self.model.prior.mixed:
                groups.append({"params": [self.model.prior.mixing_logit], "base_lr": t["lr_mixing_logit"],
                               "schedule": "constant"})
            self.optimizers["prior"] = torch.optim.Adam(groups)
        self.ema = EMA(self.model.prior, t["ema"]) if trains_prior else None

    def _init_from(self, path) -> None:
        """The VAE of checkpoint `path`; for the prior stage with train.init_prior, its prior too.
        Channels are inactive as that prior had them, else where their KL is below the threshold."""
        cfg1, meta, tensors = read_checkpoint(path, parts=("model", "ema"))
        keys = ("latent_channels", "vae_channels", "vae_res_blocks", "likelihood", "in_channels")
        diff = [k for k in keys if cfg1["model"].get(k) != self.cfg["model"].get(k)]
        if diff:
            raise ConfigError(f"train.init_from {path}: its VAE differs from this config in {', '.join(diff)}")
        vae_state = {k: v for k, v in tensors["model"].items() if k.startswith(("encoder.", "decoder."))}
        holder = torch.nn.Module()
        holder.encoder, holder.decoder = self.model.encoder, self.model.decoder
        load_state(holder, vae_state, f"{meta['path']}/model.safetensors")
        if self.stage == "prior" and self.cfg["train"]["init_prior"]:
            if cfg1["model"]["prior"] != self.cfg["model"]["prior"]:
                raise ConfigError(f"train.init_from {path}: its prior differs from this config's model.prior; "
                                  "copy its model.prior, or set train.init_prior=false to train a new prior")
            prior_state = tensors.get("ema") or {k[len("prior."):]: v for k, v in tensors["model"].items()
                                                 if k.startswith("prior.")}
            load_state(self.model.prior, prior_state, f"{meta['path']}/model.safetensors")
            if meta.get("stage", 1) != 1:
                self.inactive = list(meta.get("inactive_channels", []))
                return
        kl = kl_per_channel(self.model, self.dataset)
        self.inactive = [c for c, v in enumerate(kl.tolist()) if v < self.cfg["train"]["inactive_kl_threshold"]]
        active = torch.ones_like(self.model.prior.active)
        active[self.inactive] = 0.0
        self.model.prior.active.copy_(active)
        self.cfg["train"]["init_kl_per_channel"] = [round(v, 4) for v in kl.tolist()]

    def _load_resume_state(self) -> None:
        """What --resume takes from the latest checkpoint: weights, EMA, optimiser moments, the step
        and its counters; the log is cut back to that step."""
        _, meta, tensors = read_checkpoint(self.resume_from, parts=("model", "ema", "train"))
        load_state(self.model, tensors["model"], f"{meta['path']}/model.safetensors")
        if self.ema is not None and "ema" in tensors:
            check_fit(self.model.prior, tensors["ema"], f"{meta['path']}/ema.safetensors")
            self.ema.load_state_dict(tensors["ema"])
        optimizers_from_tensors(self.optimizers, tensors.get("train", {}), meta.get("optimizers", {}), meta["path"],
                                keep=CONFIGURED)
        self.step = int(meta["step"])
        self.bad_steps = int(meta.get("bad_steps", 0))
        self.elapsed = float(meta.get("seconds", 0.0))
        self.inactive = list(meta.get("inactive_channels", []))
        self._truncate_log(self.step)

    def _truncate_log(self, step: int) -> None:
        """Drop log lines written after the checkpoint we resume from, so the curve has no repeats."""
        log = self.out / "log.jsonl"
        if self.rank != 0 or not log.is_file():
            return
        keep = [line for line in log.read_text().splitlines() if _logged_step(line) <= step]
        atomic.write_text(log, "".join(line + "\n" for line in keep))

    def batch(self, step: int) -> torch.Tensor:
        """The step's images, or for the prior stage its latent-cache entries."""
        t = self.cfg["train"]
        per_rank = t["batch_size"] // self.world
        n = len(self.latents if self.latents is not None else self.dataset)
        per_epoch = n // t["batch_size"]
        epoch, pos = divmod(step, per_epoch)
        perm = torch.randperm(n, generator=seeded_generator(t["seed"] * 7919 + epoch))
        start = pos * t["batch_size"] + self.rank * per_rank
        idx = perm[start:start + per_rank]
        if self.latents is not None:
            return self.latents.batch(idx.to(self.latents.mu.device)).to(self.device, non_blocking=True)
        x, _ = self.dataset.batch(idx, generator=seeded_generator(self.step_seed(step) + 1))
        return x.to(self.device, non_blocking=True)

    def step_seed(self, step: int) -> int:
        """The seed of every random draw of step `step` in this process: a resumed run draws what the
        uninterrupted one would have."""
        return (self.cfg["train"]["seed"] * 1_000_003 + step) * 64 + self.rank

    def checkpoint_state(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
        """The tensors (model, EMA, optimiser moments) and the meta.json entries that --resume loads."""
        train, groups = optimizers_to_tensors(self.optimizers)
        tensors = {"model": self.model.state_dict()}
        if self.ema is not None:
            tensors["ema"] = self.ema.state_dict()
        if train:
            tensors["train"] = train
        meta = {"optimizers": groups, "bad_steps": self.bad_steps, "stage": self.stage, "kind": self.model.kind,
                "inactive_channels": self.inactive, "world_size": self.world, "device": str(self.device)}
        return tensors, meta

    def model_for_eval(self):
        """The model with the prior's EMA weights swapped in (a copy; training weights untouched)."""
        if self.ema is None:
            return self.model
        m = copy.deepcopy(self.model)
        self.ema.copy_to(m.prior)
        return m
