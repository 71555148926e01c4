"""A real `python -m app` server for the app tests: one per test session, on a free port.

Its checkpoints/ folder holds the tiny trained LSGM (the default), its stage-1 VAE, and a copy
whose weights file is truncated (a damaged checkpoint the app must refuse without falling over).
"""
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from app.launched import stop

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 600  # a timeout, not a wait: on a shared, busy machine imports alone can take minutes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_server(tiny_checkpoints, data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    ck = root / "checkpoints"
    ck.mkdir()
    shutil.copytree(tiny_checkpoints["stage2"], ck / "tiny-lsgm")
    shutil.copytree(tiny_checkpoints["stage1"], ck / "tiny-stage1")
    broken = shutil.copytree(tiny_checkpoints["stage2"], ck / "broken")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (ck / "DEFAULT").write_text("tiny-lsgm\n")
    with serve(root, ck, data_dir) as server:
        yield server


@pytest.fixture(scope="session")
def compare_server(tiny_checkpoints, pixel_checkpoint, data_dir, tmp_path_factory):
    """A server of the tiny LSGM (the default) and the tiny pixel baseline, both on binarized MNIST:
    what the Compare tab needs (shared by its tests and the soak)."""
    models = {"tiny-lsgm": tiny_checkpoints["stage2"], "tiny-pixel": pixel_checkpoint}
    with serve_models(tmp_path_factory.mktemp("compare-app"), models, "tiny-lsgm", data_dir) as server:
        yield server


@contextlib.contextmanager
def serve_models(root: Path, models: dict[str, Path], default: str, data_dir: Path):
    """`serve` over a checkpoints folder under `root` holding copies of `models` ({name: checkpoint}),
    `default` the one the page opens on."""
    ck = root / "checkpoints"
    ck.mkdir()
    for name, path in models.items():
        shutil.copytree(path, ck / name)
    (ck / "DEFAULT").write_text(f"{default}\n")
    with serve(root, ck, data_dir) as server:
        yield server


@contextlib.contextmanager
def serve(root: Path, ck: Path, data_dir: Path):
    """`python -m app` on a free port over the checkpoints folder `ck`, its files under `root`; stopped on exit."""
    port = free_port()
    out, err = root / "stdout.txt", root / "stderr.txt"
    env = {**os.environ, "GRADIO_TEMP_DIR": str(root / "gradio"), "TMPDIR": str(root / "tmp"),
           "PYTHONPATH": str(REPO), "GRADIO_ANALYTICS_ENABLED": "False"}
    (root / "tmp").mkdir()
    start = time.perf_counter()
    with open(out, "w") as so, open(err, "w") as se:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "--no-browser", "--port", str(port), "--device", "cpu",
             "--checkpoints-dir", str(ck), "--runs-dir", str(root / "runs"), "--data-dir", str(data_dir)],
            cwd=REPO, env=env, stdout=so, stderr=se)
    url = None
    while url is None:
        if proc.poll() is not None or time.perf_counter() - start > STARTUP_TIMEOUT_S:
            proc.kill()
            pytest.fail(f"the app did not start (exit {proc.poll()}):\n{err.read_text()[-3000:]}")
        url = next((line.split()[2] for line in out.read_text().splitlines()
                    if line.startswith("LSGM explorer: ")), None)
        time.sleep(0.2)
    try:
        yield SimpleNamespace(url=url, root=root, port=port, proc=proc, stderr=err,
                              cold_start_s=time.perf_counter() - start)
    finally:
        stop(proc, 60)
