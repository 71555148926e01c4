"""The paper's data sets in their published formats (lsgm_core.data, lsgm_core.datasets): CIFAR-10's
binary batches and the .tar.gz they ship in, IWAE's OMNIGLOT chardata.mat; files written here in
those exact layouts (no download), then a tiny model trained and evaluated on each."""

import dataclasses
import hashlib
import io
import json
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from lsgm_core import data, evaluate
from lsgm_core.config import load_config
from lsgm_core.data import DataError
from lsgm_core.datasets import DATASETS
from lsgm_core.train import Trainer

torch.set_num_threads(1)

ROOT = Path(__file__).parents[1]
CIFAR = DATASETS["cifar10"].files
OMNIGLOT = DATASETS["binarized-omniglot"].files


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


def cifar_batches(n: int = 3, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Random images [n, 3, 32, 32] and labels of every batch file of CIFAR-10's binary version."""
    rng = np.random.default_rng(seed)
    return {name: (rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8))
            for split in ("train", "test") for name in CIFAR.splits[split]}


def record_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    # the published layout, written record by record: <1 x label><1024 x red><1024 x green><1024 x blue>
    return b"".join(bytes([int(label)]) + image[0].tobytes() + image[1].tobytes() + image[2].tobytes()
                    for image, label in zip(images, labels))


def write_cifar_folder(root: Path, batches) -> Path:
    folder = root / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name, (images, labels) in batches.items():
        (folder / name).write_bytes(record_bytes(images, labels))
    return folder


def cifar_archive(batches, extra: dict[str, bytes] | None = None) -> bytes:
    """A cifar-10-binary.tar.gz as published: the batches and batches.meta.txt under cifar-10-batches-bin/."""
    members = {f"cifar-10-batches-bin/{name}": record_bytes(*b) for name, b in batches.items()}
    members["cifar-10-batches-bin/batches.meta.txt"] = b"airplane\nautomobile\n"
    members.update(extra or {})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def expected_split(batches, split: str) -> tuple[np.ndarray, np.ndarray]:
    names = CIFAR.splits[split]
    return (np.concatenate([batches[n][0] for n in names]), np.concatenate([batches[n][1] for n in names]))


# ----------------------------------------------------------------------------- CIFAR-10


def test_cifar_batches_load_as_written(tmp_path):
    batches = cifar_batches()
    write_cifar_folder(tmp_path, batches)
    for split, n in (("train", 15), ("test", 3)):
        ds = data.load_dataset("cifar10", split, tmp_path, download=False)
        images, labels = expected_split(batches, split)
        assert (len(ds), ds.kind, ds.crop, ds.num_classes, ds.binarize) == (n, "colour", 0, 10, False)
        assert torch.equal(ds.images, torch.from_numpy(images)) and torch.equal(ds.labels, torch.from_numpy(labels).long())
    # the first pixel byte after the label is the red value of the top-left pixel
    raw = (tmp_path / "cifar10" / "cifar-10-batches-bin" / "test_batch.bin").read_bytes()
    assert ds.images[0, 0, 0, 0] == raw[1] and ds.images[0, 1, 0, 0] == raw[1 + 1024] and ds.images[0, 0, 0, 1] == raw[2]
    x, y = ds.batch(torch.arange(3))
    assert x.shape == (3, 3, 32, 32) and torch.equal(x, torch.from_numpy(images).float() / 255)
    padded = data.load_dataset("cifar10", "test", tmp_path, download=False, image_size=36)
    assert padded.crop == 2 and torch.equal(padded.images[:, :, 2:34, 2:34], torch.from_numpy(images))


def test_cifar_archive_is_extracted_safely(tmp_path):
    batches = cifar_batches()
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / CIFAR.archive.name).write_bytes(cifar_archive(batches))
    ds = data.load_dataset("cifar10", "train", tmp_path, download=False)
    assert torch.equal(ds.images, torch.from_numpy(expected_split(batches, "train")[0]))
    # only the six batch files come out of the archive
    assert sorted(p.name for p in (tmp_path / "cifar10" / "cifar-10-batches-bin").iterdir()) == sorted(batches)
    assert data.verify_data_dir(tmp_path)["cifar10/cifar-10-binary.tar.gz"].startswith("cifar-10-binary.tar.gz: MD5 ")


def test_cifar_archive_with_a_link_or_an_escaping_path_is_refused(tmp_path):
    batches = cifar_batches()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        link = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        evil = tarfile.TarInfo("../evil.bin")
        evil.size = 3
        tar.addfile(evil, io.BytesIO(b"bad"))
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / CIFAR.archive.name).write_bytes(buffer.getvalue())
    with pytest.raises(DataError, match="data_batch_1.bin is not a regular file"):
        data.load_dataset("cifar10", "test", tmp_path, download=False)
    assert not (tmp_path / "evil.bin").exists() and not (tmp_path / "cifar10" / "evil.bin").exists()
    # an archive without every batch says which are missing
    partial = {k: v for k, v in batches.items() if k != "test_batch.bin"}
    (tmp_path / "cifar10" / CIFAR.archive.name).write_bytes(cifar_archive(partial))
    with pytest.raises(DataError, match="lacks cifar-10-batches-bin/test_batch.bin: it is not the official archive"):
        data.load_dataset("cifar10", "test", tmp_path, download=False)
    (tmp_path / "cifar10" / CIFAR.archive.name).write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="Delete it and download it again"):
        data.load_dataset("cifar10", "test", tmp_path, download=False)


def test_bad_cifar_batches_are_named(tmp_path):
    batches = cifar_batches()
    folder = write_cifar_folder(tmp_path, batches)
    (folder / "test_batch.bin").write_bytes(record_bytes(*batches["test_batch.bin"])[:-5])
    with pytest.raises(DataError, match=r"test_batch.bin is not a CIFAR binary batch: its 9214 bytes are not a whole "
                                        r"number of 3073-byte records \(1 label byte \+ 3x32x32 pixel bytes\)"):
        data.load_dataset("cifar10", "test", tmp_path, download=False)
    assert "not a CIFAR binary batch" in data.verify_data_dir(tmp_path)["cifar10/cifar-10-batches-bin/test_batch.bin"]
    images, labels = batches["test_batch.bin"]
    (folder / "test_batch.bin").write_bytes(record_bytes(images, np.array([1, 10, 2])))
    with pytest.raises(DataError, match="test_batch.bin has label 10; the labels of CIFAR-10 are 0..9"):
        data.load_dataset("cifar10", "test", tmp_path, download=False)
    with pytest.raises(DataError, match="image_size=28 does not fit 32x32 images"):
        data.load_dataset("cifar10", "train", tmp_path, image_size=28)
    with pytest.raises(DataError, match=r"cifar10 is colour \(3 channels\); channels=1"):
        data.load_dataset("cifar10", "train", tmp_path, channels=1)


def test_cifar_missing_without_network_says_what_to_get(tmp_path):
    with pytest.raises(DataError) as info:
        data.load_dataset("cifar10", "train", tmp_path / "nowhere")
    message = str(info.value)
    assert message.startswith(f"CIFAR-10 is not in {tmp_path / 'nowhere' / 'cifar10'} and could not be downloaded:")
    for part in ("network disabled in tests", "cifar-10-binary.tar.gz (or the cifar-10-batches-bin/ folder it holds",
                 "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", "MD5 c32a1d4ab5d03f1284b67883e8d87530",
                 "LSGM_DATA_DIR"):
        assert part in message
    with pytest.raises(DataError, match="and download=False"):
        data.load_dataset("cifar10", "test", tmp_path / "nowhere", download=False)


def test_cifar_download_is_checked_then_extracted(tmp_path, monkeypatch):
    batches = cifar_batches()
    archive = cifar_archive(batches)
    served = []

    def urlopen(url, *args, **kwargs):
        served.append(url)
        return io.BytesIO(archive)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    # the registry's MD5 is the published one: this archive is refused, and nothing is kept
    with pytest.raises(DataError, match=f"checksum mismatch \\(MD5 {hashlib.md5(archive).hexdigest()}, expected "
                                        f"{CIFAR.archive.md5}, as the data set's page"):
        data.download_dataset("cifar10", tmp_path)
    assert served == [CIFAR.archive.url] and list((tmp_path / "cifar10").iterdir()) == []
    # with the MD5 of this archive in the registry, it is downloaded, written and extracted
    ours = dataclasses.replace(CIFAR, archive=dataclasses.replace(CIFAR.archive, md5=hashlib.md5(archive).hexdigest()))
    monkeypatch.setitem(DATASETS, "cifar10", dataclasses.replace(DATASETS["cifar10"], files=ours))
    ds = data.load_dataset("cifar10", "test", tmp_path)
    assert torch.equal(ds.images, torch.from_numpy(batches["test_batch.bin"][0]))
    assert (tmp_path / "cifar10" / CIFAR.archive.name).read_bytes() == archive
    assert data.verify_data_dir(tmp_path)["cifar10/cifar-10-binary.tar.gz"] == "ok"


# ----------------------------------------------------------------------------- OMNIGLOT


def omniglot_images(n: int, seed: int) -> np.ndarray:
    """Grey 28x28 images [n, 28, 28] with levels k/255, each with a bright top row so that a
    transposed read shows."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
    images[:, 0, :] = 255
    images[:, 1:, 0] = 0
    return images


def write_chardata(path: Path, train: np.ndarray, test: np.ndarray, seed: int = 0, **extra) -> dict:
    """A chardata.mat in IWAE's layout: 'data' 784 x N floats in [0, 1], each column an image in
    Fortran order, 'target' one-hot 50 x N alphabets; 'testdata', 'testtarget' likewise."""
    rng = np.random.default_rng(seed)
    alphabets = {"train": rng.integers(0, 50, len(train)), "test": rng.integers(0, 50, len(test))}

    def columns(images):
        return np.stack([im.reshape(-1, order="F") for im in images], axis=1).astype(np.float64) / 255

    def onehot(labels):
        out = np.zeros((50, len(labels)))
        out[labels, np.arange(len(labels))] = 1
        return out

    path.parent.mkdir(parents=True, exist_ok=True)
    mdict = {"data": columns(train), "testdata": columns(test), "target": onehot(alphabets["train"]),
             "testtarget": onehot(alphabets["test"])}
    mdict.update(extra)
    scipy.io.savemat(path, mdict)
    return alphabets


def iwae_read(path: Path, key: str) -> np.ndarray:
    """OMNIGLOT as IWAE's datasets.py reads it (rows of 784 that NVAE then views as 28x28)."""
    raw = scipy.io.loadmat(path)[key].T
    return raw.reshape((-1, 28, 28)).reshape((-1, 28 * 28), order="F").reshape(-1, 28, 28)


def test_omniglot_loads_as_written_and_as_iwae_reads_it(tmp_path):
    train, test = omniglot_images(12, 0), omniglot_images(5, 1)
    path = tmp_path / "omniglot" / "chardata.mat"
    alphabets = write_chardata(path, train, test)
    for split, images in (("train", train), ("test", test)):
        ds = data.load_dataset("binarized-omniglot", split, tmp_path, download=False)
        assert (len(ds), ds.kind, ds.binarize, ds.crop, ds.num_classes) == (len(images), "binary", True, 2, 50)
        assert torch.equal(ds.images[:, 0, 2:30, 2:30], torch.from_numpy(images))
        assert ds.images[:, :, :2].sum() == 0 and ds.images[:, :, :, 30:].sum() == 0
        assert np.array_equal(ds.labels.numpy(), alphabets[split])
        key = "data" if split == "train" else "testdata"
        assert np.allclose(ds.images[:, 0, 2:30, 2:30].numpy() / 255, iwae_read(path, key))
    # the bright row is the top row, not the left column
    assert (ds.images[:, 0, 2, 2:30] == 255).all() and (ds.images[:, 0, 3:30, 2] == 0).all()
    # dynamic binarisation: every read is a fresh Bernoulli draw with the grey levels as probabilities
    copies = data.ImageDataset(ds.images.repeat(400, 1, 1, 1), binarize=True)
    draws = copies.batch(torch.arange(len(copies)), torch.Generator().manual_seed(0))[0]
    assert set(draws.unique().tolist()) == {0.0, 1.0}
    # 400 draws: the standard error of each pixel's mean is at most 0.025
    assert (draws.view(400, 5, 1, 32, 32).mean(0) - ds.images.float() / 255).abs().max() < 0.15


def test_omniglot_without_labels_and_bad_files(tmp_path):
    path = tmp_path / "omniglot" / "chardata.mat"
    images = omniglot_images(4, 0)
    columns = np.stack([im.reshape(-1, order="F") for im in images], axis=1) / 255
    path.parent.mkdir(parents=True)
    scipy.io.savemat(path, {"data": columns, "testdata": columns})
    ds = data.load_dataset("binarized-omniglot", "test", tmp_path, download=False)
    assert torch.equal(ds.labels, torch.full((4,), -1)) and torch.equal(ds.images[:, 0, 2:30, 2:30], torch.from_numpy(images))

    scipy.io.savemat(path, {"data": columns})
    with pytest.raises(DataError, match=r"chardata.mat has no matrix 'testdata' \(its matrices: data\)"):
        data.load_dataset("binarized-omniglot", "test", tmp_path, download=False)
    scipy.io.savemat(path, {"data": columns[:700], "testdata": columns})
    with pytest.raises(DataError, match=r"'data' should be a numeric 784 x N matrix .* but is float64 \[700, 4\]"):
        data.load_dataset("binarized-omniglot", "train", tmp_path, download=False)
    scipy.io.savemat(path, {"data": columns * 255, "testdata": columns})
    with pytest.raises(DataError, match=r"'data' should hold pixel values in \[0, 1\]; it holds values from 0.0 to 255.0"):
        data.load_dataset("binarized-omniglot", "train", tmp_path, download=False)
    scipy.io.savemat(path, {"data": columns, "target": np.ones((50, 4)), "testdata": columns})
    with pytest.raises(DataError, match="'target' should be a one-hot matrix of classes x 4"):
        data.load_dataset("binarized-omniglot", "train", tmp_path, download=False)
    path.write_bytes(b"not a MATLAB file at all")
    with pytest.raises(DataError, match="chardata.mat is not a readable MATLAB file"):
        data.load_dataset("binarized-omniglot", "train", tmp_path, download=False)
    assert "MD5" in data.verify_data_dir(tmp_path)["omniglot/chardata.mat"]


def test_omniglot_missing_says_where_to_get_it(tmp_path):
    with pytest.raises(DataError) as info:
        data.load_dataset("binarized-omniglot", "train", tmp_path)
    message = str(info.value)
    assert message.startswith(f"OMNIGLOT (the IWAE split) is not in {tmp_path / 'omniglot'} and could not be downloaded")
    assert f"Put chardata.mat in {tmp_path / 'omniglot'}/" in message
    assert "https://github.com/yburda/iwae/raw/master/datasets/OMNIGLOT/chardata.mat" in message
    assert data.verify_data_dir(tmp_path)["omniglot/chardata.mat"] == "missing"


# ----------------------------------------------------------------------------- a tiny model on each


def tiny_run(config: str, out: Path, data_dir: Path, **train) -> Path:
    tiny = {"model": {"latent_channels": 4, "vae_channels": [8, 16],
                      "prior": {"net": {"channels": 8, "ch_mult": [1, 2], "attention": False}}},
            "train": {"batch_size": 8, "max_steps": 4, "log_every": 2, "ckpt_every": 100, "warmup_steps": 2, **train}}
    trainer = Trainer(load_config(ROOT / "configs" / config, tiny), out, data_dir, device="cpu", show_progress=False)
    return Path(trainer.train()["checkpoint"])


def evaluated(checkpoint: Path, data_dir: Path, capsys) -> dict:
    code = evaluate.main([
        "--checkpoint", str(checkpoint), "--data-dir", str(data_dir), "--limit", "4", "--batch-size", "4",
        "--atol", "1e-3", "--rtol", "1e-3", "--device", "cpu", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_cifar10_model_trains_and_evaluates_in_bits_per_dim(tmp_path, capsys):
    torch.manual_seed(0)
    write_cifar_folder(tmp_path / "data", cifar_batches(n=8))
    stage1 = tiny_run("cifar10_cpu.toml", tmp_path / "s1", tmp_path / "data")
    stage2 = tiny_run("cifar10_cpu.toml", tmp_path / "s2", tmp_path / "data", stage=2, init_from=str(stage1))
    config = json.loads((stage2 / "config.json").read_text())
    assert (config["model"]["in_channels"], config["model"]["likelihood"]) == (3, "logistic")
    info = evaluated(stage2, tmp_path / "data", capsys)
    assert (info["dataset"], info["n"]) == ("cifar10", 4)
    assert info["bpd"] == pytest.approx(info["nelbo_nats"] / (3 * 32 * 32 * np.log(2)))
    # one z0 per image: the NELBO is the reconstruction plus the KL to the ODE prior
    assert info["nelbo_nats"] == pytest.approx(info["recon_nats"] + info["kl_nats"], rel=1e-9)
    # random 8-bit pixels cost about 8 bits each; an untrained logistic decoder pays more, never less than 0
    assert 0 < info["bpd"] < 20


def test_omniglot_model_trains_and_evaluates_in_nats(tmp_path, capsys):
    torch.manual_seed(0)
    write_chardata(tmp_path / "data" / "omniglot" / "chardata.mat", omniglot_images(16, 0), omniglot_images(6, 1))
    stage1 = tiny_run("omniglot_cpu.toml", tmp_path / "s1", tmp_path / "data")
    stage2 = tiny_run("omniglot_cpu.toml", tmp_path / "s2", tmp_path / "data", stage=2, init_from=str(stage1))
    config = json.loads((stage2 / "config.json").read_text())
    assert (config["model"]["in_channels"], config["model"]["likelihood"], config["model"]["crop"]) == (1, "bernoulli", 2)
    info = evaluated(stage2, tmp_path / "data", capsys)
    assert (info["dataset"], info["n"]) == ("binarized-omniglot", 4)
    # nats over the 28x28 pixels, as for MNIST; a binary pixel costs at most a few nats before training
    assert info["bpd"] == pytest.approx(info["nelbo_nats"] / (784 * np.log(2)))
    assert info["nelbo_nats"] == pytest.approx(info["recon_nats"] + info["kl_nats"], rel=1e-9)
    assert 0 < info["nelbo_nats"] < 784 * 5


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.toml")))
def test_every_shipped_config_loads(name):
    """Each file in configs/ is a valid training config (known keys and values), as its comment's command needs."""
    config = load_config(ROOT / "configs" / name)
    assert config["model"]["kind"] in ("lsgm", "pixel") and config["train"]["max_steps"] >= 1
