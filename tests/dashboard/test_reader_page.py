"""The Demo page's reader study through AppTest: a scripted reader reads 10 films blinded, is interrupted and resumes, and
the page's sensitivity, specificity and κ equal the counts by hand; films that have gone are named and their answers kept."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from test_pages import open_page, texts

from core.data.datasets import CLASS_NAMES


def reader_study():
    at = open_page("demo")
    at.segmented_control(key="demo_view").set_value("Reader study").run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def progress(at) -> str:
    return " ".join(p.proto.text for p in at.get("progress"))


def saved(run) -> list[dict]:
    """The run's reader sessions as saved, oldest first."""
    return [json.loads(p.read_text()) for p in sorted((run.path / "readers").glob("*.json"))]


def answer(at, call: int, confidence: int, call_first: bool = True):
    clicks = [f"reader_call_{call}", f"reader_confidence_{confidence}"]
    for key in clicks if call_first else clicks[::-1]:
        at.button(key=key).click().run()
        assert not at.exception, [e.message for e in at.exception]


def scripted(films: list[dict]) -> list[tuple[int, int]]:
    """The scripted reader: right except on the 2nd, 5th and 9th films read; confidence 1, 2, … 5, 1, …"""
    return [(f["label"] if i not in (1, 4, 8) else 1 - f["label"], 1 + i % 5) for i, f in enumerate(films)]


def test_a_scripted_ten_film_reading_resumed_after_an_interruption_shows_the_figures_counted_by_hand(finished_only_env):
    run = finished_only_env["finished"]
    at = reader_study()
    at.text_input(key="reader_name").input("Dr Test").run()
    at.number_input(key="reader_n").set_value(10).run()
    at.button(key="reader_start").click().run()
    films = saved(run)[0]["films"]
    assert sorted(f["label"] for f in films) == [0] * 5 + [1] * 5  # 10 of the run's 10 + 10, stratified
    assert "Film 1 of 10" in progress(at)
    # Blinded: the film alone, without its name, label, probability or a heatmap.
    page = texts(at)
    assert len(at.image) == 1
    assert not any(Path(f["film"]).name in page or Path(f["film"]).stem in page for f in films)
    assert "NORMAL" not in page and "PNEUMONIA" not in page and "%" not in page and "Grad-CAM" not in page
    script = scripted(films)
    for i, (call, confidence) in enumerate(script[:4]):
        answer(at, call, confidence, call_first=i % 2 == 0)  # call then confidence, or the other way round
    assert "Film 5 of 10" in progress(at)
    assert len(saved(run)[0]["answers"]) == 4  # saved as given

    # Interrupted: a new browser session; the reader comes back under the same name and resumes.
    at = reader_study()
    at.text_input(key="reader_name").input("dr test").run()
    assert "4 of 10 films read" in texts(at)
    at.button(key="reader_resume").click().run()
    assert "Film 5 of 10" in progress(at)
    for call, confidence in script[4:]:
        answer(at, call, confidence)
    assert not at.exception, [e.message for e in at.exception]
    assert at.segmented_control(key="reader_view").value == "Results"
    [session] = saved(run)
    assert session["finished_at"]
    assert [(CLASS_NAMES.index(a["call"]), a["confidence"]) for a in session["answers"]] == script

    # By hand, from the run's own metrics.json and threshold: counts of the scripted calls.
    probability = {Path(p["file"]).name: p["probability"] for p in run.metrics()["predictions"]}
    truth = [f["label"] for f in films]
    reader = [call for call, _ in script]
    model = [int(probability[Path(f["film"]).name] >= run.threshold()) for f in films]
    tp = sum(y == 1 and c == 1 for y, c in zip(truth, reader))
    tn = sum(y == 0 and c == 0 for y, c in zip(truth, reader))
    sensitivity, specificity = tp / sum(truth), tn / (len(truth) - sum(truth))
    observed = sum(a == b for a, b in zip(reader, model)) / 10
    chance = sum(reader) / 10 * sum(model) / 10 + (1 - sum(reader) / 10) * (1 - sum(model) / 10)
    kappa = (observed - chance) / (1 - chance)
    row = at.table[0].value.loc[session["name"]]
    assert row["Films"] == "10"
    assert row["Sensitivity"] == f"{100 * sensitivity:.1f} %"
    assert row["Specificity"] == f"{100 * specificity:.1f} %"
    assert row["κ with the model"] == f"{kappa:.3f}"
    # Each film where reader and model disagree is shown with its Grad-CAM, and both exports are offered.
    assert len(at.image) == sum(a != b for a, b in zip(reader, model))
    labels = [b.label for b in at.get("download_button")]
    assert "Export CSV" in labels and "Export PNG (one page)" in labels


def test_a_session_over_films_that_have_gone_names_them_and_keeps_the_answers(finished_only_env, tmp_path):
    run = finished_only_env["finished"]
    metrics = run.metrics()  # the run's test films copied, so that some can be deleted
    for p in metrics["predictions"]:
        copy = tmp_path / "films" / Path(p["file"]).name
        copy.parent.mkdir(exist_ok=True)
        shutil.copy(p["file"], copy)
        p["file"] = str(copy)
    run.write_json("metrics.json", metrics)
    at = reader_study()
    at.text_input(key="reader_name").input("Dr Gone").run()
    at.number_input(key="reader_n").set_value(6).run()
    at.button(key="reader_start").click().run()
    films = saved(run)[0]["films"]
    for film in films[:2]:
        answer(at, film["label"], 5)
    read, unread = Path(films[0]["film"]), Path(films[4]["film"])
    read.unlink()
    unread.unlink()

    at = reader_study()
    at.text_input(key="reader_name").input("Dr Gone").run()
    at.button(key="reader_resume").click().run()
    warning = " ".join(str(w.value) for w in at.warning)
    assert f"{read.name} no longer exists" in warning and f"{unread.name} no longer exists" in warning
    assert "answers already given on them are kept" in warning
    for film in films[2:]:
        if Path(film["film"]) != unread:
            answer(at, film["label"], 4)
    assert at.segmented_control(key="reader_view").value == "Results"
    [session] = saved(run)
    assert [a["film"] for a in session["answers"]] == [f["film"] for f in films if Path(f["film"]) != unread]
    assert session["skipped"] == [{"film": str(unread), "reason": "no longer exists"}]
    row = at.table[0].value.loc[session["name"]]
    assert row["Films"] == "5" and row["Sensitivity"] == "100.0 %" and row["Specificity"] == "100.0 %"
    assert f"{read.name} no longer exists" in " ".join(str(w.value) for w in at.warning)


def test_starting_again_never_overwrites_a_saved_session(finished_only_env):
    run = finished_only_env["finished"]
    at = reader_study()
    at.text_input(key="reader_name").input("Dr Twice").run()
    at.number_input(key="reader_n").set_value(4).run()
    at.button(key="reader_start").click().run()
    answer(at, 1, 3)
    first = saved(run)[0]
    at.button(key="reader_pause").click().run()
    assert "1 of 4 films read" in texts(at)
    at.button(key="reader_start").click().run()
    sessions = saved(run)
    assert len(sessions) == 2 and first in sessions  # the first kept as it was, answer included
    assert len({s["name"] for s in sessions}) == 2


def test_a_run_without_test_predictions_says_what_the_study_needs(finished_only_env):
    run = finished_only_env["finished"]
    metrics = run.metrics()
    metrics["predictions"] = []
    run.write_json("metrics.json", metrics)
    at = reader_study()
    assert "needs the run's test evaluation" in texts(at)
