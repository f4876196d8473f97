"""Runs: every run in the store — status, settings, best metrics; compare, download, delete."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from core.config import BACKBONES
from core.data.preprocess import Preprocessing
from core.evaluation.ensemble import member_ids
from core.jobs.sweep import list_sweeps, sweep_of_runs
from core.serving import serve_command
from core.store.runs import Run, RunError
from dashboard import charts, state

EXPORT_FORMATS = {"keras": ("Keras (.keras)", "application/octet-stream"),
                  "savedmodel": ("SavedModel (.zip)", "application/zip"),
                  "tflite": ("TFLite (.tflite)", "application/octet-stream")}
PALETTE = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D"]

st.title("Runs")
runs = state.store().list()
if not runs:
    st.info("The run store is empty. Start a run on the **Train** page.", icon=":material/table_rows:")
    st.page_link(state.PAGES["train"], label="Go to Train", icon=":material/model_training:")
    st.stop()
sweep_of = sweep_of_runs(state.store())  # member run id → (sweep, place in its grid)


def summary(run: Run) -> dict:
    status = run.status()
    try:
        config = run.config()
    except Exception as exc:  # noqa: BLE001 - a hand-edited config.json must not hide the other runs
        return {"run": charts.run_title(run), "state": f"unreadable config: {exc}", "id": run.id}
    metrics = run.metrics() or {}
    backbone = BACKBONES[config.model.backbone].label if config.model.backbone in BACKBONES else config.model.backbone
    members = member_ids(run)
    sweep = sweep_of.get(run.id)
    return {
        "run": charts.run_title(run),
        "sweep": f"{sweep[0].name} #{sweep[1]}" if sweep else "",
        "state": status.state,
        "backbone": f"ensemble of {len(members)} ({backbone}, …)" if members else backbone,
        "size": config.data.image_size,
        "preprocessing": Preprocessing.of(config.data).describe(),
        "weights": config.model.weights if config.model.weights in ("imagenet", "none") else "file",
        "backend": config.train.backend,  # the Keras backend it trained with; any run's model opens here (TensorFlow)
        "epochs": f"{status.epoch}/{status.epochs_total or config.train.head.epochs + config.train.finetune.epochs}",
        "best val AUC": status.best_val_auc,
        "test AUC": metrics.get("roc_auc"),
        "test images": metrics.get("n"),
        "sensitivity": metrics.get("sensitivity"),
        "specificity": metrics.get("specificity"),
        "data": "synthetic demo" if state.is_synthetic(config) else config.data.source,
        "starter": run.starter is not None,
        "id": run.id,
    }


def grouped(run: Run) -> tuple[str, int]:
    """Newest first, a sweep's members together in grid order."""
    sweep = sweep_of.get(run.id)
    return (sweep[0].id.removeprefix("sweep-"), -sweep[1]) if sweep else (run.id, 0)


show_members = bool(sweep_of) and st.toggle(f"Show sweep members ({len(sweep_of)})", key="runs_show_members",
                                            help="Sweep members are compared on the Sweep page, on validation only.")
listed = sorted((run for run in runs if show_members or run.id not in sweep_of), key=grouped, reverse=True)
table = pd.DataFrame([summary(run) for run in listed])
if not show_members and "sweep" in table:
    table = table.drop(columns="sweep")
if table.empty:
    st.caption("Every run here is a sweep member: show them with the switch above, or open their sweep below.")
else:
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        "best val AUC": st.column_config.NumberColumn(format="%.3f"),
        "test AUC": st.column_config.NumberColumn(format="%.3f"),
        "sensitivity": st.column_config.NumberColumn(format="percent"),
        "specificity": st.column_config.NumberColumn(format="percent"),
    })
sweeps = list_sweeps(state.store())
if sweeps:
    st.markdown("**Sweeps** — grids of runs, compared on validation")
    st.dataframe(pd.DataFrame([{"sweep": s.name, "state": s.status().state, "members": len(s.members()),
                                "progress": s.status().progress, "id": s.id} for s in sweeps]),
                 hide_index=True, width="stretch", column_config={"progress": st.column_config.ProgressColumn(
                     min_value=0.0, max_value=1.0, format="percent")})
    st.page_link(state.PAGES["sweep"], label="Open the Sweep page", icon=":material/grid_view:")

by_id = {run.id: run for run in runs}
default = [run.id for run in runs if run.metrics()][:2]
selected = st.multiselect("Select runs to compare, download or delete", list(by_id), default=default, key="runs_selected",
                          format_func=lambda rid: f"{charts.run_title(by_id[rid])} ({by_id[rid].status().state})")
chosen = [by_id[rid] for rid in selected if rid in by_id]
if not chosen:
    st.caption("Select one or more runs above.")
    st.stop()

# ---------------------------------------------------------------------------------- compare
st.subheader("Curves")
fig = make_subplots(rows=1, cols=2, subplot_titles=("Validation ROC AUC", "Loss (solid: validation, dotted: train)"))
for i, run in enumerate(chosen):
    epochs = run.epochs()
    colour = PALETTE[i % len(PALETTE)]
    x = [row["epoch"] for row in epochs]
    name = charts.run_title(run)
    fig.add_trace(go.Scatter(x=x, y=[row.get("val_auc") for row in epochs], name=name, legendgroup=name,
                             mode="lines+markers", line=dict(color=colour)), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=[row.get("val_loss") for row in epochs], name=name, legendgroup=name, showlegend=False,
                             mode="lines+markers", line=dict(color=colour)), row=1, col=2)
    fig.add_trace(go.Scatter(x=x, y=[row.get("loss") for row in epochs], name=name, legendgroup=name, showlegend=False,
                             mode="lines", line=dict(color=colour, dash="dot")), row=1, col=2)
fig.update_xaxes(title_text="epoch")
fig.update_layout(height=340, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.25))
charts.chart(fig, key="compare")

st.subheader("Settings side by side")
settings = {}
for run in chosen:
    try:
        settings[charts.run_title(run)] = state.flatten(run.config().to_dict())
    except Exception:  # noqa: BLE001
        continue
frame = pd.DataFrame(settings).astype(str)
only_diff = st.toggle("Only settings that differ", value=len(chosen) > 1, key="runs_only_diff")
if only_diff and len(frame.columns) > 1:
    frame = frame[frame.nunique(axis=1) > 1]
if frame.empty:
    st.caption("These runs have the same settings.")
else:
    st.dataframe(frame, width="stretch")

# ---------------------------------------------------------------------------------- per-run actions
st.subheader("Download and delete")


@st.cache_data(show_spinner=False, max_entries=16)
def exported(run_id: str, modified: float, fmt: str) -> tuple[bytes, str]:
    """Export a run's model once per model version; returns the file's bytes and name."""
    from core.model.export import export_run  # heavy: Keras, TensorFlow

    path = export_run(state.store().get(run_id), fmt)
    return path.read_bytes(), path.name


for run in chosen:
    status = run.status()
    starter = run.starter is not None
    with st.expander(f"{charts.run_title(run)} {charts.state_badge(status.state)}"
                     + (" :violet-badge[:material/verified: starter]" if starter else ""), expanded=len(chosen) == 1):
        if status.state == "failed" and status.error:
            st.error(f"Training failed: {status.error}", icon=":material/error:")
        if member_ids(run):
            st.caption(f":material/stacks: An ensemble of {len(member_ids(run))} runs (the mean of their logits, its own "
                       f"threshold on validation): {', '.join(member_ids(run))}")
        cols = st.columns(4)
        cols[0].download_button("Config (JSON)", (run.path / "config.json").read_bytes(), file_name=f"{run.id}-config.json",
                                mime="application/json", key=f"config-{run.id}", icon=":material/download:", width="stretch")
        if cols[1].button("Use these settings", key=f"use-{run.id}", icon=":material/model_training:", width="stretch",
                          help="Load this run's settings into the Train page."):
            state.apply_config(run.config())
            st.session_state["preset"] = None
            st.switch_page(state.PAGES["train"])
        if run.model_path.is_file():
            modified = run.model_path.stat().st_mtime
            fmt = cols[2].selectbox("Model format", list(EXPORT_FORMATS), key=f"fmt-{run.id}",
                                    format_func=lambda f: EXPORT_FORMATS[f][0], label_visibility="collapsed")
            if fmt == "keras":
                cols[3].download_button("Download model", run.model_path.read_bytes(), file_name=f"{run.id}.keras",
                                        key=f"dl-{run.id}", icon=":material/download:", width="stretch")
            elif cols[3].button("Prepare download", key=f"export-{run.id}-{fmt}", icon=":material/inventory_2:", width="stretch"):
                try:
                    with st.spinner(f"Exporting {EXPORT_FORMATS[fmt][0]}…"):
                        st.session_state[f"exported-{run.id}-{fmt}"] = exported(run.id, modified, fmt)
                except Exception as exc:  # noqa: BLE001 - converters fail in many ways; say which
                    st.error(f"Export failed: {exc}", icon=":material/error:")
            ready = st.session_state.get(f"exported-{run.id}-{fmt}")
            if ready and fmt != "keras":
                st.download_button(f"Download {ready[1]}", ready[0], file_name=ready[1], mime=EXPORT_FORMATS[fmt][1],
                                   key=f"dl-{run.id}-{fmt}", icon=":material/download:")
        else:
            cols[2].caption("No trained model in this run.")
        if run.model_path.is_file():
            state.model_card_downloads(run, key=f"runs-{run.id}")
            st.caption("Serve this run over HTTP (API keys and limits: docs/serving.md):")
            st.code(serve_command(run.id), language="bash")
        if starter:
            st.caption(":material/verified: The starter model shipped with the repository: it cannot be deleted here.")
        confirm = st.checkbox("I want to delete this run and its files", key=f"confirm-{run.id}", disabled=starter)
        if st.button("Delete run", key=f"delete-{run.id}", icon=":material/delete:",
                     disabled=not confirm or status.active or starter,
                     help="Stop a running run first." if status.active else None):
            try:
                state.store().delete(run.id)
            except RunError as exc:
                st.error(str(exc))
            else:
                st.session_state.pop("runs_selected", None)
                st.toast(f"Deleted {charts.run_title(run)}")
                st.rerun()
