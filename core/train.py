"""Two-phase transfer learning (head, then fine-tune) on Keras's callbacks, writing live progress to the run store.

Each phase is one ``fit`` with Keras's ``BackupAndRestore`` (resume: weights, optimizer state and
epoch), ``ModelCheckpoint`` and ``EarlyStopping`` on a configurable validation quantity, and our
progress callback (:mod:`core.callbacks`). The fine-tune phase starts from the head phase's best
weights; the run's ``model.keras`` is the best checkpoint of the last phase that ran, unless that
phase collapsed (:func:`kept_phase`). A run killed at any instant resumes from its last completed epoch. ``python -m core.train``
(:mod:`core.train_cli`) is the entry point.

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
import signal
import sys
import tempfile
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.config import ConfigError, PhaseConfig, RunConfig
from core.runs import Run, StatusWriter, StopRequested

if TYPE_CHECKING:
    from core.cluster import ClusterTask

__all__ = ["train_run", "run_and_record", "main", "StopRequested", "class_weights", "compile_classifier",
           "kept_phase", "readable_error", "cluster_task", "PHASES", "LOG_FORMAT", "MIRRORED_FILES"]

log = logging.getLogger("cxr_studio.train")
PHASES = ("head", "finetune")
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
# What a non-chief worker copies from the chief's run folder into its own temporary one, once all have joined.
MIRRORED_FILES = ("splits.json", "plan.json", "history.jsonl", "backup", "checkpoints")


def class_weights(labels: np.ndarray, mode: str) -> dict[int, float] | None:
    """Per-class loss weights: scikit-learn's ``compute_class_weight("balanced")``, or None for ``"none"``.

    Balanced weights are ``n / (n_classes · n_c)``, so each class adds the same total weight.
    """
    from sklearn.utils.class_weight import compute_class_weight

    classes = np.unique(np.asarray(labels).astype(int))
    if mode == "none" or len(classes) < 2:
        return None
    weights = compute_class_weight("balanced", classes=classes, y=np.asarray(labels).astype(int))
    return {int(c): float(w) for c, w in zip(classes, weights)}


def compile_classifier(model, learning_rate: float, jit_compile: bool) -> None:
    """Adam and binary cross-entropy on logits, with accuracy, Keras's AUC, precision and recall at p = 0.5."""
    import keras

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


def train_run(run: Run, resume: bool = False, writer: StatusWriter | None = None, *, device: str | None = None,
              cluster: "ClusterTask | None" = None, mirror_of: Run | None = None) -> None:
    """Train, pick the threshold on validation, evaluate once on test; the status says how it went.

    Args:
        run: the run folder (its config.json says everything).
        resume: go on from the last completed epoch (also fine for a run that never started).
        writer: the status writer of this process; one is started (and closed) when None.
        device: overrides the config's ``train.device`` for this start (not saved in config.json).
        cluster: this process's multi-worker task (``TF_CONFIG``), when there is one.
        mirror_of: on a non-chief worker, the chief's run folder; ``run`` is then this worker's
            temporary copy, and training stops after the last phase (no threshold, no evaluation).
    """
    import keras

    from core.ensemble import build_ensemble, is_ensemble

    previous_policy = keras.mixed_precision.dtype_policy()
    own_writer = writer is None
    writer = writer or StatusWriter(run).start(state="running", error=None)
    try:
        if is_ensemble(run):  # its members train as their own runs; then it is combined and evaluated
            build_ensemble(run, progress=lambda message, fraction: writer.update(message=message, progress=fraction))
            writer.update(state="finished", finished_at=_now(), progress=1.0, eta_seconds=0, message="Finished")
            return
        _train_run(run, writer, device=device, cluster=cluster, mirror_of=mirror_of)
    finally:  # Keras's dtype policy is global: later models in this process must not inherit the run's
        keras.mixed_precision.set_dtype_policy(previous_policy)
        if own_writer:
            writer.close()


def _device_plan(run: Run, config: RunConfig, device: str | None = None, *, save: bool = True):
    """The device plan; the precision and XLA choice of the run's first start are kept on resume (plan.json).

    ``save``: write plan.json on the run's first start (a multi-worker chief writes it itself once
    the cluster has joined, with the cluster's replica count).
    """
    from core.device import plan_device

    first = run.read_json("plan.json")
    precision = first["precision"] if first else config.train.precision
    jit_compile = first["jit_compile"] if first else config.train.jit_compile
    plan = plan_device(device or config.train.device, precision, jit_compile, backbone=config.model.backbone)
    if first:
        plan.reason += f"; {precision} and XLA {'on' if jit_compile else 'off'} kept from the run's first start"
    elif save:
        run.write_json("plan.json", plan.to_dict())
    return plan


def _train_run(run: Run, writer: StatusWriter, *, device: str | None = None, cluster: "ClusterTask | None" = None,
               mirror_of: Run | None = None) -> None:
    import keras

    from core.callbacks import PhaseCheckpoints, committed_epoch
    from core.datasets import DatasetError
    from core.cluster import barrier, check_same_data
    from core.model import build_classifier
    from core.pipeline import load_arrays
    from core.splits import run_splits

    config = run.config().validate()
    writer.update(state="running", error=None, finished_at=None, message="Preparing data…",
                  started_at=run.raw_status().started_at or _now())
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
    writer.update(device=plan.to_dict(), monitor=config.train.monitor)
    log.info("device: %s", plan)

    splits = run_splits(config, run.path)  # written once (splits.json), then read: resume keeps its splits
    if multiworker and mirror_of is None:
        barrier(strategy)  # the other workers may now copy the plan and the splits
    log.info("data: %s — train %d, val %d, test %d images", splits.source, len(splits.train), len(splits.val), len(splits.test))
    size, mode = config.data.image_size, config.data.resize_mode
    x_train, y_train = load_arrays(splits.train, size, mode, cache=config.data.cache)
    x_val, y_val = load_arrays(splits.val, size, mode, cache=config.data.cache)
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
    keras.utils.set_random_seed(config.train.seed)  # the same initial weights at every start (and on every worker)
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
        return
    kept, reason = kept_phase(run.epochs(), list(bests))
    if reason:
        log.warning("%s", reason)
        run.append_history({"type": "phase_rejected", "phase": list(bests)[-1], "kept": kept, "reason": reason})
        best = bests[kept]
    _publish(best, run.model_path)
    groups = [record.patient for record in splits.val]
    _finish(run, config, x_val, y_val, groups, batch, writer)


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
    """The multi-worker strategy, once every worker has joined (:class:`core.cluster.ClusterError` after the
    cluster's timeout). Without ``TF_CONFIG`` the strategy runs this process alone (one worker).
    """
    from core.cluster import connect_cluster

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
    import keras

    from core.callbacks import AgreedStop, PhaseCheckpoints, committed_epoch, crash_point, phase_callbacks
    from core.cluster import prepare_multiworker_fit
    from core.model import load_model, set_trainable

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
    keras.utils.set_random_seed(config.train.seed + committed)
    writer.update(phase=name, epoch=committed, step=0, message=f"{name}: starting")
    with strategy.scope():
        set_trainable(model, config.model, name)
        fit_model, train_ds, val_ds, note = _phase_inputs(model, name, phase, config, plan, batch, train, val)
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
        fit_model.fit(train_ds, validation_data=val_ds, initial_epoch=start, epochs=end, class_weight=weights,
                      verbose=0, shuffle=False, callbacks=callbacks)  # the tf.data pipeline shuffles
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


def _phase_inputs(model, name: str, phase: PhaseConfig, config: RunConfig, plan, batch: int,
                  train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray]):
    """The model to fit and its data for one phase: cached frozen outputs when that is exact, else images."""
    from core.demo import default_cache_dir
    from core.frozen import cache_plan, features_dataset, frozen_features, split_at_freeze_boundary
    from core.pipeline import make_dataset

    augment_active = phase.augment and config.augment.active
    split = split_at_freeze_boundary(model) if config.train.cache_frozen_features else None
    use_cache, note = cache_plan(split, len(train[1]) + len(val[1]), augment_active, config.train.cache_frozen_features)
    # Multi-worker: every worker builds the same pipelines (and frozen outputs of every image); fit
    # gives each its part of every global batch.
    shard = _shard_by_data if plan.strategy == "multiworker" else (lambda dataset: dataset)
    if use_cache:  # with data.cache "disk", frozen outputs are kept on disk too, for the next run of the same bottom
        cache_dir = default_cache_dir() if config.data.cache == "disk" else None
        features, hits = zip(*(frozen_features(split, x, lambda x=x, y=y: make_dataset(x, y, batch, training=False),
                                               cache_dir=cache_dir) for x, y in (train, val)))
        note += "; read from the disk cache" if all(hits) else "; saved to the disk cache" if cache_dir else ""
        return (split.top,
                shard(features_dataset(features[0], train[1], batch, training=True, seed=config.train.seed)),
                shard(features_dataset(features[1], val[1], batch, training=False)), note)
    augment = config.augment if augment_active else None
    return (model,
            shard(make_dataset(*train, batch, training=True, augment=augment, seed=config.train.seed)),
            shard(make_dataset(*val, batch, training=False)),
            f"training on images ({note})" if note else "training on images")


def _shard_by_data(dataset):
    """Shard an in-memory pipeline by element across workers (``AutoShardPolicy.DATA``).

    Every worker builds the same pipeline, shuffled with the same seed; each global batch is cut
    into one part per replica and each worker keeps its own. The default policy (FILE) has no
    files to split here and would fall back to this with a warning.
    """
    import tensorflow as tf

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


def _finish(run: Run, config: RunConfig, x_val, y_val, groups: list[str], batch: int, writer: StatusWriter) -> None:
    """Threshold on validation, one evaluation on test, then "finished"; the backup goes only after that."""
    from core.evaluate import choose_run_threshold, evaluate_run
    from core.model import load_model
    from core.pipeline import make_dataset

    # A fresh float32 copy outside any distribution strategy: the model that is evaluated is the file.
    model = load_model(run.model_path)
    writer.update(phase="threshold", message="Choosing the decision threshold on validation…")
    choose_run_threshold(run, model, make_dataset(x_val, y_val, batch, training=False), y_val, groups,
                         f"validation ({len(y_val)} images)")
    done = "Finished"
    if config.train.evaluate_test:
        writer.update(phase="evaluate", message="Evaluating once on the test split…")
        evaluate_run(run)
    else:  # a sweep member: compared on validation; only the sweep's final run sees the test split
        done = "Finished (not evaluated on test: compared on validation only)"
    writer.update(state="finished", finished_at=_now(), progress=1.0, eta_seconds=0, message=done)
    # Only now: a kill before "finished" must still find the backup and the checkpoints.
    for folder in ("backup", "checkpoints"):
        shutil.rmtree(run.path / folder, ignore_errors=True)


def _now() -> str:
    from core.run_status import now_iso

    return now_iso()


def readable_error(exc: BaseException, cluster: "ClusterTask | None" = None) -> str:
    """One line a person can act on, for the status file and the dashboard.

    With ``cluster``, TensorFlow's errors about a lost worker name that worker with its address.
    """
    from core.backbones import WeightsUnavailableError
    from core.datasets import DatasetError
    from core.cluster import ClusterError
    from core.images import ImageLoadError

    known = (ConfigError, WeightsUnavailableError, FloatingPointError, FileNotFoundError, MemoryError,
             DatasetError, ImageLoadError, ClusterError)
    if isinstance(exc, known):
        return str(exc)
    if cluster is not None and cluster.workers > 1 and type(exc).__name__ in (
            "UnavailableError", "AbortedError", "DeadlineExceededError", "CancelledError", "InternalError", "UnknownError"):
        lost = cluster.name_tasks_in(str(exc)) or [
            "one of " + ", ".join(cluster.describe(job, index) for job, index, _ in cluster.others())]
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return (f"lost {' and '.join(lost)} during training (killed, crashed or unreachable; TensorFlow: "
                f"{type(exc).__name__}: {first_line[:200]}). Start every worker again with --resume: training "
                "goes on from the last completed epoch.")
    return f"{type(exc).__name__}: {exc}"


def _raise_stop(signum, frame) -> None:
    raise StopRequested()


def _log_to_run(run: Run):
    """Send our INFO log lines to the run's log.txt, unless a handler already writes to that file.

    A launched trainer's stderr *is* log.txt (the launcher redirects it there), so the stderr
    handler already writes to it: a second handler would put every line in twice. Returns a
    function that undoes what was set up.
    """
    logger = logging.getLogger("cxr_studio")
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    handler = None if _already_logged_to(run.log_path, [*logger.handlers, *logging.getLogger().handlers]) \
        else logging.FileHandler(run.log_path)
    if handler is not None:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)

    def undo() -> None:
        logger.setLevel(previous_level)
        if handler is not None:
            logger.removeHandler(handler)
            handler.close()

    return undo


def _already_logged_to(path: Path, handlers: list[logging.Handler]) -> bool:
    """True when one of ``handlers`` writes to the file at ``path`` (compared as files, not names)."""
    try:
        target = os.stat(path)
    except FileNotFoundError:
        return False
    for handler in handlers:
        try:
            if os.path.samestat(os.fstat(handler.stream.fileno()), target):
                return True
        except (AttributeError, OSError, ValueError):
            continue  # no stream, or one without a file descriptor (pytest's capture, StringIO)
    return False


def cluster_task(run: Run, device: str | None = None, connect_timeout: float | None = None) -> "ClusterTask | None":
    """This process's multi-worker task when it trains ``run`` under MultiWorkerMirroredStrategy, else None.

    The device is ``device`` or the run's ``train.device``; "auto" means multi-worker when
    ``TF_CONFIG`` names a cluster (as :func:`core.device.plan_device` decides it).

    Raises:
        ClusterError: ``TF_CONFIG`` cannot be used.
    """
    from core.cluster import ClusterTask

    task = ClusterTask.from_env(connect_timeout=connect_timeout)
    if task is None:
        return None
    chosen = device or ((run.read_json("config.json") or {}).get("train") or {}).get("device", "auto")
    return task if chosen in ("multiworker", "auto") else None


def run_and_record(run: Run, resume: bool, *, device: str | None = None, connect_timeout: float | None = None) -> int:
    """Run training in this process; every outcome ends in status.json. Returns an exit code.

    Refuses (exit code 3, status untouched) when another trainer is live on this run or the run
    cannot be started as asked. SIGTERM (the run store's hard stop) ends the run as "stopped",
    like a stop request. ``device`` overrides the run's ``train.device`` for this start. A
    non-chief worker of a multi-worker cluster (``TF_CONFIG``) never writes ``run`` (see
    :func:`_run_worker`); ``connect_timeout`` bounds every worker's wait for the others (seconds).
    """
    from core.cluster import ClusterError
    from core.runs import RunError

    try:
        cluster = cluster_task(run, device, connect_timeout)
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if cluster is not None and not cluster.is_chief:
        return _run_worker(run, cluster, device)
    try:
        run.check_can_start(resume, by_trainer=True)
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    undo_logging = _log_to_run(run)
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_stop)
    writer = StatusWriter(run).start(state="running", error=None, message="Starting…")
    try:
        train_run(run, resume=resume, writer=writer, device=device, cluster=cluster)
        return 0
    except StopRequested:
        writer.update(state="stopped", finished_at=_now(), message="Stopped by request; the best checkpoint is kept.")
        log.info("stopped by request")
        return 0
    except Exception as exc:  # noqa: BLE001 - every failure is reported, none is swallowed silently
        log.error("run failed:\n%s", traceback.format_exc())
        writer.update(state="failed", finished_at=_now(), error=readable_error(exc, cluster), message="Failed")
        return 2
    finally:
        writer.close()
        run.stop_path.unlink(missing_ok=True)
        signal.signal(signal.SIGTERM, previous_sigterm)
        undo_logging()


def _run_worker(run: Run, cluster: "ClusterTask", device: str | None) -> int:
    """A non-chief worker: trains in step with the chief in a temporary copy of its run folder, then deletes it.

    Reads the chief's folder (config.json now; splits, plan, history, backup and checkpoints once
    every worker has joined) and writes nothing there: its status, history, checkpoints, backups
    and TensorBoard files go to the copy, its log lines to stderr. The chief's status tells how the
    run went. Returns 0 when training ended (or stopped with the chief), 2 on a failure. A copy left
    by a killed earlier start of the same worker of the same run is removed first.
    """
    if not (run.path / "config.json").is_file():
        print(f"error: {cluster.address} cannot read {run.path / 'config.json'}: every worker needs the chief's run "
              "folder on storage it can read (a shared models/ folder)", file=sys.stderr)
        return 2
    prefix = f"cxr-studio-{run.id}-{cluster.job}{cluster.index}-"
    for stale in Path(tempfile.gettempdir()).glob(f"{prefix}*"):  # left by this worker of this run when killed
        shutil.rmtree(stale, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    mine = Run(scratch / run.id)
    mine.path.mkdir()
    shutil.copyfile(run.path / "config.json", mine.path / "config.json")
    log.info("%s of %d workers: the chief owns %s; this worker writes only to %s", cluster.address, cluster.workers,
             run.path, scratch)
    try:
        train_run(mine, resume=True, writer=StatusWriter(mine), device=device, cluster=cluster, mirror_of=run)
        return 0
    except StopRequested:
        log.info("stopped with the chief")
        return 0
    except Exception as exc:  # noqa: BLE001 - reported on stderr; the chief's status tells the run's outcome
        log.error("worker failed: %s\n%s", readable_error(exc, cluster), traceback.format_exc())
        return 2
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    from core.train_cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
