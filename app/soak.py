"""Soak of the app: many clients sending mixed requests for minutes; prints one JSON line.

    python -m app.soak [--clients 20] [--minutes 10] [--url URL [--pid PID] [--server-log FILE]]
                       [--checkpoint PATH] [--device cpu] [--seed 0]

Without --url it launches `python -m app` itself (and reads its log). Each client is its own
gradio_client session, looping until the time is up over a mix of the endpoints the server has
(from its API description): Sample, Interpolate, Trajectory, Latent map (small maps, so most
come from the app's cache of recent maps), Compare where the server lists a pixel baseline, the
live endpoints where present, and bad inputs
(each must be refused with a clear message; some carry NaN over the raw queue protocol).
Requests are small ones, as a user clicking around sends: the soak is about lasting, not speed.

Reported: the endpoints of the mix, the server's resident memory (RSS, sampled every second: start, end, peak; needs its
pid, known when launched here or given with --pid), the queue's length over time (Gradio's
/gradio_api/queue/status, sampled every second), latency percentiles per endpoint, answers by
kind, and whether anything was lost: every request must get a result or a clear refusal within
--call-timeout, and the server's log must hold no traceback but deliberate refusals.
Exit status 0 when nothing was lost and every answer was as expected, else 1 (2: could not run).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import random
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from .answers import BadAnswer, has_non_finite, internal_errors, judge_refusal, raw_call
from .launched import launched_app
from .paths import ASSETS

EXAMPLES = sorted((ASSETS / "examples").glob("mnist-*.png"))[:2]

# name: (weight, overrides of the parameters' defaults); small requests, as the tabs' users send
GOOD = {
    "/sample": (6, {"num": 4, "steps": 5}),
    "/sample_live": (3, {"num": 4, "on": True}),
    "/interpolate": (3, {"mode": "linear_z0", "count": 5}),
    "/interpolation_path": (1, {"mode": "linear_z0"}),
    "/trajectory": (2, {"num": 2, "frames": 4, "solver": "fast", "steps": 5}),
    "/latent_map": (1, {"points": 200, "samples": 20}),
    "/compare": (1, {"num": 2, "solver": "fast", "steps": 3}),  # where the server lists a pixel baseline
    "/models": (1, {}),
    "/train_status": (1, {}),
}
# bad inputs: (endpoint, overrides); each must be refused with a message
BAD = [
    ("/sample", {"num": 0}), ("/sample", {"num": 10_000}), ("/sample", {"solver": "nope"}),
    ("/sample", {"num": float("nan")}), ("/sample", {"temperature": float("inf")}),
    ("/sample", {"model_id": "../../etc/passwd"}), ("/sample", {"seed": -1}), ("/sample", {"steps": "many"}),
    ("/trajectory", {"frames": 1000}), ("/trajectory", {"num": float("nan")}),
    ("/interpolate", {"count": 0}), ("/interpolate", {"a": None}), ("/interpolate", {"mode": "cubic"}),
    ("/latent_map", {"points": 5}), ("/latent_map", {"dataset": "imagenet"}),
    ("/train_start", {"steps": 0}), ("/train_start", {"size": "huge"}),
    ("/compare", {"num": 0}), ("/compare", {"baseline_id": "../../etc/passwd"}),
]
WEIGHT_BAD = 4


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    s = sorted(values)

    def q(p):
        return round(s[min(len(s) - 1, int(p * len(s)))], 3)

    return {"n": len(s), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": round(s[-1], 3)}


class Soak:
    def __init__(self, url: str, args, folder: Path):
        from gradio_client import Client, handle_file

        self.url, self.args, self.folder = url, args, folder
        self.Client, self.handle_file = Client, handle_file
        probe = self.client()
        api = probe.view_api(return_format="dict", print_info=False)["named_endpoints"]
        self.fn_index = {e.api_name: e.fn_index for e in probe.endpoints.values()}
        self.params = {name: spec["parameters"] for name, spec in api.items()}
        model = probe.predict(api_name="/models")["default"]
        if model is None:
            raise ValueError("the server has no model to serve")
        self.model = model
        self.mix = [(n, w, o) for n, (w, o) in GOOD.items() if n in self.params and self.servable(n)]
        self.good = len(self.mix)
        self.mix += [(n, WEIGHT_BAD / len(BAD), o) for n, o in BAD if n in self.params]
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = {}
        # kinds of answer: a result, a clear refusal (queue_full among them), an unclear refusal,
        # the wrong one (a good request refused, a bad one accepted), or none at all (lost)
        self.answers = dict.fromkeys(("results", "refusals", "queue_full", "unclear", "wrong", "lost"), 0)
        self.problems: list[str] = []

    def servable(self, name: str) -> bool:
        """Whether a good request can be served here: /compare needs a pixel baseline, which its
        Baseline parameter's default names where the server lists one."""
        defaults = {p["parameter_name"]: p.get("parameter_default") for p in self.params[name]}
        return name != "/compare" or bool(defaults.get("baseline_id"))

    def client(self):
        return self.Client(self.url, verbose=False, analytics_enabled=False,
                           download_files=str(self.folder / "downloads"),
                           httpx_kwargs={"timeout": self.args.call_timeout})

    def arguments(self, name: str, overrides: dict) -> list:
        values = []
        for i, p in enumerate(self.params[name]):
            key = p["parameter_name"]
            if key in overrides:
                v = overrides[key]
            elif key == "model_id":
                v = self.model
            elif "filepath" in p["python_type"]["type"] and EXAMPLES:
                v = self.handle_file(str(EXAMPLES[i % len(EXAMPLES)]))
            else:
                v = p.get("parameter_default")
            values.append(v)
        return values

    def one(self, client, name: str, overrides: dict, bad: bool) -> None:
        from gradio_client.exceptions import AppError
        from gradio_client.utils import QueueError

        label = f"{name} (bad input)" if bad else name
        args = self.arguments(name, overrides)
        start = time.perf_counter()
        try:
            if has_non_finite(args):
                ok, out = raw_call(self.url, self.fn_index[name], args, self.args.call_timeout)
            else:
                try:
                    client.submit(*args, api_name=name).result(timeout=self.args.call_timeout)
                    ok, out = True, None
                except AppError as e:
                    ok, out = False, str(e)
            kind, problem = ("results", None) if ok else ("refusals", None)
            if not ok:
                judge_refusal(name, out)
                if not bad:
                    kind, problem = "wrong", f"{name} refused a good request: {out[:200]}"
            elif bad:
                kind, problem = "wrong", f"{name} accepted {overrides}"
        except QueueError:
            kind, problem = "queue_full", None  # a clear refusal: Gradio's queue is bounded (app.ui.MAX_QUEUE)
        except BadAnswer as e:
            kind, problem = "unclear", str(e)
        except Exception as e:  # no answer in time, or the connection itself failed: the request is lost
            kind, problem = "lost", f"{label}: {type(e).__name__}: {e}"
        elapsed = time.perf_counter() - start
        with self.lock:
            self.answers[kind] += 1
            if kind != "lost":
                self.latency.setdefault(label, []).append(elapsed)
            if problem:
                self.problems.append(problem)

    def client_loop(self, seed: int, until: float) -> None:
        rng = random.Random(seed)
        client = self.client()
        names, weights = [(n, o) for n, _, o in self.mix], [w for _, w, _ in self.mix]
        bad_from = self.good
        while time.monotonic() < until:
            i = rng.choices(range(len(names)), weights)[0]
            self.one(client, *names[i], bad=i >= bad_from)
            time.sleep(rng.uniform(0, self.args.think_s))  # a user looks at the result before the next click

    def run(self, pid: int | None, log: Path | None) -> dict:
        samples, stop = {"rss_mib": [], "queue": []}, threading.Event()
        t0 = time.monotonic()

        def monitor():
            while True:
                t = round(time.monotonic() - t0, 1)
                if pid is not None:
                    samples["rss_mib"].append((t, rss_mib(pid)))
                try:
                    with urllib.request.urlopen(self.url + "gradio_api/queue/status", timeout=10) as r:
                        samples["queue"].append((t, json.load(r)["queue_size"]))
                except OSError:
                    pass
                if stop.wait(1.0):
                    return

        log_start = log.stat().st_size if log else 0
        watcher = threading.Thread(target=monitor, daemon=True)
        watcher.start()
        until = time.monotonic() + 60 * self.args.minutes
        with concurrent.futures.ThreadPoolExecutor(self.args.clients) as pool:
            for f in [pool.submit(self.client_loop, self.args.seed + c, until) for c in range(self.args.clients)]:
                f.result()
        stop.set()
        watcher.join()
        wall = time.monotonic() - t0
        errors = None
        if log:
            with open(log, encoding="utf-8", errors="replace") as f:
                f.seek(log_start)
                errors = internal_errors(f.read())
        rss = [m for _, m in samples["rss_mib"]]
        queue = [q for _, q in samples["queue"]]
        every = max(1, len(samples["queue"]) // 20)  # about 20 points of each series in the report
        return {
            "ok": not self.problems and not errors, "clients": self.args.clients, "minutes": self.args.minutes,
            "wall_s": round(wall, 1), "requests": sum(self.answers.values()), "lost": self.answers["lost"],
            "endpoints": [n for n, _, _ in self.mix[:self.good]], "answers": self.answers,
            "problems": self.problems[:20],
            "server_internal_errors": errors,
            "rss_mib": {"start": rss[0], "end": rss[-1], "peak": max(rss), "growth": round(rss[-1] - rss[0], 1),
                        "series": samples["rss_mib"][::every]} if rss else None,
            "queue": {"max": max(queue), "mean": round(sum(queue) / len(queue), 2),
                      "series": samples["queue"][::every]} if queue else None,
            "latency_s": {k: percentiles(v) for k, v in sorted(self.latency.items())},
        }


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise ValueError(f"no VmRSS for process {pid}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m app.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=20, help="concurrent client sessions (default 20)")
    ap.add_argument("--minutes", type=float, default=10, help="how long (default 10)")
    ap.add_argument("--url", help="a running app (default: launch python -m app here)")
    ap.add_argument("--pid", type=int, help="the running app's process, for its memory (with --url)")
    ap.add_argument("--server-log", type=Path, help="the running app's stderr, for internal errors (with --url)")
    ap.add_argument("--checkpoint", help="model to serve when launching (default: the app's default)")
    ap.add_argument("--device", default="cpu", help="device of a launched server (default cpu)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the clients' choices (default 0)")
    ap.add_argument("--think-s", type=float, default=1.0, help="each client waits up to this long between requests")
    ap.add_argument("--call-timeout", type=float, default=300, help="a request unanswered after this is lost")
    args = ap.parse_args(argv)
    if args.clients < 1 or args.minutes <= 0:
        ap.error("--clients must be at least 1 and --minutes above 0")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if args.url:
                url = args.url.rstrip("/") + "/"
                report = Soak(url, args, Path(tmp)).run(args.pid, args.server_log)
            else:
                app_args = ["--device", args.device] + (["--checkpoint", args.checkpoint] if args.checkpoint else [])
                with launched_app(app_args, Path(tmp)) as server:
                    report = Soak(server.url, args, Path(tmp)).run(server.proc.pid, server.log)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
