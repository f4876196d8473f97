"""Demo: a clean, large view for clinicians — one X-ray, a probability gauge, an optional heatmap."""
from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from core.datasets import CLASS_NAMES
from core.images import ImageLoadError, load_image, read_image
from dashboard import charts, resources, state

st.title("Demo")
st.error("**For research and education only — this is not a diagnosis.** The model has not been validated "
         "for clinical use; never use it to guide patient care.", icon=":material/warning:")
run = state.pick_run()
if run is None:
    st.info("No trained model yet: train a run first.", icon=":material/stethoscope:")
    st.stop()

config = run.config()
threshold = run.threshold()
if state.is_synthetic(config):
    st.caption(f"{state.SYNTHETIC_BADGE} This model was trained on the **synthetic** demo set; "
               "its answers on real X-rays mean nothing.")

test_items = resources.run_test_images(run)
sources = (["Test images", "Upload"] if test_items else ["Upload"])
if st.session_state.get("demo_source") not in sources:
    st.session_state["demo_source"] = sources[0]
top = st.columns([2, 3, 1])
source = top[0].segmented_control("Image", sources, key="demo_source") or sources[0]
show_heatmap = top[2].toggle("Heatmap", key="demo_heatmap", help="Where the model looked (Grad-CAM).")

image_source, name, truth = b"", "", None  # a file, a MedMNIST reference or uploaded bytes
if source == "Test images":
    position = st.session_state.get("demo_index", 0) % len(test_items)
    with top[1]:
        back, where, forward = st.columns([1, 2, 1], vertical_alignment="center")
        if back.button("Previous", icon=":material/chevron_left:", key="demo_prev", help="Previous image", width="stretch"):
            position = (position - 1) % len(test_items)
        if forward.button("Next", icon=":material/chevron_right:", key="demo_next", help="Next image", width="stretch"):
            position = (position + 1) % len(test_items)
        st.session_state["demo_index"] = position
        where.markdown(f"<div style='text-align:center'>Image {position + 1} of {len(test_items)}</div>",
                       unsafe_allow_html=True)
    image_source, truth = test_items[position]
    name = Path(image_source).name
else:
    upload = top[1].file_uploader("X-ray", type=resources.UPLOAD_TYPES, key="demo_upload",
                                  label_visibility="collapsed",
                                  help="Processed in memory, never stored; DICOM patient tags are not shown.")
    if upload is None:
        st.info("Upload a frontal chest X-ray (JPEG, PNG or DICOM).", icon=":material/upload:")
        st.stop()
    image_source, name = upload.getvalue(), upload.name

try:
    image = load_image(image_source, config.data.image_size, config.data.resize_mode, filename=name)  # as evaluated
    gray = read_image(image_source, filename=name)  # full resolution, for the screen only
except ImageLoadError as exc:
    st.error(f"This file cannot be used: {exc}", icon=":material/error:")
    st.stop()

path, modified = resources.model_key(run)
result = resources.explain_image(run.id, path, modified, resources.digest(image.tobytes()), image, "gradcam", None, threshold)
probability = result["probability"]
pneumonia = probability >= threshold

picture_col, verdict = st.columns([1, 1], gap="large")
with picture_col:
    picture = resources.display_image(gray, config.data.image_size, config.data.resize_mode)
    if show_heatmap:
        from core.explain import overlay

        st.image(overlay(picture, result["cam"], 0.45), caption="Grad-CAM: warm colours mark what drove the answer",
                 width="stretch")
    else:
        st.image(picture, caption=name, width="stretch")
with verdict:
    gauge = go.Figure(go.Indicator(
        mode="gauge+number", value=100 * probability, number=dict(suffix=" %", font=dict(size=56)),
        title=dict(text="Probability of pneumonia", font=dict(size=20)),
        gauge=dict(
            axis=dict(range=[0, 100], ticksuffix=" %"),
            bar=dict(color="#C0392B" if pneumonia else "#2E86AB", thickness=0.3),
            steps=[dict(range=[0, 100 * threshold], color="rgba(46,134,171,0.18)"),
                   dict(range=[100 * threshold, 100], color="rgba(192,57,43,0.18)")],
            threshold=dict(line=dict(color="gray", width=4), thickness=0.9, value=100 * threshold),
        ),
    ))
    gauge.update_layout(height=300, margin=dict(l=40, r=50, t=60, b=10))
    charts.chart(gauge, key="gauge")
    if pneumonia:
        st.markdown("## :red[:material/circle:] Signs of pneumonia")
    else:
        st.markdown("## :blue[:material/circle:] No pneumonia detected")
    st.caption(f"Called pneumonia from {threshold:.0%} (the line on the gauge), a threshold chosen on validation data.")
    if truth is not None:
        agree = bool(truth) == pneumonia
        st.markdown(f"### True label: {CLASS_NAMES[truth]} "
                    + (":green[:material/check_circle:]" if agree else ":red[:material/cancel:]"))
        st.caption("The model " + ("agrees with the label." if agree else "disagrees with the label."))
    else:
        st.caption("True label: unknown (uploaded image).")
