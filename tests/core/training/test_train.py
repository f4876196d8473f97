"""The trainer end to end: it learns, resumes after SIGKILL at any instant, runs under MirroredStrategy, fails readably."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from run_helpers import wait_for

from core.training.callbacks import CRASH_ENV, ExactValAUC, PhaseCheckpoints, committed_epoch, replay_monitor
from core.config import ConfigError, preset
from core.training.estimate import count_images, estimate_in_subprocess, estimate_run_time
from core.store.runs import RunStore
from core.jobs.run import _log_to_run, run_and_record
from core.training.fit import class_weights
from core.jobs.commands.train import config_from_args, main, parser

REPO = Path(__file__).resolve().parents[3]


def _two_phase_config(head: int = 2, finetune: int = 3, **more):
    """Both ways a phase fits: the head on cached frozen outputs (no augmentation), fine-tuning on augmented images."""
    return preset("Quick CPU demo").with_overrides(**{
        "name": "two-phase", "data.image_size": 32, "data.demo_images_per_class": 40,
        "train.head.epochs": head, "train.head.augment": False, "train.finetune.epochs": finetune,
        "train.batch_size": 4, "train.early_stopping_patience": 0, "train.progress_every_steps": 1, **more}).validate()


def test_balanced_class_weights_equalise_the_classes():
    labels = np.array([0] * 10 + [1] * 30)
    weights = class_weights(labels, "balanced")
    assert weights[0] * 10 == pytest.approx(weights[1] * 30)
    assert weights == pytest.approx({0: 40 / (2 * 10), 1: 40 / (2 * 30)})  # n / (classes · n_c)
    assert class_weights(labels, "none") is None
    assert class_weights(np.ones(5), "balanced") is None  # one class: nothing to balance


def test_the_monitored_quantity_is_validated_with_a_clear_message():
    assert preset("Quick CPU demo").train.monitor == "val_loss"
    with pytest.raises(ConfigError, match=r"train\.monitor: must be one of val_loss, val_exact_auc"):
        preset("Quick CPU demo").with_overrides(**{"train.monitor": "val_auc"}).validate()


def test_exact_val_auc_is_scikit_learns_auc_over_every_validation_image():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 3)).astype("float32")
    y = (x[:, 0] + rng.normal(0, 1.0, 37) > 0).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    callback = ExactValAUC(tf.data.Dataset.from_tensor_slices((x, y)).batch(8))
    callback.set_model(model)
    callback.on_train_begin()
    logs = {"val_loss": 0.5}
    callback.on_epoch_end(0, logs)
    expected = roc_auc_score(y, model.predict(x, verbose=0).ravel())
    assert logs["val_exact_auc"] == pytest.approx(expected, abs=1e-12) and logs["val_loss"] == 0.5


@pytest.mark.parametrize("values, mode", [([0.9, 0.7, 0.8, 0.8, 0.6, 0.65, 0.7], "min"),
                                          ([0.6, 0.8, 0.8, 0.7, 0.9, 0.85], "max")])
def test_early_stopping_resumes_with_the_best_and_wait_keras_itself_reaches(values, mode):
    """Replaying a phase's epochs gives EarlyStopping the same state it had before the kill."""
    stopper = keras.callbacks.EarlyStopping(monitor="val_q", mode=mode, patience=100)
    stopper.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    stopper.on_train_begin()
    for epoch, value in enumerate(values):
        stopper.on_epoch_end(epoch, {"val_q": value})
    assert replay_monitor(values, mode) == (stopper.best, stopper.wait)


def test_phase_checkpoints_keep_only_the_newest_committed_best(tmp_path):
    checkpoints = PhaseCheckpoints(tmp_path, "head")
    for epoch in (1, 3, 4):  # epoch 4's file is from an epoch killed before its backup committed it
        Path(checkpoints.pattern.format(epoch=epoch)).write_text("")
    assert checkpoints.best(committed=3).name == "head-003.keras"
    checkpoints.prune(committed=3)
    assert sorted(checkpoints.files()) == [3]


def test_resume_without_a_run_id_lists_the_resumable_runs_and_fails(tmp_path, capsys):
    store = RunStore(tmp_path)
    resumable = store.create(preset("Quick CPU demo").with_overrides(name="killed"))
    resumable.update_status(state="running", host="gpu-server-7", pid=1, heartbeat_at=time.time() - 3600)
    store.create(preset("Quick CPU demo").with_overrides(name="new"))
    assert main(["--resume", "--store", str(tmp_path)]) == 2
    out = capsys.readouterr()
    assert out.out.split() == [resumable.id, "interrupted", "epoch", "0/?"]
    assert "needs a run id" in out.err
    assert len(RunStore(tmp_path).list()) == 2, "no run was created"


def test_trainer_refuses_a_run_whose_heartbeat_is_fresh_on_another_host(tmp_path):
    run = RunStore(tmp_path).create(preset("Quick CPU demo"))
    run.update_status(state="running", host="gpu-server-7", pid=4242, heartbeat_at=time.time(), epoch=5)
    before = (run.path / "status.json").read_bytes()
    assert run_and_record(run, resume=True) == 3
    assert (run.path / "status.json").read_bytes() == before


def test_log_lines_reach_log_txt_once_when_stderr_already_goes_there(tmp_path):
    """A launched trainer's stderr is log.txt: no second handler may write the same lines there."""
    run = RunStore(tmp_path).create(preset("Quick CPU demo"))
    with open(run.log_path, "a") as stderr_like:
        root_handler = logging.StreamHandler(stderr_like)
        logging.getLogger().addHandler(root_handler)
        try:
            undo = _log_to_run(run)
            logging.getLogger("cxr_studio.train").info("epoch 1 (head): loss=0.5")
            undo()
        finally:
            logging.getLogger().removeHandler(root_handler)
    undo = _log_to_run(run)  # an in-process run with no such handler: the file handler writes it
    logging.getLogger("cxr_studio.train").info("epoch 2 (head): loss=0.4")
    undo()
    logging.getLogger("cxr_studio.train").info("epoch 3 (head): after the run")
    text = run.log_path.read_text()
    assert text.count("epoch 1 (head)") == 1 and text.count("epoch 2 (head)") == 1 and "epoch 3" not in text


def test_cli_flags_override_the_preset():
    args = parser().parse_args(["--preset", "Quick CPU demo", "--finetune-epochs", "2", "--image-size", "48",
                                 "--no-augment", "--data", "demo"])
    config = config_from_args(args)
    assert config.train.finetune.epochs == 2 and config.data.image_size == 48
    assert not config.augment.active and config.model.backbone == "small_cnn"


@pytest.mark.slow
def test_small_cnn_learns_the_synthetic_set(tmp_path, cache_dir):
    """Small CNN at 64 px on the synthetic set: test ROC AUC ≥ 0.95, threshold chosen on validation."""
    config = preset("Quick CPU demo")  # 64 px, 300 synthetic images per class, 12 epochs from scratch
    run = RunStore(tmp_path).create(config)
    assert run_and_record(run, resume=False) == 0, run.raw_status().error
    status = run.status()
    assert status.state == "finished"
    metrics = run.metrics()
    assert metrics["roc_auc"] >= 0.95, metrics["roc_auc"]
    assert metrics["sensitivity"] >= 0.8 and metrics["specificity"] >= 0.8
    threshold = json.loads((run.path / "threshold.json").read_text())
    assert threshold["chosen_on"].startswith("validation")
    epochs = run.epochs()
    assert len(epochs) >= 3 and all("val_auc" in row for row in epochs)
    assert run.history("step"), "per-step progress rows are written"
    assert any((run.path / "tensorboard").rglob("events.out.tfevents*"))


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(tmp_path, cache_dir):
    result = subprocess.run(
        [sys.executable, "-m", "core.train", "--preset", "Quick CPU demo", "--store", str(tmp_path),
         "--device", "mirrored", "--cpu-devices", "2", "--head-epochs", "1", "--finetune-epochs", "1",
         "--image-size", "32", "--no-augment", "--monitor", "val_exact_auc"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = RunStore(tmp_path).list()[0]
    status = run.status()
    assert status.state == "finished"
    assert status.device["strategy"] == "mirrored" and status.device["replicas"] == 2
    assert [row["phase"] for row in run.epochs()] == ["head", "finetune"]  # cached outputs, then images
    assert all(0 <= row["val_exact_auc"] <= 1 for row in run.epochs())


def test_bad_data_folder_fails_with_a_readable_message(tmp_path):
    config = preset("Quick CPU demo").with_overrides(**{"data.source": "folder", "data.path": str(tmp_path / "nope")})
    run = RunStore(tmp_path / "runs").create(config)
    assert run_and_record(run, resume=False) == 2
    status = run.status()
    assert status.state == "failed"
    assert "nope" in status.error and "Traceback" not in status.error


def test_offline_imagenet_weights_fail_the_run_readably(tmp_path, cache_dir):
    config = preset("Quick CPU demo").with_overrides(**{"model.backbone": "vgg16", "model.weights": "imagenet",
                                                         "data.image_size": 32})
    run = RunStore(tmp_path).create(config)
    assert run_and_record(run, resume=False) == 2
    error = run.status().error
    assert error.startswith("ImageNet weights for VGG16 are unavailable") or "vgg16" in error.lower(), error


def test_time_estimate_from_a_probe(cache_dir):
    config = preset("Quick CPU demo").with_overrides(**{"data.image_size": 48})
    estimate = estimate_run_time(config, n_train=320, n_val=32)
    assert estimate["total_seconds"] > 0
    assert set(estimate["seconds_per_epoch"]) == {"finetune"}
    # Whatever this machine's speed: a finite rate, scaled from the probe's batches to the run's 320 + 32 images.
    batch = config.train.batch_size
    rate, epoch = estimate["images_per_sec"]["finetune"], estimate["seconds_per_epoch"]["finetune"]
    assert 0 < rate < float("inf") and (estimate["train_images"], estimate["val_images"]) == (320, 32)
    assert epoch > -(-320 // batch) * batch / rate, "an epoch is its training batches at the probed rate, plus validation"
    assert estimate["total_seconds"] == pytest.approx(epoch * config.train.finetune.epochs)
    assert f"measured on 2 batches of {batch} per phase" in estimate["note"]


def test_time_estimate_counts_kaggle_without_downloading(monkeypatch):
    import core.data.splits

    def no_download(*args, **kwargs):
        raise AssertionError("the estimate must never download")

    monkeypatch.setattr(core.data.splits, "download_kaggle", no_download)
    config = preset("Reference recipe (VGG16, GPU recommended)").with_overrides(**{"data.max_images_per_class": 100})
    n_train, n_val, note = count_images(config)
    assert (n_train, n_val) == (200, 2 * 18) and "nothing is downloaded" in note


@pytest.mark.slow
def test_time_estimate_runs_in_its_own_process_and_leaves_the_callers_keras_alone(cache_dir):
    """VGG16 "with ImageNet weights" on the Kaggle set, neither of which is on this machine: the probe needs neither."""
    config = preset("Reference recipe (VGG16, GPU recommended)").with_overrides(**{
        "data.image_size": 32, "train.batch_size": 4, "train.precision": "mixed_bfloat16"})
    policy = keras.mixed_precision.dtype_policy().name
    estimate = estimate_in_subprocess(config, steps=1)
    assert estimate["total_seconds"] > 0 and set(estimate["seconds_per_epoch"]) == {"head", "finetune"}
    assert estimate["device"]["precision"] == "mixed_bfloat16" and "published size" in estimate["note"]
    assert keras.mixed_precision.dtype_policy().name == policy
    with pytest.raises(Exception, match="data.image_size"):
        estimate_in_subprocess(config.with_overrides(**{"data.image_size": 8}))


@pytest.mark.slow
def test_final_model_is_the_best_checkpoint_of_the_last_phase(tmp_path, cache_dir):
    """Checkpoints and early stopping follow val_loss within each phase; fine-tuning starts from the head's best,
    and model.keras is fine-tuning's own best (it does not have to beat the head)."""
    from core.model.classifier import load_model
    from core.data.pipeline import load_arrays
    from core.data.splits import run_splits

    # VGG16 has no BatchNorm, whose moving statistics would move even at a learning rate of ~0.
    config = _two_phase_config(head=6, finetune=2, **{
        "model.backbone": "vgg16", "model.weights": "none", "model.unfreeze_from_block": 5, "train.precision": "float32",
        "train.head.learning_rate": 0.3, "train.finetune.learning_rate": 1e-9, "train.early_stopping_patience": 1})
    run = RunStore(tmp_path).create(config)
    assert run_and_record(run, resume=False) == 0, run.raw_status().error
    rows = run.history("epoch")
    head = [row for row in rows if row["phase"] == "head"]
    finetune = [row for row in rows if row["phase"] == "finetune"]
    assert head[-1]["val_loss"] > min(row["val_loss"] for row in head) + 0.1, "the head's best is not its last epoch"
    # Patience 1 within the phase: the head stopped one epoch after its best; fine-tuning kept its own epochs.
    assert len(head) < 6 and head[-1]["stops_phase"] and not any(row["stops_phase"] for row in head[:-1])
    assert [row["epoch"] for row in finetune] == [7, 8]
    # At a learning rate of 1e-9 fine-tuning cannot move: its first epoch shows where it started.
    assert finetune[0]["val_loss"] == pytest.approx(min(row["val_loss"] for row in head), abs=1e-4)
    best = min(finetune, key=lambda row: row["val_loss"])
    assert [row["epoch"] for row in finetune if row["best"]][-1] == best["epoch"]
    x_val, y_val = load_arrays(run_splits(config, run.path).val, config.data.image_size, config.data.resize_mode)
    logits = load_model(run.model_path).predict(x_val, verbose=0).ravel().astype(np.float64)
    loss = float(np.mean(np.maximum(logits, 0) - logits * y_val + np.log1p(np.exp(-np.abs(logits)))))
    assert loss == pytest.approx(best["val_loss"], abs=1e-4)
    assert not (run.path / "backup").exists() and not (run.path / "checkpoints").exists()


def _best(phase: str, auc: float, loss: float) -> dict:
    return {"type": "epoch", "phase": phase, "best": True, "val_auc": auc, "val_loss": loss}


@pytest.mark.parametrize("finetune, kept", [
    (_best("finetune", 0.96, 0.30), "finetune"),  # worse than the head's best, but sound: kept on its own merits
    (_best("finetune", 0.50, 0.655), "head"),  # a constant output (seen on PneumoniaMNIST, every block at 1e-3)
    (_best("finetune", 0.62, 3778.9), "head"),  # worse than answering 0.5, and no better ranking
    (_best("finetune", 0.99, 0.90), "finetune"),  # miscalibrated but ranking better than the head: kept
    (_best("finetune", float("nan"), float("nan")), "head")])
def test_the_last_phase_is_kept_unless_it_collapsed(finetune, kept):
    from core.training.fit import kept_phase

    head = [_best("head", 0.80, 0.70), _best("head", 0.97, 0.20), {**_best("head", 0.4, 2.0), "best": False}]
    phase, reason = kept_phase(head + [finetune], ["head", "finetune"])
    assert phase == kept and (reason is None) == (kept == "finetune")
    if reason:
        assert "collapsed" in reason and "0.97" in reason and "learning rate" in reason
    # A head phase that never learnt either: nothing better to fall back to.
    assert kept_phase([_best("head", 0.5, 0.69), finetune], ["head", "finetune"])[0] == "finetune"
    assert kept_phase([finetune], ["finetune"]) == ("finetune", None) and kept_phase([], []) == (None, None)


def test_a_collapsed_fine_tune_gives_way_to_the_heads_best_model_and_says_so(tmp_path, cache_dir):
    from core.model.classifier import load_model
    from core.data.pipeline import load_arrays
    from core.data.splits import run_splits

    # VGG16's block 5 fine-tuned at 0.02 with Adam on cached block-4 outputs (no augmentation, so the phase is
    # deterministic like the head): one constant answer for every film, validation AUC 0.5 and loss 1.14.
    config = _two_phase_config(head=3, finetune=2, **{
        "model.backbone": "vgg16", "model.weights": "none", "model.unfreeze_from_block": 5,
        "train.precision": "float32", "train.head.learning_rate": 0.3, "train.finetune.learning_rate": 0.02,
        "train.finetune.augment": False})
    run = RunStore(tmp_path).create(config)
    assert run_and_record(run, resume=False) == 0, run.raw_status().error
    rows = run.history("epoch")
    head_best = min((row for row in rows if row["phase"] == "head"), key=lambda row: row["val_loss"])
    finetune_best = min((row for row in rows if row["phase"] == "finetune"), key=lambda row: row["val_loss"])
    assert finetune_best["val_loss"] > np.log(2) > head_best["val_loss"], "the fine-tune did not collapse"
    assert finetune_best["val_auc"] < head_best["val_auc"]
    (note,) = run.history("phase_rejected")
    assert note["phase"] == "finetune" and note["kept"] == "head" and "collapsed" in note["reason"]
    assert "the head phase's best model is kept" in run.log_path.read_text()
    x_val, y_val = load_arrays(run_splits(config, run.path).val, config.data.image_size, config.data.resize_mode)
    logits = load_model(run.model_path).predict(x_val, verbose=0).ravel().astype(np.float64)
    loss = float(np.mean(np.maximum(logits, 0) - logits * y_val + np.log1p(np.exp(-np.abs(logits)))))
    assert loss == pytest.approx(head_best["val_loss"], abs=1e-4)  # model.keras is the head's best checkpoint
    assert run.metrics() is not None and run.status().state == "finished"


@pytest.mark.slow
def test_resume_keeps_the_precision_of_the_first_start(tmp_path, cache_dir):
    """A run first started where "auto" chose bf16 (a GPU server, say) resumes in bf16 where "auto" says float32."""
    config = _two_phase_config(head=1, finetune=1, **{"train.monitor": "val_exact_auc"})
    run = RunStore(tmp_path).create(config)
    run.write_json("plan.json", {"strategy": "gpu", "replicas": 1, "gpus": 1, "precision": "mixed_bfloat16",
                                 "jit_compile": False, "reason": "precision auto: GPU compute capability 8.x"})
    run.update_status(state="stopped", epoch=0)
    assert run_and_record(run, resume=True) == 0, run.raw_status().error
    device = run.status().device
    assert device["precision"] == "mixed_bfloat16" and "kept from the run's first start" in device["reason"]
    assert keras.mixed_precision.dtype_policy().name == "float32", "the caller's policy is restored"
    rows = run.epochs()
    assert [row["phase"] for row in rows] == ["head", "finetune"] and all(0 <= row["val_exact_auc"] <= 1 for row in rows)


def _assert_each_epoch_once_and_the_optimizer_carried_on(run, phases: dict[str, tuple[int, int]]) -> list[dict]:
    """One history row per epoch, in order, and ``optimizer.iterations`` = epochs into the phase × steps."""
    rows = run.history("epoch")  # the raw rows: a repeated epoch would appear twice
    assert [row["epoch"] for row in rows] == list(range(1, max(end for _, end in phases.values()) + 1))
    for phase, (start, end) in phases.items():
        mine = [row for row in rows if row["phase"] == phase]
        steps = mine[0]["iterations"]
        assert [row["iterations"] for row in mine] == [steps * k for k in range(1, end - start + 1)], phase
    return rows


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_loses_and_repeats_no_epoch(tmp_path, cache_dir):
    """A real trainer (``python -m core.train --run-dir``, launched by the run store) gets SIGKILL from this test
    once fine-tuning's second epoch has begun; the resumed trainer goes on from the last committed epoch."""
    run = RunStore(tmp_path).create(_two_phase_config(head=2, finetune=3))
    pid = run.launch()
    wait_for(lambda: any(row["epoch"] == 4 for row in run.history("step")), 240, run)
    os.killpg(pid, signal.SIGKILL)
    killed_at = time.time()
    wait_for(lambda: run.status().state == "interrupted", 30, run)
    committed = committed_epoch(run.path / "backup" / "finetune")
    assert committed >= 3
    before = {row["epoch"]: row["time"] for row in run.history("epoch") if row["epoch"] <= committed}
    run.launch(resume=True)
    assert run.wait(timeout=300).state == "finished", run.log_tail()
    rows = _assert_each_epoch_once_and_the_optimizer_carried_on(run, {"head": (0, 2), "finetune": (2, 5)})
    for row in rows:
        if row["epoch"] <= committed:
            assert row["time"] == before[row["epoch"]], f"epoch {row['epoch']} was trained again"
        else:
            assert row["time"] > killed_at
    assert run.metrics() and run.model_path.exists()


@pytest.mark.slow
def test_sigkill_at_every_commit_point_then_resume(tmp_path, cache_dir):
    """Fault injection through the ``$CXR_STUDIO_CRASH_AT`` hook (core.callbacks.crash_point): the real trainer
    subprocess SIGKILLs itself between the files of an epoch's commit, in both fit modes, then is resumed."""
    run = RunStore(tmp_path).create(_two_phase_config(head=2, finetune=3))
    crashes = [  # where it dies, and the epoch each phase's backup has committed then (None: nothing yet)
        ("backup-weights:1", "head", None),  # cached outputs: new weights written, not committed → epoch 1 again
        ("epoch-end:2", "head", 1),  # epoch 2's best checkpoint written, no history row yet → epoch 2 again
        ("phase-end:2", "head", 2),  # the head's fit returned → the head is done; fine-tuning starts afresh
        ("history:3", "finetune", None),  # images: history row written, not committed → dropped, epoch 3 again
        ("backup-committed:4", "finetune", 4),  # epoch 4 committed → never trained again
    ]
    kept: dict[int, float] = {}
    for number, (crash, phase, committed) in enumerate(crashes):
        run.launch(resume=number > 0, env={CRASH_ENV: crash})
        status = run.wait(timeout=300)
        assert status.state == "interrupted", f"{crash}: {status.state} {status.error}\n{run.log_tail()}"
        assert committed_epoch(run.path / "backup" / phase) == committed, crash
        for row in run.history("epoch"):
            if committed and row["epoch"] <= committed:
                kept.setdefault(row["epoch"], row["time"])
    run.launch(resume=True)
    assert run.wait(timeout=300).state == "finished", run.log_tail()
    rows = _assert_each_epoch_once_and_the_optimizer_carried_on(run, {"head": (0, 2), "finetune": (2, 5)})
    assert all(row["time"] == kept[row["epoch"]] for row in rows if row["epoch"] in kept)
    assert run.metrics() and run.model_path.exists()
