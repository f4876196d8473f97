"""Reader sessions and their figures: a stratified, seeded draw; sessions that resume, never overwrite and keep no more than
film ids and answers; films that have gone; sensitivity, specificity, κ, McNemar and the ROCs against counts by hand; the exports."""
from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.evaluation.reader_report import CSV_COLUMNS, export_csv, figure_rows, reader_png
from core.evaluation.reader_stats import mcnemar_exact, model_curve, pooled_films, reader_figures, session_figures
from core.evaluation.readers import (ReaderError, choose_films, film_problem, list_sessions, load_session, rating,
                                     reader_slug, resumable_session, save_session, start_session)

T0 = 1_790_000_000.0  # a fixed "now" for the session names


class FakeRun:
    def __init__(self, path: Path):
        self.path = path


def make_films(folder: Path, normal: int, pneumonia: int, seed: int = 0) -> list[dict]:
    """Tiny PNG films and metrics.json-style predictions for them (distinct content, so distinct sha256)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    predictions = []
    for i in range(normal + pneumonia):
        label = int(i >= normal)
        name = f"person{i}_bacteria_{i}.png" if label else f"IM-{i:04d}-0001.png"
        path = folder / name
        Image.fromarray(rng.integers(0, 255, (24, 30), dtype=np.uint8)).save(path)
        predictions.append({"file": str(path), "label": label, "probability": float(rng.uniform(0, 1)),
                            "patient": path.stem, "subtype": None})
    return predictions


@pytest.fixture
def run(tmp_path) -> FakeRun:
    return FakeRun(tmp_path / "run")


# ---------------------------------------------------------------------------------- the draw
def test_the_draw_is_stratified_by_class_seeded_and_only_of_films_that_exist(tmp_path):
    predictions = make_films(tmp_path / "films", 30, 70)
    Path(predictions[0]["file"]).unlink()  # a test film gone before the study: never drawn
    films = choose_films(predictions, 20, seed=3)
    assert [f.label for f in films].count(0) == 6 and [f.label for f in films].count(1) == 14  # 29 : 70 kept
    assert len({f.film for f in films}) == 20 and predictions[0]["file"] not in {f.film for f in films}
    assert choose_films(predictions, 20, seed=3) == films  # same seed: same films in the same order
    assert [f.film for f in choose_films(predictions, 20, seed=4)] != [f.film for f in films]
    by_file = {p["file"]: p for p in predictions}
    assert all(f.label == by_file[f.film]["label"] and f.probability == by_file[f.film]["probability"] for f in films)
    everything = choose_films(predictions, 99, seed=0)  # all of them: a shuffled order
    assert sorted(f.film for f in everything) == sorted(p["file"] for p in predictions[1:])


def test_the_draw_refuses_what_it_cannot_do(tmp_path):
    predictions = make_films(tmp_path / "films", 5, 5)
    with pytest.raises(ReaderError, match="between 2 and 10"):
        choose_films(predictions, 11)
    with pytest.raises(ReaderError, match="between 2 and 10"):
        choose_films(predictions, 1)
    with pytest.raises(ReaderError, match="both classes"):
        choose_films(predictions[:5], 3)
    with pytest.raises(ReaderError, match="name"):
        reader_slug(" /// ")
    assert reader_slug("Dr. Anna Müller/ICU") == "dr-anna-müller-icu" == reader_slug(" dr anna müller icu")


def test_the_ten_ratings_run_from_certainly_normal_to_certainly_pneumonia():
    order = [rating(0, 5), rating(0, 4), rating(0, 3), rating(0, 2), rating(0, 1),
             rating(1, 1), rating(1, 2), rating(1, 3), rating(1, 4), rating(1, 5)]
    assert order == sorted(order) and len(set(order)) == 10
    with pytest.raises(ReaderError):
        rating(1, 6)


# ---------------------------------------------------------------------------------- sessions
def test_a_session_is_saved_answer_by_answer_and_an_interrupted_one_resumes(tmp_path, run):
    predictions = make_films(tmp_path / "films", 6, 6)
    session = start_session(run, "Dr A", predictions, 8, seed=1, operating_point={"threshold": 0.4}, now=T0)
    assert session.path == run.path / "readers" / f"dr-a-{time.strftime('%Y%m%d-%H%M%S', time.localtime(T0))}.json"
    for film in session.films[:3]:
        session.answer(film.film, 1, 4, now=T0)
        save_session(session)
    # A new page, a restarted dashboard: only the file is left.
    resumed = resumable_session(run, "dr a")
    assert resumed is not None and resumed.name == session.name
    assert resumed.position() == 3 and resumed.next_film() == session.films[3]
    assert [a.film for a in resumed.answers] == [f.film for f in session.films[:3]]
    assert resumable_session(run, "Dr B") is None
    for film in resumed.films[3:]:
        resumed.answer(film.film, 0, 2, now=T0)
    save_session(resumed)
    assert resumed.finished and resumable_session(run, "Dr A") is None
    saved = json.loads(session.path.read_text())
    assert saved["operating_point"] == {"threshold": 0.4} and saved["seed"] == 1
    # Film ids, their hash, the label and the model's probability: nothing else about a patient.
    assert all(set(film) == {"film", "sha256", "label", "probability"} for film in saved["films"])
    assert {a["call"] for a in saved["answers"]} == {"NORMAL", "PNEUMONIA"}


def test_a_new_session_never_overwrites_a_saved_one_of_the_same_name(tmp_path, run):
    predictions = make_films(tmp_path / "films", 4, 4)
    first = start_session(run, "Dr A", predictions, 4, now=T0)
    first.answer(first.films[0].film, 1, 5, now=T0)
    save_session(first)
    before = first.path.read_text()
    second = start_session(run, "Dr A", predictions, 6, now=T0)  # the same reader in the same second
    third = start_session(run, "Dr A", predictions, 6, now=T0)
    assert second.name == f"{first.name}-2" and third.name == f"{first.name}-3"
    assert first.path.read_text() == before
    assert sorted(s.name for s in list_sessions(run)[0]) == sorted([first.name, second.name, third.name])


def test_films_that_have_gone_or_changed_are_named_and_the_answers_kept(tmp_path, run):
    predictions = make_films(tmp_path / "films", 4, 4)
    session = start_session(run, "Dr A", predictions, 6, now=T0)
    session.answer(session.films[0].film, 1, 3, now=T0)
    save_session(session)
    gone, changed, fine = session.films[0], session.films[1], session.films[2]
    Path(gone.film).unlink()
    Image.fromarray(np.zeros((24, 30), dtype=np.uint8)).save(changed.film)
    assert film_problem(gone) == "no longer exists"
    assert film_problem(changed).startswith("has changed")
    assert film_problem(fine) is None
    session.skip(changed.film, film_problem(changed), now=T0)
    save_session(session)
    again = load_session(run, session.name)
    assert [a.film for a in again.answers] == [gone.film]  # the answer on the gone film is still there
    assert again.next_film() == fine and not again.finished
    assert session_figures(again, 0.5).n == 1


def test_an_unreadable_session_file_is_named_not_fatal(tmp_path, run):
    predictions = make_films(tmp_path / "films", 3, 3)
    start_session(run, "Dr A", predictions, 4, now=T0)
    (run.path / "readers" / "broken.json").write_text("{not json")
    sessions, problems = list_sessions(run)
    assert len(sessions) == 1 and len(problems) == 1 and "broken.json" in problems[0]


# ---------------------------------------------------------------------------------- figures
def wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_the_figures_equal_counts_by_hand():
    labels = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    calls = [1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0]  # 4 of 6 pneumonia, 5 of 6 normal
    confidence = [5, 4, 3, 2, 2, 1, 5, 4, 3, 1, 2, 1]
    scores = [rating(c, k) for c, k in zip(calls, confidence)]
    prob = [0.9, 0.8, 0.3, 0.7, 0.6, 0.2, 0.1, 0.6, 0.2, 0.3, 0.4, 0.7]  # the model at 0.5: 4 of 6, 4 of 6
    f = reader_figures(labels, calls, scores, prob, 0.5, [f"film{i}" for i in range(12)])
    assert (f.sensitivity.successes, f.sensitivity.total, f.specificity.successes, f.specificity.total) == (4, 6, 5, 6)
    assert f.sensitivity.value == pytest.approx(4 / 6) and f.specificity.value == pytest.approx(5 / 6)
    assert (f.sensitivity.low, f.sensitivity.high) == pytest.approx(wilson_by_hand(4, 6))
    assert (f.model_sensitivity.successes, f.model_specificity.successes) == (4, 4)
    model = [int(p >= 0.5) for p in prob]
    agree = sum(a == b for a, b in zip(calls, model)) / 12
    expected = (sum(calls) / 12) * (sum(model) / 12) + (1 - sum(calls) / 12) * (1 - sum(model) / 12)
    assert f.kappa == pytest.approx((agree - expected) / (1 - expected))
    assert f.disagreements == tuple(f"film{i}" for i in range(12) if calls[i] != model[i])
    # McNemar: the reader alone is right on films 2, 7, 11; the model alone on 4 and 9.
    assert (f.mcnemar.reader_only, f.mcnemar.model_only) == (3, 2)
    assert f.mcnemar.p_value == pytest.approx(1.0)
    # The reader's AUC is the share of (pneumonia, normal) pairs their rating orders right, ties counting half.
    pairs = [(s1 > s0) + 0.5 * (s1 == s0)
             for s1, y1 in zip(scores, labels) if y1 for s0, y0 in zip(scores, labels) if not y0]
    assert f.reader_roc.auc == pytest.approx(sum(pairs) / len(pairs))
    # The reader's call is a point of their own ROC curve (the cut between "normal, a guess" and "pneumonia, a guess").
    assert any(x == pytest.approx(1 - 5 / 6) and y == pytest.approx(4 / 6)
               for x, y in zip(f.reader_roc.fpr, f.reader_roc.tpr))


def test_mcnemar_is_exact_on_the_discordant_films():
    test = mcnemar_exact([True] * 5 + [True] * 4, [False] * 5 + [True] * 4)
    assert (test.reader_only, test.model_only) == (5, 0)
    assert test.p_value == pytest.approx(2 * 0.5 ** 5)  # two-sided binomial at ½
    assert mcnemar_exact([True, False], [True, False]).p_value == 1.0


def test_kappa_is_none_when_it_is_undefined():
    f = reader_figures([1, 0], [1, 1], [9, 9], [0.9, 0.8], 0.5)
    assert f.kappa is None and f.specificity.value == 0.0


# ---------------------------------------------------------------------------------- exports
def test_the_csv_has_a_row_per_film_per_reader_and_the_png_one_page(tmp_path, run):
    predictions = make_films(tmp_path / "films", 5, 5)
    sessions = []
    for reader, calls in (("Dr A", [1, 0, 1, 1]), ("Dr B", [0, 0, 1])):
        session = start_session(run, reader, predictions, 6, seed=2, now=T0)
        for film, call in zip(session.films, calls):
            session.answer(film.film, call, 3, now=T0)
        save_session(session)
        sessions.append(session)
    rows = list(csv.DictReader(io.StringIO(export_csv(sessions, 0.5, "validation"))))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 12
    first = [r for r in rows if r["session"] == sessions[0].name]
    assert [r["reader_call"] for r in first[:4]] == ["PNEUMONIA", "NORMAL", "PNEUMONIA", "PNEUMONIA"]
    assert [r["status"] for r in first] == ["answered"] * 4 + ["not read yet"] * 2
    assert all(r["model_call"] == ("PNEUMONIA" if float(r["model_probability"]) >= 0.5 else "NORMAL") for r in rows)
    figures = [session_figures(s, 0.5) for s in sessions]
    table = figure_rows(figures)
    assert [r["Films"] for r in table] == ["4", "3"]
    films = pooled_films(sessions)
    assert len(films) == 4  # the same seed: Dr B's three films are among Dr A's four
    png = reader_png(figures, films, 0.5, "a run", "the run's validation threshold", model_curve(films))
    page = Image.open(io.BytesIO(png))
    assert page.width == 1240 and page.height <= round(1240 * 1.414)
    pixels = np.asarray(page.convert("RGB")).reshape(-1, 3)
    assert (pixels == [0xE4, 0x57, 0x56]).all(axis=1).any()  # the first reader's colour is drawn
