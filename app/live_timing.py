"""Time in a real browser (chromium through Playwright) from a slider release to the new live image
on the page: the figure app.bench prints and tests/test_app_live.py holds to its goal."""
from __future__ import annotations

import contextlib
import os
import re
import statistics
from pathlib import Path

CHROMIUM = os.environ.get("LSGM_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
# Sets window.__shown to a promise of the ms from now to the moment an <img> under `sel` shows with
# attribute `attr` at a value other than the one it has now, decoded (on the page, ready to paint).
TIME_TO_NEW = """([sel, attr]) => { window.__shown = new Promise(done => {
    const t0 = performance.now(), old = document.querySelector(sel + ' img')?.getAttribute(attr);
    const check = () => { const im = document.querySelector(sel + ' img');
        if (im && im.getAttribute(attr) !== old) { obs.disconnect(); im.decode().then(() => done(performance.now() - t0)); } };
    const obs = new MutationObserver(check);
    obs.observe(document.querySelector(sel), {subtree: true, childList: true, attributes: true});
}); }"""
# Where the track is clicked, as fractions of its width: every click a new value.
POSITIONS = [0.1, 0.3, 0.5, 0.2, 0.4, 0.6, 0.15, 0.35, 0.55]


@contextlib.contextmanager
def browser_page(url: str, timeout_ms: float = 600_000):
    """A chromium page on `url` (a headless browser of its own, closed on exit)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise FileNotFoundError(f"no chromium at {CHROMIUM} (apt-get install chromium, or set LSGM_TEST_CHROMIUM)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.set_default_timeout(timeout_ms)
            page.goto(url)
            yield page
        finally:
            browser.close()


def click_track(page, elem_id: str, fraction: float) -> None:
    """Press and release the mouse on a gr.Slider's track, `fraction` of the way along."""
    box = page.locator(f"#{elem_id} input[type=range]").bounding_box()
    page.mouse.click(box["x"] + fraction * box["width"], box["y"] + box["height"] / 2)


def release_latencies_ms(page, slider: str, view: str, attr: str, positions=POSITIONS) -> list[float]:
    """For each position: click the slider `slider`'s track there, and time until the <img> under
    `view` shows the new value (its data attribute `attr`)."""
    out = []
    for fraction in positions:
        page.evaluate(TIME_TO_NEW, [f"#{view}", attr])
        click_track(page, slider, fraction)
        out.append(page.evaluate("window.__shown"))
    return out


def sample_tab_figures(url: str) -> dict:
    """The Sample tab's Live grid of the page's default model (one with a distilled student): median ms
    from a release of the temperature slider (the batch's shape kept, as most drags) and of the
    number-of-samples slider (each a new shape) to the new grid, and the sampler's own time as the
    tab reports it."""
    with browser_page(url) as page:
        page.wait_for_selector("#sample-live-grid img")
        temperature = release_latencies_ms(page, "sample-temperature", "sample-live-grid", "data-temperature")
        solver_ms = float(re.search(r"NFE \d+ · ([\d.]+) s", page.inner_text("#sample-stats")).group(1)) * 1000
        number = release_latencies_ms(page, "sample-num", "sample-live-grid", "data-num")
    return {"live_release_to_grid_ms": round(statistics.median(temperature)),
            "live_release_to_grid_new_size_ms": round(statistics.median(number)),
            "live_solver_ms": round(solver_ms), "live_releases": len(temperature)}


def live_figures(client, url: str, model: str) -> dict:
    """sample_tab_figures where the served default `model` has a student (its live endpoint answers),
    else why not; `client` a gradio_client.Client of the server at `url`."""
    from gradio_client.exceptions import AppError

    try:
        client.predict(model, 16, 0, 1.0, "distilled", 1, 1.0, True, api_name="/sample_live")
    except AppError as e:
        return {"live": f"not measured: {e}"}
    if not Path(CHROMIUM).exists():
        return {"live": f"not measured: no chromium at {CHROMIUM}"}
    return sample_tab_figures(url)
