"""Running the rows: each row's run configs, its seed runs and their ensemble launched in the run store and awaited."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.quality.paths import DEFAULT_KAGGLE, DEFAULT_MEDMNIST, ORIGINALS, REPO, RESTAGED_KAGGLE
from benchmarks.quality.rows import Row

if TYPE_CHECKING:  # for the annotations only: no import of the core at load time
    from core.config import RunConfig
    from core.store.runs import Run, RunStore

__all__ = ["resolve_data", "restaged_path", "restaged_copy", "prepare_row_data", "build_config", "seed_config", "weights_label", "preflight_weights", "Say", "RowResult",
           "RowOutcome", "follow_run", "reusable_run", "run_row", "run_seeds", "run_ensemble"]


# ------------------------------------------------------------------------------------ configs


def resolve_data(data: str | None, medmnist: bool) -> tuple[str, str]:
    """``(dataset kind, path)``: kind is "kaggle", "medmnist" or "demo"; relative paths are against the repo root."""
    if data == "demo":
        return "demo", "demo"
    if data:  # a path given by the user is relative to where they are
        path = Path(data).expanduser().absolute()
    else:  # the default is relative to the repo root, where the trainer and the dashboard run
        path = DEFAULT_MEDMNIST if medmnist else DEFAULT_KAGGLE
        if Path.cwd().resolve() != REPO:
            path = REPO / path
    kind = "medmnist" if medmnist or str(path).endswith(".npz") else "kaggle"
    return kind, str(path)


def restaged_path() -> str:
    """Where the restaged Kaggle copy lives (relative when run from the repo root, as the default data path)."""
    return str(RESTAGED_KAGGLE if Path.cwd().resolve() == REPO else REPO / RESTAGED_KAGGLE)


def restaged_copy(say: Callable[[str], None] = print) -> str:
    """The restaged Kaggle copy (every training film's shape restored, validation from originals), built if missing."""
    from core.data.restage import restage

    folder = REPO / RESTAGED_KAGGLE
    if not folder.is_dir():
        say(f"building the restaged copy of {DEFAULT_KAGGLE} in {RESTAGED_KAGGLE} (python -m core.data.restage)")
        say(restage(REPO / DEFAULT_KAGGLE, REPO / ORIGINALS, folder).summary())
    return restaged_path()


def prepare_row_data(row: Row, kind: str, say: Callable[[str], None] = print) -> None:
    """Build what a row's data needs before its config is made: the restaged copy for a restaged Kaggle row."""
    if row.restaged and kind == "kaggle":
        restaged_copy(say)


def _repo_path(value: str) -> str:
    """A weights path relative to the repo root made usable from any working directory."""
    if value in ("imagenet", "none"):
        return value
    path = Path(value)
    return str(path if path.is_absolute() else (REPO / path))


def build_config(name: str, row: Row, kind: str, data_path: str, args: argparse.Namespace | None = None) -> RunConfig:
    """The run config of one row: default recipe → row overrides → data source → command-line overrides.

    A restaged row points at the restaged copy without building it (the runners call :func:`restaged_copy`)."""
    from core.config import RunConfig

    overrides: dict[str, Any] = {"name": f"quality-{kind}-{name}", **row.overrides}
    if "model.weights" in overrides:
        overrides["model.weights"] = _repo_path(overrides["model.weights"])
    if kind == "medmnist":
        overrides.update({"data.source": "medmnist", "data.path": data_path})
    elif kind == "demo":
        overrides.update({"data.source": "demo", "data.path": None})
    else:
        overrides.update({"data.source": "folder", "data.path": restaged_path() if row.restaged else data_path})
    if args is not None:
        cli = {"model.backbone": args.backbone, "model.weights": args.weights and _repo_path(args.weights),
               "model.alpha": args.alpha, "data.image_size": args.image_size,
               "train.head.epochs": args.head_epochs, "train.finetune.epochs": args.finetune_epochs,
               "model.unfreeze_from_block": args.unfreeze_from_block, "train.batch_size": args.batch_size,
               "data.max_images_per_class": args.max_images_per_class,
               "data.max_test_images_per_class": args.max_test_images_per_class, "train.seed": args.seed,
               "data.demo_images_per_class": args.demo_images_per_class,
               "train.threshold_method": getattr(args, "threshold_method", None),
               "train.target_sensitivity": getattr(args, "target_sensitivity", None)}
        overrides.update({k: v for k, v in cli.items() if v is not None})
    return RunConfig().with_overrides(**overrides).validate()


def seed_config(config: RunConfig, seed: int, split_seed: int, name: str) -> RunConfig:
    """The config of one seed of a row: its training seed, the row's shared validation split, its own name."""
    return config.with_overrides(**{"name": name, "train.seed": seed, "data.split_seed": split_seed}).validate()


def weights_label(config: RunConfig) -> str:
    """Which weights a row used, in words, for the table."""
    weights = config.model.weights
    if weights == "none":
        return "none (trained from scratch)"
    if weights == "imagenet":
        from core.config import BACKBONES
        from core.model.weights import imagenet_file_name

        file = imagenet_file_name(BACKBONES[config.model.backbone], config.model.alpha)
        return f"ImageNet via weights='imagenet' (Keras cache: {file})"
    path = Path(weights)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else "missing"
    try:
        shown = os.path.relpath(path.resolve(), REPO)
    except ValueError:
        shown = str(path)
    return f"ImageNet, local file {shown} (sha256 {digest}…)"


def preflight_weights(config: RunConfig) -> str | None:
    """None when the row's pretrained weights load; else the core's message (e.g. VGG16 offline)."""
    if config.model.weights != "imagenet":
        return None
    from core.config import BACKBONES
    from core.model.backbones import load_imagenet_reference
    from core.model.weights import WeightsUnavailableError

    try:
        load_imagenet_reference(BACKBONES[config.model.backbone], config.data.image_size, config.model.alpha)
    except WeightsUnavailableError as exc:
        return str(exc)
    return None


# ------------------------------------------------------------------------------------ running


Say = Callable[[str], None]


@dataclass
class RowResult:
    """What one run produced (one seed of a row, or the row's ensemble), or why it did not run, and how long it took."""

    name: str
    summary: str
    weights: str = ""
    run_id: str | None = None
    run_path: str | None = None
    state: str = "not run"
    error: str | None = None
    metrics: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    wall_seconds: float | None = None
    train_seconds: float | None = None
    epochs: dict[str, int] = field(default_factory=dict)
    best_epoch: int | None = None
    best_val_auc: float | None = None  # val AUC at the epoch the checkpoint was kept (chosen on train.monitor)
    best_val_loss: float | None = None
    counts: dict[str, int] = field(default_factory=dict)
    load: tuple[float, float] | None = None  # 1-min load average at start and end
    seed: int | None = None  # the training seed; None for an ensemble
    label: str = ""  # "seed 42", "ensemble of 3"
    members: list[str] = field(default_factory=list)  # an ensemble's member run ids
    interrupted: bool = False  # Ctrl-C while it trained: no further runs are started
    results_dir: str | None = None  # where its files were copied (relative to the repository where inside it)


@dataclass
class RowOutcome:
    """One row: its seed runs, their ensemble, or why the row did not run."""

    name: str
    summary: str
    seeds: list[int] = field(default_factory=list)
    split_seed: int | None = None
    runs: list[RowResult] = field(default_factory=list)
    ensemble: RowResult | None = None
    error: str | None = None  # the row as a whole did not run (weights unavailable, invalid settings, interrupted)
    weights: str = ""
    config: dict[str, Any] | None = None
    wall_seconds: float | None = None

    @property
    def all_results(self) -> list[RowResult]:
        return self.runs + ([self.ensemble] if self.ensemble else [])

    @property
    def interrupted(self) -> bool:
        return any(r.interrupted for r in self.all_results)


def _epoch_summary(run: Run) -> tuple[dict[str, int], float, dict[str, Any] | None]:
    epochs = run.epochs()
    per_phase: dict[str, int] = {}
    for row in epochs:
        per_phase[row.get("phase", "?")] = per_phase.get(row.get("phase", "?"), 0) + 1
    best = [row for row in epochs if row.get("best")]
    return per_phase, float(sum(row.get("seconds", 0.0) for row in epochs)), (best[-1] if best else None)


def _counts_from_log(run: Run) -> dict[str, int]:
    match = re.search(r"train (\d+), val (\d+), test (\d+) images", run.log_path.read_text(errors="replace")
                      if run.log_path.exists() else "")
    return dict(zip(("train", "val", "test"), map(int, match.groups()))) if match else {}


def follow_run(run: Run, result: RowResult, env: dict[str, str], poll: float = 2.0, say: Say = print) -> RowResult:
    """Launch a created run (``python -m core.train`` in its own process), wait for it, and collect the result.

    Ctrl-C asks the trainer to stop (the run ends "stopped") and marks the result interrupted.
    """
    result.run_id, result.run_path = run.id, str(run.path)
    tag = f"[{result.name}{', ' + result.label if result.label else ''}]"
    state = run.status().state
    say(f"{tag} run {run.id} in {run.path.parent}" + (f" (reused: {state})" if state != "created" else ""))
    load_start = os.getloadavg()[0]
    started = time.time()
    if state == "finished":  # reused as it is (--resume): its wall time is the trainer's own
        started -= _run_seconds(run)
    else:
        run.launch(resume=state != "created", env=env)
    last = ""
    try:
        while True:
            status = run.status()
            if not status.active:
                break
            if status.message and status.message != last:
                last = status.message
                say(f"{tag} {time.time() - started:6.0f} s  {status.message}")
            time.sleep(poll)
    except KeyboardInterrupt:
        run.request_stop()
        result.interrupted = True
        say(f"{tag} stop requested; waiting for the trainer to end")
        status = run.wait(timeout=600)
    result.wall_seconds = time.time() - started
    result.load = (load_start, os.getloadavg()[0])
    result.state = status.state
    result.error = status.error
    result.metrics = run.metrics() if status.state == "finished" else None
    result.epochs, result.train_seconds, best = _epoch_summary(run)
    result.best_epoch = best["epoch"] if best else None
    result.best_val_loss = best.get("val_loss") if best else None
    result.counts = _counts_from_log(run)
    result.best_val_auc = status.best_val_auc
    say(f"{tag} {status.state} after {result.wall_seconds:.0f} s" + (f": {status.error}" if status.error else ""))
    return result


def _run_seconds(run: Run) -> float:
    """Seconds from a finished run's start to its end, from its status."""
    from datetime import datetime

    status = run.raw_status()
    try:
        return (datetime.fromisoformat(status.finished_at) - datetime.fromisoformat(status.started_at)).total_seconds()
    except (TypeError, ValueError):
        return 0.0


def _without(config: dict[str, Any], dotted: Sequence[str]) -> dict[str, Any]:
    """A config dict without the given dotted keys (``"train.evaluate_test"``)."""
    out = json.loads(json.dumps(config))
    for key in dotted:
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    return out


def reusable_run(store: RunStore, config: RunConfig, members: list[str] | None = None, ignore: Sequence[str] = (),
                 finished_only: bool = False) -> Run | None:
    """With ``--resume``: the newest run of exactly this config (and these ensemble members), unless it is live.

    A finished one is taken as it is; a failed, stopped or interrupted one is resumed. So a benchmark
    cut short (or a trainer that failed at its very end) goes on without retraining finished seeds.
    ``ignore``: dotted settings that may differ (``train.evaluate_test`` for a comparison that reads
    validation only); ``finished_only``: take only a finished run.
    """
    from core.evaluation.ensemble import member_ids

    wanted = _without(config.to_dict(), ignore)
    for run in store.list():  # newest first
        try:
            same = (_without(run.config().to_dict(), ignore) == wanted and (members is None or member_ids(run) == members)
                    and (not finished_only or run.status().state == "finished"))
        except Exception:  # noqa: BLE001 - an unreadable run is simply not this one
            continue
        if same and run.starter is None and not run.status().active:  # a shipped starter is a copy, not a row's run
            return run
    return None


def run_row(store: RunStore, name: str, row: Row, config: RunConfig, env: dict[str, str], poll: float = 2.0,
            say: Say = print, check_weights: bool = True, label: str = "", reuse: bool = False) -> RowResult:
    """Create one run of a row, train it in a ``python -m core.train`` subprocess, wait, and collect the result."""
    result = RowResult(name, row.summary, weights=weights_label(config), config=config.to_dict(),
                       seed=config.train.seed, label=label)
    problem = preflight_weights(config) if check_weights else None
    if problem:
        result.error = problem
        say(f"[{name}] not run: {problem}")
        return result
    existing = reusable_run(store, config) if reuse else None
    return follow_run(existing or store.create(config), result, env, poll, say)


def run_seeds(store: RunStore, name: str, row: Row, config: RunConfig, kind: str, seeds: int, ensemble: bool,
              env: dict[str, str], poll: float = 2.0, say: Say = print, reuse: bool = False) -> RowOutcome:
    """A row with ``seeds`` training seeds (one validation split: ``data.split_seed`` = the base seed) and, when
    ``ensemble``, the run that combines them (``core.jobs.ensemble.create_ensemble``), launched like the others."""
    base = config.train.seed
    outcome = RowOutcome(name, row.summary, seeds=[base + offset for offset in range(seeds)], split_seed=base,
                         weights=weights_label(config), config=config.to_dict())
    problem = preflight_weights(config)
    if problem:
        outcome.error = problem
        say(f"[{name}] not run: {problem}")
        return outcome
    started = time.time()
    for seed in outcome.seeds:
        if outcome.interrupted:
            outcome.runs.append(RowResult(name, row.summary, weights=outcome.weights, seed=seed, label=f"seed {seed}",
                                          error="interrupted before it started"))
            continue
        member = seed_config(config, seed, base, f"quality-{kind}-seed{seed}-{name}")
        outcome.runs.append(run_row(store, name, row, member, env, poll, say, check_weights=False,
                                    label=f"seed {seed}", reuse=reuse))
    if ensemble and not outcome.interrupted:
        outcome.ensemble = run_ensemble(store, outcome, kind, env, poll, say, reuse=reuse)
    outcome.wall_seconds = time.time() - started
    return outcome


def run_ensemble(store: RunStore, outcome: RowOutcome, kind: str, env: dict[str, str], poll: float = 2.0,
                 say: Say = print, reuse: bool = False) -> RowResult:
    """The ensemble of a row's seed runs as one more run: created over the finished members, launched, awaited."""
    from core.jobs.ensemble import create_ensemble
    from core.store.runs import RunError

    label = f"ensemble of {len(outcome.runs)}"
    result = RowResult(outcome.name, outcome.summary, weights=outcome.weights, label=label)
    unfinished = [r for r in outcome.runs if r.state != "finished"]
    if unfinished:
        result.error = ("not every seed finished (" + ", ".join(f"{r.label}: {r.state}" for r in unfinished) +
                        "): the ensemble combines all of them")
        say(f"[{outcome.name}, {label}] not run: {result.error}")
        return result
    members = [r.run_id for r in outcome.runs]
    try:
        name = f"quality-{kind}-ensemble{len(members)}-{outcome.name}"
        existing = None
        if reuse:
            from core.config import RunConfig

            wanted = RunConfig.from_dict({**store.get(members[0]).config().to_dict(), "name": name})
            existing = reusable_run(store, wanted, members)
        run = existing or create_ensemble(store, members, name=name)
    except RunError as exc:
        result.error = str(exc)
        say(f"[{outcome.name}, {label}] not run: {exc}")
        return result
    result.config, result.members = run.config().to_dict(), members
    return follow_run(run, result, env, poll, say)
