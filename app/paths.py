"""Where the app's shipped files live, and the class names of the shipped data sets."""
from __future__ import annotations

from pathlib import Path

from lsgm_core.datasets import DATASETS

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"
CHECKPOINTS = ROOT / "checkpoints"
RUNS = ROOT / "runs" / "app"

# The test sets whose images the app ships (assets/latent, assets/examples; written by
# `python -m app.make_assets`): each registered data set's `shown_as`, in the registry's order.
CLASS_NAMES = {spec.shown_as: list(DATASETS[spec.shown_as].class_names) for spec in DATASETS.values() if spec.shown_as}


def shown_test_set(dataset: str) -> str:
    """The test set shown beside a model trained on `dataset`; the first one for a folder of the user's images
    and for data sets whose images the app does not ship."""
    spec = DATASETS.get(dataset)
    return spec.shown_as if spec and spec.shown_as else next(iter(CLASS_NAMES))
