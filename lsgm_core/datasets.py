"""The registry of data sets: one ``DatasetSpec`` per name in ``DATASETS``.

Everything that depends on which data set it is reads its spec: data.py (the files to find, check
and download, binarisation, channels, number of classes), features.py (the feature classifier) and
the app (class names, the test images it shows). Adding a data set stored in one of the formats
described here (IDX files, CIFAR's binary records, a MATLAB file of images) is one entry; for one
that the app shows, ``python -m app.make_assets`` then ships its test images with the app.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping

__all__ = ["DATASETS", "CifarBinary", "DatasetSpec", "IdxFiles", "MatImages", "Published", "SPLITS"]

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
class Published:
    """One file as its authors publish it, at one address, with its MD5."""

    name: str
    url: str
    md5: str  # of the file as served
    md5_source: str  # where the sum was published: a wrong one would block every download


@dataclass(frozen=True)
class CifarBinary:
    """The "binary version" of CIFAR: each batch file is records of one label byte and the image's
    C*H*W pixel bytes (channel-major, rows top to bottom), shipped together in one .tar.gz."""

    folder: str
    title: str
    archive: Published
    member_dir: str  # the archive's folder of batch files, kept as the folder they are read from
    splits: Mapping[str, tuple[str, ...]]  # the batch files of each split, in order
    shape: tuple[int, int, int] = (3, 32, 32)


@dataclass(frozen=True)
class MatImages:
    """Images as the columns of matrices in one MATLAB (v5) file, floats in [0, 1]; each column is one
    square image in Fortran (column-major) order, as MATLAB writes it."""

    folder: str
    title: str
    file: Published
    splits: Mapping[str, tuple[str, str]]  # (images matrix, one-hot labels matrix) of each split
    side: int = 28


@dataclass(frozen=True)
class DatasetSpec:
    """One data set: its files, how its images are read, its classes and its feature classifier."""

    name: str
    files: IdxFiles | CifarBinary | MatImages
    class_names: tuple[str, ...]  # label i is class_names[i]
    # the data set whose real test images the app shows for this one (its Latent map test set and
    # Interpolate examples): itself, or for a binarised set the grey set it draws from; None: the
    # app ships none of its images
    shown_as: str | None
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

_CIFAR10_FILES = CifarBinary(
    folder="cifar10",
    title="CIFAR-10",
    archive=Published(
        "cifar-10-binary.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        "c32a1d4ab5d03f1284b67883e8d87530", md5_source="the data set's page, https://www.cs.toronto.edu/~kriz/cifar.html"),
    member_dir="cifar-10-batches-bin",
    splits={"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)},
)

# The 28x28 OMNIGLOT split of the IWAE paper (Burda et al. 2016), which NVAE and LSGM evaluate on:
# 24,345 training and 8,070 test images, labelled by alphabet (one-hot over 50).
_OMNIGLOT_FILES = MatImages(
    folder="omniglot",
    title="OMNIGLOT (the IWAE split)",
    file=Published(
        "chardata.mat", "https://github.com/yburda/iwae/raw/master/datasets/OMNIGLOT/chardata.mat",
        "21ecaf34373511aa7691cf2e0802aa3d", md5_source="the OMNIGLOT loader of tfsnippet (haowen-xu/tfsnippet)"),
    splits={"train": ("data", "target"), "test": ("testdata", "testtarget")},
)

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
        DatasetSpec(
            "cifar10",
            _CIFAR10_FILES,
            ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
            shown_as=None,
            classifier=None,
            channels=3,
        ),
        DatasetSpec(
            "binarized-omniglot",
            _OMNIGLOT_FILES,
            tuple(f"alphabet {i}" for i in range(50)),
            shown_as=None,
            classifier=None,
            binarize=True,
        ),
    )
}
