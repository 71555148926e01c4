"""Tests of lsgm_core.data and the registry it reads (lsgm_core.datasets): IDX files, data sets,
binarisation, folders of images, downloads."""

import dataclasses
import gzip
import hashlib
import importlib
import io
import os
import struct
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import app.paths
from app.paths import ASSETS, CLASS_NAMES, shown_test_set
from lsgm_core import data, features
from lsgm_core.checkpoint import CheckpointError
from lsgm_core.data import DataError
from lsgm_core.datasets import DATASETS, SPLITS, DatasetSpec, IdxFiles

torch.set_num_threads(1)

MNIST_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test reaches the internet: every download fails unless a test serves the files itself."""

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


def idx_bytes(array: np.ndarray) -> bytes:
    code = {np.dtype("uint8"): 0x08, np.dtype("int32"): 0x0C}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


# ----------------------------------------------------------------------------- IDX files


@pytest.mark.parametrize("sub", ["mnist", "fashion-mnist"])
def test_read_idx_real_files(data_dir, sub):
    for prefix, n in [("train", 60000), ("t10k", 10000)]:
        images = data.read_idx(data_dir / sub / f"{prefix}-images-idx3-ubyte.gz")
        labels = data.read_idx(data_dir / sub / f"{prefix}-labels-idx1-ubyte.gz")
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (n,) and sorted(np.unique(labels)) == list(range(10))


def test_md5_of_decompressed_files(data_dir):
    # One sum written out here (from shared/data/README.md), independent of the module's table...
    raw = gzip.decompress((data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert hashlib.md5(raw).hexdigest() == "27ae3e4e09519cfbb04c329615203637"
    # ...and every IDX file against the table.
    report = data.verify_data_dir(data_dir)
    assert {v for k, v in report.items() if k.split("/")[0] in ("mnist", "fashion-mnist")} == {"ok"}


def test_verify_data_dir_reports_missing_and_bad(tmp_path):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    report = data.verify_data_dir(tmp_path)
    assert report["mnist/train-images-idx3-ubyte"] == "missing"
    assert "MD5" in report["mnist/t10k-labels-idx1-ubyte"]


def test_read_idx_big_endian_and_uncompressed(tmp_path):
    array = np.array([[1, -2], [70000, 3]], np.int32)
    path = tmp_path / "values-idx2-int"
    path.write_bytes(idx_bytes(array))
    out = data.read_idx(path)
    assert out.dtype == np.int32 and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


GOOD = idx_bytes(np.arange(5 * 4 * 4, dtype=np.uint8).reshape(5, 4, 4))


@pytest.mark.parametrize(
    "payload, compress, problem",
    [
        (GOOD[:-10], True, "truncated"),
        (GOOD + b"\0", False, "extra data"),
        (b"\x01\x02" + GOOD[2:], True, "magic number"),
        (GOOD[:2] + b"\x07" + GOOD[3:], False, "type code"),
        (b"\0\0", False, "too few"),
        (GOOD[:8], False, "header"),
        (None, None, "gzip"),
    ],
)
def test_read_idx_rejects_bad_files(tmp_path, payload, compress, problem):
    path = tmp_path / "bad-images-idx3-ubyte.gz"
    if payload is None:  # a gzip stream cut short
        path.write_bytes(gzip.compress(GOOD)[:20])
    else:
        path.write_bytes(gzip.compress(payload) if compress else payload)
    with pytest.raises(DataError, match=problem) as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


def test_corrupt_file_in_data_dir_is_named(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(GOOD[:-1]))
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(5, np.uint8)))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        data.load_dataset("mnist", "test", data_dir=tmp_path, download=False)


# ----------------------------------------------------------------------------- data sets


def test_mnist_train_loads_fast_and_is_cached(data_dir):
    data._CACHE.clear()
    start = time.perf_counter()
    first = data.load_dataset("mnist", "train", data_dir=data_dir, download=False)
    assert time.perf_counter() - start < 2.0
    start = time.perf_counter()
    again = data.load_dataset("binarized-mnist", "train", data_dir=data_dir, download=False)
    assert time.perf_counter() - start < 0.1
    assert again.images is first.images  # same files: parsed once
    assert first.images.shape == (60000, 1, 32, 32) and first.images.dtype == torch.uint8


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_padding_and_crop(data_dir, name):
    ds = data.load_dataset(name, "test", data_dir=data_dir, download=False)
    raw = data.read_idx(data_dir / name / "t10k-images-idx3-ubyte.gz")
    assert ds.images.shape == (10000, 1, 32, 32) and ds.images.dtype == torch.uint8
    assert (ds.labels.dtype, ds.labels.shape) == (torch.int64, (10000,))
    assert (ds.kind, ds.num_classes, ds.crop, ds.binarize, ds.name) == ("grey", 10, 2, False, name)
    c = ds.crop
    np.testing.assert_array_equal(ds.images[:, 0, c:32 - c, c:32 - c].numpy(), raw)
    border = ds.images.clone()
    border[..., c:32 - c, c:32 - c] = 0
    assert border.sum() == 0
    x, y = ds[3]
    assert x.dtype == torch.float32 and x.shape == (1, 32, 32) and 0 <= x.min() and x.max() <= 1
    assert isinstance(y, int) and y == int(ds.labels[3])
    assert torch.equal(x, ds.images[3].float() / 255)


def test_image_size_for_idx_data(data_dir):
    assert data.load_dataset("mnist", "test", data_dir=data_dir, download=False, image_size=28).crop == 0
    with pytest.raises(DataError, match="image_size"):
        data.load_dataset("mnist", "test", data_dir=data_dir, download=False, image_size=31)


def test_dynamic_binarisation(data_dir):
    ds = data.load_dataset("binarized-mnist", "test", data_dir=data_dir, download=False)
    assert ds.binarize and ds.kind == "binary" and ds.crop == 2
    torch.manual_seed(0)
    a, _ = ds[0]
    b, _ = ds[0]
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(a, b)  # a fresh draw at every read
    idx = torch.arange(2000)
    x, labels = ds.batch(idx, generator=torch.Generator().manual_seed(1))
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(labels, ds.labels[:2000])
    grey = ds.images[idx].float() / 255
    # About 2M Bernoulli pixels: the mean's std is at most 0.5 / sqrt(2M) = 3.5e-4; 2e-3 is > 5 sigma.
    assert abs(x.mean().item() - grey.mean().item()) < 2e-3


def test_seeded_batches_repeat(data_dir):
    ds = data.load_dataset("binarized-mnist", "test", data_dir=data_dir, download=False)
    idx = torch.tensor([5, 0, 9999, 5])
    x1, _ = ds.batch(idx, generator=torch.Generator().manual_seed(7))
    x2, _ = ds.batch(idx, generator=torch.Generator().manual_seed(7))
    x3, _ = ds.batch(idx, generator=torch.Generator().manual_seed(8))
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)
    grey = data.load_dataset("mnist", "test", data_dir=data_dir, download=False)
    g, y = grey.batch(idx)
    assert g.shape == (4, 1, 32, 32) and torch.equal(g, grey.images[idx].float() / 255)
    assert torch.equal(y, grey.labels[idx])


def test_bad_arguments(data_dir):
    with pytest.raises(DataError, match="binarized-mnist"):
        data.load_dataset("cifar100", data_dir=data_dir)
    with pytest.raises(DataError, match="split"):
        data.load_dataset("mnist", "valid", data_dir=data_dir)
    with pytest.raises(DataError, match="channels"):
        data.load_dataset("mnist", "test", data_dir=data_dir, channels=3)


# ----------------------------------------------------------------------------- folders of images


def save(img: Image.Image, path: Path, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)


def grey16(value: int, size=(20, 20)) -> Image.Image:
    return Image.fromarray(np.full(size[::-1], value, np.uint16))


def test_folder_mixed_modes_and_sizes(tmp_path):
    centre = Image.new("RGB", (96, 64), (255, 0, 0))
    centre.paste((0, 0, 255), (16, 0, 80, 64))  # blue square in the middle, red strips at the sides
    save(Image.new("RGBA", (40, 30), (255, 0, 0, 0)), tmp_path / "a_rgba.png")  # fully transparent
    save(Image.new("RGB", (50, 50), (0, 255, 0)).convert("P"), tmp_path / "b_palette.gif")
    save(grey16(65535), tmp_path / "c_white16.png")
    save(grey16(1000, (30, 20)), tmp_path / "d_dark16.png")
    save(Image.new("L", (28, 28), 100), tmp_path / "e_grey.bmp")
    save(centre, tmp_path / "f_centre.png")
    save(Image.new("LA", (33, 33), (0, 0)), tmp_path / "g_la.png")
    save(Image.new("CMYK", (40, 40), (0, 0, 0, 0)), tmp_path / "h_cmyk.jpg", quality=95)
    save(Image.new("RGB", (600, 400), (0, 255, 0)), tmp_path / "i_photo.jpg", quality=95)
    save(Image.new("L", (10, 10), 0), tmp_path / "j_sub" / "k_nested.webp", lossless=True)
    (tmp_path / ".hidden.png").write_text("hidden files are skipped")

    ds = data.load_dataset(f"folder:{tmp_path}")
    assert ds.images.shape == (10, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert (ds.kind, ds.crop, ds.num_classes, ds.binarize) == ("colour", 0, 0, False)
    assert ds.labels.tolist() == [-1] * 10
    x, _ = ds.batch(torch.arange(10))
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    rgb = lambda r, g, b: torch.tensor([r, g, b], dtype=torch.float32).view(3, 1, 1).expand(3, 32, 32)
    assert torch.equal(x[0], rgb(1, 1, 1))  # transparent -> white
    assert torch.equal(x[1], rgb(0, 1, 0))
    assert torch.equal(x[2], torch.ones(3, 32, 32))  # 16-bit white reads as 1.0
    assert torch.equal(x[3], torch.full((3, 32, 32), 4 / 255))  # 1000/65535 scaled, not clipped
    assert torch.equal(x[4], torch.full((3, 32, 32), 100 / 255))
    assert torch.equal(x[5], rgb(0, 0, 1))  # center crop keeps only the blue middle
    assert torch.equal(x[6], torch.ones(3, 32, 32))
    torch.testing.assert_close(x[7], torch.ones(3, 32, 32), atol=3 / 255, rtol=0)
    torch.testing.assert_close(x[8], rgb(0, 1, 0), atol=3 / 255, rtol=0)
    assert torch.equal(x[9], torch.zeros(3, 32, 32))  # found in a subfolder

    small_grey = data.load_dataset(f"folder:{tmp_path}", "test", image_size=16, channels=1)
    assert small_grey.images.shape == (10, 1, 16, 16) and small_grey.kind == "grey"
    assert small_grey.images[5].unique().tolist() == [29]  # luma of pure blue: 0.114 * 255


def test_folder_of_grey_images_picks_one_channel(tmp_path):
    save(Image.new("L", (28, 28), 50), tmp_path / "l.png")
    save(grey16(65535, (40, 25)), tmp_path / "white16.png")
    save(Image.new("LA", (20, 20), (0, 255)), tmp_path / "la.png")
    save(Image.new("1", (20, 20), 1), tmp_path / "one.png")
    ds = data.load_dataset(f"folder:{tmp_path}", image_size=24)
    assert ds.images.shape == (4, 1, 24, 24) and ds.kind == "grey"
    x, _ = ds.batch(torch.arange(4))
    # Sorted by name: l, la (opaque black), one (mode "1", white), white16.
    assert x[0].unique().tolist() == pytest.approx([50 / 255])
    assert x[1].unique().tolist() == [0.0]
    assert x[2].unique().tolist() == [1.0] and x[3].unique().tolist() == [1.0]
    assert data.load_dataset(f"folder:{tmp_path}", channels=3).images.shape == (4, 3, 32, 32)


def test_folder_reports_every_bad_file(tmp_path):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    save(noise, tmp_path / "good.png")
    (tmp_path / "fake.png").write_text("this is text, not a picture")
    buffer = io.BytesIO()
    noise.save(buffer, "PNG")
    (tmp_path / "trunc.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(DataError) as info:
        data.load_dataset(f"folder:{tmp_path}")
    message = str(info.value)
    assert "2 of 3 files" in message and str(tmp_path) in message
    assert "fake.png: not an image" in message
    assert "trunc.png: damaged" in message
    assert "good.png" not in message


def test_folder_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="not a folder"):
        data.load_dataset(f"folder:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"\0")
    with pytest.raises(DataError, match="holds no files"):
        data.load_dataset(f"folder:{tmp_path / 'empty'}")
    save(Image.new("L", (20, 20)), tmp_path / "big" / "big.png")
    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError, match=r"big\.png: 20x20 pixels is over the 0\.0001-megapixel limit"):
        data.load_dataset(f"folder:{tmp_path / 'big'}")
    with pytest.raises(DataError, match="channels"):
        data.load_dataset(f"folder:{tmp_path / 'big'}", channels=2)


def test_folder_cache_sees_new_files(tmp_path):
    save(Image.new("L", (8, 8), 10), tmp_path / "a.png")
    first = data.load_dataset(f"folder:{tmp_path}")
    assert data.load_dataset(f"folder:{tmp_path}").images is first.images
    save(Image.new("L", (8, 8), 20), tmp_path / "b.png")
    assert len(data.load_dataset(f"folder:{tmp_path}")) == 2


# ----------------------------------------------------------------------------- data folder and downloads


def test_resolve_data_dir_priority(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEFAULT_DATA_DIR", tmp_path / "default")
    monkeypatch.delenv("LSGM_DATA_DIR", raising=False)
    assert data.resolve_data_dir() == tmp_path / "default"
    monkeypatch.setenv("LSGM_DATA_DIR", str(tmp_path / "env"))
    assert data.resolve_data_dir() == tmp_path / "env"
    assert data.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.resolve_data_dir("~/d") == tmp_path / "home" / "d"


def test_default_data_dir_respects_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert data._default_data_dir() == tmp_path / "home" / ".cache" / "lsgm" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data._default_data_dir() == tmp_path / "xdg" / "lsgm" / "data"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_missing_data_and_no_network(tmp_path, monkeypatch):
    calls = []

    def no_network(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    root = tmp_path / "nope"
    with pytest.raises(DataError) as info:
        data.load_dataset("mnist", data_dir=root)
    assert len(calls) == len(DATASETS["mnist"].files.mirrors)  # an unreachable mirror is tried once, not once per file
    message = str(info.value)
    assert str(root / "mnist") in message and "could not be downloaded" in message
    for base in MNIST_FILES:
        assert f"{base}.gz" in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/" in message and "LSGM_DATA_DIR" in message
    assert leftovers(root / "mnist") == []
    with pytest.raises(DataError, match="fashion-mnist.s3-website"):
        data.load_dataset("fashion-mnist", data_dir=root)


def test_download_false_does_not_fetch(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("must not download"))
    with pytest.raises(DataError) as info:
        data.load_dataset("binarized-mnist", "test", data_dir=tmp_path, download=False)
    message = str(info.value)
    assert "download=False" in message and str(tmp_path / "mnist") in message
    assert "t10k-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message


def serve(monkeypatch, source: Path, swap: dict[str, str] | None = None) -> list[str]:
    """Fake urlopen: the first mirror is down, the others serve the files in ``source``."""
    requested = []

    def urlopen(url, *args, **kwargs):
        requested.append(url)
        if url.startswith(DATASETS["mnist"].files.mirrors[0]):
            raise urllib.error.URLError("first mirror down")
        name = url.rsplit("/", 1)[1]
        return io.BytesIO((source / (swap or {}).get(name, name)).read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return requested


def test_download_success_with_mirror_fallback(tmp_path, monkeypatch, data_dir):
    requested = serve(monkeypatch, data_dir / "mnist")
    folder = data.download_dataset("mnist", tmp_path)
    assert folder == tmp_path / "mnist"
    assert leftovers(folder) == sorted(f"{b}.gz" for b in MNIST_FILES)  # no temp files left
    for base in MNIST_FILES:
        assert (folder / f"{base}.gz").read_bytes() == (data_dir / "mnist" / f"{base}.gz").read_bytes()
    assert any("storage.googleapis.com" in url for url in requested)
    ds = data.load_dataset("mnist", "test", data_dir=tmp_path, download=False)
    assert len(ds) == 10000
    requested.clear()
    data.download_dataset("mnist", tmp_path)
    assert requested == []  # files already there are not fetched again


def test_download_checksum_mismatch(tmp_path, monkeypatch, data_dir):
    swap = {"t10k-labels-idx1-ubyte.gz": "train-labels-idx1-ubyte.gz"}
    serve(monkeypatch, data_dir / "mnist", swap)
    with pytest.raises(DataError) as info:
        data.load_dataset("mnist", "test", data_dir=tmp_path)
    message = str(info.value)
    assert "checksum mismatch" in message and str(tmp_path / "mnist") in message
    assert "t10k-labels-idx1-ubyte.gz" in message
    assert "Put these files in" in message and "\n  t10k-labels-idx1-ubyte.gz\n" in message
    # The good files were kept; the bad one was never written.
    assert leftovers(tmp_path / "mnist") == sorted(f"{b}.gz" for b in MNIST_FILES if not b.startswith("t10k-labels"))


def test_download_write_is_atomic(tmp_path, monkeypatch, data_dir):
    serve(monkeypatch, data_dir / "mnist")

    def replace_fails(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", replace_fails)
    with pytest.raises(DataError, match=f"cannot write .*no space left on the disk of {tmp_path / 'mnist'}"):
        data.download_dataset("mnist", tmp_path)
    assert leftovers(tmp_path / "mnist") == []


# ----------------------------------------------------------------------------- the registry


def test_registry_entries_are_consistent():
    for name, spec in DATASETS.items():
        assert spec.name == name
        assert set(spec.files.splits) == set(SPLITS)
        if spec.shown_as is not None:
            shown = DATASETS[spec.shown_as]
            assert shown.shown_as == shown.name and not shown.binarize
            assert shown.class_names == spec.class_names and shown.files is spec.files
        if not isinstance(spec.files, IdxFiles):
            continue  # tests/test_paper_datasets.py checks the other formats
        # every file a split reads has a checksum, and every checksum belongs to a split's file
        assert sorted(f for pair in spec.files.splits.values() for f in pair) == sorted(spec.files.md5)
        assert spec.files.mirrors and all(m.endswith("/") for m in spec.files.mirrors)
        if spec.classifier is not None:
            assert (features.DEFAULT_FEATURES_DIR / f"{spec.classifier}.json").is_file()
    assert DATASETS["binarized-mnist"].kind == "binary" and DATASETS["fashion-mnist"].kind == "grey"


def test_app_reads_class_names_and_test_sets_from_the_registry():
    assert list(CLASS_NAMES) == list(dict.fromkeys(spec.shown_as for spec in DATASETS.values() if spec.shown_as))
    for name, spec in DATASETS.items():
        assert shown_test_set(name) == (spec.shown_as or next(iter(CLASS_NAMES)))
        if spec.shown_as:
            assert CLASS_NAMES[spec.shown_as] == list(spec.class_names)
    assert shown_test_set("folder:/home/me/pictures") == next(iter(CLASS_NAMES))
    assert CLASS_NAMES["fashion-mnist"][9] == "Ankle boot" and CLASS_NAMES["mnist"][3] == "3"
    # the app ships images of every test set it offers, labelled within the set's classes
    for test_set, names in CLASS_NAMES.items():
        with np.load(ASSETS / "latent" / f"{test_set}-test.npz") as f:
            assert f["labels"].max() < len(names)
        for label in range(len(names)):
            assert (ASSETS / "examples" / f"{test_set}-{label}-0.png").is_file()


@pytest.mark.parametrize("name", [n for n, spec in DATASETS.items() if isinstance(spec.files, IdxFiles)])
def test_download_checks_each_file_of_the_spec_against_its_checksum(tmp_path, monkeypatch, name):
    files = DATASETS[name].files
    requested = []

    def urlopen(url, *args, **kwargs):  # every mirror answers, with the wrong data
        requested.append(url)
        return io.BytesIO(gzip.compress(b"not the data set"))

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(DataError) as info:
        data.download_dataset(name, tmp_path)
    message = str(info.value)
    assert requested == [f"{m}{base}.gz" for base in files.md5 for m in files.mirrors]
    assert message.startswith(f"{files.title} is not in {tmp_path / files.folder} ")
    for expected in files.md5.values():
        assert f"expected {expected})" in message
    assert leftovers(tmp_path / files.folder) == []


@pytest.mark.parametrize("call, registered_only", [
    (lambda: data.load_dataset("cifar100"), False),
    (lambda: data.download_dataset("cifar100"), True),
    (lambda: data.download_dataset("folder:/tmp"), True),
    (lambda: features.reference_stats("cifar100"), True),
    (lambda: features.train_classifier("cifar100", None, "x.safetensors"), True),
])
def test_unknown_data_set_lists_the_registered_ones(call, registered_only):
    with pytest.raises(DataError, match="^Unknown data set") as info:
        call()
    message = str(info.value)
    assert f"choose one of {', '.join(DATASETS)}" in message
    assert ("folder:" in message.split("choose one of")[1]) is not registered_only


def test_a_new_registry_entry_is_all_it_takes(tmp_path, monkeypatch):
    """Data sets added to the registry alone are found, downloaded, checked, loaded as their specs
    say, offered by the app with their class names, and refused by the FID for want of a classifier."""
    rng = np.random.default_rng(0)
    split_files = {"train": ("tr-img", "tr-lab"), "test": ("te-img", "te-lab")}
    served = {}
    for split, n in (("train", 6), ("test", 4)):
        images, labels = split_files[split]
        served[images] = idx_bytes(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        served[labels] = idx_bytes(np.arange(n, dtype=np.uint8) % 3)
    mirror = "https://example.invalid/tiny/"
    grey = DatasetSpec(
        "tiny-letters",
        IdxFiles(folder="tiny", title="Tiny letters", md5={f: hashlib.md5(b).hexdigest() for f, b in served.items()},
                 mirrors=(mirror,), splits=split_files),
        ("a", "b", "c"), shown_as="tiny-letters", classifier=None)
    binary = dataclasses.replace(grey, name="binarized-tiny-letters", binarize=True)
    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda url, *a, **k: io.BytesIO(gzip.compress(served[url.removeprefix(mirror).removesuffix(".gz")])))
    try:
        with monkeypatch.context() as registry:
            for spec in (grey, binary):
                registry.setitem(DATASETS, spec.name, spec)

            ds = data.load_dataset("binarized-tiny-letters", "test", data_dir=tmp_path)
            assert leftovers(tmp_path / "tiny") == sorted(f"{f}.gz" for f in served)
            assert (ds.kind, ds.binarize, ds.num_classes, ds.crop, len(ds)) == ("binary", True, 3, 2, 4)
            assert set(ds.batch(torch.arange(4))[0].unique().tolist()) <= {0.0, 1.0}
            as_grey = data.load_dataset("tiny-letters", "test", data_dir=tmp_path, download=False)
            assert (as_grey.kind, as_grey.binarize) == ("grey", False) and as_grey.images is ds.images
            assert {k: v for k, v in data.verify_data_dir(tmp_path).items() if k.startswith("tiny/")} == {
                f"tiny/{f}": "ok" for f in served}
            with pytest.raises(DataError, match=r"tiny-letters is grey \(1 channel\); channels=3"):
                data.load_dataset("tiny-letters", "test", data_dir=tmp_path, channels=3)
            with pytest.raises(DataError, match="choose one of .*binarized-tiny-letters"):
                data.load_dataset("tiny", data_dir=tmp_path)

            with pytest.raises(CheckpointError, match="tiny-letters has no feature classifier.*with one: binarized-mnist"):
                features.load_classifier("binarized-tiny-letters")
            with pytest.raises(SystemExit) as exit_info:
                features.main(["--dataset", "tiny-letters"])
            assert exit_info.value.code == 2  # argparse: not among the choices

            assert app.paths.shown_test_set("binarized-tiny-letters") == "tiny-letters"
            importlib.reload(app.paths)  # its test sets are read from the registry at import
            assert app.paths.CLASS_NAMES["tiny-letters"] == ["a", "b", "c"]
            assert "binarized-tiny-letters" not in app.paths.CLASS_NAMES

            (tmp_path / "tiny" / "te-lab.gz").write_bytes(gzip.compress(idx_bytes(np.array([0, 1, 2, 3], np.uint8))))
            with pytest.raises(DataError, match=r"has label 3; the labels of Tiny letters are 0\.\.2"):
                data.load_dataset("tiny-letters", "test", data_dir=tmp_path, download=False)
    finally:
        importlib.reload(app.paths)
    assert "tiny-letters" not in app.paths.CLASS_NAMES
