"""The latent-map analysis of lsgm_core, without Gradio: encoding, the linear probe, the projection."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lsgm_core import load_dataset, load_model
from lsgm_core import latent_map as lm
from lsgm_core.tensors import crop

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = REPO / "checkpoints"


@pytest.fixture(scope="module")
def model():
    return load_model(CHECKPOINTS / "lsgm-bmnist-fast")


@pytest.fixture(scope="module")
def test_images(model):
    """200 shipped MNIST test images, padded to the model's input size, and their labels."""
    with np.load(REPO / "assets" / "latent" / "mnist-test.npz") as f:
        images = torch.from_numpy(f["images"][:200])[:, None]
        labels = torch.from_numpy(f["labels"][:200].astype(np.int64))
    return torch.nn.functional.pad(images, (model.crop,) * 4), labels


def separable(n=600, classes=10, dim=16, seed=0):
    """Latents whose classes sit around well-separated centres."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = 10 * rng.normal(size=(classes, dim))
    return (centres[y] + rng.normal(size=(n, dim))).astype(np.float32), y


def test_lsgm_core_latent_map_needs_no_gradio():
    code = "import sys, lsgm_core.latent_map; sys.exit('gradio' in sys.modules or 'app' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_probe_separates_separable_classes_and_not_shuffled_ones():
    z, y = separable()
    assert lm.probe_accuracy(z, y) > 0.99
    shuffled = np.random.default_rng(1).permutation(y)
    assert lm.probe_accuracy(z, shuffled) < 0.25  # chance is 0.1 for 10 classes (120 test rows)


@pytest.mark.slow
def test_projection_shapes_and_seed():
    z = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    extra = z[:7] + 0.1
    xy, xy_extra = lm.project(z, extra, seed=3)
    assert xy.shape == (300, 2) and xy_extra.shape == (7, 2)
    assert np.isfinite(xy).all() and np.isfinite(xy_extra).all()
    again, again_extra = lm.project(z, extra, seed=3)
    assert np.array_equal(xy, again) and np.array_equal(xy_extra, again_extra)
    assert lm.project(z, extra[:0], seed=3)[1].shape == (0, 2)


def test_encode_gives_the_encoder_means_of_one_binarisation(model, test_images):
    images, _ = test_images
    z = lm.encode(model, images[:30], seed=5)
    gen = torch.Generator().manual_seed(5)
    x = torch.bernoulli(images[:30].float() / 255, generator=gen)  # the model was trained on binarised MNIST
    with torch.inference_mode():
        expected = model.encode(x)[0].flatten(1).numpy()
    assert z.shape == (30, int(np.prod(model.latent_shape))) and z.dtype == np.float32
    np.testing.assert_allclose(z, expected, atol=1e-5)
    assert np.array_equal(z, lm.encode(model, images[:30], seed=5))
    assert not np.array_equal(z, lm.encode(model, images[:30], seed=6))


@pytest.mark.slow
def test_latent_map_of_a_model_places_its_samples(model, test_images):
    images, labels = test_images
    out = lm.latent_map(model, images, labels, num_samples=6, seed=0, solver="fast", steps=3, umap_seed=0)
    assert out.space == "z0 means"
    assert out.xy.shape == (200, 2) and out.sample_xy.shape == (6, 2)
    assert out.sample_images.shape == (6, 1, 28, 28)
    assert out.accuracy > 0.5  # digits are far from chance (0.1) in the z0 means of a trained VAE
    rows = out.csv([str(d) for d in range(10)]).splitlines()
    assert rows[0] == "kind,index,label,class,umap_x,umap_y" and len(rows) == 1 + 200 + 6
    assert rows[1].startswith(f"data,0,{labels[0]},{labels[0]},") and rows[-1].startswith("sample,5,,,")


def test_place_puts_a_reference_point_on_itself_and_a_midpoint_between_two_clusters():
    rng = np.random.default_rng(0)
    left, right = rng.normal(-5, 0.3, size=(40, 6)), rng.normal(5, 0.3, size=(40, 6))
    ref = np.concatenate([left, right]).astype(np.float32)
    xy = np.concatenate([np.tile([[-10.0, 0.0]], (40, 1)), np.tile([[10.0, 4.0]], (40, 1))])
    xy = (xy + rng.normal(0, 0.5, size=xy.shape)).astype(np.float32)
    assert np.allclose(lm.place(ref, xy, ref[[3, 57]]), xy[[3, 57]], atol=1e-4)
    middle = np.zeros((1, 6), np.float32)  # as far from one cluster as from the other
    between = lm.place(np.concatenate([ref, -ref]), np.concatenate([xy, xy[::-1]]), middle)[0]
    assert -3 < between[0] < 3 and 0.5 < between[1] < 3.5, between
    near_left = lm.place(ref, xy, left[:1] + 0.1)[0]
    assert near_left[0] < -8, near_left


@pytest.mark.slow
def test_the_cache_cli_writes_a_map_that_loads_places_and_is_refused_for_other_weights(tiny_checkpoints, data_dir,
                                                                                      tmp_path, capsys):
    folder = shutil.copytree(tiny_checkpoints["stage2"], tmp_path / "model")
    assert lm.main(["--checkpoint", str(folder), "--data-dir", str(data_dir), "--num", "300"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["n"] == 300 and figures["dataset"] == "mnist" and 0.1 < figures["accuracy"] <= 1
    model = load_model(folder)
    cache = lm.load_cache(model, folder)
    assert cache.xy.shape == (300, 2) and cache.pcs.shape[0] == 300
    # the reference images, encoded again and placed, land on (about) their own map coordinates
    ds = load_dataset("mnist", "test", data_dir, download=False)
    images = torch.nn.functional.pad(crop(ds.images, ds.crop)[:300], (model.crop,) * 4)
    assert lm.matches(cache, "mnist", images) and not lm.matches(cache, "fashion-mnist", images)
    assert not lm.matches(cache, "mnist", images.flip(0))
    z = lm.encode(model, images[:20], seed=figures["seed"])
    spread = cache.xy.std(0).mean()
    assert np.abs(cache.placed(z) - cache.xy[:20]).max() < 0.05 * spread
    result = lm.cached_map(model, cache, 200, num_samples=5, seed=0, solver="fast", steps=2)
    assert result.xy.shape == (200, 2) and result.sample_xy.shape == (5, 2) and result.accuracy == figures["accuracy"]
    # other encoder weights: the cache is refused
    with torch.no_grad():
        next(model.encoder.parameters()).add_(0.01)
    assert lm.load_cache(model, folder) is None
    assert lm.main(["--checkpoint", str(folder), "--data-dir", str(data_dir), "--num", "5"]) == 2
    assert "--num must be at least" in capsys.readouterr().err
