"""Paths in the app: the Interpolate tab's slider along a computed path, in a real browser."""
import base64
import io
import time

import numpy as np
import pytest
from PIL import Image

from test_app_browser import click, open_tab, page, set_slider, shot, shot_on_failure  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SLIDER_BUDGET_S = 0.15  # a move to the decoded image on the page, the goal for a live slider


def shown(pg) -> str:
    """The src of the path's frame the page shows (an inline PNG)."""
    return pg.locator("#interp-frame img:visible").get_attribute("src")


def test_the_interpolation_slider_moves_the_decoded_image_along_the_path(page):
    open_tab(page, "Interpolate")
    click(page, "Interpolate")
    page.wait_for_selector("#interp-path-stats :text('come back within')")
    frames = page.locator("#interp-frame img")
    assert frames.count() == 25
    first = shown(page)
    assert first == frames.nth(0).get_attribute("src")
    seen = []
    for position, k in ((1, 24), (0.5, 12)):
        before = time.perf_counter()
        set_slider(page, "interp-position", position)
        page.wait_for_function("src => document.querySelector('#interp-frame img[alt=\"frame %d\"]')"
                               ".style.display === 'block'" % k, arg=None, polling=5)
        seen.append(time.perf_counter() - before)
        assert shown(page) == frames.nth(k).get_attribute("src")
    pixels = [np.asarray(Image.open(io.BytesIO(base64.b64decode(frames.nth(k).get_attribute("src").split(",")[1]))))
              for k in (0, 24)]
    assert np.abs(pixels[0].astype(int) - pixels[1].astype(int)).mean() > 1  # A's end and B's end differ
    print(f"slider move to the new image on the page: {', '.join(f'{s * 1000:.0f} ms' for s in seen)}")
    assert max(seen) < SLIDER_BUDGET_S, seen
    shot(page, "interpolate-path")
