"""Tests of lsgm_core.bench with tiny settings: the JSON it prints, not its timings."""
import json
from pathlib import Path

import pytest

from lsgm_core import bench, load_model
from lsgm_core.quality import class_balance
from lsgm_core.solvers import sample

SMOKE = Path(__file__).parents[1] / "configs" / "smoke.toml"


def _run(capsys, *argv) -> tuple[int, dict | None, str]:
    rc = bench.main(list(argv))
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) <= 1, out
    return rc, json.loads(lines[0]) if lines else None, err


def test_train_bench_on_synthetic_data(capsys):
    rc, result, _ = _run(capsys, "train", "--config", str(SMOKE), "--steps", "2", "--warmup", "1",
                         "--batch-size", "8", "--device", "cpu")
    assert rc == 0
    assert result["bench"] == "train" and result["device"] == "cpu" and result["data"] == "synthetic"
    assert result["batch_size"] == 8 and result["steps"] == 2
    for stage in ("stage1", "stage2"):
        r = result[stage]
        assert r["images_per_s"] > 0 and r["ms_per_step"] > 0 and r["peak_rss_mib"] > 0
        assert r["params_vae"] > 0 and r["params_prior"] > 0 and r["skipped_steps"] == 0


def test_train_bench_on_real_data(capsys, data_dir):
    rc, result, _ = _run(capsys, "train", "--config", str(SMOKE), "--steps", "1", "--warmup", "0",
                         "--batch-size", "8", "--device", "cpu", "--data-dir", str(data_dir), "--stages", "1")
    assert rc == 0 and result["data"] == str(data_dir)
    assert "stage1" in result and "stage2" not in result


def test_bench_errors_and_help(capsys):
    rc, result, err = _run(capsys, "train", "--config", str(SMOKE), "--steps", "0")
    assert rc == 2 and result is None and err.startswith("error:") and "--steps" in err
    rc, result, err = _run(capsys, "train", "--config", "/no/such/config.toml")
    assert rc == 2 and "does not exist" in err
    with pytest.raises(SystemExit) as e:
        bench.main(["--help"])
    assert e.value.code == 0
    assert "train" in capsys.readouterr().out


def test_subcommands_are_registered():
    for name, (add_args, run) in bench.COMMANDS.items():
        assert callable(add_args) and callable(run), name
    assert "train" in bench.COMMANDS


def test_quality_bench_gives_fid_nfe_and_time_per_solver(capsys, tiny_checkpoints, data_dir):
    rc, result, err = _run(capsys, "quality", "--checkpoint", str(tiny_checkpoints["stage2"]), "--num", "12",
                           "--batch-size", "6", "--runs", "fast:3", "ode:1e-2", "--device", "cpu",
                           "--data-dir", str(data_dir))
    assert rc == 0 and result["bench"] == "quality" and result["num"] == 12
    assert list(result["runs"]) == ["fast:3", "ode:1e-2"]
    assert result["runs"]["fast:3"]["nfe_per_batch"] == 3
    assert all(r["fid"] > 0 and r["seconds"] > 0 for r in result["runs"].values())
    assert result["posterior_fid"] > 0
    assert all(r["fid_ratio"] == pytest.approx(r["fid"] / result["posterior_fid"], rel=1e-2)
               for r in result["runs"].values())
    assert '{"fast:3"' in err  # each setting is reported on stderr as it finishes
    # the class balance is the shipped classifier's histogram of those very samples
    images = sample(load_model(tiny_checkpoints["stage2"]), 12, "fast", steps=3, seed=0, batch_size=6).images
    expected = class_balance(images, "binarized-mnist", 0)
    assert result["runs"]["fast:3"]["classes"] == {k: round(expected[k], 3) for k in ("max_over_min", "tv_to_uniform")}
    assert result["runs"]["fast:3"]["denoise_t"] == 0.0  # the tiny model sets no denoising time
    rc, result, _ = _run(capsys, "quality", "--checkpoint", str(tiny_checkpoints["stage2"]), "--num", "12",
                         "--batch-size", "6", "--runs", "fast:3", "--denoise-t", "0.2", "--device", "cpu",
                         "--data-dir", str(data_dir))
    assert rc == 0 and result["runs"]["fast:3"]["denoise_t"] == 0.2 and result["runs"]["fast:3"]["nfe_per_batch"] == 3


@pytest.mark.parametrize("spec", ["ode:0", "ode:abc", "fast:0", "sde:-3", "rk4:10", "fast"])
def test_quality_bench_refuses_bad_solver_runs(capsys, spec):
    rc, result, err = _run(capsys, "quality", "--checkpoint", "checkpoints/lsgm-bmnist", "--runs", spec)
    assert rc == 2 and result is None and spec in err and "ode:TOL" in err
