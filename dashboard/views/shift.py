"""The Data page's shift section: a folder of new films against a finished run's training films (core.evaluation.shift), and the run's saved shift reports."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import streamlit as st

from core.data.sample import local_path, portable_path, sample_root
from core.evaluation.shift import SHIFTS_DIR, ShiftError, read_shift_report, shift_names, shift_report
from core.store.runs import Run, RunError
from dashboard import charts, resources, state

__all__ = ["render", "film_rows"]

RUN_KEY, FOLDER_KEY, FILMS_KEY, TRAINING_KEY, BUTTON_KEY = ("shift_run", "shift_folder", "shift_films",
                                                             "shift_training", "shift_go")


def _spread(side: dict[str, Any] | None, stat: str) -> str:
    if not side:
        return "—"
    fmt = (lambda v: f"{v:.1%}") if stat == "dark_share" else (lambda v: f"{v:.2f}") if stat == "aspect_ratio" \
        else (lambda v: f"{v:,.0f}") if stat in ("width", "height", "file_kb") else (lambda v: f"{v:.1f}")
    return f"{fmt(side['median'])} ({fmt(side['q1'])}–{fmt(side['q3'])})"


def film_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """One row per film statistic: each side's median (quartiles) and the Kolmogorov–Smirnov D and p."""
    return [{"statistic": row["label"], "new films": _spread(row["new"], row["stat"]),
             "training films": _spread(row["training"], row["stat"]),
             "KS D": charts.num(row["ks"], 2), "p": "—" if row["p"] is None else f"{row['p']:.2g}"}
            for row in report["films"]["compare"]]


def _shares(counts: list[int] | None) -> list[float] | None:
    total = sum(counts or [])
    return [c / total for c in counts] if total else None


def _histograms(report: dict[str, Any]) -> go.Figure:
    hist = report["histograms"]
    centres = [(a + b) / 2 for a, b in zip(hist["edges"][:-1], hist["edges"][1:])]
    fig = go.Figure()
    for name, counts in (("new films", hist["new"]), ("validation", hist.get("validation"))):
        if (shares := _shares(counts)) is not None:
            fig.add_bar(x=centres, y=shares, name=f"{name} ({sum(counts)})", opacity=0.7)
    threshold = report["positive_rate"]["threshold"]
    fig.add_vline(x=threshold, line_dash="dash", annotation_text=f"threshold {threshold:.2f}")
    fig.update_layout(barmode="overlay", height=300, margin=dict(l=10, r=10, t=30, b=10), bargap=0.05,
                      title="P(pneumonia): new films against validation", xaxis_title="P(pneumonia)",
                      yaxis_title="share of films", yaxis_tickformat=".0%", legend=dict(orientation="h", y=-0.25))
    return fig


def _domain_chart(report: dict[str, Any]) -> go.Figure:
    domain = report["domain"]
    fig = go.Figure()
    for name, scores in (("new films", domain.get("scores_new")), ("training films", domain.get("scores_train"))):
        if scores:
            fig.add_histogram(x=scores, name=f"{name} ({len(scores)})", histnorm="probability", opacity=0.7,
                              xbins=dict(start=0, end=1, size=0.05))
    fig.update_layout(barmode="overlay", height=300, margin=dict(l=10, r=10, t=30, b=10),
                      title="Domain classifier: out-of-fold P(new film)", xaxis_title="P(new film)",
                      yaxis_title="share of films", yaxis_tickformat=".0%", legend=dict(orientation="h", y=-0.25))
    return fig


def _show(report: dict[str, Any]) -> None:
    domain, rates = report["domain"], report["positive_rate"]
    st.markdown(f"**{report['folder']}** against run **{report['run_id']}** · made "
                f"{report['created_at'].replace('T', ' ')} · saved as `{SHIFTS_DIR}/{Path(report['path']).name}`")
    cols = st.columns(4)
    low, high = domain["ci"]
    cols[0].metric("Domain AUC", f"{domain['auc']:.2f}", help="How well a linear model on the run's own pooled "
                   "features tells the new films from the training films, out of fold (0.5: not at all).")
    cols[0].caption("95 % CI " + (f"{low:.2f}–{high:.2f}" if low is not None else "—"))
    cols[1].metric("Called pneumonia: new films", charts.pct(rates["new"]["rate"]))
    cols[2].metric("Called pneumonia: validation", charts.pct((rates.get("validation") or {}).get("rate")))
    cols[3].metric("Site profile first?", "yes" if report["recommend_site_profile"] else "no")
    (st.warning if report["recommend_site_profile"] else st.success)(
        "\n".join(f"- {line}" for line in report["reading"]),
        icon=":material/move_down:" if report["recommend_site_profile"] else ":material/check_circle:")
    st.dataframe(film_rows(report), hide_index=True, width="stretch")
    for side in ("new", "training"):
        summary = report["films"][side]
        common = summary.get("common_size") or {}
        st.caption(f"{side} films ({summary['n']}): colour modes {summary['modes']}, formats {summary['formats']}"
                   + (f", commonest size {common['width']} × {common['height']} ({common['share']:.0%})" if common
                      else "") + ". Intensities are of the model's input, after the run's image path.")
    left, right = st.columns(2)
    with left:
        charts.chart(_histograms(report), key=f"shift-prob-{report['path']}")
    with right:
        charts.chart(_domain_chart(report), key=f"shift-domain-{report['path']}")
    st.markdown("**The films the domain classifier finds most foreign**")
    foreign = domain.get("most_foreign") or []
    for column, film in zip(st.columns(max(1, len(foreign))), foreign):
        thumb = resources.thumbnail(local_path(film["file"]))
        caption = f"{film['file'].rsplit('/', 1)[-1]} · P(new) {film['score']:.2f}"
        if thumb is None:
            column.error("unreadable")
        else:
            column.image(thumb, caption=caption, width="stretch")
    problems = [(f"{len(report['skipped'])} unreadable files skipped", report["skipped"]),
                (f"{len(report['leaks'].get('identical', []))} films identical to training films (left out)",
                 [{"file": f} for f in report["leaks"].get("identical", [])])]
    for title, rows in problems:
        if rows:
            with st.expander(title):
                st.dataframe(rows, hide_index=True)
    st.download_button("Download the report (JSON)", json.dumps(report, indent=1), key=f"shift-json-{report['path']}",
                       file_name=f"{report['run_id']}-shift-{Path(report['path']).stem}.json", mime="application/json",
                       icon=":material/download:")


def _measure(run: Run, folder: str, films: int, training: str) -> None:
    path, modified = resources.model_key(run)
    report = state.with_progress(
        "Reading the films…", "No shift report was made", (ShiftError, RunError, ValueError, OSError),
        lambda progress: shift_report(run, folder, max_films=films, training_folder=training or None,
                                      model=resources.load_model(path, modified), progress=progress))
    if report is None:
        return
    st.session_state[f"shift_report-{run.id}"] = Path(report["path"]).stem  # the new report is the one shown


def render() -> None:
    """The section: pick a finished run and a folder, measure, then the newest (or a chosen) saved report."""
    st.subheader("Shift against a run")
    st.caption("Before a run is used on another hospital's films, compare them with the films it was trained on — "
               "labels are not needed: sizes, shapes and intensities side by side, how often the model calls them "
               "pneumonia against its validation films, and whether a linear model on the run's own features tells "
               "the two sets apart (the domain AUC). Both sides go through the run's one image path.")
    runs = [run for run in state.usable_runs() if run.status().state == "finished"]
    if not runs:
        st.info("No finished run yet: train one on the **Train** page to compare new films with its training films.")
        return
    by_id = {run.id: run for run in runs}
    cols = st.columns([2, 3, 1])
    run = by_id[cols[0].selectbox("Run to compare against", list(by_id), key=RUN_KEY,
                                  format_func=lambda rid: charts.run_title(by_id[rid]))]
    folder = cols[1].text_input("Folder of new films", value=portable_path(sample_root() / "test"), key=FOLDER_KEY,
                                help="Any folder of films, labelled (class folders) or not; sub-folders are read too.")
    films = cols[2].number_input("Films per side", min_value=20, max_value=5000, value=300, step=50, key=FILMS_KEY,
                                 help="At most this many films of each side, drawn at random (seed 0).")
    training = st.text_input("Copies of the training films (optional)", key=TRAINING_KEY,
                             placeholder="e.g. a folder of the training originals",
                             help="A folder of files named like the run's training films, stored like the new films: "
                                  "they stand for the training side, to compare like with like. Empty: the run's "
                                  "own training films, as its splits.json lists them.")
    if st.button("Measure the shift", key=BUTTON_KEY, icon=":material/compare:", type="primary"):
        _measure(run, folder.strip(), int(films), training.strip())
    names = shift_names(run)[::-1]
    if not names:
        st.caption("This run has no shift report yet.")
        return
    key = f"shift_report-{run.id}"
    if st.session_state.get(key) not in names:
        st.session_state[key] = names[0]
    try:
        _show(read_shift_report(run, st.selectbox("Shift report", names, key=key)))
    except ShiftError as exc:
        st.error(str(exc), icon=":material/error:")
