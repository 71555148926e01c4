"""Sample-quality references (lsgm_core.quality): the posterior floor of the FID, class balance,
nearest-training-image distances, and the evenly spaced test-set reference."""
import pytest
import torch

from lsgm_core import features, quality
from lsgm_core.checkpoint import load_model
from lsgm_core.data import load_dataset


def test_nearest_train_distances_match_brute_force():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(37, 1, 5, 5, generator=gen), torch.rand(101, 1, 5, 5, generator=gen)
    expected = torch.cdist(a.flatten(1).double(), b.flatten(1).double()).min(1).values
    torch.testing.assert_close(quality.nearest_train_distances(a, b, batch_size=10).double(), expected,
                               rtol=0, atol=1e-4)


def test_reference_is_spread_over_the_whole_test_set():
    idx = features.reference_indices(10000, 2000)
    assert len(idx) == 2000 == len(set(idx.tolist())) and idx[0] == 0 and idx[-1] == 9995
    assert (idx < 5000).sum() == 1000  # both halves of MNIST's test set, which differ in writers
    assert torch.equal(features.reference_indices(10000, 10000), torch.arange(10000))


def test_class_balance_of_real_and_of_one_class_images(data_dir):
    test = load_dataset("binarized-mnist", "test", data_dir, image_size=28)
    real = quality.class_balance(test.images[:2000], "binarized-mnist")
    assert sum(real["class_counts"]) == 2000 and real["tv_to_uniform"] < 0.05 and real["max_over_min"] < 1.6
    ones = quality.class_balance(test.images[test.labels == 1][:500], "binarized-mnist")
    assert ones["tv_to_uniform"] > 0.8 and ones["class_counts"][1] > 450


@pytest.fixture(scope="module")
def default_model():
    return load_model("checkpoints/lsgm-bmnist-large")


def test_copies_of_training_images_are_caught(default_model, data_dir):
    """Training images passed off as samples sit at distance 0 from the training set, far closer
    than any held-out test image; the model's own reconstructions of test images do not."""
    train = load_dataset("binarized-mnist", "train", data_dir)
    copies = train.images[:200, :, 2:30, 2:30].float() / 255
    caught = quality.copy_check(default_model, copies, data_dir)
    assert caught["samples_closer_than_any_test_image"] == 200 and caught["nn_train_distance_samples"]["median"] < 1e-3
    test = load_dataset("binarized-mnist", "test", data_dir)
    recon = quality.posterior_reconstructions(default_model, test, torch.arange(200))
    fresh = quality.copy_check(default_model, recon, data_dir)
    assert fresh["samples_closer_than_any_test_image"] <= 2
    assert fresh["nn_train_distance_samples"]["median"] > 0.5 * fresh["nn_train_distance_test"]["median"]


def test_posterior_reconstructions_do_not_depend_on_the_batch_size(default_model, data_dir):
    test = load_dataset("binarized-mnist", "test", data_dir)
    a = quality.posterior_reconstructions(default_model, test, torch.arange(60), seed=3, batch_size=60)
    b = quality.posterior_reconstructions(default_model, test, torch.arange(60), seed=3, batch_size=25)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_posterior_floor_is_unpaired(default_model, data_dir):
    """Reconstructions of the reference's own images (paired) score far below those of training
    images (the floor): the pairing, not the decoder, makes the paired figure small."""
    fids = quality.posterior_fids(default_model, 1000, data_dir, seed=0)
    assert 0 < fids["posterior_fid_paired"] < 0.5 * fids["posterior_fid"]
    with pytest.raises(ValueError, match="test set has 10000"):
        quality.posterior_fids(default_model, 10001, data_dir)
