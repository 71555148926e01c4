"""Images in and out: upload checks and conversion to the model's input, grids, GIFs, output files."""
from __future__ import annotations

import base64
import io
import math
import os
import struct
import tempfile
import time
import uuid
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lsgm_core import atomic
from lsgm_core.data import MAX_IMAGE_PIXELS, DataError, read_image

MAX_UPLOAD_MB = 10
UPLOAD_RULES = (f"PNG, JPEG, BMP, GIF, WebP or TIFF, up to {MAX_UPLOAD_MB} MB and "
                f"{MAX_IMAGE_PIXELS // 1_000_000} megapixels")
_MODE_NOTES = {
    "RGBA": "transparency composited on white", "LA": "transparency composited on white",
    "PA": "transparency composited on white", "P": "palette image converted",
    "I;16": "16-bit image scaled to 8 bits", "I;16B": "16-bit image scaled to 8 bits",
    "I;16L": "16-bit image scaled to 8 bits", "I": "32-bit image scaled to 8 bits",
    "CMYK": "CMYK converted to RGB", "1": "1-bit image converted",
}


class UploadError(ValueError):
    """An upload the app cannot use; the message says why and what is accepted."""


def source_notes(header: Image.Image, side: int) -> list[str]:
    """What reading an opened image as a `side`-pixel square of 8-bit grey or RGB does to it."""
    notes = []
    if header.mode in _MODE_NOTES or "transparency" in header.info:
        notes.append(f"{header.mode} {_MODE_NOTES.get(header.mode, 'transparency composited on white')}")
    if header.size != (side, side):
        notes.append(f"{header.size[0]}x{header.size[1]} center-cropped and resized to {side}x{side}")
    return notes


def model_input(path: str | os.PathLike, model) -> tuple[torch.Tensor, list[str]]:
    """An uploaded file as the model's input [1, C, S, S] in [0, 1], and notes on what was converted.

    The image is center-cropped and resized to the data's own size (28 for MNIST), padded by the
    model's crop to S (32), converted to grey or RGB as the model wants, and inverted when its
    background is light while the model was trained on light-on-dark images.
    """
    path = Path(path)
    name = path.name
    try:
        size = path.stat().st_size
    except OSError:
        raise UploadError(f"{name}: the upload is missing; upload it again") from None
    if size > MAX_UPLOAD_MB * 2**20:
        raise UploadError(f"{name}: {size / 2**20:.1f} MB is over the {MAX_UPLOAD_MB} MB limit; shrink it first")
    inner = model.image_size - 2 * model.crop
    try:
        im, grey = read_image(path, inner)
    except DataError as e:
        raise UploadError(f"{name}: {e}. Accepted: {UPLOAD_RULES}.") from None
    with Image.open(path) as header:  # already known to be a readable image
        notes = source_notes(header, inner)
    if model.in_channels == 1 and not grey:
        notes.append("colour converted to grey")
    x = np.asarray(im.convert("L" if model.in_channels == 1 else "RGB"), dtype=np.float32) / 255.0
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
    border = np.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], axis=None)
    if model.in_channels == 1 and border.mean() > 0.5:
        # MNIST-style data is white on black: a dark digit on paper would be out of distribution
        x = 1.0 - x
        notes.append("light background inverted to white-on-black, like the training data")
    x = np.pad(x, ((0, 0), (model.crop,) * 2, (model.crop,) * 2))
    return torch.from_numpy(np.ascontiguousarray(x))[None], notes


def to_pil(image: torch.Tensor, scale: int = 1) -> Image.Image:
    """One image [C, H, W] in [0, 1] as a PIL image, enlarged `scale` times without smoothing."""
    a = (image.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    im = Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))
    return im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST) if scale > 1 else im


def display_scale(height: int, target: int = 84) -> int:
    """How many times to enlarge tiles of `height` pixels so they show at about `target` pixels."""
    return max(1, math.ceil(target / height))


def _tile_origin(index: int, ncol: int, h: int, w: int, pad: int) -> tuple[int, int]:
    """(left, top) of tile `index` in grid()'s canvas before it is enlarged."""
    r, k = divmod(index, ncol)
    return pad + k * (w + pad), pad + r * (h + pad)


def tile_box(index: int, ncol: int, h: int, w: int, pad: int = 2) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of tile `index` of h x w pixels in grid()'s image, in its (enlarged) pixels."""
    scale = display_scale(h)
    left, top = (scale * v for v in _tile_origin(index, ncol, h, w, pad))
    return left, top, left + scale * w, top + scale * h


def grid(images: torch.Tensor, ncol: int | None = None, pad: int = 2) -> Image.Image:
    """Images [N, C, H, W] in [0, 1] tiled row by row on a grey background, enlarged for display."""
    n, c, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    canvas = torch.full((c, nrow * (h + pad) + pad, ncol * (w + pad) + pad), 0.5)
    for i, im in enumerate(images.detach().cpu()):
        left, top = _tile_origin(i, ncol, h, w, pad)
        canvas[:, top:top + h, left:left + w] = im
    return to_pil(canvas, display_scale(h))


LABEL_MARGIN = (64, 20)  # (left, top) pixels that labelled_grid adds for its row and column labels


def labelled_grid(images: torch.Tensor, ncol: int, row_labels: dict[int, str], col_labels: list[str]) -> Image.Image:
    """grid(images, ncol) on a white margin: `row_labels` {row: text} at the left of those rows,
    `col_labels` above the columns. Tile i lies at tile_box(i, ...) moved by LABEL_MARGIN."""
    from PIL import ImageDraw, ImageFont

    body = grid(images, ncol)
    left, top = LABEL_MARGIN
    out = Image.new(body.mode, (body.width + left, body.height + top), "white")
    out.paste(body, (left, top))
    draw, font = ImageDraw.Draw(out), ImageFont.load_default(12)
    h, w = images.shape[-2:]
    for k, text in enumerate(col_labels):
        x0, _, x1, _ = tile_box(k, ncol, h, w)
        draw.text((left + (x0 + x1) / 2, top / 2), text, fill="black", font=font, anchor="mm")
    for r, text in row_labels.items():
        _, y0, _, y1 = tile_box(r * ncol, ncol, h, w)
        draw.text((4, top + (y0 + y1) / 2), text, fill="black", font=font, anchor="lm")
    return out


def data_uri(image: Image.Image) -> str:
    """A PNG as an inline data: URI, for a live view: no file written, served or fetched. Compression
    level 1: a third of the default's encoding time (1.8 against 6.3 ms) for a third more bytes on
    the 366-pixel grid of 16 samples."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def png_data_uris(images: torch.Tensor) -> list[str]:
    """uint8 images [N, C, H, W] (C 1: grey, 3: RGB) as PNG data URIs, written here with zlib: a third
    of the time of PIL by way of to_pil (0.15 against 0.48 ms for a 28x28 digit), which made the hover
    images most of a cached latent map's time."""
    n, c, h, w = images.shape
    head = struct.pack(">IIBBBBB", w, h, 8, {1: 0, 3: 2}[c], 0, 0, 0)
    rows = images.permute(0, 2, 3, 1).reshape(n, h, w * c).cpu().numpy()
    rows = np.concatenate([np.zeros((n, h, 1), np.uint8), rows], 2)  # filter type 0 before every row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return ["data:image/png;base64," + base64.b64encode(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(r.tobytes(), 6)) + chunk(b"IEND", b"")
    ).decode("ascii") for r in rows]


class Outputs:
    """The app's own folder for files it serves (PNG, GIF, CSV); files older than max_age_s go.

    Named with random ids, so one user cannot guess another's file; written atomically, so a
    download never gets half a file, and a full disk gives a clear message.
    """

    def __init__(self, root: str | os.PathLike | None = None, max_age_s: float = 3600):
        self.dir = Path(tempfile.mkdtemp(prefix="lsgm-app-", dir=root))
        self.max_age_s = max_age_s

    def path(self, stem: str, suffix: str) -> Path:
        cutoff = time.time() - self.max_age_s
        for old in self.dir.iterdir():
            try:
                if old.stat().st_mtime < cutoff:
                    old.unlink()
            except FileNotFoundError:
                pass  # another request pruned it first
        return self.dir / f"{stem}-{uuid.uuid4().hex[:12]}{suffix}"

    def png(self, image: Image.Image, stem: str) -> str:
        # the format is named: PIL cannot read it from the temporary file's suffix
        return str(atomic.atomic_write(self.path(stem, ".png"), lambda tmp: image.save(tmp, format="PNG")))

    def gif(self, frames: list[Image.Image], stem: str, ms_per_frame: int = 250) -> str:
        """An animated GIF that loops, holding the last frame a little longer."""
        durations = [ms_per_frame] * (len(frames) - 1) + [ms_per_frame * 4]
        return str(atomic.atomic_write(self.path(stem, ".gif"), lambda tmp: frames[0].save(
            tmp, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0)))

    def text(self, content: str, stem: str, suffix: str) -> str:
        return str(atomic.write_text(self.path(stem, suffix), content))
