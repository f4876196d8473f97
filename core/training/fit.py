"""The two-phase fit (head, then fine-tune) on Keras's callbacks, writing live progress to the run store.

Each phase is one ``fit`` with Keras's ``BackupAndRestore`` (resume: weights, optimizer state and
epoch), ``ModelCheckpoint`` and ``EarlyStopping`` on a configurable validation quantity, and our
progress callback (:mod:`core.training.callbacks`). The fine-tune phase starts from the head phase's
best weights; the run's ``model.keras`` is the best checkpoint of the last phase that ran, unless that
phase collapsed (:func:`kept_phase`). A run killed at any instant resumes from its last completed
epoch. The process around it (signals, log, status, threshold and test evaluation) is
:mod:`core.jobs.run`; ``python -m core.train`` (:mod:`core.jobs.commands.train`) is the entry point.

Multi-worker (``MultiWorkerMirroredStrategy``, one process per host or per local worker, each with
its ``TF_CONFIG``): every worker runs this same code in step, but only the chief owns the run
folder. Each other worker trains in a temporary copy of it (config, splits, plan, history, backup
and checkpoints, mirrored once every worker has joined), writes its own checkpoints and backups
there, as Keras's multi-worker guide has it, and deletes it at the end; it never writes the run
store. Threshold choice and the test evaluation happen on the chief alone.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.config import PhaseConfig, RunConfig
from core.store.heartbeat import StatusWriter
from core.store.runs import Run, StopRequested
from core.store.status import now_iso

if TYPE_CHECKING:
    from core.training.cluster import ClusterTask

from core.data.datasets import DatasetError
from core.data.demo import default_cache_dir
from core.data.pipeline import load_arrays, make_dataset, weights_in_batches
from core.data.preprocess import Preprocessing
from core.data.splits import run_splits
from core.training.cluster import barrier, check_same_data, connect_cluster, prepare_multiworker_fit
from core.training.device import enable_compile_cache, set_seed

__all__ = ["Fitted", "fit_run", "phase_inputs", "class_weights", "compile_classifier", "kept_phase", "PHASES",
           "MIRRORED_FILES"]

log = logging.getLogger("cxr_studio.train")
PHASES = ("head", "finetune")
# What a non-chief worker copies from the chief's run folder into its own temporary one, once all have joined.
MIRRORED_FILES = ("splits.json", "plan.json", "history.jsonl", "backup", "checkpoints")


def class_weights(labels: np.ndarray, mode: str) -> dict[int, float] | None:
    """Per-class loss weights: scikit-learn's ``compute_class_weight("balanced")``, or None for ``"none"``.

    Balanced weights are ``n / (n_classes · n_c)``, so each class adds the same total weight.
    """
    from sklearn.utils.class_weight import compute_class_weight  # heavy: scikit-learn

    classes = np.unique(np.asarray(labels).astype(int))
    if mode == "none" or len(classes) < 2:
        return None
    weights = compute_class_weight("balanced", classes=classes, y=np.asarray(labels).astype(int))
    return {int(c): float(w) for c, w in zip(classes, weights)}


def compile_classifier(model, learning_rate: float, jit_compile: bool) -> None:
    """Adam and binary cross-entropy on logits, with accuracy, Keras's AUC, precision and recall at p = 0.5."""
    import keras  # heavy: Keras

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


def _device_plan(run: Run, config: RunConfig, device: str | None = None, *, save: bool = True):
    """The device plan; the precision and XLA choice of the run's first start are kept on resume (plan.json).

    ``save``: write plan.json on the run's first start (a multi-worker chief writes it itself once
    the cluster has joined, with the cluster's replica count).
    """
    from core.training.device import plan_device  # heavy: TensorFlow

    first = run.read_json("plan.json")
    precision = first["precision"] if first else config.train.precision
    jit_compile = first["jit_compile"] if first else config.train.jit_compile
    plan = plan_device(device or config.train.device, precision, jit_compile, backbone=config.model.backbone)
    if first:
        plan.reason += f"; {precision} and XLA {'on' if jit_compile else 'off'} kept from the run's first start"
    elif save:
        run.write_json("plan.json", plan.to_dict())
    return plan


@dataclass
class Fitted:
    """What the chief needs after training to finish a run: the validation images, labels and patients, and the batch."""

    x_val: np.ndarray
    y_val: np.ndarray
    groups: list[str]
    batch: int


def fit_run(run: Run, writer: StatusWriter, *, device: str | None = None, cluster: "ClusterTask | None" = None,
            mirror_of: Run | None = None) -> Fitted | None:
    """Train the run's phases (resuming each from its backup) and publish its model.keras.

    Returns what :func:`core.jobs.run.finish_run` needs on the chief; None on a non-chief worker
    (``mirror_of`` is then the chief's run folder), which stops after the last phase.
    """
    import keras  # heavy: Keras

    from core.model.classifier import build_classifier  # heavy: Keras
    from core.training.callbacks import PhaseCheckpoints, committed_epoch  # heavy: Keras, TensorFlow

    config = run.config().validate()
    writer.update(state="running", error=None, finished_at=None, message="Preparing data…",
                  started_at=run.raw_status().started_at or now_iso())
    first_start = run.read_json("plan.json") is None
    plan = _device_plan(run, config, device, save=False)
    multiworker = plan.strategy == "multiworker"
    # MultiWorkerMirroredStrategy must exist before TensorFlow's runtime starts, so the strategy comes first.
    strategy = _join_cluster(writer, plan, cluster) if multiworker else plan.make_strategy()
    if multiworker and mirror_of is not None:
        barrier(strategy)  # the chief has written its plan and splits
        _mirror_chief(mirror_of, run)
        plan = _device_plan(run, config, device, save=False)  # the chief's precision and XLA choice
    plan.replicas, plan.workers = strategy.num_replicas_in_sync, getattr(cluster, "workers", 1)
    if first_start and mirror_of is None:
        run.write_json("plan.json", plan.to_dict())
    keras.mixed_precision.set_dtype_policy(plan.precision)
    enable_compile_cache(default_cache_dir() / "jax-compiled")  # JAX: the next run reads its compiled steps
    writer.update(device=plan.to_dict(), monitor=config.train.monitor)
    log.info("device: %s", plan)

    splits = run_splits(config, run.path)  # written once (splits.json), then read: resume keeps its splits
    if multiworker and mirror_of is None:
        barrier(strategy)  # the other workers may now copy the plan and the splits
    log.info("data: %s — train %d, val %d, test %d images", splits.source, len(splits.train), len(splits.val), len(splits.test))
    size, mode, prep = config.data.image_size, config.data.resize_mode, Preprocessing.of(config.data)
    x_train, y_train = load_arrays(splits.train, size, mode, cache=config.data.cache, preprocessing=prep)
    x_val, y_val = load_arrays(splits.val, size, mode, cache=config.data.cache, preprocessing=prep)
    if len(np.unique(y_train)) < 2 or len(np.unique(y_val)) < 2:
        raise DatasetError("training and validation data each need images of both classes")
    if multiworker:  # also the barrier that ends the other workers' copying
        check_same_data(strategy, x_train, y_train, x_val, y_val)
    batch = config.train.batch_size * plan.replicas  # the global batch: per-replica batch × replicas of all workers
    weights = class_weights(y_train, config.train.class_weight)

    phases, start = [], 0
    for name in PHASES:
        phase = getattr(config.train, name)
        if phase.epochs:
            phases.append((name, phase, start, start + phase.epochs))
            start += phase.epochs
    writer.update(epochs_total=start, message="Building the model…")
    set_seed(config.train.seed)  # the same initial weights at every start (and on every worker)
    with strategy.scope():
        model = build_classifier(config.model, size)

    best: Path | None = None  # the best checkpoint of the last phase that ran
    bests: dict[str, Path] = {}
    for name, phase, start, end in phases:
        committed = committed_epoch(run.path / "backup" / name) or start
        if _phase_done(run, name, start, end, committed):
            best = PhaseCheckpoints(run.path / "checkpoints", name).best(committed) or best
        else:
            best = _train_phase(run, writer, model, strategy, plan, config, name, phase, (start, end, committed),
                                best, (x_train, y_train), (x_val, y_val), weights, batch, mirror_of)
        if best is not None:
            bests[name] = best
    if mirror_of is not None:
        log.info("training done on this worker; the chief chooses the threshold and evaluates")
        return None
    kept, reason = kept_phase(run.epochs(), list(bests))
    if reason:
        log.warning("%s", reason)
        run.append_history({"type": "phase_rejected", "phase": list(bests)[-1], "kept": kept, "reason": reason})
        best = bests[kept]
    _publish(best, run.model_path)
    return Fitted(x_val, y_val, [record.patient for record in splits.val], batch)


CHANCE_AUC = 0.55  # a phase whose best epoch ranks validation no better than this has learnt nothing usable
CONSTANT_LOSS = math.log(2)  # the validation loss of answering 0.5 for every film


def kept_phase(epochs: list[dict], phases: list[str]) -> tuple[str | None, str | None]:
    """The phase whose best checkpoint becomes the run's model, and why when it is not the last one.

    The last phase is kept on its own merits: it need not beat an earlier phase's best value (on a
    near-separable validation split, a saturated AUC would otherwise throw away every fine-tune).
    The exception is a last phase that collapsed while the phase before it did not: at its best epoch
    it ranks the validation films at chance (AUC ≤ 0.55: a constant output, as when fine-tuning every
    block at a high rate breaks the batch-norm statistics), or its validation loss is worse than
    answering 0.5 for every film (ln 2) with no better AUC than the earlier phase. Then the earlier
    phase's best checkpoint is kept, and the reason is given. ``epochs``: the run's epoch rows.
    """
    if not phases:
        return None, None
    best: dict[str, dict] = {}
    for row in epochs:
        if row.get("best") and row.get("phase") in phases:
            best[row["phase"]] = row  # the last best row of a phase is its checkpoint's

    def auc(row: dict) -> float:
        value = row.get("val_exact_auc", row.get("val_auc"))
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan

    def loss(row: dict) -> float:
        value = row.get("val_loss")
        return float(value) if isinstance(value, (int, float)) else math.nan

    def broken(row: dict, other: dict | None = None) -> bool:
        at_chance = not auc(row) > CHANCE_AUC
        worse_than_constant = not loss(row) <= CONSTANT_LOSS and (other is None or not auc(row) > auc(other))
        return at_chance or worse_than_constant

    last = phases[-1]
    for earlier in reversed(phases[:-1]):
        if last in best and earlier in best and broken(best[last], best[earlier]) and not broken(best[earlier]):
            return earlier, (f"the {last} phase collapsed: at its best epoch validation AUC {auc(best[last]):.2f} and "
                             f"loss {loss(best[last]):.3g}, against {auc(best[earlier]):.2f} and "
                             f"{loss(best[earlier]):.3g} after the {earlier} phase, so the {earlier} phase's best "
                             f"model is kept; a lower {last} learning rate or a later unfreeze block usually avoids this")
    return last, None


def _join_cluster(writer: StatusWriter, plan, cluster: "ClusterTask | None"):
    """The multi-worker strategy, once every worker has joined (:class:`core.training.cluster.ClusterError` after the
    cluster's timeout). Without ``TF_CONFIG`` the strategy runs this process alone (one worker).
    """
    if cluster is None:
        log.info("device multiworker without TF_CONFIG: this process trains alone")
        return plan.make_strategy()
    writer.update(message=f"Waiting for the other {cluster.workers - 1} worker(s) (up to {cluster.connect_timeout:.0f} s)…")
    log.info("joining the cluster as %s, %d workers, waiting up to %.0f s", cluster.address, cluster.workers,
             cluster.connect_timeout)
    strategy = connect_cluster(cluster)
    log.info("cluster joined: %d workers, %d replicas in all", cluster.workers, strategy.num_replicas_in_sync)
    return strategy


def _mirror_chief(chief: Run, mine: Run) -> None:
    """Copy what training reads from the chief's run folder into this worker's temporary one."""
    if not (chief.path / "splits.json").is_file():
        raise FileNotFoundError(f"this worker cannot see the chief's splits.json in {chief.path}: every worker needs "
                                "the chief's run folder on storage it can read (a shared models/ folder)")
    for name in MIRRORED_FILES:
        source, target = chief.path / name, mine.path / name
        if source.is_dir():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)
        elif source.is_file():
            shutil.copyfile(source, target)


def _phase_done(run: Run, name: str, start: int, end: int, committed: int) -> bool:
    """A phase is done when its backup committed its last epoch, or an epoch at which early stopping ended it."""
    if committed >= end:
        return True
    last = next((row for row in run.epochs() if row["epoch"] == committed and row.get("phase") == name), None)
    return committed > start and bool(last and last.get("stops_phase"))


def _train_phase(run: Run, writer: StatusWriter, model, strategy, plan, config: RunConfig, name: str,
                 phase: PhaseConfig, epochs: tuple[int, int, int], previous_best: Path | None,
                 train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                 weights: dict[int, float] | None, batch: int, mirror_of: Run | None = None) -> Path:
    """One phase as one ``fit`` (resumed by its backup); returns the phase's best checkpoint."""
    from core.model.classifier import load_model, set_trainable  # heavy: Keras
    from core.training.callbacks import (AgreedStop, PhaseCheckpoints, committed_epoch,  # heavy: Keras
                                         crash_point, phase_callbacks)

    start, end, committed = epochs
    checkpoints = PhaseCheckpoints(run.path / "checkpoints", name)
    run.truncate_history(committed)  # rows of an epoch killed before its backup committed it
    checkpoints.prune(committed)  # and its checkpoint, if one was written
    # A new phase starts from the previous phase's best weights. A resumed one starts from its own best
    # so far: its frozen layers are the ones its cached outputs came from, and the backup then restores
    # the rest (the whole model on images, the trainable top on cached outputs).
    start_from = checkpoints.best(committed) or previous_best
    if start_from is not None:
        model.set_weights(load_model(start_from).get_weights())
    set_seed(config.train.seed + committed)
    writer.update(phase=name, epoch=committed, step=0, message=f"{name}: starting")
    with strategy.scope():
        set_trainable(model, config.model, name)
        fit_model, train_ds, val_ds, note = phase_inputs(model, name, phase, config, plan, batch, train, val,
                                                         class_weight=weights)
        compile_classifier(fit_model, phase.learning_rate, plan.jit_compile)
    stop_requested = run.stop_requested
    if plan.strategy == "multiworker":
        prepare_multiworker_fit(fit_model)
        # Every worker must leave fit at the same step: a stop request (a file in the chief's run
        # folder) is agreed on by all-reduce every `progress_every_steps` steps.
        stop_requested = AgreedStop(strategy, (mirror_of or run).stop_requested, config.train.progress_every_steps)
    log.info("%s phase: %s", name, note + (f" (resumed after epoch {committed})" if committed > start else ""))
    run.append_history({"type": "phase", "phase": name, "start_epoch": start, "epochs": phase.epochs,
                        "learning_rate": phase.learning_rate, "note": note, "resumed_after": committed})
    callbacks = phase_callbacks(
        run, writer, classifier=model, phase=name, start=start, committed=committed,
        total_epochs=sum(getattr(config.train, p).epochs for p in PHASES), monitor=config.train.monitor,
        patience=config.train.early_stopping_patience, val_data=val_ds, batch_size=batch,
        every=config.train.progress_every_steps, stop_requested=stop_requested)
    fit_model._initial_epoch = None  # Keras keeps the epoch a BackupAndRestore restored on the model across fits
    try:
        fit_model.fit(train_ds, validation_data=val_ds, initial_epoch=start, epochs=end, verbose=0, shuffle=False,
                      class_weight=None if weights_in_batches() else weights,  # else the feeder's batches carry them
                      callbacks=callbacks)  # the input pipeline shuffles
    except StopRequested:
        # An epoch with a history row has a complete checkpoint (ModelCheckpoint runs before the progress
        # callback), even when the stop came before its backup was committed: keep the best so far.
        logged = max((row["epoch"] for row in run.epochs() if row.get("phase") == name), default=0)
        committed = committed_epoch(run.path / "backup" / name) or start
        _publish(checkpoints.best(max(committed, logged)) or previous_best, run.model_path)
        raise
    losses = fit_model.history.history.get("loss", [0.0])
    if fit_model.stop_training and losses and not np.isfinite(losses[-1]):
        raise FloatingPointError("training diverged (loss is NaN); try a lower learning rate")
    committed = committed_epoch(run.path / "backup" / name) or start
    crash_point("phase-end", committed)
    best = checkpoints.best(committed)
    if best is None:
        raise RuntimeError(f"the {name} phase saved no checkpoint: {config.train.monitor} was never a number")
    return best


def phase_inputs(model, name: str, phase: PhaseConfig, config: RunConfig, plan, batch: int,
                 train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], *,
                 class_weight: dict[int, float] | None = None):
    """The model to fit and its data for one phase: cached frozen outputs when that is exact, else images.

    ``class_weight`` goes into the training batches where the backend's input feeder carries it (JAX);
    on TensorFlow ``fit`` applies it. Under JAX's DataParallel every batch is padded to a multiple of the
    device count (:mod:`core.data.feeder`).
    """
    from core.data.frozen import (cache_plan, features_dataset, frozen_features,  # heavy: Keras, TensorFlow
                                  split_at_freeze_boundary)

    augment_active = phase.augment and config.augment.active
    split = split_at_freeze_boundary(model) if config.train.cache_frozen_features else None
    use_cache, note = cache_plan(split, len(train[1]) + len(val[1]), augment_active, config.train.cache_frozen_features)
    # Multi-worker: every worker builds the same pipelines (and frozen outputs of every image); fit
    # gives each its part of every global batch.
    shard = _shard_by_data if plan.strategy == "multiworker" else (lambda dataset: dataset)
    pad = plan.replicas if plan.backend != "tensorflow" else 1
    fed = {"class_weight": class_weight, "multiple_of": pad} if weights_in_batches() else {}
    if use_cache:  # with data.cache "disk", frozen outputs are kept on disk too, for the next run of the same bottom
        cache_dir = default_cache_dir() if config.data.cache == "disk" else None
        features, hits = zip(*(frozen_features(split, x, lambda x=x, y=y: make_dataset(x, y, batch, training=False,
                                                                                        multiple_of=pad),
                                               cache_dir=cache_dir) for x, y in (train, val)))
        note += "; read from the disk cache" if all(hits) else "; saved to the disk cache" if cache_dir else ""
        return (split.top,
                shard(features_dataset(features[0], train[1], batch, training=True, seed=config.train.seed, **fed)),
                shard(features_dataset(features[1], val[1], batch, training=False, multiple_of=pad)), note)
    augment = config.augment if augment_active else None
    return (model,
            shard(make_dataset(*train, batch, training=True, augment=augment, seed=config.train.seed, **fed)),
            shard(make_dataset(*val, batch, training=False, multiple_of=pad)),
            f"training on images ({note})" if note else "training on images")


def _shard_by_data(dataset):
    """Shard an in-memory pipeline by element across workers (``AutoShardPolicy.DATA``).

    Every worker builds the same pipeline, shuffled with the same seed; each global batch is cut
    into one part per replica and each worker keeps its own. The default policy (FILE) has no
    files to split here and would fall back to this with a warning.
    """
    import tensorflow as tf  # heavy: TensorFlow

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _publish(best: Path | None, target: Path) -> None:
    """Make ``target`` (model.keras) the same file as the best checkpoint: a hard link, else a copy; atomic."""
    if best is None:
        return
    tmp = target.with_name(f".{target.stem}.tmp.keras")
    tmp.unlink(missing_ok=True)
    try:
        os.link(best, tmp)
    except OSError:
        shutil.copyfile(best, tmp)
    os.replace(tmp, target)


