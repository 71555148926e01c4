"""`python -m app`'s command line and the model picker's registry, in-process (no server)."""
import shutil

import pytest

pytest.importorskip("gradio")
from app.__main__ import app_runtime, main, parse_args  # noqa: E402
from app.models import Registry  # noqa: E402
from lsgm_core.runtime import available  # noqa: E402


def test_defaults_serve_this_machine_only_and_open_a_browser():
    args = parse_args([])
    assert args.host == "127.0.0.1" and args.port is None and not args.no_browser and args.checkpoint is None


def test_runtime_auto_is_onnxruntime_on_a_cpu_where_installed_and_onnxruntime_refuses_a_gpu():
    assert parse_args([]).runtime == "auto"
    assert app_runtime("auto", "cpu") == ("onnxruntime" if available("onnxruntime") else "torch")
    assert app_runtime("auto", "cuda") == "torch" and app_runtime("torch", "cpu") == "torch"
    with pytest.raises(ValueError, match="add --device cpu or use --runtime torch"):
        app_runtime("onnxruntime", "cuda")


def test_checkpoint_flag_adds_a_model_from_anywhere_and_shows_it_first(tiny_checkpoints, tmp_path):
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    shutil.copytree(tiny_checkpoints["stage2"], ck / "tiny-lsgm")
    run = tiny_checkpoints["stage1"].parents[1]  # a training run folder: its `latest` is followed
    registry = Registry(ck, tmp_path / "runs", run)
    assert [e.id for e in registry.entries()] == [f"external/{run.name}", "checkpoints/tiny-lsgm"]
    assert registry.default_id() == f"external/{run.name}"
    assert registry.load(registry.default_id()).meta["stage"] == 1
    # a --checkpoint that the picker lists anyway keeps its usual id
    assert Registry(ck, tmp_path / "runs", ck / "tiny-lsgm").default_id() == "checkpoints/tiny-lsgm"


def test_a_missing_checkpoint_is_a_one_line_error_before_serving(tmp_path, capsys):
    assert main(["--no-browser", "--checkpoint", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "does not exist" in err and "Traceback" not in err
