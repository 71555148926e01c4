"""The app in a real browser (Debian's chromium through Playwright): every tab's main control,
with its result checked on the page and a screenshot of each tab kept in test-artifacts/app/."""
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sync_api = pytest.importorskip("playwright.sync_api")
from app.solver_controls import choices  # noqa: E402
from app.tabs import TABS as TAB_SPECS  # noqa: E402

CHROMIUM = os.environ.get("LSGM_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "app"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
WAIT_MS = 600_000  # a timeout, not a wait: on a shared, busy machine a training step can take seconds
TABS = [tab.label for tab in TAB_SPECS]
pytestmark = [pytest.mark.browser, pytest.mark.slow]
OFFLINE = ("http://127.0.0.1:", "data:", "blob:")  # what the page may load: the app itself, inline data
SOLVER_LABELS = {name: label for label, name in choices()}  # the solver radio's labels, from the solver registry


@pytest.fixture(scope="module")
def page(app_server):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium, or set LSGM_TEST_CHROMIUM)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 1400})
        pg.set_default_timeout(WAIT_MS)
        pg.elsewhere = []  # requests that would need the internet (fonts, CDNs, analytics)
        pg.on("request", lambda r: None if r.url.startswith(OFFLINE) else pg.elsewhere.append(r.url))
        pg.goto(app_server.url)
        pg.wait_for_selector("#model-info :text('tiny-lsgm')")  # the default model loaded
        yield pg
        browser.close()


@pytest.fixture(autouse=True)
def shot_on_failure(request):
    """A failed browser test leaves the page as it was in test-artifacts/app/failed-<test>.png."""
    yield
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed and "page" in request.fixturenames:
        shot(request.getfixturevalue("page"), f"failed-{request.node.name}")


def shot(pg, name: str) -> None:
    path = ARTIFACTS / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def open_tab(pg, title: str) -> None:
    pg.get_by_role("tab", name=title, exact=True).click()


def click(pg, label: str) -> None:
    pg.get_by_role("button", name=label, exact=True).click()


def set_slider(pg, elem_id: str, value) -> None:
    box = pg.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def upload(pg, elem_id: str, path: Path) -> None:
    """Choose a file for an image input and wait until the server holds it (the preview then points
    at the uploaded copy): a click before that would still send the previous image."""
    pg.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))
    pg.wait_for_selector(f"#{elem_id} img[src$='/{path.name}']", state="attached")


def rendered_image(pg, selector: str) -> None:
    """Wait until an <img> under selector has loaded a non-empty image."""
    pg.wait_for_function("""sel => { const im = document.querySelector(sel + ' img');
                                     return im && im.complete && im.naturalWidth > 0; }""", arg=selector)


def test_sample_tab(page):
    open_tab(page, "Sample")
    # alpha starts at the model as trained, and says what the learned alpha is
    assert page.locator("#sample-alpha input[type=number]").input_value() == "1"
    page.wait_for_selector("#sample-alpha :text('latent channel')")
    click(page, "Sample")
    rendered_image(page, "#sample-grid")
    page.wait_for_selector("#sample-stats :text('NFE')")
    assert "16 samples" in page.inner_text("#sample-stats")
    shot(page, "sample")
    # the distilled student takes 1, 2 or 4 steps and no alpha: the controls say so
    solver = page.locator("#sample-solver")
    solver.get_by_label(SOLVER_LABELS["distilled"]).check()
    page.wait_for_selector("#sample-alpha :text('alpha does not apply')")
    page.wait_for_selector("#sample-alpha input[type=number]:disabled")
    assert page.locator("#sample-steps input[type=number]").get_attribute("max") == "4"
    solver.get_by_label(SOLVER_LABELS["fast"]).check()
    page.wait_for_selector("#sample-alpha input[type=number]:enabled")


def test_stop_ends_a_long_sampling_run(page, app_server):
    open_tab(page, "Sample")
    solver = page.locator("#sample-solver")
    solver.get_by_label(SOLVER_LABELS["sde"]).check()
    set_slider(page, "sample-steps", 2000)
    set_slider(page, "sample-num", 64)
    click(page, "Sample")
    page.wait_for_selector(":text('network evaluations')")  # the progress of the running job
    click(page, "Stop")
    deadline = time.time() + 120
    while "run stopped by the user" not in app_server.stderr.read_text():
        assert time.time() < deadline, "the sampling job did not end after Stop"
        time.sleep(0.5)
    solver.get_by_label(SOLVER_LABELS["fast"]).check()  # back to the defaults
    set_slider(page, "sample-num", 16)


def test_trajectory_tab(page):
    open_tab(page, "Trajectory")
    click(page, "Run trajectory")
    rendered_image(page, "#trajectory-frames")
    page.wait_for_selector("#trajectory-paths .js-plotly-plot .scatterlayer .trace")
    page.wait_for_selector("#trajectory-steps .js-plotly-plot .scatterlayer .trace")
    assert "NFE" in page.inner_text("#trajectory-stats")
    shot(page, "trajectory")


def test_interpolate_tab(page, tmp_path):
    open_tab(page, "Interpolate")
    click(page, "Interpolate")  # the two shipped examples picked by default
    rendered_image(page, "#interp-strip")
    page.wait_for_selector("#interp-stats :text('10 images')")
    shot(page, "interpolate")
    # an upload with transparency is converted, and the page says so
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[8:32, 14:26] = (0, 0, 0, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "shape.png")
    upload(page, "interp-a", tmp_path / "shape.png")
    click(page, "Interpolate")
    page.wait_for_selector("#interp-stats :text('transparency composited on white')")
    # a file that is no image gets a readable message, and the page keeps working
    (tmp_path / "notes.png").write_text("not an image at all")
    upload(page, "interp-a", tmp_path / "notes.png")
    click(page, "Interpolate")
    page.wait_for_selector(":text('not an image')")
    shot(page, "interpolate-bad-upload")
    # a file over the upload limit is refused by the page itself, with a message
    (tmp_path / "huge.png").write_bytes(b"\0" * (11 * 2**20))
    page.locator("#interp-a input[type=file]").set_input_files(str(tmp_path / "huge.png"))
    page.wait_for_selector(":text('exceed the maximum allowed size')")


def test_latent_map_tab_with_hover(page):
    open_tab(page, "Latent map")
    set_slider(page, "latent-points", 300)
    set_slider(page, "latent-samples", 20)
    click(page, "Compute map")
    page.wait_for_selector("#latent-stats :text('Linear probe')")
    page.wait_for_selector("#latent-map .js-plotly-plot .scatterlayer .trace")
    # move the mouse onto the first point: its image must pop up
    x, y = page.evaluate("""() => {
        const gd = document.querySelector('#latent-map .js-plotly-plot');
        const fl = gd._fullLayout, tr = gd._fullData[0], box = gd.getBoundingClientRect();
        return [box.left + fl._size.l + fl.xaxis.l2p(tr.x[0]), box.top + fl._size.t + fl.yaxis.l2p(tr.y[0])];
    }""")
    page.mouse.move(x - 30, y - 30)
    page.mouse.move(x, y, steps=5)
    page.wait_for_function("""() => { const b = document.getElementById('latent-hover');
        return b && b.style.display === 'block' && b.querySelector('img').src.startsWith('data:image/png'); }""")
    shot(page, "latent-map")


def test_train_tab_start_stop_and_picker(page):
    open_tab(page, "Train")
    # stage 2 has a sensible start: the first stage-1 model in the picker
    assert page.locator("#train-init input").input_value() == "checkpoints/tiny-stage1"
    name = f"browser-{int(time.time())}"
    page.locator("#train-name textarea, #train-name input").first.fill(name)
    set_slider(page, "train-steps", 5000)
    click(page, "Start training")
    page.wait_for_selector("#train-progress[data-state=running]")
    page.wait_for_function("""() => { const p = document.querySelector('#train-progress progress');
                                      return p && Number(p.value) > 0; }""")  # steps are being logged
    page.wait_for_selector("#train-curve .js-plotly-plot .scatterlayer .trace")
    # the run belongs to the server, not to the page: a reload finds it still going, curve and all
    page.reload()
    open_tab(page, "Train")
    page.wait_for_selector(f"#train-progress[data-state=running] :text('{name}')")
    page.wait_for_selector("#train-curve .js-plotly-plot .scatterlayer .trace")
    shot(page, "train-running")
    click(page, "Stop training")
    page.wait_for_selector("#train-progress[data-state=stopped]")
    shot(page, "train-stopped")
    page.locator("#model-picker input").click()
    page.get_by_role("option", name=f"runs/{name}", exact=False).click()
    page.wait_for_selector(f"#model-info :text('runs/{name}')")


def test_page_needs_no_internet(page):
    """Every tab drawn, nothing fetched from outside the app (no web fonts, CDNs or analytics)."""
    for title in TABS:
        open_tab(page, title)
    page.wait_for_timeout(1000)  # lazy parts of a tab load once it is shown
    assert not page.elsewhere, page.elsewhere
