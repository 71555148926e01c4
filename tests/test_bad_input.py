"""Bad input: damaged checkpoints, a missing data folder, CLI errors, and non-finite losses.

Every failure must be a clear error naming what is wrong (CheckpointError, DataError,
TrainingError), the CLI must say "error: ..." and exit non-zero without a traceback, and a run
stopped by repeated non-finite losses must leave its last good checkpoint loadable.
"""
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from faults import rehash
from lsgm_core.checkpoint import CheckpointError, load_model, read_checkpoint, resolve_checkpoint, save_checkpoint
from lsgm_core.config import load_config
from lsgm_core.data import DataError, load_dataset
from lsgm_core.train import Trainer, TrainingError, main

ROOT = Path(__file__).parents[1]
SMOKE = ROOT / "configs" / "smoke.toml"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Downloads fail at once instead of waiting on network timeouts."""
    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")
    monkeypatch.setattr(urllib.request, "urlopen", no_network)


@pytest.fixture
def ckpt(tiny_checkpoints, tmp_path) -> Path:
    """A private copy of the tiny stage-1 checkpoint folder, to damage."""
    return Path(shutil.copytree(tiny_checkpoints["stage1"], tmp_path / "ckpt"))


def _load_error(path) -> str:
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    return str(e.value)


# --------------------------------------------------------------------------- checkpoints

def test_flipped_bytes(ckpt):
    f = ckpt / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    msg = _load_error(ckpt)
    assert str(f) in msg and "damaged" in msg


def test_truncated_file(ckpt):
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    msg = _load_error(ckpt)
    assert str(f) in msg and "truncated" in msg


@pytest.mark.parametrize("text", ["{not json", "\x00\xff\xfe", "[1, 2]", '{"format": "something-else"}'])
def test_garbage_meta_json(ckpt, text):
    (ckpt / "meta.json").write_bytes(text.encode("latin-1"))
    assert str(ckpt / "meta.json") in _load_error(ckpt)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_missing_file(ckpt, name):
    (ckpt / name).unlink()
    msg = _load_error(ckpt)
    assert str(ckpt / name) in msg and "missing" in msg


def test_missing_meta_and_missing_folder(ckpt, tmp_path):
    (ckpt / "meta.json").unlink()
    assert str(ckpt) in _load_error(ckpt)
    assert str(tmp_path / "nowhere") in _load_error(tmp_path / "nowhere")


def test_unreadable_safetensors_with_a_matching_digest(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    rehash(ckpt, "model.safetensors")
    msg = _load_error(ckpt)
    assert str(ckpt / "model.safetensors") in msg and "safetensors" in msg


def test_wrong_architecture(tiny_checkpoints, tmp_path):
    config, _, tensors = read_checkpoint(tiny_checkpoints["stage1"], parts=("model",))
    config["model"]["latent_channels"] = 8
    path = save_checkpoint(tmp_path / "wrong", config, tensors)
    msg = _load_error(path)
    assert str(path / "model.safetensors") in msg and "architecture" in msg and "shape mismatch" in msg


def test_config_that_builds_no_model(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    config["model"]["kind"] = "nope"
    (ckpt / "config.json").write_text(json.dumps(config))
    rehash(ckpt, "config.json")
    msg = _load_error(ckpt)
    assert str(ckpt / "config.json") in msg and "nope" in msg


def test_run_folder_whose_latest_is_missing(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "latest").write_text("step-00000100\n")
    with pytest.raises(CheckpointError, match="step-00000100"):
        resolve_checkpoint(tmp_path / "run")


def test_cli_resume_from_a_damaged_run(tiny_checkpoints, data_dir, tmp_path, capsys):
    run = Path(shutil.copytree(tiny_checkpoints["stage1"].parents[1], tmp_path / "run"))
    target = resolve_checkpoint(run) / "model.safetensors"
    target.write_bytes(target.read_bytes()[:-10])
    rc = main(["--config", str(SMOKE), "--out", str(run), "--data-dir", str(data_dir), "--resume",
               "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc != 0 and err.startswith("error:") and str(target) in err and "Traceback" not in err


# --------------------------------------------------------------------------- data

def test_missing_data_folder(tmp_path):
    folder = tmp_path / "no-data"
    with pytest.raises(DataError) as e:
        load_dataset("binarized-mnist", "train", folder)
    msg = str(e.value)
    assert str(folder / "mnist") in msg
    assert "train-images-idx3-ubyte" in msg and "train-labels-idx1-ubyte" in msg
    assert "network disabled" in msg  # the download was tried and its failure is reported


def test_cli_missing_data_folder(tmp_path, capsys):
    rc = main(["--config", str(SMOKE), "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path / "no-data"),
               "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc != 0 and err.startswith("error:") and str(tmp_path / "no-data" / "mnist") in err
    assert "Traceback" not in err


def test_cli_error_in_a_real_process(tmp_path):
    """Exit status and stderr of the real process, for a config error (no network involved)."""
    proc = subprocess.run([sys.executable, "-m", "lsgm_core.train", "--config", str(SMOKE), "--out", str(tmp_path),
                           "--set", "train.no_such_key=1"], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode != 0
    assert proc.stderr.startswith("error:") and "no_such_key" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


# --------------------------------------------------------------------------- non-finite losses

def _trainer(data_dir, out, **train) -> Trainer:
    cfg = load_config(SMOKE, {"train": {"batch_size": 16, "log_every": 1, **train}})
    return Trainer(cfg, out, data_dir, device="cpu", show_progress=False)


class _NanGrad(torch.autograd.Function):
    """Identity forward, NaN gradient backward: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def _poison(trainer, steps, where="loss"):
    """Make the model's loss (or its gradient) NaN at the given steps."""
    losses = trainer.model.losses

    def poisoned(x, stage, kl_coeff=1.0):
        out = losses(x, stage, kl_coeff)
        if trainer.step in steps:
            out["loss"] = out["loss"] * float("nan") if where == "loss" else _NanGrad.apply(out["loss"])
        return out

    trainer.model.losses = poisoned


def _record_params(trainer):
    """Wrap train_step to keep the weights before and after each step."""
    seen = {}
    step = trainer.train_step

    def recorded():
        number, before = trainer.step, [p.detach().clone() for p in trainer.model.parameters()]
        stats = step()
        seen[number] = (before, [p.detach().clone() for p in trainer.model.parameters()])
        return stats

    trainer.train_step = recorded
    return seen


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_non_finite_steps_are_skipped(data_dir, tmp_path, where):
    trainer = _trainer(data_dir, tmp_path / "run", max_steps=6)
    _poison(trainer, {2, 3}, where)
    seen = _record_params(trainer)
    result = trainer.train()
    assert result["bad_steps"] == 2 and result["step"] == 6
    skipped = [r["step"] for r in map(json.loads, (tmp_path / "run" / "log.jsonl").read_text().splitlines())
               if "skipped" in r]
    assert skipped == [2, 3]
    for s in (2, 3):  # a skipped step leaves every weight as it was
        assert all(torch.equal(a, b) for a, b in zip(*seen[s]))
    assert not all(torch.equal(a, b) for a, b in zip(*seen[4]))
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert load_model(tmp_path / "run").meta["bad_steps"] == 2


def test_repeated_non_finite_losses_stop_the_run(data_dir, tmp_path):
    run = tmp_path / "run"
    trainer = _trainer(data_dir, run, max_steps=30, ckpt_every=5, max_bad_steps=3)
    _poison(trainer, set(range(12, 30)))
    with pytest.raises(TrainingError, match="3 consecutive steps.*non-finite") as e:
        trainer.train()
    assert str(run) in str(e.value)
    # the last good checkpoint (step 10) is intact and nothing was written after the failure
    assert (run / "latest").read_text().strip() == "step-00000010"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000005", "step-00000010"]
    model = load_model(run)
    assert model.meta["step"] == 10
    assert all(torch.isfinite(p).all() for p in model.parameters())
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "skipped" in r] == [12, 13, 14]

    # as the error advises: lower the learning rate, then --resume (from step 10)
    assert main(["--config", str(SMOKE), "--out", str(run), "--data-dir", str(data_dir), "--resume", "--device", "cpu",
                 "--no-progress", "--max-steps", "12", "--set", "train.lr_vae=1e-5"]) == 0
    config, meta, _ = read_checkpoint(run, parts=())
    assert meta["step"] == 12 and config["train"]["lr_vae"] == 1e-5 and config["train"]["batch_size"] == 16
    assert meta["optimizers"]["vae"][0]["lr"] < 1e-5
