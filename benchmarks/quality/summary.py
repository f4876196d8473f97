"""Every figure of a quality report as JSON data (summary.json): per run, per row, the baseline and the invocations."""
from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.quality.orchestrate import RowOutcome, RowResult
from benchmarks.quality.paths import OFFICIAL_TEST_IMAGES
from benchmarks.quality.rows import HEADLINE, PUBLISHED, PublishedRow
from benchmarks.quality.targets import TARGETS, Target, check_targets, describe

__all__ = ["run_entry", "row_entry", "build_summary", "merge_summary", "baseline_row", "machine_description"]


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
        "values": {k: m.get(k) for k in HEADLINE} if m else None,
        "ci": {k: ci.get(k) for k in HEADLINE} if m else None,
        "at_0.5": {k: half.get(k, m.get(k) if k in ("roc_auc", "pr_auc") else None) for k in HEADLINE} if m else None,
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
        "stats": {k: describe([(v or {}).get(k) for _, v in per_seed]) for k in HEADLINE} if runs else {},
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



def baseline_row(metrics: dict[str, Any]) -> dict[str, float | None]:
    """The always-"pneumonia" classifier on the same test images (from metrics.json's counts).

    Calls every image pneumonia: sensitivity 1, specificity 0, accuracy = prevalence; a constant
    score ranks nothing, so ROC AUC 0.5 and average precision = prevalence.
    """
    n, positives = int(metrics["n"]), int(metrics["n_positive"])
    prevalence = positives / n if n else None
    return {"accuracy": prevalence, "sensitivity": 1.0 if positives else None,
            "specificity": 0.0 if n - positives else None, "roc_auc": 0.5, "pr_auc": prevalence}


def machine_description() -> str:
    """This machine in words, for the invocation: CPU, cores, memory, system, Python, TensorFlow and Keras."""
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

