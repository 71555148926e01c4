"""Sample quality against measured references: the model's own floor, class balance, copies.

A VAE's samples can be no better than its decoded posterior samples: decode z0 ~ q(z0|x) of real
images and the result is what a perfect prior (one equal to the aggregate posterior) would give.
Its FID is the floor the prior is measured against, and

    fid_ratio = FID(samples) / FID(posterior reconstructions)

says how well p(z0) matches the aggregate posterior (1 is a perfect match). Both FIDs use the same
features, the same number of images and the same reference (the test set, `features.reference_stats`).

The floor decodes posteriors of *training* images, the aggregate posterior the prior is trained to
match, drawn at random so that they are not paired with the reference. Reconstructions of the test
images themselves (`posterior_fid_paired`) sit far lower, since each one is a near copy of an image
in the reference: on lsgm-bmnist-large 0.26 against 1.21 at 10,000 images, while 10,000 real
training images score 1.04. No sampler can approach a paired figure, so it is reported, not used as the floor.

Copies: for each sample, the distance to its nearest training image, against the same distance for
held-out test images. A model that copies has many samples far closer than any test image is.
"""
from __future__ import annotations

import numpy as np
import torch

from . import features
from .data import config_dataset
from .tensors import crop, seeded_generator

__all__ = ["posterior_samples", "posterior_reconstructions", "floor_images", "posterior_fids", "fid_ratio", "sample_fids", "class_balance",
           "nearest_train_distances", "copy_check"]


def posterior_samples(model, dataset, idx: torch.Tensor, seed: int = 0, batch_size: int = 500) -> torch.Tensor:
    """z0 ~ q(z0|x) of dataset images `idx` (binary data binarised afresh), [N, ...] on the CPU.
    The binarisations and z0 draws are made for all images at once, so they do not depend on `batch_size`."""
    device = next(model.parameters()).device
    gen = seeded_generator(seed)
    x, _ = dataset.batch(idx, generator=gen)
    noise = torch.randn((len(idx),) + tuple(model.latent_shape), generator=gen)
    out = []
    with torch.no_grad():
        for xb, nb in zip(x.split(batch_size), noise.split(batch_size)):
            mu, log_sigma = model.encode(xb.to(device))
            out.append((mu + log_sigma.exp() * nb.to(device)).cpu())
    return torch.cat(out)


def posterior_reconstructions(model, dataset, idx: torch.Tensor, seed: int = 0, batch_size: int = 500) -> torch.Tensor:
    """Decoded posterior_samples of dataset images `idx`, [N, C, H, W] in [0, 1]."""
    device = next(model.parameters()).device
    with torch.no_grad():
        return torch.cat([model.decode_images(z.to(device)).cpu()
                          for z in posterior_samples(model, dataset, idx, seed, batch_size).split(batch_size)])


def floor_images(model, num: int, data_dir=None, seed: int = 0, batch_size: int = 500) -> torch.Tensor:
    """The floor's images: decoded posterior samples of `num` training images drawn at random (seeded)."""
    train = config_dataset(model.config["data"], "train", data_dir)
    idx = torch.randperm(len(train), generator=seeded_generator(seed))[:num]
    return posterior_reconstructions(model, train, idx, seed, batch_size)


def posterior_fids(model, num: int, data_dir=None, seed: int = 0, batch_size: int = 500) -> dict:
    """FIDs of `num` posterior reconstructions against the reference of `num` test images:
    `posterior_fid` of random training images (the floor), `posterior_fid_paired` of the test images."""
    if model.kind != "lsgm":
        raise ValueError("posterior reconstructions need an encoder; the pixel baseline has none")
    name = model.config["data"]["dataset"]
    test = config_dataset(model.config["data"], "test", data_dir)
    if num > len(test):
        raise ValueError(f"{num} images asked for, but the {name} test set has {len(test)}")
    floor = floor_images(model, num, data_dir, seed, batch_size)
    paired = posterior_reconstructions(model, test, features.reference_indices(len(test), num), seed, batch_size)
    return {"posterior_fid": features.fid_against_test_set(floor, name, data_dir, n=num, seed=seed),
            "posterior_fid_paired": features.fid_against_test_set(paired, name, data_dir, n=num, seed=seed)}


def fid_ratio(fid: float, posterior_fid: float) -> float:
    """FID(samples) / FID(floor): 1 when the prior matches the aggregate posterior."""
    return fid / max(posterior_fid, 1e-12)


def sample_fids(model, images: torch.Tensor, data_dir=None, seed: int = 0, batch_size: int = 500) -> dict:
    """The FID of `images` (the model's samples) against as many test images and, for an LSGM, the
    posterior floor at the same count and their ratio (a pixel model has no encoder, so no floor)."""
    num = len(images)
    out = {"fid": features.fid_against_test_set(images, model.config["data"]["dataset"], data_dir, n=num, seed=seed)}
    if model.kind == "lsgm":
        out.update(posterior_fids(model, num, data_dir, seed, batch_size))
        out["fid_ratio"] = fid_ratio(out["fid"], out["posterior_fid"])
    return out


def class_balance(images, dataset_name: str, seed: int = 0) -> dict:
    """The shipped classifier's histogram of `images` and how far it is from uniform:
    `max_over_min` (1 when balanced) and the total-variation distance to the uniform histogram."""
    clf = features.load_classifier(dataset_name)
    labels = features.classify(clf, images, seed=seed)
    counts = np.bincount(labels, minlength=clf.head[-1].out_features)
    p = counts / counts.sum()
    return {"class_counts": counts.tolist(), "max_over_min": float(counts.max() / max(counts.min(), 1)),
            "tv_to_uniform": float(0.5 * np.abs(p - 1.0 / len(p)).sum())}


def nearest_train_distances(images: torch.Tensor, train: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Euclidean distance [N] from each image to its nearest training image (pixel space, [0, 1])."""
    a = images.flatten(1).float()
    b = train.flatten(1).float()
    b_sq = b.pow(2).sum(1)
    out = []
    for chunk in a.split(batch_size):
        # the expanded square finds the nearest image fast, but cancels to float32 round-off (an exact
        # copy came out at 0.004 on one CPU): its distance is taken again directly
        nearest = (chunk.pow(2).sum(1, keepdim=True) - 2.0 * chunk @ b.T + b_sq).argmin(1)
        out.append((chunk - b[nearest]).pow(2).sum(1).sqrt())
    return torch.cat(out)


def copy_check(model, images: torch.Tensor, data_dir=None) -> dict:
    """Nearest-training-image distances of `images` (the model's mean images) against those of
    as many held-out test images, both as grey levels cropped to the data's size."""
    train, test = (config_dataset(model.config["data"], split, data_dir) for split in ("train", "test"))
    train_images = crop(train.images.float() / 255.0, train.crop)
    n = min(len(images), len(test))
    held_out = crop(test.images[features.reference_indices(len(test), n)].float() / 255.0, test.crop)
    d_samples = nearest_train_distances(images[:n], train_images)
    d_test = nearest_train_distances(held_out, train_images)
    q = torch.tensor([0.01, 0.5])
    s_q, t_q = torch.quantile(d_samples, q).tolist(), torch.quantile(d_test, q).tolist()
    return {"nn_train_distance_samples": {"p1": s_q[0], "median": s_q[1], "min": d_samples.min().item()},
            "nn_train_distance_test": {"p1": t_q[0], "median": t_q[1], "min": d_test.min().item()},
            "samples_closer_than_any_test_image": int((d_samples < d_test.min()).sum())}
