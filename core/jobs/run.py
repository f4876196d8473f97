"""One run as a process: signals, the run's log, its status from start to finish, the error text, exit codes, and the non-chief multi-worker process.

:func:`run_and_record` is what ``python -m core.train --run-dir`` runs in the trainer process. It
trains the run (:func:`core.training.fit.fit_run`, or an ensemble's members), chooses the threshold
on validation, evaluates once on test, and ends every outcome in status.json.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import traceback
from pathlib import Path

import keras

from core.config import ConfigError
from core.data.datasets import DatasetError
from core.data.decode import ImageLoadError
from core.data.pipeline import make_dataset
from core.evaluation.ensemble import is_ensemble
from core.evaluation.evaluate import choose_run_threshold, evaluate_run
from core.jobs.ensemble import build_ensemble
from core.model.classifier import load_model
from core.model.weights import WeightsUnavailableError
from core.store.heartbeat import StatusWriter
from core.store.runs import LOG_FORMAT, Run, RunError, StopRequested
from core.store.status import now_iso
from core.training.cluster import ClusterError, ClusterTask
from core.training.device import DataParallelDevices
from core.training.fit import Fitted, fit_run

__all__ = ["train_run", "finish_run", "readable_error", "cluster_task", "run_and_record"]

log = logging.getLogger("cxr_studio.train")


def train_run(run: Run, resume: bool = False, writer: StatusWriter | None = None, *, device: str | None = None,
              cluster: ClusterTask | None = None, mirror_of: Run | None = None) -> None:
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
    previous_policy = keras.mixed_precision.dtype_policy()
    own_writer = writer is None
    writer = writer or StatusWriter(run).start(state="running", error=None)
    try:
        if is_ensemble(run):  # its members train as their own runs; then it is combined and evaluated
            build_ensemble(run, progress=lambda message, fraction: writer.update(message=message, progress=fraction))
            writer.update(state="finished", finished_at=now_iso(), progress=1.0, eta_seconds=0, message="Finished")
            return
        fitted = fit_run(run, writer, device=device, cluster=cluster, mirror_of=mirror_of)
        DataParallelDevices.release()  # JAX's DataParallel: the threshold and test run on one device
        if fitted is not None:
            finish_run(run, fitted, writer)
    finally:  # Keras's dtype policy and distribution are global: later models here must not inherit the run's
        keras.mixed_precision.set_dtype_policy(previous_policy)
        DataParallelDevices.release()
        if own_writer:
            writer.close()


def finish_run(run: Run, fitted: Fitted, writer: StatusWriter) -> None:
    """Threshold on validation, one evaluation on test, then "finished"; the backup goes only after that."""
    config = run.config()
    x_val, y_val, groups, batch = fitted.x_val, fitted.y_val, fitted.groups, fitted.batch
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
    writer.update(state="finished", finished_at=now_iso(), progress=1.0, eta_seconds=0, message=done)
    # Only now: a kill before "finished" must still find the backup and the checkpoints.
    for folder in ("backup", "checkpoints"):
        shutil.rmtree(run.path / folder, ignore_errors=True)


def readable_error(exc: BaseException, cluster: ClusterTask | None = None) -> str:
    """One line a person can act on, for the status file and the dashboard.

    With ``cluster``, TensorFlow's errors about a lost worker name that worker with its address.
    """
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


def _stop_on_sigterm(run: Run):
    """The SIGTERM handler of a trainer: a stop request on the run, then StopRequested at once.

    The request is the fallback: a signal handler's exception lands wherever the main thread is,
    and code there that catches every ``Exception`` (a status write, a library's clean-up) would
    swallow it; the progress callback still sees the request after the next batch.
    """
    def handler(signum, frame) -> None:
        run.request_stop()
        raise StopRequested()
    return handler


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


def cluster_task(run: Run, device: str | None = None, connect_timeout: float | None = None) -> ClusterTask | None:
    """This process's multi-worker task when it trains ``run`` under MultiWorkerMirroredStrategy, else None.

    The device is ``device`` or the run's ``train.device``; "auto" means multi-worker when
    ``TF_CONFIG`` names a cluster (as :func:`core.training.device.plan_device` decides it).

    Raises:
        ClusterError: ``TF_CONFIG`` cannot be used.
    """
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
    previous_sigterm = signal.signal(signal.SIGTERM, _stop_on_sigterm(run))
    writer = StatusWriter(run).start(state="running", error=None, message="Starting…")
    try:
        train_run(run, resume=resume, writer=writer, device=device, cluster=cluster)
        return 0
    except StopRequested:
        writer.update(state="stopped", finished_at=now_iso(), message="Stopped by request; the best checkpoint is kept.")
        log.info("stopped by request")
        return 0
    except Exception as exc:  # noqa: BLE001 - every failure is reported, none is swallowed silently
        log.error("run failed:\n%s", traceback.format_exc())
        writer.update(state="failed", finished_at=now_iso(), error=readable_error(exc, cluster), message="Failed")
        return 2
    finally:
        writer.close()
        run.stop_path.unlink(missing_ok=True)
        signal.signal(signal.SIGTERM, previous_sigterm)
        undo_logging()


def _run_worker(run: Run, cluster: ClusterTask, device: str | None) -> int:
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
