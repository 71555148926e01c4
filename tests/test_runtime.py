"""ONNX Runtime for the distilled student (lsgm_core.runtime): the same samples as PyTorch within the
stated tolerance, at every step count and batch size, converted once and again after the weights
change, through sample(), the sample CLI and bench; clear refusals otherwise."""
import json
import sys

import numpy as np
import pytest
import torch
from solver_stubs import untrained_student

from lsgm_core import bench, load_model, sample
from lsgm_core.checkpoint import derived_meta, read_checkpoint, save_checkpoint
from lsgm_core.runtime import TOLERANCE, available, student_on
from lsgm_core.solvers import parse_setting, sample as draw

torch.set_num_threads(1)
pytestmark = pytest.mark.skipif(not available("onnxruntime"), reason="onnx and onnxruntime are not installed")


def with_student(path, segments: bool = False) -> torch.nn.Module:
    model = load_model(path)
    model.student, model.config["student"] = untrained_student(model, segments)
    return model


@pytest.fixture(scope="module", params=[False, True], ids=["z0", "segments"])
def model(tiny_checkpoints, request):
    """A student of z0 alone, and one with segments (its U-Net takes the target time too)."""
    return with_student(tiny_checkpoints["stage2"], request.param)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_onnxruntime_draws_the_students_samples_within_the_tolerance(model, steps):
    ours = draw(model, 5, "distilled", steps=steps, seed=4, temperature=0.9, runtime="onnxruntime")
    ref = draw(model, 5, "distilled", steps=steps, seed=4, temperature=0.9)
    assert ours.nfe == ref.nfe == steps
    assert (ours.z0 - ref.z0).abs().max().item() <= TOLERANCE
    assert (ours.images - ref.images).abs().max().item() <= TOLERANCE
    assert ref.z0.std().item() > 0.1 and not torch.equal(ours.images, ref.images)  # ONNX Runtime really ran
    split = draw(model, 5, "distilled", steps=steps, seed=4, temperature=0.9, runtime="onnxruntime", batch_size=2)
    assert (split.images - ref.images).abs().max().item() <= TOLERANCE  # the export's batch axis is free


def test_the_conversion_is_cached_until_the_weights_change(model):
    first = student_on(model, "onnxruntime")
    assert student_on(model, "onnxruntime") is first and first.max_abs_diff <= TOLERANCE
    assert student_on(model, "torch") is model.student
    assert first.sigma_data is model.student.sigma_data and first.active is model.student.active
    with torch.no_grad():
        model.student.net.conv_out.bias.add_(0.5)
    try:
        second = student_on(model, "onnxruntime")
        assert second is not first
        ours, ref = (draw(model, 3, "distilled", seed=1, runtime=r).z0 for r in ("onnxruntime", "torch"))
        assert (ours - ref).abs().max().item() <= TOLERANCE
    finally:
        with torch.no_grad():
            model.student.net.conv_out.bias.sub_(0.5)


def test_converting_leaves_a_student_in_training_as_it_was(tiny_checkpoints):
    """The probe runs copies in eval mode and float32: the model's own student keeps its mode and dtype."""
    model = with_student(tiny_checkpoints["stage2"])
    model.student.train()
    model.student.decoder = None
    student_on(model, "onnxruntime")
    assert model.student.training and all(m.training for m in model.student.modules())


def test_runtimes_are_refused_where_they_do_not_apply(model, tiny_checkpoints, monkeypatch):
    with pytest.raises(ValueError, match="the fast solver runs on torch, not onnxruntime"):
        draw(model, 2, "fast", steps=2, runtime="onnxruntime")
    with pytest.raises(ValueError, match="unknown runtime 'tvm'; choose one of torch, onnxruntime"):
        draw(model, 2, "distilled", runtime="tvm")
    with pytest.raises(ValueError, match="fast solver runs on torch"):
        parse_setting("fast:20@onnxruntime")
    assert parse_setting("distilled:2@onnxruntime") == {"solver": "distilled", "steps": 2, "runtime": "onnxruntime"}
    with pytest.raises(ValueError, match="no distilled student"):
        draw(load_model(tiny_checkpoints["stage2"]), 2, "distilled", runtime="onnxruntime")
    elsewhere = with_student(tiny_checkpoints["stage2"])
    elsewhere.student.to("meta")  # stands in for a GPU: ONNX Runtime's session here runs on the CPU only
    with pytest.raises(ValueError, match="runs on the CPU"):
        student_on(elsewhere, "onnxruntime")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(ValueError, match="pip install -r requirements.txt"):
        draw(model, 2, "distilled", runtime="onnxruntime")


def test_the_sample_cli_and_bench_take_the_runtime(model, tmp_path, capsys):
    config, meta, tensors = read_checkpoint(model.meta["path"])
    config["student"] = model.config["student"]
    tensors["model"] |= {f"student.{k}": v for k, v in model.student.state_dict().items()}
    path = save_checkpoint(tmp_path / "with-student", config, tensors, derived_meta(meta, None, "made_from"))
    for runtime in ("torch", "onnxruntime"):
        code = sample.main([str(a) for a in ["--checkpoint", path, "--num", 3, "--out", tmp_path / f"{runtime}.npz",
                                             "--solver", "distilled", "--steps", 2, "--runtime", runtime,
                                             "--device", "cpu", "--no-progress"]])
        assert code == 0 and json.loads(capsys.readouterr().out)["runtime"] == runtime
    a, b = np.load(tmp_path / "torch.npz"), np.load(tmp_path / "onnxruntime.npz")
    assert np.abs(a["z0"] - b["z0"]).max() <= TOLERANCE and np.abs(a["images"].astype(int) - b["images"]).max() <= 1
    code = sample.main([str(a) for a in ["--checkpoint", path, "--num", 2, "--out", tmp_path / "x.npz", "--solver", "ode",
                                         "--runtime", "onnxruntime", "--device", "cpu", "--no-progress"]])
    assert code == 2 and "the ode solver runs on torch, not onnxruntime" in capsys.readouterr().err
    code = bench.main(["sampling", "--checkpoint", str(path), "--sizes", "4", "--runs", "distilled:1",
                       "distilled:1@onnxruntime", "fast:2", "--device", "cpu"])
    runs = json.loads(capsys.readouterr().out)["model"]["runs"]["4"]
    assert code == 0 and set(runs) == {"distilled:1", "distilled:1@onnxruntime", "fast:2"}
    assert runs["distilled:1@onnxruntime"]["nfe"] == 1
