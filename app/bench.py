"""Benchmark of the app as a user meets it; prints one JSON object.

    python -m app.bench [--checkpoint PATH] [--clicks N] [--map-points N] [--device D] [--runtime R]

- cold start: from launching `python -m app` to the first page served (and the CPU seconds the
  server spent until then, which do not depend on what else runs on the machine);
- a Latent map of --map-points test images (and 200 model samples), after one untimed map;
- a Sample click at the tab's default settings, through the API, after one untimed click;
- for a model with a distilled student, the Sample tab's Live grid in chromium (app.live_timing):
  median ms from a slider release to the new grid on the page (goal, issue 14: 150 ms).
Goals on a laptop CPU (issue 4): ready in under 10 s, a default sample in under 1 s.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from . import live_timing
from .__main__ import app_runtime
from .launched import launched_app
from .paths import CHECKPOINTS


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def bench_app(args) -> dict:
    """Cold start, default Sample click and Latent map timings of `python -m app`."""
    from gradio_client import Client

    from .tabs import sample as sample_tab

    app_args = (["--device", args.device, "--runtime", args.runtime]
                + (["--checkpoint", args.checkpoint] if args.checkpoint else []))
    with tempfile.TemporaryDirectory() as tmp, launched_app(app_args, Path(tmp)) as server:
        url, cold = server.url, server.cold_start_s
        cold_cpu = _cpu_seconds(server.proc.pid)
        client = Client(url, verbose=False, analytics_enabled=False, download_files=tmp)
        model = client.predict(api_name="/models")["default"]
        if model is None:
            raise ValueError(f"no model to serve: put one in {CHECKPOINTS} or pass --checkpoint")
        # maps first: the first map of a size waits for UMAP's compilation (the app's warm-up
        # thread), the second (a new seed, so not from the cache) is what a user gets from then
        # on; the clicks after it are not slowed by that compilation either
        client.predict(model, "mnist", args.map_points, 200, 0, api_name="/latent_map")
        t = time.perf_counter()
        client.predict(model, "mnist", args.map_points, 200, 1, api_name="/latent_map")
        latent = time.perf_counter() - t
        defaults = (model, *sample_tab.DEFAULTS.values())  # the Sample tab as it opens
        client.predict(*defaults, api_name="/sample")
        clicks, reported = [], []
        for _ in range(args.clicks):
            t = time.perf_counter()
            stats = client.predict(*defaults, api_name="/sample")[2]
            clicks.append(time.perf_counter() - t)
            reported.append(float(stats.split("**")[-2].split()[0]))  # "**0.41 s**": the solver's own time
        live = live_timing.live_figures(client, url, model)
    return {"model": model, "runtime": app_runtime(args.runtime, args.device), "cold_start_to_first_page_s": round(cold, 2), "cold_start_server_cpu_s": round(cold_cpu, 2),
            "sample_click_default_s": round(statistics.median(clicks), 3),
            "sample_click_solver_s": round(statistics.median(reported), 3), "sample_clicks": args.clicks,
            f"latent_map_{args.map_points}_points_s": round(latent, 2), **live, "cpu_count": os.cpu_count()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m app.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="model to serve (default: the app's default from checkpoints/)")
    ap.add_argument("--clicks", type=int, default=5, help="timed default Sample clicks (default 5)")
    ap.add_argument("--map-points", type=int, default=5000, help="points of the timed latent map (default 5000)")
    ap.add_argument("--device", default="cpu", help="device of the server (default cpu)")
    ap.add_argument("--runtime", default="auto", choices=("auto", "torch", "onnxruntime"),
                    help="the server's --runtime for the distilled student (default auto)")
    args = ap.parse_args(argv)
    try:
        print(json.dumps(bench_app(args)), flush=True)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
