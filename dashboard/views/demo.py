"""Demo: a clean view for clinicians — browse the run's test cases (or upload a film), film and heatmap side by side, zoom, export."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from core.data.datasets import CLASS_NAMES
from core.data.decode import ImageLoadError
from core.data.images import prepared_pixels, read_image
from core.data.preprocess import Preprocessing
from dashboard import charts, resources, state
from dashboard.views import reader

ORDERS = ("Misclassified first", "Highest P(pneumonia) first", "Lowest P(pneumonia) first", "File name")
ZOOMS = (1.0, 1.5, 2.0, 3.0, 4.0)
SCREEN_SIDE = 1024  # longest side of a picture sent to the browser
PRESENTATION_CSS = """<style>
section[data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"], [data-testid="stExpandSidebarButton"],
header[data-testid="stHeader"] {display: none !important;}
[data-testid="stMainBlockContainer"] {max-width: 100% !important; padding: 1rem 2.5rem !important;}
[data-testid="stMain"] p, [data-testid="stMain"] li, [data-testid="stMain"] label, [data-testid="stMain"] button p,
[data-testid="stCaptionContainer"], [data-testid="stMarkdownContainer"] div {font-size: 1.3rem !important;}
[data-testid="stMain"] h1 {font-size: 3rem !important;}
[data-testid="stMain"] h2 {font-size: 2.4rem !important;}
[data-testid="stMain"] [data-testid="stMetricValue"], [data-testid="stMain"] [data-testid="stMetricValue"] * {
  font-size: 3.6rem !important;}
</style>"""
# Streamlit has no key events: this listener presses Previous / Next on ← / →, unless a field or slider has focus.
ARROW_KEYS = """<script>
(() => {
  if (window.__cxrDemoKeys) return;
  window.__cxrDemoKeys = true;
  document.addEventListener("keydown", (event) => {
    if (event.altKey || event.ctrlKey || event.metaKey || event.shiftKey) return;
    const target = event.target;
    if (target && (["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName) || target.isContentEditable ||
                   target.getAttribute("role") === "slider")) return;
    const key = {ArrowLeft: "demo_prev", ArrowRight: "demo_next"}[event.key];
    const button = key && document.querySelector(`.st-key-${key} button`);
    if (!button || button.disabled) return;
    event.preventDefault();
    button.click();
  });
})();
</script>"""


def called(probability: float | None, threshold: float) -> int | None:
    return None if probability is None else int(probability >= threshold)


def case_list(cases: list[dict], threshold: float, truth: str, call: str, order: str) -> list[dict]:
    """The test cases that pass the filters, in the chosen order."""
    chosen = [c for c in cases
              if (truth == "All" or CLASS_NAMES[c["label"]] == truth)
              and (call == "All" or called(c.get("probability"), threshold) == CLASS_NAMES.index(call))]
    if order == "File name" or any(c.get("probability") is None for c in chosen):
        return sorted(chosen, key=lambda c: Path(c["file"]).name)
    if order == "Misclassified first":  # the most confident mistakes lead
        return sorted(chosen, key=lambda c: (called(c["probability"], threshold) == c["label"],
                                             -abs(c["probability"] - threshold)))
    return sorted(chosen, key=lambda c: -c["probability"] if order.startswith("Highest") else c["probability"])


def zoomed(picture: np.ndarray, zoom: float, across: float, down: float) -> np.ndarray:
    """The part of a full-resolution picture shown at ``zoom``, centred at fractions ``across`` / ``down``."""
    height, width = picture.shape[:2]
    h, w = max(1, round(height / zoom)), max(1, round(width / zoom))
    top = int(np.clip(round(down * height - h / 2), 0, height - h))
    left = int(np.clip(round(across * width - w / 2), 0, width - w))
    return picture[top:top + h, left:left + w]


def for_screen(picture: np.ndarray) -> np.ndarray:
    """At most SCREEN_SIDE pixels a side (a zoomed crop of a large film keeps its full resolution up to that)."""
    from PIL import Image

    scale = SCREEN_SIDE / max(picture.shape[:2])
    if scale >= 1:
        return picture
    size = (max(1, round(picture.shape[1] * scale)), max(1, round(picture.shape[0] * scale)))
    return np.asarray(Image.fromarray(picture).resize(size, Image.LANCZOS))


# ---------------------------------------------------------------------------------- page
st.title("Demo")
presentation = bool(st.session_state.get("demo_presentation", False))
if presentation:
    st.html(PRESENTATION_CSS)
st.error("**For research and education only — this is not a diagnosis.** The model has not been validated "
         "for clinical use; never use it to guide patient care.", icon=":material/warning:")
run = state.pick_run()
if run is None:
    st.info("No trained model yet: train a run first (the *Quick real-sample demo* preset takes about a minute).",
            icon=":material/stethoscope:")
    st.stop()

config = run.config()
point = state.pick_operating_point(run)
threshold = point.threshold
if state.is_synthetic(config):
    st.caption(f"{state.SYNTHETIC_BADGE} This model was trained on the **synthetic** demo set; "
               "its answers on real X-rays mean nothing.")
if st.segmented_control("View", ("Case browser", "Reader study"), default="Case browser",
                        key="demo_view") == "Reader study":
    reader.render(run, point)  # dashboard/views/reader.py: the blinded reading and its results
    st.stop()

cases = resources.run_predictions(run) or [{"file": f, "label": y, "probability": None}
                                           for f, y in resources.run_test_images(run)]
sources = ["Test cases", "Upload"] if cases else ["Upload"]
if st.session_state.get("demo_source") not in sources:
    st.session_state["demo_source"] = sources[0]
top = st.columns([2, 4, 2], vertical_alignment="bottom")
source = top[0].segmented_control("Image", sources, key="demo_source") or sources[0]
top[2].toggle("Presentation mode", key="demo_presentation",
              help="Hides the sidebar and enlarges the type, for a projector. Switch off to choose another run.")

image_source: str | bytes = b""  # a file, a MedMNIST reference or uploaded bytes
name, truth = "", None
if source == "Test cases":
    for key in ("demo_truth", "demo_called"):
        if not st.session_state.get(key):
            st.session_state[key] = "All"
    filters = st.columns([2, 2, 3])
    truth_filter = filters[0].segmented_control("True label", ["All", *CLASS_NAMES], key="demo_truth") or "All"
    scored = all(c.get("probability") is not None for c in cases)
    call_filter = filters[1].segmented_control("Called", ["All", *CLASS_NAMES], key="demo_called", disabled=not scored,
                                               help=None if scored else "This run has no test evaluation yet.") or "All"
    order = filters[2].selectbox("Order", ORDERS, key="demo_order")
    shown = case_list(cases, threshold, truth_filter, call_filter, order)
    if not shown:
        st.info("No test case matches these filters.", icon=":material/filter_alt_off:")
        st.stop()
    signature = (run.id, truth_filter, call_filter, order)
    if st.session_state.get("_demo_filters") != signature:  # new filters: start at the first case
        st.session_state["_demo_filters"] = signature
        st.session_state["demo_index"] = 0
    position = st.session_state.get("demo_index", 0) % len(shown)
    back, where, forward = st.columns([1, 4, 1], vertical_alignment="center")
    if back.button("Previous", icon=":material/chevron_left:", key="demo_prev", help="Previous case (← key)",
                   width="stretch"):
        position = (position - 1) % len(shown)
    if forward.button("Next", icon=":material/chevron_right:", key="demo_next", help="Next case (→ key)",
                      width="stretch"):
        position = (position + 1) % len(shown)
    st.session_state["demo_index"] = position
    case = shown[position]
    image_source, truth, name = case["file"], case["label"], Path(case["file"]).name
    wrong = case.get("probability") is not None and called(case["probability"], threshold) != truth
    where.markdown(f"<div style='text-align:center'>Case {position + 1} of {len(shown)} · {name}"
                   f"{' · misclassified' if wrong else ''}</div>", unsafe_allow_html=True)
    st.html(ARROW_KEYS, unsafe_allow_javascript=True)
else:
    upload = top[1].file_uploader("X-ray", type=resources.UPLOAD_TYPES, key="demo_upload",
                                  label_visibility="collapsed",
                                  help="Processed in memory, never stored; DICOM patient tags are not shown.")
    if upload is None:
        st.info("Upload a frontal chest X-ray (JPEG, PNG or DICOM). It is processed in memory and not stored.",
                icon=":material/upload:")
        st.stop()
    image_source, name = upload.getvalue(), upload.name

try:
    prepared = prepared_pixels(image_source, config.data.image_size, config.data.resize_mode,
                               preprocessing=Preprocessing.of(config.data), filename=name)
    image = prepared.model_input()  # as evaluated
    gray = read_image(image_source, filename=name)  # full resolution, for the screen only
except ImageLoadError as exc:
    st.error(f"This file cannot be used: {exc}", icon=":material/error:")
    st.stop()

path, modified = resources.model_key(run)
try:
    result = resources.explain_image(run.id, path, modified, resources.digest(image.tobytes()), image, "gradcam", None,
                                     threshold)
except Exception as exc:  # noqa: BLE001 - a damaged model file fails in Keras in many ways; say so, keep the app up
    st.error(f"The model of run {run.id} cannot be used: {type(exc).__name__}: {exc}", icon=":material/error:")
    st.stop()
probability = result["probability"]
pneumonia = probability >= threshold

# ---------------------------------------------------------------------------------- film and heatmap
from core.evaluation.overlay import cam_on_film, overlay  # noqa: E402  (TensorFlow: loaded with the model above)

zoom = st.session_state.get("demo_zoom", 1.0)
across, down = st.session_state.get("demo_across", 0.5), st.session_state.get("demo_down", 0.5)
cam = np.round(cam_on_film(result["cam"], gray.shape[0], gray.shape[1], config.data.resize_mode,
                           prepared.body_on(*gray.shape[:2])) * 255).astype(np.uint8)
film_view = zoomed(gray, zoom, across, down)
heat_view = overlay(for_screen(film_view), for_screen(zoomed(cam, zoom, across, down)) / 255.0, 0.45)
film_col, heat_col, verdict = st.columns([3, 3, 2], gap="medium")
film_col.image(for_screen(film_view), width="stretch",
               caption=f"{name if source == 'Test cases' else 'Uploaded film'} · {gray.shape[1]}×{gray.shape[0]} px"
                       + (f" · zoom {zoom:g}×" if zoom > 1 else ""))
heat_col.image(heat_view, width="stretch", caption="Grad-CAM: warm colours mark what drove the answer")
with film_col:
    charts.model_view(config.data, image_source, name, prepared, key="demo_model_view")
with verdict:
    st.metric("Probability of pneumonia", charts.pct(probability))
    if pneumonia:
        st.markdown("## :red[:material/circle:] Signs of pneumonia")
    else:
        st.markdown("## :blue[:material/circle:] No pneumonia detected")
    st.caption(f"Called pneumonia from {threshold:.1%}: "
               + (f"the threshold of site profile **{point.site}**, set on that site's films."
                  if point.site else "a threshold chosen on validation data."))
    st.caption(resources.cue_sentence(resources.without_cues(run.id, path, modified, resources.digest(image.tobytes()),
                                                             image, image_source, name, config.data)))
    if truth is not None:
        agree = bool(truth) == pneumonia
        st.markdown(f"**True label: {CLASS_NAMES[truth]}** "
                    + (":green[:material/check_circle: agrees]" if agree else ":red[:material/cancel: disagrees]"))
    else:
        st.caption("True label: unknown (uploaded film).")
    st.select_slider("Zoom", ZOOMS, key="demo_zoom", format_func=lambda z: f"{z:g}×")
    if zoom > 1:
        st.slider("Across (left → right)", 0.0, 1.0, 0.5, 0.05, key="demo_across")
        st.slider("Down (top → bottom)", 0.0, 1.0, 0.5, 0.05, key="demo_down")
    from core.evaluation.case_report import CaseReport, case_png

    whole = for_screen(gray)
    sample_films = resources.films_from_sample(run)  # a starter shows the bundled sample's films
    citation = ("Kermany, Zhang, Goldbaum (2018), Mendeley Data v2, doi:10.17632/rscbjbr9sj.2, CC BY 4.0"
                + (", downsized" if sample_films else "")
                if source == "Test cases" and (sample_films or config.data.source in ("sample", "kaggle")) else None)
    report = CaseReport(whole, overlay(whole, for_screen(cam) / 255.0, 0.45), probability,
                        threshold, f"{charts.run_title(run)} ({run.id})"
                        + (f", site profile {point.site}" if point.site else ""),
                        name if source == "Test cases" else "uploaded film", CLASS_NAMES[truth] if truth is not None else None,
                        citation)
    st.download_button("Export this case (PNG)", case_png(report), file_name=f"{Path(name).stem or 'case'}-case.png",
                       mime="image/png", icon=":material/download:", width="stretch", key="demo_export",
                       help="Film, heatmap, probability, threshold, run and the not-for-diagnosis notice in one image.")
if source == "Test cases":
    state.data_citation(config, resources.films_from_sample(run))
