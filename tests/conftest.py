"""Shared fixtures: an isolated cache and run store per test session, and the real-data location."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """A cache folder for the synthetic demo set, generated once per test session."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["CXR_STUDIO_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real chest X-rays staged beside the repository; tests using them skip when absent."""
    root = SHARED_DATA / "chest_xray"
    if not (root / "train").is_dir():
        pytest.skip("real X-rays not present in ../shared/data")
    return root


@pytest.fixture(scope="session")
def restaged_data(real_data) -> Path:
    """The restaged Kaggle copy the shipped starter trained on (core.data.restage, in .cache/ like a user's), built
    once when missing: the starter's training films, which a shift report against it draws on."""
    from core.data.restage import restage

    originals = SHARED_DATA / "chest_xray_train_aspect512"
    out = REPO / ".cache" / "chest_xray-restaged"
    if not out.is_dir():
        if not (originals / "MANIFEST.csv").is_file():
            pytest.skip("the aspect512 originals are not in ../shared/data")
        restage(real_data, originals, out)
    return out


@pytest.fixture(scope="session")
def keras_weights_dir() -> Path:
    path = SHARED_DATA / "keras_weights"
    if not path.is_dir():
        pytest.skip("offline Keras weights not present in ../shared/data/keras_weights")
    return path


@pytest.fixture(scope="session")
def medmnist_npz() -> Path:
    """The real PneumoniaMNIST file staged beside the repository; tests using it skip when absent."""
    path = SHARED_DATA / "medmnist" / "pneumoniamnist.npz"
    if not path.is_file():
        pytest.skip("PneumoniaMNIST not present in ../shared/data/medmnist")
    return path
