"""One time-boxed GPU session: CUDA checks, then the GPU-trained models and their measurements.

    python tools/gpu_session.py --data-dir DATA --out OUT [--budget 420] [--device cuda]

Jobs run side by side (a GPU has room for all of them; each is launch-bound at these sizes):
  checks     the CUDA tests: tests/test_cuda.py (samples of every solver, log p and NELBO against
             the CPU's) and the fp32/bf16 training test on CUDA
  bmnist     configs/bmnist_large_stage{1,2}.toml -> OUT/models/lsgm-bmnist-large, its test NELBO
             (ODE prior term, 10k images) and FID of 10k samples
  fmnist     configs/fmnist_stage{1,2}.toml -> OUT/models/lsgm-fmnist, NELBO and FID
  pixel      configs/bmnist_pixel_vp.toml -> OUT/models/sgm-bmnist-pixel, its FID of fast sampling,
             then `bench sampling` of checkpoints/lsgm-bmnist-samples against it
  shipped    evaluate the CPU-trained checkpoints/lsgm-bmnist and vae-bmnist-stage1 likewise
  fast       configs/bmnist_fast_stage2.toml (batch 256) -> OUT/models/lsgm-bmnist-fast, its training
             bound and the FID of fast and ODE sampling
  fmnistpixel configs/fmnist_pixel_vp.toml -> OUT/models/sgm-fmnist-pixel, its FID of fast sampling
Each training stage gets a share of --budget: a short `bench train` measures its step rate under
the others' load, and train.max_steps is set so that the schedule ends in its share (SIGTERM, which
saves, is the safety net). Every command's JSON line goes to OUT/results.jsonl as it finishes, its
stderr to OUT/logs/, so a session cut short still returns what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
PY = sys.executable
LOCK = threading.Lock()


class Session:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.logs = self.out / "logs"
        self.runs = self.out / "runs"
        self.models = self.out / "models"
        for d in (self.logs, self.runs, self.models):
            d.mkdir(parents=True, exist_ok=True)
        self.start = time.time()

    def at(self, frac: float) -> float:
        """The wall-clock time at this fraction of the budget."""
        return self.start + frac * self.args.budget

    def record(self, job: str, entry: dict) -> None:
        entry = {"job": job, "t": round(time.time() - self.start, 1), **entry}
        with LOCK, open(self.out / "results.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
        print(json.dumps(entry)[:400], flush=True)

    def run(self, job: str, name: str, cmd: list[str], deadline: float, env: dict | None = None) -> dict | None:
        """Run a CLI until it ends or the deadline (then SIGTERM, which makes training save);
        record its JSON line, return it parsed. `env` adds variables to its environment."""
        begin = time.time()
        with open(self.logs / f"{job}-{name}.err", "w") as err:
            proc = subprocess.Popen([PY, *cmd], cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
                                    env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})})
            try:
                stdout, _ = proc.communicate(timeout=max(1.0, deadline - time.time()))
                stopped = False
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)
                try:
                    stdout, _ = proc.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    stdout, _ = proc.communicate()
                stopped = True
        result = None
        for line in reversed(stdout.strip().splitlines()):
            try:
                result = json.loads(line)
                break
            except json.JSONDecodeError:
                continue
        self.record(job, {"step": name, "cmd": " ".join(cmd), "rc": proc.returncode, "stopped_at_deadline": stopped,
                          "seconds": round(time.time() - begin, 1), "result": result})
        return result

    def steps_for(self, job: str, config: str, stage: int, until: float) -> int:
        """Steps of `config`'s stage that fit until `until`, from a short timed run (85% margin)."""
        a = self.args
        bench = self.run(job, f"calibrate{stage}",
                         ["-m", "lsgm_core.bench", "train", "--config", config, "--stages", str(stage),
                          "--steps", str(a.calib_steps), "--warmup", "3", "--device", a.device,
                          "--data-dir", a.data_dir], until)
        rate = (bench or {}).get(f"stage{stage}", {}).get("ms_per_step")
        if not rate:
            return a.min_steps
        return max(a.min_steps, int(0.85 * (until - time.time()) * 1000 / rate))

    def train(self, job: str, config: str, stage: int, run: Path, until: float, extra: list[str]) -> Path:
        steps = self.steps_for(job, config, stage, until)
        every = max(10, steps // 10)
        self.run(job, f"stage{stage}", ["-m", "lsgm_core.train", "--config", config, "--out", str(run),
                                        "--data-dir", self.args.data_dir, "--device", self.args.device,
                                        "--max-steps", str(steps), "--no-progress", "--set",
                                        f"train.eval_every={every}", f"train.ckpt_every={every * 2}", *extra],
                 until)
        return run

    def export(self, job: str, run: Path, name: str) -> Path:
        from lsgm_core.checkpoint import export_checkpoint

        dst = self.models / name
        try:
            export_checkpoint(run, dst, fold_ema=True)
            self.record(job, {"step": "export", "path": str(dst),
                              "mb": round(sum(f.stat().st_size for f in dst.iterdir()) / 1e6, 2)})
        except Exception as e:  # recorded, not raised: the other jobs go on
            self.record(job, {"step": "export", "error": repr(e)})
        return dst

    def evaluate(self, job: str, name: str, checkpoint: Path | str, until: float, bound_stage: int | None = None) -> None:
        """The training bound on binarized MNIST (seconds), then `evaluate --fid` (ODE prior term)."""
        a = self.args
        if bound_stage:
            self.run(job, f"{name}-bound", ["tools/nelbo_bound.py", str(checkpoint), str(bound_stage), a.data_dir],
                     until)
        cmd = ["-m", "lsgm_core.evaluate", "--checkpoint", str(checkpoint), "--data-dir", a.data_dir,
               "--device", a.device, "--batch-size", "1000", "--no-progress", "--fid"]
        if a.eval_limit:
            cmd += ["--limit", str(a.eval_limit)]
        self.run(job, f"{name}-evaluate", cmd, until)

    # the jobs ---------------------------------------------------------------------------------
    def job_checks(self) -> None:
        """The CUDA tests (tests/test_cuda.py, and the bf16 training test on CUDA); their outcome and
        measured differences land in OUT/logs/cuda-tests.xml, the record holds pytest's exit code."""
        self.run("checks", "pytest", ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py",
                                      "tests/test_training.py::test_bf16_precision_and_periodic_test_evaluation[cuda]",
                                      "-o", "junit_family=xunit1", f"--junitxml={self.logs / 'cuda-tests.xml'}"],
                 self.at(0.9),
                 # 4 threads: the tests' CPU halves, beside training jobs, took over 10 times their
                 # 19 s alone with every core's thread competing
                 env={"LSGM_TEST_DATA_DIR": self.args.data_dir, "OMP_NUM_THREADS": "4"})

    def job_bmnist(self) -> None:
        s1 = self.train("bmnist", "configs/bmnist_large_stage1.toml", 1, self.runs / "bmnist-large-stage1",
                        self.at(0.32), [])
        s2 = self.train("bmnist", "configs/bmnist_large_stage2.toml", 2, self.runs / "bmnist-large-stage2",
                        self.at(0.78), [f"train.init_from={s1}"])
        self.evaluate("bmnist", "large", self.export("bmnist", s2, "lsgm-bmnist-large"), self.at(1.0), 2)

    def job_fmnist(self) -> None:
        s1 = self.train("fmnist", "configs/fmnist_stage1.toml", 1, self.runs / "fmnist-stage1", self.at(0.25),
                        ["train.num_threads=2"])
        s2 = self.train("fmnist", "configs/fmnist_stage2.toml", 2, self.runs / "fmnist-stage2", self.at(0.65),
                        [f"train.init_from={s1}", "train.num_threads=2"])
        self.evaluate("fmnist", "fmnist", self.export("fmnist", s2, "lsgm-fmnist"), self.at(1.0))

    def job_pixel(self) -> None:
        run = self.train("pixel", "configs/bmnist_pixel_vp.toml", 1, self.runs / "bmnist-pixel", self.at(0.55),
                         ["train.num_threads=2"])
        pixel = self.export("pixel", run, "sgm-bmnist-pixel")
        self.quality("pixel", pixel, ["fast:10", "fast:20", "fast:40"], self.at(0.7))
        self.run("pixel", "bench-sampling", ["-m", "lsgm_core.bench", "sampling", "--checkpoint",
                                             "checkpoints/lsgm-bmnist-samples", "--baseline", str(pixel),
                                             "--device", self.args.device, "--sizes", *self.args.bench_sizes],
                 self.at(1.0))

    def quality(self, job: str, checkpoint: Path, runs: list[str], until: float) -> None:
        self.run(job, "quality", ["-m", "lsgm_core.bench", "quality", "--checkpoint", str(checkpoint), "--runs", *runs,
                                  "--device", self.args.device, "--data-dir", self.args.data_dir], until)

    def job_fast(self) -> None:
        """The CPU-sampling model (32-channel prior on lsgm-bmnist's VAE), trained for longer than a CPU can."""
        run = self.train("fast", "configs/bmnist_fast_stage2.toml", 2, self.runs / "bmnist-fast", self.at(0.6),
                         ["train.batch_size=256", "train.num_threads=2"])
        model = self.export("fast", run, "lsgm-bmnist-fast")
        self.run("fast", "bound", ["tools/nelbo_bound.py", str(model), "2", self.args.data_dir], self.at(0.75))
        self.quality("fast", model, ["fast:5", "fast:10", "fast:20", "ode:1e-5"], self.at(1.0))

    def job_fmnistpixel(self) -> None:
        """The Fashion-MNIST pixel baseline (lsgm-fmnist's), which a CPU cannot train in a session."""
        run = self.train("fmnistpixel", "configs/fmnist_pixel_vp.toml", 1, self.runs / "fmnist-pixel", self.at(0.75),
                         ["train.num_threads=2"])
        self.quality("fmnistpixel", self.export("fmnistpixel", run, "sgm-fmnist-pixel"), ["fast:20", "fast:40"],
                     self.at(1.0))

    def job_shipped(self) -> None:
        self.evaluate("shipped", "lsgm-bmnist", "checkpoints/lsgm-bmnist", self.at(0.6))
        self.evaluate("shipped", "vae", "checkpoints/vae-bmnist-stage1", self.at(1.0))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget", type=float, default=420, help="seconds for the whole session")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--jobs", nargs="+", default=["checks", "bmnist", "fmnist", "pixel", "shipped"])
    ap.add_argument("--calib-steps", type=int, default=20)
    ap.add_argument("--min-steps", type=int, default=50)
    ap.add_argument("--bench-sizes", nargs="+", default=["16", "256"])
    ap.add_argument("--eval-limit", type=int, help="evaluate only the first N test images (a dry run)")
    args = ap.parse_args(argv)
    session = Session(args)
    def job(name):
        try:
            getattr(session, f"job_{name}")()
        except Exception as e:  # recorded; the other jobs go on
            session.record(name, {"step": "error", "error": repr(e)})

    threads = [threading.Thread(target=job, args=(j,), name=j) for j in args.jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    session.record("session", {"step": "done", "seconds": round(time.time() - session.start, 1)})
    for run in session.runs.iterdir():  # the logs travel back; the bulky training states do not
        shutil.rmtree(run / "checkpoints", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
