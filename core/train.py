"""Two-phase transfer learning (head, then fine-tune) writing live progress to the run store; ``python -m core.train``."""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.config import ConfigError, PhaseConfig, RunConfig, preset, PRESETS
from core.runs import Run, RunStore, StatusWriter

__all__ = ["train_run", "main", "StopRequested", "class_weights", "estimate_run_time", "PHASES"]

log = logging.getLogger("cxr_studio.train")
PHASES = ("head", "finetune")


class StopRequested(Exception):
    """The user asked the run to stop; raised from a batch callback so it ends within one batch."""


def class_weights(labels: np.ndarray, mode: str) -> dict[int, float] | None:
    """Balanced weights n / (2 n_c), as sklearn's ``compute_class_weight('balanced')``."""
    if mode == "none":
        return None
    counts = np.bincount(labels.astype(int), minlength=2)
    if (counts == 0).any():
        return None
    return {c: float(len(labels) / (2 * counts[c])) for c in (0, 1)}


@dataclass
class _ResumeState:
    """What a resumed run needs: the last completed epoch over the run and the best val AUC so far."""

    epoch: int = 0
    phase: str = "head"
    best_val_auc: float = -1.0
    wait: int = 0

    @classmethod
    def read(cls, run: Run) -> "_ResumeState":
        raw = run.read_json("state.json") or {}
        return cls(**{k: raw[k] for k in ("epoch", "phase", "best_val_auc", "wait") if k in raw})


def _make_progress_callback(keras, run: Run, full_model, plan_total_epochs: int, batch_size: int, every: int,
                            state: _ResumeState, phase: str, patience: int):
    """A Keras callback that streams progress, checkpoints, early-stops, honours stop requests."""

    class RunProgress(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.steps = None
            self.epoch_start = time.time()

        def on_train_begin(self, logs=None):
            self.steps = self.params.get("steps") or 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_start = time.time()

        def on_train_batch_end(self, batch, logs=None):
            if run.stop_requested():
                raise StopRequested()
            step = batch + 1
            if step % every and step != self.steps:
                return
            elapsed = max(time.time() - self.epoch_start, 1e-6)
            rate = step * batch_size / elapsed
            done = state.epoch + step / max(self.steps, 1)
            remaining_steps = (plan_total_epochs - done) * max(self.steps, 1)
            eta = remaining_steps * elapsed / step
            loss = float(logs.get("loss", float("nan"))) if logs else None
            run.append_history({"type": "step", "phase": phase, "epoch": state.epoch + 1, "step": step,
                                "steps": self.steps, "loss": loss, "images_per_sec": rate})
            run.update_status(step=step, steps_per_epoch=self.steps, images_per_sec=round(rate, 1),
                              eta_seconds=round(eta, 1), progress=min(done / plan_total_epochs, 1.0),
                              message=f"{phase}: epoch {state.epoch + 1}/{plan_total_epochs}, step {step}/{self.steps}")

        def on_epoch_end(self, epoch, logs=None):
            logs = {k: float(v) for k, v in (logs or {}).items()}
            state.epoch += 1
            val_auc = logs.get("val_auc", float("nan"))
            improved = np.isfinite(val_auc) and val_auc > state.best_val_auc
            if improved:
                state.best_val_auc, state.wait = val_auc, 0
            else:
                state.wait += 1
            # Checkpoint for resume (and the best on validation AUC: the same file, linked, not written
            # twice), then history, then the state that makes both count: a kill at any point leaves
            # either the old epoch or the new one, never a half.
            _save_atomic(full_model, run.path / "last.keras")
            if improved:
                _link_atomic(run.path / "last.keras", run.model_path)
            run.append_history({"type": "epoch", "phase": phase, "epoch": state.epoch,
                                "seconds": time.time() - self.epoch_start, "best": bool(improved), **logs})
            state.phase = phase
            run.write_json("state.json", state.__dict__)
            run.update_status(epoch=state.epoch, progress=state.epoch / plan_total_epochs,
                              best_val_auc=None if state.best_val_auc < 0 else state.best_val_auc)
            log.info("epoch %d (%s): %s", state.epoch, phase,
                     ", ".join(f"{k}={v:.4f}" for k, v in sorted(logs.items())))
            if patience and state.wait >= patience:
                log.info("early stopping: no val AUC gain for %d epochs", patience)
                self.model.stop_training = True

    return RunProgress()


def _save_atomic(model, path: Path) -> None:
    """Save to a temp file and rename, so a kill mid-write never leaves a torn checkpoint."""
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def _link_atomic(source: Path, target: Path) -> None:
    """Make ``target`` the same file as ``source`` (a hard link; a copy where links are not possible)."""
    tmp = target.with_name(f".{target.stem}.tmp.keras")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _compile(keras, model, learning_rate: float, jit_compile: bool) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[
            keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0),  # logits: 0 ⇔ p = 0.5
            keras.metrics.AUC(name="auc", from_logits=True),
            keras.metrics.Precision(name="precision", thresholds=0.0),
            keras.metrics.Recall(name="recall", thresholds=0.0),
        ],
        jit_compile=jit_compile,
    )


def train_run(run: Run, resume: bool = False) -> None:
    """Train, pick the threshold on validation, evaluate once on test; status says how it went."""
    import keras

    previous_policy = keras.mixed_precision.dtype_policy()
    try:
        _train_run(run, resume)
    finally:  # Keras's dtype policy is global: later models in this process must not inherit the run's
        keras.mixed_precision.set_dtype_policy(previous_policy)


def _train_run(run: Run, resume: bool) -> None:
    import keras

    from core.datasets import DatasetError
    from core.device import plan_device
    from core.model import build_classifier, load_model, set_trainable
    from core.pipeline import load_arrays
    from core.splits import run_splits

    config = run.config().validate()
    state = _ResumeState.read(run) if resume else _ResumeState()
    if resume:
        run.truncate_history(state.epoch)
    run.update_status(state="running", started_at=run.raw_status().started_at or _now(),
                      error=None, message="Preparing data…")
    keras.utils.set_random_seed(config.train.seed + state.epoch)

    plan = plan_device(config.train.device, config.train.precision, config.train.jit_compile,
                       backbone=config.model.backbone)
    keras.mixed_precision.set_dtype_policy(plan.precision)
    run.update_status(device=plan.to_dict())
    log.info("device: %s", plan)

    splits = run_splits(config, run.path)  # written once (splits.json), then read: resume keeps its splits
    log.info("data: %s — train %d, val %d, test %d images", splits.source, len(splits.train), len(splits.val), len(splits.test))
    size, mode = config.data.image_size, config.data.resize_mode
    x_train, y_train = load_arrays(splits.train, size, mode, cache=config.data.cache)
    x_val, y_val = load_arrays(splits.val, size, mode, cache=config.data.cache)
    if len(np.unique(y_train)) < 2 or len(np.unique(y_val)) < 2:
        raise DatasetError("training and validation data each need images of both classes")
    batch = config.train.batch_size
    global_batch = batch * plan.replicas
    weights = class_weights(y_train, config.train.class_weight)

    phases = [(name, getattr(config.train, name)) for name in PHASES if getattr(config.train, name).epochs > 0]
    total_epochs = sum(phase.epochs for _, phase in phases)
    run.update_status(epochs_total=total_epochs, message="Building the model…")

    strategy = plan.make_strategy()
    with strategy.scope():
        if resume and (run.path / "last.keras").exists():
            model = load_model(run.path / "last.keras")
        else:
            model = build_classifier(config.model, size)

    phase_start = 0
    for name, phase in phases:
        phase_end = phase_start + phase.epochs
        if state.epoch >= phase_end:
            phase_start = phase_end
            continue  # finished before the resume
        if state.epoch == phase_start:
            state.wait = 0  # patience counts within a phase
        run.update_status(phase=name, message=f"{name}: starting")
        with strategy.scope():
            set_trainable(model, config.model, name)
            fit_model, train_ds, val_ds, note = _phase_inputs(model, name, phase, config, plan, global_batch,
                                                              (x_train, y_train), (x_val, y_val))
            _compile(keras, fit_model, phase.learning_rate, plan.jit_compile)
        log.info("%s phase: %s", name, note)
        run.append_history({"type": "phase", "phase": name, "start_epoch": phase_start, "epochs": phase.epochs,
                            "learning_rate": phase.learning_rate, "note": note})
        callback = _make_progress_callback(keras, run, model, total_epochs, global_batch, config.train.progress_every_steps,
                                           state, name, config.train.early_stopping_patience)
        fit_model.fit(train_ds, validation_data=val_ds, epochs=phase_end, initial_epoch=state.epoch,
                      class_weight=weights, verbose=0, shuffle=False,  # the tf.data pipeline shuffles
                      callbacks=[callback, keras.callbacks.TerminateOnNaN(),
                                 keras.callbacks.TensorBoard(log_dir=str(run.path / "tensorboard"), profile_batch=0)])
        model.stop_training = fit_model.stop_training
        model.history = fit_model.history
        if model.stop_training and not np.isfinite(model.history.history.get("loss", [0.0])[-1]):
            raise FloatingPointError("training diverged (loss is NaN); try a lower learning rate")
        if run.model_path.exists():  # the next phase starts from the best weights so far
            model.set_weights(load_model(run.model_path).get_weights())
        phase_start = phase_end
        if state.epoch < phase_end:  # early stopping ended this phase: count it done
            state.epoch = phase_end
            state.phase = name
            run.write_json("state.json", state.__dict__)

    _finish(run, config, model, x_val, y_val, global_batch)


def estimate_run_time(config: RunConfig, n_train: int | None = None, n_val: int | None = None,
                      steps: int = 2) -> dict:
    """Estimate a run's duration on this machine from a probe: a few timed batches per phase.

    The probe builds the model without pretrained weights (same compute), times ``steps`` training
    steps of each phase after one warm-up step, and one validation batch, then scales by the data
    set size. Data loading and the final evaluation are not included.
    """
    import keras

    from core.device import plan_device
    from core.model import build_classifier, set_trainable

    if n_train is None or n_val is None:
        from core.splits import resolve_splits

        splits = resolve_splits(config.data, config.train.seed)
        n_train, n_val = len(splits.train), len(splits.val)
    plan = plan_device(config.train.device, config.train.precision, config.train.jit_compile,
                       backbone=config.model.backbone)
    size, batch = config.data.image_size, config.train.batch_size
    previous_policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(plan.precision)
    try:
        model = build_classifier(config.model.__class__(**{**config.model.__dict__, "weights": "none"}), size)
        x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32")
        y = np.arange(batch, dtype="float32") % 2
        per_step = {}
        for name in PHASES:
            if getattr(config.train, name).epochs == 0:
                continue
            set_trainable(model, config.model, name)
            _compile(keras, model, 1e-4, plan.jit_compile)
            model.train_on_batch(x, y)  # warm-up: tracing and compilation
            start = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(x, y)
            per_step[name] = (time.perf_counter() - start) / steps
        model.predict_on_batch(x)
        start = time.perf_counter()
        model.predict_on_batch(x)
        val_step = time.perf_counter() - start
    finally:
        keras.mixed_precision.set_dtype_policy(previous_policy)
    steps_per_epoch = max(1, -(-n_train // batch))
    val_steps = max(1, -(-n_val // batch))
    epoch_seconds = {name: t * steps_per_epoch + val_step * val_steps for name, t in per_step.items()}
    total = sum(epoch_seconds[name] * getattr(config.train, name).epochs for name in epoch_seconds)
    return {
        "total_seconds": total,
        "seconds_per_epoch": epoch_seconds,
        "images_per_sec": {name: batch / t for name, t in per_step.items()},
        "train_images": n_train,
        "val_images": n_val,
        "device": plan.to_dict(),
        "note": f"measured on {steps} batches of {batch} per phase (upper bound: early stopping may end sooner; "
                "data loading and the test evaluation not included)",
    }


def _phase_inputs(model, name: str, phase: PhaseConfig, config: RunConfig, plan, batch: int,
                  train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray]):
    """The model to fit and its data for one phase: cached frozen outputs when that is exact, else images."""
    from core.frozen import cache_plan, compute_frozen, features_dataset, split_at_freeze_boundary
    from core.pipeline import make_dataset

    augment_active = phase.augment and config.augment.active
    split = split_at_freeze_boundary(model) if config.train.cache_frozen_features else None
    use_cache, note = cache_plan(split, len(train[1]) + len(val[1]), augment_active, config.train.cache_frozen_features)
    if use_cache:
        plain = [make_dataset(x, y, batch, training=False) for x, y in (train, val)]
        features = [compute_frozen(split, ds) for ds in plain]
        return (split.top,
                features_dataset(features[0], train[1], batch, training=True, seed=config.train.seed),
                features_dataset(features[1], val[1], batch, training=False), note)
    augment = config.augment if augment_active else None
    return (model,
            make_dataset(*train, batch, training=True, augment=augment, seed=config.train.seed),
            make_dataset(*val, batch, training=False),
            f"training on images ({note})" if note else "training on images")


def _finish(run: Run, config: RunConfig, model, x_val, y_val, batch: int) -> None:
    from core.evaluate import choose_threshold, evaluate_run, predict_probabilities
    from core.pipeline import make_dataset

    from core.model import load_model

    if not run.model_path.exists():
        model.save(run.model_path)
    # A fresh copy outside any distribution strategy: Keras 3's predict under MirroredStrategy
    # returns one output per replica, and the best checkpoint is what gets evaluated anyway.
    model = load_model(run.model_path)
    run.update_status(phase="threshold", message="Choosing the decision threshold on validation…")
    prob = predict_probabilities(model, make_dataset(x_val, y_val, batch, training=False))
    threshold = choose_threshold(y_val, prob, config.train.threshold_method, config.train.target_sensitivity)
    run.write_json("threshold.json", {"threshold": float(threshold), "method": config.train.threshold_method,
                                      "target_sensitivity": config.train.target_sensitivity,
                                      "chosen_on": f"validation ({len(y_val)} images)"})
    run.update_status(phase="evaluate", message="Evaluating once on the test split…")
    evaluate_run(run)
    (run.path / "last.keras").unlink(missing_ok=True)
    run.update_status(state="finished", finished_at=_now(), progress=1.0, eta_seconds=0, message="Finished")


def _now() -> str:
    from core.runs import _now as now

    return now()


def _readable(exc: BaseException) -> str:
    """One line a person can act on, for the status file and the dashboard."""
    from core.backbones import WeightsUnavailableError

    known = (ConfigError, WeightsUnavailableError, FloatingPointError, FileNotFoundError, MemoryError)
    try:
        from core.datasets import DatasetError
        from core.images import ImageLoadError

        known += (DatasetError, ImageLoadError)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(exc, known):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _raise_stop(signum, frame) -> None:
    raise StopRequested()


def run_and_record(run: Run, resume: bool) -> int:
    """Run training in this process; every outcome ends in status.json. Returns an exit code."""
    handler = logging.FileHandler(run.log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("cxr_studio").addHandler(handler)
    # SIGTERM (the dashboard's hard stop) ends the run as "stopped", like a stop request.
    signal.signal(signal.SIGTERM, _raise_stop)
    owner = run.live_trainer()
    if owner:
        log.error("not training run %s: %s", run.id, owner)
        return 3
    # From here this process is the only writer of status.json, with a heartbeat.
    writer = StatusWriter(run).start(state="running", error=None, message="Starting…")
    run.update_status = writer.update  # interim: the trainer's writes go through the heartbeat writer
    try:
        train_run(run, resume=resume)
        return 0
    except StopRequested:
        run.update_status(state="stopped", finished_at=_now(), message="Stopped by request; the best checkpoint is kept.")
        log.info("stopped by request")
        return 0
    except Exception as exc:  # noqa: BLE001 - every failure is reported, none is swallowed silently
        log.error("run failed:\n%s", traceback.format_exc())
        run.update_status(state="failed", finished_at=_now(), error=_readable(exc), message="Failed")
        return 2
    finally:
        writer.close()
        run.stop_path.unlink(missing_ok=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core.train", description=__doc__)
    src = p.add_argument_group("what to run")
    src.add_argument("--config", help="a run config JSON file (fully describes a run)")
    src.add_argument("--preset", choices=list(PRESETS), help="start from a named preset")
    src.add_argument("--run-dir", help="train an existing run folder (used by the dashboard)")
    src.add_argument("--resume", nargs="?", const="", metavar="RUN_ID",
                     help="resume an interrupted run from its last completed epoch")
    src.add_argument("--store", help="run store folder (default models/ or $CXR_STUDIO_RUNS)")
    ov = p.add_argument_group("common settings (override the config)")
    ov.add_argument("--name")
    ov.add_argument("--data", help="'demo', a data set folder, or a PneumoniaMNIST .npz file")
    ov.add_argument("--backbone")
    ov.add_argument("--weights", help="'imagenet', 'none' or a weights file")
    ov.add_argument("--alpha", type=float)
    ov.add_argument("--image-size", type=int)
    ov.add_argument("--batch-size", type=int)
    ov.add_argument("--head-epochs", type=int)
    ov.add_argument("--finetune-epochs", type=int)
    ov.add_argument("--head-lr", type=float)
    ov.add_argument("--finetune-lr", type=float)
    ov.add_argument("--unfreeze-from-block", type=int)
    ov.add_argument("--max-images-per-class", type=int)
    ov.add_argument("--max-test-images-per-class", type=int)
    ov.add_argument("--no-augment", action="store_true")
    ov.add_argument("--device", choices=["auto", "cpu", "gpu", "mirrored", "multiworker"])
    ov.add_argument("--precision", choices=["auto", "float32", "mixed_bfloat16", "mixed_float16"])
    ov.add_argument("--seed", type=int)
    ov.add_argument("--cpu-devices", type=int, help="split the CPU into N logical devices (tests MirroredStrategy)")
    return p


def config_from_args(args: argparse.Namespace) -> RunConfig:
    config = RunConfig.load(args.config) if args.config else preset(args.preset) if args.preset else RunConfig()
    overrides = {
        "name": args.name, "model.backbone": args.backbone, "model.weights": args.weights,
        "model.alpha": args.alpha, "data.image_size": args.image_size, "train.batch_size": args.batch_size,
        "train.head.epochs": args.head_epochs, "train.finetune.epochs": args.finetune_epochs,
        "train.head.learning_rate": args.head_lr, "train.finetune.learning_rate": args.finetune_lr,
        "model.unfreeze_from_block": args.unfreeze_from_block,
        "data.max_images_per_class": args.max_images_per_class,
        "data.max_test_images_per_class": args.max_test_images_per_class,
        "train.device": args.device, "train.precision": args.precision, "train.seed": args.seed,
    }
    if args.data:
        if args.data == "demo":
            overrides.update({"data.source": "demo", "data.path": None})
        elif args.data.endswith(".npz"):
            overrides.update({"data.source": "medmnist", "data.path": args.data})
        else:
            overrides.update({"data.source": "folder", "data.path": args.data})
    config = config.with_overrides(**{k: v for k, v in overrides.items() if v is not None})
    if args.no_augment:
        config = config.with_overrides(**{f"augment.{k}": 0 for k in
                                          ("rotation_degrees", "zoom", "shift", "brightness", "contrast", "noise_std")},
                                       **{"augment.horizontal_flip": False})
    return config.validate()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.cpu_devices or os.environ.get("CXR_STUDIO_CPU_DEVICES"):
        from core.device import split_cpu

        split_cpu(args.cpu_devices or int(os.environ["CXR_STUDIO_CPU_DEVICES"]))
    store = RunStore(args.store)
    try:
        if args.run_dir:
            run = Run(Path(args.run_dir))
            resume = args.resume is not None
        elif args.resume:
            run, resume = store.get(args.resume), True
        else:
            run, resume = store.create(config_from_args(args)), False
    except (ConfigError, json.JSONDecodeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"run {run.id} in {run.path.parent}", file=sys.stderr)
    code = run_and_record(run, resume)
    status = run.status()
    print(json.dumps({"run": run.id, "state": status.state, "error": status.error,
                      "metrics": {k: (run.metrics() or {}).get(k) for k in ("sensitivity", "specificity", "roc_auc")}}))
    return code


if __name__ == "__main__":
    sys.exit(main())
