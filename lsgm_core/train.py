"""Training: stage 1 (VAE with a N(0, I) prior), stage 2 (VAE and SGM prior end to end) and the
prior stage (the prior alone, on the cached latents of a frozen VAE: lsgm_core.latents).

    python -m lsgm_core.train --config configs/bmnist_stage1.toml --data-dir DATA --out runs/s1
    torchrun --nproc_per_node 2 -m lsgm_core.train --config ... --out ...   # data parallel (DDP)

Progress goes to stderr (tqdm), one JSON object per logged step to OUT/log.jsonl, and one JSON
line with the final figures to stdout. Every random draw of a step is seeded by (seed, step,
rank), so `--resume` continues exactly the loss curve the uninterrupted run would have drawn.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .checkpoint import CheckpointError, load_state, read_checkpoint, resolve_checkpoint, save_run_checkpoint
from .cli import report
from .config import ConfigError, fill_defaults, load_config, merge
from .data import load_dataset
from .device import pick_device
from .latents import LatentCache
from .model import build_model


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. repeated non-finite losses); the last good checkpoint is kept."""


PRECISIONS = ("fp32", "bf16")
STAGES = (1, 2, "prior")


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
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset), generator=gen)[:n]
    total = torch.zeros(model.latent_shape[0], dtype=torch.float64)
    with torch.no_grad():
        for chunk in idx.split(batch_size):
            x, _ = dataset.batch(chunk, generator=gen)
            mu, log_sigma = model.encode(x.to(device))
            kl = 0.5 * (mu.pow(2) + (2 * log_sigma).exp() - 1.0) - log_sigma
            total += kl.sum((0, 2, 3)).double().cpu()
    return (total / len(idx)).float()


def bound_nelbo(model, dataset, stage: int, limit: int = 1000, batch_size: int = 250, seed: int = 0) -> float:
    """Mean training bound (NELBO, nats) over the first `limit` images: stage 1 uses the N(0, I)
    prior, stage 2 the score-matching estimate of the cross-entropy."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        for chunk in torch.arange(min(limit, len(dataset))).split(batch_size):
            x, _ = dataset.batch(chunk, generator=gen)
            total += model.losses(x.to(device), stage)["nelbo"].item() * len(chunk)
            count += len(chunk)
    model.train(was_training)
    return total / count


def _logged_step(line: str) -> float:
    """The step of a log.jsonl line; infinity (the line is dropped) for a blank one or one torn by a
    kill in mid-write."""
    try:
        return json.loads(line).get("step", 0)
    except ValueError:
        return math.inf


class Trainer:
    """One training run, in one process of a (possibly distributed) job."""

    def __init__(self, config: dict, out: str | Path, data_dir=None, device: str | None = None,
                 resume: bool = False, show_progress: bool = True, overrides: dict | None = None):
        """With `resume`, the run goes on with the config saved in its checkpoint, not `config`
        (only its train.max_steps is taken), with `overrides` (e.g. the CLI's --set) applied on top."""
        self.out = Path(out)
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
        self.stage = t["stage"]
        if self.stage not in STAGES or isinstance(self.stage, bool):
            raise ConfigError(f"train.stage must be 1, 2 or \"prior\", got {t['stage']!r}")
        if self.stage == "prior" and (config["model"]["kind"] != "lsgm" or not t["init_from"]):
            raise ConfigError('train.stage "prior" trains the prior of an LSGM on the latents of a trained '
                              "VAE: set model.kind to \"lsgm\" and train.init_from to an LSGM checkpoint")
        if t["precision"] not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {t['precision']!r}")
        if t["lr_prior_schedule"] not in ("constant", "cosine"):
            raise ConfigError(f"train.lr_prior_schedule must be \"constant\" or \"cosine\", got {t['lr_prior_schedule']!r}")
        if t["batch_size"] < self.world:
            raise ConfigError(f"train.batch_size {t['batch_size']} is smaller than the {self.world} processes")

        d = config["data"]
        self.data_dir = data_dir
        self.dataset = load_dataset(d["dataset"], "train", data_dir, image_size=d["image_size"], channels=d["channels"])
        self.test_set = (load_dataset(d["dataset"], "test", data_dir, image_size=d["image_size"], channels=d["channels"])
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
        self.ema = ({k: v.detach().clone() for k, v in self.model.prior.state_dict().items()}
                    if trains_prior else None)
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
        self._stop_signal = None
        self._clock = None  # (perf_counter at start of this process's training, elapsed before it)

    def seconds(self) -> float:
        """Wall time spent training, over all resumed segments."""
        if self._clock is None:
            return self.elapsed
        return self._clock[1] + time.perf_counter() - self._clock[0]

    # set-up -------------------------------------------------------------------------------
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
        _, meta, tensors = read_checkpoint(self.resume_from, parts=("model", "ema", "train"))
        load_state(self.model, tensors["model"], f"{meta['path']}/model.safetensors")
        if self.ema is not None and "ema" in tensors:
            self.ema = {k: v.to(self.device) for k, v in tensors["ema"].items()}
        train = tensors.get("train", {})
        for name, opt in self.optimizers.items():
            groups = meta["optimizers"][name]
            state = {}
            prefix = f"{name}."
            for key, value in train.items():
                if key.startswith(prefix):
                    idx, field = key[len(prefix):].split(".", 1)
                    state.setdefault(int(idx), {})[field] = value
            # the learning rates follow the config (which --set may have changed), not the checkpoint
            current = [{k: g[k] for k in ("base_lr", "schedule")} for g in opt.param_groups]
            opt.load_state_dict({"state": state, "param_groups": [{**g, **c} for g, c in zip(groups, current)]})
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
        tmp = log.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, log)

    # schedules --------------------------------------------------------------------------
    def kl_coeff(self, step: int) -> float:
        t = self.cfg["train"]
        ramp = max(1, int(t["kl_warmup_frac"] * t["max_steps"]))
        return min(1.0, t["kl_start"] + (1.0 - t["kl_start"]) * step / ramp)

    def lr_factor(self, step: int, schedule: str) -> float:
        """Linear warm-up, then constant or cosine decay to lr_min_frac over train.max_steps (the VAE's
        always, the prior's with train.lr_prior_schedule = "cosine")."""
        t = self.cfg["train"]
        warm = min(1.0, (step + 1) / max(1, t["warmup_steps"]))
        if schedule == "constant":
            return warm
        progress = min(1.0, step / max(1, t["max_steps"]))
        return warm * (t["lr_min_frac"] + (1 - t["lr_min_frac"]) * 0.5 * (1 + math.cos(math.pi * progress)))

    # the loop ---------------------------------------------------------------------------
    def _batch(self, step: int) -> torch.Tensor:
        """The step's images, or for the prior stage its latent-cache entries."""
        t = self.cfg["train"]
        per_rank = t["batch_size"] // self.world
        n = len(self.latents if self.latents is not None else self.dataset)
        per_epoch = n // t["batch_size"]
        epoch, pos = divmod(step, per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(t["seed"] * 7919 + epoch))
        start = pos * t["batch_size"] + self.rank * per_rank
        idx = perm[start:start + per_rank]
        if self.latents is not None:
            return self.latents.batch(idx.to(self.latents.mu.device)).to(self.device, non_blocking=True)
        gen = torch.Generator().manual_seed(self._step_seed(step) + 1)
        x, _ = self.dataset.batch(idx, generator=gen)
        return x.to(self.device, non_blocking=True)

    def _step_seed(self, step: int) -> int:
        return (self.cfg["train"]["seed"] * 1_000_003 + step) * 64 + self.rank

    def _all_finite(self, value: torch.Tensor) -> bool:
        ok = torch.isfinite(value.detach()).all().float().reshape(1)
        if self.distributed:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item() > 0)

    def train_step(self) -> dict | None:
        """One optimisation step; None when the step was skipped for a non-finite loss or gradient."""
        t = self.cfg["train"]
        self.model.train()
        x = self._batch(self.step)
        torch.manual_seed(self._step_seed(self.step))
        kl = self.kl_coeff(self.step)
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * self.lr_factor(self.step, group["schedule"])
            opt.zero_grad(set_to_none=True)
        # bf16 autocast covers the networks only; the losses' closed forms stay in fp32
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if t["precision"] == "bf16"
                    else contextlib.nullcontext())
        with autocast:
            out = (self.ddp or self.model)(x, self.stage, kl)
        if not self._all_finite(out["loss"]):
            return None
        out["loss"].backward()
        norms = {}
        for name, opt in self.optimizers.items():
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            norms[name] = torch.nn.utils.clip_grad_norm_(params, t["grad_clip"])
        if not self._all_finite(torch.stack(list(norms.values())) if norms else torch.zeros(1)):
            for opt in self.optimizers.values():
                opt.zero_grad(set_to_none=True)
            return None
        for opt in self.optimizers.values():
            opt.step()
        if self.ema is not None:
            decay = min(t["ema"], (1 + self.step) / (10 + self.step))
            with torch.no_grad():
                for k, v in self.model.prior.state_dict().items():
                    if v.dtype.is_floating_point:
                        self.ema[k].lerp_(v, 1.0 - decay)
                    else:
                        self.ema[k].copy_(v)
        stats = {k: v.item() for k, v in out.items() if v.dim() == 0}
        stats.update({f"grad_norm_{k}": v.item() for k, v in norms.items()})
        if self.stage != "prior":  # the prior stage has no KL term to weigh
            stats["kl_coeff"] = kl
        if self.model.kind == "lsgm" and self.stage != 1:
            stats["alpha_mean"] = self.model.prior.alpha().mean().item()
        return stats

    def save(self, metrics: dict | None = None) -> Path | None:
        if self.rank != 0:
            return None
        train_tensors = {}
        groups = {}
        for name, opt in self.optimizers.items():
            sd = opt.state_dict()
            groups[name] = sd["param_groups"]
            for idx, fields in sd["state"].items():
                for field, value in fields.items():
                    train_tensors[f"{name}.{idx}.{field}"] = torch.as_tensor(value)
        tensors = {"model": self.model.state_dict()}
        if self.ema is not None:
            tensors["ema"] = self.ema
        if train_tensors:
            tensors["train"] = train_tensors
        meta = {"optimizers": groups, "bad_steps": self.bad_steps, "seconds": round(self.seconds(), 2),
                "stage": self.stage, "kind": self.model.kind, "inactive_channels": self.inactive,
                "metrics": metrics or {}, "world_size": self.world, "device": str(self.device)}
        return save_run_checkpoint(self.out, self.step, self.cfg, tensors, meta, self.cfg["train"]["keep_checkpoints"])

    def _on_signal(self, signum, frame):
        self._stop_signal = signum

    def train(self, max_steps: int | None = None) -> dict:
        """Train until max_steps (or a stop signal); returns the final figures."""
        t = self.cfg["train"]
        if max_steps is not None:
            t["max_steps"] = int(max_steps)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(self.cfg, indent=2))
        old_handlers = {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                old_handlers[s] = signal.signal(s, self._on_signal)
        log = open(self.out / "log.jsonl", "a") if self.rank == 0 else None
        desc = ("pixel SGM" if self.model.kind == "pixel" else "prior on cached latents" if self.stage == "prior"
                else f"stage {self.stage}")
        bar = tqdm(total=t["max_steps"], initial=self.step, disable=not self.show_progress, desc=desc,
                   file=sys.stderr, dynamic_ncols=True)
        consecutive_bad, last_good, images = 0, None, 0
        start = time.perf_counter()
        self._clock = (start, self.elapsed)
        try:
            while self.step < t["max_steps"] and self._stop_signal is None:
                stats = self.train_step()
                if stats is None:
                    self.bad_steps += 1
                    consecutive_bad += 1
                    if log:
                        log.write(json.dumps({"step": self.step, "skipped": "non-finite loss or gradient"}) + "\n")
                    if consecutive_bad >= t["max_bad_steps"]:
                        raise TrainingError(
                            f"{consecutive_bad} consecutive steps had a non-finite loss or gradient (step {self.step}); "
                            f"stopped. The last good checkpoint is kept in {self.out}; lower the learning rates "
                            "or the gradient clip, then --resume.")
                    self.step += 1
                    continue
                consecutive_bad = 0
                last_good = stats
                self.step += 1
                images += t["batch_size"]
                bar.update(1)
                if self.step % t["log_every"] == 0 or self.step == t["max_steps"]:
                    now = time.perf_counter()
                    rec = {"step": self.step, **{k: round(v, 5) for k, v in stats.items()},
                           "seconds": round(self.seconds(), 2),
                           "images_per_s": round(images / max(now - start, 1e-9), 1)}
                    bar.set_postfix(loss=f"{stats['loss']:.2f}")
                    if log:
                        log.write(json.dumps(rec) + "\n")
                        log.flush()
                if (t["eval_every"] and self.step % t["eval_every"] == 0 and self.model.kind == "lsgm"
                        and log):
                    log.write(json.dumps({"step": self.step, **self.evaluation(),
                                          "seconds": round(self.seconds(), 2)}) + "\n")
                    log.flush()
                if self.step % t["ckpt_every"] == 0 and self.step < t["max_steps"]:
                    self.save()
        finally:
            bar.close()
            if log:
                log.close()
            for s, h in old_handlers.items():
                signal.signal(s, h)
        seconds = time.perf_counter() - start
        metrics = {"train_loss": last_good["loss"] if last_good else None}
        if self.model.kind == "lsgm" and self.rank == 0:
            metrics["test_bound_nelbo_1k"] = round(bound_nelbo(self.model_for_eval(), self.test_set, self.eval_stage), 3)
        path = self.save(metrics)
        self.elapsed, self._clock = self.seconds(), None
        return {"out": str(self.out), "checkpoint": str(path) if path else None, "step": self.step,
                "stage": self.stage, "seconds": round(self.elapsed, 2),
                "images_per_s": round(images / max(seconds, 1e-9), 1), "bad_steps": self.bad_steps,
                "stopped_by_signal": self._stop_signal is not None, **metrics}

    @property
    def eval_stage(self) -> int:
        """The losses that give the model's NELBO bound: the prior stage's model is a stage-2 one."""
        return 2 if self.stage == "prior" else self.stage

    def evaluation(self) -> dict:
        """The time-to-quality curve's point: the test NELBO bound of train.eval_images images and,
        with train.eval_fid = N, the FID of N samples (fast solver, seed 0), its posterior floor and
        their ratio (lsgm_core.quality)."""
        t = self.cfg["train"]
        model = self.model_for_eval()
        out = {"test_bound_nelbo": round(bound_nelbo(model, self.test_set, self.eval_stage, limit=t["eval_images"]), 3),
               "eval_images": min(t["eval_images"], len(self.test_set))}
        if t["eval_fid"] and self.stage != 1:
            from .quality import sample_fids
            from .solvers import sample

            model.eval()
            images = sample(model, t["eval_fid"], "fast", seed=0, batch_size=500).images.cpu()
            fids = sample_fids(model, images, self.data_dir)
            out.update(test_fid=round(fids.pop("fid"), 3), **{k: round(v, 3) for k, v in fids.items()},
                       fid_samples=t["eval_fid"])
        return out

    def model_for_eval(self):
        """The model with the prior's EMA weights swapped in (a copy; training weights untouched)."""
        if self.ema is None:
            return self.model
        m = copy.deepcopy(self.model)
        m.prior.load_state_dict(self.ema)
        return m


def parse_overrides(items: list[str]) -> dict:
    """--set train.lr_vae=1e-3 model.prior.net.channels=32 -> nested dict (values parsed as JSON)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lsgm_core.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="TOML or JSON run configuration (defaults: lsgm_core/config.py)")
    ap.add_argument("--data-dir", help="data folder (default: $LSGM_DATA_DIR or ~/.cache/lsgm/data)")
    ap.add_argument("--out", required=True, help="run folder: checkpoints, log.jsonl, config.json")
    ap.add_argument("--max-steps", type=int, help="train up to this step (overrides train.max_steps)")
    ap.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    ap.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: the best available)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config entries")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bar on stderr")
    args = ap.parse_args(argv)

    def run() -> dict | None:
        overrides = parse_overrides(args.set)
        if args.max_steps is not None:
            if args.max_steps <= 0:
                raise ConfigError(f"--max-steps must be positive, got {args.max_steps}")
            overrides.setdefault("train", {})["max_steps"] = args.max_steps
        cfg = load_config(args.config, overrides)
        trainer = Trainer(cfg, args.out, args.data_dir, args.device, args.resume, not args.no_progress, overrides)
        result = trainer.train()
        return result if trainer.rank == 0 else None

    try:
        return report(run, (TrainingError,))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
