"""Training: stage 1 (VAE with a N(0, I) prior), stage 2 (VAE and SGM prior end to end) and the
prior stage (the prior alone, on the cached latents of a frozen VAE: lsgm_core.latents).

    python -m lsgm_core.train --config configs/bmnist_stage1.toml --data-dir DATA --out runs/s1
    torchrun --nproc_per_node 2 -m lsgm_core.train --config ... --out ...   # data parallel (DDP)

Progress goes to stderr (tqdm), one JSON object per logged step to OUT/log.jsonl (its numbers also to
TensorBoard event files in OUT where tensorboard is installed: lsgm_core.tensorboard_events), and one JSON
line with the final figures to stdout. Every random draw of a step is seeded by (seed, step,
rank), so `--resume` continues exactly the loss curve the uninterrupted run would have drawn.
The run is built (model, data, optimisers, resume state) by lsgm_core.run; this module is the loop.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from . import atomic
from .checkpoint import save_run_checkpoint
from .cli import report
from .config import ConfigError, load_config
from .run import Run, kl_per_channel
from .tensorboard_events import EventLog
from .tensors import seeded_generator

# kl_per_channel lives in lsgm_core.run (it picks stage 2's inactive channels); callers import it from here too
__all__ = ["Trainer", "TrainingError", "bound_nelbo", "kl_per_channel", "parse_overrides", "main"]


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. repeated non-finite losses); the last good checkpoint is kept."""


def bound_nelbo(model, dataset, stage: int, limit: int = 1000, batch_size: int = 250, seed: int = 0) -> float:
    """Mean training bound (NELBO, nats) over the first `limit` images: stage 1 uses the N(0, I)
    prior, stage 2 the score-matching estimate of the cross-entropy."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = seeded_generator(seed)
        for chunk in torch.arange(min(limit, len(dataset))).split(batch_size):
            x, _ = dataset.batch(chunk, generator=gen)
            total += model.losses(x.to(device), stage)["nelbo"].item() * len(chunk)
            count += len(chunk)
    model.train(was_training)
    return total / count


class Trainer(Run):
    """The training loop over a Run (lsgm_core.run): schedules, steps, logging, checkpoints, evaluation."""

    _stop_signal = None  # the signal that ends the loop after its current step
    _clock = None  # (perf_counter at start of this process's training, elapsed before it)
    _events = None  # the TensorBoard copy of log.jsonl (rank 0, while training)

    def seconds(self) -> float:
        """Wall time spent training, over all resumed segments."""
        if self._clock is None:
            return self.elapsed
        return self._clock[1] + time.perf_counter() - self._clock[0]

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
    def _all_finite(self, value: torch.Tensor) -> bool:
        ok = torch.isfinite(value.detach()).all().float().reshape(1)
        if self.distributed:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item() > 0)

    def train_step(self) -> dict | None:
        """Optimisation step number self.step, which then moves on by one; None when the step was
        skipped (and counted in self.bad_steps) for a non-finite loss or gradient."""
        stats = self._update(self.step)
        self.bad_steps += stats is None
        self.step += 1
        return stats

    def _update(self, step: int) -> dict | None:
        """Forward, backward, clipping, the optimisers and the EMA for step `step`; its figures."""
        t = self.cfg["train"]
        self.model.train()
        x = self.batch(step)
        torch.manual_seed(self.step_seed(step))
        kl = self.kl_coeff(step)
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * self.lr_factor(step, group["schedule"])
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
            self.ema.update(self.model.prior, step)
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
        tensors, meta = self.checkpoint_state()
        meta.update(seconds=round(self.seconds(), 2), metrics=metrics or {})
        return save_run_checkpoint(self.out, self.step, self.cfg, tensors, meta, self.cfg["train"]["keep_checkpoints"])

    def _on_signal(self, signum, frame):
        self._stop_signal = signum

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """SIGTERM and SIGINT end the loop after the current step (which is then saved)."""
        old = {}
        if threading.current_thread() is threading.main_thread():
            old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _open_log(self):
        """log.jsonl, on rank 0 only. It is appended to, not replaced through lsgm_core.atomic: a kill
        tears at most its last line, which --resume drops, and rewriting the curve at every logged
        step would cost time in proportion to its length."""
        return open(self.out / "log.jsonl", "a") if self.rank == 0 else contextlib.nullcontext()

    def _log(self, log, record: dict, step: int | None = None) -> None:
        """One line of log.jsonl for the current step (or `step`), flushed: the app reads the curve live."""
        if log:
            line = {"step": self.step if step is None else step, **record}
            log.write(json.dumps(line) + "\n")
            log.flush()
            if self._events is not None:
                self._events.write(line)

    def train(self, max_steps: int | None = None) -> dict:
        """Train until max_steps (or a stop signal); returns the final figures."""
        t = self.cfg["train"]
        if max_steps is not None:
            t["max_steps"] = int(max_steps)
        if self.rank == 0:
            atomic.write_text(self.out / "config.json", json.dumps(self.cfg, indent=2))
        desc = ("pixel SGM" if self.model.kind == "pixel" else "prior on cached latents" if self.stage == "prior"
                else f"stage {self.stage}")
        consecutive_bad, last_good, images = 0, None, 0
        start = time.perf_counter()
        self._clock = (start, self.elapsed)
        with (self._stop_on_signals(), self._open_log() as log,
              EventLog(self.out, self.step) if self.rank == 0 else contextlib.nullcontext() as self._events,
              tqdm(total=t["max_steps"], initial=self.step, disable=not self.show_progress, desc=desc,
                   file=sys.stderr, dynamic_ncols=True) as bar):
            while self.step < t["max_steps"] and self._stop_signal is None:
                stats = self.train_step()
                if stats is None:
                    consecutive_bad += 1
                    self._log(log, {"skipped": "non-finite loss or gradient"}, step=self.step - 1)
                    if consecutive_bad >= t["max_bad_steps"]:
                        raise TrainingError(
                            f"{consecutive_bad} consecutive steps had a non-finite loss or gradient (step "
                            f"{self.step - 1}); stopped. The last good checkpoint is kept in {self.out}; lower the "
                            "learning rates or the gradient clip, then --resume.")
                    continue
                consecutive_bad, last_good = 0, stats
                images += t["batch_size"]
                bar.update(1)
                if self.step % t["log_every"] == 0 or self.step == t["max_steps"]:
                    bar.set_postfix(loss=f"{stats['loss']:.2f}")
                    self._log(log, {**{k: round(v, 5) for k, v in stats.items()}, "seconds": round(self.seconds(), 2),
                                    "images_per_s": round(images / max(time.perf_counter() - start, 1e-9), 1)})
                if t["eval_every"] and self.step % t["eval_every"] == 0 and self.has_evaluation and log:
                    self._log(log, {**self.evaluation(), "seconds": round(self.seconds(), 2)})
                if self.step % t["ckpt_every"] == 0 and self.step < t["max_steps"]:
                    self.save()
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

    @property
    def samples_from_prior(self) -> bool:
        """Whether the model being trained draws samples (a stage-1 VAE has only its N(0, I) prior)."""
        return self.model.kind == "pixel" or self.stage != 1

    @property
    def has_evaluation(self) -> bool:
        """An LSGM always has its test bound to log; a pixel model only the FID of train.eval_fid samples."""
        return self.model.kind == "lsgm" or bool(self.cfg["train"]["eval_fid"])

    def evaluation(self) -> dict:
        """The time-to-quality curve's point: for an LSGM the test NELBO bound of train.eval_images
        images and, with train.eval_fid = N, the FID of N samples (fast solver, seed 0, the model's
        denoising time) against N test images, with an LSGM's posterior floor and their ratio
        (lsgm_core.quality). A pixel model logs only the FID: its likelihood is an ODE integral,
        too dear to log in the loop (`python -m lsgm_core.evaluate` gives it)."""
        from .quality import sample_fids
        from .solvers import sample

        t = self.cfg["train"]
        model = self.model_for_eval()
        out = {}
        if model.kind == "lsgm":
            out = {"test_bound_nelbo": round(bound_nelbo(model, self.test_set, self.eval_stage, limit=t["eval_images"]), 3),
                   "eval_images": min(t["eval_images"], len(self.test_set))}
        if t["eval_fid"] and self.samples_from_prior:
            model.eval()
            images = sample(model, t["eval_fid"], "fast", seed=0, batch_size=500).images.cpu()
            fids = sample_fids(model, images, self.data_dir)
            out.update(test_fid=round(fids.pop("fid"), 3), **{k: round(v, 3) for k, v in fids.items()},
                       fid_samples=t["eval_fid"])
        return out


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
