"""core.evaluation.predict with a run that preprocesses its films: the JSON line says what was done, the pixels match."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core.data.datasets import find_dataset
from core.data.images import load_image, prepared_pixels
from core.data.preprocess import Preprocessing
from core.data.sample import sample_root


@pytest.fixture()
def preprocessing_run(tmp_path):
    """A run folder with body crop, marker removal and CLAHE in its config and an untrained tiny model."""
    import keras

    from core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from core.model.classifier import build_classifier
    from core.store.runs import RunStore

    config = RunConfig(name="preprocessing run",
                       data=DataConfig(source="sample", image_size=48, field_of_view="body", remove_markers=True,
                                       intensity="clahe"),
                       model=ModelConfig(backbone="small_cnn", weights="none", unfreeze_from_block=1),
                       train=TrainConfig(batch_size=8, seed=0))
    store = RunStore(tmp_path / "models")
    run = store.create(config.validate())
    keras.utils.set_random_seed(0)
    build_classifier(config.model, 48).save(run.model_path)
    run.write_json("threshold.json", {"threshold": 0.5, "method": "fixed"})
    run.update_status(state="finished")
    return store, run


def test_predict_with_preprocessing_gives_notes_and_uses_the_preprocessed_pixels(preprocessing_run, capsys):
    from core.evaluation.predict import predict_files
    from core.jobs.commands.predict import main
    from core.model.classifier import load_model

    store, run = preprocessing_run
    films = [r.path for r in find_dataset(sample_root()).split("test")[:2]]
    results = predict_files(run, films)
    settings = Preprocessing("body", True, "clahe")
    model = load_model(run.model_path)
    for path, result in zip(films, results):
        prepared = prepared_pixels(path, 48, "stretch", preprocessing=settings)
        assert result["preprocessing"] == list(prepared.notes) and result["preprocessing"][-1] == "CLAHE applied"
        logit = float(np.asarray(model.predict_on_batch(prepared.model_input()[None])).reshape(-1)[0])
        assert result["probability"] == pytest.approx(1 / (1 + np.exp(-logit)), abs=1e-6)
        plain = float(np.asarray(model.predict_on_batch(load_image(path, 48)[None])).reshape(-1)[0])
        assert plain != pytest.approx(logit, abs=1e-6)  # the model did not see the plain film
    assert main(["--run", run.path.name, "--store", str(store.root), films[0]]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["preprocessing"] == results[0]["preprocessing"]
