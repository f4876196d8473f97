"""Dashboard charts and formatting: training curves, run titles and badges, device plans and numbers as people read them."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from PIL import Image, ImageDraw
from plotly.subplots import make_subplots

from core.config.backend import DEFAULT_BACKEND
from core.data.images import read_image
from core.data.preprocess import Prepared, Preprocessing
from core.store.runs import Run

STATE_BADGES = {
    "created": ":gray-badge[created]", "queued": ":blue-badge[:material/schedule: queued]",
    "running": ":blue-badge[:material/autorenew: running]", "finished": ":green-badge[:material/check: finished]",
    "failed": ":red-badge[:material/error: failed]", "stopped": ":orange-badge[:material/stop: stopped]",
    "interrupted": ":orange-badge[:material/warning: interrupted]",
    "paused": ":orange-badge[:material/pause: paused]", "cancelled": ":gray-badge[:material/cancel: cancelled]",
}
# Colours readable on the light and the dark theme.
TRAIN_COLOUR, VAL_COLOUR = "#4C78A8", "#F58518"


def state_badge(state: str) -> str:
    """A coloured badge for a run state (Markdown)."""
    return STATE_BADGES.get(state, f":gray-badge[{state}]")


def run_title(run: Run) -> str:
    """``name · 01-31 14:02`` for a run id ``20250131-140233-name``."""
    parts = run.id.split("-", 2)
    try:
        when = datetime.strptime(f"{parts[0]}-{parts[1]}", "%Y%m%d-%H%M%S").strftime("%m-%d %H:%M")
        return f"{parts[2] if len(parts) > 2 else run.id} · {when}"
    except (ValueError, IndexError):
        return run.id


# --------------------------------------------------------------------------------- formatting
BACKEND_LABELS = {"tensorflow": "TensorFlow", "jax": "JAX"}


def backend_label(name: str | None) -> str:
    """A Keras backend as people write it (``jax`` → JAX); none recorded is the default, TensorFlow."""
    return BACKEND_LABELS.get(name or DEFAULT_BACKEND, str(name))


def device_text(device: dict[str, Any], backend: str | None = None) -> str:
    """The backend and device a run trains on, and why: its device plan (status.json's ``device``, plan.json) as Markdown.

    ``backend``: the run's configured one, named while its trainer has not chosen the device yet.
    """
    if not device:
        return f"**Keras backend:** {backend_label(backend)} · device not chosen yet" if backend else "device: not chosen yet"
    gpus = device.get("gpus", 0)
    backend = device.get("backend") or backend or DEFAULT_BACKEND  # plans written before JAX have no backend: TF
    several = "Keras DataParallel" if backend != "tensorflow" else "MirroredStrategy"
    what = {"cpu": "CPU", "gpu": "1 GPU", "mirrored": f"{device.get('replicas', gpus)} replicas ({several})",
            "multiworker": "several machines (MultiWorkerMirroredStrategy)"}.get(device.get("strategy"), device.get("strategy"))
    names = device.get("gpu_names") or []
    return (f"**Keras backend:** {backend_label(backend)} · **device:** {what} · GPUs visible: {gpus}"
            + (f" ({', '.join(map(str, names))})" if names else "")
            + f" · precision {device.get('precision')} · XLA {'on' if device.get('jit_compile') else 'off'}  \n"
            + f"Why: {device.get('reason') or 'no reason recorded'}")


def pct(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{100 * value:.{digits}f} %"


def num(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {(seconds % 3600) // 60:02d} min"


def age(iso: str | None) -> str:
    if not iso:
        return "—"
    try:
        then = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if then.tzinfo is None:
        then = then.replace(tzinfo=timezone.utc)
    return duration((datetime.now(timezone.utc) - then).total_seconds()) + " ago"


# --------------------------------------------------------------------------------- charts
def training_curves(epochs: list[dict[str, Any]], steps: list[dict[str, Any]] | None = None) -> go.Figure:
    """Loss, accuracy and AUC per epoch, train vs validation, with the head/fine-tune boundary marked."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=("Loss", "Accuracy", "ROC AUC"), horizontal_spacing=0.07)
    x = [row["epoch"] for row in epochs]
    for col, metric in enumerate(("loss", "accuracy", "auc"), start=1):
        for prefix, name, colour in (("", "train", TRAIN_COLOUR), ("val_", "validation", VAL_COLOUR)):
            fig.add_trace(go.Scatter(x=x, y=[row.get(prefix + metric) for row in epochs], name=name,
                                     mode="lines+markers", line=dict(color=colour), legendgroup=name,
                                     showlegend=col == 1), row=1, col=col)
    if steps:
        fig.add_trace(go.Scatter(
            x=[row["epoch"] - 1 + row["step"] / max(row.get("steps") or 1, 1) for row in steps],
            y=[row.get("loss") for row in steps], name="train (live, per step)", mode="lines",
            line=dict(color=TRAIN_COLOUR, width=1, dash="dot"), opacity=0.6), row=1, col=1)
    boundary = phase_boundary(epochs)
    if boundary is not None:
        for col in (1, 2, 3):
            fig.add_vline(x=boundary + 0.5, line_dash="dash", line_color="gray", row=1, col=col)
        fig.add_annotation(x=boundary + 0.5, y=1.0, yref="y domain", text="fine-tune starts", showarrow=False,
                           xanchor="left", font=dict(size=11), row=1, col=1)
    fig.update_xaxes(title_text="epoch", dtick=1 if len(x) <= 15 else None)
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", yanchor="bottom", y=-0.35, x=0))
    return fig


def phase_boundary(epochs: list[dict[str, Any]]) -> int | None:
    """The last head-phase epoch when a fine-tune phase follows it."""
    head = [row["epoch"] for row in epochs if row.get("phase") == "head"]
    finetune = [row["epoch"] for row in epochs if row.get("phase") == "finetune"]
    return max(head) if head and finetune else None


def chart(fig: go.Figure, key: str | None = None) -> None:
    st.plotly_chart(fig, width="stretch", key=key, config={"displaylogo": False})


def outlined(film: np.ndarray, prepared: Prepared) -> np.ndarray:
    """The decoded film in RGB with the body's box (red) and the removed markers (green) drawn on it."""
    picture = Image.fromarray(film).convert("RGB")
    pen = ImageDraw.Draw(picture)
    width = max(1, round(max(film.shape) / 150))
    for box in prepared.markers:
        pen.rectangle((box.left, box.top, box.right - 1, box.bottom - 1), outline=(40, 200, 60), width=width)
    if prepared.body is not None:
        left, top, right, bottom = prepared.body
        pen.rectangle((left, top, right - 1, bottom - 1), outline=(230, 40, 40), width=width)
    return np.asarray(picture)


def model_view(data: Any, source: Any, name: str, prepared: Prepared, key: str) -> None:
    """Under a film on Explain and Demo: the run's preprocessing in words, what it did to this film, and on request
    the film with what was removed outlined beside the pixels the model saw."""
    settings = Preprocessing.of(data)
    if not settings.active:
        st.caption(f"This model sees each film as decoded and resized ({data.image_size} px, {data.resize_mode}): "
                   "no preprocessing.")
        return
    st.caption(f"This model's preprocessing: **{settings.describe()}** ({data.image_size} px, {data.resize_mode}). "
               f"On this film: {' · '.join(prepared.notes) or 'nothing to do'}.")
    if st.toggle("Show what the model sees", key=key):
        film = read_image(source, filename=name, draft_size=data.image_size)  # the model's decode: the boxes fit it
        before, after = st.columns(2)
        before.image(outlined(film, prepared), width="stretch",
                     caption="the film: markers removed (green), the part kept (red)")
        after.image(prepared.pixels, width="stretch", caption=f"what the model sees ({data.image_size} px)")
