"""Dashboard session state: the settings widgets' values across pages, the chosen run, the sidebar."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import streamlit as st

from core.config import FIELDS_OF_VIEW, INTENSITIES, PRESETS, RunConfig, preset
from core.data.sample import SAMPLE_LICENCE
from core.evaluation.report import model_card, model_card_html
from core.evaluation.sites import OperatingPoint, SiteError, operating_point, site_names
from core.store.runs import Run, RunError, RunStore
from dashboard.charts import run_title
from dashboard.resources import sample_usable

T = TypeVar("T")

NOTICE = "**Research and education only — not for diagnosis.** Predictions and heatmaps must not guide patient care."
SYNTHETIC_BADGE = ":orange-badge[synthetic]"
PAGES = {
    "data": "views/data.py",
    "train": "views/train.py",
    "sweep": "views/sweep.py",
    "runs": "views/runs.py",
    "evaluate": "views/evaluate.py",
    "explain": "views/explain.py",
    "demo": "views/demo.py",
}
SETTING_PREFIX = "cfg."
DEFAULT_PRESET, FALLBACK_PRESET = "Quick real-sample demo", "Quick CPU demo"


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


def is_synthetic(config: RunConfig) -> bool:
    return config.data.source == "demo"


def data_label(config: RunConfig) -> str:
    """The data source in words; the demo set always says it is synthetic."""
    if config.data.source == "demo":
        return "built-in demo set (synthetic, not real X-rays)"
    if config.data.source == "sample":
        return "bundled real sample (Kaggle chest X-ray, Kermany et al. 2018)"
    if config.data.source == "kaggle":
        return f"Kaggle chest X-ray{f' at {config.data.path}' if config.data.path else ''}"
    return f"{config.data.source} {config.data.path or ''}".strip()


def data_citation(config: RunConfig, sample_films: bool = False) -> None:
    """The data set's citation under films of the bundled sample or the Kaggle set (CC BY 4.0 asks for it).

    ``sample_films``: the films shown are the bundled sample's whatever the run trained on (a starter's test films).
    """
    if sample_films or config.data.source in ("sample", "kaggle"):
        st.caption(f"Films: Kermany, Zhang, Goldbaum (2018), Mendeley Data v2, doi:10.17632/rscbjbr9sj.2 "
                   f"(Cell 2018, doi:10.1016/j.cell.2018.02.010); {SAMPLE_LICENCE}"
                   + (", downsized for the bundled sample." if sample_films or config.data.source == "sample" else "."))


def model_card_downloads(run: Run, key: str) -> None:
    """Two buttons: the run's model card as Markdown and as HTML (``core.evaluation.report``, read from the run folder)."""
    markdown_col, html_col = st.columns(2)
    markdown_col.download_button("Model card (Markdown)", model_card(run), file_name=f"{run.id}-model-card.md",
                                 mime="text/markdown", key=f"{key}-card-md", icon=":material/description:",
                                 width="stretch", help="Intended use, data and splits, recipe, metrics with CIs, "
                                 "subtypes, calibration, shortcut audit, limits and the data citation.")
    html_col.download_button("Model card (HTML)", model_card_html(run), file_name=f"{run.id}-model-card.html",
                             mime="text/html", key=f"{key}-card-html", icon=":material/description:", width="stretch")


def usable_runs() -> list[Run]:
    """Runs with a trained model, newest first (what Evaluate, Explain and Demo can show)."""
    return [run for run in store().list() if run.model_path.is_file() and not run.status().active]


def pick_run() -> Run | None:
    """The shared sidebar run picker; defaults to the newest finished run, remembered across pages."""
    runs = usable_runs()
    with st.sidebar:
        for broken in (run for run in store().list() if run.starter is not None and not run.model_path.is_file()):
            st.warning(f"The starter model `{broken.id}` has no `{broken.model_path.name}`: it is incomplete. "
                       "Restore it with `git checkout -- models/`.", icon=":material/broken_image:")
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


VALIDATION_CHOICE = "The run's validation threshold"


def pick_operating_point(run: Run) -> OperatingPoint:
    """The shared sidebar choice of where the threshold comes from: the run's validation or one of its site profiles.

    Remembered per run across Evaluate, Explain and Demo (like the run picker); a profile that has gone
    falls back to validation with a warning.
    """
    names = site_names(run)
    choices = [VALIDATION_CHOICE, *names]
    remembered = st.session_state.setdefault("site_of", {})
    chosen = remembered.get(run.id, VALIDATION_CHOICE)
    if chosen not in choices:
        chosen = remembered[run.id] = VALIDATION_CHOICE
    widget = f"_site_picker-{run.id}"

    def remember():
        remembered[run.id] = st.session_state[widget]

    st.session_state[widget] = chosen
    with st.sidebar:
        st.selectbox("Threshold from", choices, key=widget, on_change=remember,
                     format_func=lambda c: c if c == VALIDATION_CHOICE else f"site profile: {c}",
                     help="Where the decision threshold comes from: the run's validation split, or a site profile "
                          "calibrated on one hospital's labelled films (Evaluate → Site profiles).")
    try:
        return operating_point(run, None if chosen == VALIDATION_CHOICE else chosen)
    except SiteError as exc:
        st.sidebar.warning(f"{exc}; using the run's validation threshold.", icon=":material/warning:")
        return operating_point(run)


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
        # The real sample first; the synthetic set when the sample is missing or damaged (the Data page says so).
        first = DEFAULT_PRESET if sample_usable() else FALLBACK_PRESET
        saved.update(settings_of(preset(first)))
        st.session_state.setdefault("preset", first)
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


def augmentation_controls(flip_help: bool = True) -> None:
    """The augmentation sliders; their keys are shared by the Data preview and the Train settings."""
    st.slider("Rotation (± degrees)", 0.0, 45.0, step=1.0, key="cfg.augment.rotation_degrees")
    st.slider("Zoom (± fraction)", 0.0, 0.5, step=0.01, key="cfg.augment.zoom")
    st.slider("Shift (± fraction of the side)", 0.0, 0.5, step=0.01, key="cfg.augment.shift")
    st.slider("Brightness (±)", 0.0, 0.5, step=0.01, key="cfg.augment.brightness")
    st.slider("Contrast (±)", 0.0, 0.5, step=0.01, key="cfg.augment.contrast")
    st.slider("Noise (std, pixel units)", 0.0, 50.0, step=1.0, key="cfg.augment.noise_std")
    st.caption("Acquisition shift: another scanner, another export")
    st.slider("Gamma (± log γ)", 0.0, 0.5, step=0.05, key="cfg.augment.gamma",
              help="A different detector response: 0.2 draws γ between 0.82 and 1.22 per image.")
    st.slider("Blur (max σ, pixels)", 0.0, 1.0, step=0.1, key="cfg.augment.blur_sigma",
              help="A softer film or a different resize; applied to about half the images.")
    st.slider("JPEG quality (lowest; 0 = off)", 0, 100, step=5, key="cfg.augment.jpeg_quality_min",
              help="Re-encodes each image as a JPEG of random quality between this and 100.")
    st.checkbox("Horizontal flip", key="cfg.augment.horizontal_flip",
                help="Off by default: the heart is on the left, so a flipped chest is not a real anatomy."
                if flip_help else None)


def preprocessing_controls() -> None:
    """The preprocessing settings that remove non-anatomical cues; their keys are shared by the Data preview and Train."""
    st.radio("Field of view", FIELDS_OF_VIEW, key="cfg.data.field_of_view", horizontal=True,
             format_func={"full": "whole film", "body": "crop to the body"}.get,
             help="Crop to the body's bounding box (Otsu threshold) before the resize: padding, air and collimation "
                  "edges around it are cut away. A film with no clear body keeps its full view.")
    st.checkbox("Remove burnt-in markers", key="cfg.data.remove_markers",
                help="Finds small bright letters and labels near the edges (\"R\", \"KV58\") and fills them in from "
                     "their surroundings before the crop.")
    st.radio("Intensity", INTENSITIES, key="cfg.data.intensity", horizontal=True,
             format_func={"none": "as decoded", "clahe": "CLAHE", "window": "1–99 % window"}.get,
             help="After the resize: CLAHE equalises contrast locally; the window stretches the 1st–99th percentile "
                  "to 0–255. Both remove a site's overall brightness and contrast.")


def with_progress(start: str, failed: str, errors: tuple[type[Exception], ...],
                  work: Callable[[Callable[[float, str], None]], T]) -> T | None:
    """``work(progress)`` under a progress bar that opens on ``start``; on one of ``errors`` the bar goes and
    "``failed``: why" is shown instead, and None is returned."""
    bar = st.progress(0.0, text=start)
    try:
        return work(lambda fraction, message: bar.progress(min(fraction, 1.0), text=message))
    except errors as exc:
        st.error(f"{failed}: {exc}", icon=":material/error:")
        return None
    finally:
        bar.empty()
