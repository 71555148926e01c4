"""Data sets: IDX files (MNIST, Fashion-MNIST), CIFAR's binary batches, MATLAB files of images
(OMNIGLOT), dynamic binarisation, folders of images.

Everything a data set needs is loaded into memory once, as a uint8 tensor; parsed files are
cached per process (keyed by path, mtime and size), so a second ``load_dataset`` call is cheap.

Where the files live: ``resolve_data_dir`` picks the argument, else ``$LSGM_DATA_DIR``, else
``DEFAULT_DATA_DIR`` (``$XDG_CACHE_HOME/lsgm/data``, by default ``~/.cache/lsgm/data``).
Each registered data set (``lsgm_core.datasets``) is read from ``<data_dir>/<its folder>/``
(``mnist/``, ``fashion-mnist/``, ``cifar10/``, ``omniglot/``), under the official file names (IDX
files gzip-compressed or not; CIFAR-10's ``cifar-10-batches-bin/`` or the ``cifar-10-binary.tar.gz``
it ships in; OMNIGLOT's ``chardata.mat``). Missing files are downloaded from the official addresses
and checked against their published MD5 sums (of the decompressed data for IDX files).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import struct
import tarfile
import urllib.error
import urllib.request
import warnings
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import scipy.io
from PIL import Image, ImageOps, UnidentifiedImageError

from .atomic import write_bytes
from .datasets import DATASETS, SPLITS, CifarBinary, DatasetSpec, IdxFiles, MatImages, Published

__all__ = [
    "DATASETS",
    "DEFAULT_DATA_DIR",
    "MAX_IMAGE_PIXELS",
    "DataError",
    "ImageDataset",
    "dataset_spec",
    "config_dataset",
    "download_dataset",
    "load_dataset",
    "read_cifar_batch",
    "read_idx",
    "read_mat_images",
    "read_image",
    "resolve_data_dir",
    "verify_data_dir",
]


class DataError(Exception):
    """A problem with the user's data; the message says what is wrong and how to fix it."""


def _default_data_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "lsgm" / "data"


DEFAULT_DATA_DIR: Path = _default_data_dir()

_DOWNLOAD_TIMEOUT_S = 30

# Images larger than this are refused before decoding: a small file can expand to gigabytes.
MAX_IMAGE_PIXELS = 50_000_000
_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
# Files that operating systems drop into folders of pictures; not the user's images.
_OS_JUNK = {"thumbs.db", "desktop.ini"}


def dataset_spec(name: str, *, folders: bool = False) -> DatasetSpec:
    """The registered spec of ``name``; a ``DataError`` listing the registered names for any other.

    ``folders``: the caller also takes ``"folder:<path>"``, and the message says so.
    """
    if name not in DATASETS:
        alternative = ", or 'folder:/path/to/images'" if folders else ""
        raise DataError(f"Unknown data set {name!r}: choose one of {', '.join(DATASETS)}{alternative}.")
    return DATASETS[name]


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data folder: ``data_dir`` if given, else ``$LSGM_DATA_DIR``, else ``DEFAULT_DATA_DIR``."""
    chosen = data_dir if data_dir not in (None, "") else os.environ.get("LSGM_DATA_DIR") or DEFAULT_DATA_DIR
    return Path(chosen).expanduser().absolute()


# ----------------------------------------------------------------------------- cache

_CACHE: dict[tuple, tuple[tuple, object]] = {}


def _cached(key: tuple, stamp: tuple, build: Callable[[], object]) -> object:
    """``build()``, reused while ``stamp`` (mtimes and sizes) is unchanged; one entry per key."""
    hit = _CACHE.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    value = build()
    _CACHE[key] = (stamp, value)
    return value


def _file_stamp(path: Path) -> tuple:
    st = path.stat()
    return (st.st_mtime_ns, st.st_size)


# ----------------------------------------------------------------------------- IDX files

# IDX type codes (third byte of the magic number); multi-byte types are big-endian.
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _decompressed_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"Cannot read {path}: {e.strerror or e}.") from e
    # Decide by content, not by name, so a file whose suffix is wrong still reads.
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(
                f"{path} is a damaged gzip file ({e}). Delete it and download it again, "
                "or replace it with a good copy."
            ) from e
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (plain or gzip-compressed) into a read-only array in native byte order.

    The magic number, type code, dimensions and total size are checked; a bad file raises
    ``DataError`` naming the file and the problem.
    """
    path = Path(path)
    raw = _decompressed_bytes(path)

    def bad(problem: str) -> DataError:
        return DataError(
            f"{path} is not a valid IDX file: {problem}. "
            "Delete it and download it again, or replace it with a good copy."
        )

    if len(raw) < 4:
        raise bad(f"it holds only {len(raw)} bytes, too few for the 4-byte magic number")
    if raw[:2] != b"\x00\x00":
        raise bad(f"bad magic number 0x{raw[:4].hex()} (an IDX file starts with two zero bytes)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise bad(f"unknown data type code 0x{code:02x} in the magic number")
    if ndim == 0:
        raise bad("the magic number says it has 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise bad(f"the header of {ndim} dimensions needs {header} bytes but the file holds {len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        shape = " x ".join(map(str, dims))
        what = "truncated" if len(raw) < expected else "followed by extra data"
        raise bad(f"its header promises {shape} values of {dtype.name} ({expected} bytes in all) but it holds {len(raw)} bytes ({what})")
    array = np.frombuffer(raw, dtype, offset=header).reshape(dims)
    if dtype.itemsize > 1:
        array = array.astype(dtype.newbyteorder("="))
        array.flags.writeable = False
    return array


def _find_file(folder: Path, base: str) -> Path | None:
    # The uncompressed file first: it loads faster.
    for candidate in (folder / base, folder / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _check_labels(labels: np.ndarray, path: Path, spec: DatasetSpec) -> None:
    if labels.size and labels.max() >= len(spec.class_names):
        raise DataError(f"{path} has label {labels.max()}; the labels of {spec.files.title} are "
                        f"0..{len(spec.class_names) - 1}.")


def _padded(images: np.ndarray, labels: np.ndarray, image_size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Square uint8 images [N, C, S, S] padded with zeros to ``image_size``, the labels as int64, the padding."""
    side = images.shape[-1]
    if image_size < side or (image_size - side) % 2:
        raise DataError(
            f"image_size={image_size} does not fit {side}x{side} images: it must be {side} plus an even padding"
            f"{' (32 is standard)' if side < 32 else ''}."
        )
    pad = (image_size - side) // 2
    padded = np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    return torch.from_numpy(padded), torch.from_numpy(labels.astype(np.int64)), pad


def _load_idx_split(images_path: Path, labels_path: Path, image_size: int,
                    spec: DatasetSpec) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Images padded with zeros to ``image_size`` ([N, 1, S, S] uint8), labels (int64), padding."""
    num_classes = len(spec.class_names)

    def build() -> tuple[torch.Tensor, torch.Tensor, int]:
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1] != images.shape[2]:
            raise DataError(
                f"{images_path} should hold square uint8 images [N, H, W] but holds {images.dtype.name} "
                f"{list(images.shape)}; replace it with the official file."
            )
        if labels.dtype != np.uint8 or labels.ndim != 1 or len(labels) != len(images):
            raise DataError(
                f"{labels_path} should hold {len(images)} uint8 labels (one per image in {images_path.name}) "
                f"but holds {labels.dtype.name} {list(labels.shape)}; the two files do not belong together."
            )
        _check_labels(labels, labels_path, spec)
        return _padded(images[:, None], labels, image_size)

    key = ("idx", str(images_path.resolve()), str(labels_path.resolve()), image_size, num_classes)
    stamp = (_file_stamp(images_path), _file_stamp(labels_path))
    return _cached(key, stamp, build)


# ----------------------------------------------------------------------------- data set


class ImageDataset(torch.utils.data.Dataset):
    """Images held in memory as uint8 ``[N, C, H, W]``; items are float32 in [0, 1].

    With ``binarize`` every read draws a fresh Bernoulli sample with the pixel intensities as
    probabilities (dynamic binarisation). ``crop`` is the zero padding around the original
    images: likelihoods are computed on ``images[..., crop:H-crop, crop:W-crop]``.
    The ``images`` tensor may be shared with other data sets loaded from the same files
    (the in-process cache); treat it as read-only.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        name: str = "images",
        kind: str | None = None,
        binarize: bool = False,
        num_classes: int = 0,
        crop: int = 0,
    ):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 tensor [N, C, H, W], got {images.dtype} {list(images.shape)}")
        if labels is None:
            labels = torch.full((len(images),), -1, dtype=torch.int64)
        if labels.shape != (len(images),):
            raise ValueError(f"labels must have shape [{len(images)}], got {list(labels.shape)}")
        if kind is None:
            kind = "binary" if binarize else "grey" if images.shape[1] == 1 else "colour"
        if kind not in ("binary", "grey", "colour"):
            raise ValueError(f"kind must be 'binary', 'grey' or 'colour', got {kind!r}")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.name = name
        self.kind = kind
        self.binarize = binarize
        self.num_classes = num_classes
        self.crop = crop

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i].float().div_(255)
        if self.binarize:
            x = torch.bernoulli(x)
        return x, int(self.labels[i])

    def batch(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``[B, C, H, W]`` (float32 in [0, 1], binarised with ``generator`` if ``binarize``) and labels ``[B]``."""
        x = self.images[idx].float().div_(255)
        if self.binarize:
            x = torch.bernoulli(x, generator=generator)
        return x, self.labels[idx]


# ----------------------------------------------------------------------------- download


def _howto(files: IdxFiles, folder: Path, bases: list[str]) -> str:
    """What to put where, and where to get it."""
    listing = "\n".join(f"  {b}.gz" for b in bases)
    mirrors = files.mirrors
    source = f"Get them from {mirrors[0]}" + (f" (or {', '.join(mirrors[1:])})" if len(mirrors) > 1 else "")
    if files.elsewhere:
        source += f"; {files.elsewhere}"
    return (
        f"Put these files in {folder}{os.sep} (gzip-compressed or not, under these names):\n{listing}\n"
        f"{source}.\n"
        f"Or set LSGM_DATA_DIR (or pass data_dir) to a folder whose {files.folder}{os.sep} subfolder holds them."
    )


def _fetch_verified(files: IdxFiles, base: str, unreachable: set[str]) -> bytes:
    """The gzip file from the first mirror that serves it with the right MD5; DataError listing every failure.

    Mirrors that could not be reached are added to ``unreachable`` and not tried again, so that
    a machine without network waits for one timeout per mirror, not one per file.
    """
    failures = []
    for mirror in files.mirrors:
        url = f"{mirror}{base}.gz"
        if mirror in unreachable:
            failures.append(f"{url}: not tried, the server was unreachable")
            continue
        try:
            with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
                payload = response.read()
        except urllib.error.HTTPError as e:  # the server answered; other files may still be there
            failures.append(f"{url}: {e}")
            continue
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            unreachable.add(mirror)
            failures.append(f"{url}: {e}")
            continue
        try:
            md5 = hashlib.md5(gzip.decompress(payload)).hexdigest()
        except (OSError, EOFError, zlib.error) as e:
            failures.append(f"{url}: not a valid gzip file ({e})")
            continue
        if md5 != files.md5[base]:
            failures.append(f"{url}: checksum mismatch (MD5 of the data {md5}, expected {files.md5[base]})")
            continue
        return payload
    raise DataError("; ".join(failures))


def download_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Download the official files of ``name`` that are missing from its folder; return the folder.

    Files already there are left alone. Each download is checked against its published MD5 (of
    the decompressed data for IDX files) and written atomically; CIFAR's archive is then
    extracted (its batch files alone). Without network, or on a checksum mismatch, raises
    ``DataError`` saying which files to put in which folder and where to get them.
    """
    files = dataset_spec(name).files
    folder = resolve_data_dir(data_dir) / files.folder
    if isinstance(files, CifarBinary):
        _cifar_batches(files, folder, download=True)
    elif isinstance(files, MatImages):
        _published_file(files, files.file, folder, True, files.file.name)
    else:
        _download_idx(files, folder)
    return folder


def _download_idx(files: IdxFiles, folder: Path) -> None:
    missing = [base for base in files.md5 if _find_file(folder, base) is None]
    if not missing:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"Cannot create the data folder {folder} ({e.strerror or e}). "
            "Set LSGM_DATA_DIR (or pass data_dir) to a folder you can write to."
        ) from e
    failures, unreachable = {}, set()
    for base in missing:
        try:
            write_bytes(folder / f"{base}.gz", _fetch_verified(files, base, unreachable))
        except DataError as e:
            failures[base] = str(e)
        except OSError as e:
            failures[base] = f"cannot write {folder / base}.gz ({e.strerror or e})"
    if failures:
        report = "\n".join(f"  {base}.gz: {why}" for base, why in failures.items())
        raise DataError(
            f"{files.title} is not in {folder} and could not be downloaded:\n{report}\n"
            + _howto(files, folder, list(failures))
        )


def verify_data_dir(data_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Check every file of the registered data sets against its MD5 (slow: decompresses everything).

    Returns ``{"mnist/train-images-idx3-ubyte": status, ...}`` with status ``"ok"``,
    ``"missing"``, or what is wrong with the file.
    """
    root = resolve_data_dir(data_dir)
    report = {}
    # data sets that read the same files (MNIST and its binarised form) check them once
    collections = {spec.files.folder: spec.files for spec in DATASETS.values()}
    for sub, files in collections.items():
        if not isinstance(files, IdxFiles):
            report.update(_verify_published(files, root / sub))
            continue
        for base, expected in files.md5.items():
            path = _find_file(root / sub, base)
            if path is None:
                status = "missing"
            else:
                try:
                    md5 = hashlib.md5(_decompressed_bytes(path)).hexdigest()
                    status = "ok" if md5 == expected else f"{path.name}: MD5 {md5}, expected {expected}; replace it with the official file"
                except DataError as e:
                    status = str(e)
            report[f"{sub}/{base}"] = status
    return report


def _verify_published(files: CifarBinary | MatImages, folder: Path) -> dict[str, str]:
    """The published file against its MD5; CIFAR batches extracted without their archive, which have
    no published sums, by their record structure."""
    source = files.archive if isinstance(files, CifarBinary) else files.file
    path = folder / source.name
    if isinstance(files, CifarBinary) and not path.is_file() and (folder / files.member_dir).is_dir():
        report = {}
        for name in (n for split in SPLITS for n in files.splits[split]):
            batch = folder / files.member_dir / name
            try:
                status = "ok" if batch.is_file() and read_cifar_batch(batch, files.shape) else "missing"
            except DataError as e:
                status = str(e)
            report[f"{files.folder}/{files.member_dir}/{name}"] = status
        return report
    if not path.is_file():
        return {f"{files.folder}/{source.name}": "missing"}
    md5 = hashlib.md5(path.read_bytes()).hexdigest()  # at most CIFAR's 170 MB, as its download holds them
    return {f"{files.folder}/{source.name}": "ok" if md5 == source.md5 else
            f"{path.name}: MD5 {md5}, expected {source.md5}; replace it with the official file"}


# ----------------------------------------------------------------------------- published files: CIFAR, OMNIGLOT


def _published_howto(files: CifarBinary | MatImages, folder: Path, source: Published, what: str) -> str:
    return (
        f"Put {what} in {folder}{os.sep}.\n"
        f"Get {source.name} from {source.url} (MD5 {source.md5}).\n"
        f"Or set LSGM_DATA_DIR (or pass data_dir) to a folder whose {files.folder}{os.sep} subfolder holds it."
    )


def _fetch_published(source: Published, path: Path) -> None:
    """``source`` written atomically to ``path`` once its MD5 matches; a DataError says what failed."""
    try:
        with urllib.request.urlopen(source.url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            payload = response.read()
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        raise DataError(f"{source.url}: {e}") from None
    md5 = hashlib.md5(payload).hexdigest()
    if md5 != source.md5:
        raise DataError(f"{source.url}: checksum mismatch (MD5 {md5}, expected {source.md5}, as {source.md5_source} gives it)")
    try:
        write_bytes(path, payload)
    except OSError as e:
        raise DataError(f"cannot write {path} ({e.strerror or e})") from None


def _published_file(files: CifarBinary | MatImages, source: Published, folder: Path, download: bool,
                    what: str) -> Path:
    """The path of ``source`` in ``folder``, downloaded first where it is missing and ``download``."""
    path = folder / source.name
    if path.is_file():
        return path
    howto = _published_howto(files, folder, source, what)
    if not download:
        raise DataError(f"{files.title} is not in {folder} and download=False.\n{howto}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"Cannot create the data folder {folder} ({e.strerror or e}). "
                        "Set LSGM_DATA_DIR (or pass data_dir) to a folder you can write to.") from None
    try:
        _fetch_published(source, path)
    except DataError as e:
        raise DataError(f"{files.title} is not in {folder} and could not be downloaded:\n  {e}\n{howto}") from None
    return path


def _extract_members(archive: Path, member_dir: str, names: list[str], dest: Path) -> None:
    """The regular files ``member_dir/<name>`` of a .tar.gz, each written atomically to ``dest/<name>``.

    Members are matched by name and never extracted to the paths the archive gives, which could
    point outside ``dest`` or be links.
    """
    wanted = {f"{member_dir}/{name}": name for name in names}
    found = set()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = wanted.get(member.name.removeprefix("./"))
                if name is None:
                    continue
                if not member.isfile():
                    raise DataError(f"{archive}: {member.name} is not a regular file. Delete the archive and download "
                                    "it again, or replace it with the official one.")
                payload = tar.extractfile(member).read()
                try:
                    write_bytes(dest / name, payload)
                except OSError as e:
                    raise DataError(f"cannot write {dest / name} ({e.strerror or e})") from None
                found.add(name)
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise DataError(f"{archive} is not a readable .tar.gz ({e}). Delete it and download it again, "
                        "or replace it with the official one.") from None
    except OSError as e:  # a damaged gzip stream (BadGzipFile) or an unreadable file
        raise DataError(f"Cannot read {archive} ({e.strerror or e}). Delete it and download it again, "
                        "or replace it with the official one.") from None
    missing = [f"{member_dir}/{name}" for name in names if name not in found]
    if missing:
        raise DataError(f"{archive} lacks {', '.join(missing)}: it is not the official archive. Delete it and download "
                        "it again, or replace it with the official one.")


def read_cifar_batch(path: str | os.PathLike, shape: tuple[int, int, int] = (3, 32, 32)) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR binary batch: uint8 images [N, C, H, W] and uint8 labels [N], read-only views.

    Each record is one label byte and C*H*W pixel bytes (the red plane, then green, then blue, each
    row by row); a file that is not a whole number of records raises ``DataError``.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"Cannot read {path}: {e.strerror or e}.") from None
    record = 1 + math.prod(shape)
    if not raw or len(raw) % record:
        c, h, w = shape
        raise DataError(f"{path} is not a CIFAR binary batch: its {len(raw)} bytes are not a whole number of "
                        f"{record}-byte records (1 label byte + {c}x{h}x{w} pixel bytes). Delete it and extract it "
                        "again from the official archive.")
    records = np.frombuffer(raw, np.uint8).reshape(-1, record)
    return records[:, 1:].reshape(-1, *shape), records[:, 0]


def _cifar_batches(files: CifarBinary, folder: Path, download: bool) -> Path:
    """The folder of the batch files, extracted first from the archive (downloaded if need be)."""
    batches = folder / files.member_dir
    names = [name for split in SPLITS for name in files.splits[split]]
    if all((batches / name).is_file() for name in names):
        return batches
    what = f"{files.archive.name} (or the {files.member_dir}{os.sep} folder it holds, with {', '.join(names)})"
    _extract_members(_published_file(files, files.archive, folder, download, what), files.member_dir, names, batches)
    return batches


def _load_cifar_split(spec: DatasetSpec, folder: Path, split: str, download: bool,
                      image_size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    files = spec.files
    paths = [_cifar_batches(files, folder, download) / name for name in files.splits[split]]

    def build() -> tuple[torch.Tensor, torch.Tensor, int]:
        parts = [read_cifar_batch(path, files.shape) for path in paths]
        for path, (_, labels) in zip(paths, parts):
            _check_labels(labels, path, spec)
        return _padded(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), image_size)

    key = ("cifar", *(str(p.resolve()) for p in paths), image_size, len(spec.class_names))
    return _cached(key, tuple(_file_stamp(p) for p in paths), build)


def read_mat_images(path: str | os.PathLike, images_key: str, labels_key: str | None = None,
                    side: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Images stored as the columns of matrix ``images_key`` of a MATLAB v5 file (values in [0, 1],
    each column a ``side`` x ``side`` image in Fortran order, as IWAE's chardata.mat holds OMNIGLOT),
    as uint8 [N, 1, side, side] (grey levels k/255), and the labels: the row of the 1 in each column of
    the one-hot matrix ``labels_key``, or -1 where the file has no such matrix.

    Read with scipy.io.loadmat, which parses matrices and never unpickles.
    """
    path = Path(path)
    try:
        mat = scipy.io.loadmat(path, variable_names=[k for k in (images_key, labels_key) if k])
    except FileNotFoundError:
        raise DataError(f"Cannot read {path}: it does not exist.") from None
    except NotImplementedError as e:  # MATLAB 7.3 files are HDF5
        raise DataError(f"{path} is a MATLAB file scipy cannot read ({e}); save it in the v5 format "
                        "(MATLAB: save(..., '-v7')) or replace it with the official file.") from None
    except Exception as e:
        # scipy.io raises ValueError, TypeError, OSError... on files that are not MAT files
        raise DataError(f"{path} is not a readable MATLAB file ({type(e).__name__}: {e}). Delete it and download "
                        "it again, or replace it with the official file.") from None
    if images_key not in mat:
        held = ", ".join(sorted(name for name, _, _ in scipy.io.whosmat(path))) or "none"
        raise DataError(f"{path} has no matrix {images_key!r} (its matrices: {held}); replace it with the official file.")
    data = mat[images_key]
    if data.ndim != 2 or data.shape[0] != side * side or not np.issubdtype(data.dtype, np.number):
        raise DataError(f"{path}: {images_key!r} should be a numeric {side * side} x N matrix (one {side}x{side} image "
                        f"per column) but is {data.dtype.name} {list(data.shape)}; replace it with the official file.")
    if data.size and not (np.isfinite(data).all() and data.min() >= 0 and data.max() <= 1):
        raise DataError(f"{path}: {images_key!r} should hold pixel values in [0, 1]; it holds values from "
                        f"{np.nanmin(data)} to {np.nanmax(data)}. Replace it with the official file.")
    n = data.shape[1]
    # column n's element a + side*b is pixel (row a, column b): Fortran order
    images = np.round(data * 255).astype(np.uint8).reshape(side, side, n, order="F").transpose(2, 0, 1)[:, None]
    if labels_key is None or labels_key not in mat:
        return np.ascontiguousarray(images), np.full(n, -1, np.int64)
    onehot = mat[labels_key]
    if onehot.ndim != 2 or onehot.shape[1] != n or not (onehot.sum(0) == 1).all():
        raise DataError(f"{path}: {labels_key!r} should be a one-hot matrix of classes x {n} (one column per image) "
                        f"but is {onehot.dtype.name} {list(onehot.shape)}; replace it with the official file.")
    return np.ascontiguousarray(images), onehot.argmax(0)


def _load_mat_split(spec: DatasetSpec, folder: Path, split: str, download: bool,
                    image_size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    files = spec.files
    path = _published_file(files, files.file, folder, download, files.file.name)
    images_key, labels_key = files.splits[split]

    def build() -> tuple[torch.Tensor, torch.Tensor, int]:
        images, labels = read_mat_images(path, images_key, labels_key, files.side)
        _check_labels(labels, path, spec)
        return _padded(images, labels, image_size)

    key = ("mat", str(path.resolve()), images_key, image_size, len(spec.class_names))
    return _cached(key, _file_stamp(path), build)


# ----------------------------------------------------------------------------- folders of images


def _to_8bit(im: Image.Image) -> Image.Image:
    """Mode "L" or "RGB"; transparency composited on white, 16-bit data scaled (not clipped) to 8 bits."""
    if im.mode.startswith("I"):
        # "I;16*" and "I" (16-bit data); PIL's convert("L") would clip everything above 255 to white.
        values = np.clip(np.asarray(im, dtype=np.float64), 0, 65535)
        return Image.fromarray(np.round(values * (255 / 65535)).astype(np.uint8))
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("L" if im.mode in _GREY_MODES else "RGB")


def _read_image(path: Path, size: int) -> tuple[Image.Image, bool]:
    """The image center-cropped to a square and resized to ``size``, and whether it is grey.

    Raises DataError with the reason alone (the caller adds the file name).
    """
    try:
        with warnings.catch_warnings():
            # Our own, lower limit is enforced below; PIL's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise DataError(
                        f"{w}x{h} pixels is over the {MAX_IMAGE_PIXELS / 1e6:g}-megapixel limit "
                        "(refused as a possible decompression bomb); shrink it first"
                    )
                im.draft(None, (size, size))  # JPEG: decode at a reduced scale, much faster for photos
                im.load()
                grey = im.mode in _GREY_MODES
                flat = _to_8bit(ImageOps.exif_transpose(im))
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError("not an image (Pillow cannot identify its format)") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"too large, refused as a possible decompression bomb ({e})") from None
    except Exception as e:
        # Pillow's decoders raise many exception types on damaged files (OSError, SyntaxError,
        # ValueError, struct.error...); each is reported for its file rather than aborting the scan.
        raise DataError(f"damaged or unreadable image ({type(e).__name__}: {e})") from None
    w, h = flat.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    # Crop first: resize(box=...) would let the filter reach pixels outside the square.
    square = flat.crop((left, top, left + side, top + side))
    return square.resize((size, size), Image.Resampling.LANCZOS), grey


def read_image(path: str | os.PathLike, size: int) -> tuple[Image.Image, bool]:
    """One image file read as folder data sets read it (8-bit "L" or "RGB", center-cropped square,
    resized to ``size``) and whether it was grey; a ``DataError`` says why a file is refused."""
    return _read_image(Path(path), size)


def _image_files(folder: Path) -> list[Path]:
    files = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        hidden = any(part.startswith(".") for part in rel.parts)
        if not hidden and path.name.lower() not in _OS_JUNK and path.is_file():
            files.append(path)
    return sorted(files)


def _load_folder(spec: str, image_size: int, channels: int | None) -> ImageDataset:
    if not spec:
        raise DataError("'folder:' needs a path, e.g. 'folder:/home/me/pictures'.")
    folder = Path(spec).expanduser().absolute()
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 (grey), 3 (RGB) or None (pick from the images), got {channels!r}.")
    if not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size!r}.")
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder. Give the folder that holds your images, e.g. 'folder:/home/me/pictures'.")
    files = _image_files(folder)
    if not files:
        raise DataError(f"{folder} holds no files. Put your images in it (PNG, JPEG, BMP, GIF, WebP, TIFF...).")

    def build() -> torch.Tensor:
        decoded, grey, bad = [], [], []
        for path in files:
            try:
                im, is_grey = _read_image(path, image_size)
            except DataError as e:
                bad.append(f"  {path.relative_to(folder)}: {e}")
                continue
            decoded.append(im)
            grey.append(is_grey)
        if bad:
            raise DataError(
                f"{len(bad)} of {len(files)} files in {folder} cannot be used as images:\n" + "\n".join(bad) + "\n"
                "The folder must hold only images (PNG, JPEG, BMP, GIF, WebP, TIFF...): fix, convert or remove these files."
            )
        c = channels or (1 if all(grey) else 3)
        pixels = np.stack([np.asarray(im.convert("L" if c == 1 else "RGB")) for im in decoded])
        pixels = pixels[:, None] if c == 1 else pixels.transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(pixels))

    stamp = tuple((str(p), *_file_stamp(p)) for p in files)
    images = _cached(("folder", str(folder), image_size, channels), stamp, build)
    return ImageDataset(images, name=f"folder:{folder}", kind="grey" if images.shape[1] == 1 else "colour")


# ----------------------------------------------------------------------------- entry point


def _load_idx(spec: DatasetSpec, folder: Path, split: str, download: bool,
              image_size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    bases = spec.files.splits[split]
    paths = [_find_file(folder, base) for base in bases]
    if None in paths:
        if not download:
            missing = [base for base, path in zip(bases, paths) if path is None]
            raise DataError(f"{spec.files.title} ({split}) is not in {folder} and download=False.\n"
                            + _howto(spec.files, folder, missing))
        _download_idx(spec.files, folder)
        paths = [_find_file(folder, base) for base in bases]
    return _load_idx_split(paths[0], paths[1], image_size, spec)


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    image_size: int = 32,
    channels: int | None = None,
) -> ImageDataset:
    """Load a data set into memory.

    ``name`` is one of ``DATASETS`` or ``"folder:/path/to/images"``.

    - ``"mnist"``, ``"fashion-mnist"``: grey 28x28 images zero-padded to ``image_size``
      (32: ``crop`` = 2), labels 0..9. ``"binarized-mnist"``: MNIST, binarised afresh at
      every read. Files are read from ``<data_dir>/<mnist|fashion-mnist>/``; missing ones are
      downloaded if ``download``, else (or if that fails) a ``DataError`` says what to put where.
      ``channels`` must be None or 1.
    - ``"cifar10"``: the 50,000 / 10,000 colour 32x32 images of CIFAR-10 ([N, 3, 32, 32]; ``image_size``
      32, or more for zero padding), labels 0..9, from ``<data_dir>/cifar10/cifar-10-batches-bin/``
      or extracted there from ``cifar-10-binary.tar.gz`` (downloaded if missing and ``download``).
    - ``"binarized-omniglot"``: the 24,345 / 8,070 28x28 images of IWAE's OMNIGLOT split, from
      ``<data_dir>/omniglot/chardata.mat``, padded as MNIST and binarised afresh at every read;
      labels are the 50 alphabets.
    - ``"folder:<path>"``: every file under the folder, recursively (hidden files and folders
      skipped); each must be an image that Pillow reads (the first frame of animations),
      else a ``DataError`` lists every bad file. Images are center-cropped to a square and
      resized to ``image_size``; transparency is composited on white. ``channels`` 1 gives
      grey, 3 RGB, None picks 1 if every image is grey, else 3. Labels are -1. A folder has no
      split: ``"train"`` and ``"test"`` both give all its images.
    """
    if split not in SPLITS:
        raise DataError(f"split must be {' or '.join(map(repr, SPLITS))}, got {split!r}.")
    if name.startswith("folder:"):
        return _load_folder(name[len("folder:"):], image_size, channels)
    spec = dataset_spec(name, folders=True)
    if channels not in (None, spec.channels):
        raise DataError(f"{name} is {spec.kind} ({spec.channels} channel{'s' if spec.channels > 1 else ''}); "
                        f"channels={channels} is not available for it.")
    folder = resolve_data_dir(data_dir) / spec.files.folder
    load = _load_cifar_split if isinstance(spec.files, CifarBinary) else \
        _load_mat_split if isinstance(spec.files, MatImages) else _load_idx
    images, labels, pad = load(spec, folder, split, download, image_size)
    return ImageDataset(
        images,
        labels,
        name=name,
        kind=spec.kind,
        binarize=spec.binarize,
        num_classes=len(spec.class_names),
        crop=pad,
    )


def config_dataset(data: dict, split: str = "train", data_dir: str | os.PathLike | None = None) -> ImageDataset:
    """The split of the data set that a config's ``data`` section names, at its image size and channels."""
    return load_dataset(data["dataset"], split, data_dir, image_size=data["image_size"], channels=data["channels"])
