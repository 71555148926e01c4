"""app.uploads: a zip or several images become a data set in the app's own folder; hostile and odd
uploads are refused or converted with a message naming the file, and a failed one leaves nothing."""
import io
import os
import re
import stat
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.images import UploadError
from app.uploads import IMAGE_SIZE, MIN_IMAGES, Limits, Uploads
from lsgm_core import load_dataset

COLOURS = [(230, 40, 40), (40, 200, 60), (50, 80, 240)]


def shapes(n: int, seed: int = 0, size: int = 32) -> list[Image.Image]:
    """Coloured discs and squares on black: red, green or blue, at seeded places and sizes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for i in range(n):
        r = rng.integers(size // 6, size // 3)
        cy, cx = rng.integers(r, size - r, 2)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) if i % 2 else (
            (abs(yy - cy) <= r * 0.8) & (abs(xx - cx) <= r * 0.8))
        a = np.zeros((size, size, 3), np.uint8)
        a[mask] = COLOURS[i % 3]
        out.append(Image.fromarray(a))
    return out


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def make_zip(path: Path, entries: dict[str, bytes], links: dict[str, str] = {}) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
        for name, target in links.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, target)
    return path


def shapes_zip(path: Path, n: int = 12, **extra: bytes) -> Path:
    return make_zip(path, {**{f"shapes/{i}.png": png_bytes(im) for i, im in enumerate(shapes(n))}, **extra})


@pytest.fixture
def uploads(tmp_path) -> Uploads:
    return Uploads(tmp_path / "store")


def contents(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_zip_of_colour_images_round_trips_into_a_folder_data_set(uploads, tmp_path):
    originals = shapes(12)
    report = uploads.prepare("shapes", [shapes_zip(tmp_path / "s.zip")])
    assert (report.images, report.size, report.mode, report.converted, report.skipped) == (12, 32, "RGB", [], [])
    assert uploads.ids() == ["upload:shapes"] and uploads.report("upload:shapes") == report
    ds = load_dataset(uploads.folder_spec("upload:shapes"))
    assert ds.kind == "colour" and ds.images.shape == (12, 3, 32, 32)
    # 32x32 PNGs are stored losslessly, in the zip's order
    for i, im in enumerate(originals):
        assert np.array_equal(ds.images[i].permute(1, 2, 0).numpy(), np.asarray(im))
    preview = Image.open(uploads.preview("upload:shapes"))
    assert preview.mode == "RGB" and preview.width > 4 * IMAGE_SIZE


def test_several_images_mixed_sizes_and_modes_are_converted_and_counted(uploads, tmp_path):
    files = []
    for i, im in enumerate(shapes(6)):
        files.append(tmp_path / f"c{i}.png")
        im.save(files[-1])
    grey = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8)[None] * 4, (48, 1)), "L")
    grey.save(tmp_path / "grey.png")
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    rgba.save(tmp_path / "clear.png")
    Image.new("P", (32, 32)).save(tmp_path / "palette.gif")
    (tmp_path / "notes.txt").write_text("not a picture")
    files += [tmp_path / n for n in ("grey.png", "clear.png", "palette.gif", "notes.txt")]
    report = uploads.prepare("mixed", files)
    assert report.images == 9 and report.mode == "RGB"
    assert "1 image(s): 64x48 center-cropped and resized to 32x32" in report.converted
    assert "1 image(s): RGBA transparency composited on white" in report.converted
    assert "1 image(s): P palette image converted" in report.converted
    assert "1 grey image(s) stored as RGB, since the others have colour" in report.converted  # a palette is RGB
    assert len(report.skipped) == 1 and report.skipped[0].startswith("notes.txt: not an image")
    ds = load_dataset(uploads.folder_spec("upload:mixed"))
    assert ds.images.shape == (9, 3, 32, 32)
    assert (ds.images[7] == 255).all()  # the clear RGBA image: on white


def test_grey_upload_stays_grey(uploads, tmp_path):
    files = []
    for i, im in enumerate(shapes(MIN_IMAGES)):
        files.append(tmp_path / f"{i}.png")
        im.convert("L").save(files[-1])
    report = uploads.prepare("grey", files)
    assert report.mode == "L" and load_dataset(uploads.folder_spec("upload:grey")).images.shape[1] == 1


@pytest.mark.parametrize("entry, why", [
    ("/etc/evil.png", "an absolute path"),
    ("C:/evil.png", "an absolute path"),
    ("shapes/../../evil.png", "'..'"),
    ("..\\evil.png", "'..'"),
])
def test_zip_entries_with_paths_outside_are_refused(uploads, tmp_path, entry, why):
    z = shapes_zip(tmp_path / "evil.zip")
    with zipfile.ZipFile(z, "a") as f:
        info = zipfile.ZipInfo("x")
        info.filename = entry  # as a hostile zip stores it, past ZipInfo's own clean-up
        f.writestr(info, png_bytes(shapes(1)[0]))
    with pytest.raises(UploadError, match="evil.zip is refused.*" + re.escape(f"{entry!r}: ") + ".*" + re.escape(why)):
        uploads.prepare("evil", [z])
    assert contents(uploads.root) == [] and not (tmp_path / "evil.png").exists()


def test_symlink_entries_are_refused(uploads, tmp_path):
    z = make_zip(tmp_path / "link.zip", {f"{i}.png": png_bytes(im) for i, im in enumerate(shapes(9))},
                 links={"passwd.png": "/etc/passwd"})
    with pytest.raises(UploadError, match="'passwd.png': a symbolic link"):
        uploads.prepare("link", [z])
    assert contents(uploads.root) == []


def test_zip_bomb_refused_from_its_headers(tmp_path):
    zeros = b"\0" * (3 * 2**20)  # 3 MB that deflate to a few kB
    z = shapes_zip(tmp_path / "bomb.zip", **{"big.png": zeros})
    assert z.stat().st_size < 100_000
    small = Uploads(tmp_path / "store", Limits(unpacked_bytes=2 * 2**20))
    with pytest.raises(UploadError, match=r"bomb.zip would unpack to 3\.\d MB, over the 2\.0 MB limit"):
        small.prepare("bomb", [z])
    assert contents(small.root) == []


def _forge_sizes(path: Path, entry: str, size: int) -> None:
    """Rewrite the uncompressed size that the zip's local and central headers declare for `entry`."""
    data = bytearray(path.read_bytes())
    name = entry.encode()
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(sig + b"")
        while at != -1:
            name_at = at + (30 if sig == b"PK\x03\x04" else 46)
            if data[name_at:name_at + len(name)] == name:
                struct.pack_into("<I", data, at + offset, size)
            at = data.find(sig, at + 4)
    path.write_bytes(bytes(data))


def test_headers_that_understate_the_size_are_caught_while_extracting(uploads, tmp_path):
    z = shapes_zip(tmp_path / "liar.zip", **{"liar.png": b"\0" * 100_000})
    _forge_sizes(z, "liar.png", 1000)
    with zipfile.ZipFile(z) as f:
        assert f.getinfo("liar.png").file_size == 1000  # the headers now lie
    with pytest.raises(UploadError, match="'liar.png' unpacks to more than its header says"):
        uploads.prepare("liar", [z])
    assert contents(uploads.root) == []


def test_headers_that_claim_a_huge_size_are_refused_at_the_default_limit(uploads, tmp_path):
    z = shapes_zip(tmp_path / "huge.zip")
    _forge_sizes(z, "shapes/0.png", 2**32 - 1)
    with pytest.raises(UploadError, match=r"huge.zip would unpack to 4\d{3}\.\d MB, over the 300\.0 MB limit"):
        uploads.prepare("huge", [z])


def test_too_many_files_bytes_or_pixels_and_too_few_images(tmp_path):
    z = shapes_zip(tmp_path / "s.zip", n=12)
    with pytest.raises(UploadError, match="s.zip holds 12 files, over the limit of 10 images"):
        Uploads(tmp_path / "a", Limits(files=10)).prepare("a", [z])
    with pytest.raises(UploadError, match=r"the upload is \d+,\d{3} bytes, over the 1,000 bytes limit"):
        Uploads(tmp_path / "b", Limits(upload_bytes=1000)).prepare("b", [z])
    with pytest.raises(UploadError, match="the images up to shapes/4.png add up to more than the 0.004096-megapixel limit"):
        Uploads(tmp_path / "d", Limits(megapixels=32 * 32 * 4 / 1e6)).prepare("d", [z])  # room for 4 images
    few = shapes_zip(tmp_path / "few.zip", n=3, **{"readme.md": b"# my pictures"})
    with pytest.raises(UploadError, match=f"3 usable image\\(s\\), fewer than the {MIN_IMAGES}.*readme.md: not an image"):
        Uploads(tmp_path / "c").prepare("c", [few])
    for root in ("a", "b", "c", "d"):
        assert contents(tmp_path / root) == []


def test_hidden_and_system_files_are_skipped_and_counted(uploads, tmp_path):
    z = shapes_zip(tmp_path / "mac.zip", **{"__MACOSX/shapes/._0.png": b"\0\1", "shapes/.DS_Store": b"x",
                                           "Thumbs.db": b"y"})
    report = uploads.prepare("mac", [z])
    assert report.images == 12 and report.skipped == ["3 hidden or system file(s), e.g. '__MACOSX/shapes/._0.png'"]


def test_damaged_entry_is_named(uploads, tmp_path):
    z = shapes_zip(tmp_path / "bad.zip")
    data = bytearray(z.read_bytes())
    at = data.find(b"PK\x03\x04") + 30 + len("shapes/0.png") + 20
    data[at:at + 8] = b"\xff" * 8  # corrupt the deflate stream of the first entry
    z.write_bytes(bytes(data))
    with pytest.raises(UploadError, match="'shapes/0.png' is damaged"):
        uploads.prepare("bad", [z])


def test_a_failed_upload_loses_nothing_already_there(uploads, tmp_path):
    good = uploads.prepare("keep", [shapes_zip(tmp_path / "s.zip")])
    before = {p: p.read_bytes() for p in uploads.root.rglob("*") if p.is_file()}
    with pytest.raises(UploadError, match="already exists"):
        uploads.prepare("keep", [shapes_zip(tmp_path / "t.zip", n=20)])
    bomb = shapes_zip(tmp_path / "bomb.zip", **{"big.png": b"\0" * 2**20})
    with pytest.raises(UploadError, match="bomb"):
        Uploads(uploads.root, Limits(unpacked_bytes=2**19)).prepare("other", [bomb])
    after = {p: p.read_bytes() for p in uploads.root.rglob("*") if p.is_file()}
    assert after == before and uploads.report("upload:keep") == good
    assert not any(p.name.startswith(".") for p in uploads.root.iterdir())  # no temporary folder left


def test_names_and_ids_from_requests_never_reach_a_path(uploads, tmp_path):
    for bad in ("../x", "a/b", "", ".hidden", "x" * 65, None):
        with pytest.raises(ValueError, match="data set name: 1 to 64 letters"):
            uploads.prepare(bad, [tmp_path / "s.zip"])
    with pytest.raises(UploadError, match="gone.png: the upload is missing or not a file"):
        uploads.prepare("gone", [tmp_path / "gone.png"])
    uploads.prepare("ok", [shapes_zip(tmp_path / "s.zip")])
    for bad in ("upload:../ok", "upload:/etc", "folder:/etc", "ok", "upload:missing"):
        with pytest.raises(ValueError, match="unknown uploaded data set"):
            uploads.folder_spec(bad)
    os.symlink(uploads.root / "ok", uploads.root / "planted")  # a link in the store is not a data set
    assert uploads.ids() == ["upload:ok"]
