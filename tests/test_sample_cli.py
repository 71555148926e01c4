"""The sample and evaluate CLIs, the pixel baseline through them, and `bench sampling`."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lsgm_core import evaluate, sample

torch.set_num_threads(1)
ROOT = Path(__file__).parents[1]


def run_main(main, argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_sample_cli_writes_uint8_images(tiny_checkpoints, pixel_checkpoint, tmp_path, capsys):
    for ckpt, solver in ((tiny_checkpoints["stage2"], "fast"), (pixel_checkpoint, "sde")):
        out = tmp_path / f"{solver}.npz"
        code, stdout, _ = run_main(sample.main, ["--checkpoint", ckpt, "--num", 3, "--out", out, "--solver", solver,
                                                 "--steps", 4, "--device", "cpu", "--no-progress"], capsys)
        assert code == 0
        info = json.loads(stdout)
        assert info["num"] == 3 and info["solver"] == solver and info["nfe"] == 4 and info["seconds"] > 0
        assert info["denoise_t"] == 0.0  # neither model sets a denoising time: the flow to the end
        images = np.load(out)["images"]
        assert images.dtype == np.uint8 and images.shape == (3, 28, 28)


@pytest.mark.parametrize("argv,message", [
    (["--checkpoint", "{missing}", "--num", 2], "does not exist"),
    (["--num", 0], "--num must be positive"),
    (["--num", 2, "--solver", "ode", "--atol", 0], "--atol must be positive"),
    (["--num", 2, "--solver", "ode", "--rtol", -1e-3], "--rtol must be positive"),
    (["--num", 2, "--solver", "ode", "--steps", 5], "--steps applies"),
    (["--num", 2, "--atol", 1e-3], "--atol and --rtol apply"),
    (["--num", 2, "--steps", 0], "--steps must be at least 1"),
    (["--num", 2, "--batch-size", 0], "--batch-size must be positive"),
    (["--num", 2, "--denoise-t", 1.5], "--denoise-t must be 0 (no denoising) or lie in"),
])
def test_sample_cli_bad_input(tiny_checkpoints, tmp_path, capsys, argv, message):
    argv = [str(a).replace("{missing}", str(tmp_path / "nope")) for a in argv]
    if "--checkpoint" not in argv:
        argv = ["--checkpoint", str(tiny_checkpoints["stage2"])] + argv
    code, stdout, err = run_main(sample.main, argv + ["--out", tmp_path / "x.npz", "--no-progress"], capsys)
    assert code != 0 and stdout == ""
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "x.npz").exists()


def test_unknown_solver_exits_with_a_usage_error(tmp_path):
    # through the real entry point: argparse rejects the choice before anything is loaded
    proc = subprocess.run([sys.executable, "-m", "lsgm_core.sample", "--checkpoint", str(tmp_path), "--num", "2",
                           "--out", str(tmp_path / "x.npz"), "--solver", "euler"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "error: argument --solver: invalid choice: 'euler'" in proc.stderr


def test_evaluate_cli(tiny_checkpoints, pixel_checkpoint, data_dir, capsys):
    common = ["--data-dir", data_dir, "--limit", 2, "--batch-size", 2, "--atol", 1e-3, "--rtol", 1e-3,
              "--device", "cpu", "--no-progress"]
    code, stdout, _ = run_main(evaluate.main, ["--checkpoint", tiny_checkpoints["stage2"], *common, "--iw", 2], capsys)
    assert code == 0
    info = json.loads(stdout)
    assert info["n"] == 2 and info["iw"] == 2
    for key in ("nelbo_nats", "bpd", "recon_nats", "kl_nats"):
        assert np.isfinite(info[key])
    assert info["bpd"] == pytest.approx(info["nelbo_nats"] / (784 * np.log(2)))
    code, stdout, _ = run_main(evaluate.main, ["--checkpoint", pixel_checkpoint, *common], capsys)
    density = json.loads(stdout)
    assert code == 0 and density["kind"] == "pixel" and density["recon_nats"] == 0.0
    assert density["dequantize_levels"] is None and "not comparable" in density["note"]
    code, stdout, _ = run_main(evaluate.main, ["--checkpoint", pixel_checkpoint, *common, "--dequantize"], capsys)
    bound = json.loads(stdout)
    # binary data: 2 levels, bins of width 1 in [-1, 1]: no volume term, a density at other points
    assert code == 0 and bound["dequantize_levels"] == 2 and bound["recon_nats"] == 0.0
    assert np.isfinite(bound["nelbo_nats"]) and bound["nelbo_nats"] != density["nelbo_nats"]
    assert "comparable with an LSGM's NELBO" in bound["note"]


def test_an_evaluation_stopped_and_resumed_gives_the_unbroken_runs_figures(tiny_checkpoints, data_dir, tmp_path,
                                                                           capsys, monkeypatch):
    """--resume FILE: stopped after two of three batches (the third ODE solve fails), the same command
    continues with the third alone and reports what one unbroken run reports; other settings are
    refused with the difference named, and so is a file this command did not write."""
    argv = ["--checkpoint", tiny_checkpoints["stage2"], "--data-dir", data_dir, "--limit", 6, "--batch-size", 2,
            "--atol", 1e-3, "--rtol", 1e-3, "--device", "cpu", "--no-progress"]
    code, stdout, _ = run_main(evaluate.main, argv, capsys)
    unbroken = json.loads(stdout)
    state = tmp_path / "eval.json"
    real, calls = evaluate.nelbo, []

    def stops_at_the_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(evaluate, "nelbo", stops_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        evaluate.main([str(a) for a in argv + ["--resume", state]])
    assert len(json.loads(state.read_text())["batches"]) == 2
    calls.clear()
    code, stdout, _ = run_main(evaluate.main, argv + ["--resume", state], capsys)
    resumed = json.loads(stdout)
    assert code == 0 and len(calls) == 1 and resumed["resume"]["batches_before"] == 2
    for key in ("nelbo_nats", "nelbo_std_err", "recon_nats", "kl_nats", "nfe_per_batch", "n"):
        assert resumed[key] == unbroken[key], key
    code, _, err = run_main(evaluate.main, [a if a != 1e-3 else 1e-4 for a in argv] + ["--resume", state], capsys)
    assert code == 2 and "other settings (atol: 0.001 there, 0.0001 now" in err and len(calls) == 1
    state.write_text("not json")
    code, _, err = run_main(evaluate.main, argv + ["--resume", state], capsys)
    assert code == 2 and "not a file this command wrote" in err


def test_a_resume_record_holds_for_the_model_with_any_student_but_not_for_other_weights(tiny_checkpoints):
    """The record's key names the weights an evaluation reads: a distilled student added to the
    checkpoint leaves it as it was; any change to the prior or the VAE changes it."""
    from solver_stubs import untrained_student

    from lsgm_core import load_model
    from lsgm_core.checkpoint import weights_digest
    model = load_model(tiny_checkpoints["stage2"])
    before = weights_digest(model)
    model.student = untrained_student(model)[0]
    assert weights_digest(model) == before
    with torch.no_grad():
        next(model.prior.parameters()).view(-1)[0] += 1e-6
    assert weights_digest(model) != before


@pytest.mark.parametrize("argv,message", [
    (["--checkpoint", "{missing}"], "does not exist"),
    (["--limit", 0], "--limit must be positive"),
    (["--atol", 0], "--atol must be positive"),
    (["--iw", 0], "--iw must be positive"),
    (["--dequantize"], "applies to the pixel baseline"),
])
def test_evaluate_cli_bad_input(tiny_checkpoints, data_dir, tmp_path, capsys, argv, message):
    argv = [str(a).replace("{missing}", str(tmp_path / "nope")) for a in argv]
    if "--checkpoint" not in argv:
        argv = ["--checkpoint", str(tiny_checkpoints["stage2"])] + argv
    code, stdout, err = run_main(evaluate.main, argv + ["--data-dir", str(data_dir), "--no-progress"], capsys)
    assert code != 0 and stdout == ""
    assert err.startswith("error: ") and message in err


@pytest.mark.parametrize("kind", ["lsgm", "pixel"])
def test_evaluate_fid(kind, tiny_checkpoints, pixel_checkpoint, data_dir, capsys):
    from lsgm_core.features import DEFAULT_FEATURES_DIR

    checkpoint = tiny_checkpoints["stage2"] if kind == "lsgm" else pixel_checkpoint
    argv = ["--checkpoint", checkpoint, "--data-dir", data_dir, "--limit", 8, "--batch-size", 8,
            "--atol", 1e-3, "--rtol", 1e-3, "--fid", "--fid-steps", 4, "--fid-denoise-t", 0.2, "--device", "cpu",
            "--no-progress"]
    code, stdout, err = run_main(evaluate.main, argv, capsys)
    if (DEFAULT_FEATURES_DIR / "binarized-mnist.safetensors").is_file():
        out = json.loads(stdout)
        assert code == 0 and out["fid"] >= 0.0 and out["fid_samples"] == 8 and out["fid_denoise_t"] == 0.2
        # the class histogram and the copy check come with it; the floor and the ratio only for an
        # LSGM (a pixel model has no encoder to reconstruct through)
        assert sum(out["class_counts"]) == 8 and "samples_closer_than_any_test_image" in out
        if kind == "lsgm":
            assert out["posterior_fid"] > 0 and out["fid_ratio"] == pytest.approx(out["fid"] / out["posterior_fid"])
        else:
            assert "posterior_fid" not in out and "fid_ratio" not in out
    else:
        assert code != 0 and "error: no feature classifier shipped for binarized-mnist" in err


def test_bench_sampling(tiny_checkpoints, pixel_checkpoint, capsys):
    from lsgm_core import bench

    code, stdout, err = run_main(bench.main, ["sampling", "--checkpoint", tiny_checkpoints["stage2"], "--baseline",
                                              pixel_checkpoint, "--sizes", 2, "--runs", "ode:1e-5", "ode:1e-3",
                                              "sde:3", "fast:3", "--repeats", 2, "--device", "cpu"], capsys)
    assert code == 0
    # each run is reported on stderr as it finishes, the model's before the baseline's
    progress = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert [next(iter(p)) for p in progress] == ["model"] * 4 + ["baseline"] * 4
    assert progress[-1] == {"baseline": {"2": {"fast:3": json.loads(stdout)["baseline"]["runs"]["2"]["fast:3"]}}}
    info = json.loads(stdout)
    labels = {"ode:1e-5", "ode:1e-3", "sde:3", "fast:3"}
    assert info["model"]["kind"] == "lsgm" and info["baseline"]["kind"] == "pixel" and info["repeats"] == 2
    for role in ("model", "baseline"):
        runs = info[role]["runs"]["2"]
        assert set(runs) == labels and runs["fast:3"]["nfe"] == 3 and runs["sde:3"]["nfe"] == 3
        assert runs["ode:1e-5"]["nfe"] >= runs["ode:1e-3"]["nfe"] > 0
    assert set(info["speedup"]["2"]) == labels
    for bad in (["--sizes", 0], ["--repeats", 0], ["--runs", "fast:0"], ["--runs", "rk4:10"]):
        code, stdout, err = run_main(bench.main, ["sampling", "--checkpoint", tiny_checkpoints["stage2"], *bad], capsys)
        assert code == 2 and stdout == "" and err.startswith("error: ")


def test_bench_sampling_with_fid_gives_the_models_at_equal_fid_and_the_plot(tiny_checkpoints, pixel_checkpoint,
                                                                             data_dir, tmp_path, capsys):
    """--fid N: each setting's FID equals `bench quality`'s at the same N and seed; equal_fid is
    comparison.equal_fid of the measured runs; --plot writes an SVG with a point per setting;
    --baseline-runs gives the baseline its own settings (speedup: the settings both took)."""
    import xml.etree.ElementTree as ET

    from lsgm_core import bench
    from lsgm_core.comparison import equal_fid

    plot = tmp_path / "fid.svg"
    common = ["--device", "cpu", "--batch-size", 6]
    settings = {"model": ["fast:2", "fast:4"], "baseline": ["fast:3", "fast:4"]}
    code, stdout, err = run_main(bench.main, ["sampling", "--checkpoint", tiny_checkpoints["stage2"], "--baseline",
                                              pixel_checkpoint, "--sizes", 2, 3, "--fid", 12, "--plot", plot,
                                              "--data-dir", data_dir, "--runs", *settings["model"],
                                              "--baseline-runs", *settings["baseline"], *common], capsys)
    assert code == 0, err
    info = json.loads(stdout)
    for role, path in (("model", tiny_checkpoints["stage2"]), ("baseline", pixel_checkpoint)):
        assert info[role]["fid_samples"] == 12 and set(info[role]["fid"]) == set(settings[role])
        code, out, _ = run_main(bench.main, ["quality", "--checkpoint", path, "--num", 12, "--data-dir", data_dir,
                                             "--runs", *settings[role], *common], capsys)
        quality = json.loads(out)["runs"]
        assert info[role]["fid"] == {spec: r["fid"] for spec, r in quality.items()}
        assert info[role]["classes"] == {spec: r["classes"] for spec, r in quality.items()}
    assert {num: set(s) for num, s in info["speedup"].items()} == {"2": {"fast:4"}, "3": {"fast:4"}}
    assert set(info["equal_fid"]) == {"2", "3"}
    for num, e in info["equal_fid"].items():
        runs = [{spec: {**r, "fid": info[role]["fid"][spec]} for spec, r in info[role]["runs"][num].items()}
                for role in ("model", "baseline")]
        expected = equal_fid(*runs)
        assert {k: e[k] for k in ("fid", "model", "baseline")} == {k: expected[k] for k in ("fid", "model", "baseline")}
    root = ET.parse(plot).getroot()
    assert info["plot"] == str(plot) and len(root.findall("{http://www.w3.org/2000/svg}polyline")) == 4
    assert len(list(root.iter("{http://www.w3.org/2000/svg}circle"))) == 8  # 2 sizes x 2 models x 2 settings
    for bad, message in ((["--plot", tmp_path / "p.svg"], "--plot"), (["--fid", 12, "--plot", tmp_path / "p.png"], "--plot"),
                         (["--fid", 1], "--fid"), (["--baseline-runs", "fast:2"], "--baseline-runs needs --baseline"),
                         (["--baseline", pixel_checkpoint, "--baseline-runs", "distilled:1"], "no distilled student")):
        code, stdout, err = run_main(bench.main, ["sampling", "--checkpoint", tiny_checkpoints["stage2"], *bad], capsys)
        assert code == 2 and stdout == "" and err.startswith("error: ") and message in err, err
