"""Your own images in the app, through gradio_client against a real server: a zip of coloured shapes
becomes a data set (/upload_dataset), a tiny colour LSGM is trained on it (stage 1, then stage 2 from
it), and every tab works on that colour model; hostile uploads come back as clear errors."""
import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import handle_file  # noqa: E402

from app.uploads import OWN_IMAGES  # noqa: E402
from test_app_api import connect, error_of, wait_for  # noqa: E402
from test_uploads import make_zip, png_bytes, shapes, shapes_zip  # noqa: E402

N_IMAGES = 48


def colourful(im: Image.Image) -> float:
    """How far the image is from grey: the largest difference between two channels of a pixel, 0..255."""
    a = np.asarray(im.convert("RGB"), dtype=np.int16)
    return float(np.abs(a - a.mean(-1, keepdims=True)).max())


@pytest.fixture(scope="module")
def client(app_server):
    return connect(app_server)


@pytest.fixture(scope="module")
def colour_model(client, app_server, tmp_path_factory):
    """The id of a tiny LSGM trained from the app on uploaded coloured shapes: stage 1, then stage 2."""
    z = shapes_zip(tmp_path_factory.mktemp("shapes") / "shapes.zip", n=N_IMAGES)
    preview, summary, report = client.predict([handle_file(str(z))], "shapes", api_name="/upload_dataset")
    assert (report["id"], report["images"], report["mode"], report["size"]) == ("upload:shapes", N_IMAGES, "RGB", 32)
    assert f"{N_IMAGES} images" in summary and "colour" in summary
    assert Image.open(preview).mode == "RGB" and colourful(Image.open(preview)) > 100
    stored = app_server.root / "runs" / ".uploads" / "shapes" / "images"
    assert len(list(stored.glob("*.png"))) == N_IMAGES
    wait_for(client, ("idle", "stopped", "finished", "failed"))  # one run at a time: another test's may be going
    client.predict("shapes-s1", "upload:shapes", 1, None, 40, "tiny", -2.5, api_name="/train_start")
    st = wait_for(client, ("stopped", "finished", "failed"))
    assert st["state"] == "finished", st
    client.predict("shapes-s2", "upload:shapes", 2, "runs/shapes-s1", 20, "tiny", -2.5, api_name="/train_start")
    st = wait_for(client, ("stopped", "finished", "failed"))
    assert st["state"] == "finished", st
    config = json.loads((app_server.root / "runs" / "shapes-s2" / "config.json").read_text())
    assert config["data"]["dataset"] == f"folder:{stored}" and config["model"]["in_channels"] == 3
    assert config["train"]["batch_size"] == 32  # the tiny size's batch, within the 48 images
    return "runs/shapes-s2"


@pytest.mark.slow
def test_every_tab_works_on_a_colour_model(client, colour_model, app_server, tmp_path):
    listed = {m["id"]: m["description"] for m in client.predict(api_name="/models")["models"]}
    assert "stage 2, step 20" in listed[colour_model]

    grid, _, stats = client.predict(colour_model, 9, 0, 1.0, "fast", -5, -5, 5, 1.0, api_name="/sample")
    assert "NFE 5" in stats and Image.open(grid).mode == "RGB" and colourful(Image.open(grid)) > 10

    hat, noisy, _, _, gif, _, _, _ = client.predict(colour_model, 2, 4, 0, "fast", -3, -3, 5, api_name="/trajectory")
    assert Image.open(hat).mode == "RGB" and colourful(Image.open(hat)) > 10
    with Image.open(gif) as anim:
        assert anim.n_frames >= 3
        anim.seek(anim.n_frames - 1)
        assert colourful(anim) > 10

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    red, blue = shapes(3)[0], shapes(3)[2]
    red.save(a)
    blue.save(b)
    strip, gif, *_ = client.predict(colour_model, handle_file(str(a)), handle_file(str(b)), "linear_z0", 5, -3,
                                    api_name="/interpolate")
    strip = np.asarray(Image.open(strip).convert("RGB"), dtype=np.float32)
    # the strip runs from red-ish at A to blue-ish at B: red leads on the left, blue on the right
    third = strip.shape[1] // 3
    left, right = strip[:, :third].reshape(-1, 3), strip[:, -third:].reshape(-1, 3)
    assert left[:, 0].mean() - left[:, 2].mean() > right[:, 0].mean() - right[:, 2].mean()
    with Image.open(gif) as anim:
        assert anim.n_frames >= 5

    fig, stats, csv_path = client.predict(colour_model, OWN_IMAGES, 200, 10, 0, api_name="/latent_map")
    traces = json.loads(fig["plot"])["data"]
    clusters = [t for t in traces if t["name"].startswith("cluster ")]
    # one image per point (plotly sends the coordinates packed, the images as a list)
    assert len(clusters) >= 2 and sum(len(t["customdata"]) for t in clusters) == N_IMAGES
    assert f"{len(clusters)} classes" in stats and "training folder" in stats
    thumb = clusters[0]["customdata"][0]
    assert thumb.startswith("data:image/png;base64,")
    hover = Image.open(io.BytesIO(base64.b64decode(thumb.split(",", 1)[1])))
    index = int(re.search(r"image (\d+)\)", clusters[0]["text"][0]).group(1))
    stored = app_server.root / "runs" / ".uploads" / "shapes" / "images" / f"{index:05d}.png"
    # the hovered image is that point's coloured shape itself, pixel for pixel
    assert hover.mode == "RGB" and np.array_equal(np.asarray(hover), np.asarray(Image.open(stored)))
    samples = next(t for t in traces if t["name"] == "model samples")
    assert len(samples["customdata"]) == 10


def test_upload_errors_name_the_file_and_leave_nothing(client, app_server, tmp_path):
    before = sorted(p.name for p in (app_server.root / "runs" / ".uploads").glob("*")) \
        if (app_server.root / "runs" / ".uploads").exists() else []
    evil = make_zip(tmp_path / "evil.zip", {f"{i}.png": png_bytes(im) for i, im in enumerate(shapes(9))},
                    links={"escape.png": "../../../etc/passwd"})
    assert "'escape.png': a symbolic link" in error_of(
        lambda: client.predict([handle_file(str(evil))], "evil", api_name="/upload_dataset"))
    assert "data set name" in error_of(
        lambda: client.predict([handle_file(str(evil))], "../evil", api_name="/upload_dataset"))
    few = shapes_zip(tmp_path / "few.zip", n=2)
    assert "2 usable image(s)" in error_of(lambda: client.predict([handle_file(str(few))], "few",
                                                                  api_name="/upload_dataset"))
    assert "got 'upload:nothing'" in error_of(lambda: client.predict("x", "upload:nothing", 1, None, 10, "tiny", -3,
                                                                     api_name="/train_start"))
    after = sorted(p.name for p in (app_server.root / "runs" / ".uploads").glob("*"))
    assert after == before


def choose_files(pg, files) -> None:
    """Choose files as a user does, through the drop zone's file chooser, and wait until the component
    lists every one (the server then holds them). It shows a name's stem and extension in separate
    elements ("shape-9" and ".png"), so the wait looks for the stems in its text."""
    with pg.expect_file_chooser() as chooser:
        pg.locator("#upload-files button[aria-dropeffect]").first.click()
    chooser.value.set_files([str(f) for f in files])
    pg.wait_for_function("stems => { const box = document.querySelector('#upload-files');"
                         " return box && stems.every(s => box.innerText.includes(s)); }", arg=[f.stem for f in files])


@pytest.mark.browser
@pytest.mark.slow
def test_upload_in_the_browser_shows_preview_counts_and_the_new_data_set(app_server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    from test_app_browser import ARGS, ARTIFACTS, CHROMIUM, WAIT_MS

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM}")
    files = []
    for i, im in enumerate(shapes(10)):
        files.append(tmp_path / f"shape-{i}.png")
        im.resize((48, 48)).save(files[-1])
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 1400})
        pg.set_default_timeout(WAIT_MS)
        pg.goto(app_server.url)
        pg.get_by_role("tab", name="Train", exact=True).click()
        pg.get_by_text("Your own images: upload a data set").click()
        choose_files(pg, files)
        pg.locator("#upload-name textarea, #upload-name input").first.fill("browser-shapes")
        pg.get_by_role("button", name="Prepare data set", exact=True).click()
        pg.wait_for_selector("#upload-report :text('upload:browser-shapes')")
        report = pg.locator("#upload-report").inner_text()
        assert "10 images" in report and "colour (RGB)" in report
        assert "10 image(s): 48x48 center-cropped and resized to 32x32" in report
        pg.wait_for_function("() => { const i = document.querySelector('#upload-preview img');"
                             " return i && i.complete && i.naturalWidth > 100; }")
        assert pg.locator("#train-dataset input").input_value() == "upload:browser-shapes"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / "train-upload.png"), full_page=True)
        browser.close()
