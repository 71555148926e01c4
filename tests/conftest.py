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
