"""Every endpoint of the app through gradio_client, against a real server: good calls and bad ones.

Bad arguments must come back as a readable error message (never a traceback, a crash or a hang),
and the server must keep serving afterwards.
"""
import concurrent.futures
import csv
import json
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from app.paths import ASSETS, CHECKPOINTS  # noqa: E402
from lsgm_core import load_model  # noqa: E402

MODEL = "checkpoints/tiny-lsgm"
EXAMPLE_A = ASSETS / "examples" / "mnist-3-0.png"
EXAMPLE_B = ASSETS / "examples" / "mnist-8-0.png"


def test_stop_ends_the_running_job_of_its_session_only():
    from app.common import Cancellations, Cancelled

    stops = Cancellations()
    mine, other = SimpleNamespace(session_hash="a"), SimpleNamespace(session_hash="b")
    check_mine, check_other = stops.checker(mine), stops.checker(other)
    time.sleep(0.01)
    stops.request(mine)
    with pytest.raises(Cancelled):
        check_mine()
    check_other()
    stops.checker(mine)()  # a job started after the Stop runs


def connect(app_server) -> Client:
    """A client with room for a busy machine, its downloads in the session's folder, no analytics."""
    return Client(app_server.url, verbose=False, httpx_kwargs={"timeout": 600}, analytics_enabled=False,
                  download_files=str(app_server.root / "downloads"))


@pytest.fixture(scope="module")
def client(app_server):
    return connect(app_server)


def sample(client, model=MODEL, num=4, seed=0, temperature=1.0, solver="fast", log_atol=-5, log_rtol=-5,
           steps=5, alpha_scale=1.0):
    return client.predict(model, num, seed, temperature, solver, log_atol, log_rtol, steps, alpha_scale,
                          api_name="/sample")


def interpolate(client, a, b, model=MODEL, mode="linear_z0", count=5, log_tol=-3):
    a = handle_file(str(a)) if a is not None else None
    b = handle_file(str(b)) if b is not None else None
    return client.predict(model, a, b, mode, count, log_tol, api_name="/interpolate")


def error_of(call, kind=AppError) -> str:
    with pytest.raises(kind) as info:
        call()
    message = str(info.value)
    assert "Traceback" not in message and message.strip(), message
    return message


def test_models_lists_the_allowed_checkpoints(client):
    out = client.predict(api_name="/models")
    ids = [m["id"] for m in out["models"]]
    assert out["default"] == MODEL  # named by checkpoints/DEFAULT
    assert {"checkpoints/tiny-lsgm", "checkpoints/tiny-stage1", "checkpoints/broken"} <= set(ids)


def test_sample_fast_gives_a_grid_and_its_cost(client):
    image, png, stats = sample(client, num=4, steps=6)
    grid = Image.open(image)
    assert grid.size[0] > 2 * 28 and grid.size[1] > 2 * 28  # 2x2 tiles of 28x28, enlarged
    assert Image.open(png).format == "PNG"
    assert "NFE 6" in stats and " s**" in stats


def test_sample_ode_and_alpha_scale(client):
    _, _, stats = sample(client, num=2, solver="ode", log_atol=-3, log_rtol=-3, alpha_scale=0.0)
    assert "solver **ode**" in stats and "alpha 0 × learned" in stats


def test_alpha_control_scales_the_learned_alpha_of_active_channels():
    """The alpha control goes from 0 (N(0, I)) through the learned per-channel alpha (1) and beyond;
    its help text gives the active channels' alphas, not a mean dragged to ~0 by the inactive ones
    (the shipped model has 2 active latent channels of 16)."""
    from app.solver_controls import alpha_summary, scaled_alpha

    model = load_model(CHECKPOINTS / "lsgm-bmnist")
    learned, active = model.prior.alpha().detach(), model.prior.active > 0
    assert scaled_alpha(model, 1.0, "fast") is None  # exactly the model as trained
    assert not scaled_alpha(model, 0.0, "fast").any()
    double = scaled_alpha(model, 2.0, "fast")
    assert torch.allclose(double, 2 * learned) and not double[~active].any()
    assert scaled_alpha(model, 2.0, "distilled") is None  # a student learned the flow at the model's own alpha
    summary, shown = alpha_summary(model), learned[active]
    assert f"on {len(shown)} active latent channels of {len(learned)}" in summary
    assert f"{shown.min():.3f}" in summary and f"{shown.max():.3f}" in summary


def test_latent_map_names_the_space_it_maps():
    """The pixel baseline has no encoder: its map places pixels, and says so."""
    from lsgm_core.latent_map import space_name

    assert space_name(load_model(CHECKPOINTS / "lsgm-bmnist")) == "z0 means"
    assert space_name(load_model(CHECKPOINTS / "sgm-bmnist-pixel")).startswith("pixels")


def test_same_seed_same_images(client):
    a, b = sample(client, seed=7)[0], sample(client, seed=7)[0]
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


@pytest.mark.parametrize("kwargs, expected", [
    ({"num": 0}, "minimum"),
    ({"num": 10_000}, "maximum"),
    ({"num": 2.5}, "whole number"),
    ({"num": "many"}, "many"),
    ({"solver": "euler"}, "euler"),
    ({"solver": "ode", "log_atol": 0}, "maximum"),  # tolerance 1
    ({"steps": 0}, "minimum"),
    ({"alpha_scale": 2.5}, "maximum"),
    ({"alpha_scale": -0.1}, "minimum"),
    ({"temperature": -1}, "minimum"),
    ({"seed": -5}, "minimum"),
    ({"model": "../../../../etc/passwd"}, "unknown model"),
    ({"model": "checkpoints/../checkpoints/tiny-lsgm"}, "unknown model"),
    ({"model": "/etc"}, "unknown model"),
    ({"model": "checkpoints/broken"}, "damaged"),
])
def test_sample_bad_arguments_get_a_clear_error(client, kwargs, expected):
    assert expected in error_of(lambda: sample(client, **kwargs)).lower()


def test_damaged_checkpoint_leaves_the_app_working(client):
    error_of(lambda: sample(client, model="checkpoints/broken"))
    assert "NFE" in sample(client)[2]


def test_trajectory_frames_paths_steps_and_gif(client):
    hat, noisy, paths, sizes, gif, gif_file, stats, _ = client.predict(
        MODEL, 2, 4, 0, "ode", -3, -3, 20, api_name="/trajectory")
    assert Image.open(hat).size == Image.open(noisy).size
    animation = Image.open(gif)
    assert animation.format == "GIF" and animation.n_frames == 4
    for fig in (paths, sizes):
        assert json.loads(fig["plot"])["data"], fig
    assert "NFE" in stats and "steps" in stats


def test_trajectory_bad_arguments(client):
    assert "maximum" in error_of(lambda: client.predict(MODEL, 99, 4, 0, "ode", -3, -3, 20, api_name="/trajectory"))
    assert "minimum" in error_of(lambda: client.predict(MODEL, 2, 1, 0, "ode", -3, -3, 20, api_name="/trajectory"))


@pytest.mark.parametrize("mode", ["linear_z0", "slerp_z1"])
def test_interpolate_shipped_examples(client, mode):
    strip, gif, gif_file, stats = interpolate(client, EXAMPLE_A, EXAMPLE_B, mode=mode, count=5)
    assert Image.open(strip).size[0] > 5 * 28
    assert Image.open(gif).n_frames == 8  # 5 there and 3 back
    assert "5 images" in stats


@pytest.fixture(scope="module")
def odd_uploads(tmp_path_factory):
    """Uploads a user might send: odd modes that are converted, and files that are refused."""
    d = tmp_path_factory.mktemp("uploads")
    digit = np.asarray(Image.open(EXAMPLE_A))
    rgba = np.zeros((60, 40, 4), np.uint8)
    rgba[10:50, 5:35] = (0, 0, 0, 255)  # a dark shape on a transparent background
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    Image.fromarray(digit.astype(np.uint16) * 257).save(d / "sixteen.png")  # mode I;16
    Image.fromarray(digit).convert("P").save(d / "palette.png")
    Image.fromarray(255 - digit).convert("RGB").save(d / "dark-on-light.jpg")
    (d / "not-image.png").write_text("this is text, not a PNG")
    (d / "truncated.png").write_bytes((d / "rgba.png").read_bytes()[:60])
    Image.new("1", (8000, 8000)).save(d / "bomb.png")  # 64 megapixels in a small file
    (d / "huge.png").write_bytes(b"\0" * (11 * 2**20))
    return d


@pytest.mark.parametrize("name, note", [
    ("rgba.png", "transparency composited on white"),
    ("sixteen.png", "16-bit"),
    ("palette.png", "palette"),
    ("dark-on-light.jpg", "inverted"),
])
def test_interpolate_converts_odd_uploads_with_a_note(client, odd_uploads, name, note):
    *_, stats = interpolate(client, odd_uploads / name, EXAMPLE_B)
    assert note in stats


@pytest.mark.parametrize("name, expected", [
    ("not-image.png", "not an image"),
    ("truncated.png", "damaged"),
    ("bomb.png", "megapixel"),
])
def test_interpolate_refuses_bad_uploads(client, odd_uploads, name, expected):
    assert expected in error_of(lambda: interpolate(client, odd_uploads / name, EXAMPLE_B)).lower()


def test_uploads_over_the_size_limit_are_refused(client, odd_uploads):
    message = error_of(lambda: interpolate(client, odd_uploads / "huge.png", EXAMPLE_B), Exception)
    assert "size" in message.lower() or "413" in message


def test_interpolate_missing_image(client):
    assert "two images" in error_of(lambda: interpolate(client, None, EXAMPLE_B))


def test_interpolate_refuses_server_paths_that_were_not_uploaded(app_server):
    """A raw API call naming a file on the server (not an upload) must not reach the app."""
    example = str(EXAMPLE_B)
    files = [{"path": p, "meta": {"_type": "gradio.FileData"}} for p in ("/etc/passwd", example)]
    body = json.dumps({"data": [MODEL, *files, "linear_z0", 5, -3]}).encode()
    call = urllib.request.Request(app_server.url + "gradio_api/call/interpolate", data=body,
                                  headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(call, timeout=60) as r:
        event_id = json.loads(r.read())["event_id"]
    with urllib.request.urlopen(f"{app_server.url}gradio_api/call/interpolate/{event_id}", timeout=600) as r:
        stream = r.read().decode()
    assert "event: error" in stream and "event: complete" not in stream, stream[:500]
    assert "root:" not in stream  # nothing of the file came back


@pytest.mark.slow
def test_latent_map_small(client):
    start = time.perf_counter()
    fig, stats, csv_path = client.predict(MODEL, "mnist", 200, 20, 0, api_name="/latent_map")
    data = json.loads(fig["plot"])["data"]
    thumbs = [p for trace in data for p in trace["customdata"]]  # one image per point
    assert len(thumbs) == 220 and all(p.startswith("data:image/png;base64,") for p in thumbs)
    assert "Linear probe on z0 means" in stats and "UMAP of z0 means" in json.loads(fig["plot"])["layout"]["title"]["text"]
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 220 and {r["kind"] for r in rows} == {"data", "sample"}
    first = time.perf_counter() - start
    start = time.perf_counter()
    _, stats, _ = client.predict(MODEL, "mnist", 200, 20, 0, api_name="/latent_map")
    assert "from the cache" in stats and time.perf_counter() - start < max(5.0, first)


def test_latent_map_bad_arguments(client):
    assert "maximum" in error_of(lambda: client.predict(MODEL, "mnist", 50_000, 0, 0, api_name="/latent_map"))
    assert "cifar" in error_of(lambda: client.predict(MODEL, "cifar", 200, 0, 0, api_name="/latent_map")).lower()


def wait_for(client, states, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = client.predict(api_name="/train_status")
        if st["state"] in states:
            return st
        time.sleep(1)
    pytest.fail(f"training never reached {states}: {st}")


def test_train_start_stop_keeps_a_checkpoint(client, app_server):
    name = f"api-{int(time.time())}"
    st = client.predict(name, "binarized-mnist", 1, None, 5000, "tiny", -3, api_name="/train_start")
    assert st["state"] in ("running", "finished") and st["name"] == name
    assert "still going" in error_of(
        lambda: client.predict("other", "mnist", 1, None, 100, "tiny", -3, api_name="/train_start"))
    deadline = time.time() + 600  # the child process imports torch and loads MNIST first
    while client.predict(api_name="/train_status")["step"] == 0 and time.time() < deadline:
        time.sleep(1)
    client.predict(api_name="/train_stop")
    st = wait_for(client, ("stopped", "finished", "failed"))
    assert st["state"] == "stopped", st
    assert 0 < st["step"] < 5000
    run = app_server.root / "runs" / name
    assert (run / "latest").is_file()
    ids = [m["id"] for m in client.predict(api_name="/models")["models"]]
    assert f"runs/{name}" in ids
    assert "NFE" in sample(client, model=f"runs/{name}")[2]  # a stage-1 model samples from N(0, I)
    assert "no run is going" in error_of(lambda: client.predict(api_name="/train_stop"))


def test_train_stage_two_from_a_stage_one_model(client):
    name = f"api-s2-{int(time.time())}"
    client.predict(name, "mnist", 2, "checkpoints/tiny-stage1", 10, "tiny", -3, api_name="/train_start")
    st = wait_for(client, ("stopped", "finished", "failed"))
    assert st["state"] == "finished", st
    listed = {m["id"]: m["description"] for m in client.predict(api_name="/models")["models"]}
    assert "stage 2, step 10" in listed[f"runs/{name}"]


@pytest.mark.parametrize("args, expected", [
    (("../escape", "mnist", 1, None, 10, "tiny", -3), "run name"),
    (("ok-name", "cifar100", 1, None, 10, "tiny", -3), "cifar100"),
    (("ok-name", "mnist", 2, None, 10, "tiny", -3), "stage-1"),
    (("ok-name", "mnist", 2, "checkpoints/tiny-lsgm", 10, "tiny", -3), "not a stage-1"),
    (("ok-name", "mnist", 1, None, 0, "tiny", -3), "minimum"),
    (("ok-name", "mnist", 1, None, 10, "huge", -3), "huge"),
])
def test_train_bad_arguments(client, args, expected):
    assert expected in error_of(lambda: client.predict(*args, api_name="/train_start"))


def memory_mib(pid: int) -> dict[str, float]:
    """Resident memory of a process now (VmRSS) and at its peak so far (VmHWM), in MiB; zeros where
    the system has no /proc."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return {"VmRSS": 0.0, "VmHWM": 0.0}
    fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


@pytest.mark.slow
def test_twenty_concurrent_clients_are_all_served(app_server):
    """All 20 served, in bounded memory: the queue runs two samples at a time whatever the number of
    clients, so the server's peak RSS grows by under 100 MiB (measured: 8 MiB, from about 890 MiB)."""
    def one(i):
        return sample(connect(app_server), num=2, seed=i, steps=3)[2]

    deadline = time.time() + 600  # the background warm-up (UMAP compiled) must not count as the clients'
    while "warm-up done" not in app_server.stderr.read_text() and time.time() < deadline:
        time.sleep(0.5)
    before = memory_mib(app_server.proc.pid)
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    assert all("NFE 3" in r for r in results)
    after = memory_mib(app_server.proc.pid)
    assert after["VmHWM"] - before["VmHWM"] < 100, (before, after)


def listening_addresses(table: Path, port: int) -> set[str]:
    """Local addresses (hex, as the kernel writes them) of sockets listening on `port`."""
    found = set()
    for line in table.read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, p = local.split(":")
        if state == "0A" and int(p, 16) == port:  # 0A: LISTEN
            found.add(address)
    return found


def test_server_listens_on_loopback_only(app_server):
    """Bound to 127.0.0.1, not to every interface: read from the kernel's tables of listening sockets."""
    assert app_server.url.startswith("http://127.0.0.1:")
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc/net/tcp on this system")
    assert listening_addresses(Path("/proc/net/tcp"), app_server.port) == {"0100007F"}  # 127.0.0.1
    if Path("/proc/net/tcp6").exists():
        assert not listening_addresses(Path("/proc/net/tcp6"), app_server.port)
