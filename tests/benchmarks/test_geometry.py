"""benchmarks.geometry's variants: a resize mode alone means no preprocessing, whatever the preset has."""
from __future__ import annotations

from benchmarks.geometry import VARIANTS
from core.config import preset
from core.data.preprocess import NO_PREPROCESSING, Preprocessing


def test_each_variant_is_what_its_name_says_on_top_of_the_preprocessing_preset():
    base = preset("Quick real-sample demo")
    assert Preprocessing.of(base.data).active  # the preset preprocesses: a bare mode must switch that off
    for name, overrides in VARIANTS.items():
        data = base.with_overrides(**overrides).validate().data
        if name == "preprocessed":
            assert Preprocessing.of(data) == Preprocessing.of(base.data) and data.resize_mode == "center_square"
        else:
            assert Preprocessing.of(data) == NO_PREPROCESSING and data.resize_mode == name
