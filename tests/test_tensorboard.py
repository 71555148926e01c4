"""TensorBoard event files beside log.jsonl (lsgm_core.tensorboard_events): the same scalars at the
same steps where tensorboard is installed; without it, training as before and one notice."""

import json
import sys
from pathlib import Path

import pytest
import torch

from lsgm_core import tensorboard_events
from lsgm_core.bench import write_synthetic_idx
from lsgm_core.config import load_config
from lsgm_core.train import Trainer

torch.set_num_threads(1)

ROOT = Path(__file__).parents[1]


def tiny_training(tmp_path, out_name: str = "run", **train):
    write_synthetic_idx("mnist", tmp_path / "data", 64)
    overrides = {"data": {"dataset": "binarized-mnist"},
                 "train": {"batch_size": 16, "max_steps": 6, "log_every": 2, "eval_every": 3, "eval_images": 16,
                           "ckpt_every": 100, **train}}
    cfg = load_config(ROOT / "configs" / "smoke.toml", overrides)
    trainer = Trainer(cfg, tmp_path / out_name, tmp_path / "data", device="cpu", show_progress=False)
    trainer.train()
    return tmp_path / out_name


def logged(out) -> dict[str, dict[int, float]]:
    """log.jsonl's numbers as {tag: {step: value}}."""
    curves: dict[str, dict[int, float]] = {}
    for line in (out / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                curves.setdefault(key, {})[record["step"]] = value
    return curves


def test_event_file_holds_the_log_jsonl_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    out = tiny_training(tmp_path)
    assert list(out.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(out), size_guidance={"scalars": 0})
    events.Reload()
    expected = logged(out)
    assert {"loss", "nelbo", "recon", "kl", "test_bound_nelbo", "seconds"} <= set(expected)
    assert set(events.Tags()["scalars"]) == set(expected)
    for tag, curve in expected.items():
        got = {e.step: e.value for e in events.Scalars(tag)}
        assert got.keys() == curve.keys(), tag
        for step, value in curve.items():
            assert got[step] == pytest.approx(value, rel=1e-6, abs=1e-6), (tag, step)  # float32 in the event file
    assert sorted(expected["loss"]) == [2, 4, 6] and sorted(expected["test_bound_nelbo"]) == [3, 6]


def test_without_tensorboard_training_says_so_once(tmp_path, monkeypatch, capsys):
    # what an environment without the package sees: both imports fail
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setattr(tensorboard_events, "_said_off", False)
    first = tiny_training(tmp_path, "first")
    second = tiny_training(tmp_path, "second")
    err = capsys.readouterr().err
    assert err.count("TensorBoard event files are off: the tensorboard package is not installed") == 1
    for out in (first, second):
        assert not list(out.glob("events.out.tfevents.*"))
        assert sorted(logged(out)["loss"]) == [2, 4, 6]
