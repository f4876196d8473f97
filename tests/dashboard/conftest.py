"""Run stores prepared by hand for the dashboard tests: finished, running and failed runs, and an empty store."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from run_helpers import wait_for

from core.config import preset
from core.store.runs import RunStore

REPO = Path(__file__).resolve().parents[2]

FAILED_ERROR = ("ImageNet weights for VGG16 are unavailable: vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 "
                "is not in the Keras cache (~/.keras/models) and the download failed (URLError: offline).")
EPOCH_METRICS = ("loss", "accuracy", "auc", "val_loss", "val_accuracy", "val_auc")


def _epochs(run, phases: list[str]) -> None:
    for epoch, phase in enumerate(phases, start=1):
        run.append_history({"type": "epoch", "phase": phase, "epoch": epoch,
                            **{name: 0.5 + 0.05 * epoch for name in EPOCH_METRICS}})


def make_finished_run(store: RunStore, demo_root: Path):
    """A finished small-CNN run: real model.keras, history over two phases, metrics.json on real demo files."""
    import keras  # noqa: F401  (TensorFlow only for the prepared model)

    from core.evaluation.metrics import compute_metrics
    from core.model.classifier import build_classifier

    config = preset("Quick CPU demo").with_overrides(**{"name": "finished-demo", "train.head.epochs": 1,
                                                         "train.finetune.epochs": 2})
    run = store.create(config)
    build_classifier(config.model, config.data.image_size).save(run.model_path)
    for phase, note in (("head", "frozen layers computed once and cached: no augmentation in this phase"),
                        ("finetune", "training on images (augmentation is on in this phase)")):
        run.append_history({"type": "phase", "phase": phase, "note": note})
    _epochs(run, ["head", "finetune", "finetune"])
    files = sorted((demo_root / "test" / "NORMAL").glob("*.png"))[:10] + sorted((demo_root / "test" / "PNEUMONIA").glob("*.png"))[:10]
    labels = np.array([0] * 10 + [1] * 10)
    # Made-up but deterministic probabilities: mostly right, a few confident mistakes.
    prob = np.clip(np.where(labels == 1, 0.75, 0.25) + np.random.default_rng(0).normal(0, 0.2, 20), 0.01, 0.99)
    prob[0], prob[10] = 0.95, 0.1
    metrics = compute_metrics(labels, prob, 0.5)
    metrics.update({"threshold_info": {"threshold": 0.5, "method": "youden", "chosen_on": "validation (60 images)"},
                    "at_0.5": compute_metrics(labels, prob, 0.5), "n_patients": 20,
                    "ci": {"sensitivity": [0.6, 0.95], "specificity": [0.55, 0.9], "roc_auc": [0.7, 0.98],
                           "accuracy": [0.6, 0.9], "pr_auc": [0.7, 0.98]},
                    "predictions": [{"file": str(f), "label": int(y), "probability": float(p), "patient": f.stem,
                                     "subtype": None} for f, y, p in zip(files, labels, prob)]})
    run.write_json("metrics.json", metrics)
    run.write_json("threshold.json", {"threshold": 0.5, "method": "youden"})
    run.update_status(state="finished", epoch=3, epochs_total=3, progress=1.0, best_val_auc=0.65, phase="evaluate",
                      message="Finished", device={"strategy": "cpu", "replicas": 1, "gpus": 0, "precision": "float32",
                                                  "jit_compile": False, "reason": "device auto: no GPU found"})
    return run


def make_failed_run(store: RunStore):
    run = store.create(preset("Quick CPU demo").with_overrides(name="failed-vgg"))
    run.update_status(state="failed", error=FAILED_ERROR, message="Failed")
    return run


# A stand-in trainer: it owns status.json from here on and keeps its heartbeat fresh, as a trainer does.
STAND_IN = ("import sys, time; from core.store.runs import Run; from core.store.heartbeat import StatusWriter; "
            "StatusWriter(Run(sys.argv[1]), interval=1.0).start(); time.sleep(600)")


def make_running_run(store: RunStore):
    """A run trained by a sleeping stand-in process that writes the trainer's heartbeat."""
    run = store.create(preset("Quick CPU demo").with_overrides(name="running-demo"))
    run.update_status(state="running", phase="finetune", epoch=1, epochs_total=8, step=5,
                      steps_per_epoch=14, progress=0.18, images_per_sec=321.0, eta_seconds=95,
                      message="finetune: epoch 2/8, step 5/14",
                      device={"strategy": "cpu", "replicas": 1, "gpus": 0, "precision": "float32",
                              "jit_compile": False, "reason": "device auto: no GPU found"})
    _epochs(run, ["finetune"])
    proc = subprocess.Popen([sys.executable, "-c", STAND_IN, str(run.path)], cwd=REPO)
    wait_for_heartbeat(run, proc)
    return run, proc


def wait_for_heartbeat(run, proc: subprocess.Popen) -> None:
    """Until the stand-in ``proc`` owns ``run``'s status (its pid and heartbeat are written): without them the run
    would read as interrupted, and the pages would be tested on the wrong state. Fails when it exits or never does."""
    try:
        wait_for(lambda: run.raw_status().pid == proc.pid or proc.poll() is not None, 60,
                 what=f"the stand-in (pid {proc.pid}) to write {run.path.name}'s heartbeat")
        assert proc.poll() is None, f"the stand-in exited with code {proc.returncode} before writing the heartbeat"
    except AssertionError:
        proc.kill()  # not left sleeping behind a failed test
        proc.wait()
        raise


@pytest.fixture(scope="session")
def demo_root(cache_dir) -> Path:
    from core.data.demo import ensure_demo_dataset

    return ensure_demo_dataset(images_per_class=preset("Quick CPU demo").data.demo_images_per_class)


@pytest.fixture(scope="session")
def prepared_store(tmp_path_factory, demo_root):
    """A store with a finished, a failed and a running run (in that age order: running is newest)."""
    store = RunStore(tmp_path_factory.mktemp("runs"))
    finished = make_finished_run(store, demo_root)
    failed = make_failed_run(store)
    running, proc = make_running_run(store)
    yield {"store": store, "finished": finished, "failed": failed, "running": running, "failed_error": FAILED_ERROR}
    proc.kill()
    proc.wait()


@pytest.fixture
def runs_env(prepared_store, monkeypatch):
    monkeypatch.setenv("CXR_STUDIO_RUNS", str(prepared_store["store"].root))
    return prepared_store


@pytest.fixture
def finished_only_env(tmp_path, demo_root, monkeypatch):
    """A store of its own with just a finished run (for tests that change the store)."""
    store = RunStore(tmp_path / "runs")
    finished = make_finished_run(store, demo_root)
    failed = make_failed_run(store)
    monkeypatch.setenv("CXR_STUDIO_RUNS", str(store.root))
    return {"store": store, "finished": finished, "failed": failed, "failed_error": FAILED_ERROR}


@pytest.fixture
def empty_env(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("CXR_STUDIO_RUNS", str(tmp_path / "empty-store"))
    return tmp_path / "empty-store"
