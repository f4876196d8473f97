"""Deciding a sweep on validation: each member's validation figures with a patient-bootstrap interval, the best member, and the final run."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.jobs.sweep.store import SWEEP_FILE, Sweep
from core.store.runs import Run, RunError, RunStore
from core.store.status import now_iso


@dataclass
class MemberResult:
    """One member as the sweep view shows it: its grid point, where it is, and its validation figures."""

    index: int
    run_id: str
    settings: dict[str, Any]
    state: str
    progress: float = 0.0
    message: str = ""
    error: str | None = None
    val_auc: float | None = None
    val_auc_ci: tuple[float | None, float | None] = (None, None)
    val_loss: float | None = None  # binary cross-entropy of the saved model on validation (unweighted)
    val_images: int = 0
    val_patients: int = 0


def validation_figures(run: Run, n_boot: int = 1000) -> dict[str, Any]:
    """ROC AUC, its patient-bootstrap CI and the log loss from the validation predictions in ``threshold.json``."""
    from sklearn.metrics import log_loss, roc_auc_score  # heavy: scikit-learn

    from core.evaluation.metrics import bootstrap_ci  # heavy: scikit-learn

    saved = (run.read_json("threshold.json") or {}).get("validation") or {}
    y, p = np.asarray(saved.get("labels", []), int), np.asarray(saved.get("probabilities", []), float)
    if y.size == 0 or len(np.unique(y)) < 2:
        return {}
    patients = saved.get("patients") or None
    ci = bootstrap_ci(y, p, 0.5, n_boot=n_boot, groups=patients)["roc_auc"] if n_boot else [None, None]
    return {"val_auc": float(roc_auc_score(y, p)), "val_auc_ci": tuple(ci),
            "val_loss": float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1])),
            "val_images": int(y.size), "val_patients": len(set(patients)) if patients else int(y.size)}


def sweep_results(sweep: Sweep, n_boot: int = 1000) -> list[MemberResult]:
    """Every member's state and validation figures (never its test metrics); ``n_boot=0`` skips the CIs."""
    results = []
    for index, (run, settings) in enumerate(sweep.members(), start=1):
        if not (run.path / "config.json").is_file():
            results.append(MemberResult(index, run.id, settings, "deleted"))
            continue
        status = run.status()
        result = MemberResult(index, run.id, settings, status.state, status.progress, status.message, status.error)
        if status.state == "finished":
            for key, value in validation_figures(run, n_boot).items():
                setattr(result, key, value)
        results.append(result)
    return results


def best_member(results: Sequence[MemberResult], by: str = "val_auc") -> MemberResult | None:
    """The finished member with the highest validation AUC (ties: lower loss), or the lowest validation loss."""
    scored = [r for r in results if r.state == "finished" and r.val_auc is not None]
    if not scored:
        return None
    if by == "val_loss":
        return min(scored, key=lambda r: (r.val_loss, -r.val_auc))
    return max(scored, key=lambda r: (r.val_auc, -r.val_loss))


def create_final_run(sweep: Sweep, store: RunStore, member: str | None = None, by: str = "val_auc") -> Run:
    """A new normal run with the chosen member's settings (the best on validation by default), evaluated on test.

    Nothing is trained here. The sweep records the final run in ``sweep.json``.

    Raises:
        RunError: no member has finished, ``member`` is not one of the sweep's, or a final run exists already.
    """
    existing = sweep.final_run_id
    if existing and (store.root / existing / "config.json").is_file():
        raise RunError(f"sweep {sweep.id} already has its final run {existing}")
    results = sweep_results(sweep, n_boot=0)
    if member is None:
        best = best_member(results, by)
        if best is None:
            raise RunError(f"sweep {sweep.id}: no member has finished with validation predictions yet")
        member = best.run_id
    chosen = next((r for r in results if r.run_id == member and r.state == "finished"), None)
    if chosen is None:
        raise RunError(f"{member} is not a finished member of sweep {sweep.id}")
    config = store.get(member).config().with_overrides(**{"name": f"{sweep.name}-final", "train.evaluate_test": True})
    run = store.create(config)
    spec = sweep.spec
    spec["final"] = {"run": run.id, "member": member, "settings": chosen.settings, "chosen_by": by,
                     "created_at": now_iso()}
    sweep.write_json(SWEEP_FILE, spec)
    return run
