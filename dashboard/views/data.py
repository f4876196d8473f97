"""Data: choose the image source, check it (counts, patients, sizes, problems), see samples, augmentation and preprocessing."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.config import AugmentConfig
from core.data.datasets import CLASS_NAMES, DatasetError, download_kaggle, patient_overlap
from core.data.decode import ImageLoadError
from core.data.images import image_size_spread, load_image, prepared_pixels, read_image, unreadable_files
from core.data.preprocess import Preprocessing
from core.data.splits import MANIFEST_NAME, folder_changes, read_manifest
from dashboard import charts, resources, state

SOURCES = {"sample": "Real sample (bundled)", "demo": "Built-in demo (synthetic)", "folder": "Local folder",
           "kaggle": "Kaggle download"}

st.title("Data")
st.caption("Where the X-rays come from, what is in the set, and how training will augment them.")

source = st.radio("Source", list(SOURCES), key="cfg.data.source", format_func=SOURCES.get, horizontal=True)

root: str | None = None
sample = resources.sample_check()
if source == "sample":
    from core.data.sample import SAMPLE_CHANGES, SAMPLE_CITATION, SAMPLE_LICENCE, sample_root

    if sample.problem:
        st.error(f"{sample.summary()}. Restore it with `git checkout -- sample/`; until then the synthetic demo set "
                 "is shown and used instead.", icon=":material/error:")
        source = "demo"
    else:
        st.info(f"**Real chest X-rays**: a small sample of the Kaggle *Chest X-Ray Images (Pneumonia)* set, bundled "
                f"with the app — official test films and a training subset, {SAMPLE_CHANGES}.  \n"
                f"{SAMPLE_CITATION}  \nLicence: {SAMPLE_LICENCE}.", icon=":material/radiology:")
        if not sample.ok:
            st.warning(sample.summary(), icon=":material/broken_image:")
        root = str(sample_root())
elif sample.problem and source == "demo":
    st.caption(f":material/error: {sample.summary()}; the synthetic set is shown instead.")
if source == "demo":
    st.info(f"{state.SYNTHETIC_BADGE} The built-in demo set is **synthetic**: generated chest-radiograph-like "
            "images, not real X-rays. It lets the app and its tests run offline; its numbers say nothing "
            "about real pneumonia.", icon=":material/science:")
    root = resources.demo_dataset_root(int(st.session_state.get("cfg.data.demo_images_per_class", 120)))
elif source == "folder":
    st.text_input("Data set folder", key="cfg.data.path", placeholder="/path/to/chest_xray",
                  help="The Kaggle layout {train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg, or one folder per class.")
    root = (st.session_state.get("cfg.data.path") or "").strip() or None
    if not root:
        st.info("Enter the folder that holds the X-rays, e.g. `…/chest_xray` with `train/`, `val/` and "
                "`test/` inside, or a folder with `NORMAL/` and `PNEUMONIA/` sub-folders.")
elif source == "kaggle":
    st.markdown("The Kaggle set *Chest X-Ray Images (Pneumonia)* (about 1.2 GB, 5,856 images) is fetched with "
                "`kagglehub`, which needs Kaggle credentials and internet access.")
    if st.button("Download or locate the Kaggle set", icon=":material/download:"):
        bar = st.progress(0.0, text="Connecting to Kaggle…")
        steps = []

        def report(message: str) -> None:
            steps.append(message)
            bar.progress(min(0.3 * len(steps), 0.9), text=message)

        try:
            st.session_state["cfg.data.path"] = str(download_kaggle(progress=report))
            bar.progress(1.0, text="Data set ready")
        except DatasetError as exc:
            bar.empty()
            st.error(str(exc), icon=":material/error:")
    root = (st.session_state.get("cfg.data.path") or "").strip() or None
    if not root:
        st.info("Not downloaded yet. Training with this source downloads it first.")

if not root:
    st.stop()

try:
    index = resources.dataset_index(root, resources.folder_mtime(root))
except DatasetError as exc:
    st.error(str(exc), icon=":material/error:")
    st.stop()

# ---------------------------------------------------------------------------------- overview
counts = index.counts()
total = len(index.records)
cols = st.columns(4)
cols[0].metric("Images", f"{total:,}")
cols[1].metric("Patients", f"{index.patients():,}")
cols[2].metric("Pneumonia : normal", f"{sum(c['PNEUMONIA'] for c in counts.values()) / max(1, sum(c['NORMAL'] for c in counts.values())):.2f} : 1")
cols[3].metric("Problems found", len(index.problems))
st.caption(f"Folder `{state.short_path(index.root)}` · layout: {index.layout.replace('_', ' ')}")

left, right = st.columns([2, 3])
with left:
    st.subheader("Images per split and class")
    table = pd.DataFrame(
        [{"split": split, **row, "total": sum(row.values()), "patients": index.patients(split)}
         for split, row in counts.items()]
    ).set_index("split")
    st.dataframe(table, width="stretch")
    if index.layout == "class_folders":
        st.caption("No split folders: validation and test are carved out by patient when training.")
    st.markdown("**Image sizes** (a sample per split, read from file headers)")
    spreads = {split: image_size_spread([r.path for r in index.split(split)]) for split in index.splits}
    for split, spread in spreads.items():
        st.caption(f"{split}: {spread['summary']}")
    if any(spread["widths"] for spread in spreads.values()):
        sizes = go.Figure([go.Scatter(x=spread["widths"], y=spread["heights"], mode="markers", name=split,
                                      marker=dict(size=5, opacity=0.6))
                           for split, spread in spreads.items() if spread["widths"]])
        sizes.update_layout(height=260, margin=dict(l=10, r=10, t=10, b=10), xaxis_title="width (px)",
                            yaxis_title="height (px)", legend=dict(orientation="h", y=1.12))
        charts.chart(sizes)
with right:
    fig = go.Figure([
        go.Bar(name=name, x=list(counts), y=[counts[split][name] for split in counts], text=[counts[split][name] for split in counts])
        for name in CLASS_NAMES
    ])
    fig.update_layout(barmode="group", height=300, margin=dict(l=10, r=10, t=10, b=10),
                      yaxis_title="images", legend=dict(orientation="h", y=1.1))
    charts.chart(fig)

if index.problems:
    with st.expander(f":material/warning: {len(index.problems)} problem(s) found — stray or non-image files, empty "
                     "folders, duplicates", expanded=len(index.problems) <= 5):
        for line in index.problems[:200]:
            st.markdown(f"- {line}")
        if len(index.problems) > 200:
            st.caption(f"… and {len(index.problems) - 200} more")
else:
    st.success("No problems found in the folder layout: every class folder has images, no byte-identical duplicates.",
               icon=":material/check_circle:")


@st.fragment
def decode_check(paths: list[str], key: str) -> None:
    """Decode every image once, as training will, and list the ones that fail (on request: it reads every file)."""
    if st.button(f"Check that all {len(paths):,} images decode", key=f"decode-{key}", icon=":material/fact_check:",
                 help="Reads and decodes every file (JPEG draft mode keeps it quick); truncated or damaged files are "
                      "listed here instead of being skipped during training."):
        bar = st.progress(0.0, text="Decoding…")
        st.session_state[f"unreadable-{key}"] = unreadable_files(
            paths, progress=lambda done, total: bar.progress(done / total, text=f"Decoded {done:,} of {total:,}"))
        bar.empty()
    bad = st.session_state.get(f"unreadable-{key}")
    if bad is None:
        return
    if not bad:
        st.success("Every image decodes.", icon=":material/check_circle:")
    else:
        st.error(f"{len(bad)} image(s) cannot be decoded; training skips them:", icon=":material/broken_image:")
        for path, reason in bad[:100]:
            st.markdown(f"- `{state.short_path(path)}`: {reason}")


decode_check([r.path for r in index.records], key=f"{index.root}-{len(index.records)}")

# ---------------------------------------------------------------------------------- patient ids
overlap = patient_overlap(index)
if overlap is not None:
    st.subheader("Patient ids in both train and test")
    if not overlap.shared:
        st.markdown(f"None of the {overlap.test_patients} test patient ids occurs in train.")
        if source == "sample":
            st.caption("The sample was built that way: no training film comes from a patient id of the official "
                       "test split. In the full Kaggle set, 170 of the 427 test patient ids also occur in train.")
    else:
        st.markdown(f"**{len(overlap.shared)} of the {overlap.test_patients} test patient ids also occur in train** "
                    "(computed from the file names here). "
                    + (f"For {'every one' if len(overlap.differing) == len(overlap.shared) else len(overlap.differing)}"
                       " of them the class or pneumonia type differs between the two splits, e.g. "
                       + "; ".join(f"`{p}` is {a} in train and {b} in test" for p, a, b in overlap.examples[:3])
                       + ". The file names follow different numbering schemes in train and test, so these are "
                       "probably not the same patients. " if overlap.differing else
                       "Their films may come from the same patients: read test figures with that in mind. ")
                    + "The official test split is kept as it is; validation is carved from train by patient.")
        with st.expander(f"The {len(overlap.shared)} shared ids"):
            st.write(", ".join(overlap.shared))

# ---------------------------------------------------------------------------------- saved splits
trained_here = resources.runs_with_saved_splits(state.store().list(), index.root)
if trained_here:
    st.subheader("Splits saved with runs")
    st.caption("Each run saves the exact list of images it trained, validated and was tested on (splits.json, "
               "with a content hash per file); it keeps using that list even if this folder changes.")
    by_id = {run.id: run for run in trained_here}
    chosen = by_id[st.selectbox("Run", list(by_id), format_func=lambda rid: charts.run_title(by_id[rid]),
                                key="data_splits_run")]
    saved = resources.saved_split_table(str(chosen.path), (chosen.path / MANIFEST_NAME).stat().st_mtime)
    st.dataframe(pd.DataFrame(saved["rows"]).set_index("split"), width="stretch")
    st.caption(saved["source"])
    if st.button("Compare this folder with the run's saved splits", icon=":material/difference:",
                 help="Reads every file and compares its sha256 with the saved one."):
        with st.spinner("Hashing the files…"):
            changes = folder_changes(read_manifest(chosen.path / MANIFEST_NAME))
        if not changes.any:
            st.success(f"Unchanged: {changes.summary()}.", icon=":material/check_circle:")
        else:
            st.warning(f"Changed: {changes.summary()}.", icon=":material/difference:")
            for what in ("missing", "changed", "added"):
                files = getattr(changes, what)
                if files:
                    st.markdown(f"**{what}** ({len(files)}): " + ", ".join(f"`{f}`" for f in files[:30])
                                + (" …" if len(files) > 30 else ""))

# ---------------------------------------------------------------------------------- samples
st.subheader("Samples")
sample_split = index.splits[0]
for label, name in enumerate(CLASS_NAMES):
    records = [r for r in index.split(sample_split) if r.label == label][:8]
    if not records:
        st.warning(f"No {name} images in the {sample_split} split.")
        continue
    st.markdown(f"**{name}** · {sample_split}" + (f" · {state.SYNTHETIC_BADGE}" if index.layout == "demo" else ""))
    grid = st.columns(8)
    for column, record in zip(grid, records):
        thumb = resources.thumbnail(record.path)
        if thumb is None:
            column.error("unreadable")
        else:
            column.image(thumb, caption=record.patient, width="stretch")

# ---------------------------------------------------------------------------------- augmentation
st.subheader("Augmentation preview")
st.caption("Training shows the network randomly altered copies of each X-ray. Move the sliders: the grid "
           "shows eight random draws of one image. These settings are used by the Train page.")


@st.fragment
def augmentation_preview(paths: list[str]) -> None:
    controls, grid = st.columns([1, 3])
    with controls:
        state.augmentation_controls()
        position = st.session_state.get("augment_image", 0) % len(paths)
        if st.button("Another image", icon=":material/refresh:"):
            position = (position + 1) % len(paths)
            st.session_state["augment_image"] = position
    cfg = AugmentConfig(**{field: st.session_state[f"cfg.augment.{field}"]
                           for field in AugmentConfig.__dataclass_fields__})
    try:
        image = load_image(paths[position], 192)[..., 0]
    except ImageLoadError as exc:
        grid.error(f"Cannot preview {paths[position]}: {exc}")
        return
    from core.data.augment import preview  # imports TensorFlow: only once the page is on screen

    with grid:
        versions = preview(image, cfg, n=8, seed=int(st.session_state.get("augment_seed", 0)))
        tiles = [(image.astype("uint8"), "original")] + [(v, f"random draw {i + 1}") for i, v in enumerate(versions)]
        for start in range(0, len(tiles), 3):
            for column, (tile, caption) in zip(st.columns(3), tiles[start:start + 3]):
                column.image(tile, caption=caption, width="stretch")
        if not cfg.active:
            st.caption("All augmentation is off: training sees the images as they are.")
        else:
            from core.data.augment import one_at_a_time  # heavy: Keras

            with st.expander("Each augmentation on its own"):
                for label, alone in one_at_a_time(cfg):
                    row = st.columns([1, 1, 1, 1, 1], vertical_alignment="center")
                    row[0].markdown(f"**{label}**")
                    for column, tile in zip(row[1:], preview(image, alone, n=4, seed=1)):
                        column.image(tile, width="stretch")


train_paths = [r.path for r in index.split(sample_split) if "::" not in r.path][:50]
if train_paths:
    augmentation_preview(train_paths)

# ---------------------------------------------------------------------------------- preprocessing
st.subheader("Preprocessing preview")
st.caption("Preprocessing removes what is not anatomy before the model sees a film: burnt-in markers (green), "
           "everything outside the body (the red box is kept), and each site's own brightness and contrast. "
           "Training, evaluation, Explain, Demo and the API all apply it. These settings are used by the Train page.")


@st.fragment
def preprocessing_preview(paths: list[str], films: int = 3) -> None:
    controls, grid = st.columns([1, 3])
    with controls:
        state.preprocessing_controls()
        first = st.session_state.get("prep_first", 0) % len(paths)
        if st.button("Other films", icon=":material/refresh:", key="prep_next"):
            first = (first + films) % len(paths)
            st.session_state["prep_first"] = first
    settings = Preprocessing(st.session_state["cfg.data.field_of_view"], st.session_state["cfg.data.remove_markers"],
                             st.session_state["cfg.data.intensity"])
    size, mode = st.session_state["cfg.data.image_size"], st.session_state["cfg.data.resize_mode"]
    with grid:
        if not settings.active:
            st.caption("All preprocessing is off: the model sees each film as decoded and resized "
                       f"({size} px, {mode}).")
        for path in [paths[(first + i) % len(paths)] for i in range(min(films, len(paths)))]:
            try:
                film = read_image(path, draft_size=size)  # the same decode as the model's, so the boxes fit it
                prepared = prepared_pixels(path, size, mode, preprocessing=settings)
            except ImageLoadError as exc:
                st.error(f"Cannot preview {path}: {exc}")
                continue
            before, after = st.columns(2)
            before.image(charts.outlined(film, prepared), caption=f"before · {Path(path).name}", width="stretch")
            after.image(prepared.pixels, caption=f"after · what the model sees ({size} px, {mode})", width="stretch")
            if prepared.notes:
                st.caption(" · ".join(prepared.notes))


if train_paths:
    preprocessing_preview(train_paths)

# ---------------------------------------------------------------------------------- shift against a run
from dashboard.views import shift as shift_section  # noqa: E402  (the section's own imports wait until here)

shift_section.render()
