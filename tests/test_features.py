"""Tests of lsgm_core.features: the Frechet distance, the shipped feature classifiers, their statistics."""

import json
import shutil
import urllib.error
import urllib.request

import numpy as np
import pytest
import scipy.linalg
import torch
from safetensors import safe_open

from lsgm_core import features
from lsgm_core.checkpoint import CheckpointError
from lsgm_core.data import ImageDataset, load_dataset

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test reaches the internet: a missing data file must fail, not download."""

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


def random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


def closed_form_fd(mu1, s1, mu2, s2):
    """The textbook formula with scipy's general matrix square root, as an independent reference."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


# ----------------------------------------------------------------------------- Frechet distance


def test_fd_of_a_set_with_itself_is_zero():
    f = np.random.default_rng(0).normal(size=(500, 64)) * 3 + 1
    assert features.frechet_distance(f, f) == pytest.approx(0, abs=1e-9)


def test_fd_matches_closed_form_from_moments():
    rng = np.random.default_rng(1)
    for d in (1, 5, 40):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = random_spd(rng, d), random_spd(rng, d)
        expected = closed_form_fd(mu1, s1, mu2, s2)
        assert features.frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8, abs=1e-8)
    # commuting (diagonal) covariances: sum of (sqrt(a) - sqrt(b))^2, no matrix functions at all
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 1 + 4 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert features.frechet_distance_from_stats(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_fd_of_large_samples_approaches_the_gaussians_distance():
    rng = np.random.default_rng(2)
    d = 4
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = random_spd(rng, d), random_spd(rng, d)
    x = rng.multivariate_normal(mu1, s1, 200_000)
    y = rng.multivariate_normal(mu2, s2, 200_000)
    expected = closed_form_fd(mu1, s1, mu2, s2)
    # sampling error of the moments is ~1/sqrt(N) relative: 1% is several standard deviations
    assert features.frechet_distance(x, y) == pytest.approx(expected, rel=0.01)


def test_fd_is_robust_to_singular_covariances():
    """Fewer samples than dimensions: rank-deficient covariances, where sqrtm(S1 S2) goes complex."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(20, 64)), rng.normal(size=(20, 64)) + 0.5
    fd = features.frechet_distance(a, b)
    assert np.isfinite(fd) and fd > 0
    assert features.frechet_distance(a, a) == pytest.approx(0, abs=1e-9)
    mu1, s1 = features.feature_stats(a)
    mu2, s2 = features.feature_stats(b)
    assert fd == pytest.approx(closed_form_fd(mu1, s1, mu2, s2), rel=1e-4)


def test_fd_rejects_bad_features():
    with pytest.raises(ValueError, match="N >= 2"):
        features.frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="shapes"):
        features.frechet_distance(np.random.rand(5, 3), np.random.rand(5, 4))
    with pytest.raises(ValueError, match="NaN"):
        features.frechet_distance(np.full((5, 3), np.nan), np.random.rand(5, 3))


# ----------------------------------------------------------------------------- shipped classifiers


@pytest.fixture(scope="module")
def classifiers():
    return {name: features.load_classifier(name) for name in features.with_classifier()}


@pytest.mark.parametrize("name", features.with_classifier())
def test_shipped_classifier_reaches_its_recorded_accuracy(name, classifiers, data_dir):
    clf = classifiers[name]
    recorded = clf.meta["metrics"]["test_accuracy"]
    test = load_dataset(name, "test", data_dir, image_size=28, download=False)
    acc = (features.classify(clf, test.images[:1000]) == test.labels[:1000].numpy()).mean()
    # 1,000 images: a standard error of ~0.3-0.9%; 2.5% covers it for every data set
    assert acc >= recorded - 0.025, f"{name}: {acc:.4f} on 1,000 test images, recorded {recorded}"


@pytest.mark.parametrize("name", features.with_classifier())
def test_fd_separates_real_images_from_noise(name, data_dir):
    """Train images are close to the test set (the shipped statistics), noise far away."""
    train = load_dataset(name, "train", data_dir, image_size=28, download=False)
    real = features.fid_against_test_set(train.images[:1000], name)
    noise = features.fid_against_test_set(torch.rand(1000, 1, 28, 28), name)
    # 1,000 samples in 128-d: the estimate's bias alone is a few units (README: figures with 10,000)
    assert real < 10, real
    assert noise > 100 * real, (real, noise)


def test_fid_needs_no_data_with_the_shipped_statistics(tmp_path):
    """Users without MNIST files can still compute an FID: the shipped statistics fit the shipped classifiers."""
    images = torch.rand(50, 1, 32, 32)
    for name in features.with_classifier():
        assert features.fid_against_test_set(images, name, data_dir=tmp_path / "nothing-here") > 0


def test_stats_are_cached_and_invalidated_by_another_classifier(tmp_path, monkeypatch):
    for suffix in (".safetensors", ".json"):
        shutil.copy(features.DEFAULT_FEATURES_DIR / f"mnist{suffix}", tmp_path / f"mnist{suffix}")
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    monkeypatch.setattr(features, "load_dataset", lambda *a, **k: ImageDataset(images))
    mu, sigma = features.reference_stats("mnist", n=64, features_dir=tmp_path)
    stats = tmp_path / "mnist_test_stats.safetensors"
    assert stats.is_file() and stats.stat().st_mode & 0o777 == 0o644

    features._STATS_MEMO.clear()

    def no_data(*a, **k):
        raise AssertionError("the cached statistics should have been used")

    monkeypatch.setattr(features, "load_dataset", no_data)
    mu2, sigma2 = features.reference_stats("mnist", n=64, features_dir=tmp_path)
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)
    # another classifier (same architecture, other weights) must not reuse them
    shutil.copy(features.DEFAULT_FEATURES_DIR / "fashion-mnist.safetensors", tmp_path / "mnist.safetensors")
    meta = json.loads((tmp_path / "mnist.json").read_text())
    meta["weights_sha256"] = features._sha256(tmp_path / "mnist.safetensors")
    (tmp_path / "mnist.json").write_text(json.dumps(meta))
    with pytest.raises(AssertionError, match="cached"):
        features.reference_stats("mnist", n=64, features_dir=tmp_path)


def test_cli_trains_and_writes_a_loadable_classifier(tmp_path, monkeypatch, capsys):
    """The whole CLI on a tiny stand-in data set (seconds): weights, JSON, statistics, one JSON line."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (300, 1, 28, 28), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (300,), generator=gen)
    monkeypatch.setattr(features, "load_dataset",
                        lambda name, *a, **k: ImageDataset(images, labels, binarize=name == "binarized-mnist"))
    assert features.main(["--dataset", "binarized-mnist", "--out", str(tmp_path), "--epochs", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 <= result["test_accuracy"] <= 1 and result["weights_bytes"] < 2_000_000
    clf = features.load_classifier(tmp_path / "binarized-mnist.json")
    assert clf.binarize and clf.meta["metrics"]["epochs"] == 1
    assert "--epochs 1" in clf.meta["command"]
    meta = safe_open(str(tmp_path / "binarized-mnist_test_stats.safetensors"), "np").metadata()
    assert meta["n"] == "300" and meta["classifier_sha256"] == clf.sha256


# ----------------------------------------------------------------------------- image formats


def test_extract_features_accepts_the_documented_formats(classifiers):
    clf = classifiers["mnist"]
    x = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8)
    ref = features.extract_features(clf, x)
    assert ref.shape == (6, 128)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    # the same pixels in other layouts and batchings: equal up to float32 round-off of other kernels
    np.testing.assert_allclose(features.extract_features(clf, padded.numpy()), ref, atol=1e-4)
    np.testing.assert_allclose(features.extract_features(clf, x[..., None].numpy()), ref, atol=1e-4)
    np.testing.assert_allclose(features.extract_features(clf, x[:, None].float() / 255, batch_size=4), ref, atol=1e-4)
    with pytest.raises(ValueError, match="28x28"):
        features.extract_features(clf, torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        features.extract_features(clf, torch.full((2, 28, 28), -1.0))


def test_binarised_convention(classifiers):
    """The binarized-mnist classifier binarises its input: seeded for grey images, a no-op for binary ones."""
    clf = classifiers["binarized-mnist"]
    assert clf.binarize and not classifiers["mnist"].binarize
    grey = torch.rand(8, 1, 28, 28)
    np.testing.assert_array_equal(features.extract_features(clf, grey, seed=0), features.extract_features(clf, grey, seed=0))
    assert not np.allclose(features.extract_features(clf, grey, seed=0), features.extract_features(clf, grey, seed=1))
    binary = torch.bernoulli(grey)
    np.testing.assert_array_equal(features.extract_features(clf, binary, seed=0), features.extract_features(clf, binary, seed=1))


# ----------------------------------------------------------------------------- damaged files


@pytest.fixture
def copied(tmp_path):
    for suffix in (".safetensors", ".json"):
        shutil.copy(features.DEFAULT_FEATURES_DIR / f"mnist{suffix}", tmp_path / f"mnist{suffix}")
    return tmp_path / "mnist.safetensors", tmp_path / "mnist.json"


def test_truncated_weights_give_an_error_naming_the_file(copied):
    weights, _ = copied
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="mnist.safetensors.*damaged"):
        features.load_classifier(weights)


def test_modified_weights_give_an_error_naming_the_file(copied):
    weights, meta = copied
    raw = bytearray(weights.read_bytes())
    raw[-10] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="mnist.safetensors.*damaged"):
        features.load_classifier(meta)


def test_unreadable_weights_with_a_matching_hash_name_the_file(copied):
    weights, meta = copied
    weights.write_bytes(b"not a safetensors file")
    m = json.loads(meta.read_text())
    m["weights_sha256"] = features._sha256(weights)
    meta.write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="mnist.safetensors.*not a readable safetensors"):
        features.load_classifier(weights)


def test_bad_or_missing_json_names_the_file(copied):
    weights, meta = copied
    meta.write_text("{ not json")
    with pytest.raises(CheckpointError, match="mnist.json.*not valid JSON"):
        features.load_classifier(weights)
    meta.unlink()
    with pytest.raises(CheckpointError, match="mnist.json.*not found"):
        features.load_classifier(weights)


def test_missing_classifier_in_a_folder_says_how_to_train_it(tmp_path):
    with pytest.raises(CheckpointError, match="fashion-mnist.*python -m lsgm_core.features"):
        features.load_classifier("fashion-mnist", features_dir=tmp_path)
    with pytest.raises(CheckpointError, match="data set name"):
        features.load_classifier(tmp_path / "weights.pt")


def test_cli_reports_bad_arguments(tmp_path, capsys):
    assert features.main(["--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path), "--epochs", "0"]) == 1
    assert "epochs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        features.main(["--dataset", "cifar"])
