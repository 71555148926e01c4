"""The latent map: where a model puts real images and its own samples.

Encode a test set (the encoder's z0 means; the pixels themselves for the pixel baseline, which has
no encoder), measure how linearly its classes separate there (a logistic-regression probe), and
project real images and model samples into one 2-D map (PCA, then UMAP fitted on the real images
only, so the samples are placed in the data's map rather than shaping it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from . import solvers
from .data import ImageDataset
from .datasets import DATASETS
from .tensors import seeded_generator

PCA_DIMS = 50  # UMAP on the top principal components: the usual speed-up, little change to the map
ENCODE_BATCH = 500


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


def project(z_real: np.ndarray, z_extra: np.ndarray, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """2-D map coordinates of `z_real` [N, D] (PCA to PCA_DIMS, then UMAP fitted on them) and of
    `z_extra` [M, D] placed into the same map.

    `seed` None runs UMAP's parallel, unseeded optimisation (the quickest); a seed makes the map
    reproducible, which UMAP buys by running on one thread.
    """
    from sklearn.decomposition import PCA

    pca = PCA(min(PCA_DIMS, *z_real.shape), random_state=0).fit(z_real)
    seeded = {} if seed is None else {"random_state": seed, "n_jobs": 1}
    reducer = _reducer(**seeded).fit(pca.transform(z_real))
    extra = reducer.transform(pca.transform(z_extra)) if len(z_extra) else np.zeros((0, 2), np.float32)
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
