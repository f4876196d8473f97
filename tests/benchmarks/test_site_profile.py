"""The starter's site-profile benchmark, run on the bundled sample's test films as the site."""
from __future__ import annotations

import json

import pytest

from benchmarks._common import REPO
from benchmarks.site_profile import main

STARTER = REPO / "models" / "starter-efficientnet-lite0"


def test_the_benchmark_writes_the_cross_fitted_figures_and_no_film_paths(tmp_path, cache_dir):
    if not (STARTER / "model.keras").is_file():
        pytest.skip("the shipped starter is not in this checkout")
    out = tmp_path / "site.json"
    assert main(["--data", str(REPO / "sample" / "chest_xray"), "--out", str(out)]) == 0
    text = out.read_text()
    profile = json.loads(text)["profile"]
    assert profile["n"] == 80 and profile["counts"] == {"NORMAL": 40, "PNEUMONIA": 40}
    assert profile["cross_fitted"]["n_splits"] == 20 and profile["uncalibrated"]["threshold"] == 0.5
    assert "sample/chest_xray" not in text and "films" not in profile  # figures only, no paths of the machine
    assert not list(STARTER.glob("sites/*.json"))  # the shipped run is left as it was
