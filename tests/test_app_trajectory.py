"""The Trajectory tab's distilled paths (issue 14), through gradio_client on a real server whose
models are the tiny LSGM with a small student of its own and the tiny LSGM without one."""
import re

import numpy as np
import pytest
import torch
from app_harness import serve_models
from PIL import Image
from test_distill import distilled  # noqa: F401  (the tiny LSGM with a small student)

from app.images import LABEL_MARGIN, display_scale, tile_box, to_pil
from app.tabs.trajectory import NO_STUDENT
from lsgm_core import load_model
from lsgm_core.solvers import sample, student_grid

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(distilled, tiny_checkpoints, data_dir, tmp_path_factory):  # noqa: F811
    from gradio_client import Client

    root = tmp_path_factory.mktemp("trajectory-app")
    models = {"tiny-student": distilled, "tiny-lsgm": tiny_checkpoints["stage2"]}
    with serve_models(root, models, "tiny-student", data_dir) as server:
        yield Client(server.url, verbose=False, analytics_enabled=False, download_files=str(root / "downloads"))


def tile(picture: np.ndarray, index: int, ncol: int, side: int) -> np.ndarray:
    left, top, right, bottom = tile_box(index, ncol, side, side)
    dx, dy = LABEL_MARGIN
    return picture[top + dy:bottom + dy, left + dx:right + dx]


def grey(image: torch.Tensor) -> np.ndarray:
    return np.asarray(to_pil(image, display_scale(image.shape[-2])).convert("L"), dtype=np.int16)


def test_the_students_paths_start_from_the_runs_z1_and_end_on_its_samples(client, distilled):  # noqa: F811
    n, seed = 3, 5
    *_, stats, student = client.predict("checkpoints/tiny-student", n, 4, seed, "fast", -3, -3, 5,
                                        api_name="/trajectory")
    assert student["visible"] is True
    picture = np.asarray(Image.open(student["value"]).convert("L"), dtype=np.int16)
    model = load_model(distilled)
    z1 = torch.randn((n, *model.prior.shape), generator=torch.Generator().manual_seed(seed))  # sample()'s draw
    run_z0 = sample(model, n, "fast", steps=5, z1=z1).z0
    grid = lambda k: student_grid(model.prior.sde, k, model.student.denoise_t)  # noqa: E731
    columns = [round(t, 6) for t in grid(max(model.student.steps))]
    side = model.image_size - 2 * model.crop
    start = grey(model.decode_images(z1, model.student.decoder)[0])
    gaps = {int(k): float(g) for k, g in re.findall(r"(\d) steps? \*\*([0-9.]+)\*\*", stats)}
    assert list(gaps) == list(model.student.steps), stats
    for block, k in enumerate(model.student.steps):
        want = sample(model, n, "distilled", steps=k, z1=z1)
        on_grid = {round(t, 6) for t in grid(k)}
        for i in range(n):
            row = (block * n + i) * len(columns)
            # one grey level: the server's thread count may round differently
            assert np.abs(tile(picture, row + len(columns) - 1, len(columns), side) - grey(want.images[i])).max() <= 1
            for c, t in enumerate(columns[1:-1], 1):
                cell = tile(picture, row + c, len(columns), side)
                assert (t in on_grid) == (cell != 128).any(), (k, t)  # 128: the grid's grey, an empty cell
        assert np.abs(tile(picture, block * n * len(columns), len(columns), side) - start).max() <= 1
        rms = ((want.z0 - run_z0).pow(2).mean().sqrt() / run_z0.std()).item()
        assert gaps[k] == pytest.approx(rms, abs=2e-3)


def test_a_model_without_a_student_says_so_and_hides_the_picture(client):
    *_, stats, student = client.predict("checkpoints/tiny-lsgm", 2, 3, 0, "fast", -3, -3, 5, api_name="/trajectory")
    assert NO_STUDENT in stats and student["visible"] is False and not student.get("value")
