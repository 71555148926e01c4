"""`python -m app` in its own process, for the app's tools that measure it from outside (app.bench,
app.soak): on a free port of 127.0.0.1, its temporary files and log in a folder of the caller's."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

from .paths import ROOT


@contextlib.contextmanager
def launched_app(app_args: list[str], folder: Path):
    """The server, from launch until its first page is served: url, proc, log (its stderr, a file:
    a full pipe would stall the server) and cold_start_s. Stopped with Ctrl-C's signal on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(folder / "gradio"),
           "PYTHONPATH": str(ROOT)}
    log = folder / "server.log"
    start = time.perf_counter()
    with open(log, "wb") as err:
        server = subprocess.Popen([sys.executable, "-m", "app", "--no-browser", "--port", str(port), *app_args],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        while True:
            if server.poll() is not None:
                raise ValueError(f"the app exited: {log.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200 and r.read():
                        break
            except OSError:
                time.sleep(0.05)
        yield SimpleNamespace(url=url, proc=server, log=log, cold_start_s=time.perf_counter() - start)
    finally:
        stop(server, 30)


def stop(server: subprocess.Popen, grace_s: float) -> None:
    """Ctrl-C's signal, so the app shuts down as a user's would; killed after grace_s."""
    server.send_signal(signal.SIGINT)
    try:
        server.wait(grace_s)
    except subprocess.TimeoutExpired:
        server.kill()
