"""Training callbacks: Keras's own for resume, checkpoints and early stopping, plus the two that are ours.

Resume is ``keras.callbacks.BackupAndRestore`` (weights, optimizer state and epoch), the best
epoch of a phase is ``ModelCheckpoint``, patience is ``EarlyStopping``. What this module adds to
them is only what a killed, resumed run needs: the backup is committed by one atomic rename, the
checkpoint saves the whole classifier when a phase trains on cached frozen outputs, and early
stopping carries on from the epochs before a resume. Ours: :class:`ExactValAUC` (the monitored
AUC) and :class:`RunProgress` (history and status into the run store, stop requests).
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from typing import TYPE_CHECKING

import keras
import numpy as np

from core.config.backend import current_backend
from core.data.batches import batches_of, real_rows
from core.store.files import atomic_write_text
from core.store.heartbeat import StatusWriter
from core.store.runs import Run, StopRequested
from core.training.cluster import agreed_flag

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["MONITOR_MODES", "ExactValAUC", "ClassifierCheckpoint", "ResumedEarlyStopping", "AtomicBackupAndRestore",
           "RunProgress", "PhaseCheckpoints", "AgreedStop", "phase_callbacks", "committed_epoch", "replay_monitor",
           "crash_point", "CRASH_ENV"]

log = logging.getLogger("cxr_studio.train")
# Which way is better for each quantity checkpoints and early stopping may follow (config.MONITORS).
MONITOR_MODES = {"val_loss": "min", "val_exact_auc": "max"}
CRASH_ENV = "CXR_STUDIO_CRASH_AT"
METADATA = "training_metadata.json"  # BackupAndRestore's file name


def crash_point(name: str, epoch: int) -> None:
    """Fault injection for tests: SIGKILL this process here when ``$CXR_STUDIO_CRASH_AT`` is ``"name:epoch"``."""
    if os.environ.get(CRASH_ENV) == f"{name}:{epoch}":
        os.kill(os.getpid(), signal.SIGKILL)


class ExactValAUC(keras.callbacks.Callback):
    """Adds ``val_exact_auc`` to each epoch's logs: scikit-learn's ROC AUC over every validation prediction.

    Keras's ``AUC`` metric integrates a 200-threshold histogram, so near 1.0 it saturates and
    good epochs tie; the exact rank statistic does not. It must come before the callbacks that
    read the value (checkpoint, early stopping, progress): they share the epoch's logs dict.
    The model is called directly, not through ``predict``, which repeats outputs per replica
    under ``MirroredStrategy``.
    """

    def __init__(self, val_data: "tf.data.Dataset"):
        super().__init__()
        self.val_data = val_data
        self._forward = None

    def on_train_begin(self, logs=None):
        model = self.model
        if current_backend() != "tensorflow":  # Keras's compiled predict step (jitted on JAX); the feeder's batches
            self._forward = lambda x: keras.ops.convert_to_numpy(model.predict_on_batch(x))
            return
        import tensorflow as tf  # heavy: TensorFlow

        self._forward = tf.function(lambda x: tf.cast(model(x, training=False), tf.float32), reduce_retracing=True)

    def on_epoch_end(self, epoch, logs=None):
        from sklearn.metrics import roc_auc_score  # heavy: scikit-learn

        scores, labels = [], []
        for batch in batches_of(self.val_data):
            keep, y = real_rows(batch)
            score = np.asarray(self._forward(batch[0]), dtype=np.float64).reshape(-1)
            scores.append(score if keep is None else score[keep])
            labels.append(y if keep is None else y[keep])
        y_true, y_score = np.concatenate(labels), np.concatenate(scores)
        logs["val_exact_auc"] = float(roc_auc_score(y_true, y_score)) if len(np.unique(y_true)) == 2 else float("nan")


class ClassifierCheckpoint(keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` of the whole classifier, also when ``fit`` trains only its top.

    With cached frozen outputs (:mod:`core.data.frozen`) ``fit`` runs on ``split.top``, which shares
    the classifier's layers: saving the classifier saves the trained weights with the frozen
    bottom, so every checkpoint is a complete model.
    """

    def __init__(self, classifier: keras.Model, filepath: str, **kwargs: Any):
        super().__init__(filepath, **kwargs)
        self.classifier = classifier

    def set_model(self, model):
        super().set_model(self.classifier)


class ResumedEarlyStopping(keras.callbacks.EarlyStopping):
    """``EarlyStopping`` that carries on from the best value and the wait of a phase's epochs before a resume."""

    def __init__(self, *, resumed: tuple[float | None, int] = (None, 0), **kwargs: Any):
        super().__init__(**kwargs)
        self.resumed = resumed

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.best, self.wait = self.resumed


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras's ``BackupAndRestore``, committed by one atomic rename so a kill at any instant is harmless.

    Keras writes the weights file in place and then the epoch number: a kill inside the first
    tears the weights, and a kill between the two leaves weights that already hold an epoch the
    number does not count, which a resume would train twice. Here each backup's weights (with
    the optimizer's state) go to a new file, and the epoch file, replaced atomically, names them.
    The backup is kept after ``fit`` (the trainer removes it when the run ends).
    """

    def __init__(self, backup_dir: str | Path):
        super().__init__(str(backup_dir), save_freq="epoch", delete_checkpoint=False)

    def on_train_begin(self, logs=None):
        metadata = _read_metadata(Path(self.backup_dir))
        if metadata and metadata.get("weights"):
            self._weights_path = os.path.join(self.backup_dir, metadata["weights"])
        super().on_train_begin(logs)

    def _save_model(self):
        folder = Path(self.backup_dir)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{self._current_epoch:04d}.weights.h5"
        self.model.save_weights(str(folder / name), overwrite=True)
        crash_point("backup-weights", self._current_epoch)
        atomic_write_text(folder / METADATA, json.dumps({"epoch": self._current_epoch, "batch": 0, "weights": name}))
        crash_point("backup-committed", self._current_epoch)
        for old in folder.glob("epoch-*.weights.h5"):
            if old.name != name:
                old.unlink(missing_ok=True)


def _read_metadata(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / METADATA).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def committed_epoch(backup_dir: str | Path) -> int | None:
    """The last epoch (over the run) that a phase's backup committed, or None before its first."""
    metadata = _read_metadata(Path(backup_dir))
    return int(metadata["epoch"]) if metadata else None


@dataclass
class PhaseCheckpoints:
    """The best-so-far checkpoints of one phase, ``<folder>/<phase>-<epoch>.keras``.

    Each improvement is a new file, so a kill mid-save tears only a file of an epoch the backup
    never committed; such files are removed, and older bests pruned, once a later epoch commits.
    """

    folder: Path
    phase: str

    @property
    def pattern(self) -> str:
        """The ``ModelCheckpoint`` file path (Keras fills in the 1-based epoch over the run)."""
        return str(self.folder / f"{self.phase}-{{epoch:03d}}.keras")

    def files(self) -> dict[int, Path]:
        found = {}
        for path in self.folder.glob(f"{self.phase}-*.keras"):
            match = re.fullmatch(rf"{re.escape(self.phase)}-(\d+)\.keras", path.name)
            if match:
                found[int(match.group(1))] = path
        return found

    def best(self, committed: int) -> Path | None:
        """The newest checkpoint of an epoch the backup committed: the phase's best so far."""
        kept = [epoch for epoch in self.files() if epoch <= committed]
        return self.files()[max(kept)] if kept else None

    def prune(self, committed: int) -> None:
        """Remove files of uncommitted epochs and every committed best but the newest."""
        best = self.best(committed)
        for path in self.files().values():
            if path != best:
                path.unlink(missing_ok=True)


def replay_monitor(values: list[float | None], mode: str) -> tuple[float | None, int]:
    """The best value and the epochs waited since it, by Keras's ``EarlyStopping`` rule (min_delta 0)."""
    better = (lambda a, b: a < b) if mode == "min" else (lambda a, b: a > b)
    best, wait = None, 0
    for value in values:
        if value is None:
            continue  # Keras skips an epoch without the monitored value
        wait += 1
        if best is None or better(value, best):
            best, wait = value, 0
    return best, wait


class RunProgress(keras.callbacks.Callback):
    """Our part: step and epoch rows in ``history.jsonl``, the live status, and stop requests.

    Place it after the checkpoint and early stopping (its epoch row says whether this epoch
    became the best and whether the phase stops) and before the backup, which commits the epoch:
    a row of an epoch killed before its commit is dropped on resume.
    """

    def __init__(self, run: Run, writer: StatusWriter, *, phase: str, checkpoints: PhaseCheckpoints,
                 total_epochs: int, batch_size: int, every: int, stop_requested: Callable[[], bool]):
        super().__init__()
        self.run, self.writer, self.phase, self.checkpoints = run, writer, phase, checkpoints
        self.total_epochs, self.batch_size, self.every = total_epochs, batch_size, every
        self.stop_requested = stop_requested
        self.steps = 0
        self.epoch = 0  # completed epochs over the run
        self.epoch_start = time.time()

    def on_train_begin(self, logs=None):
        self.steps = self.params.get("steps") or 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.epoch_start = epoch, time.time()
        self.checkpoints.prune(committed=epoch)  # every epoch before this one is committed

    def on_train_batch_end(self, batch, logs=None):
        if self.stop_requested():
            raise StopRequested()
        step = batch + 1
        if step % self.every and step != self.steps:
            return
        elapsed = max(time.time() - self.epoch_start, 1e-6)
        done = self.epoch + step / max(self.steps, 1)
        loss = float(logs["loss"]) if logs and "loss" in logs else None
        self.run.append_history({"type": "step", "phase": self.phase, "epoch": self.epoch + 1, "step": step,
                                 "steps": self.steps, "loss": loss, "images_per_sec": step * self.batch_size / elapsed})
        self.writer.update(step=step, steps_per_epoch=self.steps,
                           images_per_sec=round(step * self.batch_size / elapsed, 1),
                           eta_seconds=round((self.total_epochs - done) * max(self.steps, 1) * elapsed / step, 1),
                           progress=min(done / self.total_epochs, 1.0),
                           message=f"{self.phase}: epoch {self.epoch + 1}/{self.total_epochs}, step {step}/{self.steps}")

    def on_epoch_end(self, epoch, logs=None):
        crash_point("epoch-end", epoch + 1)  # the checkpoint may be written; nothing of ours is
        logs = {key: float(value) for key, value in (logs or {}).items()}
        best = (epoch + 1) in self.checkpoints.files()
        self.run.append_history({"type": "epoch", "phase": self.phase, "epoch": epoch + 1,
                                 "seconds": time.time() - self.epoch_start, "best": best,
                                 "stops_phase": bool(self.model.stop_training),
                                 "iterations": int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)), **logs})
        crash_point("history", epoch + 1)
        log.info("epoch %d (%s)%s: %s", epoch + 1, self.phase, ", best so far" if best else "",
                 ", ".join(f"{key}={value:.4f}" for key, value in sorted(logs.items())))
        fields: dict[str, Any] = {"epoch": epoch + 1, "progress": (epoch + 1) / self.total_epochs}
        if best:
            fields["best_val_auc"] = logs.get("val_exact_auc", logs.get("val_auc"))
        self.writer.update(**fields)


class AgreedStop:
    """A stop check that every worker of a multi-worker cluster answers alike, at the same step.

    Under ``MultiWorkerMirroredStrategy`` a worker that left ``fit`` alone would leave the others
    waiting in the next all-reduce. Called once per batch (by :class:`RunProgress`), it asks
    ``local`` (this worker's own signal: the stop-request file) every ``every`` calls and ORs the
    answers of all workers by one all-reduce; between those calls it says no.
    """

    def __init__(self, strategy: "tf.distribute.Strategy", local: Callable[[], bool], every: int):
        self.strategy, self.local, self.every = strategy, local, max(1, every)
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        if self.calls % self.every:
            return False
        return agreed_flag(self.strategy, self.local())


def phase_callbacks(run: Run, writer: StatusWriter, *, classifier: keras.Model, phase: str, start: int,
                    committed: int, total_epochs: int, monitor: str, patience: int, val_data: "tf.data.Dataset",
                    batch_size: int, every: int, stop_requested: Callable[[], bool]) -> list[keras.callbacks.Callback]:
    """One phase's callbacks, in the order that makes a kill at any instant safe.

    The exact AUC first (the others read it), then the checkpoint and early stopping (resumed
    from the phase's epochs up to ``committed``), then our progress row, then the backup that
    commits the epoch, then NaN stopping and TensorBoard (Keras's TensorBoard callback writes through
    TensorFlow's summary ops, so on another backend the epoch rows of history.jsonl are the only log).
    """
    mode = MONITOR_MODES[monitor]
    checkpoints = PhaseCheckpoints(run.path / "checkpoints", phase)
    before = [row.get(monitor) for row in run.epochs() if row.get("phase") == phase and start < row["epoch"] <= committed]
    best, wait = replay_monitor(before, mode)
    callbacks: list[keras.callbacks.Callback] = [ExactValAUC(val_data)] if monitor == "val_exact_auc" else []
    callbacks.append(ClassifierCheckpoint(classifier, checkpoints.pattern, monitor=monitor, mode=mode,
                                          save_best_only=True, initial_value_threshold=best))
    if patience:
        callbacks.append(ResumedEarlyStopping(monitor=monitor, mode=mode, patience=patience, resumed=(best, wait)))
    callbacks += [
        RunProgress(run, writer, phase=phase, checkpoints=checkpoints, total_epochs=total_epochs,
                    batch_size=batch_size, every=every, stop_requested=stop_requested),
        AtomicBackupAndRestore(run.path / "backup" / phase),
        keras.callbacks.TerminateOnNaN(),
    ]
    if current_backend() == "tensorflow":
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run.path / "tensorboard"), profile_batch=0))
    return callbacks
