"""The ``python -m core.train`` command line: train a new run, train or resume a run folder, list resumable runs, or estimate a run's time.

``--workers N`` trains one run with N local worker processes under ``MultiWorkerMirroredStrategy``
(each started as ``python -m core.train --run-dir RUN --device multiworker`` with its own
``TF_CONFIG``, on free ports of 127.0.0.1); on several hosts, start that command on each host with
its ``TF_CONFIG`` instead (docs/scaling.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from core.config import PRESETS, AugmentConfig, ConfigError, RunConfig, preset
from core.config.backend import DEFAULT_BACKEND, BackendError, backend_from_env, check_backend, use_backend
from core.config.paths import REPO_ROOT
from core.jobs.commands.arguments import add_store_flag
from core.jobs.commands.startup import import_tensorflow_quietly
from core.store.runs import LOG_FORMAT, Run, RunError, RunStore, lower_own_priority
from core.training.cluster import ClusterError, ClusterTask
from core.training.estimate import estimate_run_time

__all__ = ["main", "parser", "config_from_args", "start_local_workers", "local_tf_configs", "WORKER_GRACE_SECONDS"]

WORKER_GRACE_SECONDS = 30.0  # how long the launcher lets the other workers end after the chief has


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core.train", description="Train a chest X-ray classifier (two phases: "
                                "head, then fine-tune) into the run store, headless.")
    src = p.add_argument_group("what to run")
    src.add_argument("--config", help="a run config JSON file (fully describes a run)")
    src.add_argument("--preset", choices=list(PRESETS), help="start from a named preset")
    src.add_argument("--run-dir", help="train an existing run folder (used by the dashboard)")
    src.add_argument("--resume", nargs="?", const="", metavar="RUN_ID",
                     help="resume an interrupted run from its last completed epoch; without an id, list the resumable runs")
    add_store_flag(src)
    src.add_argument("--estimate", action="store_true",
                     help="print the time estimate of the settings as JSON (a probe of a few batches; downloads nothing)")
    src.add_argument("--estimate-steps", type=int, default=2, help="timed batches per phase for --estimate")
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
    ov.add_argument("--monitor", help="what checkpoints and early stopping follow: val_loss or val_exact_auc")
    ov.add_argument("--max-images-per-class", type=int)
    ov.add_argument("--max-test-images-per-class", type=int)
    ov.add_argument("--no-augment", action="store_true")
    ov.add_argument("--backend", help="the Keras backend to train a new run with: tensorflow (default) or jax "
                    "(default: $KERAS_BACKEND when set); a run folder always trains on the backend it was created for")
    ov.add_argument("--device", choices=["auto", "cpu", "gpu", "mirrored", "multiworker"])
    ov.add_argument("--precision", choices=["auto", "float32", "mixed_bfloat16", "mixed_float16"])
    ov.add_argument("--seed", type=int)
    ov.add_argument("--cpu-devices", type=int, help="split the CPU into N logical devices (tests MirroredStrategy)")
    mw = p.add_argument_group("multi-worker (MultiWorkerMirroredStrategy; docs/scaling.md)")
    mw.add_argument("--workers", type=int, metavar="N",
                    help="train with N worker processes on this host (127.0.0.1, free ports); worker 0 is the chief "
                         "and owns the run folder. Global batch = --batch-size × N")
    mw.add_argument("--create-only", action="store_true",
                    help="create the run folder from the settings, print its path, train nothing (then start each "
                         "host's worker with --run-dir on it)")
    mw.add_argument("--connect-timeout", type=float, metavar="SECONDS",
                    help="how long each worker waits for the whole cluster before it fails, naming the missing "
                         "workers (default 60, or $CXR_STUDIO_CONNECT_TIMEOUT)")
    return p


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run config: ``--config`` or ``--preset`` (else the defaults) with the flags given on top; validated."""
    config = RunConfig.load(args.config) if args.config else preset(args.preset) if args.preset else RunConfig()
    overrides = {
        "name": args.name, "model.backbone": args.backbone, "model.weights": args.weights,
        "model.alpha": args.alpha, "data.image_size": args.image_size, "train.batch_size": args.batch_size,
        "train.head.epochs": args.head_epochs, "train.finetune.epochs": args.finetune_epochs,
        "train.head.learning_rate": args.head_lr, "train.finetune.learning_rate": args.finetune_lr,
        "model.unfreeze_from_block": args.unfreeze_from_block, "train.monitor": args.monitor,
        "data.max_images_per_class": args.max_images_per_class,
        "data.max_test_images_per_class": args.max_test_images_per_class,
        "train.device": args.device, "train.precision": args.precision, "train.seed": args.seed,
        "train.backend": args.backend or _env_backend(),
    }
    if args.data:
        if args.data == "demo":
            overrides.update({"data.source": "demo", "data.path": None})
        elif args.data.endswith(".npz"):
            overrides.update({"data.source": "medmnist", "data.path": args.data})
        else:
            overrides.update({"data.source": "folder", "data.path": args.data})
    if args.no_augment:  # every augmentation setting off: 0, or False for the flip
        overrides.update({f"augment.{f.name}": False if isinstance(f.default, bool) else 0
                          for f in dataclasses.fields(AugmentConfig)})
    return config.with_overrides(**{k: v for k, v in overrides.items() if v is not None}).validate()


def _env_backend() -> str | None:
    try:
        return backend_from_env()
    except BackendError as exc:
        raise ConfigError(f"train.backend ($KERAS_BACKEND): {exc}") from None


def backend_for(args: argparse.Namespace, store: RunStore) -> str:
    """The Keras backend this process trains on: a run folder's own (config.json), else ``--backend``, ``$KERAS_BACKEND``
    or TensorFlow, as the new run's config records it.

    Raises:
        BackendError: an unsupported backend, or ``--backend`` other than the run folder's.
    """
    if args.run_dir or args.resume:
        folder = Path(args.run_dir) if args.run_dir else store.root / args.resume
        try:
            raw = json.loads((folder / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            return check_backend(args.backend or backend_from_env() or DEFAULT_BACKEND)  # the run's own error comes later
        recorded = check_backend(((raw.get("train") or {}).get("backend")) or DEFAULT_BACKEND)
        if args.backend and args.backend != recorded:
            raise BackendError(f"run {folder.name} was created to train on {recorded}; it trains and resumes on "
                               f"{recorded}, not {args.backend}")
        return recorded
    try:
        return config_from_args(args).train.backend
    except (ConfigError, OSError, json.JSONDecodeError):
        return check_backend(args.backend or backend_from_env() or DEFAULT_BACKEND)  # reported with the run


def _list_resumable(store: RunStore) -> int:
    """``--resume`` without an id: say which runs can be resumed, and fail (nothing was resumed)."""
    runs = store.resumable()
    print(f"error: --resume needs a run id. Resumable runs in {store.root}:" if runs else
          f"error: --resume needs a run id, and no run in {store.root} can be resumed.", file=sys.stderr)
    for run in runs:
        status = run.status()
        print(f"{run.id}\t{status.state}\tepoch {status.epoch}/{status.epochs_total or '?'}")
    return 2


def _estimate(args: argparse.Namespace) -> int:
    """``--estimate``: one JSON line on stdout, the estimate or ``{"error": …}``."""
    from core.jobs.run import readable_error  # heavy: Keras, scikit-learn

    try:
        result = estimate_run_time(config_from_args(args), steps=max(1, args.estimate_steps))
    except Exception as exc:  # noqa: BLE001 - the caller shows the reason, whatever it is
        print(json.dumps({"error": readable_error(exc)}))
        return 2
    print(json.dumps(result))
    return 0


def local_tf_configs(workers: int, host: str = "127.0.0.1") -> list[str]:
    """One ``TF_CONFIG`` per worker for a cluster of ``workers`` processes on this host (free ports; worker 0 is the chief)."""
    sockets = []
    try:
        for _ in range(workers):  # all bound at once, so no port is handed out twice
            sock = socket.socket()
            sock.bind((host, 0))
            sockets.append(sock)
        addresses = [f"{host}:{sock.getsockname()[1]}" for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    return [json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": i}})
            for i in range(workers)]


def start_local_workers(run: Run, workers: int, *, resume: bool = False, connect_timeout: float | None = None,
                        env: dict[str, str] | None = None) -> list[subprocess.Popen]:
    """Start ``workers`` processes ``python -m core.train --run-dir RUN --device multiworker`` with their ``TF_CONFIG``.

    Worker 0 is the chief: it writes the run folder (and its log.txt); the others write only to
    temporary folders. Each one's stderr is this process's; stdout is discarded (the chief's
    summary is ``run``'s status). Returns the processes, the chief first.
    """
    command = [sys.executable, "-m", "core.train", "--run-dir", str(run.path.resolve()), "--device", "multiworker"]
    if resume:
        command.append("--resume")
    if connect_timeout is not None:
        command += ["--connect-timeout", str(connect_timeout)]
    return [subprocess.Popen(command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {}), "TF_CONFIG": tf_config})
            for tf_config in local_tf_configs(workers)]


def _wait_for_workers(processes: list[subprocess.Popen], grace: float = WORKER_GRACE_SECONDS) -> int:
    """The chief's exit code, once it has ended; workers still running ``grace`` seconds later are ended."""
    try:
        code = processes[0].wait()
        deadline = time.time() + grace
        while time.time() < deadline and any(proc.poll() is None for proc in processes[1:]):
            time.sleep(0.2)
    except KeyboardInterrupt:
        code = 130
    for proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in processes:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # blocked inside TensorFlow: SIGTERM cannot reach Python there
            proc.kill()
            proc.wait()
    return code


def _local_cluster(args: argparse.Namespace, store: RunStore) -> int:
    """``--workers N``: make or pick the run, start N local workers on it, wait for the chief; its exit code."""
    if not 1 <= args.workers <= 64:
        print("error: --workers must be 1..64", file=sys.stderr)
        return 2
    if not (args.run_dir or args.resume):
        args.device = "multiworker"  # saved in the new run's config
    try:
        run, resume = _pick_run(args, store)
        run.check_can_start(resume)
    except (ConfigError, RunError, json.JSONDecodeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3 if isinstance(exc, RunError) else 2
    print(f"run {run.id} in {run.path.parent}: {args.workers} local workers, worker 0 is the chief", file=sys.stderr)
    code = _wait_for_workers(start_local_workers(run, args.workers, resume=resume,
                                                 connect_timeout=args.connect_timeout))
    _print_summary(run)
    return code


def _pick_run(args: argparse.Namespace, store: RunStore) -> tuple[Run, bool]:
    """The run to train and whether it resumes: ``--run-dir``, ``--resume RUN_ID``, or a new run from the settings."""
    if args.run_dir:
        return Run(Path(args.run_dir)), args.resume is not None
    if args.resume:
        return store.get(args.resume), True
    return store.create(config_from_args(args)), False


def _create_only(args: argparse.Namespace, store: RunStore) -> int:
    """``--create-only``: a new run folder from the settings; its path on stdout."""
    try:
        run = store.create(config_from_args(args))
    except (ConfigError, RunError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(run.path)
    return 0


def _print_summary(run: Run) -> None:
    status = run.status()
    print(json.dumps({"run": run.id, "state": status.state, "error": status.error,
                      "metrics": {k: (run.metrics() or {}).get(k) for k in ("sensitivity", "specificity", "roc_auc")}}))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    lower_own_priority(os.environ)  # launched from the dashboard: yield the CPU to the page that shows this run
    try:
        task = ClusterTask.from_env()
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log_format = LOG_FORMAT.replace("%(levelname)s", f"{task.job} {task.index} %(levelname)s") if task else LOG_FORMAT
    logging.basicConfig(level=logging.INFO, format=log_format, stream=sys.stderr)
    if task:  # TensorFlow logs one INFO line per all-reduce it builds; a worker does many
        logging.getLogger("tensorflow").setLevel(logging.WARNING)
    store = RunStore(args.store)
    if args.resume == "" and not args.run_dir:
        return _list_resumable(store)
    if args.workers is not None:
        return _local_cluster(args, store)
    if args.create_only:
        return _create_only(args, store)
    if task and not task.is_chief and not (args.run_dir or args.resume) and args.device in (None, "auto", "multiworker"):
        print(f"error: {task.address} is not the chief: it trains the chief's run and makes none of its own; start it "
              "with --run-dir on the chief's run folder (--create-only makes one)", file=sys.stderr)
        return 2

    try:  # before anything imports Keras: it reads the backend once
        backend = use_backend(backend_for(args, store))
    except BackendError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if backend == "tensorflow":
        import_tensorflow_quietly()
    from core.jobs.run import run_and_record  # heavy: Keras (and TensorFlow, once it is quiet)

    if args.cpu_devices or os.environ.get("CXR_STUDIO_CPU_DEVICES"):
        from core.training.device import split_cpu  # heavy: TensorFlow

        try:
            split_cpu(args.cpu_devices or int(os.environ["CXR_STUDIO_CPU_DEVICES"]))
        except BackendError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.estimate:
        return _estimate(args)
    try:
        run, resume = _pick_run(args, store)
    except (ConfigError, RunError, json.JSONDecodeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"run {run.id} in {run.path.parent}", file=sys.stderr)
    code = run_and_record(run, resume, device=args.device, connect_timeout=args.connect_timeout)
    if task is None or task.is_chief:  # a non-chief worker has no run of its own to report
        _print_summary(run)
    return code
