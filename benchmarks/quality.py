"""Quality benchmark: train named rows with the project's recipe on real X-rays, evaluate once on the
official test split, and table the run's metrics.json against published results and the trivial baseline.

    python -m benchmarks.quality                       # Kaggle chest_xray (../shared/data/chest_xray)
    python -m benchmarks.quality --medmnist            # PneumoniaMNIST (../shared/data/medmnist/pneumoniamnist.npz)
    python -m benchmarks.quality --rows small-cnn-scratch --finetune-epochs 5 --max-images-per-class 200

Every row is a normal run in the run store (``RunStore.create`` + ``Run.launch``, the same
``python -m core.train`` the dashboard starts), so the Runs and Evaluate pages show the very
same run and numbers. Validation is carved out of train by patient (Kaggle) or is the official
val split (MedMNIST); epochs (early stopping on val AUC) and the decision threshold are chosen
on it. The test split is read once, at the end, by ``core.evaluate.evaluate_run``. The table is
built only from the run's ``metrics.json``.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import platform
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["PublishedRow", "Row", "KAGGLE_ROWS", "MEDMNIST_ROWS", "PUBLISHED", "build_config",
           "build_report", "baseline_row", "main"]

REPO = Path(__file__).resolve().parents[1]
SHARED = Path("..") / "shared" / "data"  # relative to the repository root; never this machine's absolute path
DEFAULT_KAGGLE = SHARED / "chest_xray"
DEFAULT_MEDMNIST = SHARED / "medmnist" / "pneumoniamnist.npz"
WEIGHTS = SHARED / "keras_weights"
MOBILENET_025_FILE = WEIGHTS / "mobilenet_2_5_224_tf_no_top.h5"  # Keras's own file, same name as in the Keras cache
MOBILENETV2_035_FILE = WEIGHTS / "mobilenet_v2_0.35_224_no_top_from_tfjs.weights.h5"


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

KAGGLE_ROWS: dict[str, Row] = {
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
KAGGLE_DEFAULT_ROWS = ("vgg16-imagenet", "mobilenet025-imagenet", "small-cnn-scratch")

MEDMNIST_ROWS: dict[str, Row] = {
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
MEDMNIST_DEFAULT_ROWS = ("small-cnn-scratch", "mobilenet025-imagenet")

_HEADLINE = ("accuracy", "sensitivity", "specificity", "roc_auc", "pr_auc")


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
               "data.demo_images_per_class": args.demo_images_per_class}
        overrides.update({k: v for k, v in cli.items() if v is not None})
    return RunConfig().with_overrides(**overrides).validate()


def weights_label(config) -> str:
    """Which weights a row used, in words, for the table."""
    weights = config.model.weights
    if weights == "none":
        return "none (trained from scratch)"
    if weights == "imagenet":
        from core.backbones import BACKBONES, imagenet_file_name

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
    from core.backbones import BACKBONES, WeightsUnavailableError, load_imagenet_reference

    try:
        load_imagenet_reference(BACKBONES[config.model.backbone], config.data.image_size, config.model.alpha)
    except WeightsUnavailableError as exc:
        return str(exc)
    return None


# ------------------------------------------------------------------------------------ running


@dataclass
class RowResult:
    """What one row produced: its run (or why it did not run) and how long it took."""

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
    best_val_auc: float | None = None  # what early stopping and the checkpoint were chosen on
    counts: dict[str, int] = field(default_factory=dict)
    load: tuple[float, float] | None = None  # 1-min load average at start and end


def _epoch_summary(run) -> tuple[dict[str, int], float, int | None]:
    epochs = run.epochs()
    per_phase: dict[str, int] = {}
    for row in epochs:
        per_phase[row.get("phase", "?")] = per_phase.get(row.get("phase", "?"), 0) + 1
    best = [row["epoch"] for row in epochs if row.get("best")]
    return per_phase, float(sum(row.get("seconds", 0.0) for row in epochs)), (best[-1] if best else None)


def _counts_from_log(run) -> dict[str, int]:
    match = re.search(r"train (\d+), val (\d+), test (\d+) images", run.log_path.read_text(errors="replace")
                      if run.log_path.exists() else "")
    return dict(zip(("train", "val", "test"), map(int, match.groups()))) if match else {}


def run_row(store, name: str, row: Row, config, env: dict[str, str], poll: float = 10.0,
            say=print) -> RowResult:
    """Create the run, train it in a ``python -m core.train`` subprocess, wait, and collect the result."""
    result = RowResult(name, row.summary, weights=weights_label(config), config=config.to_dict())
    problem = preflight_weights(config)
    if problem:
        result.error = problem
        say(f"[{name}] not run: {problem}")
        return result
    run = store.create(config)
    result.run_id, result.run_path = run.id, str(run.path)
    say(f"[{name}] run {run.id} in {run.path.parent}")
    load_start = os.getloadavg()[0]
    started = time.time()
    run.launch(env=env)
    last = ""
    try:
        while True:
            status = run.status()
            if not status.active:
                break
            if status.message and status.message != last:
                last = status.message
                say(f"[{name}] {time.time() - started:6.0f} s  {status.message}")
            time.sleep(poll)
    except KeyboardInterrupt:
        run.request_stop()
        say(f"[{name}] stop requested; waiting for the trainer to end")
        status = run.wait(timeout=600)
    result.wall_seconds = time.time() - started
    result.load = (load_start, os.getloadavg()[0])
    result.state = status.state
    result.error = status.error
    result.metrics = run.metrics() if status.state == "finished" else None
    result.epochs, result.train_seconds, result.best_epoch = _epoch_summary(run)
    result.counts = _counts_from_log(run)
    result.best_val_auc = status.best_val_auc
    say(f"[{name}] {status.state} after {result.wall_seconds:.0f} s" + (f": {status.error}" if status.error else ""))
    return result


# ------------------------------------------------------------------------------------ tables


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
    minutes, secs = divmod(int(round(seconds)), 60)
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


def build_report(results: list[RowResult], kind: str, command: str, machine: str,
                 published: list[PublishedRow] | None = None, date: str | None = None) -> str:
    """The markdown report: headline table, subgroup table and run details, all from metrics.json."""
    published = PUBLISHED.get(kind, []) if published is None else published
    done = [r for r in results if r.metrics]
    title = {"kaggle": "Kaggle chest_xray, official test split",
             "medmnist": "PneumoniaMNIST (MedMNIST v2), official test split",
             "demo": "synthetic demo set (NOT real X-rays)"}.get(kind, kind)
    lines = [f"### Quality: {title}", "",
             f"- date: {date or datetime.now().strftime('%Y-%m-%d %H:%M')}",
             f"- machine: {machine}",
             f"- command: `{command}`", ""]
    if done:
        m = done[0].metrics
        lines.append(f"Test split: {m['n']} images ({m['n_positive']} pneumonia, {m['n'] - m['n_positive']} normal, "
                     f"{m.get('n_patients', '?')} patients), used once after training. Ours: value "
                     f"[{m.get('ci_method', '95 % bootstrap interval')}]. Threshold chosen on validation only.")
        lines.append("")
    header = ["", "accuracy", "sensitivity", "specificity", "ROC AUC", "PR AUC"]
    rows: list[list[str]] = []
    for r in results:
        if r.metrics:
            m = r.metrics
            info = m.get("threshold_info") or {}
            rows.append([f"**ours: {r.name}** (threshold {m['threshold']:.3f}, {info.get('method', '?')} on "
                         f"{info.get('chosen_on', 'validation')})"]
                        + [_with_ci(k, m.get(k), m.get("ci")) for k in _HEADLINE])
            half = m.get("at_0.5") or {}
            rows.append([f"ours: {r.name}, same run at threshold 0.5"]
                        + [_fmt(k, half.get(k, m.get(k) if k in ("roc_auc", "pr_auc") else None)) for k in _HEADLINE])
        else:
            reason = (r.error or r.state).replace("\n", " ")
            rows.append([f"ours: {r.name} — not run: {reason}" if r.state == "not run"
                         else f"ours: {r.name} — {r.state}: {reason}"] + ["–"] * 5)
    for p in published:
        rows.append([f"{p.label} (published)"] + [_fmt(k, getattr(p, k)) for k in _HEADLINE])
    if done:
        base = done[0].metrics.get("baseline_always_pneumonia") or baseline_row(done[0].metrics)
        rows.append(['always "pneumonia" (trivial baseline)'] + [_fmt(k, base[k]) for k in _HEADLINE])
    lines += _table(header, rows)

    subgroup_rows = []
    for r in done:
        groups = r.metrics.get("subgroups") or {}
        if not groups:
            continue
        cells = [r.name]
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
    if subgroup_rows:
        lines += ["", "Sensitivity by pneumonia type (file names tell bacterial vs viral; at the run's threshold):", ""]
        lines += _table(["run", "bacterial pneumonia", "viral pneumonia"], subgroup_rows)
        if any(" W" in cell for row in subgroup_rows for cell in row):
            lines.append("")
            lines.append("W: Wilson 95 % interval from the counts in metrics.json (metrics.json has no bootstrap "
                         "interval per subtype yet).")

    detail_rows = []
    for r in results:
        cfg = r.config or {}
        model, data, train = cfg.get("model", {}), cfg.get("data", {}), cfg.get("train", {})
        epochs = ", ".join(f"{phase} {n}" for phase, n in r.epochs.items()) or "–"
        planned = f"{train.get('head', {}).get('epochs', '?')}+{train.get('finetune', {}).get('epochs', '?')}"
        counts = "/".join(str(r.counts.get(k, "?")) for k in ("train", "val", "test")) if r.counts else "–"
        load = f"{r.load[0]:.1f} → {r.load[1]:.1f}" if r.load else "–"
        alpha = f" α={model.get('alpha')}" if model.get("alpha") else ""
        detail_rows.append([r.name, f"`{r.run_id}`" if r.run_id else "–", f"{model.get('backbone', '?')}{alpha}",
                            r.weights or "–", str(data.get("image_size", "?")),
                            f"{epochs} (planned {planned}; best epoch {r.best_epoch or '–'})", _num(r.best_val_auc), counts,
                            _duration(r.train_seconds), _duration(r.wall_seconds), load])
    lines += ["", "Runs (each a folder in the run store; the dashboard's Runs and Evaluate pages show the same numbers):", ""]
    lines += _table(["row", "run id", "backbone", "weights", "px", "epochs run", "best val AUC", "train/val/test images",
                     "time in epochs", "wall time", "load avg"], detail_rows)
    lines += ["", "Rows:", ""]
    lines += [f"- **{r.name}**: {r.summary}." for r in results]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--medmnist", action="store_true", help="run the PneumoniaMNIST table instead of Kaggle chest_xray")
    p.add_argument("--data", help="data set folder, a MedMNIST .npz, or 'demo' (default: ../shared/data/chest_xray, "
                                  "or ../shared/data/medmnist/pneumoniamnist.npz with --medmnist; relative to the repo root)")
    p.add_argument("--rows", help="comma-separated row names (see --list); default: the standard rows of the data set")
    p.add_argument("--list", action="store_true", help="list the rows and exit")
    p.add_argument("--store", help="run store folder (default models/ or $CXR_STUDIO_RUNS)")
    p.add_argument("--out", help="write the markdown report here (default: <store>/quality-<data>-<time>.md)")
    ov = p.add_argument_group("overrides (applied to every selected row)")
    ov.add_argument("--backbone", help="with no --rows: one 'custom' row = the default recipe with this backbone")
    ov.add_argument("--weights", help="'imagenet', 'none' or a weights file")
    ov.add_argument("--alpha", type=float)
    ov.add_argument("--image-size", type=int)
    ov.add_argument("--head-epochs", type=int)
    ov.add_argument("--finetune-epochs", type=int)
    ov.add_argument("--unfreeze-from-block", type=int)
    ov.add_argument("--batch-size", type=int)
    ov.add_argument("--max-images-per-class", type=int, help="balanced training subset (val shrinks in proportion)")
    ov.add_argument("--max-test-images-per-class", type=int, help="test subset (for smoke tests only; not comparable)")
    ov.add_argument("--demo-images-per-class", type=int, help="size of the synthetic set with --data demo")
    ov.add_argument("--seed", type=int)
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


def _copy_weights_to_cache() -> list[str]:
    import shutil

    from core.backbones import keras_cache_dir

    cache = keras_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    copied = []
    source = REPO / MOBILENET_025_FILE  # the only file here that carries Keras's own name and format
    if source.is_file() and not (cache / source.name).exists():
        shutil.copy2(source, cache / source.name)
        copied.append(str(cache / source.name))
    return copied


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    kind, data_path = resolve_data(args.data, args.medmnist)
    if args.list:
        for table_kind, table in (("kaggle", KAGGLE_ROWS), ("medmnist", MEDMNIST_ROWS)):
            print(f"{table_kind}:")
            for name, row in table.items():
                print(f"  {name}: {row.summary}")
        return 0
    if args.keras_home:
        os.environ["KERAS_HOME"] = str(Path(args.keras_home).expanduser().absolute())  # before keras is imported
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from core.config import ConfigError
    from core.runs import RunStore

    rows = select_rows(args, kind)
    store = RunStore(args.store)
    if args.copy_weights_to_cache:
        for path in _copy_weights_to_cache():
            print(f"copied into the Keras cache: {path}")
    env = {"KERAS_HOME": os.environ["KERAS_HOME"]} if args.keras_home else {}
    command = "python -m benchmarks.quality" + (" " + shlex.join(argv) if argv else "")
    machine = machine_description()
    print(f"machine: {machine}\ndata: {kind} at {data_path}\nrows: {', '.join(n for n, _ in rows)}", flush=True)
    results: list[RowResult] = []
    for name, row in rows:
        try:
            config = build_config(name, row, kind, data_path, args)
        except ConfigError as exc:
            results.append(RowResult(name, row.summary, error=f"invalid settings: {exc}"))
            print(f"[{name}] not run: {exc}")
            continue
        results.append(run_row(store, name, row, config, env, say=lambda msg: print(msg, flush=True)))
    report = build_report(results, kind, command, machine)
    out = Path(args.out) if args.out else store.root / f"quality-{kind}-{datetime.now():%Y%m%d-%H%M%S}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print()
    print(report)
    print(f"saved {out}")
    return 0 if all(r.state in ("finished", "not run") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
