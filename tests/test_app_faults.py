"""The app under faults and load: hostile checkpoints in its model folder, bad interpolation
arguments, where uploads land, a long request beside small ones, and the bound of the queue.

The shared server (app_harness) takes the hostile checkpoints and bad arguments; the load tests run
the same app (app.ui.build_app) in this process, with the Trajectory tab's solver held at a gate
that the test opens, so "a long request is running" is a fact, not a guess about timing.
"""
import json
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from app_harness import free_port
from faults import pickle_payload, rehash
from test_app_api import EXAMPLE_A, EXAMPLE_B, MODEL, connect, error_of, interpolate, sample
from test_app_api import client  # noqa: F401  (the module's gradio_client session)

WAIT_S = 600  # a bound on waiting for a busy shared machine, never a timing assertion


# --------------------------------------------------------------------------- hostile checkpoints

@pytest.fixture
def hostile_models(app_server, tmp_path):
    """Checkpoints that look like models in the server's checkpoints/ folder, removed afterwards:
    a pickle whose unpickling creates `marker` under the name model.safetensors (meta.json forged to
    carry its SHA-256), a meta.json that is valid JSON but not an object, and one whose files are
    named outside the folder."""
    root = app_server.root / "checkpoints"
    marker = tmp_path / "code-ran"
    made = {}
    for name in ("hostile-pickle", "hostile-meta", "hostile-paths"):
        made[name] = Path(shutil.copytree(root / "tiny-lsgm", root / name))
    (made["hostile-pickle"] / "model.safetensors").write_bytes(pickle_payload(marker))
    rehash(made["hostile-pickle"], "model.safetensors")
    (made["hostile-meta"] / "meta.json").write_text("[1, 2]")
    meta = json.loads((made["hostile-paths"] / "meta.json").read_text())
    meta["files"]["../../../etc/passwd"] = "0" * 64
    (made["hostile-paths"] / "meta.json").write_text(json.dumps(meta))
    yield SimpleNamespace(ids=[f"checkpoints/{n}" for n in made], marker=marker)
    for path in made.values():
        shutil.rmtree(path)


def test_hostile_checkpoints_are_refused_and_the_app_keeps_its_model(client, hostile_models):
    listed = [m["id"] for m in client.predict(api_name="/models")["models"]]
    assert MODEL in listed  # the listing survives them
    for model_id in hostile_models.ids:
        message = error_of(lambda: sample(client, model=model_id))
        assert model_id.split("/")[1] in message, message  # the error names the checkpoint
    assert not hostile_models.marker.exists()  # no code from the files ran
    assert "NFE" in sample(client)[2]  # and the default model still samples


# --------------------------------------------------------------------------- arguments and uploads

@pytest.mark.parametrize("kwargs, expected", [
    ({"count": 0}, "minimum"),
    ({"count": 1_000_000}, "maximum"),
    ({"count": "ten"}, "ten"),
    ({"count": None}, "slider"),  # refused by Gradio itself, naming the control
    ({"mode": "cubic"}, "cubic"),
    ({"log_tol": 0}, "maximum"),  # tolerance 1
    ({"log_tol": -1000}, "minimum"),  # tolerance 0
    ({"model": "../checkpoints/tiny-lsgm"}, "unknown model"),
])
def test_interpolate_bad_arguments_get_a_clear_error(client, kwargs, expected):
    assert expected in error_of(lambda: interpolate(client, EXAMPLE_A, EXAMPLE_B, **kwargs)).lower()


def test_uploads_land_in_the_apps_own_temp_folder(app_server):
    """The upload route stores a file under the server's GRADIO_TEMP_DIR, whatever name it is sent
    with (a name with a path in it included)."""
    boundary = "lsgm-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"../../escape.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + EXAMPLE_A.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(app_server.url + "gradio_api/upload", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=WAIT_S) as r:
        (stored,) = json.loads(r.read())
    temp = (app_server.root / "gradio").resolve()
    assert Path(stored).resolve().is_relative_to(temp), stored
    assert Path(stored).read_bytes() == EXAMPLE_A.read_bytes()


# --------------------------------------------------------------------------- load

@pytest.fixture(scope="module")
def gated_app(app_server, tmp_path_factory):
    """The app in this process on the shared server's checkpoints, its Trajectory runs held at a
    gate: each waits, once `entered` is set, until the test sets `release`."""
    from lsgm_core import solvers

    from app.common import Context
    from app.images import Outputs
    from app.models import Registry
    from app.runs import RunManager
    from app.ui import build_app, launch_options

    gate = SimpleNamespace(entered=threading.Event(), release=threading.Event())
    sample_fn = solvers.sample

    def gated(*args, **kwargs):
        if kwargs.get("record_times"):  # Trajectory's call (Sample's has none)
            gate.entered.set()
            gate.release.wait(WAIT_S)
        return sample_fn(*args, **kwargs)

    root = tmp_path_factory.mktemp("gated-app")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(solvers, "sample", gated)
        ctx = Context(Registry(app_server.root / "checkpoints", root / "runs"), Outputs(root), None, "cpu")
        ctx.services["runs"] = RunManager(root / "runs", None, "cpu")
        demo = build_app(ctx)
        _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                                **launch_options(ctx))
        server = SimpleNamespace(url=url, root=root, gate=gate)
        server.client = connect(server)
        try:
            yield server
        finally:
            gate.release.set()
            demo.close()


TRAJECTORY_STATS = 6  # /trajectory's outputs: frames, noisy frames, paths, step sizes, GIF, its file, stats, student paths


def start_long_request(server):
    """A Trajectory request, running and held at the gate when this returns."""
    server.gate.entered.clear()
    server.gate.release.clear()
    job = server.client.submit(MODEL, 2, 4, 0, "fast", -3, -3, 5, api_name="/trajectory")
    assert server.gate.entered.wait(WAIT_S)
    return job


def test_a_long_request_does_not_block_small_ones(gated_app):
    """While one Trajectory runs (it would run for ever), three Sample requests are served."""
    long = start_long_request(gated_app)
    try:
        for seed in range(3):
            assert "NFE 3" in sample(gated_app.client, num=2, seed=seed, steps=3)[2]
        assert not long.done()  # the small ones were served while the long one still ran
    finally:
        gated_app.gate.release.set()
    assert "NFE" in long.result(timeout=WAIT_S)[TRAJECTORY_STATS]


def call(url: str, api: str, data: list) -> str:
    """POST a request to the queue as any HTTP client would; its event id."""
    request = urllib.request.Request(f"{url}gradio_api/call/{api}", data=json.dumps({"data": data}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=WAIT_S) as r:
        return json.loads(r.read())["event_id"]


def test_the_queue_is_bounded(gated_app):
    """With a Trajectory running, MAX_QUEUE more requests wait their turn; the next ones, small or
    not, are refused at once with HTTP 503 "Queue is full" instead of piling up; once the long one
    ends, the waiting ones are served and the server takes requests again."""
    from app.ui import MAX_QUEUE

    long = start_long_request(gated_app)
    try:
        # Trajectory calls that fail their argument check when their turn comes (99 paths): they
        # wait in the slow group behind the long one, and cost nothing once they run
        waiting = [call(gated_app.url, "trajectory", [MODEL, 99, 4, 0, "fast", -3, -3, 5]) for _ in range(MAX_QUEUE)]
        # one more slow request, and a small one (Interpolate, in the quick group): both refused
        for api, data in [("trajectory", [MODEL, 99, 4, 0, "fast", -3, -3, 5]),
                          ("interpolate", [MODEL, None, None, "linear_z0", 5, -3])]:
            with pytest.raises(urllib.error.HTTPError) as refused:
                call(gated_app.url, api, data)
            assert refused.value.code == 503 and "Queue is full" in refused.value.read().decode()
    finally:
        gated_app.gate.release.set()
    assert "NFE" in long.result(timeout=WAIT_S)[TRAJECTORY_STATS]
    for event in waiting:
        with urllib.request.urlopen(f"{gated_app.url}gradio_api/call/trajectory/{event}", timeout=WAIT_S) as r:
            assert "event: error" in r.read().decode()  # each was served: its argument error came back
    assert "NFE 3" in sample(gated_app.client, num=2, steps=3)[2]
