"""Draw samples from a checkpoint (LSGM or the pixel baseline) and save them as an .npz file.

    python -m lsgm_core.sample --checkpoint runs/s2 --num 64 --out samples.npz --solver fast --steps 20
    python -m lsgm_core.sample --checkpoint runs/s2 --num 64 --out samples.npz --solver ode --atol 1e-3 --rtol 1e-3
    python -m lsgm_core.sample --checkpoint D --num 16 --out samples.npz --solver distilled --steps 1 --runtime onnxruntime

The .npz holds `images` as uint8 [N, H, W] (grey) or [N, H, W, C], and the latents `z0` (float32).
Progress goes to stderr, one JSON line with nfe, seconds, num, solver to stdout.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import atomic
from .checkpoint import load_model
from .cli import report
from .device import pick_device
from .runtime import RUNTIMES, TOLERANCE
from .solvers import (SOLVERS, check_denoise_t, check_runtime_for, sample, solver_options, solvers_on, solvers_set_by,
                      solvers_that_denoise)


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] floats in [0, 1] -> uint8 [N, H, W] for one channel, else [N, H, W, C]."""
    x = (images.clamp(0, 1) * 255.0).round().to(torch.uint8).cpu()
    return (x[:, 0] if x.shape[1] == 1 else x.permute(0, 2, 3, 1)).numpy()


def add_solver_args(ap: argparse.ArgumentParser) -> None:
    """--solver and the options of every solver in the registry (lsgm_core.solvers.SOLVERS)."""
    ap.add_argument("--solver", default="fast", choices=list(SOLVERS),
                    help="; ".join(f"{n}: {s.label}" for n, s in SOLVERS.items()) + " (default fast)")
    by_tol, by_steps = solvers_set_by("tolerance"), solvers_set_by("steps")
    tol = ", ".join(f"{SOLVERS[n].default_tol:g} for {n}" for n in by_tol)
    ap.add_argument("--atol", type=float, help=f"{', '.join(by_tol)} only: absolute tolerance (default {tol})")
    ap.add_argument("--rtol", type=float, help=f"{', '.join(by_tol)} only: relative tolerance (default {tol})")
    steps = ", ".join(f"{SOLVERS[n].default_steps} for {n}" for n in by_steps)
    ap.add_argument("--steps", type=int, help=f"{', '.join(by_steps)} only: number of steps (default {steps})")
    add_denoise_arg(ap)
    served = ", ".join(solvers_on("onnxruntime"))
    ap.add_argument("--runtime", default="torch", choices=RUNTIMES,
                    help=f"{served} only: run its networks on PyTorch or on ONNX Runtime (CPU; the same images "
                         f"within {TOLERANCE:g}; default torch)")


def add_denoise_arg(ap: argparse.ArgumentParser, flag: str = "--denoise-t", what: str = "") -> None:
    """The option of a denoising time (lsgm_core.solvers.check_denoise_t), for `what` (default: the
    solvers that take one)."""
    ap.add_argument(flag, type=float,
                    help=f"{what or ', '.join(solvers_that_denoise()) + ' only'}: stop the flow at this time and jump "
                         "to E[z0 | z_t], the last step (default: the model's sampling.denoise_t; 0: integrate to the end)")


def solver_kwargs(args) -> dict:
    """The solver options of parsed arguments, checked; ValueError names the offending flag."""
    flag = lambda name: "--" + name.replace("_", "-")  # noqa: E731
    options = solver_options(args.solver, args.steps, args.atol, args.rtol, flag=flag)
    check_runtime_for(args.solver, args.runtime)
    check_denoise_t(args.solver, args.denoise_t, flag=flag)
    return {**options, "runtime": args.runtime, **({} if args.denoise_t is None else {"denoise_t": args.denoise_t})}


def progress_callback(bar: tqdm):
    """A sampler callback that moves a tqdm bar by one per network evaluation."""
    def update(info: dict) -> None:
        bar.set_postfix(t=f"{info['t']:.4f}", refresh=False)
        bar.update(1)
    return update


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lsgm_core.sample", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="checkpoint folder, or a training run folder (its latest)")
    ap.add_argument("--num", type=int, required=True, help="number of samples")
    ap.add_argument("--out", required=True, help="output .npz file")
    add_solver_args(ap)
    ap.add_argument("--alpha", type=float, help="override the prior's mixing coefficient (0: the N(0, I) prior)")
    ap.add_argument("--temperature", type=float, default=1.0, help="scale of z1 (default 1)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: the best available)")
    ap.add_argument("--batch-size", type=int, help="samples per solve (default: all at once)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = ap.parse_args(argv)
    return report(lambda: draw(args))


def draw(args) -> dict:
    """Sample as the CLI's arguments say, write the .npz and return the figures."""
    if args.num <= 0:
        raise ValueError(f"--num must be positive, got {args.num}")
    if args.batch_size is not None and args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0, got {args.temperature}")
    if args.alpha is not None and not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must lie in [0, 1], got {args.alpha}")
    kw = solver_kwargs(args)
    device = pick_device(args.device)
    model = load_model(args.checkpoint, device)
    kw.update(check_denoise_t(args.solver, kw.pop("denoise_t", None), model))  # the time it used, the model's by default
    with tqdm(desc=f"sampling ({args.solver})", unit="nfe", file=sys.stderr, disable=args.no_progress,
              dynamic_ncols=True) as bar:
        result = sample(model, args.num, args.solver, alpha=args.alpha, temperature=args.temperature,
                        seed=args.seed, batch_size=args.batch_size, callback=progress_callback(bar), **kw)
    out = Path(args.out)
    images, z0 = images_to_uint8(result.images), result.z0.cpu().numpy()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would otherwise append ".npz" to the name
            np.savez(f, images=images, z0=z0)

    atomic.atomic_write(out, write)
    return {"checkpoint": model.meta["path"], "kind": model.kind, "out": str(out), "num": args.num,
            "solver": args.solver, **kw, "nfe": result.nfe, "seconds": round(result.seconds, 4), "seed": args.seed,
            "temperature": args.temperature, "alpha": args.alpha, "device": str(device),
            "images_shape": list(result.images.shape)}


if __name__ == "__main__":
    sys.exit(main())
