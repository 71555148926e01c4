"""The registry of data sets: one ``DatasetSpec`` per name in ``DATASETS``.

Everything that depends on which data set it is reads its spec: data.py (the files to find, check
and download, binarisation, channels, number of classes), features.py (the feature classifier) and
the app (class names, the test images it shows). Adding a data set stored as IDX files is one entry
here; ``python -m app.make_assets`` then ships its test images with the app.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping

__all__ = ["DATASETS", "DatasetSpec", "IdxFiles", "SPLITS"]

SPLITS = ("train", "test")

# The file names of the MNIST distribution, which Fashion-MNIST copied so that loaders fit both.
_MNIST_LAYOUT = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class IdxFiles:
    """The official IDX files of one collection of images; several data sets may read the same ones."""

    folder: str  # the subfolder of the data folder that holds them
    title: str  # how messages name the collection
    # MD5 of each decompressed file: the same whichever mirror (or compression) it came from
    md5: Mapping[str, str]
    mirrors: tuple[str, ...]  # tried in order; each serves <file>.gz
    elsewhere: str = ""  # another place to get the files, for the message when downloads fail
    splits: Mapping[str, tuple[str, str]] = field(default_factory=lambda: dict(_MNIST_LAYOUT))  # (images, labels)


@dataclass(frozen=True)
class DatasetSpec:
    """One data set: its files, how its images are read, its classes and its feature classifier."""

    name: str
    files: IdxFiles
    class_names: tuple[str, ...]  # label i is class_names[i]
    # the data set whose real test images the app shows for this one (its Latent map test set and
    # Interpolate examples): itself, or for a binarised set the grey set it draws from
    shown_as: str
    # the file stem of its feature classifier in checkpoints/features; None: no FID for it
    classifier: str | None
    binarize: bool = False  # dynamic binarisation: a fresh Bernoulli draw of the grey levels at every read
    channels: int = 1

    @property
    def kind(self) -> str:
        return "binary" if self.binarize else "grey" if self.channels == 1 else "colour"


_MNIST_FILES = IdxFiles(
    folder="mnist",
    title="MNIST",
    md5={
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
)

_FASHION_MNIST_FILES = IdxFiles(
    folder="fashion-mnist",
    title="Fashion-MNIST",
    md5={
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    elsewhere="Debian's dataset-fashion-mnist package also installs them in /usr/share/datasets/fashion-mnist/",
)

_MNIST = DatasetSpec("mnist", _MNIST_FILES, tuple(str(d) for d in range(10)), shown_as="mnist", classifier="mnist")

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        # binarised MNIST is MNIST read differently, with a classifier of its own (features.py says why)
        replace(_MNIST, name="binarized-mnist", binarize=True, classifier="binarized-mnist"),
        _MNIST,
        DatasetSpec(
            "fashion-mnist",
            _FASHION_MNIST_FILES,
            ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
            shown_as="fashion-mnist",
            classifier="fashion-mnist",
        ),
    )
}
