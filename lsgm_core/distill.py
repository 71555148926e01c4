"""Distil a model's probability-flow ODE into a student that samples in 1, 2 or 4 network evaluations.

    python -m lsgm_core.distill --checkpoint C --out D [--pairs 20000] [--teacher-steps 40]
                                [--train-steps 3000] [--batch-size 256] [--channels N] [--lr 2e-4] [--seed 0]
                                [--decoder-channels 32,64 [--decoder-res-blocks 1] [--decoder-steps N]
                                 [--decoder-lr 1e-3] [--decoder-loss mse|cross-entropy] [--decoder-own F]
                                 [--decoder-posterior N --data-dir DATA]]
                                [--own-path F] [--adversarial W] [--segments] [--pairs-cache FILE]
                                [--student-from S]

1. Teacher paths: --pairs draws z1 ~ N(0, I) (seeded) and the teacher's path from each, by the
   fast solver with --teacher-steps steps at the model's own alpha and denoising time: its states
   at the times of the student's 4-step grid, z1 first and the end point z0 last
   (solvers.fast_states).
2. Regression (lsgm_core.student): at the times of its 4-step grid (solvers.student_grid: the fast
   solver's, made at the teacher's denoising time), which holds those of 1 and 2 steps, the student sees z_t = m_t z0 + sigma_t eps with eps = (z1 - m_1 z0) / sigma_1:
   the points its own deterministic moves visit when it is exact. It learns z0 by mean squared
   error over the active channels, starting from the teacher's U-Net (output layer zeroed). With
   --own-path F a fraction F of the batches instead sees points of the student's own 2- and 4-step
   paths (its moves made by itself), so that the later steps learn to correct the earlier ones.
   With --segments the student also takes the time its step goes to, and learns each step of its
   1-, 2- and 4-step grids from the teacher's state at the step's start to the teacher's state at
   its end (lsgm_core.student.segment_target): its multi-step samples follow the teacher's path.
   With --adversarial W the loss adds W times an adversarial term on the 1-step output: a small
   critic on the active channels learns to tell the student's z0 from the teacher's, the student to
   fool it (regression alone narrows the samples towards what z1 predicts).
   With --decoder-channels the student gets a decoder of its own, the VAE decoder's architecture at
   those widths, trained to give the model's mean images from the teacher's z0 (mean squared error
   over the pixels; --decoder-loss cross-entropy: the cross-entropy to the model's likelihood
   instead): 1-step samples then skip the full decoder, most of their cost. With
   --decoder-posterior N it also learns from one posterior sample z0 ~ q(z0|x) of each of N random
   training images: the student's z0 miss the teacher's, and a decoder that has seen more of the
   latent space than the teacher's samples gives the model's images there too. With
   --decoder-own F a fraction F of each decoder batch is the student's own z0 from fresh z1, the
   latents the distilled solver will hand it, with the model decoder's images of them as targets.
   With --student-from S the student starts from the one in checkpoint S (its U-Net, its sigma_data,
   and its decoder, which is kept as it is unless --decoder-channels trains a new one, or trains
   --decoder-steps more): a student follows its teacher after further training of the prior for a
   fraction of a new one's cost; --train-steps 0 keeps its U-Net as it is.
3. D: the teacher's checkpoint with the student in it (config "student"; its weights in
   model.safetensors beside the prior's EMA weights, rounded to float16 and stored so: half the
   bytes, the largest change this makes to 1-step images in the metrics), written atomically. Its
   metrics: on held-out pairs, the error of 1, 2 and 4 student steps against the teacher, as RMS
   over z0's spread; with a decoder, its pixel error against the model's decoder on the teacher's
   held-out z0 and on the student's 1-step z0 from the same z1.

`python -m lsgm_core.sample --checkpoint D --solver distilled --steps 1` then samples with it, as
do `bench sampling --runs distilled:1` and the app. One JSON line of figures goes to stdout,
progress to stderr.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from . import atomic
from .checkpoint import derived_meta, load_model, save_checkpoint, weights_digest
from .cli import report
from .data import config_dataset
from .device import pick_device
from .ema import EMA
from .nets import Decoder
from .quality import posterior_samples
from .solvers import ODE_EPS, ProbabilityFlow, denoise_time, fast_states, sample, student_grid
from .student import STEPS, Student, move, segment_target
from .tensors import per_channel, per_sample, seeded_generator

HELD_OUT = 1000  # pairs kept for the student's error, not trained on


def path_times(sde, denoise_t: float = 0.0) -> list[float]:
    """The times of a student's grids (solvers.student_grid) for 1, 2 and 4 steps, 1 to ODE_EPS:
    those of the largest, which hold the others'."""
    return student_grid(sde, max(STEPS), denoise_t)


def segments(steps: int, sde, denoise_t: float = 0.0) -> list[tuple[int, int]]:
    """The steps of the `steps`-step grid as (from, to) indices into path_times."""
    times = path_times(sde, denoise_t)
    grid = [min(range(len(times)), key=lambda i: abs(times[i] - t)) for t in student_grid(sde, steps, denoise_t)]
    return list(zip(grid, grid[1:]))


def teacher_paths(model, num: int, steps: int, seed: int = 0, batch_size: int = 1000, progress: bool = False,
                  grid_denoise_t: float = 0.0) -> torch.Tensor:
    """num seeded draws z1 ~ N(0, I) and the teacher's path from each: its states at the times of a
    student's grids made at `grid_denoise_t` (path_times; z1 first, z0 last),
    [num, len(path_times), ...], by the fast solver with `steps` network evaluations at the model's
    own alpha and denoising time (solvers.fast_states)."""
    z1 = torch.randn((num,) + tuple(model.prior.shape), generator=seeded_generator(seed))
    device = next(model.prior.parameters()).device
    times = path_times(model.prior.sde, grid_denoise_t)
    chunks = z1.split(batch_size)
    out = []
    with tqdm(total=len(chunks) * steps, desc="teacher ODE", unit="nfe", file=sys.stderr, disable=not progress,
              dynamic_ncols=True) as bar, torch.no_grad():
        for chunk in chunks:
            field = ProbabilityFlow(model.prior, None, lambda t, n: bar.update(1))
            out.append(fast_states(field, chunk.to(device), times, steps=steps, t_end=ODE_EPS,
                                   denoise_t=denoise_time(model)).transpose(0, 1).cpu())
    return torch.cat(out)


def cached_paths(model, path: str | Path, num: int, steps: int, seed: int = 0, progress: bool = False,
                 grid_denoise_t: float = 0.0) -> tuple[torch.Tensor, bool]:
    """teacher_paths, kept in the safetensors file `path` under a key of what they depend on; the
    second value says whether they came from the file."""
    # the paths depend on the prior's weights, not on a student the checkpoint may hold
    key = {"weights": weights_digest(model), "pairs": str(num),
           "teacher_steps": str(steps), "seed": str(seed),
           "times": str(path_times(model.prior.sde, grid_denoise_t))}
    path = Path(path)
    if path.exists():
        try:
            with safe_open(str(path), "pt") as f:
                if f.metadata() == key:
                    return f.get_tensor("paths"), True
        except (SafetensorError, OSError, KeyError):
            pass  # damaged, foreign or of an older kind: computed again and replaced
    paths = teacher_paths(model, num, steps, seed, progress=progress, grid_denoise_t=grid_denoise_t)
    atomic.atomic_write(path, lambda f: save_file({"paths": paths.contiguous()}, str(f), metadata=key))
    return paths, False


def regression_inputs(student: Student, z1: torch.Tensor, z0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """z_t = m_t z0 + sigma_t (z1 - m_1 z0) / sigma_1 for per-sample times t [B]."""
    one = torch.ones_like(t)
    sde = student.sde
    eps = (z1 - per_sample(sde.mean_coef(one), z1) * z0) / per_sample(sde.sigma(one), z1)
    return per_sample(sde.mean_coef(t), z1) * z0 + per_sample(sde.sigma(t), z1) * eps


def _active(model) -> torch.Tensor:
    """The prior's active channels [C] (bool, on the CPU): all of them for a prior without mixing."""
    return model.prior.active.bool().cpu() if model.prior.mixed else torch.ones(model.prior.shape[0], dtype=torch.bool)


def make_student(model, z0: torch.Tensor, channels: int | None = None, with_segments: bool = False) -> Student:
    """A student on the prior's device with the prior's U-Net (`channels` wide, default the prior's
    width; with segments, its target time added); at the prior's width it starts from the prior's
    weights with the output layer zeroed. d is the spread of the teacher's z0 over the active channels."""
    cfg = model.config["model"]["prior"]
    net = {**cfg["net"], "channels": channels or cfg["net"]["channels"]}
    active = _active(model)
    student = Student(model.prior.shape, cfg["sde"], {**net, "target_time": True} if with_segments else net,
                      z0[:, active].std().item(), denoise_t=denoise_time(model))
    if net == cfg["net"]:
        _load_all_but_target_time(student.net, model.prior.net.state_dict())
        torch.nn.init.zeros_(student.net.conv_out.weight)
        torch.nn.init.zeros_(student.net.conv_out.bias)
    student.active.copy_(active.float())
    return student.to(next(model.prior.parameters()).device)


def student_from(model, path) -> tuple[Student, dict]:
    """A copy of the student in checkpoint `path` and its config entry, checked to fit `model`'s prior."""
    source = load_model(path, next(model.prior.parameters()).device)
    if source.student is None:
        raise ValueError(f"--student-from {path}: that checkpoint has no distilled student; distil one first "
                         "or leave --student-from out")
    prior, student = model.config["model"]["prior"], source.config["student"]
    if tuple(source.student.shape) != tuple(model.prior.shape) or student["sde"] != prior["sde"]:
        raise ValueError(f"--student-from {path}: its student works on latents {list(source.student.shape)} with "
                         f"SDE {student['sde']}, the teacher's prior on {list(model.prior.shape)} with "
                         f"{prior['sde']}; start a new student (leave --student-from out)")
    if not torch.equal(source.student.active.bool().cpu(), _active(model)):
        raise ValueError(f"--student-from {path}: its student's active channels differ from the teacher's; "
                         "start a new student (leave --student-from out)")
    return copy.deepcopy(source.student), copy.deepcopy(student)


def add_segments(student: Student, config: dict, denoise_t: float) -> tuple[Student, dict]:
    """`student` with the target time added to its U-Net (zero at first: on the same grid it gives
    what `student` gave) and its grids made at `denoise_t` (solvers.student_grid), and its config
    entry so."""
    config = {**config, "net": {**config["net"], "target_time": True}}
    config.pop("denoise_t", None)
    if denoise_t:
        config["denoise_t"] = denoise_t
    other = Student(student.shape, config["sde"], config["net"], student.sigma_data.item(), student.steps,
                    config.get("decoder"), denoise_t).to(student.sigma_data.device)
    _load_all_but_target_time(other, student.state_dict())
    return other, config


def _load_all_but_target_time(module: nn.Module, state: dict) -> None:
    """load_state_dict that leaves a U-Net's target-time embedding as it is where `state` has none."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    if unexpected or any("target_temb" not in k for k in missing):
        raise RuntimeError(f"weights do not fit: missing {missing}, unexpected {unexpected}")


def student_error(model, paths: torch.Tensor) -> dict[str, float]:
    """RMS of (student's z0 - teacher's z0) over the active dimensions, over z0's spread there, per
    step count, from the paths' z1."""
    z1, z0 = paths[:, 0], paths[:, -1]
    active = model.student.active.bool()
    spread = z0[:, active].std().item()
    out = {}
    for k in STEPS:
        got = sample(model, len(z1), "distilled", steps=k, z1=z1, decode=False).z0.cpu()
        out[str(k)] = round(((got - z0)[:, active].pow(2).mean().sqrt() / spread).item(), 5)
    return out


def _fit(module: torch.nn.Module, batch_loss, train_steps: int, lr: float, ema: float, seed: int, desc: str,
         progress: bool) -> torch.nn.Module:
    """Adam on batch_loss(generator) for train_steps steps; `module` ends with its EMA weights, in eval mode."""
    averaged = EMA(module, ema)
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    gen = seeded_generator(seed)
    module.train()
    with tqdm(range(train_steps), desc=desc, file=sys.stderr, disable=not progress, dynamic_ncols=True) as bar:
        for step in bar:
            loss = batch_loss(gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            averaged.update(module, step)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.4g}", refresh=False)
    averaged.copy_to(module)
    return module.eval()


def own_path_inputs(student: Student, z1: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A point of the student's own path from z1 and its time [B]: k of its step counts above 1 and
    an inner time of the k-step grid drawn at random, the moves up to it made by the student itself
    (no gradient). Where the student is exact these are the points regression_inputs gives."""
    counts = [k for k in student.steps if k > 1]
    k = counts[torch.randint(len(counts), (1,), generator=gen).item()]
    grid = student_grid(student.sde, k, student.denoise_t)
    j = 1 + torch.randint(k - 1, (1,), generator=gen).item()
    z = z1
    with torch.no_grad():
        for i in range(j):
            _, z = move(student.sde, z, student(z, grid[i], grid[i + 1]), grid[i], grid[i + 1])
    return z, torch.full((len(z1),), grid[j], dtype=z1.dtype, device=z1.device)


class LatentCritic(nn.Module):
    """The adversarial term's discriminator: a small convolutional net on the active channels of z0
    [B, C, R, R] (R even), one logit per sample."""

    def __init__(self, channels: int, resolution: int, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.SiLU(),
            nn.Flatten(), nn.Linear(2 * width * (resolution // 2) ** 2, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(1)


def adversarial_term(student: Student, critic: LatentCritic, critic_opt, z1: torch.Tensor, z0: torch.Tensor,
                     active: torch.Tensor) -> torch.Tensor:
    """One step of the critic (logistic loss: the teacher's z0 against the student's 1-step z0 from
    the same z1), then the student's non-saturating loss under the updated critic."""
    fake, real = student(z1, 1.0, ODE_EPS)[:, active], z0[:, active]
    critic_loss = F.softplus(-critic(real)).mean() + F.softplus(critic(fake.detach())).mean()
    critic_opt.zero_grad(set_to_none=True)
    critic_loss.backward()
    critic_opt.step()
    return F.softplus(-critic(fake)).mean()


def check_own_path(own_path: float, segments: bool) -> None:
    """Refuses --own-path for a student with segments, which learns from the teacher's own path."""
    if own_path and segments:
        raise ValueError("--own-path is for a student without segments: a student with segments learns from the "
                         "teacher's own states along its path; leave one of the two out")


def distill(student: Student, paths: torch.Tensor, train_steps: int, batch_size: int = 256,
            lr: float = 2e-4, ema: float = 0.999, seed: int = 0, own_path: float = 0.0, adversarial: float = 0.0,
            progress: bool = False) -> Student:
    """Train `student` on teacher paths [N, len(path_times), ...] (teacher_paths), on its device;
    returns it with its EMA weights, in eval mode.

    A student without segments learns z0 (the path's end) from the points regression_inputs puts
    on the line from z1 to z0; a fraction `own_path` of the batches sees points of its own
    multi-step paths (own_path_inputs) instead, so that later steps learn to correct the earlier
    steps' errors. A student with segments learns each step of its grids from the teacher's state
    at the step's start to the one at its end (segment_target), a step count drawn uniformly, then
    one of its steps. With `adversarial` > 0 the loss adds that weight times an adversarial term on
    the 1-step output (adversarial_term): regression alone pulls the output towards what is
    predictable from z1 and narrows the samples; a critic that tells them from the teacher's keeps
    their spread."""
    check_own_path(own_path, student.segments)
    z1, z0 = paths[:, 0], paths[:, -1]
    device = next(student.parameters()).device
    grid = torch.tensor(path_times(student.sde, student.denoise_t), dtype=torch.float32)
    times = grid[:-1]  # 1 and the 4-step grid's inner times
    steps = [segments(k, student.sde, student.denoise_t) for k in STEPS]
    active = student.active > 0
    mask = per_channel(active.float(), z0)
    dims = mask.sum() * z0[0, 0].numel()
    if adversarial:
        torch.manual_seed(seed)
        critic = LatentCritic(int(active.sum()), z0.shape[-1]).to(device)
        critic_opt = torch.optim.Adam(critic.parameters(), lr=lr, betas=(0.5, 0.999))

    def segment_batch(idx, gen):
        counts = torch.randint(len(steps), (len(idx),), generator=gen).tolist()
        pick = [steps[c][torch.randint(len(steps[c]), (1,), generator=gen).item()] for c in counts]
        i, j = (torch.tensor(v) for v in zip(*pick))
        zt, zs = paths[idx, i].to(device), paths[idx, j].to(device)
        t, s = grid[i].to(device), grid[j].to(device)
        want = torch.where(per_sample(j == len(grid) - 1, zs).to(device), zs, segment_target(student.sde, zt, t, zs, s))
        return student(zt, t, s), want

    def batch_loss(gen):
        idx = torch.randint(len(z1), (batch_size,), generator=gen)
        a, b = z1[idx].to(device), z0[idx].to(device)
        if student.segments:
            got, want = segment_batch(idx, gen)
        else:
            if own_path and torch.rand((), generator=gen).item() < own_path:
                zt, t = own_path_inputs(student, a, gen)
            else:
                t = times[torch.randint(len(times), (batch_size,), generator=gen)].to(device)
                zt = regression_inputs(student, a, b, t)
            got, want = student(zt, t), b
        loss = ((got - want).pow(2) * mask).sum() / (batch_size * dims)
        if adversarial:
            loss = loss + adversarial * adversarial_term(student, critic, critic_opt, a, b, active)
        return loss

    return _fit(student, batch_loss, train_steps, lr, ema, seed, "distilling", progress)


def _params(model, decoder: torch.nn.Module, z0: torch.Tensor) -> torch.Tensor:
    """The likelihood's parameters under `decoder`, cropped to the data's size."""
    return model._crop(decoder(z0))


DECODER_LOSSES = ("mse", "cross-entropy")


def decoder_loss(model, loss: str, params: torch.Tensor, target: torch.Tensor, gen=None) -> torch.Tensor:
    """How far the student decoder's likelihood parameters are from the model decoder's, per pixel
    on average: "mse", the squared difference of their mean images (unclamped: gradients at 0 and
    1); "cross-entropy", the expected negative log-likelihood of the model's images under the
    student's (for a Bernoulli exact: the KL between the two, which weighs the faint background
    probabilities that mean squared error hardly sees, but binarised samples turn into speckles)."""
    if loss == "mse":
        return (model.likelihood.mean(params) - model.likelihood.mean(target)).pow(2).mean()
    # a CPU generator draws on the CPU only (the logistic's estimate draws; on another device, unseeded)
    return model.likelihood.cross_entropy(params, target, gen if params.device.type == "cpu" else None).mean()


def new_decoder(model, channels, num_res_blocks: int, seed: int = 0) -> tuple[Decoder, dict]:
    """A freshly initialised (seeded) Decoder of the given widths for the model's latents, on the
    model's device, and its config entry."""
    spec = {"out_channels": model.decoder.net[-1].out_channels, "channels": [int(c) for c in channels],
            "num_res_blocks": int(num_res_blocks)}
    torch.manual_seed(seed)
    return Decoder(model.prior.shape[0], **spec).to(next(model.decoder.parameters()).device), spec


def student_latents(model, num: int, gen: torch.Generator) -> torch.Tensor:
    """z0 of the model's student from `num` fresh z1 ~ N(0, I), at a step count drawn from its
    grids: the latents its `distilled` solver hands the decoder."""
    z1 = torch.randn((num,) + tuple(model.prior.shape), generator=gen)
    steps = STEPS[torch.randint(len(STEPS), (1,), generator=gen).item()]
    return sample(model, num, "distilled", steps=steps, z1=z1, decode=False).z0


def distill_decoder(model, z0: torch.Tensor, decoder: Decoder, train_steps: int, batch_size: int = 256,
                    lr: float = 1e-3, ema: float = 0.999, seed: int = 0, own: float = 0.0,
                    progress: bool = False, loss: str = "mse") -> Decoder:
    """Train `decoder` to give the model's likelihood from the latents z0 [N, ...] (decoder_loss
    `loss`); returns it with its EMA weights, in eval mode. A fraction `own` of each
    batch is instead the student's own z0 (student_latents), whose model images are computed as
    they come: the student's z0 miss the teacher's, and the decoder is then trained where the
    `distilled` solver will use it."""
    device = next(model.decoder.parameters()).device
    with torch.no_grad():
        targets = torch.cat([_params(model, model.decoder, c.to(device)).cpu() for c in z0.split(500)])
    n_own = round(own * batch_size)

    def batch_loss(gen):
        idx = torch.randint(len(z0), (batch_size - n_own,), generator=gen)
        latents, want = z0[idx].to(device), targets[idx].to(device)
        if n_own:
            mine = student_latents(model, n_own, gen).to(device)
            with torch.no_grad():
                want = torch.cat([want, _params(model, model.decoder, mine)])
            latents = torch.cat([latents, mine])
        return decoder_loss(model, loss, _params(model, decoder, latents), want, gen)

    return _fit(decoder, batch_loss, train_steps, lr, ema, seed, "decoder", progress)


def decoder_posterior(model, num: int, data_dir=None, seed: int = 0) -> torch.Tensor:
    """One z0 ~ q(z0|x) of each of `num` random training images of the model's data set, on the CPU."""
    train = config_dataset(model.config["data"], "train", data_dir)
    if num > len(train):
        raise ValueError(f"--decoder-posterior {num}: the {train.name} training set has {len(train)} images")
    return posterior_samples(model, train, torch.randperm(len(train), generator=seeded_generator(seed))[:num], seed)


def decoder_error(model, z0: torch.Tensor) -> dict[str, float]:
    """Mean and largest |student decoder's image - model decoder's image| over the pixels of z0's images."""
    with torch.no_grad():
        diff = (model.decode_images(z0, model.student.decoder) - model.decode_images(z0)).abs()
    return {"mean_abs": round(diff.mean().item(), 5), "max_abs": round(diff.max().item(), 5)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lsgm_core.distill", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="the teacher: a checkpoint folder or a run folder")
    ap.add_argument("--out", required=True, help="the checkpoint folder to write (teacher + student)")
    ap.add_argument("--pairs", type=int, default=20000, help="teacher ODE pairs, %d of them held out (default 20000)" % HELD_OUT)
    ap.add_argument("--teacher-steps", type=int, default=40, help="fast-solver steps of the teacher (default 40)")
    ap.add_argument("--train-steps", type=int, default=3000, help="optimisation steps (default 3000; 0 with "
                    "--student-from keeps its U-Net as it is, e.g. to train only its decoder further)")
    ap.add_argument("--batch-size", type=int, default=256, help="pairs per step (default 256)")
    ap.add_argument("--channels", type=int, help="the student U-Net's base width (default: the prior's, whose "
                    "weights it then starts from; narrower samples faster and ships smaller)")
    ap.add_argument("--lr", type=float, default=2e-4, help="Adam's learning rate (default 2e-4)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the pairs and the batches (default 0)")
    ap.add_argument("--own-path", type=float, default=0.0, help="the fraction of batches whose inputs are points "
                    "of the student's own 2- and 4-step paths rather than the exact ones (default 0)")
    ap.add_argument("--segments", action="store_true", help="the student also takes the time its step goes to "
                    "and learns every step of its 1-, 2- and 4-step grids from the teacher's state at the step's "
                    "start to its state at the step's end (with --student-from, a student without them gains them)")
    ap.add_argument("--adversarial", type=float, default=0.0, metavar="W", help="weight of an adversarial term on "
                    "the 1-step output: a small critic learns to tell the student's z0 from the teacher's, and the "
                    "student learns to fool it, which keeps the spread that regression alone narrows (default 0)")
    ap.add_argument("--decoder-channels", help="widths of a decoder of the student's own, one per "
                    "resolution level as the model's (e.g. 32,64; default: the student uses the model's decoder)")
    ap.add_argument("--decoder-res-blocks", type=int, default=1, help="residual blocks per level of that decoder "
                    "(default 1)")
    ap.add_argument("--decoder-steps", type=int, help="its optimisation steps (default: --train-steps); with "
                    "--student-from and no --decoder-channels, the kept decoder trains this many steps more")
    ap.add_argument("--decoder-loss", choices=DECODER_LOSSES, default="mse", help="what the decoder learns: the "
                    "model's mean images by squared error (mse), or its likelihood by cross-entropy (for binary "
                    "images exact: it weighs the faint background probabilities that binarised samples turn "
                    "into speckles; default mse)")
    ap.add_argument("--decoder-lr", type=float, default=1e-3, help="the decoder's learning rate (default 1e-3)")
    ap.add_argument("--decoder-own", type=float, default=0.0, metavar="F", help="the fraction of each decoder batch "
                    "that is the student's own z0 from fresh z1 (1, 2 or 4 steps), with the model decoder's images "
                    "of them as targets: the decoder then learns where the distilled solver uses it (default 0)")
    ap.add_argument("--decoder-posterior", type=int, default=0, metavar="N", help="that decoder also learns from one "
                    "posterior sample z0 ~ q(z0|x) of each of N random training images (the data set is read from "
                    "--data-dir), so that it sees latents beyond the teacher's samples (default 0)")
    ap.add_argument("--data-dir", help="data folder for --decoder-posterior (default: $LSGM_DATA_DIR or "
                    "~/.cache/lsgm/data)")
    ap.add_argument("--pairs-cache", help="a safetensors file that keeps the teacher paths for the next run "
                    "with the same teacher, --pairs, --teacher-steps, --seed and student grid")
    ap.add_argument("--student-from", help="a checkpoint whose student to start from (and whose decoder to keep "
                    "unless --decoder-channels is given) instead of a new one")
    ap.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    args = ap.parse_args(argv)
    return report(lambda: run(args))


def round_to_half(model, z1: torch.Tensor) -> float:
    """Round the student's parameters to float16 values in place (its checkpoint then stores them in
    half the bytes with nothing lost on loading) and return the largest change that makes in the
    1-step images from z1."""
    before = sample(model, len(z1), "distilled", steps=1, z1=z1).images
    with torch.no_grad():
        for p in model.student.parameters():
            p.copy_(p.half())
    return round((sample(model, len(z1), "distilled", steps=1, z1=z1).images - before).abs().max().item(), 5)


def _widths(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.split(",")]
    except ValueError:
        widths = []
    if not widths or any(w < 8 or w % 8 for w in widths):
        raise ValueError(f"--decoder-channels takes widths that are multiples of 8 separated by commas, e.g. 32,64; "
                         f"got {text!r}")
    return widths


def run(args) -> dict:
    if args.channels is not None and (args.channels < 8 or args.channels % 8):
        raise ValueError(f"--channels must be a positive multiple of 8 (the U-Net's group norms divide it), "
                         f"got {args.channels}")
    if args.decoder_channels is not None:
        args.decoder_channels = _widths(args.decoder_channels)
    tune_decoder = args.decoder_channels is None and args.decoder_steps is not None
    if args.decoder_steps is None:
        args.decoder_steps = args.train_steps
    trains_decoder = args.decoder_channels is not None or tune_decoder
    for name in ("pairs", "teacher_steps", "batch_size", "decoder_res_blocks") + (("decoder_steps",) if trains_decoder else ()):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.train_steps < (0 if args.student_from is not None else 1):
        raise ValueError(f"--train-steps must be at least 1 for a new student (0 is allowed with --student-from, "
                         f"to keep its U-Net), got {args.train_steps}")
    if tune_decoder and args.student_from is None:
        raise ValueError("--decoder-steps without --decoder-channels trains the decoder of the --student-from "
                         "student further: give --student-from, or --decoder-channels for a new decoder")
    if not 0.0 <= args.decoder_own <= 1.0:
        raise ValueError(f"--decoder-own is a fraction of each decoder batch, from 0 to 1; got {args.decoder_own}")
    if not args.decoder_lr > 0:
        raise ValueError(f"--decoder-lr must be positive, got {args.decoder_lr}")
    if args.decoder_posterior < 0:
        raise ValueError(f"--decoder-posterior is a number of training images, 0 or more; got {args.decoder_posterior}")
    for name, given in (("decoder_own", args.decoder_own), ("decoder_posterior", args.decoder_posterior),
                        ("decoder_loss", args.decoder_loss != "mse")):
        if given and not trains_decoder:
            raise ValueError(f"--{name.replace('_', '-')} is for training the student's own decoder: give "
                             "--decoder-channels (a new one) or --decoder-steps with --student-from (the kept one)")
    if args.pairs <= HELD_OUT:
        raise ValueError(f"--pairs must exceed the {HELD_OUT} held-out pairs, got {args.pairs}")
    if not 0.0 <= args.own_path <= 1.0:
        raise ValueError(f"--own-path is a fraction of the batches, from 0 to 1; got {args.own_path}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")
    if not args.adversarial >= 0:
        raise ValueError(f"--adversarial is a weight, 0 or more; got {args.adversarial}")
    if args.student_from is not None and args.channels is not None:
        raise ValueError("--channels sets the width of a new student; --student-from starts from an existing one, "
                         "whose width it keeps: give one of the two")
    model = load_model(args.checkpoint, pick_device(args.device))
    start_from = student_from(model, args.student_from) if args.student_from is not None else None
    # before the teacher's paths: a student started from one with segments has them too
    check_own_path(args.own_path, args.segments or (start_from is not None and start_from[0].segments))
    if tune_decoder and start_from[0].decoder is None:
        raise ValueError(f"--decoder-steps without --decoder-channels trains the decoder of the --student-from "
                         f"student further, but the student of {args.student_from} has none: give --decoder-channels")
    if args.decoder_channels is not None:
        if model.kind != "lsgm":
            raise ValueError(f"--decoder-channels needs a latent model; this one is {model.kind!r} (no decoder)")
        if len(args.decoder_channels) != len(model.config["model"]["vae_channels"]):
            raise ValueError(f"--decoder-channels needs {len(model.config['model']['vae_channels'])} widths, one per "
                             f"level of the model's decoder ({model.config['model']['vae_channels']}); "
                             f"got {args.decoder_channels}")
    posterior = decoder_posterior(model, args.decoder_posterior, args.data_dir, args.seed) \
        if args.decoder_posterior else None
    progress = not args.no_progress
    start = time.perf_counter()
    if start_from is not None and args.segments and not start_from[0].segments:
        start_from = add_segments(*start_from, denoise_time(model))
    # the times of the student's grids: a new one's are made at the teacher's denoising time
    grid_denoise_t = denoise_time(model) if start_from is None else start_from[0].denoise_t
    paths, cached = (cached_paths(model, args.pairs_cache, args.pairs, args.teacher_steps, args.seed, progress,
                                  grid_denoise_t)
                     if args.pairs_cache else
                     (teacher_paths(model, args.pairs, args.teacher_steps, args.seed, progress=progress,
                                    grid_denoise_t=grid_denoise_t), False))
    teacher_seconds = time.perf_counter() - start
    train, held = paths[HELD_OUT:], paths[:HELD_OUT]
    start = time.perf_counter()
    student = make_student(model, train[:, -1], args.channels, args.segments) if start_from is None else start_from[0]
    model.student = (distill(student, train, args.train_steps, args.batch_size, args.lr,
                             seed=args.seed, own_path=args.own_path, adversarial=args.adversarial, progress=progress)
                     if args.train_steps else student.eval())
    figures = {"pairs": args.pairs, "teacher_steps": args.teacher_steps, "train_steps": args.train_steps,
               "own_path": args.own_path, "adversarial": args.adversarial, "segments": model.student.segments,
               "teacher_seconds": round(teacher_seconds, 1), "pairs_from_cache": cached,
               "train_seconds": round(time.perf_counter() - start, 1)}
    if start_from is not None:
        figures["student_from"] = str(args.student_from)
    config = copy.deepcopy(model.config)
    config["student"] = ({"sde": config["model"]["prior"]["sde"],
                          "net": {**config["model"]["prior"]["net"], "channels": model.student.net.temb_ch,
                                  **({"target_time": True} if model.student.segments else {})},
                          "sigma_data": model.student.sigma_data.item(), "steps": list(STEPS),
                          **({"denoise_t": model.student.denoise_t} if model.student.denoise_t else {})}
                         if start_from is None else start_from[1])
    if trains_decoder:
        start = time.perf_counter()
        z0 = train[:, -1] if not args.decoder_posterior else torch.cat([train[:, -1], posterior])
        if tune_decoder:
            decoder = model.student.decoder
        else:
            decoder, config["student"]["decoder"] = new_decoder(model, args.decoder_channels, args.decoder_res_blocks,
                                                                args.seed)
        model.student.decoder = distill_decoder(model, z0, decoder, args.decoder_steps, args.batch_size,
                                                args.decoder_lr, seed=args.seed, own=args.decoder_own,
                                                progress=progress, loss=args.decoder_loss)
        figures.update(decoder_steps=args.decoder_steps, decoder_posterior=args.decoder_posterior,
                       decoder_loss=args.decoder_loss,
                       decoder_own=args.decoder_own, decoder_lr=args.decoder_lr,
                       decoder_from="student_from" if tune_decoder else "new",
                       decoder_seconds=round(time.perf_counter() - start, 1))
    figures["float16_images_max_abs"] = round_to_half(model, held[:256, 0])
    # what ships: the figures of the rounded student
    figures["student_rel_rmse"] = student_error(model, held)
    if model.student.decoder is not None:
        device = next(model.parameters()).device
        figures["decoder_error"] = decoder_error(model, held[:, -1].to(device))
        own = sample(model, len(held), "distilled", steps=1, z1=held[:, 0], decode=False).z0
        figures["decoder_error_own"] = decoder_error(model, own)
    halves = {f"student.{name}" for name, _ in model.student.named_parameters()}
    weights = {k: v.half() if k in halves else v for k, v in model.state_dict().items()}
    meta = {**derived_meta(model.meta, {"distillation": figures}, "distilled_from"), "ema_folded": True}
    out = save_checkpoint(args.out, config, {"model": weights}, meta)
    return {"out": str(out), "teacher": model.meta["path"], **figures}


if __name__ == "__main__":
    sys.exit(main())
