"""The Demo page's reader study: a clinician reads films blinded (call + confidence, with keys), then sees their figures against the model's."""
from __future__ import annotations

import os
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.data.datasets import CLASS_NAMES
from core.data.decode import ImageLoadError
from core.data.images import prepared_pixels
from core.data.preprocess import Preprocessing
from core.data.sample import local_path
from core.evaluation.overlay import cam_on_film, overlay
from core.evaluation.reader_report import MODEL_COLOUR, READER_COLOURS, export_csv, figure_rows, model_row, reader_png
from core.evaluation.reader_stats import ReaderFigures, model_curve, pooled_films, session_figures
from core.evaluation.readers import (CONFIDENCE_LEVELS, Film, ReaderError, ReaderSession, film_problem, list_sessions,
                                     load_session, reader_slug, resumable_session, save_session, start_session)
from core.evaluation.sites import OperatingPoint
from core.store.runs import Run
from dashboard import charts, resources

__all__ = ["render", "VIEWS"]

VIEWS = ("Reading", "Results")
CALL_KEYS = ("N", "P")  # Normal, Pneumonia
MOST_DISAGREEMENTS = 12  # Grad-CAMs shown at once


def render(run: Run, point: OperatingPoint) -> None:
    """The reader study of ``run``, its model called at ``point``: reading and results."""
    predictions = [p for p in resources.run_predictions(run) if p.get("probability") is not None]
    if not predictions:
        st.info("The reader study compares a reader with the model on the run's test films, so it needs the run's "
                "test evaluation (metrics.json). Evaluate the run first.", icon=":material/rule:")
        return
    st.session_state.setdefault("reader_view", VIEWS[0])
    view = st.segmented_control("Reader study", VIEWS, key="reader_view") or VIEWS[0]
    if message := st.session_state.pop("reader_error", None):
        st.error(message, icon=":material/error:")
    if notice := st.session_state.pop("reader_notice", None):
        st.warning(notice, icon=":material/image_not_supported:")
    if view == "Results":
        _results(run, point)
        return
    active = st.session_state.get("reader_active") or {}
    session = None
    if active.get("run") == run.id:
        try:
            session = load_session(run, active["name"])
        except ReaderError as exc:
            st.error(str(exc), icon=":material/error:")
    if session is None or session.finished:
        _setup(run, point, predictions)
    else:
        _read(run, point, session)


# ---------------------------------------------------------------------------------- starting and resuming
def _activate(run: Run, session: ReaderSession) -> None:
    """Make ``session`` the one being read; films of it that can no longer be shown are left out, and named."""
    answered = session.answered
    gone = [(film, problem) for film in session.films if (problem := film_problem(film))]
    for film, problem in gone:
        if film.film not in answered:
            session.skip(film.film, problem)
    if gone:
        save_session(session)
        kept = sum(film.film in answered for film, _ in gone)
        st.session_state["reader_notice"] = (
            f"{len(gone)} film{'s' if len(gone) > 1 else ''} of session {session.name} can no longer be shown: "
            + "; ".join(f"{film.name} {problem}" for film, problem in gone)
            + f". {'The answers already given on them are kept and counted; ' if kept else ''}"
              "the films not read yet are left out of the reading.")
    st.session_state["reader_active"] = {"run": run.id, "name": session.name}
    st.session_state["reader_pending"] = {}
    if session.finished:
        _finish(session)


def _finish(session: ReaderSession) -> None:
    st.session_state["reader_active"] = {}
    st.session_state["reader_view"] = "Results"
    st.session_state["reader_focus"] = session.name


def _start(run: Run, point: OperatingPoint, predictions: list[dict[str, Any]]) -> None:
    try:
        session = start_session(run, st.session_state.get("reader_name", ""), predictions,
                                int(st.session_state.get("reader_n", 10)), int(st.session_state.get("reader_seed", 0)),
                                point.to_dict())
    except (ReaderError, OSError) as exc:
        st.session_state["reader_error"] = f"The reading cannot start: {exc}"
        return
    _activate(run, session)


def _resume(run: Run, name: str) -> None:
    try:
        _activate(run, load_session(run, name))
    except (ReaderError, OSError) as exc:
        st.session_state["reader_error"] = f"The session cannot be resumed: {exc}"


def _setup(run: Run, point: OperatingPoint, predictions: list[dict[str, Any]]) -> None:
    readable = sum(os.path.isfile(local_path(str(p["file"])).split("::")[0]) for p in predictions)
    st.markdown("Read films **blinded**: each film is shown without its label, the model's answer or a heatmap. "
                "Give a call and how sure you are; every answer is saved at once, so an interrupted session resumes.")
    name_col, n_col, seed_col = st.columns([3, 2, 1])
    name = name_col.text_input("Reader name", key="reader_name", placeholder="initials will do",
                               help="Names the session file; no patient data is stored.")
    if readable < 2:
        st.warning(f"Only {readable} of the run's {len(predictions)} test films can be read here: a reader study "
                   "needs at least 2.", icon=":material/image_not_supported:")
        return
    st.session_state.setdefault("reader_n", min(20, readable))
    clamped = min(max(int(st.session_state["reader_n"]), 2), readable)
    if clamped != st.session_state["reader_n"]:  # set only when it must change: a set value is pushed to the browser
        st.session_state["reader_n"] = clamped
    n_col.number_input("Films to read", min_value=2, max_value=readable, step=1, key="reader_n",
                       help=f"Drawn from the run's {readable} test films, stratified by class.")
    seed_col.number_input("Seed", min_value=0, step=1, key="reader_seed",
                          help="The same seed draws the same films in the same order for every reader, "
                               "so readers can be compared film by film.")
    unfinished = None
    if name.strip():
        try:
            reader_slug(name)
            unfinished = resumable_session(run, name)
        except ReaderError as exc:
            st.warning(str(exc), icon=":material/badge:")
    start_col, resume_col = st.columns(2)
    start_col.button("Start reading", type="primary", icon=":material/play_arrow:", key="reader_start", width="stretch",
                     disabled=not name.strip(), on_click=_start, args=(run, point, predictions),
                     help="A new session; a saved one is never overwritten.")
    if unfinished is not None:
        resume_col.button("Resume reading", icon=":material/resume:", key="reader_resume", width="stretch",
                          on_click=_resume, args=(run, unfinished.name))
        st.info(f"**{unfinished.reader}** has an unfinished session, **{unfinished.name}**: {unfinished.position()} "
                f"of {len(unfinished.films)} films read.", icon=":material/history:")
    st.caption("Keys while reading: **N** Normal, **P** Pneumonia, then **1**–**5** for the confidence "
               "(1 = a guess, 5 = certain); either first. Sessions are saved in the run folder as "
               "`readers/<reader>-<time>.json`.")


# ---------------------------------------------------------------------------------- reading
def _choose(run: Run, point: OperatingPoint, name: str, film: str, kind: str, value: int) -> None:
    """A call or a confidence for ``film`` (the film on screen when it was given); with both, the answer is saved."""
    pending = st.session_state.setdefault("reader_pending", {})
    if pending.get("film") != film:
        pending.clear()
        pending["film"] = film
    pending[kind] = value
    if "call" not in pending or "confidence" not in pending:
        return
    try:
        session = load_session(run, name)
        session.answer(film, pending["call"], pending["confidence"])
        session.operating_point = point.to_dict()
        save_session(session)
    except (ReaderError, OSError) as exc:
        st.session_state["reader_error"] = f"The answer was not saved: {exc}"
        return
    pending.clear()
    if session.finished:
        _finish(session)


def _undo(run: Run, name: str) -> None:
    try:
        session = load_session(run, name)
        session.undo()
        save_session(session)
    except (ReaderError, OSError) as exc:
        st.session_state["reader_error"] = f"The answer was not taken back: {exc}"
    st.session_state["reader_pending"] = {}


def _pause() -> None:
    st.session_state["reader_active"] = {}
    st.session_state["reader_pending"] = {}


def _read(run: Run, point: OperatingPoint, session: ReaderSession) -> None:
    film = session.next_film()
    while film is not None and (problem := film_problem(film)):  # gone since the session was resumed
        session.skip(film.film, problem)
        save_session(session)
        st.warning(f"Film {film.name} {problem}: left out of the reading.", icon=":material/image_not_supported:")
        film = session.next_film()
    if film is None:
        st.success(f"Session {session.name} is complete.", icon=":material/task_alt:")
        st.button("See the results", key="reader_done", on_click=_finish, args=(session,), type="primary")
        return
    picture = resources.screen_film(local_path(film.film))
    pending = st.session_state.get("reader_pending") or {}
    if pending.get("film") != film.film:
        pending = {}
    done, total = session.position(), len(session.films)
    st.progress(done / total,
                text=f"**Film {done + 1} of {total}** · reader {session.reader} · session {session.name}")
    film_col, answer_col = st.columns([3, 2], gap="large")
    if picture is None:
        film_col.error("This film cannot be shown.", icon=":material/broken_image:")
    else:
        film_col.image(picture, width="stretch")  # no file name, label, probability or heatmap: blinded
    with answer_col:
        st.markdown("**Call**")
        normal, pneumonia = st.columns(2)
        for col, call, label in ((normal, 0, "Normal"), (pneumonia, 1, "Pneumonia")):
            col.button(label, key=f"reader_call_{call}", shortcut=CALL_KEYS[call], width="stretch",
                       type="primary" if pending.get("call") == call else "secondary",
                       on_click=_choose, args=(run, point, session.name, film.film, "call", call))
        st.markdown("**Confidence** — 1 = a guess … 5 = certain")
        for col, level in zip(st.columns(len(CONFIDENCE_LEVELS)), CONFIDENCE_LEVELS):
            col.button(str(level), key=f"reader_confidence_{level}", shortcut=str(level), width="stretch",
                       type="primary" if pending.get("confidence") == level else "secondary",
                       on_click=_choose, args=(run, point, session.name, film.film, "confidence", level))
        chosen = [CLASS_NAMES[pending["call"]].capitalize() if "call" in pending else None,
                  f"confidence {pending['confidence']}" if "confidence" in pending else None]
        st.caption("Chosen: " + ", ".join(c for c in chosen if c) + " — now the other half of the answer."
                   if any(chosen) else "Keys: N / P, then 1–5 (or the other way round).")
        undo_col, pause_col = st.columns(2)
        undo_col.button("Undo last answer", key="reader_undo", icon=":material/undo:", width="stretch",
                        disabled=not session.answers, on_click=_undo, args=(run, session.name))
        pause_col.button("Pause reading", key="reader_pause", icon=":material/pause:", width="stretch",
                         on_click=_pause, help="Every answer is already saved; resume later under the same name.")


# ---------------------------------------------------------------------------------- results
@st.cache_data(ttl=60, max_entries=64, show_spinner=False)
def _problems(films: tuple[Film, ...]) -> list[tuple[str, str]]:
    return [(film.name, problem) for film in films if (problem := film_problem(film))]


def _roc_chart(figures: list[ReaderFigures], films: list[Film], point: OperatingPoint) -> go.Figure:
    curve = model_curve(films)
    fig = go.Figure(go.Scatter(x=curve.fpr, y=curve.tpr, mode="lines", line=dict(color=MODEL_COLOUR, width=3),
                               name=f"Model over the {len(films)} films read (AUC {charts.num(curve.auc)})"))
    model = model_row(films, point.threshold, curve)
    positives, negatives = [f for f in films if f.label == 1], [f for f in films if f.label == 0]
    if positives and negatives:
        fig.add_trace(go.Scatter(
            x=[sum(f.probability >= point.threshold for f in negatives) / len(negatives)],
            y=[sum(f.probability >= point.threshold for f in positives) / len(positives)], mode="markers",
            marker=dict(symbol="square-open", size=14, color=MODEL_COLOUR, line=dict(width=3)),
            name=f"Model at {point.threshold:.3f}: sensitivity {model['Sensitivity']}, "
                 f"specificity {model['Specificity']}"))
    for i, f in enumerate(figures):
        colour = READER_COLOURS[i % len(READER_COLOURS)]
        fig.add_trace(go.Scatter(x=f.reader_roc.fpr, y=f.reader_roc.tpr, mode="lines+markers",
                                 line=dict(color=colour, dash="dash"), marker=dict(size=5), legendgroup=f.session,
                                 name=f"{f.session}: ROC of the ratings (AUC {charts.num(f.reader_roc.auc)})"))
        if f.sensitivity.value is not None and f.specificity.value is not None:
            fig.add_trace(go.Scatter(
                x=[1 - f.specificity.value], y=[f.sensitivity.value], mode="markers", legendgroup=f.session,
                marker=dict(size=14, color=colour, line=dict(color="black", width=1)),
                error_x=dict(type="data", symmetric=False, array=[f.specificity.value - f.specificity.low],
                             arrayminus=[f.specificity.high - f.specificity.value], color=colour),
                error_y=dict(type="data", symmetric=False, array=[f.sensitivity.high - f.sensitivity.value],
                             arrayminus=[f.sensitivity.value - f.sensitivity.low], color=colour),
                name=f"{f.session}: the calls (95 % intervals)"))
    fig.add_shape(type="line", x0=0, y0=0, x1=1, y1=1, line=dict(color="gray", dash="dot", width=1))
    fig.update_layout(height=480, margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h", y=-0.2),
                      xaxis=dict(title="1 − specificity", range=[-0.02, 1.02], constrain="domain"),
                      yaxis=dict(title="sensitivity", range=[-0.02, 1.02], scaleanchor="x", constrain="domain"))
    return fig


def _results(run: Run, point: OperatingPoint) -> None:
    sessions, unreadable = list_sessions(run)
    for problem in unreadable:
        st.warning(problem, icon=":material/broken_image:")
    sessions = [s for s in sessions if s.answers]
    if not sessions:
        st.info("No reader has answered yet: read films under **Reading** first.", icon=":material/visibility:")
        return
    by_name = {s.name: s for s in sessions}
    focus = st.session_state.get("reader_focus")
    default = [focus] if focus in by_name else [s.name for s in sessions if s.finished][:len(READER_COLOURS)]
    names = st.multiselect("Readers", list(by_name), default=default or [sessions[0].name], key="reader_sessions",
                           format_func=lambda n: f"{n} ({len(by_name[n].answers)} of {len(by_name[n].films)} films"
                                                 f"{'' if by_name[n].finished else ', unfinished'})",
                           help="Several readers overlay on one chart and one table.")
    chosen = [by_name[n] for n in names]
    if not chosen:
        st.info("Choose one or more reader sessions.", icon=":material/group:")
        return
    figures = [session_figures(s, point.threshold) for s in chosen]
    films = pooled_films(chosen)
    st.caption(f"The model calls pneumonia from **{point.threshold:.3f}**: {point.label}. Intervals: 95 % Wilson. "
               "κ: Cohen's kappa of the reader's calls against the model's; McNemar: exact test on the films only "
               "one of the two called right.")
    if len({tuple(f.film for f in s.films if f.film in s.answered) for s in chosen}) > 1:
        st.caption(f"These readers read different films: the model's curve is over the {len(films)} films any of them "
                   "read; each reader's own figures are over their own films.")
    for session in chosen:
        answered = session.answered
        if gone := _problems(tuple(f for f in session.films if f.film in answered)):
            st.warning(f"Session {session.name}: {len(gone)} of its films no longer exist as read — "
                       + "; ".join(f"{name} {problem}" for name, problem in gone)
                       + ". Their answers are kept and counted (the label and the model's probability were saved "
                         "with the session); their Grad-CAM cannot be shown.", icon=":material/image_not_supported:")
        if not session.finished:
            st.caption(f"Session {session.name} is unfinished: its figures are over the {len(answered)} films "
                       "answered so far.")
    charts.chart(_roc_chart(figures, films, point), key="reader-roc")
    curve = model_curve(films)
    rows = [model_row(films, point.threshold, curve), *figure_rows(figures)]
    st.table(pd.DataFrame(rows).set_index("Reader session"))
    csv_col, png_col = st.columns(2)
    threshold_from = f"site profile {point.site}" if point.site else "validation"
    csv_col.download_button("Export CSV", export_csv(chosen, point.threshold, threshold_from),
                            file_name=f"{run.id}-readers.csv", mime="text/csv", icon=":material/table:",
                            key="reader_csv", width="stretch", on_click="ignore",
                            help="One row per film per reader: film id, truth, call, confidence, the model's "
                                 "probability and call.")
    png_col.download_button("Export PNG (one page)",
                            lambda: reader_png(figures, films, point.threshold, f"{charts.run_title(run)} ({run.id})",
                                               point.label, curve),  # drawn when asked for
                            file_name=f"{run.id}-readers.png", mime="image/png", icon=":material/image:",
                            key="reader_png", width="stretch", on_click="ignore",
                            help="The ROC, the table of figures and the not-for-diagnosis notice on one page.")
    _disagreements(run, point, chosen, figures)


def _disagreements(run: Run, point: OperatingPoint, chosen: list[ReaderSession],
                   figures: list[ReaderFigures]) -> None:
    """The films where a reader and the model made different calls, each with its Grad-CAM."""
    st.subheader("Where reader and model disagree")
    index = 0
    if len(chosen) > 1:
        index = st.selectbox("Disagreements of", range(len(chosen)), format_func=lambda i: chosen[i].name,
                             key="reader_disagreements_of")
    session, figure = chosen[index], figures[index]
    if not figure.disagreements:
        st.success(f"{session.name} made the model's call on every film read.", icon=":material/handshake:")
        return
    shown = figure.disagreements[:MOST_DISAGREEMENTS]
    st.caption(f"{len(figure.disagreements)} film{'s' if len(figure.disagreements) > 1 else ''}"
               + (f", the first {len(shown)} shown" if len(shown) < len(figure.disagreements) else "")
               + ". Warm colours of the Grad-CAM mark what drove the model's answer.")
    config = run.config()
    films = {f.film: f for f in session.films}
    answered = session.answered
    model_path, modified = resources.model_key(run)
    for start in range(0, len(shown), 3):
        for col, film_id in zip(st.columns(3), shown[start:start + 3]):
            film, answer = films[film_id], answered[film_id]
            source = local_path(film_id)
            caption = (f"{film.name} · truth **{CLASS_NAMES[film.label]}** · reader {CLASS_NAMES[answer.call]} "
                       f"(confidence {answer.confidence}) · model {charts.pct(film.probability)} → "
                       f"{CLASS_NAMES[int(film.probability >= point.threshold)]}")
            gray = resources.screen_film(source, 512)
            try:
                prepared = prepared_pixels(source, config.data.image_size, config.data.resize_mode,
                                           preprocessing=Preprocessing.of(config.data))
                image = prepared.model_input()
                result = resources.explain_image(run.id, model_path, modified, resources.digest(image.tobytes()),
                                                 image, "gradcam", None, point.threshold)
            except ImageLoadError:
                gray = None
            except Exception as exc:  # noqa: BLE001 - a damaged model file fails in Keras in many ways; say so
                col.error(f"The model of run {run.id} cannot explain this film: {type(exc).__name__}: {exc}",
                          icon=":material/error:")
                continue
            if gray is None:
                col.warning(f"{film.name} no longer exists: no Grad-CAM.", icon=":material/image_not_supported:")
                continue
            cam = cam_on_film(result["cam"], gray.shape[0], gray.shape[1], config.data.resize_mode,
                              prepared.body_on(*gray.shape[:2]))
            col.image(overlay(gray, cam, 0.45), width="stretch")
            col.caption(caption)
