"""Helpers shared by the dashboard pages: run store, sidebar, settings state, cached models and charts.

Heavy modules (TensorFlow via ``core.model`` / ``core.explain``) are imported inside the cached
functions that need them, so pages that do not touch a model appear at once.
"""
from __future__ import annotations

import hashlib
import io
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from core.config import PRESETS, RunConfig, preset
from core.runs import Run, RunError, RunStore

NOTICE = "**Research and education only — not for diagnosis.** Predictions and heatmaps must not guide patient care."
SYNTHETIC_BADGE = ":orange-badge[synthetic]"
PAGES = {
    "data": "views/data.py",
    "train": "views/train.py",
    "runs": "views/runs.py",
    "evaluate": "views/evaluate.py",
    "explain": "views/explain.py",
    "demo": "views/demo.py",
}
STATE_BADGES = {
    "created": ":gray-badge[created]", "queued": ":blue-badge[:material/schedule: queued]",
    "running": ":blue-badge[:material/autorenew: running]", "finished": ":green-badge[:material/check: finished]",
    "failed": ":red-badge[:material/error: failed]", "stopped": ":orange-badge[:material/stop: stopped]",
    "interrupted": ":orange-badge[:material/warning: interrupted]",
}
CLASS_NAMES = ("NORMAL", "PNEUMONIA")
SETTING_PREFIX = "cfg."
# Colours readable on the light and the dark theme.
TRAIN_COLOUR, VAL_COLOUR = "#4C78A8", "#F58518"


# --------------------------------------------------------------------------------- the run store
def store() -> RunStore:
    """The run store (``$CXR_STUDIO_RUNS`` or ``models/``); cheap, read fresh on every call."""
    return RunStore()


def run_or_none(run_id: str | None) -> Run | None:
    if not run_id:
        return None
    try:
        return store().get(run_id)
    except RunError:
        return None


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


def is_synthetic(config: RunConfig) -> bool:
    return config.data.source == "demo"


def data_label(config: RunConfig) -> str:
    """The data source in words; the demo set always says it is synthetic."""
    if config.data.source == "demo":
        return "built-in demo set (synthetic, not real X-rays)"
    if config.data.source == "kaggle":
        return f"Kaggle chest X-ray{f' at {config.data.path}' if config.data.path else ''}"
    return f"{config.data.source} {config.data.path or ''}".strip()


def usable_runs() -> list[Run]:
    """Runs with a trained model, newest first (what Evaluate, Explain and Demo can show)."""
    return [run for run in store().list() if run.model_path.is_file() and not run.status().active]


def pick_run() -> Run | None:
    """The shared sidebar run picker; defaults to the newest finished run, remembered across pages."""
    runs = usable_runs()
    with st.sidebar:
        if not runs:
            st.info("No trained run yet. Start one on the **Train** page.")
            return None
        ids = [run.id for run in runs]
        chosen = st.session_state.get("run_id")
        if chosen not in ids:
            finished = [run.id for run in runs if run.status().state == "finished"]
            chosen = (finished or ids)[0]
            st.session_state["run_id"] = chosen
        by_id = {run.id: run for run in runs}

        def remember():
            st.session_state["run_id"] = st.session_state["_run_picker"]

        st.session_state["_run_picker"] = chosen
        st.selectbox("Run", ids, key="_run_picker", on_change=remember,
                     format_func=lambda rid: run_title(by_id[rid]),
                     help="The trained run shown on Evaluate, Explain and Demo.")
    return by_id[chosen]


def short_path(path: str | Path) -> str:
    """A path as a person reads it: relative to where the app runs, or with ``~`` for home."""
    path = Path(path).resolve()
    for base, shown in ((Path.cwd().resolve(), ""), (Path.home().resolve(), "~/")):
        try:
            return shown + str(path.relative_to(base)) if path != base else (shown or ".")
        except ValueError:
            continue
    return str(path)


def sidebar_notice() -> None:
    with st.sidebar:
        st.warning(NOTICE, icon=":material/warning:")
        st.caption(f"Run store: `{short_path(store().root)}`")


# --------------------------------------------------------------------------------- settings state
def flatten(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"head": {"epochs": 2}}}`` → ``{"train.head.epochs": 2}``."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def settings_of(config: RunConfig) -> dict[str, Any]:
    """Widget keys and values that describe ``config`` (``cfg.<dotted setting>`` plus the weights choice)."""
    values = {SETTING_PREFIX + key: value for key, value in flatten(config.to_dict()).items()}
    weights = config.model.weights
    values["weights_choice"] = weights if weights in ("imagenet", "none") else "file"
    values["weights_file"] = "" if weights in ("imagenet", "none") else weights
    return values


def apply_config(config: RunConfig) -> None:
    """Put every setting of ``config`` into the widgets' session state (call from a widget callback)."""
    st.session_state.update(settings_of(config))


def init_settings() -> None:
    """Default settings once per session (the quick preset); keep them alive across pages.

    Streamlit drops a widget's value when a page without that widget runs. The settings are
    therefore mirrored in ``_saved_settings`` at the start of every run and put back from it.
    """
    saved = st.session_state.setdefault("_saved_settings", {})
    if not saved:
        saved.update(settings_of(preset("Quick CPU demo")))
        st.session_state.setdefault("preset", "Quick CPU demo")
    for key in saved:
        if key in st.session_state:
            saved[key] = st.session_state[key]
        st.session_state[key] = saved[key]


def current_config() -> RunConfig:
    """The RunConfig described by the widgets (not validated)."""
    values = {key[len(SETTING_PREFIX):]: value for key, value in st.session_state.items()
              if key.startswith(SETTING_PREFIX)}
    choice = st.session_state.get("weights_choice", "imagenet")
    values["model.weights"] = st.session_state.get("weights_file", "").strip() if choice == "file" else choice
    return RunConfig().with_overrides(**values)


def preset_names() -> list[str]:
    return list(PRESETS)


# --------------------------------------------------------------------------------- data
@st.cache_data(show_spinner="Preparing the synthetic demo set…")
def demo_dataset_root(images_per_class: int = 120) -> str:
    """Generate (first time only) the synthetic demo set the demo runs use; returns its folder."""
    from core.demo import ensure_demo_dataset

    return str(ensure_demo_dataset(images_per_class=images_per_class))


@st.cache_data(show_spinner="Indexing the data set…", max_entries=8)
def dataset_index(path: str, modified: float):
    """``core.data.find_dataset`` for a folder, cached per path and folder modification time."""
    from core.data import find_dataset

    return find_dataset(path)


def folder_mtime(path: str) -> float:
    try:
        return Path(path).expanduser().stat().st_mtime
    except OSError:
        return 0.0


def display_image(gray: np.ndarray, model_size: int, resize_mode: str, largest: int = 512) -> np.ndarray:
    """The X-ray as the model sees it (same framing), at a resolution fit for the screen."""
    from core.data import prepare_image

    side = int(max(model_size, min(largest, max(gray.shape[:2]))))
    return prepare_image(gray, side, resize_mode)[..., 0].astype(np.uint8)


@st.cache_data(max_entries=2048, show_spinner=False)
def thumbnail(path: str, size: int = 160) -> np.ndarray | None:
    """A small uint8 grayscale copy of an image file, or None when it cannot be read."""
    from core.data import ImageLoadError, decode_image, prepare_image

    try:
        gray = decode_image(Path(path).read_bytes(), path)
    except (ImageLoadError, OSError):
        return None
    return prepare_image(gray, size, "letterbox")[..., 0].astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


# --------------------------------------------------------------------------------- models
_model_lock = threading.Lock()


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def load_model(path: str, modified: float):
    """A saved classifier, loaded once per file version and shared by all sessions."""
    from core.model import load_model as load

    return load(path)


@st.cache_resource(max_entries=8, show_spinner="Preparing the explainer…")
def explainer(path: str, modified: float, layer: str | None, threshold: float):
    from core.explain import Explainer

    return Explainer(load_model(path, modified), layer=layer, threshold=threshold)


def model_key(run: Run) -> tuple[str, float]:
    return str(run.model_path), run.model_path.stat().st_mtime


@st.cache_data(max_entries=256, show_spinner="Computing the heatmap…")
def explain_image(run_id: str, path: str, modified: float, image_hash: str, _image: np.ndarray,
                  method: str, layer: str, threshold: float) -> dict[str, Any]:
    """Probability and CAM for one image, cached per (run, image hash, method, layer)."""
    result = explainer(path, modified, layer, threshold).explain(_image, method)
    return {"probability": result.probability, "cam": result.cam, "layer": result.layer,
            "explained": result.explained}


@st.cache_data(max_entries=256, show_spinner="Checking the heatmap's faithfulness…")
def faithfulness(run_id: str, path: str, modified: float, image_hash: str, _image: np.ndarray,
                 _cam: np.ndarray, method: str, layer: str, threshold: float) -> dict[str, Any]:
    from core.explain import deletion_score

    return deletion_score(load_model(path, modified), _image, _cam, threshold=threshold)


@st.cache_resource(max_entries=16, show_spinner="Building the layer table…")
def _skeleton(backbone: str, alpha: float | None):
    """The classifier without weights (parameter counts do not depend on weights or image size)."""
    from core.config import ModelConfig
    from core.model import build_classifier

    return build_classifier(ModelConfig(backbone=backbone, weights="none", alpha=alpha), 64)


def layer_rows(model_cfg) -> list[dict[str, Any]]:
    """The per-block table for the fine-tune phase under the chosen unfreeze depth."""
    from core.model import layer_table, set_trainable

    model = _skeleton(model_cfg.backbone, model_cfg.alpha)
    with _model_lock:  # the skeleton is shared; set_trainable mutates it
        set_trainable(model, model_cfg, "finetune")
        rows = layer_table(model, model_cfg.backbone)
    return [{"block": row.label, "layers": row.layers, "parameters": row.params,
             "trainable parameters": row.trainable_params, "trainable": row.trainable} for row in rows]


# --------------------------------------------------------------------------------- formatting
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


def augmentation_controls(flip_help: bool = True) -> None:
    """The augmentation sliders; their keys are shared by the Data preview and the Train settings."""
    st.slider("Rotation (± degrees)", 0.0, 45.0, step=1.0, key="cfg.augment.rotation_degrees")
    st.slider("Zoom (± fraction)", 0.0, 0.5, step=0.01, key="cfg.augment.zoom")
    st.slider("Shift (± fraction of the side)", 0.0, 0.5, step=0.01, key="cfg.augment.shift")
    st.slider("Brightness (±)", 0.0, 0.5, step=0.01, key="cfg.augment.brightness")
    st.slider("Contrast (±)", 0.0, 0.5, step=0.01, key="cfg.augment.contrast")
    st.slider("Noise (std, pixel units)", 0.0, 50.0, step=1.0, key="cfg.augment.noise_std")
    st.checkbox("Horizontal flip", key="cfg.augment.horizontal_flip",
                help="Off by default: the heart is on the left, so a flipped chest is not a real anatomy."
                if flip_help else None)


# File types the uploaders accept (decoded by core.data.decode_image, in memory only).
UPLOAD_TYPES = ["jpg", "jpeg", "png", "dcm", "dicom", "bmp", "tif", "tiff", "webp"]
