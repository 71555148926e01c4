"""Feature classifiers and the Frechet distance (an FID in a feature space the project trains itself).

Inception weights cannot be downloaded here, and they suit 28x28 grey digits poorly anyway, so
each data set gets a small CNN classifier whose 128-d penultimate layer is the feature space:

    python -m lsgm_core.features --dataset mnist --data-dir DATA [--out checkpoints/features] [--epochs N]

writes ``<out>/<classifier>.safetensors`` (weights), ``<classifier>.json`` (architecture, SHA-256 of
the weights, metrics, how it was trained) and ``<dataset>_test_stats.safetensors`` (mean and
covariance of the test set's features), so that users without the data can still compute an FID.
``<classifier>`` is the data set's ``classifier`` in the registry (``lsgm_core.datasets``), today
its own name; a data set whose spec names none has no FID.

Images: float in [0, 1] (or uint8 in 0..255), ``[N, 1, 28, 28]``, ``[N, 28, 28]`` or ``[N, 28, 28, 1]``;
32x32 images (the models' padded size) are center-cropped by 2 pixels.

Binarised MNIST: its data are binary images (a fresh Bernoulli draw of the grey levels), and a
model with a Bernoulli decoder generates binary images too; ``decode_images`` returns their
probabilities. The convention is to **binarise both sides**: the ``binarized-mnist`` classifier is
trained on dynamically binarised images, and every image it is given is binarised first (a
Bernoulli draw with the pixel values as probabilities, seeded, so figures are reproducible).
The test-set statistics are therefore those of binarised test images, and samples may be passed
either as probabilities (mean images) or as binary draws: binarising a binary image leaves it
unchanged. ``mnist`` and ``fashion-mnist`` classifiers see grey images as they are.

The Frechet distance is biased upwards for small sample sizes: compare only figures computed
with the same number of samples (10,000 against the 10,000 test images is the reference).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
import torch.nn.functional as F

from .atomic import atomic_write, write_json
from .checkpoint import CheckpointError, load_state
from .data import DATASETS, DataError, dataset_spec, load_dataset
from .tensors import seeded_generator

__all__ = [
    "DEFAULT_FEATURES_DIR", "FeatureClassifier", "classify", "extract_features", "feature_stats",
    "fid_against_test_set", "frechet_distance", "frechet_distance_from_stats", "load_classifier",
    "reference_indices", "reference_stats", "train_classifier",
]

DEFAULT_FEATURES_DIR = Path(__file__).resolve().parents[1] / "checkpoints" / "features"
FORMAT = "lsgm-feature-classifier"
VERSION = 1
IMAGE_SIZE = 28


class FeatureClassifier(nn.Module):
    """A small CNN for 28x28 grey images; ``features`` is its penultimate (pre-activation) layer.

    Pre-activation features are used because they are closer to Gaussian and rarely exactly
    zero, so their covariance is well conditioned (post-ReLU units that never fire make it singular).
    """

    def __init__(self, width: int = 16, feature_dim: int = 128, num_classes: int = 10):
        super().__init__()
        c = width

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]

        # 28 -> 14 -> 7 -> 3
        self.body = nn.Sequential(*block(1, c), *block(c, 2 * c), *block(2 * c, 4 * c), nn.Flatten())
        self.embed = nn.Linear(4 * c * 3 * 3, feature_dim)
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.3), nn.Linear(feature_dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # centred inputs train faster than [0, 1] ones
        return self.embed(self.body(2.0 * x - 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ----------------------------------------------------------------------------- images


def _as_image_tensor(images) -> torch.Tensor:
    """``images`` as a CPU tensor ``[N, 1, H, W]`` in its own dtype; shape errors say what is accepted."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.dim() == 4 and x.shape[1] != 1 and x.shape[-1] == 1:
        x = x.permute(0, 3, 1, 2)  # [N, H, W, 1], as the sample CLI's npz may hold
    elif x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4 or x.shape[1] != 1 or tuple(x.shape[-2:]) not in ((28, 28), (32, 32)):
        raise ValueError(f"expected grey 28x28 (or padded 32x32) images [N, 1, H, W], [N, H, W] or [N, H, W, 1]; "
                         f"got shape {list(x.shape)}")
    if x.dtype != torch.uint8 and x.dtype != torch.bool and not x.is_floating_point():
        raise ValueError(f"images must be uint8 (0..255), bool or float in [0, 1]; got {x.dtype}")
    if len(x) == 0:
        raise ValueError("no images given")
    return x


def _prepare(x: torch.Tensor, binarize: bool, generator: torch.Generator) -> torch.Tensor:
    """A batch from ``_as_image_tensor`` -> float32 [B, 1, 28, 28] in [0, 1], binarised if asked."""
    if x.shape[-1] == 32:
        x = x[..., 2:30, 2:30]
    if x.dtype == torch.uint8:
        x = x.float().div_(255)
    else:
        x = x.float()
        if not torch.isfinite(x).all():
            raise ValueError("images hold NaN or infinite values")
        lo, hi = x.min().item(), x.max().item()
        # a little slack for solver round-off; anything further is a caller's scaling mistake
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"float images must lie in [0, 1]; these span [{lo:.3g}, {hi:.3g}] "
                             "(map [-1, 1] images with (x + 1) / 2)")
        x = x.clamp_(0, 1)
    if binarize:
        x = torch.bernoulli(x, generator=generator)
    return x


def _batches(classifier: FeatureClassifier, images, batch_size: int, seed: int):
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    x = _as_image_tensor(images)
    generator = seeded_generator(seed)
    device = next(classifier.parameters()).device
    binarize = getattr(classifier, "binarize", False)
    for i in range(0, len(x), batch_size):
        yield _prepare(x[i:i + batch_size].cpu(), binarize, generator).to(device)


@torch.inference_mode()
def extract_features(classifier: FeatureClassifier, images, batch_size: int = 500, seed: int = 0) -> np.ndarray:
    """Features ``[N, feature_dim]`` (float64) of ``images`` (see the module docstring for the formats).

    A ``binarized-mnist`` classifier binarises the images first, with a generator seeded by ``seed``.
    """
    return np.concatenate([classifier.features(b).double().cpu().numpy()
                           for b in _batches(classifier, images, batch_size, seed)])


@torch.inference_mode()
def classify(classifier: FeatureClassifier, images, batch_size: int = 500, seed: int = 0) -> np.ndarray:
    """Predicted labels ``[N]`` (int64), with the same preprocessing as ``extract_features``."""
    return np.concatenate([classifier(b).argmax(1).cpu().numpy() for b in _batches(classifier, images, batch_size, seed)])


# ----------------------------------------------------------------------------- Frechet distance


def feature_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and covariance ``[D, D]`` (float64, unbiased) of features ``[N, D]``."""
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"features must be [N, D] with N >= 2; got shape {list(f.shape)}")
    if not np.isfinite(f).all():
        raise ValueError("features hold NaN or infinite values")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) between N(mu1, S1) and N(mu2, S2).

    tr((S1 S2)^(1/2)) is computed as the sum of the square roots of the eigenvalues of the
    symmetric PSD matrix S1^(1/2) S2 S1^(1/2), which has the same spectrum as S1 S2. Unlike
    scipy.linalg.sqrtm of the non-symmetric S1 S2, this never produces imaginary parts and stays
    accurate for singular covariances (fewer samples than dimensions).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shapes do not match: mu {mu1.shape} {mu2.shape}, sigma {s1.shape} {s2.shape}")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2  # symmetric up to round-off; eigh needs it exactly
    r = _sqrt_psd(s1)
    m = r @ s2 @ r
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean
    return float(max(fd, 0.0))  # round-off can leave -1e-12 for identical sets


def frechet_distance(feats_a, feats_b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``[N, D]`` and ``[M, D]``."""
    return frechet_distance_from_stats(*feature_stats(feats_a), *feature_stats(feats_b))


# ----------------------------------------------------------------------------- files


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def with_classifier() -> list[str]:
    """The registered data sets that have a feature classifier."""
    return [name for name, spec in DATASETS.items() if spec.classifier]


def _classifier_name(dataset_name: str) -> str:
    """The file stem of a registered data set's classifier; ``CheckpointError`` if it has none."""
    stem = dataset_spec(dataset_name).classifier
    if stem is None:
        raise CheckpointError(f"{dataset_name} has no feature classifier (its entry in lsgm_core.datasets names "
                              f"none), so no FID for it; data sets with one: {', '.join(with_classifier())}")
    return stem


def _classifier_paths(dataset_name_or_path: str | os.PathLike, features_dir: str | os.PathLike | None) -> tuple[Path, Path]:
    """(weights, json) of a data set name in ``features_dir``, or of an explicit path to either file."""
    if str(dataset_name_or_path) in DATASETS:
        base = Path(features_dir or DEFAULT_FEATURES_DIR) / _classifier_name(str(dataset_name_or_path))
    else:
        p = Path(dataset_name_or_path).expanduser()
        if p.suffix not in (".safetensors", ".json"):
            raise CheckpointError(f"{p}: give a data set name ({', '.join(DATASETS)}) or the path of a "
                                  "classifier's .safetensors or .json file")
        base = p.with_suffix("")
    return base.with_suffix(".safetensors"), base.with_suffix(".json")


def load_classifier(dataset_name_or_path: str | os.PathLike, features_dir: str | os.PathLike | None = None,
                    device: str | torch.device = "cpu") -> FeatureClassifier:
    """The classifier of a data set (from ``features_dir``, by default the shipped checkpoints/features),
    or from an explicit ``.safetensors``/``.json`` path (the other file is its sibling).

    Returns it in eval mode, with ``binarize`` (its input convention), ``sha256`` (of the weights)
    and ``meta`` (the JSON) attached. A missing, damaged or mismatched file raises
    ``CheckpointError`` naming it.
    """
    weights, meta_path = _classifier_paths(dataset_name_or_path, features_dir)
    for f in (meta_path, weights):
        if not f.is_file():
            hint = (f"; train it with `python -m lsgm_core.features --dataset {dataset_name_or_path} --data-dir DATA`"
                    if str(dataset_name_or_path) in DATASETS else "")
            raise CheckpointError(f"{f}: feature classifier file not found{hint}")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not an {FORMAT} file")
    if meta.get("version", 0) > VERSION:
        raise CheckpointError(f"{meta_path}: format version {meta['version']} is newer than this lsgm_core "
                              f"understands ({VERSION}); upgrade lsgm_core")
    sha = _sha256(weights)
    if sha != meta.get("weights_sha256"):
        raise CheckpointError(f"{weights}: damaged (its SHA-256 does not match {meta_path.name}); "
                              "the file was truncated or modified — restore it from the repository or retrain it")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({e})") from None
    try:
        model = FeatureClassifier(**meta["arch"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{meta_path}: cannot build the classifier from its 'arch' ({e})") from None
    load_state(model, state, str(weights))
    model.binarize = bool(meta.get("binarize", False))
    model.sha256 = sha
    model.meta = meta
    return model.to(device).eval()


# ----------------------------------------------------------------------------- test-set statistics

_STATS_MEMO: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _stats_path(dataset_name: str, features_dir: str | os.PathLike | None) -> Path:
    return Path(features_dir or DEFAULT_FEATURES_DIR) / f"{dataset_name}_test_stats.safetensors"


def _read_stats(path: Path, n: int, classifier_sha: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached statistics if the file is there, readable and made for this ``n`` and classifier."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
            if meta.get("n") != str(n) or meta.get("classifier_sha256") != classifier_sha:
                return None
            return f.get_tensor("mu"), f.get_tensor("sigma")
    except (SafetensorError, OSError, ValueError) as e:
        warnings.warn(f"{path}: unreadable test-set statistics ({e}); recomputing them from the data")
        return None


def reference_indices(total: int, n: int) -> torch.Tensor:
    """The test images that make a reference of ``n``: evenly spaced over the whole set, since the
    test sets are not shuffled (MNIST's first 5,000 test images come from NIST's training set and
    are cleaner than its last 5,000: its first 2,000 alone score 12 against real training images)."""
    return torch.arange(n) * total // n


def reference_stats(dataset_name: str, data_dir: str | os.PathLike | None = None, n: int = 10000,
                    features_dir: str | os.PathLike | None = None, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the features of ``n`` test images of ``dataset_name`` (all of them,
    or ``reference_indices``).

    Read from ``<features_dir>/<dataset>_test_stats.safetensors`` when it was made with the same
    ``n`` and classifier; otherwise computed from the data in ``data_dir`` and, for the whole
    test set, written there (atomically; a read-only folder only costs a warning). Binarised
    MNIST test images are binarised with seed 0.
    """
    dataset_spec(dataset_name)  # an unknown name is a DataError, not a classifier path
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    classifier = load_classifier(dataset_name, features_dir)
    path = _stats_path(dataset_name, features_dir)
    key = (str(path), n, classifier.sha256)
    if key in _STATS_MEMO:
        return _STATS_MEMO[key]
    stats = _read_stats(path, n, classifier.sha256)
    if stats is None:
        test = load_dataset(dataset_name, "test", data_dir, image_size=IMAGE_SIZE)
        if n > len(test):
            raise ValueError(f"n={n} exceeds the {len(test)} test images of {dataset_name}")
        stats = feature_stats(extract_features(classifier, test.images[reference_indices(len(test), n)],
                                               batch_size, seed=0))
        if n == len(test):
            meta = {"dataset": dataset_name, "n": str(n), "classifier_sha256": classifier.sha256, "seed": "0"}
            tensors = {"mu": torch.from_numpy(stats[0]), "sigma": torch.from_numpy(stats[1])}
            try:
                atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))
            except OSError as e:
                warnings.warn(f"cannot cache the test-set statistics in {path} ({e}); they will be recomputed next time")
    _STATS_MEMO[key] = stats
    return stats


def fid_against_test_set(images, dataset_name: str, data_dir: str | os.PathLike | None = None, n: int = 10000,
                         features_dir: str | os.PathLike | None = None, batch_size: int = 500, seed: int = 0) -> float:
    """Frechet distance between ``images`` and ``n`` test images of ``dataset_name`` (``reference_stats``),
    in the feature space of that data set's classifier (``seed`` drives the binarisation of
    binarized-mnist images). Needs the data only when the statistics are not cached.
    """
    mu_t, sigma_t = reference_stats(dataset_name, data_dir, n, features_dir, batch_size)
    classifier = load_classifier(dataset_name, features_dir)
    mu, sigma = feature_stats(extract_features(classifier, images, batch_size, seed))
    return frechet_distance_from_stats(mu, sigma, mu_t, sigma_t)


# ----------------------------------------------------------------------------- training


def _machine() -> str:
    return (f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores, "
            f"torch {torch.__version__} with {torch.get_num_threads()} thread(s)")


def train_classifier(dataset_name: str, data_dir: str | os.PathLike | None, out_path: str | os.PathLike,
                     epochs: int = 2, seed: int = 0, batch_size: int = 128, lr: float = 3e-3,
                     command: str | None = None) -> dict:
    """Train the feature classifier of ``dataset_name`` and write it to ``out_path`` (the ``.safetensors``;
    the ``.json`` goes beside it). Returns the metrics (test accuracy, seconds, sizes...).

    binarized-mnist is trained on dynamically binarised images (a fresh draw every epoch) and
    tested on test images binarised with seed 0; see the module docstring for why.
    """
    spec = dataset_spec(dataset_name)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    weights = Path(out_path)
    if weights.suffix != ".safetensors":
        raise ValueError(f"out_path must end in .safetensors, got {weights}")
    weights.parent.mkdir(parents=True, exist_ok=True)
    train = load_dataset(dataset_name, "train", data_dir, image_size=IMAGE_SIZE)
    test = load_dataset(dataset_name, "test", data_dir, image_size=IMAGE_SIZE)

    torch.manual_seed(seed)
    generator = seeded_generator(seed)
    arch = {"width": 16, "feature_dim": 128, "num_classes": len(spec.class_names)}
    model = FeatureClassifier(**arch)
    model.binarize = train.binarize
    steps_per_epoch = len(train) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    start, cpu_start = time.perf_counter(), time.process_time()
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(train), generator=generator)
        total = 0.0
        for i in range(steps_per_epoch):
            x, y = train.batch(perm[i * batch_size:(i + 1) * batch_size], generator)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        print(f"{dataset_name} epoch {epoch + 1}/{epochs}: loss {total / steps_per_epoch:.4f}, "
              f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    # CPU time as well: on a shared machine the wall time says more about the neighbours than the job
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    model.eval()
    accuracy = float((classify(model, test.images) == test.labels.numpy()).mean())

    atomic_write(weights, lambda p: save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(p)))
    metrics = {"dataset": dataset_name, "test_accuracy": round(accuracy, 4), "test_images": len(test),
               "train_seconds": round(seconds, 1), "train_cpu_seconds": round(cpu_seconds, 1),
               "epochs": epochs, "seed": seed, "batch_size": batch_size, "lr": lr,
               "params": sum(p.numel() for p in model.parameters())}
    meta = {"format": FORMAT, "version": VERSION, "dataset": dataset_name, "arch": arch,
            "binarize": model.binarize, "weights_sha256": _sha256(weights), "metrics": metrics,
            "machine": _machine(), "command": command}
    # written last: it holds the weights' hash, so an interrupted run is caught as a mismatch
    write_json(weights.with_suffix(".json"), meta)
    return {**metrics, "weights": str(weights), "weights_bytes": weights.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m lsgm_core.features",
                                description="Train a feature classifier and the test-set statistics for the Frechet distance.")
    p.add_argument("--dataset", required=True, choices=with_classifier())
    p.add_argument("--data-dir", default=None, help="folder holding mnist/ and fashion-mnist/")
    p.add_argument("--out", default=str(DEFAULT_FEATURES_DIR), help="output folder (default: the shipped checkpoints/features)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    weights = out / f"{DATASETS[args.dataset].classifier}.safetensors"
    start = time.perf_counter()
    try:
        result = train_classifier(args.dataset, args.data_dir, weights, args.epochs,
                                  args.seed, command=" ".join(["python -m lsgm_core.features", *argv]))
        reference_stats(args.dataset, args.data_dir, result["test_images"], out)
    except (DataError, CheckpointError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    stats = _stats_path(args.dataset, out)
    result.update(seconds=round(time.perf_counter() - start, 1), json_bytes=weights.with_suffix(".json").stat().st_size,
                  stats=str(stats), stats_bytes=stats.stat().st_size)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
