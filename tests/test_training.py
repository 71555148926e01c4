"""Tests of training on real binarized MNIST: the NELBO falls, checkpoints round-trip bit-exactly,
--resume continues the very same loss curve, the CLI's contract (one JSON line, exit 0, --help),
stage 2's detection of inactive channels, and a 2-process DDP run ending with equal weights.
"""
import copy
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lsgm_core.checkpoint import export_checkpoint, load_model, read_checkpoint, save_checkpoint
from lsgm_core.config import load_config
from lsgm_core.data import load_dataset
from lsgm_core.model import build_model
from lsgm_core.train import Trainer, bound_nelbo, kl_per_channel

ROOT = Path(__file__).parents[1]
SMOKE = ROOT / "configs" / "smoke.toml"
# what the loss curves of two runs may differ in
TIMING_KEYS = {"seconds", "images_per_s"}


def _config(**sections) -> dict:
    return load_config(SMOKE, sections)


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def test_training_lowers_the_nelbo(tiny_checkpoints, data_dir):
    """The conftest's 60-step stage-1 run against the same model at its initialisation.

    Measured: 648 nats at initialisation, 326 after 60 steps (500 test images): a 320-nat drop.
    Asserting half of it leaves room for changes to the tiny config without passing a broken run.
    """
    trained = load_model(tiny_checkpoints["stage1"])
    torch.manual_seed(0)
    untrained = build_model(trained.config).eval()
    test_set = load_dataset("binarized-mnist", "test", data_dir)
    before = bound_nelbo(untrained, test_set, stage=1, limit=500)
    after = bound_nelbo(trained, test_set, stage=1, limit=500)
    assert before - after > 160, (before, after)
    # the stage-2 model keeps a finite bound of the same order with its SGM prior
    stage2 = load_model(tiny_checkpoints["stage2"])
    nelbo2 = bound_nelbo(stage2, test_set, stage=2, limit=500)
    assert nelbo2 < before - 160, (before, nelbo2)


def test_checkpoint_round_trip_is_bit_exact(tiny_checkpoints, tmp_path):
    _, meta, saved = read_checkpoint(tiny_checkpoints["stage2"], parts=("model", "ema", "train"))
    assert meta["step"] == 40 and meta["stage"] == 2 and set(saved) == {"model", "ema", "train"}

    def assert_equal(state, reference):
        assert set(state) == set(reference)
        for k, v in reference.items():
            assert state[k].dtype == v.dtype and torch.equal(state[k], v), k

    model = load_model(tiny_checkpoints["stage2"], use_ema=False)
    assert_equal(model.state_dict(), saved["model"])
    with_ema = load_model(tiny_checkpoints["stage2"])
    assert_equal(with_ema.prior.state_dict(), saved["ema"])
    assert not all(torch.equal(saved["ema"][k], saved["model"][f"prior.{k}"]) for k in saved["ema"])

    # save and load again; weights off the bf16/fp32 grid and extreme values survive too
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["encoder.net.0.bias"][:3] = torch.tensor([1e-38, -3.4e38, 1.0 + 2 ** -23])  # subnormal, huge, 1 + ulp
    path = save_checkpoint(tmp_path / "copy", model.config, {"model": state, "ema": saved["ema"]}, {"step": 7})
    again = load_model(path, use_ema=False)
    assert_equal(again.state_dict(), state)
    assert again.meta["step"] == 7


def test_loaded_models_use_channels_last_without_changing_results(tiny_checkpoints, pixel_checkpoint):
    """load_model lays convolution weights out channels-last (faster on oneDNN and cuDNN); the
    samples agree with the standard layout's to float rounding (measured: 2e-6 on the default model)."""
    from lsgm_core.solvers import sample

    for path in (tiny_checkpoints["stage2"], pixel_checkpoint):
        model = load_model(path)
        convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
        plain = load_model(path).to(memory_format=torch.contiguous_format)
        assert plain.prior.net.conv_in.weight.is_contiguous()
        a, b = (sample(m, 4, "fast", steps=5, seed=0) for m in (model, plain))
        assert (a.z0 - b.z0).abs().max() < 1e-4 and (a.images - b.images).abs().max() < 1e-4
        # the training losses draw the same noise for a seed in either layout (randn_like would not)
        x = torch.rand(8, 1, 32, 32).round()
        losses = []
        for m in (model, plain):
            torch.manual_seed(5)
            losses.append(m.losses(x, stage=2)["loss"].item())
        assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_export_keeps_the_model_and_folding_the_ema_halves_the_prior(tiny_checkpoints, tmp_path):
    """An export (plain, or with the EMA folded into the weights) loads as the same model: same
    state, same losses for the same seed; the folded one has no ema.safetensors."""
    reference = load_model(tiny_checkpoints["stage2"])
    x = torch.rand(8, 1, 32, 32).round()
    for fold in (False, True):
        path = export_checkpoint(tiny_checkpoints["stage2"], tmp_path / f"fold-{fold}", {"note": 1}, fold_ema=fold)
        _, meta, parts = read_checkpoint(path, parts=("model", "ema", "train"))
        assert set(parts) == ({"model"} if fold else {"model", "ema"}) and meta["metrics"]["note"] == 1
        model = load_model(path)
        for k, v in reference.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), k
        torch.manual_seed(3)
        a = reference.losses(x, stage=2)["nelbo"]
        torch.manual_seed(3)
        assert torch.equal(model.losses(x, stage=2)["nelbo"], a)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU")])])
def test_bf16_precision_and_periodic_test_evaluation(data_dir, tmp_path, device):
    """train.precision = bf16 trains (finite, close to fp32 at the first step, same seed), on the CPU
    and on a GPU; train.eval_every logs the test bound at those steps; an unknown precision is refused."""
    first = {}
    for precision in ("fp32", "bf16"):
        cfg = _config(train={"max_steps": 4, "precision": precision, "eval_every": 2, "eval_images": 50,
                             "log_every": 1})
        Trainer(cfg, tmp_path / precision, data_dir, device=device, show_progress=False).train()
        log = _log(tmp_path / precision)
        evals = [r for r in log if "test_bound_nelbo" in r]
        assert [r["step"] for r in evals] == [2, 4] and all(r["eval_images"] == 50 for r in evals)
        assert all(torch.isfinite(torch.tensor(r["test_bound_nelbo"])) for r in evals)
        first[precision] = next(r for r in log if "loss" in r)["loss"]
    assert first["bf16"] != first["fp32"] and abs(first["bf16"] - first["fp32"]) < 0.02 * abs(first["fp32"])
    with pytest.raises(ValueError, match="train.precision"):
        Trainer(_config(train={"precision": "fp8"}), tmp_path / "bad", data_dir, device=device, show_progress=False)


def test_a_pixel_run_logs_the_fid_of_its_samples(data_dir, tmp_path):
    """train.eval_fid on a pixel model: the FID logged at each eval step is that of the saved model's
    own seed-0 fast samples (EMA weights) against as many test images; no NELBO bound is logged."""
    from lsgm_core.features import fid_against_test_set
    from lsgm_core.solvers import sample

    cfg = load_config(ROOT / "configs" / "pixel_smoke.toml",
                      {"train": {"max_steps": 4, "eval_every": 2, "eval_fid": 24, "num_threads": 1}})
    ckpt = Trainer(cfg, tmp_path, data_dir, device="cpu", show_progress=False).train()["checkpoint"]
    evals = [r for r in _log(tmp_path) if "test_fid" in r]
    assert [r["step"] for r in evals] == [2, 4] and all(r["fid_samples"] == 24 for r in evals)
    assert not any("test_bound_nelbo" in r for r in _log(tmp_path))
    images = sample(load_model(ckpt), 24, "fast", seed=0, batch_size=500).images
    assert evals[-1]["test_fid"] == pytest.approx(fid_against_test_set(images, "binarized-mnist", data_dir, n=24),
                                                  rel=1e-3)


def test_resume_continues_the_loss_curve(data_dir, tmp_path):
    """20 steps in one go, against 10 steps stopped by SIGTERM and 10 more with the CLI's --resume
    into the same folder: every logged loss is identical (each step's randomness is seeded by
    (seed, step, rank), and the optimiser moments and EMA are restored exactly).

    All three segments use one thread: with different thread counts the CPU kernels sum in
    different orders, and the curves part in the 5th digit after ten steps (measured).
    """
    cfg = _config(train={"stage": 2, "max_steps": 20, "batch_size": 16, "log_every": 5, "ckpt_every": 10,
                         "warmup_steps": 4, "seed": 3, "num_threads": 1})
    threads = torch.get_num_threads()
    try:
        _resume_and_compare(cfg, data_dir, tmp_path)
    finally:
        torch.set_num_threads(threads)


def _resume_and_compare(cfg, data_dir, tmp_path):
    full = Trainer(copy.deepcopy(cfg), tmp_path / "full", data_dir, device="cpu", show_progress=False).train()
    assert full["step"] == 20 and full["bad_steps"] == 0

    split = tmp_path / "split"
    first = Trainer(copy.deepcopy(cfg), split, data_dir, device="cpu", show_progress=False)
    step = first.train_step

    def stop_after_step_10():
        stats = step()
        if first.step == 10:  # after the 10th step: the trainer's own SIGTERM handler stops the loop there
            os.kill(os.getpid(), signal.SIGTERM)
        return stats

    first.train_step = stop_after_step_10
    r1 = first.train()
    assert r1["stopped_by_signal"] and r1["step"] == 10
    assert (split / "latest").read_text().strip() == "step-00000010"

    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps(cfg))
    proc = subprocess.run([sys.executable, "-m", "lsgm_core.train", "--config", str(cfg_file), "--out", str(split),
                           "--data-dir", str(data_dir), "--device", "cpu", "--resume", "--no-progress"],
                          capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # the CLI's stdout is one JSON line
    r2 = json.loads(lines[0])
    assert r2["step"] == 20 and r2["stage"] == cfg["train"]["stage"] and r2["bad_steps"] == 0

    log_full, log_split = _log(tmp_path / "full"), _log(split)
    assert [r["step"] for r in log_split] == [5, 10, 15, 20]
    assert _without_timing(log_split) == _without_timing(log_full)
    assert r2["test_bound_nelbo_1k"] == full["test_bound_nelbo_1k"]
    final_full = read_checkpoint(tmp_path / "full", parts=("model", "ema"))[2]
    final_split = read_checkpoint(split, parts=("model", "ema"))[2]
    for part in ("model", "ema"):
        for k, v in final_full[part].items():
            assert torch.equal(final_split[part][k], v), (part, k)


def test_cli_help():
    proc = subprocess.run([sys.executable, "-m", "lsgm_core.train", "--help"], capture_output=True, text=True,
                          cwd=ROOT, env=_env(), timeout=120)
    assert proc.returncode == 0
    assert "usage: python -m lsgm_core.train" in proc.stdout and "--resume" in proc.stdout


def test_stage2_init_detects_inactive_channels(tiny_checkpoints, data_dir, tmp_path):
    """Channels whose stage-1 KL is under train.inactive_kl_threshold get prior.active = 0.

    The threshold is put between the channels' measured KLs, so that some are inactive and some not."""
    stage1 = load_model(tiny_checkpoints["stage1"])
    kl = kl_per_channel(stage1, load_dataset("binarized-mnist", "train", data_dir)).tolist()
    low, high = sorted(kl)[len(kl) // 2 - 1: len(kl) // 2 + 1]
    assert low < high
    threshold = (low + high) / 2
    inactive = [c for c, v in enumerate(kl) if v < threshold]

    trainer = Trainer(_config(train={"stage": 2, "init_from": str(tiny_checkpoints["stage1"]),
                                     "inactive_kl_threshold": threshold}),
                      tmp_path / "s2", data_dir, device="cpu", show_progress=False)
    prior = trainer.model.prior
    assert trainer.inactive == inactive
    assert prior.active.tolist() == [0.0 if c in inactive else 1.0 for c in range(len(kl))]
    assert all(prior.alpha()[c].item() == 0.0 for c in inactive)
    assert all(prior.alpha()[c].item() > 0.0 for c in range(len(kl)) if c not in inactive)
    torch.testing.assert_close(trainer.cfg["train"]["init_kl_per_channel"], [round(v, 4) for v in kl], atol=1e-4, rtol=0)
    for k, v in stage1.state_dict().items():
        if k.startswith(("encoder.", "decoder.")):
            assert torch.equal(trainer.model.state_dict()[k], v), k
    # the conftest's stage-2 run applied the default threshold the same way, and saved the mask
    _, meta, tensors = read_checkpoint(tiny_checkpoints["stage2"], parts=("model",))
    expected = [c for c, v in enumerate(kl) if v < 0.1]
    assert meta["inactive_channels"] == expected
    assert tensors["model"]["prior.active"].tolist() == [0.0 if c in expected else 1.0 for c in range(len(kl))]


@pytest.mark.slow
def test_two_process_ddp_ends_with_identical_parameters(data_dir, tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU) on the training CLI, stage 2 (VAE, prior, EMA)."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "ddp_worker.py"), "--config", str(SMOKE), "--out", str(out),
           "--data-dir", str(data_dir), "--device", "cpu", "--no-progress", "--max-steps", "4",
           "--set", "train.stage=2", "train.batch_size=16", "train.log_every=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, proc.stdout  # only rank 0 reports
    assert json.loads(lines[0])["step"] == 4

    rank0, rank1 = load_file(str(out / "params-rank0.safetensors")), load_file(str(out / "params-rank1.safetensors"))
    assert set(rank0) == set(rank1)
    for k, v in rank0.items():
        assert torch.equal(v, rank1[k]), k
    _, meta, saved = read_checkpoint(out, parts=("model", "ema"))
    assert meta["world_size"] == 2 and meta["step"] == 4
    for part in ("model", "ema"):
        for k, v in saved[part].items():
            assert torch.equal(rank0[f"{part}.{k}"], v), (part, k)
    # the run trained: the weights moved from their initialisation
    torch.manual_seed(0)
    init = build_model(load_model(out).config).state_dict()
    assert not torch.equal(init["encoder.net.0.weight"], saved["model"]["encoder.net.0.weight"])
    assert [r["step"] for r in _log(out)] == [1, 2, 3, 4]
