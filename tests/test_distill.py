"""The distilled sampler: the student's regression on a flow with a closed form, and the distill CLI's
checkpoint through load_model, the sample CLI and bench."""
import json

import pytest
import torch
from solver_stubs import SDES, GaussianPrior, GaussianStudent, Wrap, gaussian_paths, untrained_student

from lsgm_core import bench, distill, load_model, sample, solvers
from lsgm_core.data import config_dataset
from lsgm_core.quality import posterior_samples
from lsgm_core.solvers import ODE_EPS, sample as draw
from lsgm_core.student import STEPS, Student

torch.set_num_threads(1)


def test_an_exact_students_own_path_visits_the_exact_regression_inputs():
    prior = GaussianPrior(SDES["vpsde"], c=0.3)
    student = GaussianStudent(prior, ODE_EPS)
    z1 = torch.randn(64, *prior.shape, generator=torch.Generator().manual_seed(0))
    gen, seen = torch.Generator().manual_seed(1), set()
    for _ in range(12):
        zt, t = distill.own_path_inputs(student, z1, gen)
        seen.add(round(t[0].item(), 6))
        assert torch.allclose(zt, distill.regression_inputs(student, z1, student.r * z1, t), atol=1e-5)
    assert len(seen) == 3  # the inner times of the 2- and 4-step grids (the 2-step one is among the 4-step ones)


@pytest.mark.slow
@pytest.mark.parametrize("own_path,segments,denoise_t", [(0.0, False, 0.0), (0.5, False, 0.0), (0.0, True, 0.0),
                                                      (0.0, True, 0.15)])
def test_the_student_learns_the_gaussian_flow_in_one_two_and_four_steps(own_path, segments, denoise_t):
    """Data N(0, 0.3^2 I): the teacher's path is z_t = z1 s_t / s_1 (solver_stubs). An untrained
    student returns about 0 from z1 (its Gaussian posterior mean at m_1 = 0.0066); trained on 4,000
    exact paths it reproduces the map at every step count, on held-out z1 (more steps start nearer:
    0.52 and 0.46 before training at 2 and 4 steps). A student with segments also follows the
    teacher's path: its 4-step states are the teacher's (measured 0.0007, 0.005 and 0.013 of the
    path's spread away), where one of z0 alone visits the line from z1 to z0 (0.036, 0.40 and 0.064
    away), and its 4-step z0 is nearer (0.015 against 0.066). Made at a denoising time, its grids
    jump from there, and the teacher's path is the fast solver's with that jump (fast_states)."""
    prior = GaussianPrior(SDES["vpsde"], c=0.3)
    times = distill.path_times(prior.sde, denoise_t)
    gen = torch.Generator().manual_seed(0)
    z1 = torch.randn(4500, *prior.shape, generator=gen)
    paths = (solvers.fast_states(solvers.ProbabilityFlow(prior), z1, times, steps=40, denoise_t=denoise_t).transpose(0, 1)
             if denoise_t else gaussian_paths(prior, z1, times))
    z0 = paths[:, -1]
    torch.manual_seed(0)
    student = Student(prior.shape, {"kind": "vpsde"}, {"channels": 16, "ch_mult": [1], "num_res_blocks": 1,
                                                       "attention": False, "target_time": segments},
                      sigma_data=z0.std().item(), denoise_t=denoise_t)
    model = Wrap(prior, student)

    def errors():
        return {k: ((draw(model, 500, "distilled", steps=k, z1=z1[:500]).z0 - z0[:500]).pow(2).mean().sqrt()
                    / z0.std()).item() for k in STEPS}

    def path_errors():
        traj = draw(model, 500, "distilled", steps=4, z1=z1[:500], record_times=times).trajectory
        return [((zt - paths[:500, i]).pow(2).mean().sqrt() / paths[:, i].std()).item()
                for i, zt in enumerate(traj.zt[1:-1], 1)]

    before = errors()
    distill.distill(student, paths[500:], train_steps=800, batch_size=128, lr=3e-3, ema=0.95, own_path=own_path)
    after = errors()
    assert before[1] > 0.9 and all(e > 0.3 for e in before.values()), before
    assert all(e < 0.1 for e in after.values()), after  # measured 0.023, 0.014, 0.066 (own_path 0; segments 0.015 at 4)
    if segments:
        assert all(e < 0.05 for e in path_errors()) and after[4] < 0.035, (path_errors(), after)


@pytest.mark.slow
def test_the_adversarial_term_keeps_the_spread_that_regression_narrows():
    """Targets z0 = z1 / 2 + nu, nu ~ N(0, I/4) independent of z1: regression can only learn z1 / 2,
    whose spread is 0.50 against the targets' 0.71; the adversarial term's critic compares the two
    distributions and widens the 1-step samples towards the targets' spread (0.63 measured)."""
    prior = GaussianPrior(SDES["vpsde"], c=0.3)
    gen = torch.Generator().manual_seed(0)
    z1 = torch.randn(4000, *prior.shape, generator=gen)
    z0 = 0.5 * z1 + 0.5 * torch.randn(z1.shape, generator=gen)
    spreads = {}
    for weight in (0.0, 0.1):
        torch.manual_seed(0)
        student = Student(prior.shape, {"kind": "vpsde"}, {"channels": 16, "ch_mult": [1], "num_res_blocks": 1,
                                                           "attention": False}, sigma_data=z0.std().item())
        distill.distill(student, torch.stack([z1, z0], 1), train_steps=400, batch_size=128, lr=3e-3, ema=0.95, adversarial=weight)
        with torch.no_grad():
            spreads[weight] = student(z1[:1000], 1.0, ODE_EPS).std().item()
    assert spreads[0.0] < 0.55 and spreads[0.1] > spreads[0.0] + 0.08, spreads


@pytest.fixture(scope="module")
def distilled(tiny_checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("distilled") / "student"
    code = distill.main([str(a) for a in ["--checkpoint", tiny_checkpoints["stage2"], "--out", out, "--pairs", 1100,
                                          "--teacher-steps", 6, "--train-steps", 20, "--batch-size", 32,
                                          "--device", "cpu", "--no-progress"]])
    assert code == 0
    return out


def test_a_narrower_student_starts_afresh_and_loads_back(tiny_checkpoints, tmp_path, capsys):
    code = distill.main([str(a) for a in ["--checkpoint", tiny_checkpoints["stage2"], "--out", tmp_path / "narrow",
                                          "--pairs", 1050, "--teacher-steps", 4, "--train-steps", 2, "--channels", 8,
                                          "--batch-size", 8, "--device", "cpu", "--no-progress"]])
    assert code == 0
    student = load_model(tmp_path / "narrow").student
    assert student.net.temb_ch == 8 and draw(load_model(tmp_path / "narrow"), 2, "distilled", steps=4).nfe == 4


def test_distill_cli_writes_a_checkpoint_with_the_teacher_and_its_student(distilled, tiny_checkpoints):
    model, teacher = load_model(distilled), load_model(tiny_checkpoints["stage2"])
    assert isinstance(model.student, Student) and teacher.student is None
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("student.")}
    assert own.keys() == teacher.state_dict().keys()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in own.items())  # the teacher, EMA prior included
    figures = model.meta["metrics"]["distillation"]
    assert set(figures["student_rel_rmse"]) == {"1", "2", "4"} and figures["pairs"] == 1100
    assert model.meta["distilled_from"] == str(load_model(tiny_checkpoints["stage2"]).meta["path"])
    a = draw(model, 4, "distilled", steps=2, seed=3, temperature=0.8)
    assert a.nfe == 2 and torch.equal(a.z0, draw(model, 4, "distilled", steps=2, seed=3, temperature=0.8).z0)
    assert torch.isfinite(a.images).all()


def test_the_sample_cli_and_bench_take_the_distilled_solver(distilled, tiny_checkpoints, tmp_path, capsys):
    code = sample.main([str(a) for a in ["--checkpoint", distilled, "--num", 3, "--out", tmp_path / "s.npz",
                                         "--solver", "distilled", "--steps", 4, "--device", "cpu", "--no-progress"]])
    assert code == 0 and json.loads(capsys.readouterr().out)["nfe"] == 4
    code = bench.main(["sampling", "--checkpoint", str(distilled), "--sizes", "2", "--runs", "distilled:1", "fast:2",
                       "--repeats", "1", "--device", "cpu"])
    result = json.loads(capsys.readouterr().out)
    run = result["model"]["runs"]["2"]["distilled:1"]
    assert code == 0 and run["nfe"] == 1 and 0 < run["seconds"] <= run["median_seconds"]
    code = sample.main([str(a) for a in ["--checkpoint", tiny_checkpoints["stage2"], "--num", 2, "--out",
                                         tmp_path / "t.npz", "--solver", "distilled", "--device", "cpu", "--no-progress"]])
    assert code == 2 and "no distilled student" in capsys.readouterr().err
    code = sample.main([str(a) for a in ["--checkpoint", distilled, "--num", 2, "--out", tmp_path / "u.npz",
                                         "--solver", "distilled", "--steps", 3, "--device", "cpu", "--no-progress"]])
    assert code == 2 and "--steps must be one of 1, 2, 4" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [(["--pairs", 1000], "exceed"), (["--train-steps", 0], "at least 1"),
                                          (["--lr", 0], "positive"), (["--channels", 12], "multiple of 8"),
                                          (["--adversarial", -1], "0 or more"),
                                          (["--own-path", 0.5, "--segments"], "leave one of the two out")])
def test_distill_refuses_bad_arguments(tiny_checkpoints, tmp_path, capsys, argv, message):
    code = distill.main([str(a) for a in ["--checkpoint", tiny_checkpoints["stage2"], "--out", tmp_path / "x",
                                          "--no-progress", *argv]])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_paths_cache_is_reused_while_teacher_and_settings_match(tiny_checkpoints, tmp_path, monkeypatch):
    model, cache = load_model(tiny_checkpoints["stage2"]), tmp_path / "pairs.safetensors"
    calls = []
    real = distill.teacher_paths
    monkeypatch.setattr(distill, "teacher_paths", lambda *a, **k: calls.append(a[1:]) or real(*a, **k))
    first = distill.cached_paths(model, cache, 20, 4)
    again = distill.cached_paths(model, cache, 20, 4)
    assert len(calls) == 1 and torch.equal(first[0], again[0])
    assert not first[1] and again[1]  # computed, then read
    model.student = untrained_student(model)[0]  # a student in the teacher's checkpoint leaves its paths as they were
    assert distill.cached_paths(model, cache, 20, 4)[1] and len(calls) == 1
    other = distill.cached_paths(model, cache, 20, 5)  # another setting: computed and kept instead
    assert len(calls) == 2 and not torch.equal(other[0], first[0]) and not other[1]
    cache.write_bytes(b"not a safetensors file")
    distill.cached_paths(model, cache, 20, 5)
    assert len(calls) == 3 and torch.equal(distill.cached_paths(model, cache, 20, 5)[0], other[0])


def test_teacher_paths_end_where_the_fast_solver_does(tiny_checkpoints):
    """The path's ends are z1 and the fast solver's z0 from it with as many steps (the grids differ:
    the path's holds the student's grid times as nodes)."""
    model = load_model(tiny_checkpoints["stage2"])
    paths = distill.teacher_paths(model, 16, 20)
    z0 = draw(model, 16, "fast", steps=20, z1=paths[:, 0], decode=False).z0
    assert paths.shape == (16, len(distill.path_times(model.prior.sde)), *model.prior.shape)
    assert (paths[:, -1] - z0).abs().max() < 0.05 * z0.abs().max()


@pytest.fixture(scope="module")
def with_decoder(tiny_checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("decoder") / "student"
    code = distill.main([str(a) for a in ["--checkpoint", tiny_checkpoints["stage2"], "--out", out, "--pairs", 1500,
                                          "--teacher-steps", 4, "--train-steps", 10, "--batch-size", 64,
                                          "--decoder-channels", "8,16", "--decoder-steps", 300, "--channels", 8,
                                          "--device", "cpu", "--no-progress"]])
    assert code == 0
    return out


@pytest.mark.slow
def test_a_student_decoder_gives_the_models_images_and_the_distilled_solver_uses_it(with_decoder, tiny_checkpoints):
    """Trained on the teacher's z0 for 300 steps, the decoder's images come within a few hundredths
    of the model's decoder's on held-out z0; an untrained one of the same widths is far off."""
    model = load_model(with_decoder)
    assert model.config["student"]["decoder"] == {"out_channels": 1, "channels": [8, 16], "num_res_blocks": 1}
    figures = model.meta["metrics"]["distillation"]
    z1 = torch.randn(200, *model.prior.shape, generator=torch.Generator().manual_seed(5))
    z0 = draw(model, 200, "fast", steps=4, z1=z1).z0
    with torch.no_grad():
        trained = (model.decode_images(z0, model.student.decoder) - model.decode_images(z0)).abs().mean().item()
        torch.manual_seed(0)
        model.student.decoder = type(model.student.decoder)(z0.shape[1], **model.config["student"]["decoder"])
        untrained = (model.decode_images(z0, model.student.decoder) - model.decode_images(z0)).abs().mean().item()
    assert trained < 0.05 and trained < untrained / 4, (trained, untrained)  # measured 0.017 against 0.22
    assert figures["decoder_error"]["mean_abs"] < 0.05 and figures["decoder_steps"] == 300
    model = load_model(with_decoder)
    got = draw(model, 4, "distilled", steps=1, seed=2)
    with torch.no_grad():
        assert torch.equal(got.images, model.decode_images(got.z0, model.student.decoder))
        assert not torch.equal(got.images, model.decode_images(got.z0))
    fast = draw(model, 4, "fast", steps=3, seed=2)  # every other solver keeps the model's decoder
    with torch.no_grad():
        assert torch.equal(fast.images, model.decode_images(fast.z0))


@pytest.mark.parametrize("argv,message", [(["--decoder-channels", "12,16"], "multiples of 8"),
                                          (["--decoder-channels", "8"], "needs 2 widths"),
                                          (["--decoder-posterior", "100"], "give --decoder-channels"),
                                          (["--decoder-channels", "8,16", "--decoder-posterior", "-1"], "0 or more"),
                                          (["--decoder-steps", "5"], "give --student-from"),
                                          (["--decoder-channels", "8,16", "--decoder-own", "1.5"], "from 0 to 1"),
                                          (["--decoder-own", "0.5"], "for training the student's own decoder"),
                                          (["--decoder-loss", "cross-entropy"], "for training the student's own decoder"),
                                          (["--decoder-channels", "8,16", "--decoder-lr", "0"], "positive")])
def test_distill_refuses_a_decoder_it_cannot_build(tiny_checkpoints, tmp_path, capsys, argv, message):
    code = distill.main([str(a) for a in ["--checkpoint", tiny_checkpoints["stage2"], "--out", tmp_path / "x",
                                          "--no-progress", *argv]])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_a_decoder_trained_on_the_students_own_latents_decodes_them_closer_to_the_model(distilled):
    """--decoder-own: the distilled solver hands the decoder the student's z0, which miss the
    teacher's; trained on those (the model decoder's images of them as targets) for the same steps,
    a decoder comes closer to the model's decoder there than one trained on the teacher's z0."""
    model = load_model(distilled)
    teacher = draw(model, 1000, "fast", steps=6, seed=1, decode=False).z0
    own = draw(model, 300, "distilled", steps=1, seed=2, decode=False).z0
    errors = {}
    for fraction in (0.0, 1.0):
        decoder, _ = distill.new_decoder(model, [8, 16], 1, seed=0)
        model.student.decoder = distill.distill_decoder(model, teacher, decoder, 150, 64, seed=0, own=fraction)
        errors[fraction] = distill.decoder_error(model, own)["mean_abs"]
    assert errors[1.0] < 0.85 * errors[0.0], errors  # measured 0.0144 against 0.0193 (the same: ratio 1)


@pytest.mark.slow
def test_the_cross_entropy_brings_the_decoders_likelihood_nearer_the_models(distilled):
    """--decoder-loss: trained on the same latents for the same steps, the decoder of the
    cross-entropy has the lower cross-entropy to the model's likelihood on held-out z0, without
    giving up the mean images for it (their squared error measured 0.90 times the other's)."""
    model = load_model(distilled)
    train, held = (draw(model, n, "fast", steps=6, seed=s, decode=False).z0 for n, s in ((1000, 1), (300, 2)))
    with torch.no_grad():
        target = model._crop(model.decoder(held))
    measured = {}
    for loss in distill.DECODER_LOSSES:
        decoder, _ = distill.new_decoder(model, [8, 16], 1, seed=0)
        decoder = distill.distill_decoder(model, train, decoder, 150, 64, seed=0, loss=loss)
        with torch.no_grad():
            params = model._crop(decoder(held))
            measured[loss] = {m: distill.decoder_loss(model, m, params, target).item() for m in distill.DECODER_LOSSES}
    assert measured["cross-entropy"]["cross-entropy"] < measured["mse"]["cross-entropy"], measured
    assert measured["cross-entropy"]["mse"] < 1.1 * measured["mse"]["mse"], measured


def test_the_decoder_also_learns_from_posterior_samples_of_training_images(tiny_checkpoints, data_dir, tmp_path,
                                                                          monkeypatch, capsys):
    """--decoder-posterior N: the decoder's training latents are the teacher's z0 followed by one
    z0 ~ q(z0|x) of each of N random training images, the encoder's own draws (posterior_samples)."""
    seen = []
    real = distill.distill_decoder
    monkeypatch.setattr(distill, "distill_decoder", lambda model, z0, *a, **k: seen.append(z0) or real(model, z0, *a, **k))
    out = tmp_path / "student"
    code = distill.main([str(a) for a in ["--checkpoint", tiny_checkpoints["stage2"], "--out", out, "--pairs", 1100,
                                          "--teacher-steps", 4, "--train-steps", 2, "--batch-size", 16,
                                          "--decoder-channels", "8,16", "--decoder-steps", 2, "--channels", 8,
                                          "--decoder-posterior", 300, "--data-dir", data_dir, "--seed", 4,
                                          "--device", "cpu", "--no-progress"]])
    assert code == 0 and json.loads(capsys.readouterr().out)["decoder_posterior"] == 300
    model = load_model(tiny_checkpoints["stage2"])
    train = config_dataset(model.config["data"], "train", data_dir)
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(4))[:300]
    assert len(seen) == 1 and len(seen[0]) == 100 + 300
    assert torch.allclose(seen[0][100:], posterior_samples(model, train, idx, seed=4), atol=1e-6)
    assert load_model(out).meta["metrics"]["distillation"]["decoder_posterior"] == 300
    with pytest.raises(ValueError, match="training set has 60000 images"):
        distill.decoder_posterior(model, 60001, data_dir)


def test_distill_refuses_a_decoder_for_a_pixel_model(pixel_checkpoint, tmp_path, capsys):
    code = distill.main([str(a) for a in ["--checkpoint", pixel_checkpoint, "--out", tmp_path / "x",
                                          "--decoder-channels", "8,16", "--no-progress"]])
    assert code == 2 and "no decoder" in capsys.readouterr().err


def test_the_student_ships_in_float16_and_loads_back_as_it_was_measured(distilled):
    """Its parameters are stored in half the bytes; the loaded model samples exactly as the rounded
    student whose figures the metrics give (buffers such as sigma_data stay float32)."""
    from safetensors import safe_open
    with safe_open(str(distilled / "model.safetensors"), "pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    student = {k: d for k, d in dtypes.items() if k.startswith("student.")}
    assert student["student.net.conv_out.weight"] == "F16" and student["student.sigma_data"] == "F32"
    assert all(d == "F32" for k, d in dtypes.items() if not k.startswith("student."))
    model = load_model(distilled)
    assert all(p.dtype == torch.float32 for p in model.student.parameters())
    assert 0 <= model.meta["metrics"]["distillation"]["float16_images_max_abs"] < 0.05


def test_a_student_from_another_checkpoint_starts_from_its_weights_and_keeps_its_decoder(with_decoder, tiny_checkpoints,
                                                                                         tmp_path):
    """--student-from: the student's U-Net starts where the source's ended (a step at a negligible
    learning rate leaves it within float16 rounding), its decoder and config entry are the source's."""
    out = tmp_path / "again"
    code = distill.main([str(a) for a in ["--checkpoint", tiny_checkpoints["stage2"], "--out", out, "--pairs", 1010,
                                          "--teacher-steps", 4, "--train-steps", 1, "--batch-size", 8, "--lr", 1e-9,
                                          "--student-from", with_decoder, "--device", "cpu", "--no-progress"]])
    assert code == 0
    source, got = load_model(with_decoder), load_model(out)
    assert got.config["student"] == source.config["student"]
    assert got.meta["metrics"]["distillation"]["student_from"] == str(with_decoder)
    assert "decoder_error" in got.meta["metrics"]["distillation"]
    for (name, a), (_, b) in zip(source.student.decoder.state_dict().items(), got.student.decoder.state_dict().items()):
        assert torch.equal(a, b), name
    net_diff = max((a - b).abs().max().item() for a, b in zip(source.student.net.parameters(), got.student.net.parameters()))
    assert net_diff < 1e-3, net_diff
    torch.manual_seed(0)
    fresh = distill.make_student(source, torch.randn(10, *source.prior.shape), 8)
    assert max((a - b).abs().max().item() for a, b in zip(fresh.net.parameters(), got.student.net.parameters())) > 0.05


@pytest.mark.parametrize("extra,message", [([], "has no distilled student"), (["--channels", 8], "give one of the two")])
def test_distill_refuses_a_student_it_cannot_start_from(tiny_checkpoints, tmp_path, capsys, extra, message):
    code = distill.main([str(a) for a in ["--checkpoint", tiny_checkpoints["stage2"], "--out", tmp_path / "x",
                                          "--student-from", tiny_checkpoints["stage2"], "--no-progress", *extra]])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_kept_decoder_trains_further_while_train_steps_0_keeps_the_unet(with_decoder, tiny_checkpoints, tmp_path,
                                                                          capsys):
    """--student-from S --train-steps 0 --decoder-steps N: the U-Net is S's exactly, its decoder (same
    config entry) trains N steps more, and the figures say so, with its error on the student's own z0."""
    out = tmp_path / "tuned"
    code = distill.main([str(a) for a in ["--checkpoint", tiny_checkpoints["stage2"], "--out", out, "--pairs", 1010,
                                          "--teacher-steps", 4, "--train-steps", 0, "--batch-size", 16,
                                          "--student-from", with_decoder, "--decoder-steps", 20, "--decoder-own", 0.5,
                                          "--device", "cpu", "--no-progress"]])
    assert code == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["decoder_from"] == "student_from" and figures["decoder_steps"] == 20
    assert figures["decoder_own"] == 0.5 and set(figures["decoder_error_own"]) == {"mean_abs", "max_abs"}
    source, got = load_model(with_decoder), load_model(out)
    assert got.config["student"] == source.config["student"]
    for (name, a), (_, b) in zip(source.student.net.state_dict().items(), got.student.net.state_dict().items()):
        assert torch.equal(a, b), name
    moved = max((a - b).abs().max().item() for a, b in zip(source.student.decoder.parameters(),
                                                             got.student.decoder.parameters()))
    assert moved > 1e-3, moved


def test_distill_refuses_to_train_a_decoder_a_student_does_not_have(distilled, tiny_checkpoints, tmp_path, capsys):
    code = distill.main([str(a) for a in ["--checkpoint", tiny_checkpoints["stage2"], "--out", tmp_path / "x",
                                          "--student-from", distilled, "--decoder-steps", 5, "--no-progress"]])
    assert code == 2 and "has none: give --decoder-channels" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_segments_added_to_a_student_start_from_what_it_gave(distilled, tiny_checkpoints, tmp_path, capsys):
    """--segments --student-from S, S without them, --train-steps 0: the target time's embedding
    starts at zero, so the student samples exactly as S did at every step count, and its config
    says it takes the target time; with training steps it learns from there."""
    out = tmp_path / "segments"
    code = distill.main([str(a) for a in ["--checkpoint", tiny_checkpoints["stage2"], "--out", out, "--pairs", 1010,
                                          "--teacher-steps", 4, "--train-steps", 0, "--batch-size", 8, "--segments",
                                          "--student-from", distilled, "--device", "cpu", "--no-progress"]])
    assert code == 0 and json.loads(capsys.readouterr().out)["segments"] is True
    source, got = load_model(distilled), load_model(out)
    assert not source.student.segments and got.student.segments and got.config["student"]["net"]["target_time"]
    for k in STEPS:
        assert torch.equal(draw(source, 4, "distilled", steps=k, seed=2).z0, draw(got, 4, "distilled", steps=k, seed=2).z0)
    code = distill.main([str(a) for a in ["--checkpoint", tiny_checkpoints["stage2"], "--out", tmp_path / "more",
                                          "--pairs", 1010, "--teacher-steps", 4, "--train-steps", 5, "--batch-size", 8,
                                          "--lr", 1e-2, "--student-from", out, "--device", "cpu", "--no-progress"]])
    assert code == 0 and json.loads(capsys.readouterr().out)["segments"] is True
    trained = load_model(tmp_path / "more").student
    moved = (trained.net.target_temb[-1].weight - got.student.net.target_temb[-1].weight).abs().max().item()
    assert moved > 1e-3, moved
