"""Evaluate a checkpoint on its data set: NELBO with the ODE prior likelihood, bits/dim, optionally FID.

    python -m lsgm_core.evaluate --checkpoint runs/s2 --data-dir DATA [--split test] [--limit 1000] [--iw 100] [--fid]
                                 [--resume FILE]

The NELBO per image is -log p(x|z0) + log q(z0|x) - log p_ODE(z0), one z0 per image (or the
importance-weighted bound with --iw K), averaged over the first --limit images of the split,
which binary data sets binarise afresh with --seed. bpd divides by the data's own pixels (28x28
for MNIST). For the pixel baseline it is -log p_ODE(2x - 1): a density of continuous pixels, not
comparable with a discrete likelihood (see lsgm_core.nelbo.nelbo); with --dequantize it is the
uniformly dequantised bound -log p_ODE(y) - D log(2 / levels) on -log P(x) of the discrete images,
which is comparable with an LSGM's NELBO.
--resume FILE keeps the sums of every finished batch in FILE (JSON, written atomically after each
batch) with the settings they depend on; the same command run again continues after the last
finished batch, and its figures are those of one unbroken run (the skipped batches' binarisations
and seeds are drawn again, in order). A file written with other settings is refused.
--fid draws as many samples as images evaluated (or --fid-samples; fast solver) and compares them with as many test
images in the feature space of the data set's shipped classifier (lsgm_core.features), with the
classifier's histogram of the samples and their distances to the nearest training image against those
of test images; for an LSGM also the floor of that FID (the FID of decoded posterior samples of as
many training images) and the ratio of the two (lsgm_core.quality).
One JSON line to stdout; progress to stderr.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import atomic
from .checkpoint import CheckpointError, load_model, weights_digest
from .cli import report
from .data import config_dataset
from .device import pick_device
from .nelbo import PROBES, bits_per_dim, data_dims, nelbo
from .sample import add_denoise_arg
from .solvers import SOLVERS, check_denoise_t, sample
from .tensors import seeded_generator


def sample_quality(model, data_dir, num: int, steps: int, seed: int, batch_size: int,
                   denoise_t: float | None = None) -> dict:
    """FID of `num` fast-solver samples against `num` test images (for an LSGM also its posterior
    floor and the ratio), the classifier's histogram of the samples and their nearest-training-image
    distances."""
    from . import features, quality

    dataset_name = model.config["data"]["dataset"]
    try:
        features.load_classifier(dataset_name)
    except CheckpointError as e:
        raise CheckpointError(f"no feature classifier shipped for {dataset_name} ({e})") from None
    denoising = check_denoise_t("fast", denoise_t, model, flag=lambda n: "--fid-denoise-t")
    images = sample(model, num, "fast", steps=steps, seed=seed, batch_size=batch_size, **denoising).images.cpu()
    used = {"fid_samples": num, "fid_denoise_t": denoising["denoise_t"]}
    return {**quality.sample_fids(model, images, data_dir, seed, batch_size), **used,
            **quality.class_balance(images, dataset_name, seed), **quality.copy_check(model, images, data_dir)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lsgm_core.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="checkpoint folder, or a training run folder (its latest)")
    ap.add_argument("--data-dir", help="data folder (default: $LSGM_DATA_DIR or ~/.cache/lsgm/data)")
    ap.add_argument("--split", default="test", choices=("train", "test"))
    ap.add_argument("--limit", type=int, help="evaluate the first N images only (default: all)")
    ap.add_argument("--batch-size", type=int, default=100, help="images per ODE solve (default 100)")
    ap.add_argument("--atol", type=float, default=1e-5, help="ODE absolute tolerance (default 1e-5)")
    ap.add_argument("--rtol", type=float, default=1e-5, help="ODE relative tolerance (default 1e-5)")
    ap.add_argument("--iw", type=int, default=1, help="importance samples K per image (default 1: the NELBO)")
    ap.add_argument("--probes", default="rademacher", choices=PROBES, help="Hutchinson probe distribution")
    ap.add_argument("--seed", type=int, default=0, help="seed of binarisation, z0 draws and probes (default 0)")
    ap.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: the best available)")
    ap.add_argument("--dequantize", action="store_true",
                    help="pixel baseline only: the bound on -log P(x) of the discrete images by uniform "
                         "dequantisation (2 levels per pixel for binary data, 256 otherwise), comparable with an "
                         "LSGM's NELBO")
    ap.add_argument("--fid", action="store_true", help="also compute the FID of samples against the test set")
    ap.add_argument("--fid-steps", type=int, default=SOLVERS["fast"].default_steps, help="fast-solver steps for --fid samples")
    add_denoise_arg(ap, "--fid-denoise-t", "the --fid samples")
    ap.add_argument("--fid-samples", type=int,
                    help="samples (and test images) for --fid (default: as many as images evaluated)")
    ap.add_argument("--resume", metavar="FILE", help="keep each finished batch's sums in FILE and continue from it "
                    "when run again with the same settings (a long CPU evaluation survives being stopped)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = ap.parse_args(argv)
    return report(lambda: evaluate(args))


def _resume_key(model, args, n: int, levels) -> dict:
    """What the sums of an evaluation's batches depend on: the model's weights (its distilled
    student's aside) and every setting."""
    return {"weights": weights_digest(model), "split": args.split, "n": n,
            "batch_size": args.batch_size, "atol": args.atol, "rtol": args.rtol, "iw": args.iw,
            "probes": args.probes, "seed": args.seed, "dequantize": levels}


def finished_batches(path, key: dict) -> list[dict]:
    """The batches already done in the --resume file `path` (none if it does not exist yet); a file
    from other settings is refused, naming them."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        state = json.loads(path.read_text())
        saved, batches = state["key"], state["batches"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--resume {path}: not a file this command wrote ({e}); remove it or give another path") from e
    differ = sorted(k for k in key.keys() | saved.keys() if key.get(k) != saved.get(k))
    if differ:
        raise ValueError(f"--resume {path} holds an evaluation with other settings ("
                         + ", ".join(f"{k}: {saved.get(k)!r} there, {key.get(k)!r} now" for k in differ)
                         + "); run with those settings, or give another file")
    return batches


def evaluate(args) -> dict:
    """The figures of one evaluation, from the parsed CLI arguments."""
    for name in ("limit", "batch_size", "iw", "fid_steps", "fid_samples"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
    for name in ("atol", "rtol"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}")
    device = pick_device(args.device)
    model = load_model(args.checkpoint, device)
    if model.kind == "pixel" and args.iw != 1:
        raise ValueError("--iw applies to LSGM checkpoints; the pixel baseline has no encoder")
    if model.kind != "pixel" and args.dequantize:
        raise ValueError("--dequantize applies to the pixel baseline; an LSGM's NELBO is already a bound on the "
                         "discrete images' likelihood")
    d = model.config["data"]
    dataset = config_dataset(d, args.split, args.data_dir)
    levels = (2 if dataset.binarize else 256) if args.dequantize else None
    n = min(args.limit or len(dataset), len(dataset))
    gen = seeded_generator(args.seed)
    key = _resume_key(model, args, n, levels)
    done = finished_batches(args.resume, key) if args.resume else []
    resumed = len(done)
    batches = torch.arange(n).split(args.batch_size)
    for i, idx in enumerate(tqdm(batches, desc="evaluating", unit="batch", file=sys.stderr, disable=args.no_progress)):
        x, _ = dataset.batch(idx, generator=gen)  # drawn for finished batches too: the later draws stay the same
        batch_seed = int(torch.randint(2 ** 62, (1,), generator=gen))
        if i < len(done):
            continue
        start = time.perf_counter()
        out = nelbo(model, x, atol=args.atol, rtol=args.rtol, iw_samples=args.iw, probes=args.probes,
                    seed=batch_seed, dequantize=levels)
        done.append({**{k: out[k].sum().item() for k in ("nelbo", "recon", "kl")},
                     "sq": out["nelbo"].pow(2).sum().item(), "nfe": out["nfe"],
                     "seconds": round(time.perf_counter() - start, 3)})
        if args.resume:
            atomic.write_json(args.resume, {"key": key, "batches": done})
    totals = {k: sum(b[k] for b in done) for k in ("nelbo", "recon", "kl", "sq", "nfe", "seconds")}
    nfe = totals["nfe"]
    mean = {k: totals[k] / n for k in ("nelbo", "recon", "kl")}
    result = {"checkpoint": model.meta["path"], "kind": model.kind, "dataset": d["dataset"], "split": args.split,
              "n": n, "nelbo_nats": mean["nelbo"],
              "nelbo_std_err": math.sqrt(max(totals["sq"] / n - mean["nelbo"] ** 2, 0.0) / n),
              "bpd": bits_per_dim(mean["nelbo"], data_dims(model)),
              "recon_nats": mean["recon"], "kl_nats": mean["kl"], "iw": args.iw, "atol": args.atol,
              "rtol": args.rtol, "probes": args.probes, "seed": args.seed, "nfe_per_batch": nfe / len(batches),
              "seconds": round(totals["seconds"], 3)}
    if args.resume:
        result["resume"] = {"file": str(args.resume), "batches_before": resumed}
    if model.kind == "pixel":
        result["note"] = (f"upper bound on -log P(x) of the discrete images by uniform dequantisation ({levels} levels "
                          "per pixel; recon is the bins' log-volume term): comparable with an LSGM's NELBO"
                          if levels else
                          "density of continuous pixels in [-1, 1]; not comparable with a discrete NELBO (--dequantize "
                          "gives a bound that is)")
        result["dequantize_levels"] = levels
    if args.fid:
        result.update(sample_quality(model, args.data_dir, args.fid_samples or n, args.fid_steps, args.seed,
                                     args.batch_size, args.fid_denoise_t))
    return result


if __name__ == "__main__":
    sys.exit(main())
