"""Benchmarks of lsgm_core. Each subcommand prints one JSON object on stdout.

    python -m lsgm_core.bench train [--config FILE] [--steps N] [--warmup N] [--batch-size B]
                                    [--device D] [--data-dir DIR] [--stages 1 2]

`train` times the trainer's own optimisation step (Trainer.train_step: forward, backward,
clipping, optimisers, EMA) for stage 1 and stage 2 of a config, after warm-up steps, and
reports images/s and peak memory (CUDA: torch.cuda.max_memory_allocated for each stage; else
the process's peak resident set size, which only grows, so stage 2's figure includes stage 1's).
Without --data-dir it runs on synthetic images written as IDX files to a temporary folder, so it
needs no download and the numbers do not depend on the data.

    python -m lsgm_core.bench sampling --checkpoint A [--baseline B] [--sizes 16 256]
                                       [--runs ode:1e-5 fast:10 ...] [--baseline-runs ...] [--repeats R]
                                       [--device D] [--fid N [--plot FILE.svg]]

`sampling` times lsgm_core.solvers.sample (network, solver and decoding; seed 0) for each number of
samples and solver setting (default: the adaptive ODE at atol = rtol = 1e-5 and 1e-3, the reverse
SDE with 1000 steps, the fast solver with 20 and 10), after an untimed warm-up call of each setting,
keeping the best (`seconds`) and the median (`median_seconds`) of --repeats timings; images are
decoded as the solver does it (`distilled` through the student's own decoder where it has one);
with --baseline (the pixel-space model) the same runs are timed for it (or --baseline-runs: a pixel
model has no distilled student, and its best FID may need more steps than the model's)
and `speedup` gives baseline / model, in wall time and in NFE, for each run both took. With --fid N each
setting's FID of N samples (as `quality` measures it) comes beside its time, `equal_fid` gives, for
each number of samples, the fastest setting of each model that reaches the worse of the two best
FIDs and the speed-up there (lsgm_core.comparison.equal_fid), and --plot draws FID against time, a
panel per number of samples, a line per model, a point per setting (lsgm_core.fid_plot).

    python -m lsgm_core.bench quality --checkpoint A [--runs ode:1e-5 fast:10 sde:1000 ...] [--num 10000]

`quality` draws --num samples (seed 0) with each solver setting and gives its FID against as many
test images (lsgm_core.features), its NFE per solve and wall time: what each solver's cost buys;
`classes` says how evenly the data set's shipped classifier spreads the samples over the classes
(`max_over_min` of its histogram, 1 when balanced, and `tv_to_uniform`; `sampling --fid` gives the
same for each setting). For an LSGM it also gives the floor of those FIDs, the FID of decoded posterior samples of as many
training images (lsgm_core.quality), and each run's `fid_ratio` to it.

The app's own benchmark (cold start, a Sample click, a latent map) lives with the app:
`python -m app.bench` (app/bench.py), so that lsgm_core never imports the app;
`python -m lsgm_core.bench app [...]` runs that program with the same arguments.

Adding a subcommand (`sampling`, ...): write `add_<name>_args(parser)` and
`bench_<name>(args) -> dict`, and register them in COMMANDS. `main` builds the parser, runs the
function and prints its dict as JSON; ConfigError, DataError, CheckpointError and ValueError become
"error: ..." on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .checkpoint import load_model
from .cli import report
from .comparison import equal_fid, speedup
from .config import load_config
from .data import dataset_spec
from .datasets import SPLITS
from .device import pick_device
from .sample import add_denoise_arg
from .solvers import check_denoise_t, check_model_for, parse_setting, sample, setting_forms
from .tensors import seeded_generator
from .train import Trainer

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "bmnist.toml"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _peak_memory_mib(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_cuda_allocated_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in bytes on macOS, in KiB on Linux
    return {"peak_rss_mib": round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)}


def write_synthetic_idx(dataset: str, data_dir: Path, n: int, side: int = 28, seed: int = 0) -> None:
    """Random uint8 images and labels of `dataset`'s shape, under its official file names (train and
    test, as its registry entry names them) in its folder of `data_dir`."""
    spec = dataset_spec(dataset)
    files = spec.files
    gen = seeded_generator(seed)
    folder = data_dir / files.folder
    folder.mkdir(parents=True, exist_ok=True)
    classes = len(spec.class_names)
    for split in SPLITS:
        image_file, label_file = files.splits[split]
        images = torch.randint(0, 256, (n, side, side), generator=gen, dtype=torch.uint8)
        labels = torch.randint(0, classes, (n,), generator=gen, dtype=torch.uint8)
        (folder / image_file).write_bytes(
            b"\x00\x00\x08\x03" + struct.pack(">3I", n, side, side) + images.numpy().tobytes())
        (folder / label_file).write_bytes(
            b"\x00\x00\x08\x01" + struct.pack(">I", n) + labels.numpy().tobytes())


# --------------------------------------------------------------------------- train

def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help=f"run configuration (default: {DEFAULT_CONFIG.name} if it exists, "
                                    "else the built-in defaults)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per stage (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before them (default 3)")
    p.add_argument("--batch-size", type=int, help="override train.batch_size")
    p.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--data-dir", help="real data from this folder (default: synthetic images)")
    p.add_argument("--stages", type=int, nargs="+", choices=(1, 2), default=[1, 2], help="stages to time")


def bench_train(args) -> dict:
    """Training throughput (images/s) and peak memory, stage 1 and stage 2."""
    if args.steps < 1 or args.warmup < 0:
        raise ValueError("--steps must be at least 1 and --warmup at least 0")
    config = args.config or (str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else None)
    device = pick_device(args.device)
    result = {"bench": "train", "config": config or "defaults", "device": str(device),
              "torch": torch.__version__,
              "data": "synthetic" if args.data_dir is None else str(args.data_dir),
              "steps": args.steps, "warmup": args.warmup}
    overrides = {"train": {"init_from": None, "max_steps": args.warmup + args.steps}}
    if args.batch_size is not None:
        overrides["train"]["batch_size"] = args.batch_size
    cfg = load_config(config, overrides)
    batch = result["batch_size"] = cfg["train"]["batch_size"]
    with tempfile.TemporaryDirectory(prefix="lsgm-bench-") as tmp:
        tmp = Path(tmp)
        data_dir = args.data_dir
        dataset = cfg["data"]["dataset"]
        if data_dir is None and not dataset.startswith("folder:"):  # a folder data set is its own data
            data_dir = tmp / "data"
            write_synthetic_idx(dataset, data_dir, n=max(4 * batch, 256))
        for stage in args.stages:
            cfg = load_config(config, {"train": {**overrides["train"], "stage": stage}})
            trainer = Trainer(cfg, tmp / f"stage{stage}", data_dir, device=str(device), show_progress=False)
            skipped = 0
            for i in range(args.warmup + args.steps):
                if i == args.warmup:
                    _sync(device)
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    start = time.perf_counter()
                skipped += trainer.train_step() is None
            _sync(device)
            seconds = time.perf_counter() - start
            model = trainer.model
            result[f"stage{stage}"] = {
                "images_per_s": round(args.steps * batch / seconds, 1),
                "ms_per_step": round(1000 * seconds / args.steps, 2),
                "params_vae": sum(p.numel() for p in model.vae_parameters()),
                "params_prior": sum(p.numel() for p in model.prior.parameters()),
                "skipped_steps": int(skipped),
                **_peak_memory_mib(device),
            }
            del trainer, model
    result["threads"] = torch.get_num_threads()  # as the config's train.num_threads left it
    return result


# --------------------------------------------------------------------------- sampling

def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="the model to time (an LSGM checkpoint or run folder)")
    p.add_argument("--baseline", help="a second checkpoint (the pixel baseline) to time the same way and compare")
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 256], help="numbers of samples (default 16 256)")
    p.add_argument("--runs", nargs="+", default=["ode:1e-5", "ode:1e-3", "sde:1000", "fast:20", "fast:10"],
                   help=f"solver settings: {setting_forms()} (default: %(default)s)")
    p.add_argument("--baseline-runs", nargs="+", metavar="SETTING",
                   help="the baseline's solver settings, if not those of --runs")
    p.add_argument("--repeats", type=int, default=1,
                   help="time each run this many times and keep the best and the median (default 1)")
    p.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fid", type=int, default=0, metavar="N",
                   help="also the FID of N samples per setting against N test images, and the two models at "
                        "equal FID (default 0: no FID)")
    p.add_argument("--batch-size", type=int, default=2500, help="samples per solve for --fid (default 2500)")
    p.add_argument("--data-dir", help="data folder for --fid, only where the test statistics are not shipped")
    p.add_argument("--plot", metavar="FILE.svg", help="with --fid: write FID against sampling time there")
    add_denoise_arg(p)


def _with_denoising(model, runs: dict[str, dict], denoise_t: float | None) -> dict[str, dict]:
    """Each run's sample() options with the denoising time it takes for `model` (none for the others)."""
    return {spec: {**o, **check_denoise_t(o["solver"], denoise_t, model, flag=lambda n: "--denoise-t")}
            for spec, o in runs.items()}


def _timed_sample(model, device: torch.device, num: int, options: dict, **kw):
    """sample() with `options` ({"solver": ..., solver settings}) and its wall time, device work included."""
    options = dict(options)
    _sync(device)
    start = time.perf_counter()
    result = sample(model, num, options.pop("solver"), **options, **kw)
    _sync(device)
    return result, time.perf_counter() - start


def _time_sampling(model, device: torch.device, runs: dict[str, dict], args, role: str) -> dict:
    out = {}
    runs = _with_denoising(model, runs, args.denoise_t)
    for options in runs.values():  # warm-up: each path's first-call allocations and lazy init
        _timed_sample(model, device, 2, options, seed=args.seed)
    for num in args.sizes:
        for spec, options in runs.items():
            timings = [_timed_sample(model, device, num, options, seed=args.seed) for _ in range(args.repeats)]
            out.setdefault(str(num), {})[spec] = {"nfe": timings[0][0].nfe, **_denoise_field(options),
                                                  "seconds": round(min(s for _, s in timings), 4),
                                                  "median_seconds": round(statistics.median(s for _, s in timings), 4)}
            # progress: a pixel model's 256 samples at 1e-5 take many minutes on a CPU
            print(json.dumps({role: {num: {spec: out[str(num)][spec]}}}), file=sys.stderr, flush=True)
    return out


def _fid_of_run(model, device: torch.device, options: dict, num: int, args) -> tuple:
    """`num` samples of one solver setting (in solves of --batch-size), their wall time, FID and how
    evenly the shipped classifier spreads them over the classes (quality.class_balance)."""
    from .features import fid_against_test_set
    from .quality import class_balance

    out, seconds = _timed_sample(model, device, num, options, seed=args.seed, batch_size=args.batch_size)
    images, dataset = out.images.cpu(), model.config["data"]["dataset"]
    fid = fid_against_test_set(images, dataset, args.data_dir, n=num, seed=args.seed)
    balance = class_balance(images, dataset, args.seed)
    return out, seconds, fid, {k: round(balance[k], 3) for k in ("max_over_min", "tv_to_uniform")}


def _with_fid(side: dict) -> dict:
    """A side's timed runs {num: {spec: run}} with each run's FID put beside its time."""
    return {num: {spec: {**r, "fid": side["fid"][spec]} for spec, r in runs.items()} for num, runs in side["runs"].items()}


def _plot(path: str, result: dict, measured: dict) -> None:
    from .fid_plot import write_fid_plot

    panels = {f"{num} samples": {Path(result[role]["checkpoint"]).name:
                                 [(r["seconds"], r["fid"], spec) for spec, r in runs[num].items()]
                                 for role, runs in measured.items()}
              for num in result["model"]["runs"]}
    write_fid_plot(path, panels)


def bench_sampling(args) -> dict:
    """NFE and wall time of every sampler for 16 and 256 samples, and the speed-up over a baseline;
    with --fid, each setting's FID and the two models at equal FID."""
    runs = {spec: parse_setting(spec) for spec in args.runs}
    baseline_runs = {spec: parse_setting(spec) for spec in args.baseline_runs} if args.baseline_runs else runs
    if args.baseline_runs and args.baseline is None:
        raise ValueError("--baseline-runs needs --baseline")
    if min(args.sizes) < 1 or args.repeats < 1:
        raise ValueError("--sizes and --repeats must be positive")
    if args.fid < 0 or args.fid == 1 or args.batch_size < 1:
        raise ValueError("--fid must be 0 (no FID) or at least 2, and --batch-size positive")
    if args.plot is not None and (not args.fid or Path(args.plot).suffix.lower() != ".svg"):
        raise ValueError(f"--plot needs --fid N and a file name ending in .svg (got --plot {args.plot})")
    device = pick_device(args.device)
    result = {"bench": "sampling", "device": str(device), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "repeats": args.repeats}
    sides = [(role, load_model(path, device), settings) for role, path, settings in
             (("model", args.checkpoint, runs), ("baseline", args.baseline, baseline_runs)) if path is not None]
    for _, model, settings in sides:  # before any timing: a refusal should not come after minutes of work
        for options in settings.values():
            check_model_for(model, options["solver"])
    for role, model, settings in sides:
        result[role] = {"checkpoint": model.meta["path"], "kind": model.kind, "shape": list(model.latent_shape),
                        "params_prior": sum(p.numel() for p in model.prior.parameters()),
                        "runs": _time_sampling(model, device, settings, args, role)}
        if args.fid:
            result[role]["fid_samples"] = args.fid
            result[role]["fid"], result[role]["classes"] = {}, {}
            for spec, options in _with_denoising(model, settings, args.denoise_t).items():
                _, _, fid, balance = _fid_of_run(model, device, options, args.fid, args)
                result[role]["fid"][spec], result[role]["classes"][spec] = round(fid, 3), balance
                print(json.dumps({role: {"fid": {spec: result[role]["fid"][spec]}, "classes": {spec: balance}}}),
                      file=sys.stderr, flush=True)
    if args.baseline is not None:
        # how many times faster the model is than the baseline (> 1: the model is faster)
        result["speedup"] = {
            num: {label: {k: round(v, 2) for k, v in speedup(m["seconds"], m["nfe"], b["seconds"], b["nfe"]).items()}
                  for label, m in timed.items() if label in result["baseline"]["runs"][num]
                  for b in [result["baseline"]["runs"][num][label]]}
            for num, timed in result["model"]["runs"].items()}
    measured = {role: _with_fid(result[role]) for role in ("model", "baseline") if role in result} if args.fid else {}
    if "baseline" in measured:
        result["equal_fid"] = {}
        for num, model_runs in measured["model"].items():
            e = equal_fid(model_runs, measured["baseline"][num])
            result["equal_fid"][num] = {**e, "speedup": {k: round(v, 2) for k, v in e["speedup"].items()}}
    if args.plot is not None:
        _plot(args.plot, result, measured)
        result["plot"] = args.plot
    return result


# --------------------------------------------------------------------------- quality

def add_quality_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="the model (an LSGM or pixel checkpoint or run folder)")
    p.add_argument("--runs", nargs="+", default=["ode:1e-5", "ode:1e-3", "fast:5", "fast:10", "fast:20", "sde:1000"],
                   help=f"solver settings: {setting_forms()} (default: %(default)s)")
    p.add_argument("--num", type=int, default=10000, help="samples per setting, and test images (default 10000)")
    p.add_argument("--batch-size", type=int, default=2500, help="samples per solve (default 2500)")
    p.add_argument("--data-dir", help="data folder, only where the test statistics are not shipped")
    p.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--seed", type=int, default=0)
    add_denoise_arg(p)


def _denoise_field(options: dict) -> dict:
    return {"denoise_t": options["denoise_t"]} if "denoise_t" in options else {}


def bench_quality(args) -> dict:
    """Sample quality (FID against the test set) of each solver setting, with its NFE and wall time;
    for an LSGM also the posterior-reconstruction FID (the floor) and each FID's ratio to it."""
    from .quality import fid_ratio, posterior_fids

    runs = {spec: parse_setting(spec) for spec in args.runs}
    if args.num < 2 or args.batch_size < 1:
        raise ValueError("--num must be at least 2 and --batch-size positive")
    device = pick_device(args.device)
    model = load_model(args.checkpoint, device)
    dataset = model.config["data"]["dataset"]
    result = {"bench": "quality", "checkpoint": model.meta["path"], "dataset": dataset, "num": args.num,
              "device": str(device), "torch": torch.__version__, "runs": {}}
    if model.kind == "lsgm":
        # the floor of every run's FID: a prior equal to the aggregate posterior would reach it
        result.update({k: round(v, 3) for k, v in
                       posterior_fids(model, args.num, args.data_dir, args.seed, args.batch_size).items()})
        print(json.dumps({"posterior_fid": result["posterior_fid"]}), file=sys.stderr, flush=True)
    for spec, options in _with_denoising(model, runs, args.denoise_t).items():
        out, seconds, fid, balance = _fid_of_run(model, device, options, args.num, args)
        result["runs"][spec] = {"nfe_per_batch": out.nfe / -(-args.num // args.batch_size), **_denoise_field(options),
                                "seconds": round(seconds, 3), "fid": round(fid, 3), "classes": balance}
        if "posterior_fid" in result:
            result["runs"][spec]["fid_ratio"] = round(fid_ratio(fid, result["posterior_fid"]), 3)
        print(json.dumps({spec: result["runs"][spec]}), file=sys.stderr, flush=True)
    return result


# --------------------------------------------------------------------------- entry point

COMMANDS = {
    "train": (add_train_args, bench_train),
    "sampling": (add_sampling_args, bench_sampling),
    "quality": (add_quality_args, bench_quality),
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["app"]:
        # the app's benchmark, run as its own program: lsgm_core launches the app, never imports it
        return subprocess.call([sys.executable, "-m", "app.bench", *argv[1:]])
    ap = argparse.ArgumentParser(prog="python -m lsgm_core.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="{" + ",".join([*COMMANDS, "app"]) + "}")
    for name, (add_args, run) in COMMANDS.items():
        p = sub.add_parser(name, help=(run.__doc__ or "").strip().split("\n")[0] or None)
        add_args(p)
        p.set_defaults(run=run)
    args = ap.parse_args(argv)
    return report(lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
