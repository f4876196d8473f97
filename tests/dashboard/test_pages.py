"""Every dashboard page through streamlit.testing.v1.AppTest, against run stores prepared by hand."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.data.datasets import find_dataset
from core.data.decode import ImageLoadError, decode_image
from core.evaluation.metrics import compute_metrics

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")

TIMEOUT = 90


def open_page(page: str | None = None, **state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in state.items():
        at.session_state[key] = value
    if page:  # straight to the page (its file name is its URL path), without running Data first
        at.switch_page(f"views/{page}.py")
    at.run()
    assert at.title[0].value == (page or "data").capitalize()
    assert not at.exception, [e.message for e in at.exception]
    # Every page carries the medical notice in the sidebar.
    assert any("not for diagnosis" in w.value for w in at.sidebar.warning)
    return at


def texts(at: AppTest) -> str:
    """Everything a user reads on the page, as one string."""
    parts = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "error", "warning", "info", "success"):
        parts += [str(element.value) for element in getattr(at, kind)]
    parts += [f"{m.label}: {m.value}" for m in at.metric]
    return "\n".join(parts)


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def plotly_spec(at: AppTest, index: int = 0) -> dict:
    return json.loads(at.get("plotly_chart")[index].proto.spec)


# ---------------------------------------------------------------------------------- every page
@pytest.mark.parametrize("page", ["runs", "evaluate", "explain", "demo"])
def test_pages_explain_what_to_do_with_an_empty_store(page, empty_env):
    at = open_page(page)
    assert "Train" in texts(at)
    errors = [str(e.value) for e in at.error]
    if page == "demo":  # Demo's own banner is an st.error notice: that one, and no other error
        assert len(errors) == 1 and "this is not a diagnosis" in errors[0], errors
    else:
        assert not errors, errors


# ---------------------------------------------------------------------------------- Data
def test_data_page_shows_the_synthetic_demo_set(demo_root, empty_env):
    from core.config import preset

    at = open_page(**{"cfg.data.source": "demo",
                      "cfg.data.demo_images_per_class": preset("Quick CPU demo").data.demo_images_per_class})
    index = find_dataset(demo_root)
    assert "synthetic" in texts(at)
    assert metric(at, "Images") == f"{len(index.records):,}"
    assert metric(at, "Patients") == f"{index.patients():,}"
    assert metric(at, "Problems found") == "0"
    assert len(at.image) >= 16 + 9  # 8 samples per class, the original and 8 augmented copies


def test_data_page_shows_the_dataset_error_for_a_bad_folder(tmp_path, empty_env):
    at = open_page()
    at.radio(key="cfg.data.source").set_value("folder").run()
    missing = tmp_path / "no-such-folder"
    at.text_input(key="cfg.data.path").input(str(missing)).run()
    assert not at.exception
    assert any("folder not found" in e.value and str(missing) in e.value for e in at.error)


def test_data_page_reports_an_empty_class(tmp_path, empty_env):
    (tmp_path / "set" / "NORMAL").mkdir(parents=True)
    (tmp_path / "set" / "PNEUMONIA").mkdir(parents=True)
    from PIL import Image

    Image.new("L", (64, 64), 90).save(tmp_path / "set" / "NORMAL" / "a.png")
    at = open_page()
    at.radio(key="cfg.data.source").set_value("folder").run()
    at.text_input(key="cfg.data.path").input(str(tmp_path / "set")).run()
    assert any("only class NORMAL has images" in e.value for e in at.error)


def test_data_page_decodes_every_image_on_request_and_names_the_broken_ones(tmp_path, empty_env):
    from PIL import Image

    folder = tmp_path / "set"
    for cls, names in (("NORMAL", [f"IM-{k:04d}-0001.png" for k in range(6)]),
                       ("PNEUMONIA", [f"person{k}_virus_{k}.png" for k in range(6)])):
        (folder / cls).mkdir(parents=True)
        for k, name in enumerate(names):
            Image.new("L", (64, 64), 40 * k + (cls == "NORMAL")).save(folder / cls / name)
    broken = folder / "PNEUMONIA" / "person99_virus_1.png"
    broken.write_bytes((folder / "PNEUMONIA" / "person0_virus_0.png").read_bytes()[:60])  # truncated
    at = open_page()
    at.radio(key="cfg.data.source").set_value("folder").run()
    at.text_input(key="cfg.data.path").input(str(folder)).run()
    assert metric(at, "Problems found") == "0"  # a truncated file looks fine from the folder alone
    next(b for b in at.button if b.label.startswith("Check that all 13 images decode")).click().run()
    assert not at.exception
    assert any("1 image(s) cannot be decoded" in e.value for e in at.error)
    assert "person99_virus_1.png" in texts(at)


def test_data_page_compares_the_folder_with_a_runs_saved_splits(tmp_path, empty_env):
    from image_samples import touch_images

    from core.config import preset
    from core.store.runs import RunStore
    from core.data.splits import run_splits

    folder = tmp_path / "set"
    touch_images(folder / "NORMAL", [f"IM-{k:04d}-0001.png" for k in range(10)])
    touch_images(folder / "PNEUMONIA", [f"person{k}_virus_{k}.png" for k in range(10)])
    config = preset("Quick CPU demo").with_overrides(**{"data.source": "folder", "data.path": str(folder)})
    run = RunStore().create(config)
    saved = run_splits(config, run.path)
    changed = Path(saved.test[0].path)
    changed.write_bytes(changed.read_bytes() + b"edited")
    at = open_page(**{"cfg.data.source": "folder", "cfg.data.path": str(folder)})
    assert "Splits saved with runs" in texts(at)
    table = next(d.value for d in at.dataframe if "total" not in d.value.columns)  # the overview table has totals
    assert table.loc["test", "NORMAL"] + table.loc["test", "PNEUMONIA"] == len(saved.test)
    next(b for b in at.button if b.label.startswith("Compare this folder")).click().run()
    assert any("1 changed" in w.value for w in at.warning)
    assert changed.relative_to(folder).as_posix() in texts(at)


def test_augmentation_sliders_are_shared_with_the_train_page(empty_env):
    at = open_page()
    at.slider(key="cfg.augment.rotation_degrees").set_value(30.0).run()
    assert not at.exception
    at.switch_page("views/train.py").run()
    assert at.slider(key="cfg.augment.rotation_degrees").value == 30.0


def _image_captions(at: AppTest) -> list[str]:
    return [img.caption for element in at.image for img in element.proto.imgs]


def test_preprocessing_preview_shows_before_and_after_with_the_notes_and_shares_its_settings(empty_env):
    at = open_page()  # the session starts on the quick preset, which preprocesses
    assert "Preprocessing preview" in texts(at) and "All preprocessing is off" not in texts(at)
    befores = [c for c in _image_captions(at) if c.startswith("before · ")]
    assert len(befores) == 3 and len([c for c in _image_captions(at) if c.startswith("after · ")]) == 3
    notes = [str(c.value) for c in at.caption if "CLAHE applied" in str(c.value)]
    assert len(notes) == 3 and all("marker" in note and ("body" in note or "full film kept" in note) for note in notes)
    at.radio(key="cfg.data.field_of_view").set_value("full")
    at.checkbox(key="cfg.data.remove_markers").uncheck()
    at.radio(key="cfg.data.intensity").set_value("none").run()
    assert not at.exception, [e.message for e in at.exception]
    assert "All preprocessing is off" in texts(at)
    assert not [c for c in at.caption if "CLAHE applied" in str(c.value)]
    at.radio(key="cfg.data.intensity").set_value("window").run()
    assert "All preprocessing is off" not in texts(at)
    at.button(key="prep_next").click().run()
    assert not at.exception and set(_image_captions(at)).isdisjoint(befores)  # three other films
    at.switch_page("views/train.py").run()
    assert at.radio(key="cfg.data.intensity").value == "window" and not at.checkbox(key="cfg.data.remove_markers").value
    assert at.radio(key="cfg.data.field_of_view").value == "full"


# ---------------------------------------------------------------------------------- Train
def test_layer_table_follows_the_unfreeze_slider(empty_env):
    at = open_page("train")
    at.selectbox(key="cfg.model.backbone").set_value("vgg16").run()
    at.slider(key="cfg.model.unfreeze_from_block").set_value(4).run()
    table = at.dataframe[0].value
    trainable = dict(zip(table["block"], table["trainable"]))
    assert [trainable[f"block {i}"] for i in range(1, 6)] == ["no", "no", "no", "yes", "yes"]
    assert trainable["classifier head"] == "yes"
    at.slider(key="cfg.model.unfreeze_from_block").set_value(2).run()
    table = at.dataframe[0].value
    assert dict(zip(table["block"], table["trainable"]))["block 2"] == "yes"


def test_train_page_shows_a_bad_setting_before_start(empty_env):
    at = open_page("train")
    at.number_input(key="cfg.train.head.epochs").set_value(0).run()
    at.number_input(key="cfg.train.finetune.epochs").set_value(0).run()
    assert any("at least one phase needs epochs" in e.value for e in at.error)
    assert next(b for b in at.button if b.label == "Start training").disabled


def test_a_preset_keeps_the_real_data_folder_chosen_on_the_data_page(empty_env, tmp_path):
    at = open_page("train", **{"cfg.data.source": "folder", "cfg.data.path": str(tmp_path)})
    next(b for b in at.button if b.key == "use-Quick CPU demo").click().run()
    assert at.session_state["cfg.data.source"] == "folder"
    assert at.session_state["cfg.data.path"] == str(tmp_path)
    assert at.session_state["cfg.model.backbone"] == "small_cnn"


def test_start_creates_a_run_from_the_settings_and_launches_it(empty_env, monkeypatch):
    from core.store.runs import Run, RunStore

    launched = []
    monkeypatch.setattr(Run, "launch", lambda self, resume=False, env=None: launched.append(self.id) or 12345)
    at = open_page("train")
    at.number_input(key="cfg.train.finetune.epochs").set_value(2).run()
    next(b for b in at.button if b.label == "Start training").click().run()
    runs = RunStore().list()
    assert [run.id for run in runs] == launched
    assert runs[0].config().train.finetune.epochs == 2


def test_the_keras_backend_choice_is_saved_in_the_new_runs_config(empty_env, monkeypatch):
    from core.store.runs import Run, RunStore

    monkeypatch.setattr(Run, "launch", lambda self, resume=False, env=None: 12345)
    at = open_page("train")
    backend = at.selectbox(key="cfg.train.backend")
    assert backend.label == "Keras backend" and backend.value == "tensorflow" and backend.options == ["TensorFlow", "JAX"]
    assert "Multiworker needs TensorFlow" in texts(at) and "Keras backend: TensorFlow." in texts(at)
    backend.set_value("jax").run()
    assert "Keras backend: JAX." in texts(at)
    next(b for b in at.button if b.key == "use-Quick CPU demo").click().run()  # a preset keeps the machine's backend
    assert at.selectbox(key="cfg.train.backend").value == "jax"
    next(b for b in at.button if b.label == "Start training").click().run()
    (run,) = RunStore().list()
    assert run.config().train.backend == "jax"
    assert json.loads((run.path / "config.json").read_text())["train"]["backend"] == "jax"


def test_multiworker_on_jax_is_refused_before_start(empty_env):
    at = open_page("train")
    at.selectbox(key="cfg.train.backend").set_value("jax").run()
    at.selectbox(key="cfg.train.device").set_value("multiworker").run()
    (shown,) = [e.value for e in at.error if e.value.startswith("Fix this setting first")]
    assert "train.device" in shown and "needs the TensorFlow backend, not jax" in shown
    assert next(b for b in at.button if b.label == "Start training").disabled
    at.selectbox(key="cfg.train.backend").set_value("tensorflow").run()
    assert not any(e.value.startswith("Fix this setting first") for e in at.error)


def test_three_seeds_start_an_ensemble_of_three_members_sharing_one_split(empty_env, monkeypatch):
    from core.evaluation.ensemble import member_ids
    from core.store.runs import Run, RunStore

    launched = []
    monkeypatch.setattr(Run, "launch", lambda self, resume=False, env=None: launched.append(self.id) or 12345)
    at = open_page("train")
    at.number_input(key="cfg.train.seed").set_value(7).run()
    at.radio(key="train_how").set_value("3 seeds").run()
    next(b for b in at.button if b.label == "Start training").click().run()
    store = RunStore()
    ensemble = store.get(launched[0])  # only the ensemble is launched: it trains its members itself
    assert len(launched) == 1 and len(store.list()) == 4
    members = [store.get(m).config() for m in member_ids(ensemble)]
    assert [c.train.seed for c in members] == [7, 8, 9] and {c.split_seed for c in members} == {7}
    assert "ensemble of 3 runs" in texts(at)


def test_time_estimate_is_measured_in_its_own_process(empty_env, monkeypatch):
    """The page asks a ``python -m core.train --estimate`` process: it never trains or sets Keras's dtype policy itself."""
    import core.training.estimate

    asked = []

    def in_subprocess(config, steps=1, timeout=600):
        asked.append((config.name, steps))
        return {"total_seconds": 90.0, "seconds_per_epoch": {"finetune": 7.5}, "note": "measured on 1 batch of 32"}

    monkeypatch.setattr(core.training.estimate, "estimate_in_subprocess", in_subprocess)
    monkeypatch.setattr(core.training.estimate, "estimate_run_time", lambda *a, **k: pytest.fail("probed in the server's process"))
    at = open_page("train")
    next(b for b in at.button if b.label == "Measure on this machine").click().run()
    assert len(asked) == 1 and asked[0][1] == 1
    assert "on this machine" in texts(at) and "measured on 1 batch of 32" in texts(at)


def test_live_panel_shows_the_running_run_and_stops_it(runs_env):
    running = runs_env["running"]
    at = open_page("train")
    page = texts(at)
    assert "running-demo" in page and "finetune: epoch 2/8, step 5/14" in [p.proto.text for p in at.get("progress")][0]
    assert metric(at, "Images / s") == "321"
    assert "**Keras backend:** TensorFlow · **device:** CPU" in page and "Why: device auto: no GPU found" in page
    next(b for b in at.button if b.label == "Stop").click().run()
    assert running.stop_requested()
    running.stop_path.unlink()


def test_failed_run_error_is_shown_readably(runs_env):
    at2 = open_page("runs")
    at2.multiselect(key="runs_selected").set_value([runs_env["failed"].id]).run()
    errors = [e.value for e in at2.error]
    assert any(runs_env['failed_error'] in e for e in errors)
    assert not any("Traceback" in e for e in errors)


def test_live_panel_says_which_phases_were_cached(finished_only_env):
    at = open_page("train", train_run_id=finished_only_env["finished"].id)
    shown = texts(at)
    assert "**head**: frozen layers computed once and cached" in shown and "**finetune**: training on images" in shown


def test_live_panel_says_when_a_collapsed_fine_tune_gave_way_to_the_head(finished_only_env):
    from core.training.fit import kept_phase

    run = finished_only_env["finished"]
    rows = [{"type": "epoch", "phase": "head", "best": True, "val_auc": 0.97, "val_loss": 0.2},
            {"type": "epoch", "phase": "finetune", "best": True, "val_auc": 0.5, "val_loss": 0.66}]
    kept, reason = kept_phase(rows, ["head", "finetune"])
    before = open_page("train", train_run_id=run.id)
    assert not any("Model kept from" in w.value for w in before.warning)
    run.append_history({"type": "phase_rejected", "phase": "finetune", "kept": kept, "reason": reason})
    at = open_page("train", train_run_id=run.id)
    (shown,) = [w.value for w in at.warning if "Model kept from" in w.value]
    assert "**head** phase" in shown and "collapsed" in shown and "learning rate" in shown


def _jax_run(run) -> None:
    """Make ``run`` one trained on JAX: its config says so and its trainer's plan (plan.json, status.json) too."""
    run.write_json("config.json", run.config().with_overrides(**{"train.backend": "jax"}).to_dict())
    plan = {"strategy": "cpu", "replicas": 1, "gpus": 0, "precision": "float32", "jit_compile": True, "workers": 1,
            "backend": "jax", "gpu_names": [], "reason": "Keras on jax; device auto: no GPU found; precision auto: "
            "float32 on CPU (bf16 gains were measured on TensorFlow only); XLA on (JAX compiles every step)"}
    run.write_json("plan.json", plan)
    run.update_status(device=plan)


def test_live_panel_names_the_backend_and_why_its_device_was_chosen(finished_only_env):
    run = finished_only_env["finished"]
    _jax_run(run)
    at = open_page("train", train_run_id=run.id)
    shown = texts(at)
    assert "**Keras backend:** JAX · **device:** CPU · GPUs visible: 0 · precision float32 · XLA on" in shown
    assert "Why: Keras on jax; device auto: no GPU found" in shown and "XLA on (JAX compiles every step)" in shown
    run.update_status(device={})  # before the trainer has chosen (no plan yet): the backend from its config
    (run.path / "plan.json").unlink()
    assert "**Keras backend:** JAX · device not chosen yet" in texts(open_page("train", train_run_id=run.id))


def test_failed_run_in_the_live_panel(finished_only_env):
    at = open_page("train", train_run_id=finished_only_env["failed"].id)
    assert any(e.value == f"Training failed: {finished_only_env['failed_error']}" for e in at.error)


# ---------------------------------------------------------------------------------- Runs
def test_runs_page_lists_every_run_with_its_state(runs_env):
    at = open_page("runs")
    table = at.dataframe[0].value
    assert set(table["state"]) == {"finished", "running", "failed"}
    assert "Validation ROC AUC" in json.dumps(plotly_spec(at))
    labels = [b.label for b in at.get("download_button")]
    assert "Config (JSON)" in labels and "Download model" in labels


def test_runs_page_and_model_card_name_the_keras_backend(finished_only_env):
    from core.evaluation.report import model_card

    finished, failed = finished_only_env["finished"], finished_only_env["failed"]
    _jax_run(finished)
    at = open_page("runs")
    table = at.dataframe[0].value
    backends = dict(zip(table["id"], table["backend"]))
    assert backends == {finished.id: "jax", failed.id: "tensorflow"}
    card = model_card(finished)
    assert "- **Keras backend:** jax" in card
    assert "- **Device:** cpu (1 replica(s), 0 GPU(s)), precision float32, XLA on — Keras on jax;" in card
    assert "- **Keras backend:** tensorflow\n- **Device:** not recorded" in model_card(failed)  # no plan: the config's


def test_runs_page_deletes_a_run(finished_only_env):
    failed = finished_only_env["failed"]
    at = open_page("runs")
    at.multiselect(key="runs_selected").set_value([failed.id]).run()
    at.checkbox(key=f"confirm-{failed.id}").check().run()
    at.button(key=f"delete-{failed.id}").click().run()
    assert not failed.path.exists()
    assert len(at.dataframe[0].value) == 1


# ---------------------------------------------------------------------------------- Evaluate
def _expected(run, threshold):
    predictions = run.metrics()["predictions"]
    return compute_metrics([p["label"] for p in predictions], [p["probability"] for p in predictions], threshold)


def test_evaluate_shows_the_metrics_at_the_runs_threshold(runs_env):
    at = open_page("evaluate")
    expected = _expected(runs_env["finished"], 0.5)
    assert metric(at, "Sensitivity") == f"{100 * expected['sensitivity']:.1f} %"
    assert metric(at, "Specificity") == f"{100 * expected['specificity']:.1f} %"
    assert metric(at, "ROC AUC") == f"{expected['roc_auc']:.3f}"
    assert "synthetic" in texts(at)


def test_evaluate_says_which_test_images_were_skipped_and_why(finished_only_env):
    from core.data.splits import FolderChanges

    run = finished_only_env["finished"]
    metrics = run.metrics()
    why = "missing: in the run's saved test split, gone from the folder"
    metrics["skipped"] = [{"file": "/data/test/NORMAL/IM-0001-0001.png", "reason": why}]
    changes = FolderChanges(missing=["test/NORMAL/IM-0001-0001.png"], added=["test/NORMAL/new.png"], checked=("test",))
    metrics["splits"] = {"from": "splits.json", "note": None, "changes": changes.to_dict()}
    run.write_json("metrics.json", metrics)
    at = open_page("evaluate")
    assert any("1 missing, 1 added" in w.value for w in at.warning)
    skipped = next(d.value for d in at.dataframe if "why" in d.value.columns)
    assert skipped.to_dict("records") == [{"file": "IM-0001-0001.png", "why": why}]
    assert "test/NORMAL/new.png" in texts(at)


def test_threshold_slider_changes_the_confusion_matrix(runs_env):
    at = open_page("evaluate")
    before = plotly_spec(at, 0)["data"][0]["z"]
    at.slider(key=f"threshold-{runs_env['finished'].id}-validation").set_value(0.9).run()
    after = plotly_spec(at, 0)["data"][0]["z"]
    c = _expected(runs_env["finished"], 0.9)["confusion"]
    assert after == [[c["tn"], c["fp"]], [c["fn"], c["tp"]]]
    assert after != before
    assert f"TP {c['tp']}" in texts(at)


def test_most_confident_mistake_opens_in_explain(runs_env):
    at = open_page("evaluate")
    explain_buttons = [b for b in at.button if b.label == "Explain"]
    assert explain_buttons
    explain_buttons[0].click().run()
    assert at.title[0].value == "Explain"
    worst = runs_env["finished"].metrics()["predictions"][0]["file"]  # p = 0.95 for a NORMAL image
    assert at.selectbox(key="explain_pick").value == worst


# ---------------------------------------------------------------------------------- Explain
def test_explain_picks_a_test_image_and_shows_the_overlay(runs_env):
    at = open_page("explain")
    assert len(at.image) == 3
    assert metric(at, "True label") in ("NORMAL", "PNEUMONIA")
    assert metric(at, "P(pneumonia)").endswith("%")
    assert any(b.label == "Download overlay (PNG)" for b in at.get("download_button"))
    at.segmented_control(key="explain_method").set_value("gradcam++").run()
    assert not at.exception and len(at.image) == 3


def _upload(at: AppTest, name: str, data: bytes, key: str = "explain_upload") -> AppTest:
    at.segmented_control(key="explain_source").set_value("Upload an X-ray").run()
    at.file_uploader(key=key).upload(name, data, "image/png").run()
    return at


def test_explain_upload_png(runs_env, demo_root):
    png = next((demo_root / "test" / "PNEUMONIA").glob("*.png")).read_bytes()
    at = _upload(open_page("explain"), "xray.png", png)
    assert not at.exception and len(at.image) == 3
    assert metric(at, "True label") == "unknown"


def test_explain_corrupt_upload_shows_the_image_error(runs_env):
    bad = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40  # a PNG signature and nothing usable after it
    with pytest.raises(ImageLoadError) as expected:
        decode_image(bad, "broken.png")
    at = _upload(open_page("explain"), "broken.png", bad)
    assert not at.exception
    assert any(str(expected.value) in e.value for e in at.error)
    assert len(at.image) == 0


def test_explain_non_image_upload_shows_a_clear_message(runs_env):
    at = _upload(open_page("explain"), "notes.png", b"%PDF-1.4 this is a pdf")
    assert any("PDF" in e.value for e in at.error)


def test_dicom_patient_tags_are_never_displayed(runs_env, tmp_path):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.PatientName, ds.PatientID, ds.Modality = "Quixote^Zelda", "SECRET-12345", "CR"
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows = ds.Columns = 96
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.random.default_rng(0).integers(0, 4096, (96, 96)).astype("uint16")).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    at = _upload(open_page("explain"), "scan.dcm", buffer.getvalue())
    assert not at.exception and len(at.image) == 3
    page = texts(at) + "".join(str(i.proto) for i in at.image)
    assert "Zelda" not in page and "Quixote" not in page and "SECRET-12345" not in page


# ---------------------------------------------------------------------------------- Demo
def test_demo_shows_the_notice_and_steps_through_the_test_cases(runs_env):
    at = open_page("demo")
    assert any("not a diagnosis" in e.value for e in at.error)
    assert "Case 1 of 20" in texts(at)
    assert metric(at, "Probability of pneumonia").endswith("%")
    assert len(at.image) == 2 and "Grad-CAM" in at.image[1].proto.imgs[0].caption  # film and overlay side by side
    at.button(key="demo_next").click().run()
    assert "Case 2 of 20" in texts(at)
    at.button(key="demo_prev").click().run()
    at.button(key="demo_prev").click().run()
    assert "Case 20 of 20" in texts(at) and not at.exception


def test_a_run_with_preprocessing_is_explained_and_demoed_on_its_own_pixels(finished_only_env):
    run = finished_only_env["finished"]
    config = json.loads((run.path / "config.json").read_text())
    config["data"].update(field_of_view="body", remove_markers=True, intensity="clahe")
    (run.path / "config.json").write_text(json.dumps(config))
    at = open_page("explain")
    assert not at.exception and len(at.image) == 3
    notes = [str(c.value) for c in at.caption if str(c.value).startswith("This model's preprocessing")]
    assert len(notes) == 1 and "cropped to the body, CLAHE" in notes[0] and "CLAHE applied" in notes[0]
    at = open_page("demo")
    assert not at.exception and len(at.image) == 2 and "Case 1 of 20" in texts(at)


def test_reruns_keep_the_keras_session_and_matplotlib_is_still_cleaned(empty_env, monkeypatch):
    """Streamlit clears Keras's session after every run (a full gc.collect); the app keeps its cached models'
    session instead. The original cleanup's other duty, closing matplotlib figures, still happens."""
    import sys
    import types

    import keras
    from streamlit.runtime.scriptrunner import script_runner

    open_page("data")
    cleared, closed = [], []
    monkeypatch.setattr(keras.backend, "clear_session", lambda *a, **k: cleared.append(1))
    pyplot = types.SimpleNamespace(close=closed.append)  # matplotlib is not installed here: its stand-in
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", pyplot)
    script_runner._clean_problem_modules()
    assert cleared == [] and getattr(script_runner._clean_problem_modules, "keeps_keras", False)
    assert closed == ["all"]
