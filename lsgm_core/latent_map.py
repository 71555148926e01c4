"""The latent map: where a model puts real images and its own samples.

Encode a test set (the encoder's z0 means; the pixels themselves for the pixel baseline, which has
no encoder), measure how linearly its classes separate there (a logistic-regression probe), and
project real images and model samples into one 2-D map (PCA, then UMAP fitted on the real images
only, so the samples are placed in the data's map rather than shaping it).

A checkpoint can carry its map (`python -m lsgm_core.latent_map --checkpoint C --data-dir D`):
latent_map.safetensors (the reference images' PCA coordinates, map coordinates and labels, the PCA
itself) and latent_map.json (the data set, the digests of the encoder's weights, of the images and
of the arrays, the probe's accuracy). Nothing pickled, so no fitted UMAP: samples are placed by
`place`, the inverse-distance weighted mean of the map coordinates of their NEIGHBOURS nearest
reference points in PCA space. A cache whose digests do not match is refused (load_cache: None).
"""
from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from safetensors.torch import load_file, save_file

from . import atomic, solvers
from .data import ImageDataset
from .datasets import DATASETS
from .tensors import seeded_generator

PCA_DIMS = 50  # UMAP on the top principal components: the usual speed-up, little change to the map
ENCODE_BATCH = 500
CACHE_ARRAYS, CACHE_META = "latent_map.safetensors", "latent_map.json"
NEIGHBOURS = 10


def space_name(model) -> str:
    """What the map places: the encoder's z0 means, or for the pixel baseline (no encoder) the pixels."""
    return "z0 means" if model.kind == "lsgm" else "pixels (the pixel-space model has no encoder)"


def encode(model, images: torch.Tensor, *, seed: int = 0, device: str | torch.device = "cpu",
           check: Callable[[], None] = lambda: None) -> np.ndarray:
    """z0 means [N, D] (float32; the pixels for the pixel baseline) of uint8 images [N, 1, S, S]
    already padded to the model's size.

    A model trained on a binarised data set has only seen binary pixels, so it is shown the same:
    one binarisation drawn from `seed`. `check` runs after every batch (a Stop button raises there).
    """
    spec = DATASETS.get(model.config["data"]["dataset"])  # None for a folder of the user's images
    data = ImageDataset(images, binarize=spec is not None and spec.binarize)
    gen = seeded_generator(seed)
    mus = []
    with torch.inference_mode():
        for idx in torch.arange(len(images)).split(ENCODE_BATCH):
            x, _ = data.batch(idx, generator=gen)
            x = x.expand(-1, model.in_channels, -1, -1).to(device)
            mus.append(model.encode(x)[0].flatten(1).float().cpu())
            check()
    return torch.cat(mus).numpy()


def probe_accuracy(z: np.ndarray, labels: np.ndarray, train_fraction: float = 0.8) -> float:
    """Test accuracy of a logistic regression on `z` (standardised), trained on the first
    `train_fraction` of the rows and tested on the rest."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cut = int(train_fraction * len(z))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
    clf.fit(z[:cut], labels[:cut])
    return float(clf.score(z[cut:], labels[cut:]))


def _reducer(n_neighbors: int = 15, **kwargs):
    """UMAP with 200 epochs, its own choice for large data, rather than 500 below 10,000 points:
    the map settles well before, at 2.5 times less cost."""
    import umap

    return umap.UMAP(n_neighbors=n_neighbors, min_dist=0.1, n_epochs=200, **kwargs)


def warm_up() -> None:
    """Import UMAP and compile its numba kernels (fit and transform) on toy problems: the first
    real map would otherwise spend 30-90 s compiling. First the exact neighbour search that UMAP
    uses below 4,096 points (the default maps), then the approximate one (pynndescent) it uses above."""
    rng = np.random.default_rng(0)
    for approximate in (False, True):
        fitted = _reducer(5, force_approximation_algorithm=approximate).fit(
            rng.normal(size=(300, 8)).astype(np.float32))
        fitted.transform(rng.normal(size=(10, 8)).astype(np.float32))


def pca_fit(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], components [K, D]) of the top K = PCA_DIMS principal components of z [N, D]."""
    from sklearn.decomposition import PCA

    pca = PCA(min(PCA_DIMS, *z.shape), random_state=0).fit(z)
    return pca.mean_.astype(np.float32), pca.components_.astype(np.float32)


def place(ref_pcs: np.ndarray, ref_xy: np.ndarray, pcs: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """Map coordinates [M, 2] of points pcs [M, K] (PCA coordinates): the mean of the map coordinates of
    their k nearest reference points, weighted by 1 / distance^2, so a reference point lands on its own."""
    if not len(pcs):
        return np.zeros((0, 2), np.float32)
    ref = ref_pcs.astype(np.float64)
    d2 = (np.square(pcs.astype(np.float64)).sum(1)[:, None] - 2 * pcs @ ref.T + np.square(ref).sum(1)[None]).clip(0)
    near = np.argsort(d2, axis=1)[:, :k]
    w = 1.0 / (np.take_along_axis(d2, near, 1) + 1e-12)
    return ((w[..., None] * ref_xy[near]).sum(1) / w.sum(1, keepdims=True)).astype(np.float32)


def project(z_real: np.ndarray, z_extra: np.ndarray, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """2-D map coordinates of `z_real` [N, D] (PCA to PCA_DIMS, then UMAP fitted on them) and of
    `z_extra` [M, D] placed into the same map.

    `seed` None runs UMAP's parallel, unseeded optimisation (the quickest); a seed makes the map
    reproducible, which UMAP buys by running on one thread.
    """
    mean, comps = pca_fit(z_real)
    seeded = {} if seed is None else {"random_state": seed, "n_jobs": 1}
    reducer = _reducer(**seeded).fit((z_real - mean) @ comps.T)
    extra = reducer.transform((z_extra - mean) @ comps.T) if len(z_extra) else np.zeros((0, 2), np.float32)
    return reducer.embedding_, extra


@dataclass
class LatentMap:
    space: str  # what the map places (space_name)
    labels: np.ndarray  # [N] classes of the real images
    xy: np.ndarray  # [N, 2] map coordinates of the real images
    sample_xy: np.ndarray  # [M, 2] map coordinates of the model's samples
    sample_images: torch.Tensor  # [M, C, H, W] in [0, 1]
    accuracy: float  # the linear probe's test accuracy on the real images

    def csv(self, class_names: list[str]) -> str:
        rows = ["kind,index,label,class,umap_x,umap_y"]
        rows += [f"data,{i},{c},{class_names[c]},{x:.5f},{v:.5f}"
                 for i, (c, (x, v)) in enumerate(zip(self.labels, self.xy))]
        rows += [f"sample,{i},,,{x:.5f},{v:.5f}" for i, (x, v) in enumerate(self.sample_xy)]
        return "\n".join(rows) + "\n"


def latent_map(model, images: torch.Tensor, labels: torch.Tensor, *, num_samples: int, seed: int, solver: str,
               steps: int | None = None, device: str | torch.device = "cpu", umap_seed: int | None = None,
               check: Callable[[], None] = lambda: None,
               progress: Callable[[float, str], None] = lambda frac, desc: None) -> LatentMap:
    """The whole map of uint8 test images [N, 1, S, S] (padded to the model's size) and their labels,
    with `num_samples` model samples drawn by `solver` from `seed` placed in it."""
    space = space_name(model)
    progress(0.05, "encoding the test images")
    z_real = encode(model, images, seed=seed, device=device, check=check)
    z_fake = np.zeros((0, z_real.shape[1]), np.float32)
    side = model.image_size - 2 * model.crop
    fake_images = torch.zeros(0, model.in_channels, side, side)
    if num_samples:
        progress(0.3, f"sampling {num_samples} images from the model")
        with torch.inference_mode():
            result = solvers.sample(model, num_samples, solver, steps=steps, seed=seed, callback=lambda d: check())
        z_fake, fake_images = result.z0.flatten(1).float().cpu().numpy(), result.images.cpu()
    y = labels.numpy()
    progress(0.45, f"linear probe on {space}")
    accuracy = probe_accuracy(z_real, y)
    check()
    progress(0.6, f"UMAP of {len(z_real)} points")
    xy_real, xy_fake = project(z_real, z_fake, umap_seed)
    return LatentMap(space, y, xy_real, xy_fake, fake_images, accuracy)


def _sha256(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def encoder_digest(model) -> str:
    """sha256 of the weights the map depends on: the encoder's (none for the pixel baseline), so a
    student or a retrained prior added to the checkpoint keeps its map valid."""
    encoder = getattr(model, "encoder", None)
    state = encoder.state_dict() if encoder is not None else {}
    return _sha256(*(v.detach().cpu().float().numpy() for _, v in sorted(state.items())))


@dataclass
class MapCache:
    dataset: str
    images_sha256: str  # of the uint8 images [N, 1, S, S] mapped, padded to the model's size
    labels: np.ndarray  # [N]
    xy: np.ndarray  # [N, 2]
    pcs: np.ndarray  # [N, K] the images' PCA coordinates, float32 (stored as float16)
    mean: np.ndarray  # [D] the PCA's
    components: np.ndarray  # [K, D]
    accuracy: float  # the linear probe on z0 of all N images

    def placed(self, z: np.ndarray) -> np.ndarray:
        return place(self.pcs, self.xy, (z - self.mean) @ self.components.T)


def write_cache(model, folder: str | Path, images: torch.Tensor, labels: torch.Tensor, dataset: str,
                seed: int = 0, device="cpu") -> dict:
    """The map of `images` (uint8, padded to the model's size) in folder's latent_map files; its figures."""
    z = encode(model, images, seed=seed, device=device)
    y = labels.numpy().astype(np.int64)
    mean, comps = pca_fit(z)
    pcs = (z - mean) @ comps.T
    xy = _reducer(random_state=seed, n_jobs=1).fit_transform(pcs).astype(np.float32)
    arrays = {"labels": y, "xy": xy, "pcs": pcs.astype(np.float16), "mean": mean, "components": comps}
    folder = Path(folder)
    atomic.atomic_write(folder / CACHE_ARRAYS, lambda tmp: save_file(
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, str(tmp)))
    meta = {"dataset": dataset, "n": len(y), "seed": seed, "neighbours": NEIGHBOURS, "pca_dims": comps.shape[0],
            "encoder_sha256": encoder_digest(model), "images_sha256": _sha256(images.numpy()),
            "arrays_sha256": hashlib.sha256((folder / CACHE_ARRAYS).read_bytes()).hexdigest(),
            "accuracy": probe_accuracy(z, y)}
    atomic.write_json(folder / CACHE_META, meta)
    return meta


def load_cache(model, folder: str | Path) -> MapCache | None:
    """The folder's map if it has one that was made from this model's encoder, else None."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / CACHE_META).read_text())
        raw = (folder / CACHE_ARRAYS).read_bytes()
    except (OSError, ValueError):
        return None
    if meta.get("encoder_sha256") != encoder_digest(model) or meta.get("arrays_sha256") != hashlib.sha256(raw).hexdigest():
        return None
    a = {k: v.numpy() for k, v in load_file(str(folder / CACHE_ARRAYS)).items()}
    return MapCache(meta["dataset"], meta["images_sha256"], a["labels"], a["xy"], a["pcs"].astype(np.float32),
                    a["mean"], a["components"], float(meta["accuracy"]))


def matches(cache: MapCache, dataset: str, images: torch.Tensor) -> bool:
    """Whether the cache maps these images (uint8, padded) of this data set, in this order."""
    n = len(cache.labels)
    return cache.dataset == dataset and len(images) >= n and cache.images_sha256 == _sha256(images[:n].numpy())


def cached_map(model, cache: MapCache, n: int, *, num_samples: int, seed: int, solver: str,
               steps: int | None = None, device="cpu", check: Callable[[], None] = lambda: None) -> LatentMap:
    """The map of the cache's first n images with `num_samples` samples placed in it: no encoding, no UMAP.
    The probe's accuracy is the cache's, on all its images."""
    z_fake, fake_images = np.zeros((0, cache.mean.shape[0]), np.float32), torch.zeros(0)
    if num_samples:
        with torch.inference_mode():
            result = solvers.sample(model, num_samples, solver, steps=steps, seed=seed, device=device,
                                    callback=lambda d: check())
        z_fake, fake_images = result.z0.flatten(1).float().cpu().numpy(), result.images.cpu()
    return LatentMap(space_name(model), cache.labels[:n], cache.xy[:n], cache.placed(z_fake), fake_images,
                     cache.accuracy)


def main(argv=None) -> int:
    from .checkpoint import load_model
    from .cli import report
    from .data import load_dataset
    from .tensors import crop

    p = argparse.ArgumentParser(prog="python -m lsgm_core.latent_map",
                                description="write a checkpoint's latent map (latent_map.safetensors and .json)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-dir", required=True, help="folder with the model's test set")
    p.add_argument("--num", type=int, default=5000, help="the first NUM test images (the app ships the first 5,000)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    def job():
        if args.num < 2 * NEIGHBOURS:
            raise ValueError(f"--num must be at least {2 * NEIGHBOURS}, got {args.num}")
        model = load_model(args.checkpoint)
        trained_on = model.config["data"]["dataset"]
        spec = DATASETS.get(trained_on)
        if spec is None:
            raise ValueError(f"this model was trained on {trained_on}, which has no test set to map")
        ds = load_dataset(spec.shown_as, "test", args.data_dir, download=False)
        images = torch.nn.functional.pad(crop(ds.images, ds.crop)[:args.num], (model.crop,) * 4)
        return write_cache(model, model.meta["path"], images, ds.labels[:args.num], spec.shown_as, args.seed)

    return report(job)


if __name__ == "__main__":
    raise SystemExit(main())
