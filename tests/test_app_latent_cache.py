"""The Latent map of a shipped model from its shipped map (issue 14), through gradio_client on a real
server: the map of the test images comes first, without the model's samples, then the whole map."""
import base64
import json
import shutil

import numpy as np
import pytest
from app_harness import serve

from app.paths import CHECKPOINTS
from app.tabs.latent_map import PLACING
from lsgm_core import latent_map, load_model

pytestmark = pytest.mark.slow
SHIPPED = "lsgm-bmnist-fast"  # the smallest shipped LSGM with a map


@pytest.fixture(scope="module")
def client(data_dir, tmp_path_factory):
    from gradio_client import Client

    root = tmp_path_factory.mktemp("latent-cache-app")
    ck = root / "checkpoints"
    ck.mkdir()
    shutil.copytree(CHECKPOINTS / SHIPPED, ck / SHIPPED)
    (ck / "DEFAULT").write_text(f"{SHIPPED}\n")
    with serve(root, ck, data_dir) as server:
        yield Client(server.url, verbose=False, analytics_enabled=False, download_files=str(root / "downloads"))


def array(values) -> np.ndarray:
    """A plotly JSON array: a list, or a typed array {"dtype", "bdata": base64} as plotly 6 writes numpy's."""
    if isinstance(values, dict):
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"])
    return np.asarray(values)


def traces(fig: dict) -> dict[str, np.ndarray]:
    return {t["name"]: np.stack([array(t["x"]), array(t["y"])], 1) for t in json.loads(fig["plot"])["data"]}


def test_a_shipped_map_shows_its_images_first_then_the_placed_samples(client):
    job = client.submit(f"checkpoints/{SHIPPED}", "mnist", 300, 20, 0, api_name="/latent_map")
    job.result()
    outputs = job.outputs()
    assert len(outputs) == 2, [o[1] for o in outputs]
    (first, first_stats, _), (whole, stats, _) = outputs
    assert PLACING.format(20) in first_stats and PLACING.format(20) not in stats and "shipped with the model" in stats
    first, whole = traces(first), traces(whole)
    assert "model samples" not in first and len(whole.pop("model samples")) == 20
    assert first.keys() == whole.keys()
    for name, xy in first.items():  # the test images sit where the shipped map put them, in both
        np.testing.assert_array_equal(xy, whole[name])
    cache = latent_map.load_cache(load_model(CHECKPOINTS / SHIPPED), CHECKPOINTS / SHIPPED)
    shown = np.concatenate(list(first.values()))
    np.testing.assert_allclose(np.sort(shown, 0), np.sort(cache.xy[:300], 0), atol=1e-5)
