"""Distil a model's probability-flow ODE into a student that samples in 1, 2 or 4 network evaluations.

    python -m lsgm_core.distill --checkpoint C --out D [--pairs 20000] [--teacher-steps 40]
                                [--train-steps 3000] [--batch-size 256] [--channels N] [--lr 2e-4] [--seed 0]
                                [--decoder-channels 32,64 [--decoder-res-blocks 1] [--decoder-steps N]
                                 [--decoder-posterior N --data-dir DATA]]
                                [--own-path F] [--pairs-cache FILE] [--student-from S]

1. Teacher pairs: --pairs draws z1 ~ N(0, I) (seeded) and the ODE's end point z0 of each, by the
   fast solver with --teacher-steps steps at the model's own alpha.
2. Regression (lsgm_core.student): at the times of the 4-step log-SNR grid, which holds those of 1
   and 2 steps, the student sees z_t = m_t z0 + sigma_t eps with eps = (z1 - m_1 z0) / sigma_1:
   the points its own deterministic moves visit when it is exact. It learns z0 by mean squared
   error over the active channels, starting from the teacher's U-Net (output layer zeroed). With
   --own-path F a fraction F of the batches instead sees points of the student's own 2- and 4-step
   paths (its moves made by itself), so that the later steps learn to correct the earlier ones.
   With --decoder-channels the student gets a decoder of its own, the VAE decoder's architecture at
   those widths, trained to give the model's mean images from the teacher's z0 (mean squared error
   over the pixels): 1-step samples then skip the full decoder, most of their cost. With
   --decoder-posterior N it also learns from one posterior sample z0 ~ q(z0|x) of each of N random
   training images: the student's z0 miss the teacher's, and a decoder that has seen more of the
   latent space than the teacher's samples gives the model's images there too.
   With --student-from S the student starts from the one in checkpoint S (its U-Net, its sigma_data,
   and its decoder, which is kept as it is unless --decoder-channels trains a new one): a student
   follows its teacher after further training of the prior for a fraction of a new one's cost.
3. D: the teacher's checkpoint with the student in it (config "student"; its weights in
   model.safetensors beside the prior's EMA weights, rounded to float16 and stored so: half the
   bytes, the largest change this makes to 1-step images in the metrics), written atomically. Its
   metrics: on held-out pairs, the error of 1, 2 and 4 student steps against the teacher, as RMS
   over z0's spread.

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
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from . import atomic
from .checkpoint import derived_meta, load_model, save_checkpoint
from .cli import report
from .data import config_dataset
from .device import pick_device
from .ema import EMA
from .nets import Decoder
from .quality import posterior_samples
from .solvers import ODE_EPS, sample, time_grid
from .student import STEPS, Student, move
from .tensors import per_channel, per_sample, seeded_generator

HELD_OUT = 1000  # pairs kept for the student's error, not trained on


def teacher_pairs(model, num: int, steps: int, seed: int = 0, batch_size: int = 1000,
                  progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(z1, z0): num seeded draws of N(0, I) and the fast solver's end points from them."""
    z1 = torch.randn((num,) + tuple(model.prior.shape), generator=seeded_generator(seed))
    batches = -(-num // batch_size)
    with tqdm(total=batches * steps, desc="teacher ODE", unit="nfe", file=sys.stderr, disable=not progress,
              dynamic_ncols=True) as bar:
        out = sample(model, num, "fast", steps=steps, z1=z1, batch_size=batch_size,
                     callback=lambda _: bar.update(1), decode=False)
    return z1, out.z0.cpu()


def cached_pairs(model, path: str | Path, num: int, steps: int, seed: int = 0,
                 progress: bool = False) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """teacher_pairs, kept in the safetensors file `path` under a key of what they depend on; the
    third value says whether they came from the file."""
    key = {"weights": str(model.meta.get("files", {}).get("model.safetensors")), "pairs": str(num),
           "teacher_steps": str(steps), "seed": str(seed)}
    path = Path(path)
    if path.exists():
        try:
            with safe_open(str(path), "pt") as f:
                if f.metadata() == key:
                    return f.get_tensor("z1"), f.get_tensor("z0"), True
        except (SafetensorError, OSError, KeyError):
            pass  # damaged or foreign: computed again and replaced
    z1, z0 = teacher_pairs(model, num, steps, seed, progress=progress)
    atomic.atomic_write(path, lambda f: save_file({"z1": z1.contiguous(), "z0": z0.contiguous()}, str(f), metadata=key))
    return z1, z0, False


def regression_inputs(student: Student, z1: torch.Tensor, z0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """z_t = m_t z0 + sigma_t (z1 - m_1 z0) / sigma_1 for per-sample times t [B]."""
    one = torch.ones_like(t)
    sde = student.sde
    eps = (z1 - per_sample(sde.mean_coef(one), z1) * z0) / per_sample(sde.sigma(one), z1)
    return per_sample(sde.mean_coef(t), z1) * z0 + per_sample(sde.sigma(t), z1) * eps


def _active(model) -> torch.Tensor:
    """The prior's active channels [C] (bool, on the CPU): all of them for a prior without mixing."""
    return model.prior.active.bool().cpu() if model.prior.mixed else torch.ones(model.prior.shape[0], dtype=torch.bool)


def make_student(model, z0: torch.Tensor, channels: int | None = None) -> Student:
    """A student on the prior's device with the prior's U-Net (`channels` wide, default the prior's
    width); at the prior's width it starts from the prior's weights with the output layer zeroed.
    d is the spread of the teacher's z0 over the active channels."""
    cfg = model.config["model"]["prior"]
    net = {**cfg["net"], "channels": channels or cfg["net"]["channels"]}
    active = _active(model)
    student = Student(model.prior.shape, cfg["sde"], net, z0[:, active].std().item())
    if net == cfg["net"]:
        student.net.load_state_dict(model.prior.net.state_dict())
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


def student_error(model, z1: torch.Tensor, z0: torch.Tensor) -> dict[str, float]:
    """RMS of (student's z0 - teacher's z0) over the active dimensions, over z0's spread there, per step count."""
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
    grid = time_grid(student.sde, k, ODE_EPS)[0].tolist()
    j = 1 + torch.randint(k - 1, (1,), generator=gen).item()
    z = z1
    with torch.no_grad():
        for i in range(j):
            _, z = move(student.sde, z, student(z, grid[i]), grid[i], grid[i + 1])
    return z, torch.full((len(z1),), grid[j], dtype=z1.dtype, device=z1.device)


def distill(student: Student, pairs: tuple[torch.Tensor, torch.Tensor], train_steps: int, batch_size: int = 256,
            lr: float = 2e-4, ema: float = 0.999, seed: int = 0, own_path: float = 0.0,
            progress: bool = False) -> Student:
    """Train `student` on (z1, z0) pairs, on its device; returns it with its EMA weights, in eval mode.
    A fraction `own_path` of the batches sees points of its own multi-step paths (own_path_inputs)
    instead of the exact ones, so that later steps learn to correct the earlier steps' errors."""
    z1, z0 = pairs
    device = next(student.parameters()).device
    times = time_grid(student.sde, max(STEPS), ODE_EPS)[0][:-1].float()  # 1 and the 4-step grid's inner times
    mask = per_channel((student.active > 0).float(), z0)
    dims = mask.sum() * z0[0, 0].numel()

    def batch_loss(gen):
        idx = torch.randint(len(z1), (batch_size,), generator=gen)
        a, b = z1[idx].to(device), z0[idx].to(device)
        if own_path and torch.rand((), generator=gen).item() < own_path:
            zt, t = own_path_inputs(student, a, gen)
        else:
            t = times[torch.randint(len(times), (batch_size,), generator=gen)].to(device)
            zt = regression_inputs(student, a, b, t)
        return ((student(zt, t) - b).pow(2) * mask).sum() / (batch_size * dims)

    return _fit(student, batch_loss, train_steps, lr, ema, seed, "distilling", progress)


def _mean_images(model, decoder: torch.nn.Module, z0: torch.Tensor) -> torch.Tensor:
    """The likelihood's mean under `decoder`, cropped to the data's size (unclamped: gradients at 0 and 1)."""
    return model._crop(model.likelihood.mean(decoder(z0)))


def distill_decoder(model, z0: torch.Tensor, channels, num_res_blocks: int, train_steps: int, batch_size: int = 256,
                    lr: float = 1e-3, ema: float = 0.999, seed: int = 0, progress: bool = False) -> tuple[Decoder, dict]:
    """A Decoder of the given widths trained to give the model's mean images from the z0 [N, ...];
    returns it (EMA weights, eval mode, on the model's device) and its config entry."""
    device = next(model.decoder.parameters()).device
    spec = {"out_channels": model.decoder.net[-1].out_channels, "channels": [int(c) for c in channels],
            "num_res_blocks": int(num_res_blocks)}
    torch.manual_seed(seed)
    decoder = Decoder(z0.shape[1], **spec).to(device)
    with torch.no_grad():
        targets = torch.cat([_mean_images(model, model.decoder, c.to(device)).cpu() for c in z0.split(500)])

    def batch_loss(gen):
        idx = torch.randint(len(z0), (batch_size,), generator=gen)
        return (_mean_images(model, decoder, z0[idx].to(device)) - targets[idx].to(device)).pow(2).mean()

    return _fit(decoder, batch_loss, train_steps, lr, ema, seed, "decoder", progress), spec


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
    ap.add_argument("--train-steps", type=int, default=3000, help="optimisation steps (default 3000)")
    ap.add_argument("--batch-size", type=int, default=256, help="pairs per step (default 256)")
    ap.add_argument("--channels", type=int, help="the student U-Net's base width (default: the prior's, whose "
                    "weights it then starts from; narrower samples faster and ships smaller)")
    ap.add_argument("--lr", type=float, default=2e-4, help="Adam's learning rate (default 2e-4)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the pairs and the batches (default 0)")
    ap.add_argument("--own-path", type=float, default=0.0, help="the fraction of batches whose inputs are points "
                    "of the student's own 2- and 4-step paths rather than the exact ones (default 0)")
    ap.add_argument("--decoder-channels", help="widths of a decoder of the student's own, one per "
                    "resolution level as the model's (e.g. 32,64; default: the student uses the model's decoder)")
    ap.add_argument("--decoder-res-blocks", type=int, default=1, help="residual blocks per level of that decoder "
                    "(default 1)")
    ap.add_argument("--decoder-steps", type=int, help="its optimisation steps (default: --train-steps)")
    ap.add_argument("--decoder-posterior", type=int, default=0, metavar="N", help="that decoder also learns from one "
                    "posterior sample z0 ~ q(z0|x) of each of N random training images (the data set is read from "
                    "--data-dir), so that it sees latents beyond the teacher's samples (default 0)")
    ap.add_argument("--data-dir", help="data folder for --decoder-posterior (default: $LSGM_DATA_DIR or "
                    "~/.cache/lsgm/data)")
    ap.add_argument("--pairs-cache", help="a safetensors file that keeps the teacher pairs for the next run "
                    "with the same teacher, --pairs, --teacher-steps and --seed")
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
    args.decoder_steps = args.train_steps if args.decoder_steps is None else args.decoder_steps
    for name in ("pairs", "teacher_steps", "train_steps", "batch_size", "decoder_res_blocks", "decoder_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.decoder_posterior < 0:
        raise ValueError(f"--decoder-posterior is a number of training images, 0 or more; got {args.decoder_posterior}")
    if args.decoder_posterior and args.decoder_channels is None:
        raise ValueError("--decoder-posterior trains the student's own decoder: give --decoder-channels too")
    if args.pairs <= HELD_OUT:
        raise ValueError(f"--pairs must exceed the {HELD_OUT} held-out pairs, got {args.pairs}")
    if not 0.0 <= args.own_path <= 1.0:
        raise ValueError(f"--own-path is a fraction of the batches, from 0 to 1; got {args.own_path}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")
    if args.student_from is not None and args.channels is not None:
        raise ValueError("--channels sets the width of a new student; --student-from starts from an existing one, "
                         "whose width it keeps: give one of the two")
    model = load_model(args.checkpoint, pick_device(args.device))
    start_from = student_from(model, args.student_from) if args.student_from is not None else None
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
    z1, z0, cached = (cached_pairs(model, args.pairs_cache, args.pairs, args.teacher_steps, args.seed, progress)
                      if args.pairs_cache else
                      (*teacher_pairs(model, args.pairs, args.teacher_steps, args.seed, progress=progress), False))
    teacher_seconds = time.perf_counter() - start
    train, held = (z1[HELD_OUT:], z0[HELD_OUT:]), (z1[:HELD_OUT], z0[:HELD_OUT])
    start = time.perf_counter()
    student = make_student(model, train[1], args.channels) if start_from is None else start_from[0]
    model.student = distill(student, train, args.train_steps, args.batch_size, args.lr,
                            seed=args.seed, own_path=args.own_path, progress=progress)
    figures = {"pairs": args.pairs, "teacher_steps": args.teacher_steps, "train_steps": args.train_steps,
               "own_path": args.own_path, "teacher_seconds": round(teacher_seconds, 1), "pairs_from_cache": cached,
               "train_seconds": round(time.perf_counter() - start, 1)}
    if start_from is not None:
        figures["student_from"] = str(args.student_from)
    config = copy.deepcopy(model.config)
    config["student"] = ({"sde": config["model"]["prior"]["sde"],
                          "net": {**config["model"]["prior"]["net"], "channels": model.student.net.temb_ch},
                          "sigma_data": model.student.sigma_data.item(), "steps": list(STEPS)}
                         if start_from is None else start_from[1])
    if args.decoder_channels is not None:
        start = time.perf_counter()
        z0 = train[1] if not args.decoder_posterior else torch.cat([train[1], posterior])
        model.student.decoder, config["student"]["decoder"] = distill_decoder(
            model, z0, args.decoder_channels, args.decoder_res_blocks, args.decoder_steps, args.batch_size,
            seed=args.seed, progress=progress)
        figures.update(decoder_steps=args.decoder_steps, decoder_posterior=args.decoder_posterior,
                       decoder_seconds=round(time.perf_counter() - start, 1))
    figures["float16_images_max_abs"] = round_to_half(model, held[0][:256])
    # what ships: the figures of the rounded student
    figures["student_rel_rmse"] = student_error(model, *held)
    if model.student.decoder is not None:
        figures["decoder_error"] = decoder_error(model, held[1].to(next(model.parameters()).device))
    halves = {f"student.{name}" for name, _ in model.student.named_parameters()}
    weights = {k: v.half() if k in halves else v for k, v in model.state_dict().items()}
    meta = {**derived_meta(model.meta, {"distillation": figures}, "distilled_from"), "ema_folded": True}
    out = save_checkpoint(args.out, config, {"model": weights}, meta)
    return {"out": str(out), "teacher": model.meta["path"], **figures}


if __name__ == "__main__":
    sys.exit(main())
