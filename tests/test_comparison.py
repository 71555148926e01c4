"""lsgm_core.comparison: a model against a baseline at one seed and the same solver settings."""
import pytest
import torch
from solver_stubs import untrained_student

from lsgm_core import load_model
from lsgm_core.comparison import MIN_SECONDS, compare, equal_fid, speedup
from lsgm_core.solvers import sample


@pytest.fixture(scope="module")
def models(tiny_checkpoints, pixel_checkpoint):
    return load_model(tiny_checkpoints["stage2"]), load_model(pixel_checkpoint)


def test_speedup_is_baseline_over_model():
    assert speedup(0.5, 10, 2.0, 30) == {"seconds": 4.0, "nfe": 3.0}
    # a time below the timer's resolution is not an infinite speed-up
    assert speedup(0.0, 5, 1.0, 5) == {"seconds": 1.0 / MIN_SECONDS, "nfe": 1.0}


def test_equal_fid_takes_the_fastest_setting_of_each_that_reaches_the_worse_best_fid():
    latent = {"fast:5": {"seconds": 0.1, "nfe": 5, "fid": 9.0}, "fast:10": {"seconds": 0.2, "nfe": 10, "fid": 3.0},
              "ode:1e-5": {"seconds": 1.5, "nfe": 140, "fid": 2.0}}
    pixel = {"fast:20": {"seconds": 6.0, "nfe": 20, "fid": 5.0}, "ode:1e-3": {"seconds": 20.0, "nfe": 62, "fid": 4.0},
             "ode:1e-5": {"seconds": 80.0, "nfe": 230, "fid": 4.5}}
    e = equal_fid(latent, pixel)
    # the pixel model's best is 4.0: the latent model's fastest setting at or under it is fast:10
    assert e["fid"] == 4.0
    assert e["model"] == {"run": "fast:10", "fid": 3.0, "nfe": 10, "seconds": 0.2}
    assert e["baseline"] == {"run": "ode:1e-3", "fid": 4.0, "nfe": 62, "seconds": 20.0}
    assert e["speedup"] == pytest.approx({"seconds": 100.0, "nfe": 6.2})
    # the other way round the level is the latent model's best, and the ratio inverts accordingly
    assert equal_fid(pixel, latent)["fid"] == 4.0 and equal_fid(pixel, latent)["speedup"]["seconds"] == 0.01
    with pytest.raises(ValueError, match="at least one measured run"):
        equal_fid({}, pixel)


def test_a_model_against_itself_draws_the_same_images_at_the_same_cost(models):
    lsgm, _ = models
    c = compare(lsgm, lsgm, 5, "fast", steps=4, seed=11)
    assert torch.equal(c.model.images, c.baseline.images)
    assert c.model.nfe == c.baseline.nfe == 4 and c.speedup["nfe"] == 1.0
    assert c.speedup["seconds"] == pytest.approx(c.baseline.seconds / c.model.seconds)


@pytest.mark.parametrize("solver,options", [("fast", {"steps": 3}), ("ode", {"atol": 1e-3, "rtol": 1e-3}),
                                            ("sde", {"steps": 4})])
def test_each_side_is_a_plain_sample_of_its_model_at_that_seed(models, solver, options):
    lsgm, pixel = models
    c = compare(lsgm, pixel, 3, solver, **options, seed=7)
    for side, model in ((c.model, lsgm), (c.baseline, pixel)):
        alone = sample(model, 3, solver, **options, seed=7)
        assert torch.equal(side.images, alone.images) and side.nfe == alone.nfe
    assert c.model.images.shape == c.baseline.images.shape  # both the data's 28x28 images
    assert c.speedup == speedup(c.model.seconds, c.model.nfe, c.baseline.seconds, c.baseline.nfe)
    again = compare(lsgm, pixel, 3, solver, **options, seed=7)
    assert torch.equal(again.model.images, c.model.images) and torch.equal(again.baseline.images, c.baseline.images)


def test_progress_runs_over_both_sides_and_stopping_it_aborts(models):
    lsgm, pixel = models
    seen = []
    compare(lsgm, pixel, 2, "fast", steps=3, callback=seen.append)
    assert [d["side"] for d in seen] == ["model"] * 3 + ["baseline"] * 3
    done = [d["done"] for d in seen]
    # each side's first evaluation is at t = 1, nothing done yet on it
    assert done == sorted(done) and done[0] == 0 and done[2] < 0.5 == done[3] and done[-1] < 1

    def stop(d):
        if d["side"] == "baseline":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compare(lsgm, pixel, 2, "fast", steps=3, callback=stop)


def test_bad_settings_are_refused_before_any_work_and_a_sides_own_error_names_it(models, monkeypatch):
    lsgm, pixel = models
    seen = []
    with pytest.raises(ValueError, match="^steps must be at least 1"):
        compare(lsgm, pixel, 2, "fast", steps=0, callback=seen.append)
    with pytest.raises(ValueError, match="^unknown solver 'rk4'"):
        compare(lsgm, pixel, 2, "rk4", callback=seen.append)
    assert seen == []
    # neither tiny model has a distilled student: the model's side is the first to say so
    with pytest.raises(ValueError, match="^the model: this model has no distilled student"):
        compare(lsgm, pixel, 2, "distilled", steps=1)
    # with one, the baseline's lack of it is refused before the model's samples are drawn
    monkeypatch.setattr(lsgm, "student", untrained_student(lsgm)[0])
    with pytest.raises(ValueError, match="^the baseline: this model has no distilled student"):
        compare(lsgm, pixel, 2, "distilled", steps=1, callback=seen.append)
    assert seen == []
