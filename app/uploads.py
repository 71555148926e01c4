"""Data sets of the user's own images, uploaded in the Train tab: a zip of images or several images.

An upload is checked, converted to one folder of PNGs of the trainer's size (grey, or RGB when any
image has colour) and stored in the app's own folder, `<runs>/.uploads/<name>/`; the trainer then
reads it as `folder:<that>/images`. Nothing in an upload names a path: every file is written under
a name the app makes up, so absolute paths, '..' and links inside a zip have nothing to work with
(and are refused outright, since a zip holding them was made to attack). A zip's declared sizes are
checked before anything is extracted, and the bytes are counted again while extracting, since the
headers may lie. The data set is built in a hidden temporary folder and renamed into place only
when complete: a failed upload leaves no trace and loses nothing already there.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lsgm_core import atomic
from lsgm_core.data import DataError, load_dataset, read_image

from .images import UploadError, grid, source_notes

# the Latent map's choice of test images for a model trained on a folder: its own images
OWN_IMAGES = "its training images (your upload; coloured by k-means cluster of the pixels)"
PREFIX = "upload:"  # how the Train tab and the trainer's callers name an uploaded data set
IMAGE_SIZE = 32  # the trainer's data.image_size: images are stored at the size they are trained at
MIN_IMAGES = 8
PREVIEW_IMAGES = 64
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NAME_RULE = "1 to 64 letters, digits, '-', '_' or '.', starting with a letter or digit"
_JUNK = {"thumbs.db", "desktop.ini"}  # files operating systems drop into folders of pictures
_CHUNK = 1 << 16


def check_name(what: str, name) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise ValueError(f"{what}: {NAME_RULE}; got {str(name)[:80]!r}")
    return name


@dataclass(frozen=True)
class Limits:
    files: int = 5000  # images in one upload
    upload_bytes: int = 100 * 2**20  # the uploaded files together, as sent
    unpacked_bytes: int = 300 * 2**20  # a zip's entries decompressed, together
    # the images' pixels before resizing, together: small files can decode to huge images, and
    # decoding is what costs the server's time
    megapixels: float = 2000


@dataclass
class Report:
    """What an upload became: counts, the stored size and mode, and every conversion and skipped file."""

    name: str
    images: int
    size: int
    mode: str  # "L" (grey) or "RGB"
    converted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return PREFIX + self.name

    def markdown(self) -> str:
        kind = "grey" if self.mode == "L" else "colour (RGB)"
        lines = [f"**{self.id}**: **{self.images} images**, {self.size}x{self.size}, {kind}"]
        lines += [f"- converted: {c}" for c in self.converted]
        lines += [f"- skipped: {s}" for s in self.skipped]
        return "\n".join(lines)


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a zip entry is refused as hostile, or None. Its name is never used as a path, but a zip
    that holds such entries was not made by zipping a folder of pictures."""
    name = info.filename
    parts = re.split(r"[\\/]", name)
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    if ".." in parts:
        return "a path with '..' that points outside the folder"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "a symbolic link"
    if info.flag_bits & 0x1:
        return "encrypted (unzip it, or zip it again without a password)"
    return None


def _skipped_junk(name: str) -> bool:
    """Hidden files, macOS resource forks and OS thumbnails: not the user's pictures."""
    parts = [p for p in re.split(r"[\\/]", name) if p]
    return any(p.startswith(".") or p == "__MACOSX" for p in parts) or parts[-1].lower() in _JUNK


class Uploads:
    """The uploaded data sets of one app, each a folder `<root>/<name>/` with `images/`,
    `dataset.json` (the Report) and `preview.png`."""

    def __init__(self, root: str | os.PathLike, limits: Limits = Limits()):
        self.root = Path(root)
        self.limits = limits

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if not p.name.startswith(".") and not p.is_symlink() and (p / "dataset.json").is_file())

    def ids(self) -> list[str]:
        return [PREFIX + n for n in self.names()]

    def report(self, dataset_id: str) -> Report:
        return Report(**json.loads((self._folder(dataset_id) / "dataset.json").read_text()))

    def folder_spec(self, dataset_id: str) -> str:
        """The trainer's `data.dataset` for an uploaded data set ('folder:<path>')."""
        return f"folder:{self._folder(dataset_id) / 'images'}"

    def images_in(self, folder_spec: str) -> int | None:
        """How many images the uploaded data set read as `folder_spec` holds; None for any other data set."""
        return next((self.report(i).images for i in self.ids() if self.folder_spec(i) == folder_spec), None)

    def preview(self, dataset_id: str) -> Path:
        return self._folder(dataset_id) / "preview.png"

    def _folder(self, dataset_id: str) -> Path:
        """Only a listed name is ever joined to the folder: an id from a request cannot point elsewhere."""
        name = dataset_id[len(PREFIX):] if isinstance(dataset_id, str) and dataset_id.startswith(PREFIX) else None
        if name not in self.names():
            listed = ", ".join(self.ids()) or "none yet: upload images first"
            raise ValueError(f"unknown uploaded data set {str(dataset_id)[:80]!r}; the uploaded ones are: {listed}")
        return self.root / name

    def prepare(self, name: str, paths: list[str | os.PathLike]) -> Report:
        """Check and convert an upload (one zip, or image files) into the data set `name`."""
        check_name("data set name", name)
        if not paths:
            raise UploadError("nothing uploaded: add a zip of images, or several images")
        if (self.root / name).exists():
            raise UploadError(f"an uploaded data set named {name!r} already exists; choose another name")
        paths = [Path(p) for p in paths]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise UploadError(f"{missing[0]}: the upload is missing or not a file; upload it again")
        sent = sum(p.stat().st_size for p in paths)
        if sent > self.limits.upload_bytes:
            raise UploadError(f"the upload is {_size(sent)}, over the {_size(self.limits.upload_bytes)} limit; "
                              "upload fewer or smaller images")
        zips = [p for p in paths if p.suffix.lower() == ".zip"]
        if zips and len(paths) > 1:
            raise UploadError(f"upload either one zip or image files, not both ({zips[0].name} came with "
                              f"{len(paths) - 1} other file(s))")
        self.root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{name}.part-", dir=self.root))
        try:
            builder = _Builder(work / "images", self.limits.megapixels)
            if zips:
                self._unzip(zips[0], work / "entry", builder)
            else:
                self._check_count(len(paths), "the upload")
                for p in paths:
                    builder.add(p.name, p)
            report = builder.report(name)
            atomic.write_json(work / "dataset.json", asdict(report))
            grid(_tensor(sorted(builder.folder.iterdir())[:PREVIEW_IMAGES])).save(work / "preview.png", format="PNG")
            atomic.fsync_dir(builder.folder)
            try:
                os.rename(work, self.root / name)  # refuses an existing non-empty folder: nothing is replaced
            except OSError as e:
                raise UploadError(f"cannot store the data set {name!r} ({e.strerror or e}); choose another name") from None
            atomic.fsync_dir(self.root)
            return report
        except OSError as e:
            raise atomic.full_disk_error(e, self.root) from None
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _unzip(self, path: Path, raw: Path, builder: "_Builder") -> None:
        """Each image of the zip through `raw` (one file, reused) into `builder`, within the limits."""
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise UploadError(f"{path.name} is not a readable zip ({e}); zip the images again") from None
        with archive:
            infos = [i for i in archive.infolist() if not i.is_dir()]
            hostile = [f"{i.filename!r}: {p}" for i in infos if (p := _member_problem(i))]
            if hostile:
                raise UploadError(f"{path.name} is refused: it holds " + "; ".join(hostile[:10])
                                  + ". Zip a plain folder of images instead.")
            junk = [i.filename for i in infos if _skipped_junk(i.filename)]
            infos = [i for i in infos if not _skipped_junk(i.filename)]
            self._check_count(len(infos), path.name)
            declared = sum(i.file_size for i in infos)
            if declared > self.limits.unpacked_bytes:
                raise UploadError(f"{path.name} would unpack to {_size(declared)}, over the "
                                  f"{_size(self.limits.unpacked_bytes)} limit (a zip bomb, or too many images); "
                                  "upload fewer images")
            budget = self.limits.unpacked_bytes
            for info in infos:
                budget -= _extract(archive, info, raw, budget, path.name)
                builder.add(info.filename, raw)
        if junk:
            builder.skipped.append(f"{len(junk)} hidden or system file(s), e.g. {junk[0]!r}")

    def _check_count(self, n: int, what: str) -> None:
        if n > self.limits.files:
            raise UploadError(f"{what} holds {n} files, over the limit of {self.limits.files} images; upload fewer")


class _Builder:
    """The images of one upload as they are decoded, written as numbered PNGs, with what was done to them."""

    def __init__(self, folder: Path, megapixels: float):
        self.folder = folder
        folder.mkdir()
        self.megapixels = megapixels
        self.pixels_left = megapixels * 1_000_000
        self.grey: list[bool] = []
        self.notes: Counter[str] = Counter()
        self.skipped: list[str] = []

    def add(self, shown: str, file: Path) -> None:
        """Decode `file` (named `shown` in messages) and store it; one that is no image is skipped, named."""
        try:
            im, grey = read_image(file, IMAGE_SIZE)
            with Image.open(file) as header:
                self.notes.update(source_notes(header, IMAGE_SIZE))
                self.pixels_left -= header.width * header.height
        except DataError as e:
            self.skipped.append(f"{shown}: {e}")
            return
        if self.pixels_left < 0:
            raise UploadError(f"the images up to {shown} add up to more than the {self.megapixels:g}-megapixel "
                              "limit of one upload; upload fewer or smaller images")
        im.save(self.folder / f"{len(self.grey):05d}.png", format="PNG")
        self.grey.append(grey)

    def report(self, name: str) -> Report:
        n = len(self.grey)
        if n < MIN_IMAGES:
            why = "; ".join(self.skipped[:10]) or "no image files in it"
            raise UploadError(f"{n} usable image(s), fewer than the {MIN_IMAGES} a data set needs ({why})")
        mode = "L" if all(self.grey) else "RGB"
        converted = [f"{k} image(s): {note}" for note, k in self.notes.most_common()]
        if mode == "RGB" and any(self.grey):
            # one mode for the whole set: the model has one number of input channels
            converted.append(f"{sum(self.grey)} grey image(s) stored as RGB, since the others have colour")
            for p, grey in zip(sorted(self.folder.iterdir()), self.grey):
                if grey:
                    with Image.open(p) as im:
                        rgb = im.convert("RGB")
                    rgb.save(p, format="PNG")
        return Report(name, n, IMAGE_SIZE, mode, converted, self.skipped)


def _extract(archive: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, budget: int, zip_name: str) -> int:
    """Copy one entry to `dest`, counting bytes: more than its header declared, or than the
    remaining `budget`, stops at once. The bytes written."""
    limit = min(info.file_size, budget)
    # zipfile would quietly stop at the declared size; reading as far as the budget allows lets the
    # count below, not the header, decide
    unbounded = copy.copy(info)
    unbounded.file_size = budget + 1
    written = 0
    try:
        with archive.open(unbounded) as src, open(dest, "wb") as out:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                if written > limit:
                    raise UploadError(f"{zip_name}: {info.filename!r} unpacks to more than its header says "
                                      f"({_size(info.file_size)}) or than the {_size(budget)} left; refused as a zip bomb")
                out.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
        raise UploadError(f"{zip_name}: {info.filename!r} is damaged or uses an unknown compression ({e}); "
                          "zip the images again") from None
    return written


def _size(n: int) -> str:
    return f"{n:,} bytes" if n < 2**20 else f"{n / 2**20:.1f} MB"


def _tensor(paths: list[Path]) -> torch.Tensor:
    """Image files of one size and mode as [N, C, H, W] in [0, 1]."""
    arrays = []
    for p in paths:
        with Image.open(p) as im:
            arrays.append(np.asarray(im, dtype=np.float32) / 255)
    x = np.stack(arrays)
    return torch.from_numpy(x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2))


def training_images(dataset: str, max_images: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A folder data set's images (uint8 [N, C, S, S]), coloured for the latent map by a k-means
    cluster of their pixels: such images have no labels, and clusters of the pixels (not of z0) let
    the linear probe say how well z0 separates groups the model was never told about."""
    from sklearn.cluster import KMeans

    images = load_dataset(dataset).images[:max_images]
    k = int(min(8, max(2, len(images) // 20)))
    pixels = images.flatten(1).float().numpy() / 255
    labels = KMeans(k, n_init=3, random_state=seed).fit_predict(pixels)
    return images, torch.from_numpy(labels.astype(np.int64)), [f"cluster {c}" for c in range(k)]
