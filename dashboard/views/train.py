"""Train: presets and settings (backbone, unfreeze depth with its layer table, schedule), start / stop, live curves.

Training runs in its own process (``python -m core.train`` through ``core.store.runs``); this page only
reads the run folder, so a refresh, a second tab or a dashboard restart shows the same run.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from core.config import PRESETS, ConfigError, RunConfig, preset
from core.config.backend import BACKENDS, DEFAULT_BACKEND
from core.config.catalog import THRESHOLD_LABELS
from core.evaluation.ensemble import member_ids
from core.jobs.ensemble import create_seed_ensemble
from core.jobs.sweep import list_sweeps
from core.store.files import latest_epochs
from core.store.runs import Run, RunError
from core.training.estimate import estimate_in_subprocess
from dashboard import charts, resources, state

IMAGE_SIZES = [32, 48, 64, 96, 128, 160, 192, 224, 256, 299, 320, 384, 448, 512]
BATCH_SIZES = [4, 8, 16, 32, 64, 128, 256]

st.title("Train")
st.caption("Pick a preset or tune the settings, start training, and watch it learn. Training runs in a "
           "separate process: you can refresh, open a second tab or restart the dashboard without losing it.")


# ---------------------------------------------------------------------------------- live run
def _focus_run() -> Run | None:
    """The run to show live: an active one first, else the one this session started last, else the newest."""
    runs = state.store().list()
    active = [run for run in runs if run.status().active]
    mine = st.session_state.get("train_run_id")
    for run in active:
        if run.id == mine:
            return run
    if active:
        return active[0]
    # After a restart or in a new tab: the run this session started, else the newest run in the store.
    return state.run_or_none(mine) or (runs[0] if runs else None)


BACKEND_HELP = ("The training process runs Keras on this backend (config train.backend). On a CPU, JAX's XLA runs "
                "EfficientNet-Lite's depthwise convolutions far slower than TensorFlow (docs/scaling.md). Whatever "
                "the backend, this dashboard (TensorFlow) opens, explains and exports the trained model.")


def _run_backend(run: Run) -> str | None:
    try:
        return run.config().train.backend
    except Exception:  # noqa: BLE001 - a missing or hand-edited config.json: the plan alone is shown
        return None


def live_panel(run: Run) -> None:
    status = run.status()
    # Poll only while the run is active; a finished run is drawn once and left alone.
    interval = 2.0 if status.active else None

    @st.fragment(run_every=interval)
    def body() -> None:
        status = run.status()
        was_active = st.session_state.get("_live_active", {}).get(run.id)
        st.session_state.setdefault("_live_active", {})[run.id] = status.active
        if was_active and not status.active:
            st.rerun()  # the run just ended: redraw the page once, without the timer
        with st.container(border=True):
            head, buttons = st.columns([3, 2])
            head.markdown(f"### {charts.run_title(run)} {charts.state_badge(status.state)}")
            head.caption(f"Run `{run.id}`"
                         + (f" · {state.data_label(run.config())}" if (run.path / 'config.json').exists() else ""))
            with buttons:
                if status.active:
                    if run.stop_requested():
                        st.info("Stop requested: it ends after the current batch.", icon=":material/hourglass_top:")
                        if st.button("Force stop", key=f"kill-{run.id}", help="Terminate the training process now."):
                            try:
                                run.kill()
                            except RunError as exc:
                                st.error(str(exc))
                    elif st.button("Stop", key=f"stop-{run.id}", icon=":material/stop_circle:", type="secondary",
                                   help="Stop after the current batch; the best checkpoint is kept."):
                        run.request_stop()
                        st.rerun(scope="fragment")
                elif status.state == "finished":
                    if st.button("Evaluate this run", key=f"eval-{run.id}", icon=":material/monitoring:", type="primary"):
                        st.session_state["run_id"] = run.id
                        st.switch_page(state.PAGES["evaluate"])
                elif status.state in ("interrupted", "stopped"):
                    if st.button("Resume", key=f"resume-{run.id}", icon=":material/play_arrow:",
                                 help="Continue from the last completed epoch.",
                                 disabled=any(r.status().active for r in state.store().list())):
                        try:
                            run.launch(resume=True)
                        except RunError as exc:
                            st.error(str(exc))
                        st.rerun()
            st.progress(min(max(status.progress, 0.0), 1.0),
                        text=status.message or status.state)
            cols = st.columns(5)
            cols[0].metric("Epoch", f"{status.epoch} / {status.epochs_total or '?'}")
            phase = {"head": "head (base frozen)", "finetune": "fine-tune", "threshold": "threshold",
                     "evaluate": "test evaluation"}.get(status.phase, status.phase or "—")
            cols[1].metric("Phase", "done" if status.state == "finished" else phase)
            cols[2].metric("Images / s", f"{status.images_per_sec:.0f}" if status.images_per_sec else "—")
            cols[3].metric("Time left", charts.duration(status.eta_seconds) if status.active else "—")
            cols[4].metric("Best val AUC", charts.num(status.best_val_auc))
            st.markdown(charts.device_text(status.device or run.read_json("plan.json") or {}, _run_backend(run)))
            if status.state == "failed":
                st.error(f"Training failed: {status.error or 'no reason recorded'}", icon=":material/error:")
                with st.expander("Training log (last lines)"):
                    st.code(run.log_tail(30) or "(empty)", language=None)
            elif status.state == "interrupted":
                st.warning(status.message, icon=":material/warning:")
            elif status.state == "stopped":
                st.info(status.message or "Stopped by request.", icon=":material/stop_circle:")
            elif status.state == "finished" and not run.metrics() and not run.config().train.evaluate_test:
                st.success("Finished. Not evaluated on test: a sweep member, compared on validation on the Sweep page.",
                           icon=":material/check_circle:")
            elif status.state == "finished":
                metrics = run.metrics() or {}
                st.success(f"Finished. Test set: sensitivity {charts.pct(metrics.get('sensitivity'))}, "
                           f"specificity {charts.pct(metrics.get('specificity'))}, ROC AUC {charts.num(metrics.get('roc_auc'))}.",
                           icon=":material/check_circle:")
            members = member_ids(run)
            if members:
                rows = [{"member": charts.run_title(m), "state": m.status().state,
                         "epoch": f"{m.status().epoch} / {m.status().epochs_total or '?'}",
                         "best val AUC": m.status().best_val_auc} for m in map(state.run_or_none, members) if m]
                st.caption(f":material/stacks: An ensemble of {len(members)} runs, trained one after another:")
                st.dataframe(rows, hide_index=True, width="stretch")
            history = resources.history_rows(run)  # only the lines appended since the last refresh are parsed
            phases = [row for row in history if row.get("type") == "phase" and row.get("note")]
            if phases:
                st.caption(" · ".join(f"**{row['phase']}**: {row['note']}" for row in phases))
            for row in history:
                if row.get("type") == "phase_rejected":  # core.training.fit.kept_phase: a collapsed last phase
                    st.warning(f"Model kept from the **{row['kept']}** phase: {row['reason']}.",
                               icon=":material/undo:")
            epochs = latest_epochs(history)
            steps = resources.thin([row for row in history if row.get("type") == "step"]) if status.active else None
            if epochs or steps:
                charts.chart(charts.training_curves(epochs, steps), key=f"curves-{run.id}")
            elif status.active:
                st.caption("Curves appear after the first epoch.")

    body()


focus = _focus_run()
if focus is not None:
    live_panel(focus)

any_active = (any(run.status().active for run in state.store().list())  # a sweep between two members is busy too
              or any(sweep.status().active for sweep in list_sweeps(state.store())))

# ---------------------------------------------------------------------------------- presets
def _use_preset(name: str) -> None:
    """Apply a preset's settings, keeping a real data folder the user picked on the Data page and the Keras backend."""
    chosen = {key: st.session_state.get(key) for key in ("cfg.data.source", "cfg.data.path")}
    backend = st.session_state.get("cfg.train.backend")
    state.apply_config(preset(name))
    if chosen["cfg.data.source"] in ("folder", "kaggle") and chosen["cfg.data.path"]:
        st.session_state.update(chosen)
    if backend in BACKENDS:  # the backend is this machine's choice, not the recipe's
        st.session_state["cfg.train.backend"] = backend
    st.session_state["preset"] = name


PRESET_TEXT = {
    "Quick real-sample demo": "EfficientNet-Lite0 with ImageNet weights on the bundled real X-rays at 224 px: a head on "
    "cached frozen features, then a short fine-tune from block 6. About a minute on two CPU cores.",
    "Quick CPU demo": "A small CNN trained from scratch on the synthetic demo set at 64 px. About a minute on a laptop CPU.",
    "Reference recipe (VGG16, GPU recommended)": "VGG16 with ImageNet weights on the Kaggle set at 224 px: head for 10 epochs, "
    "then fine-tune from block 3 at a low learning rate. Needs the weights file and the data set; hours on a CPU.",
}


@st.cache_data(show_spinner=False, max_entries=32)
def estimate(config_json: str) -> dict:
    """A one-batch probe of the settings, in its own process: nothing trains, downloads or changes Keras here."""
    return estimate_in_subprocess(RunConfig.from_json(config_json), steps=1)


def show_estimate(config: RunConfig, key: str) -> None:
    known = st.session_state.setdefault("estimates", {})
    text = config.to_json()
    if text in known:
        result = known[text]
        if "error" in result:
            st.error(result["error"])
        else:
            per_epoch = ", ".join(f"{name} {charts.duration(sec)}" for name, sec in result["seconds_per_epoch"].items())
            backend = (result.get("device") or {}).get("backend") or config.train.backend
            st.markdown(f":material/timer: **about {charts.duration(result['total_seconds'])}** on this machine "
                        f"with {charts.backend_label(backend)} ({per_epoch} per epoch)")
            st.caption(result["note"])
    if st.button("Measure on this machine" if text not in known else "Measure again", key=key, icon=":material/timer:",
                 help="Builds the model and times one training batch per phase (a few seconds; longer for big backbones)."):
        with st.spinner("Timing one batch…"):
            try:
                estimate.clear() if text in known else None
                known[text] = estimate(text)
            except (ConfigError, RuntimeError) as exc:  # EstimateError is a RuntimeError
                known[text] = {"error": f"Could not measure: {exc}"}
        st.rerun()


st.subheader("Presets")
preset_columns = st.columns(len(PRESETS))
for column, name in zip(preset_columns, PRESETS):
    config = preset(name)
    with column.container(border=True):
        st.markdown(f"**{name}**" + (" · :orange-badge[synthetic data]" if state.is_synthetic(config) else ""))
        st.caption(PRESET_TEXT.get(name, ""))
        show_estimate(config, key=f"estimate-{name}")
        st.button("Use this preset", key=f"use-{name}", type="primary" if st.session_state.get("preset") == name else "secondary",
                  on_click=_use_preset, args=(name,))

# ---------------------------------------------------------------------------------- settings
st.subheader("Settings")
from core.config import BACKBONES, RESIZE_MODES  # noqa: E402


def _backbone_changed() -> None:
    spec = BACKBONES[st.session_state["cfg.model.backbone"]]
    st.session_state["cfg.model.alpha"] = spec.default_alpha
    block = st.session_state.get("cfg.model.unfreeze_from_block") or 1
    st.session_state["cfg.model.unfreeze_from_block"] = min(max(int(block), 1), len(spec.blocks))
    if not spec.pretrained and st.session_state.get("weights_choice") == "imagenet":
        st.session_state["weights_choice"] = "none"


spec = BACKBONES[st.session_state["cfg.model.backbone"]]
# Settings loaded from a preset or an old run may lie outside a widget's choices: bring them in.
if st.session_state.get("cfg.model.unfreeze_from_block") is None:
    st.session_state["cfg.model.unfreeze_from_block"] = len(spec.blocks)
if spec.alphas and st.session_state.get("cfg.model.alpha") not in spec.alphas:
    st.session_state["cfg.model.alpha"] = spec.default_alpha
IMAGE_SIZES = sorted(set(IMAGE_SIZES) | {int(st.session_state["cfg.data.image_size"])})
BATCH_SIZES = sorted(set(BATCH_SIZES) | {int(st.session_state["cfg.train.batch_size"])})

st.text_input("Run name", key="cfg.name", max_chars=60)
model_tab, data_tab, schedule_tab = st.tabs(["Model and unfreeze depth", "Data and augmentation", "Schedule"])

with model_tab:
    left, right = st.columns([2, 3])
    with left:
        st.selectbox("Backbone", list(BACKBONES), key="cfg.model.backbone", on_change=_backbone_changed,
                     format_func=lambda name: BACKBONES[name].label)
        if spec.notes:
            st.caption(spec.notes)
        if spec.alphas:
            st.selectbox("Width (alpha)", list(spec.alphas), key="cfg.model.alpha")
        weight_options = ["imagenet", "none", "file"] if spec.pretrained else ["none", "file"]
        if st.session_state.get("weights_choice") not in weight_options:
            st.session_state["weights_choice"] = "none"
        st.radio("Pretrained weights", weight_options, key="weights_choice", horizontal=True,
                 format_func={"imagenet": "ImageNet", "none": "none (from scratch)", "file": "local file"}.get)
        if st.session_state["weights_choice"] == "file":
            st.text_input("Weights file (.h5 / .keras)", key="weights_file", placeholder="/path/to/weights_notop.h5")
        elif st.session_state["weights_choice"] == "imagenet":
            from core.model.weights import imagenet_file_name, keras_cache_dir

            file_name = imagenet_file_name(spec, st.session_state.get("cfg.model.alpha"))
            if (keras_cache_dir() / file_name).is_file():
                st.caption(f":material/check_circle: `{file_name}` is in the Keras cache.")
            else:
                st.warning(f"`{file_name}` is not in the Keras cache (`{keras_cache_dir()}`): training will try to "
                           "download it. Offline, choose a local weights file or train from scratch.", icon=":material/inventory_2:")
        st.slider("Dropout before the classifier", 0.0, 0.8, step=0.05, key="cfg.model.dropout")
    with right:
        blocks = [label for label, _ in spec.blocks]
        if len(blocks) > 1:
            st.slider("Unfreeze from block (fine-tune phase)", 1, len(blocks), key="cfg.model.unfreeze_from_block",
                      help="Blocks below stay frozen; this block and everything above it train in the fine-tune phase.")
        block = int(st.session_state["cfg.model.unfreeze_from_block"])
        try:
            rows = resources.layer_rows(state.current_config().model)
        except (ConfigError, ValueError) as exc:
            st.error(str(exc))
            rows = []
        if rows:
            trainable = sum(row["trainable parameters"] for row in rows)
            total = sum(row["parameters"] for row in rows)
            st.markdown(f"Fine-tuning trains **{blocks[block - 1]} and above**: "
                        f"**{trainable:,}** of {total:,} parameters ({trainable / max(total, 1):.0%}). "
                        "The head phase trains only the classifier head.")
            table = pd.DataFrame(rows)
            st.dataframe(table, hide_index=True, width="stretch",
                         column_config={"parameters": st.column_config.NumberColumn(format="localized"),
                                        "trainable parameters": st.column_config.NumberColumn(format="localized")})

with data_tab:
    left, right = st.columns(2)
    with left:
        source = st.session_state.get("cfg.data.source", "demo")
        st.markdown(f"**Data:** {state.data_label(state.current_config())}"
                    + (f" {state.SYNTHETIC_BADGE}" if source == "demo" else ""))
        st.page_link(state.PAGES["data"], label="Change the data source on the Data page", icon=":material/dataset:")
        st.select_slider("Image size (px)", IMAGE_SIZES, key="cfg.data.image_size")
        st.radio("Resize", RESIZE_MODES, key="cfg.data.resize_mode", horizontal=True,
                 help="Stretch squashes the film to a square (its shape then shows as squeezed anatomy); letterbox "
                      "keeps the aspect ratio and pads with black (the bars carry the shape); center_square keeps "
                      "the centred square of the shorter side, as PneumoniaMNIST did.")
        st.markdown("**Preprocessing** (also on the Data page, with a preview)")
        state.preprocessing_controls()
        st.radio("Validation set", ["patient_split", "official"], key="cfg.data.validation", horizontal=True,
                 format_func={"patient_split": "carved from train by patient", "official": "the set's own val split"}.get)
        if st.session_state["cfg.data.validation"] == "patient_split":
            st.slider("Validation fraction", 0.05, 0.5, step=0.01, key="cfg.data.val_fraction")
        st.number_input("Cap train images per class (empty = all)", min_value=2, step=50,
                        key="cfg.data.max_images_per_class", help="A balanced subset for quick runs.")
    with right:
        st.markdown("**Augmentation** (also on the Data page, with a preview)")
        state.augmentation_controls(flip_help=False)

with schedule_tab:
    head_col, fine_col, other_col = st.columns(3)
    with head_col:
        st.markdown("**Phase 1 — head** (backbone frozen)")
        st.number_input("Epochs", 0, 1000, step=1, key="cfg.train.head.epochs", help="0 skips the phase.")
        st.number_input("Learning rate", 1e-7, 1.0, step=1e-4, format="%.1e", key="cfg.train.head.learning_rate")
    with fine_col:
        st.markdown(f"**Phase 2 — fine-tune** (from {blocks[block - 1]} up)")
        st.number_input("Epochs", 0, 1000, step=1, key="cfg.train.finetune.epochs", help="0 skips the phase.")
        st.number_input("Learning rate", 1e-7, 1.0, step=1e-5, format="%.1e", key="cfg.train.finetune.learning_rate")
    with other_col:
        st.select_slider("Batch size", BATCH_SIZES, key="cfg.train.batch_size")
        st.radio("Class weights", ["balanced", "none"], key="cfg.train.class_weight", horizontal=True,
                 help="Balanced weights make the rarer class count as much as the common one.")
        st.radio("Best epoch by", ["val_loss", "val_exact_auc"], key="cfg.train.monitor", horizontal=True,
                 format_func={"val_loss": "validation loss", "val_exact_auc": "validation ROC AUC"}.get,
                 help="What each phase's best checkpoint and early stopping follow. The AUC is computed exactly "
                      "over every validation image (scikit-learn), not from Keras's 200-bin approximation.")
        st.number_input("Early stopping patience (epochs, 0 = off)", 0, 100, step=1,
                        key="cfg.train.early_stopping_patience",
                        help="Stop a phase when its best-epoch measure has not improved for this many epochs.")
    with st.expander("Threshold, backend, device and reproducibility"):
        a, b, c = st.columns(3)
        a.selectbox("Decision threshold chosen on validation by", list(THRESHOLD_LABELS), key="cfg.train.threshold_method",
                    format_func=THRESHOLD_LABELS.get,
                    help="Fixed before training and applied to the validation predictions at the end; the test split "
                         "never takes part. benchmarks/operating_point.py compares the rules across seeds.")
        if st.session_state["cfg.train.threshold_method"] == "sensitivity":
            a.slider("Target sensitivity", 0.5, 0.99, step=0.01, key="cfg.train.target_sensitivity")
        if st.session_state.get("cfg.train.backend") not in BACKENDS:  # a session from before the choice existed
            st.session_state["cfg.train.backend"] = DEFAULT_BACKEND
        b.selectbox("Keras backend", list(BACKENDS), key="cfg.train.backend", format_func=charts.backend_label,
                    help=BACKEND_HELP)
        b.caption("TensorFlow: the default, fastest on this CPU. JAX: the same model, for a GPU machine without "
                  "a CUDA TensorFlow. Multiworker needs TensorFlow.")
        b.selectbox("Device", ["auto", "cpu", "gpu", "mirrored", "multiworker"], key="cfg.train.device")
        b.selectbox("Precision", ["auto", "float32", "mixed_bfloat16", "mixed_float16"], key="cfg.train.precision")
        c.selectbox("XLA compile", ["auto", True, False], key="cfg.train.jit_compile",
                    format_func=lambda v: {"auto": "auto", True: "on", False: "off"}[v])
        c.number_input("Seed", 0, 2**31 - 1, step=1, key="cfg.train.seed")

# ---------------------------------------------------------------------------------- start
st.subheader("Start")
problem = None
try:
    config = state.current_config().validate()
except ConfigError as exc:
    config, problem = None, str(exc)

left, right = st.columns([3, 2])
with left:
    if problem:
        st.error(f"Fix this setting first — {problem}", icon=":material/pan_tool:")
    else:
        epochs = config.train.head.epochs + config.train.finetune.epochs
        st.markdown(f"**{BACKBONES[config.model.backbone].label}** at {config.data.image_size} px, "
                    f"weights *{config.model.weights}*, {epochs} epochs "
                    f"({config.train.head.epochs} head + {config.train.finetune.epochs} fine-tune), "
                    f"batch {config.train.batch_size}, data: {state.data_label(config)}. "
                    f"Keras backend: {charts.backend_label(config.train.backend)}.")
        show_estimate(config, key="estimate-current")
    st.page_link(state.PAGES["sweep"], label="Several unfreeze depths or augmentation strengths? Sweep them",
                 icon=":material/grid_view:")
with right:
    if any_active:
        st.info("A run is in progress. Stop it or wait for it to finish before starting another: "
                "two trainings would share this machine's cores.", icon=":material/hourglass_top:")
    how = st.radio("Train", ["one run", "3 seeds"], horizontal=True, key="train_how",
                   format_func={"one run": "one run", "3 seeds": "3 seeds → an ensemble"}.get,
                   help="3 seeds: three runs of these settings (seeds s, s+1, s+2, one shared validation split), "
                        "trained one after another, then an ensemble run that averages their logits and chooses its "
                        "own threshold on validation. Each member and the ensemble show up as runs.")
    if st.button("Start training", type="primary", icon=":material/rocket_launch:", disabled=bool(problem) or any_active, width="stretch"):
        try:
            if how == "3 seeds":
                run = create_seed_ensemble(state.store(), config, seeds=3)
            else:
                run = state.store().create(config)
            run.launch()
        except (ConfigError, RunError, OSError) as exc:
            st.error(f"Could not start: {exc}")
        else:
            st.session_state["train_run_id"] = run.id
            st.session_state.setdefault("_live_active", {})[run.id] = True
            st.rerun()
