"""Fixtures shared by the test modules."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real MNIST and Fashion-MNIST files: $LSGM_TEST_DATA_DIR, else ../shared/data beside the repo.

    Tests that need them are skipped where they are absent.
    """
    path = Path(os.environ.get("LSGM_TEST_DATA_DIR") or Path(__file__).parents[1].parent / "shared" / "data")
    if not (path / "mnist").is_dir():
        pytest.skip(f"real data not found in {path}; set LSGM_TEST_DATA_DIR to a folder with mnist/ and fashion-mnist/")
    return path


@pytest.fixture(scope="session", autouse=True)
def _own_temp_dirs(tmp_path_factory):
    """Keep every temporary file of the run (Gradio uploads, inductor caches) in pytest's folder."""
    base = tmp_path_factory.mktemp("env")
    for var in ("GRADIO_TEMP_DIR", "TORCHINDUCTOR_CACHE_DIR"):
        os.environ.setdefault(var, str(base / var.lower()))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def _train(config: dict, out: Path, data_dir: Path, name: str = "smoke.toml") -> Path:
    """Train configs/<name> with `config` merged in, on the CPU; the final checkpoint's path."""
    from lsgm_core.config import load_config
    from lsgm_core.train import Trainer

    trainer = Trainer(load_config(Path(__file__).parents[1] / "configs" / name, config),
                      out, data_dir, device="cpu", show_progress=False)
    return Path(trainer.train()["checkpoint"])


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory, data_dir) -> dict[str, Path]:
    """A tiny stage-1 VAE and the stage-2 LSGM trained from it on binarized MNIST (seconds, CPU).

    Good enough to exercise every code path; not a model worth looking at.
    """
    import torch

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny")
    s1 = _train({"train": {"max_steps": 60}}, root / "stage1", data_dir)
    s2 = _train({"train": {"stage": 2, "init_from": str(s1), "max_steps": 40}}, root / "stage2", data_dir)
    return {"stage1": s1, "stage2": s2}


def pytest_collection_modifyitems(items):
    """needs_data for every test that reads the real data, directly or through a fixture."""
    for item in items:
        if "data_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.needs_data)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so that a fixture can see whether its test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def pixel_checkpoint(tmp_path_factory, data_dir) -> Path:
    """The pixel baseline of configs/pixel_smoke.toml, trained for a few steps with the same trainer."""
    return _train({"train": {"max_steps": 2, "num_threads": 1}}, tmp_path_factory.mktemp("pixel"), data_dir,
                  "pixel_smoke.toml")


from app_harness import app_server, compare_server  # noqa: E402,F401  (launched apps, shared by the app tests)
