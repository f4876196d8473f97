"""Explain: one X-ray → P(pneumonia), the label at the run's threshold, and where the model looked (CAM)."""
from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from core.data.datasets import CLASS_NAMES
from core.data.decode import ImageLoadError
from core.data.images import prepared_pixels, read_image
from core.data.preprocess import Preprocessing
from dashboard import charts, resources, state

st.title("Explain")
run = state.pick_run()
if run is None:
    st.info("No trained model yet: train a run first.", icon=":material/search_insights:")
    st.page_link(state.PAGES["train"], label="Go to Train", icon=":material/model_training:")
    st.stop()

config = run.config()
point = state.pick_operating_point(run)
threshold = point.threshold
size, resize_mode = config.data.image_size, config.data.resize_mode
preprocessing = Preprocessing.of(config.data)
st.caption(f"Run **{charts.run_title(run)}** · {config.model.backbone} at {size} px · {point.label} · "
           f"trained on {state.data_label(config)}" + (f" {state.SYNTHETIC_BADGE}" if state.is_synthetic(config) else ""))

# ---------------------------------------------------------------------------------- choose an image
test_items = resources.run_test_images(run)
sources = ["Pick from the test split", "Upload an X-ray"] if test_items else ["Upload an X-ray"]
if st.session_state.get("explain_file"):  # sent here from the Evaluate gallery
    st.session_state["explain_source"] = sources[0]
    st.session_state["explain_pick"] = st.session_state.pop("explain_file")
if st.session_state.get("explain_source") not in sources:
    st.session_state["explain_source"] = sources[0]
source = st.segmented_control("Image", sources, key="explain_source") or sources[0]

image_source: str | bytes = b""  # a file, a MedMNIST reference or uploaded bytes
name, truth = "", None
if source == "Pick from the test split":
    files = [file for file, _ in test_items]
    labels = dict(test_items)
    if st.session_state.get("explain_pick") not in labels:
        st.session_state["explain_pick"] = files[0]
    chosen = st.selectbox("Test image", files, key="explain_pick",
                          format_func=lambda f: f"{Path(f).name} · {CLASS_NAMES[labels[f]]}")
    image_source, name, truth = chosen, Path(chosen).name, labels[chosen]
else:
    upload = st.file_uploader("X-ray (JPEG, PNG or DICOM)", type=resources.UPLOAD_TYPES, key="explain_upload",
                              help="Processed in memory and never stored. DICOM patient tags are not read out or shown.")
    if upload is None:
        st.info("Upload a frontal chest X-ray, or pick one from the test split.", icon=":material/upload:")
        st.stop()
    image_source, name = upload.getvalue(), upload.name

try:
    prepared = prepared_pixels(image_source, size, resize_mode, preprocessing=preprocessing, filename=name)
    image = prepared.model_input()  # exactly what the run was evaluated on
    gray = read_image(image_source, filename=name)  # full resolution, for the screen only
except ImageLoadError as exc:
    st.error(f"This file cannot be used: {exc}", icon=":material/error:")
    st.stop()
image_hash = resources.digest(image.tobytes())

# ---------------------------------------------------------------------------------- method and layer
from core.evaluation.ensemble import member_ids as ensemble_members  # noqa: E402
from core.evaluation.explain import CAM_METHODS, ENSEMBLE_LAYER, cam_layer_choices  # noqa: E402  (TensorFlow)
from core.evaluation.overlay import COLORMAPS, colorize, overlay

path, modified = resources.model_key(run)
try:
    model = resources.load_model(path, modified)
except Exception as exc:  # noqa: BLE001 - a damaged model file fails in Keras in many ways; say so, keep the app up
    st.error(f"The model of run {run.id} cannot be loaded ({type(exc).__name__}: {exc}). Its file "
             f"`{run.model_path.name}` may be damaged or incomplete.", icon=":material/error:")
    st.stop()
controls = st.columns([3, 2, 2, 1])
st.session_state.setdefault("explain_method", "gradcam")
method = controls[0].segmented_control("Method", list(CAM_METHODS), format_func=CAM_METHODS.get, key="explain_method", help="Grad-CAM is fastest; Score-CAM needs no gradients.")
method = method or "gradcam"
layers = cam_layer_choices(model)
layer = controls[1].selectbox("Layer", layers, key=f"explain_layer-{run.id}",
                              help="The default is the backbone's last convolutional stage; earlier layers give finer, noisier maps.")
if layers == [ENSEMBLE_LAYER]:
    st.caption(f":material/stacks: This run is an ensemble of {len(ensemble_members(run))} runs: the probability "
               "comes from the mean of their logits, the heatmap is the mean of their heatmaps.")
opacity = controls[2].slider("Heatmap opacity", 0.0, 1.0, 0.45, 0.05, key="explain_opacity")
colormap = controls[3].selectbox("Colours", COLORMAPS, key="explain_colormap")

try:
    result = resources.explain_image(run.id, path, modified, image_hash, image, method, layer, threshold)
except (ValueError, RuntimeError) as exc:
    st.error(f"Could not compute the heatmap: {exc}", icon=":material/error:")
    st.stop()

probability = result["probability"]
called = CLASS_NAMES[int(probability >= threshold)]
cols = st.columns(4)
cols[0].metric("P(pneumonia)", f"{probability:.1%}")
cols[1].metric(f"Label at threshold {threshold:.2f}", called)
cols[2].metric("True label", CLASS_NAMES[truth] if truth is not None else "unknown")
cols[3].metric("Heatmap shows evidence for", result["explained"].upper())
st.markdown(resources.cue_sentence(resources.without_cues(run.id, path, modified, image_hash, image, image_source, name, config.data)))

picture = resources.display_image(gray, size, resize_mode, preprocessing)
charts.model_view(config.data, image_source, name, prepared, key="explain_model_view")
blend = overlay(picture, result["cam"], opacity, colormap)
left, middle, right = st.columns(3)
left.image(picture, caption=f"X-ray ({name})", width="stretch")
middle.image(colorize(result["cam"], colormap), caption=f"{CAM_METHODS[method]} heatmap · layer {layer}", width="stretch")
right.image(blend, caption=f"Overlay (opacity {opacity:.2f})", width="stretch")
if truth is not None:
    state.data_citation(config, resources.films_from_sample(run))
right.download_button("Download overlay (PNG)", resources.png_bytes(blend), file_name=f"{Path(name).stem}-{method}-overlay.png",
                      mime="image/png", icon=":material/download:", width="stretch")

# ---------------------------------------------------------------------------------- faithfulness
st.subheader("Does the heatmap matter to the model?")
score = resources.faithfulness(run.id, path, modified, image_hash, image, result["cam"], method, layer, threshold)
cls = score["explained"].upper()
fig = go.Figure(go.Bar(
    x=[score["drop"], score["random_drop"]], y=["10 % most highlighted pixels", "10 % random pixels"], orientation="h",
    marker_color=[charts.VAL_COLOUR, "gray"], text=[f"{score['drop']:+.3f}", f"{score['random_drop']:+.3f}"],
    textposition="auto"))
fig.update_layout(height=200, margin=dict(l=10, r=10, t=30, b=10),
                  title=f"Drop in P({cls}) when these pixels are blurred out", xaxis_title="probability drop")
text, chart = st.columns([2, 3])
with text:
    verdict = ("The model relies on the highlighted region more than on random pixels."
               if score["drop"] > score["random_drop"] + 0.02 else
               "Blurring the highlighted region changes the prediction no more than random pixels: "
               "read this heatmap with care.")
    st.markdown(f"P(pneumonia) goes from **{score['probability_before']:.3f}** to **{score['probability_after']:.3f}** "
                f"when the top {score['fraction']:.0%} of the heatmap is blurred out. {verdict}")
    st.caption("A deletion test in the spirit of ROAR (Hooker et al. 2019) and ROAD (Rong et al. 2022), without retraining.")
with chart:
    charts.chart(fig, key="faithfulness")
