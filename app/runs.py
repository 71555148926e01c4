"""Training runs started from the app: `python -m lsgm_core.train` in a child process.

The process belongs to the server, not to a request or a page: a reload finds it still going,
and its status is read back from the run folder (log.jsonl, the trainer's stdout and stderr).
One run at a time, with one CPU core left to the UI. Stopping sends SIGTERM: the trainer
finishes its step, saves a checkpoint and exits, and the run appears in the model picker.
"""
from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lsgm_core.config import DEFAULTS
from lsgm_core.data import DATASETS

from .paths import ROOT
from .uploads import Uploads, check_name

# Network sizes offered in the Train tab, as trainer config overrides.
SIZES = {
    "tiny": {"model.latent_channels": 4, "model.vae_channels": [16, 32], "model.prior.net.channels": 16,
             "model.prior.net.attention": False, "train.batch_size": 32},
    "small": {"model.latent_channels": 8, "model.vae_channels": [32, 64], "model.prior.net.channels": 32,
              "train.batch_size": 64},
    "base": {},  # lsgm_core's defaults
}
MAX_STEPS = 20_000  # a small run from the UI; longer ones belong to the trainer's CLI


@dataclass
class Run:
    name: str
    out: Path
    max_steps: int
    proc: subprocess.Popen
    started: float
    stop_requested: bool = False


def read_log(out: Path) -> list[dict]:
    """The logged steps of a run so far (a line being written is skipped)."""
    records = []
    try:
        lines = (out / "log.jsonl").read_text().splitlines()
    except OSError:
        return records
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if "loss" in rec:
            records.append(rec)
    return records


class RunManager:
    def __init__(self, runs_dir: Path, data_dir: Path | None, device: str | None):
        self.runs_dir = Path(runs_dir)
        self.data_dir = data_dir
        self.device = device
        # hidden, so that the model picker, which lists runs_dir, does not take them for runs
        self.uploads = Uploads(self.runs_dir / ".uploads")
        self.current: Run | None = None
        self._lock = threading.Lock()
        atexit.register(self.shutdown)

    def start(self, name: str, dataset: str, stage: int, init_from: Path | None, steps: int,
              size: str, lr: float) -> Run:
        check_name("run name", name)
        uploaded = self.uploads.ids()
        if dataset not in (*DATASETS, *uploaded):
            raise ValueError(f"data set must be one of {', '.join([*DATASETS, *uploaded])}; got {dataset!r}")
        if size not in SIZES:
            raise ValueError(f"network size must be one of {', '.join(SIZES)}; got {size!r}")
        out = self.runs_dir / name
        with self._lock:
            if self.current is not None and self.current.proc.poll() is None:
                raise ValueError(f"run {self.current.name!r} is still going; stop it first (one run at a time)")
            if out.exists():
                raise ValueError(f"a run named {name!r} already exists; choose another name")
            sets = {**SIZES[size], "data.dataset": dataset, "train.lr_vae": lr, "train.lr_prior": lr,
                    # ~100 points on the curve, and a checkpoint every fifth of the run
                    "train.log_every": max(1, steps // 100), "train.ckpt_every": max(10, steps // 5),
                    "train.num_threads": max(1, (os.cpu_count() or 2) - 1)}
            cmd = [sys.executable, "-m", "lsgm_core.train", "--out", str(out), "--max-steps", str(steps),
                   "--no-progress"]
            if stage == 2:
                if init_from is None:
                    raise ValueError("stage 2 starts from a stage-1 model: pick one in 'start from'")
                # the stage-1 run's own config keeps the VAE (and data set) that the weights fit
                cmd += ["--config", str(init_from / "config.json")]
                sets = {k: v for k, v in sets.items() if not k.startswith(("model.latent", "model.vae", "data."))}
                sets.update({"train.stage": 2, "train.init_from": str(init_from)})
            elif stage != 1:
                raise ValueError(f"stage must be 1 or 2, got {stage!r}")
            elif dataset in uploaded:
                sets["data.dataset"] = self.uploads.folder_spec(dataset)
            trained_on = (json.loads((init_from / "config.json").read_text())["data"]["dataset"] if stage == 2
                          else sets["data.dataset"])
            images = self.uploads.images_in(trained_on)
            if images is not None:
                # the trainer refuses a data set smaller than one batch
                sets["train.batch_size"] = min(sets.get("train.batch_size", DEFAULTS["train"]["batch_size"]), images)
            cmd += ["--set", *(f"{k}={json.dumps(v)}" for k, v in sets.items())]
            if self.data_dir:
                cmd += ["--data-dir", str(self.data_dir)]
            if self.device:
                cmd += ["--device", self.device]
            out.mkdir(parents=True)
            with open(out / "stdout.txt", "wb") as so, open(out / "stderr.txt", "wb") as se:
                # own session: a Ctrl-C in the app's terminal reaches the app, which stops the run cleanly
                proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=so, stderr=se,
                                        start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            self.current = Run(name, out, steps, proc, time.time())
            return self.current

    def stop(self) -> Run:
        with self._lock:
            run = self.current
            if run is None or run.proc.poll() is not None:
                raise ValueError("no run is going")
            run.stop_requested = True
            run.proc.send_signal(signal.SIGTERM)
            return run

    def status(self) -> dict:
        """Where the current (or last) run stands, for the UI and the API."""
        run = self.current
        if run is None:
            return {"state": "idle", "message": "No run started since the app started."}
        records = read_log(run.out)
        step = records[-1]["step"] if records else 0
        code = run.proc.poll()
        st = {"name": run.name, "model_id": f"runs/{run.name}", "step": step, "max_steps": run.max_steps,
              "loss": records[-1]["loss"] if records else None, "seconds": round(time.time() - run.started, 1)}
        if code is None:
            st["state"] = "stopping" if run.stop_requested else "running"
            st["message"] = ("Stopping: finishing the step and saving a checkpoint…" if run.stop_requested
                             else f"Training: step {step} of {run.max_steps}")
            return st
        result = self._result(run.out)
        if code == 0:
            st["step"] = result.get("step", step)
            st["state"] = "stopped" if result.get("stopped_by_signal") else "finished"
            st["message"] = (f"Run {'stopped' if st['state'] == 'stopped' else 'finished'} at step {st['step']}; "
                             f"its checkpoint is in the model picker as runs/{run.name}")
            if result.get("test_bound_nelbo_1k") is not None:
                st["message"] += f" (test bound NELBO {result['test_bound_nelbo_1k']:.2f} nats)"
        else:
            st["state"] = "failed"
            st["message"] = f"Run failed (exit code {code}): {self._error(run.out)}"
        return st

    @staticmethod
    def _result(out: Path) -> dict:
        lines = (out / "stdout.txt").read_text(errors="replace").strip().splitlines()
        try:
            return json.loads(lines[-1]) if lines else {}
        except ValueError:
            return {}

    @staticmethod
    def _error(out: Path) -> str:
        text = (out / "stderr.txt").read_text(errors="replace").strip().splitlines()
        errors = [line for line in text if line.startswith("error:")]
        # the trainer's own one-line reason if it gave one, else the end of whatever it printed
        return (errors[-1][len("error:"):].strip() if errors else " ".join(text[-3:]))[:600] or "no message"

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop a run still going when the app exits, so no orphan keeps the CPU busy."""
        run = self.current
        if run is not None and run.proc.poll() is None:
            run.proc.send_signal(signal.SIGTERM)
            try:
                run.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                run.proc.kill()
