"""Ensembles as runs: members are normal runs, the ensemble averages their logits, picks its own threshold, explains."""
from __future__ import annotations

import numpy as np
import pytest

from core.config import preset
from core.evaluation.explain import EnsembleExplainer
from core.jobs.ensemble import build_ensemble, create_ensemble, create_seed_ensemble
from core.evaluation.ensemble import is_ensemble, member_ids
from core.evaluation.ensemble import member_models
from core.store.runs import RunError, RunStore


def _config(seed: int, split_seed: int | None = 0):
    """Small CNN, 32 px, 60 synthetic films per class, 2 epochs: seconds per member."""
    return preset("Quick CPU demo").with_overrides(**{
        "name": f"member-{seed}", "data.image_size": 32, "data.demo_images_per_class": 60,
        "train.finetune.epochs": 2, "train.seed": seed, "data.split_seed": split_seed,
        "train.threshold_method": "youden_midpoint"})


@pytest.fixture(scope="module")
def trained_ensemble(tmp_path_factory, cache_dir):
    store = RunStore(tmp_path_factory.mktemp("ensemble-store"))
    config = _config(1)
    run = create_seed_ensemble(store, config, seeds=2)
    build_ensemble(run)
    return store, run


@pytest.mark.slow
def test_seed_ensemble_trains_members_shares_their_split_and_averages_logits(trained_ensemble):
    from core.data.images import load_image
    from core.model.classifier import load_model
    from core.data.splits import saved_splits

    store, run = trained_ensemble
    members = [store.get(m) for m in member_ids(run)]
    assert is_ensemble(run) and not any(is_ensemble(m) for m in members)
    assert [m.config().train.seed for m in members] == [1, 2] and {m.config().split_seed for m in members} == {0}
    assert all(m.status().state == "finished" for m in members)
    assert [r.path for r in saved_splits(run.path).test] == [r.path for r in saved_splits(members[0].path).test]

    threshold = run.read_json("threshold.json")
    assert threshold["method"] == "youden_midpoint" and "ensemble of 2" in threshold["chosen_on"]
    metrics = run.metrics()
    assert metrics["n"] == len(saved_splits(run.path).test) and 0.0 <= metrics["roc_auc"] <= 1.0

    # The saved ensemble is the mean of the members' logits, image for image.
    ensemble, models = load_model(run.model_path), [load_model(m.model_path) for m in members]
    assert len(member_models(ensemble)) == 2
    for row in metrics["predictions"][:5]:
        x = load_image(row["file"], 32)[None]
        mean = np.mean([float(m.predict_on_batch(x)[0, 0]) for m in models])
        assert float(ensemble.predict_on_batch(x)[0, 0]) == pytest.approx(mean, abs=1e-5)
        assert row["probability"] == pytest.approx(1 / (1 + np.exp(-mean)), abs=1e-5)


@pytest.mark.slow
def test_ensemble_heatmap_is_the_mean_of_member_maps_for_the_ensembles_call(trained_ensemble):
    from core.evaluation.explain import Explainer
    from core.data.images import load_image
    from core.model.classifier import load_model

    store, run = trained_ensemble
    ensemble = load_model(run.model_path)
    explainer = EnsembleExplainer(ensemble, threshold=run.threshold())
    members = [load_model(store.get(m).model_path) for m in member_ids(run)]
    with_signal = 0
    for row in run.metrics()["predictions"][:6]:  # a tiny model can give a film no evidence at all: then a flat map
        image = load_image(row["file"], 32)
        result = explainer.explain(image, "gradcam")
        assert result.probability == pytest.approx(row["probability"], abs=1e-5)
        maps = [Explainer(model).explain(image, "gradcam", result.explained).cam for model in members]
        mean = np.mean(maps, axis=0)
        expected = (mean - mean.min()) / (mean.max() - mean.min() + 1e-7)
        assert result.cam.shape == (32, 32) and result.cam.min() >= 0
        assert np.allclose(result.cam, expected, atol=1e-4)
        if mean.max() - mean.min() > 1e-3:
            with_signal += 1
            assert result.cam.max() == pytest.approx(1, abs=1e-4)  # scaled to 0..1 like every heatmap
    assert with_signal >= 1


def test_an_ensemble_needs_two_compatible_normal_runs(tmp_path, cache_dir):
    store = RunStore(tmp_path)
    a = store.create(_config(1))
    with pytest.raises(RunError, match="at least two"):
        create_ensemble(store, [a.id])
    with pytest.raises(RunError, match="unknown|no run"):
        create_ensemble(store, [a.id, "no-such-run"])
    other_size = store.create(_config(2).with_overrides(**{"data.image_size": 48}))
    with pytest.raises(RunError, match="same image"):
        create_ensemble(store, [a.id, other_size.id])


@pytest.mark.slow
def test_members_with_different_validation_splits_are_refused(tmp_path, cache_dir):
    from core.jobs.run import run_and_record

    store = RunStore(tmp_path)
    runs = [store.create(_config(seed, split_seed=None)) for seed in (1, 2)]  # split seed follows the seed
    for run in runs:
        assert run_and_record(run, resume=False) == 0, run.raw_status().error
    ensemble = create_ensemble(store, [r.id for r in runs])
    with pytest.raises(RunError, match="split_seed"):
        build_ensemble(ensemble)
