"""The stability benchmark's shifts do what they say, and its counts add up on the shipped starter."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.stability import BORDER_MASK, SHIFTS, blur, crop, gamma, half_resolution, jpeg, measure, paste_letter
from core.config.paths import REPO_ROOT
from core.data.datasets import find_dataset
from core.data.sample import sample_root


def _film() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.clip(np.linspace(40, 200, 300)[None, :] + rng.normal(0, 20, (400, 300)), 0, 255).astype(np.uint8)


def test_each_shift_changes_the_film_in_its_own_way():
    film = _film()
    assert crop(film, 0.05).shape == (360, 270) and crop(film, 0.05, "left").shape == (400, 285)
    assert gamma(film, 0.7).mean() > film.mean() > gamma(film, 1.4).mean()
    assert jpeg(film, 30).shape == film.shape and np.abs(jpeg(film, 30).astype(int) - film).mean() > 1
    assert blur(film, 0.004).std() < film.std()
    assert half_resolution(film).shape == (200, 150)
    corner = (slice(0, 40), slice(240, 300))
    assert paste_letter(film)[corner].max() == 255 and (paste_letter(film)[corner] == 255).sum() > 20
    assert (paste_letter(film)[:, :200] == film[:, :200]).all()
    assert all(shift(film).dtype == np.uint8 for shift in SHIFTS.values())


@pytest.mark.slow
def test_flips_add_up_per_class_for_the_shipped_starter():
    films = [(r.path, r.label) for label in (0, 1) for r in
             [r for r in find_dataset(sample_root()).split("test") if r.label == label][:2]]
    result = measure([REPO_ROOT / "models" / "starter-efficientnet-lite0"], films, say=lambda _: None)
    assert result["n_films"] == 4 and len(result["runs"]) == 1
    shifts = result["runs"][0]["shifts"]
    assert set(shifts) == {*SHIFTS, BORDER_MASK}  # the audit's neutral-fill border mask beside the film shifts
    for row in shifts.values():
        assert row["flipped"] == sum(c["flipped"] for c in row["per_class"].values()) <= 4
        assert 0 <= row["mean_abs_delta"] <= 1 and abs(row["mean_delta"]) <= row["mean_abs_delta"] + 1e-12
