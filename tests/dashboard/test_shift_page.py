"""The Data page's "Shift against a run" section: a run trained (here: its split saved) on the bundled sample's training films,
measured against the sample's test films from the default folder; a bad folder gets a sentence, an empty store a pointer."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_pages import metric, open_page, texts

from core.data.datasets import find_dataset
from core.data.splits import Splits, write_manifest
from core.evaluation.shift import read_shift_report
from core.store.runs import RunStore

REPO = Path(__file__).resolve().parents[2]
STARTER = REPO / "models" / "starter-efficientnet-lite0"
SAMPLE = REPO / "sample" / "chest_xray"


@pytest.fixture
def sample_run(tmp_path, cache_dir, monkeypatch):
    """The starter's model and threshold, with the bundled sample's training films as its saved training split."""
    if not (STARTER / "model.keras").is_file():
        pytest.skip("the shipped starter is not in this checkout")
    store = RunStore(tmp_path / "runs")
    run_dir = store.root / "sample-trained"
    run_dir.mkdir(parents=True)
    for name in ("model.keras", "config.json", "threshold.json", "status.json"):
        shutil.copy(STARTER / name, run_dir / name)
    index = find_dataset(SAMPLE)
    write_manifest(Splits(index.split("train"), [], index.split("test"), "the bundled sample", root=index.root,
                          layout=index.layout), run_dir / "splits.json")
    monkeypatch.setenv("CXR_STUDIO_RUNS", str(store.root))
    return store.get("sample-trained")


def test_the_data_page_measures_the_shift_of_the_sample_test_films_against_a_run(sample_run):
    at = open_page()
    assert "Shift against a run" in texts(at) and "This run has no shift report yet." in texts(at)
    assert at.selectbox(key="shift_run").value == sample_run.id
    assert at.text_input(key="shift_folder").value == "sample/chest_xray/test"
    at.number_input(key="shift_films").set_value(40).run()
    next(b for b in at.button if b.label == "Measure the shift").click().run()
    assert not at.exception, [e.message for e in at.exception]
    saved = read_shift_report(sample_run, "test")  # saved in the run folder as shifts/test.json
    assert metric(at, "Domain AUC") == f"{saved['domain']['auc']:.2f}"
    assert metric(at, "Site profile first?") == ("yes" if saved["recommend_site_profile"] else "no")
    shown = texts(at)
    assert all(line in shown for line in saved["reading"])
    assert "Training side: 40 of the run's" in shown and "saved as `shifts/test.json`" in shown
    table = next(d.value for d in at.dataframe if "KS D" in d.value.columns)
    assert list(table["statistic"])[:3] == ["stored width, px", "stored height, px", "width / height"]
    captions = [caption for image in at.image for caption in image.captions]
    assert sum("P(new)" in c for c in captions) == len(saved["domain"]["most_foreign"]) == 8
    assert at.selectbox(key=f"shift_report-{sample_run.id}").value == "test"


def test_a_folder_that_is_not_there_gets_a_sentence_and_no_report(sample_run, tmp_path):
    at = open_page()
    at.text_input(key="shift_folder").input(str(tmp_path / "nowhere")).run()
    next(b for b in at.button if b.label == "Measure the shift").click().run()
    assert not at.exception
    assert any("No shift report was made: folder not found" in e.value for e in at.error)
    assert not (sample_run.path / "shifts").exists()


def test_without_a_finished_run_the_section_says_to_train_one(empty_env):
    at = open_page()
    assert "No finished run yet" in texts(at)
