"""The Compare tab: the picked LSGM and a pixel-space baseline at one seed and the same solver settings,
through gradio_client's `/compare` and in chromium, on a real server whose checkpoints are the tiny
LSGM (the default) and the tiny pixel baseline, both on binarized MNIST."""
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.images import grid
from app.models import Registry
from app.tabs.compare import baselines
from lsgm_core import load_model
from lsgm_core.solvers import sample

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402
from test_app_api import error_of  # noqa: E402

MODEL, BASELINE = "checkpoints/tiny-lsgm", "checkpoints/tiny-pixel"


@pytest.fixture(scope="module")
def client(compare_server):
    return Client(compare_server.url, verbose=False, analytics_enabled=False, httpx_kwargs={"timeout": 600},
                  download_files=str(compare_server.root / "downloads"))


def compare(client, model=MODEL, baseline=BASELINE, num=4, seed=3, solver="fast", log_atol=-5, log_rtol=-5, steps=5):
    return client.predict(model, baseline, num, seed, solver, log_atol, log_rtol, steps, api_name="/compare")


def copy_on(src: Path, dst: Path, dataset: str) -> None:
    """A copy of a checkpoint whose config says it was trained on `dataset` (only listed here, never loaded)."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["data"]["dataset"] = dataset
    (dst / "config.json").write_text(json.dumps(config))


def test_the_baseline_starts_as_a_pixel_model_of_the_picked_models_data_set(tiny_checkpoints, pixel_checkpoint,
                                                                              tmp_path):
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    registry = Registry(ck, tmp_path / "runs")
    shutil.copytree(tiny_checkpoints["stage2"], ck / "lsgm-bmnist")
    assert baselines(registry, "checkpoints/lsgm-bmnist") == ([], None)
    copy_on(pixel_checkpoint, ck / "a-pixel-fashion", "fashion-mnist")  # listed first, by name
    shutil.copytree(pixel_checkpoint, ck / "b-pixel-bmnist")
    copy_on(tiny_checkpoints["stage2"], ck / "lsgm-fashion", "fashion-mnist")
    copy_on(tiny_checkpoints["stage2"], ck / "lsgm-cifar", "cifar10")
    pixel = ["checkpoints/a-pixel-fashion", "checkpoints/b-pixel-bmnist"]
    assert baselines(registry, "checkpoints/lsgm-bmnist") == (pixel, "checkpoints/b-pixel-bmnist")
    assert baselines(registry, "checkpoints/lsgm-fashion") == (pixel, "checkpoints/a-pixel-fashion")
    assert baselines(registry, "checkpoints/lsgm-cifar") == (pixel, pixel[0])  # none of its data set: the first
    assert baselines(registry, "not/listed") == (pixel, pixel[0])


def test_compare_gives_both_grids_their_costs_and_the_ratios(client, tiny_checkpoints, pixel_checkpoint):
    out = compare(client)
    model_png, model_stats, baseline_png, baseline_stats, ratios = out
    for png, stats, checkpoint, name in ((model_png, model_stats, tiny_checkpoints["stage2"], MODEL),
                                         (baseline_png, baseline_stats, pixel_checkpoint, BASELINE)):
        # each grid is its model's own samples at that seed, as Sample draws them
        want = grid(sample(load_model(checkpoint), 4, "fast", steps=5, seed=3).images)
        want = np.asarray(want.convert("L"), np.int16)
        got = np.asarray(Image.open(png).convert("L"), np.int16)
        assert got.shape == want.shape and np.abs(got - want).max() <= 1  # the server's thread count may round
        assert stats.startswith(f"**{name}**") and "**NFE 5**" in stats and " s**" in stats
    assert "4 samples each · seed 3 · solver **fast** (5 steps) for both" in ratios
    assert "**1.00×** the NFE" in ratios and float(re.search(r"\*\*([\d.]+)×\*\* the wall time", ratios)[1]) > 0
    again = compare(client)
    assert np.array_equal(np.asarray(Image.open(again[2])), np.asarray(Image.open(baseline_png)))
    # the API's defaults: the tab as it opens, the baseline a pixel model of the default model's data set
    params = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/compare"]["parameters"]
    assert [p["parameter_default"] for p in params] == [MODEL, BASELINE, 16, 0, "fast", -5, -5, 10]


def test_an_adaptive_solve_on_both_sides(client):
    _, model_stats, _, baseline_stats, ratios = compare(client, num=2, solver="ode", log_atol=-3, log_rtol=-3)
    nfe = [int(s.split("**NFE ")[1].split("**")[0]) for s in (model_stats, baseline_stats)]
    assert min(nfe) > 0 and "(atol 1e-3, rtol 1e-3)" in ratios and f"**{nfe[1] / nfe[0]:.2f}×** the NFE" in ratios


@pytest.mark.parametrize("kwargs, expected", [
    ({"model": BASELINE}, "checkpoints/tiny-pixel is a model of kind pixel, and the model picker takes one of kind "
                          "lsgm: pick an LSGM"),
    ({"baseline": MODEL}, "checkpoints/tiny-lsgm is a model of kind lsgm, and the Baseline takes one of kind pixel: "
                          "pick a pixel-space model"),
    ({"baseline": ""}, "pick a Baseline (a pixel-space model)"),
    ({"baseline": "../tiny-pixel"}, "unknown model"),
    ({"solver": "distilled", "steps": 1}, "the model: this model has no distilled student: make one with"),
    ({"num": 65}, "maximum"),
    ({"steps": 0}, "minimum"),
])
def test_bad_input_is_refused_with_what_to_do(client, kwargs, expected):
    assert expected in error_of(lambda: compare(client, **kwargs))


def test_without_a_pixel_model_the_tab_says_so(app_server):
    """The shared test app has no pixel-space model: the endpoint says what to put where."""
    message = error_of(lambda: compare(Client(app_server.url, verbose=False, analytics_enabled=False), baseline=""))
    assert "No pixel-space model to compare with" in message and "checkpoints/" in message


@pytest.mark.browser
@pytest.mark.slow
def test_compare_tab_in_the_browser(compare_server):
    from test_app_browser import (ARGS, ARTIFACTS, CHROMIUM, SOLVER_LABELS, WAIT_MS, click, open_tab, rendered_image,
                                  set_slider, shot)

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium, or set LSGM_TEST_CHROMIUM)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.set_default_timeout(WAIT_MS)
            page.goto(compare_server.url)
            page.wait_for_selector("#model-info :text('tiny-lsgm')")
            open_tab(page, "Compare")
            assert page.locator("#compare-baseline input").input_value() == BASELINE
            assert not page.locator("#compare-missing").is_visible()
            click(page, "Compare")
            for side in ("model", "baseline"):
                rendered_image(page, f"#compare-{side}-grid")
                page.wait_for_selector(f"#compare-{side}-stats :text('NFE 10')")
            page.wait_for_selector("#compare-ratios :text('the wall time')")
            assert "16 samples each" in page.inner_text("#compare-ratios")
            # each grid is labelled with the model it shows
            page.wait_for_selector(f"#compare-model-grid :text('{MODEL} (latent)')")
            page.wait_for_selector(f"#compare-baseline-grid :text('{BASELINE} (pixel space)')")
            shot(page, "compare")
            # Stop ends a long comparison at its next network evaluation
            page.locator("#compare-solver").get_by_label(SOLVER_LABELS["sde"]).check()
            set_slider(page, "compare-steps", 2000)
            set_slider(page, "compare-num", 64)
            click(page, "Compare")
            page.wait_for_selector(":text('network evaluations')")  # the running job's progress
            click(page, "Stop")
            deadline = time.time() + 120
            while "run stopped by the user" not in compare_server.stderr.read_text():
                assert time.time() < deadline, "the comparison did not end after Stop"
                time.sleep(0.5)
        except Exception:
            shot(page, "failed-test_compare_tab_in_the_browser")
            raise
        finally:
            browser.close()
