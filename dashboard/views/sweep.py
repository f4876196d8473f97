"""Sweep: a grid of settings trained as normal runs, compared on validation only; then one final run, tested once.

The coordinator runs in its own process (``python -m core.sweep --run-dir …``); this page only reads
the sweep folder and its members' folders, so a refresh or a dashboard restart shows the same sweep.
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.config import AUGMENT_STRENGTHS, BACKBONES, FIELDS_OF_VIEW, INTENSITIES, RESIZE_MODES, ConfigError
from core.jobs.sweep import (AXIS_LABELS, MemberResult, Sweep, best_member, create_final_run, create_sweep, describe,
                             list_sweeps, plan_members, sweep_results, validation_figures)
from core.store.runs import Run, RunError
from dashboard import charts, state

BEST_COLOUR, OTHER_COLOUR = "#F58518", "#9BB5D1"
MEMBER_COLUMNS = {
    "progress": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="percent"),
    "val AUC": st.column_config.NumberColumn(format="%.3f"),
    "val loss": st.column_config.NumberColumn(format="%.3f"),
    "test AUC": st.column_config.NumberColumn(format="%.3f", help="Not for choosing: choose on validation."),
}

st.title("Sweep")
st.caption("Try several unfreeze depths, augmentation strengths, learning rates, backbones or preprocessing in one go. Each member "
           "is a normal run; members are compared on **validation only** and never evaluated on test. Only the final "
           "run you train with the chosen settings is evaluated, once, on the test split.")


def _busy() -> bool:
    """A run or a sweep coordinator is active: one training at a time on this machine."""
    return (any(run.status().active for run in state.store().list())
            or any(sweep.status().active for sweep in list_sweeps(state.store())))


# ---------------------------------------------------------------------------------- a new sweep
def _grid_from_widgets() -> dict[str, list]:
    grid: dict[str, list] = {}
    for key, axis in (("sweep_blocks", "unfreeze_from_block"), ("sweep_augment", "augment"),
                      ("sweep_backbones", "backbone"), ("sweep_fov", "field_of_view"), ("sweep_intensity", "intensity"),
                      ("sweep_sizes", "image_size"), ("sweep_resize", "resize_mode")):
        if st.session_state.get(key):
            grid[axis] = list(st.session_state[key])
    text = st.session_state.get("sweep_lrs", "").strip()
    if text:
        try:
            grid["finetune_learning_rate"] = [float(part) for part in text.replace(";", ",").split(",") if part.strip()]
        except ValueError:
            raise ConfigError(f"fine-tune learning rates: '{text}' is not a list of numbers such as 1e-4, 1e-5") from None
    return grid


def new_sweep() -> None:
    try:
        base = state.current_config()
    except ConfigError as exc:
        st.error(f"The Train page's settings are not valid — {exc}", icon=":material/pan_tool:")
        return
    spec = BACKBONES[base.model.backbone]
    st.markdown(f"**Base settings** (the Train page's): {spec.label} at {base.data.image_size} px, "
                f"{base.train.head.epochs} head + {base.train.finetune.epochs} fine-tune epochs, "
                f"data: {state.data_label(base)}" + (f" {state.SYNTHETIC_BADGE}" if state.is_synthetic(base) else ""))
    st.page_link(state.PAGES["train"], label="Change the base settings on the Train page", icon=":material/tune:")
    left, right = st.columns(2)
    left.multiselect("Unfreeze from block", list(range(1, len(spec.blocks) + 1)), key="sweep_blocks",
                     format_func=lambda b: f"{b} · {spec.blocks[b - 1][0]}",
                     help="Fine-tuning trains this block and everything above it.")
    right.multiselect("Augmentation strength", list(AUGMENT_STRENGTHS), key="sweep_augment",
                      help="Named strengths; 'acquisition' mimics another scanner (gamma, blur, JPEG).")
    left.text_input("Fine-tune learning rates", key="sweep_lrs", placeholder="e.g. 1e-4, 1e-5",
                    help="Comma-separated; empty keeps the base setting.")
    right.multiselect("Backbones", list(BACKBONES), key="sweep_backbones", format_func=lambda b: BACKBONES[b].label,
                      help="Empty keeps the base backbone.")
    left.multiselect("Field of view", list(FIELDS_OF_VIEW), key="sweep_fov",
                     help="Preprocessing: the whole film, or cropped to the body. Empty keeps the base setting.")
    right.multiselect("Intensity", list(INTENSITIES), key="sweep_intensity",
                      help="Preprocessing: as decoded, CLAHE, or the 1–99 % window. Empty keeps the base setting.")
    left.multiselect("Image size (px)", [64, 128, 224, 320, 448], key="sweep_sizes",
                     help="Resolution the model sees. Larger costs time and memory (about the square of the side). "
                          "Empty keeps the base setting.")
    right.multiselect("Resize", list(RESIZE_MODES), key="sweep_resize",
                      help="Geometry: stretch squeezes a film to a square; center_square keeps its centred square, "
                           "so no film's shape is handed to the model. Empty keeps the base setting.")
    st.text_input("Sweep name", key="sweep_name", placeholder=f"{base.name}-sweep")
    name = st.session_state.get("sweep_name", "").strip() or f"{base.name}-sweep"

    planned, problem = None, None
    try:
        grid = _grid_from_widgets()
        planned = plan_members(base, grid, name) if grid else None
    except ConfigError as exc:
        problem = str(exc)
    if problem:
        st.error(f"Fix the grid first — {problem}", icon=":material/pan_tool:")
    elif not planned:
        st.info("Choose at least one setting to vary: an empty grid has nothing to compare.", icon=":material/grid_view:")
    else:
        sizes = " × ".join(str(len(values)) for values in grid.values())
        st.markdown(f"**{len(planned)} members** ({sizes}), trained one after another (one per GPU when several "
                    "are visible), sharing decoded images and frozen-layer outputs through the disk cache.")
        if base.train.head.epochs and base.train.head.augment and base.augment.active:
            st.caption(":material/info: The head phase augments, so every member trains its head on images. "
                       "Switch head-phase augmentation off to share the frozen features between members.")
    busy = _busy()
    if busy:
        st.info("A run or a sweep is in progress: start the sweep when it has ended.", icon=":material/hourglass_top:")
    if st.button("Start sweep", type="primary", icon=":material/rocket_launch:", disabled=not planned or busy):
        try:
            sweep = create_sweep(state.store(), base, grid, name)
            sweep.launch()
        except (ConfigError, RunError, OSError) as exc:
            st.error(f"Could not start: {exc}")
        else:
            st.session_state["sweep_id"] = sweep.id
            st.rerun()


sweeps = list_sweeps(state.store())
with st.expander("New sweep", expanded=not sweeps, icon=":material/add:"):
    new_sweep()
if not sweeps:
    st.stop()

# ---------------------------------------------------------------------------------- the chosen sweep
by_id = {sweep.id: sweep for sweep in sweeps}
if st.session_state.get("sweep_id") not in by_id:
    active = [sweep.id for sweep in sweeps if sweep.status().active]
    st.session_state["sweep_id"] = (active or [sweeps[0].id])[0]
st.selectbox("Sweep", list(by_id), key="sweep_id",
             format_func=lambda sid: f"{by_id[sid].name} · {by_id[sid].status().state} · {len(by_id[sid].members())} "
                                     f"members ({sid})")
sweep = by_id[st.session_state["sweep_id"]]


@st.cache_data(max_entries=256, show_spinner=False)
def validation_ci(run_path: str, modified: float) -> tuple:
    """The patient-bootstrap CI of a member's validation AUC, once per threshold.json version."""
    return validation_figures(Run(run_path)).get("val_auc_ci", (None, None))


def results_of(sweep: Sweep) -> list[MemberResult]:
    results = sweep_results(sweep, n_boot=0)  # states, AUC and loss: cheap; the CIs are cached per member
    for result in results:
        if result.val_auc is not None:
            path = sweep.path.parent / result.run_id
            result.val_auc_ci = validation_ci(str(path), (path / "threshold.json").stat().st_mtime)
    return results


def members_table(results: list[MemberResult], best: MemberResult | None, show_test: bool) -> pd.DataFrame:
    rows = []
    for r in results:
        lo, hi = r.val_auc_ci
        row = {"#": r.index, **{AXIS_LABELS.get(k, k): str(v) for k, v in r.settings.items()},
               "state": r.state, "progress": 1.0 if r.state == "finished" else r.progress,
               "val AUC": r.val_auc, "95 % CI": f"{lo:.3f}–{hi:.3f}" if lo is not None else "",
               "val loss": r.val_loss, "best": "★ best on validation" if best and r.run_id == best.run_id else "",
               "note": r.error or "", "run": r.run_id}
        if show_test:
            run = state.run_or_none(r.run_id)
            row["test AUC"] = ((run.metrics() if run else None) or {}).get("roc_auc")
        rows.append(row)
    return pd.DataFrame(rows)


def settings_chart(results: list[MemberResult], best: MemberResult | None) -> go.Figure:
    """Parallel coordinates: each grid axis, then validation AUC and loss; the best member in orange."""
    done = [r for r in results if r.val_auc is not None]
    dimensions = []
    for axis, values in sweep.grid.items():
        labels = [str(v) for v in values]
        dimensions.append(dict(label=AXIS_LABELS.get(axis, axis), tickvals=list(range(len(labels))), ticktext=labels,
                               values=[labels.index(str(r.settings.get(axis))) for r in done],
                               range=[-0.25, len(labels) - 0.75]))
    dimensions.append(dict(label="validation AUC", values=[r.val_auc for r in done]))
    dimensions.append(dict(label="validation loss", values=[r.val_loss for r in done]))
    colours = [1 if best and r.run_id == best.run_id else 0 for r in done]
    fig = go.Figure(go.Parcoords(dimensions=dimensions, line=dict(
        color=colours, colorscale=[[0, OTHER_COLOUR], [1, BEST_COLOUR]], cmin=0, cmax=1)))
    fig.update_layout(height=360, margin=dict(l=60, r=60, t=50, b=20))
    return fig


def controls(sweep: Sweep, status) -> None:
    left, middle, right = st.columns(3)
    if status.active:
        if sweep.pause_path.exists() or sweep.cancel_path.exists():
            st.info("Requested: the members in training stop after their current batch.", icon=":material/hourglass_top:")
            if left.button("Force stop", key=f"kill-{sweep.id}", icon=":material/dangerous:", width="stretch",
                           help="Terminate the coordinator and its member now (SIGTERM, then SIGKILL); Resume goes on."):
                try:
                    sweep.kill()
                except RunError as exc:
                    st.error(str(exc))
        else:
            if left.button("Pause", key=f"pause-{sweep.id}", icon=":material/pause:", width="stretch",
                           help="Members in training stop after their current batch; Resume goes on from each "
                                "member's last completed epoch."):
                sweep.request_pause()
                st.rerun()
            if middle.button("Cancel sweep", key=f"cancel-{sweep.id}", icon=":material/cancel:", width="stretch",
                             help="Stop now and train no further members (those finished are kept)."):
                sweep.request_cancel()
                st.rerun()
    elif status.state in ("paused", "interrupted", "failed"):
        if left.button("Resume", key=f"resume-{sweep.id}", icon=":material/play_arrow:", width="stretch",
                       disabled=_busy(), help="Go on with the queue: interrupted members resume from their last epoch."):
            try:
                sweep.launch(resume=True)
            except RunError as exc:
                st.error(str(exc))
            st.rerun()


def final_run(sweep: Sweep, results: list[MemberResult], best: MemberResult, status) -> None:
    st.markdown("#### The final run")
    final = state.run_or_none(sweep.final_run_id)
    if final is not None:
        final_status = final.status()
        st.markdown(f"**{charts.run_title(final)}** {charts.state_badge(final_status.state)} — "
                    f"{describe(sweep.spec['final']['settings'])}; evaluated once on test when it finishes.")
        target = "evaluate" if final_status.state == "finished" else "train"
        if st.button("Evaluate the final run" if target == "evaluate" else "Watch it on the Train page",
                     key=f"open-final-{sweep.id}", icon=":material/monitoring:"):
            st.session_state["run_id" if target == "evaluate" else "train_run_id"] = final.id
            st.switch_page(state.PAGES[target])
        return
    finished = [r for r in results if r.val_auc is not None]
    by_run = {r.run_id: r for r in finished}
    chosen = st.selectbox("Settings for the final run", list(by_run), index=list(by_run).index(best.run_id),
                          key=f"final-member-{sweep.id}", format_func=lambda rid: f"#{by_run[rid].index} · "
                          f"{describe(by_run[rid].settings)} · val AUC {by_run[rid].val_auc:.3f}"
                          + (" (best on validation)" if rid == best.run_id else ""))
    busy = status.active or _busy()
    if st.button("Train the final run with these settings", type="primary", icon=":material/rocket_launch:",
                 key=f"final-{sweep.id}", disabled=busy,
                 help="A new normal run with these settings, evaluated once on the test split when it finishes."):
        try:
            run = create_final_run(sweep, state.store(), chosen)
            run.launch()
        except (ConfigError, RunError, OSError) as exc:
            st.error(f"Could not start: {exc}")
        else:
            st.session_state["train_run_id"] = run.id
            st.switch_page(state.PAGES["train"])
    if busy:
        st.caption("Available when the sweep and every other training have ended.")


def sweep_panel(sweep: Sweep) -> None:
    live = sweep.status().active or any(run.status().active for run, _ in sweep.members())

    @st.fragment(run_every=2.0 if live else None)
    def body() -> None:
        status = sweep.status()
        results = results_of(sweep)
        was_live = st.session_state.setdefault("_sweep_live", {}).get(sweep.id)
        st.session_state["_sweep_live"][sweep.id] = status.active
        if was_live and not status.active:
            st.rerun()  # it just ended: redraw once, without the timer
        st.markdown(f"### {sweep.name} {charts.state_badge(status.state)}")
        st.caption(f"Sweep `{sweep.id}` · grid: "
                   + "; ".join(f"{AXIS_LABELS.get(k, k)} {', '.join(map(str, v))}" for k, v in sweep.grid.items()))
        st.progress(min(max(status.progress, 0.0), 1.0), text=status.message or status.state)
        if status.state == "failed" and status.error:
            st.error(f"The sweep's coordinator failed: {status.error}", icon=":material/error:")
        controls(sweep, status)

        best = best_member(results)
        show_test = st.toggle("Show members' test metrics", key=f"show-test-{sweep.id}", value=False,
                              help="Hidden so that nobody picks on test. Members are not evaluated on test anyway.")
        st.dataframe(members_table(results, best, show_test), hide_index=True, width="stretch",
                     height=min(38 + 35 * len(results), 600), column_config=MEMBER_COLUMNS)
        if best is None:
            st.caption("The settings are plotted against validation AUC and loss as members finish.")
            return
        charts.chart(settings_chart(results, best), key=f"sweep-chart-{sweep.id}")
        lo, hi = best.val_auc_ci
        ci = f" (95 % CI {lo:.3f}–{hi:.3f}, patient bootstrap over {best.val_patients} patients)" if lo is not None else ""
        st.success(f"**Best on validation:** {describe(best.settings)} — validation AUC {best.val_auc:.3f}{ci}, "
                   f"validation loss {best.val_loss:.3f} ({best.val_images} validation images).",
                   icon=":material/star:")
        close = [r for r in results if r is not best and r.val_auc is not None and lo is not None and r.val_auc >= lo]
        if close:
            st.caption(f"{len(close)} other member(s) have a validation AUC inside this interval: validation cannot "
                       "tell them apart reliably; a simpler setting among them is as defensible.")
        final_run(sweep, results, best, status)

    body()


sweep_panel(sweep)
