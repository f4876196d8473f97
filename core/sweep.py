"""Sweeps: a base config and a grid of settings, trained as normal runs (one after another, one per GPU), decided on validation.

A sweep folder ``models/sweep-<time>-<name>/`` holds ``sweep.json`` (the base config, the grid and
the member run ids, written at creation) beside its coordinator's ``status.json``, ``launch.json``
and ``log.txt``. It has no ``config.json``, so the run store lists only the members, which are
normal runs. The queue is the members' own status files: the coordinator (``python -m core.sweep
--run-dir …``, one process with a heartbeat like a trainer's) starts each member that is new and
resumes one that was interrupted or paused, so a dashboard restart or a killed coordinator loses
nothing. Pause and cancel are request files it polls.

Members share work through the disk cache (``data.cache = "disk"`` on every member): the decoded
images (:func:`core.pipeline.load_arrays`) and the frozen layers' outputs (:func:`core.frozen.frozen_features`,
keyed by the frozen weights and the pixels), so a member with the same data, image size, backbone
and freeze boundary as an earlier one reads them instead of computing them. Members are not
evaluated on test (``train.evaluate_test = False``): they are compared on the validation
predictions each saves in ``threshold.json``, with a patient-bootstrap CI, and only the final run
trained with the chosen settings sees the test split, once.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from core.config import PRESETS, ConfigError, RunConfig, augment_strength, preset
from core.run_status import HOST, judge_status, now_iso, process_alive, trainer_gone
from core.runs import Run, RunError, RunStore, StatusWriter, atomic_write_text, lower_own_priority

__all__ = [
    "SWEEP_FILE",
    "AXES",
    "AXIS_LABELS",
    "Sweep",
    "MemberResult",
    "normalize_grid",
    "plan_members",
    "describe",
    "create_sweep",
    "list_sweeps",
    "get_sweep",
    "sweep_of_runs",
    "validation_figures",
    "sweep_results",
    "best_member",
    "create_final_run",
    "visible_gpus",
    "member_slots",
    "Coordinator",
    "run_sweep",
    "main",
]

log = logging.getLogger("cxr_studio.sweep")

SWEEP_FILE = "sweep.json"
MAX_MEMBERS = 100
# The grid's named axes, in the user's words, and the setting each varies; any dotted setting works too.
AXES = {
    "unfreeze_from_block": "model.unfreeze_from_block",
    "augment": "augment",  # a named strength (core.config.AUGMENT_STRENGTHS): every augment.* setting at once
    "finetune_learning_rate": "train.finetune.learning_rate",
    "head_learning_rate": "train.head.learning_rate",
    "backbone": "model.backbone",
}
AXIS_LABELS = {
    "model.unfreeze_from_block": "unfreeze from block",
    "augment": "augmentation",
    "train.finetune.learning_rate": "fine-tune learning rate",
    "train.head.learning_rate": "head learning rate",
    "model.backbone": "backbone",
}
_SHORT = {"model.unfreeze_from_block": "b", "train.finetune.learning_rate": "ftlr", "train.head.learning_rate": "hlr"}
RESERVED = ("name", "data.cache", "train.evaluate_test")  # set by the sweep on every member
TO_RUN = ("created", "interrupted", "stopped")  # member states the coordinator starts or resumes
DONE = ("finished", "failed")
ENDINGS = {"finished": "Finished", "paused": "Paused: resume goes on from each member's last completed epoch",
           "cancelled": "Cancelled: members not yet trained stay untrained"}


# ----------------------------------------------------------------------------------------- the grid
def _is_setting(name: str) -> bool:
    node: Any = RunConfig().to_dict()
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return not isinstance(node, dict)


def normalize_grid(grid: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The grid with axis names resolved (``unfreeze_from_block`` → ``model.unfreeze_from_block``), values deduplicated.

    Raises:
        ConfigError: an empty grid, an axis without values or given twice, an unknown setting, one the sweep
            sets itself, or an unknown augmentation strength.
    """
    if not grid:
        raise ConfigError("sweep grid: empty; vary at least one setting, e.g. unfreeze_from_block=2,3,4 "
                          "or augment=none,light")
    out: dict[str, list[Any]] = {}
    for axis, values in grid.items():
        name = AXES.get(axis, axis)
        if name != "augment" and not _is_setting(name):
            raise ConfigError(f"sweep grid: {axis}: no such setting; use {', '.join(AXES)} or a dotted setting "
                              "such as model.dropout")
        if name in RESERVED:
            raise ConfigError(f"sweep grid: {axis}: the sweep sets it on every member; it cannot vary")
        if name in out:
            raise ConfigError(f"sweep grid: {axis}: given twice")
        values = [values] if isinstance(values, str) or not isinstance(values, Sequence) else values
        unique: list[Any] = []
        for value in values:
            if value not in unique:
                unique.append(value)
        if not unique:
            raise ConfigError(f"sweep grid: {axis}: no values")
        if name == "augment":
            for value in unique:
                try:
                    augment_strength(value)
                except ConfigError as exc:  # it names the known strengths
                    raise ConfigError(f"sweep grid: {exc}") from None
        out[name] = unique
    if "augment" in out and any(name.startswith("augment.") for name in out):
        raise ConfigError("sweep grid: vary either augment (a named strength) or single augment.* settings, not both")
    return out


def describe(settings: Mapping[str, Any]) -> str:
    """One grid point in words: ``unfreeze from block 3 · augmentation light``."""
    return " · ".join(f"{AXIS_LABELS.get(key, key)} {_value_text(value)}" for key, value in settings.items())


def _value_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _short(settings: Mapping[str, Any]) -> str:
    parts = [f"{_SHORT.get(key, '' if key in ('augment', 'model.backbone') else key.rsplit('.', 1)[-1])}"
             f"{_value_text(value)}" for key, value in settings.items()]
    return "-".join(parts)


def _member_config(base: RunConfig, settings: Mapping[str, Any], name: str) -> RunConfig:
    """``base`` with one grid point, and the sweep's own settings on top (not validated)."""
    overrides: dict[str, Any] = {}
    for key, value in settings.items():
        if key == "augment":
            overrides.update({f"augment.{k}": v for k, v in dataclasses.asdict(augment_strength(value)).items()})
        else:
            overrides[key] = value
    if "model.backbone" in settings and "model.alpha" not in settings:  # as the Train page does on a backbone change
        from core.backbones import BACKBONES

        spec = BACKBONES.get(settings["model.backbone"])
        if spec is not None and base.model.alpha not in spec.alphas:
            overrides["model.alpha"] = spec.default_alpha
    overrides.update({"name": name, "data.cache": "disk", "train.evaluate_test": False})
    return base.with_overrides(**overrides)


def plan_members(base: RunConfig, grid: Mapping[str, Any], name: str) -> list[tuple[dict[str, Any], RunConfig]]:
    """Every grid point as ``(settings, validated member config)``, in grid order (the last axis varies fastest).

    Raises:
        ConfigError: the base settings or the grid are invalid, or any member's config is rejected: every
            rejected member is named, and nothing has been created.
    """
    try:
        base.validate()
    except ConfigError as exc:
        raise ConfigError(f"sweep base settings: {exc}") from None
    axes = normalize_grid(grid)
    points = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
    if len(points) > MAX_MEMBERS:
        raise ConfigError(f"sweep grid: {len(points)} members; at most {MAX_MEMBERS} (each is a full training run)")
    members, problems = [], []
    for index, settings in enumerate(points, start=1):
        try:
            config = _member_config(base, settings, f"{name[:24]}-{index:02d}-{_short(settings)}").validate()
        except (TypeError, ValueError) as exc:  # ConfigError, or a value of the wrong type
            problems.append(f"member {index} ({describe(settings)}): {exc}")
        else:
            members.append((settings, config))
    if problems:
        raise ConfigError(f"sweep grid: {len(problems)} of {len(points)} members have settings the config rejects; "
                          "nothing was created.\n" + "\n".join(problems))
    return members


# ----------------------------------------------------------------------------------------- the sweep folder
class Sweep(Run):
    """A sweep folder: ``sweep.json``, and its coordinator's ``status.json``, ``launch.json`` and ``log.txt``."""

    ENTRY_POINT = "core.sweep"

    @property
    def spec(self) -> dict[str, Any]:
        return self.read_json(SWEEP_FILE) or {}

    @property
    def name(self) -> str:
        return self.spec.get("name", self.id)

    @property
    def grid(self) -> dict[str, list[Any]]:
        return self.spec.get("grid", {})

    def members(self) -> list[tuple[Run, dict[str, Any]]]:
        """The member runs (in grid order) with their grid settings; a deleted member's folder may be gone."""
        return [(Run(self.path.parent / m["run"]), m["settings"]) for m in self.spec.get("members", [])]

    @property
    def final_run_id(self) -> str | None:
        return (self.spec.get("final") or {}).get("run")

    @property
    def pause_path(self) -> Path:
        return self.path / "pause.request"

    @property
    def cancel_path(self) -> Path:
        return self.path / "cancel.request"

    def request_pause(self) -> None:
        """Stop the members in training after their current batch and end the coordinator; resume goes on."""
        atomic_write_text(self.pause_path, now_iso())

    def request_cancel(self) -> None:
        """Like pause, and the sweep ends for good: members not yet trained stay untrained."""
        atomic_write_text(self.cancel_path, now_iso())

    def check_can_start(self, resume: bool, by_trainer: bool = False) -> None:
        raw = self.raw_status()
        status = judge_status(self.raw_status(), None) if by_trainer else self.status()
        # Live: a fresh heartbeat, or a silent coordinator process still alive here, while the sweep is active.
        live = raw.active and (not trainer_gone(raw) or (raw.host == HOST and process_alive(raw.pid, raw.pid_started)))
        if live or status.state == "queued":
            raise RunError(f"sweep {self.id} is already running (its coordinator is live); pause or cancel it first")
        if status.state in ("cancelled", "finished"):
            raise RunError(f"sweep {self.id} is {status.state}: there is nothing to {'resume' if resume else 'start'}")
        if not resume and status.state != "created":
            raise RunError(f"sweep {self.id} was already started ({status.state}): resume it")

    def launch(self, resume: bool = False, env: dict[str, str] | None = None) -> int:
        """Start ``python -m core.sweep --run-dir …`` in its own session (old pause/cancel requests are dropped)."""
        self.check_can_start(resume)
        self.pause_path.unlink(missing_ok=True)
        self.cancel_path.unlink(missing_ok=True)
        return super().launch(resume, env)


def _new_sweep_folder(root: Path, name: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "sweep"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        path = root / (f"sweep-{stamp}-{slug}" + (f"-{attempt}" if attempt else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunError("could not allocate a sweep id")  # pragma: no cover - 1000 sweeps in one second


def create_sweep(store: RunStore, base: RunConfig, grid: Mapping[str, Any], name: str | None = None) -> Sweep:
    """Validate every member, then create them (state "created") and the sweep folder; nothing is trained here.

    Raises:
        ConfigError: see :func:`plan_members`; the store is left as it was.
    """
    name = (name or base.name or "sweep").strip() or "sweep"
    planned = plan_members(base, grid, name)
    sweep = Sweep(_new_sweep_folder(store.root, name))
    runs = [store.create(config) for _, config in planned]
    sweep.write_json(SWEEP_FILE, {
        "name": name, "created_at": now_iso(), "grid": normalize_grid(grid), "base": base.to_dict(),
        "members": [{"run": run.id, "settings": settings} for run, (settings, _) in zip(runs, planned)],
        "shared": "decoded images and frozen-layer outputs through the disk cache (data.cache = disk)",
    })
    sweep.update_status(state="created", created_at=now_iso(), message=f"{len(runs)} members queued")
    return sweep


def list_sweeps(store: RunStore) -> list[Sweep]:
    """The sweeps of a run store, newest first."""
    if not store.root.is_dir():
        return []
    found = [Sweep(p) for p in store.root.iterdir() if p.is_dir() and (p / SWEEP_FILE).is_file()]
    return sorted(found, key=lambda sweep: sweep.id, reverse=True)


def get_sweep(store: RunStore, sweep_id: str) -> Sweep:
    path = store.root / sweep_id
    if not re.fullmatch(r"[\w.-]+", sweep_id) or not (path / SWEEP_FILE).is_file():
        raise RunError(f"no sweep {sweep_id!r} in {store.root}")
    return Sweep(path)


def sweep_of_runs(store: RunStore) -> dict[str, tuple[Sweep, int]]:
    """Member run id → (its sweep, its 1-based place in the grid); runs outside sweeps are absent."""
    return {run.id: (sweep, index) for sweep in list_sweeps(store)
            for index, (run, _) in enumerate(sweep.members(), start=1)}


# ----------------------------------------------------------------------------------------- deciding on validation
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
    from sklearn.metrics import log_loss, roc_auc_score

    from core.evaluate import bootstrap_ci

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


# ----------------------------------------------------------------------------------------- the coordinator
def visible_gpus() -> list[str]:
    """The GPUs members may be put on: ``CUDA_VISIBLE_DEVICES`` when set, else those ``nvidia-smi`` lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [gpu.strip() for gpu in env.split(",") if gpu.strip() and gpu.strip() != "-1"]
    try:
        listed = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                                text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()] if listed.returncode == 0 else []


def member_slots(gpus: int | None = None) -> list[str | None]:
    """Where members run side by side: one per GPU when two or more are visible, else one at a time (None).

    ``gpus`` overrides the count (the GPUs are then ``0..gpus-1``).
    """
    ids = [str(i) for i in range(gpus)] if gpus is not None else visible_gpus()
    return ids if len(ids) > 1 else [None]


class Coordinator:
    """Works through a sweep's queue: the next member on each free slot, until all are done, or a pause or cancel.

    Each member is a ``core.train`` process in the coordinator's process group (a hard stop of the
    coordinator reaches it), with ``CUDA_VISIBLE_DEVICES`` set to its slot's GPU. A member starts at
    most once per coordinator session, so a member stopped by hand is not restarted behind the user's back.
    """

    def __init__(self, sweep: Sweep, writer: StatusWriter, *, slots: Sequence[str | None] = (None,),
                 trainer: Sequence[str] | None = None, poll: float = 0.5):
        self.sweep = sweep
        self.writer = writer
        self.slots = list(slots)
        self.trainer = list(trainer) if trainer else None  # None: python -m core.train
        self.poll = poll
        self._signalled = False
        self._last_report: tuple[float, str] | None = None

    def pause_now(self, *_: Any) -> None:
        """A SIGTERM: end as on a pause request (members stop after their batch; the sweep can resume)."""
        self._signalled = True

    def run(self) -> str:
        """Returns how the sweep ended: "finished", "paused" or "cancelled"."""
        members = [run for run, _ in self.sweep.members()]
        tried: set[str] = set()
        running: dict[int, tuple[Run, subprocess.Popen]] = {}
        ending: str | None = None
        while True:
            for slot, (member, proc) in list(running.items()):
                if proc.poll() is not None:
                    del running[slot]
                    self._settle(member, proc.returncode)
            if ending is None:
                ending = ("cancelled" if self.sweep.cancel_path.exists() else
                          "paused" if self.sweep.pause_path.exists() or self._signalled else None)
                if ending:
                    log.info("%s requested: stopping %d member(s) after their current batch",
                             "cancel" if ending == "cancelled" else "pause", len(running))
                    for member, _ in running.values():
                        member.request_stop()
            waiting = [] if ending else [m for m in members if m.id not in tried and _to_run(m)]
            for slot, gpu in enumerate(self.slots):
                if slot in running or not waiting:
                    continue
                member = waiting.pop(0)
                tried.add(member.id)
                proc = self._start(member, gpu)
                if proc is not None:
                    running[slot] = (member, proc)
            self._report(members, running, ending)
            if not running and not waiting:
                return ending or "finished"
            time.sleep(self.poll)

    def _start(self, member: Run, gpu: str | None) -> subprocess.Popen | None:
        resume = member.status().state != "created"
        try:
            proc = member.spawn(resume, {"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else None,
                                own_session=False, command=self.trainer)
        except (RunError, OSError) as exc:
            log.warning("member %s not started: %s", member.id, exc)
            return None
        log.info("member %s %s%s (pid %d)", member.id, "resumed" if resume else "started",
                 f" on GPU {gpu}" if gpu is not None else "", proc.pid)
        return proc

    def _settle(self, member: Run, code: int) -> None:
        """After a member's process ended: a trainer that died without saying how is marked failed; the sweep goes on.

        The member's ``launch.json`` gets the exit code and the end time (its wall time in the sweep).
        """
        member.write_json("launch.json", {**(member.launch_record() or {}), "ended": time.time(), "exit_code": code})
        status = member.status()
        if status.state in (*DONE, "stopped") or member.live_trainer():
            log.info("member %s ended: %s%s", member.id, status.state, f" ({status.error})" if status.error else "")
            return
        error = (f"the trainer process ended with exit code {code} without reporting (it crashed or was killed); "
                 "see the run's log.txt")
        member.update_status(state="failed", message="Failed", error=error, finished_at=now_iso(),
                             heartbeat_at=time.time())
        log.warning("member %s failed: %s", member.id, error)

    def _report(self, members: Sequence[Run], running: Mapping[int, tuple[Run, Any]], ending: str | None) -> None:
        states = [member.status() for member in members]
        done = sum(s.state in DONE for s in states)
        failed = sum(s.state == "failed" for s in states)
        progress = sum(1.0 if s.state in DONE else s.progress for s in states) / max(len(states), 1)
        training = [f"{member.id}" + (f" on GPU {self.slots[slot]}" if self.slots[slot] is not None else "")
                    for slot, (member, _) in sorted(running.items())]
        message = (f"{done} of {len(members)} members done" + (f", {failed} failed" if failed else "")
                   + (f"; training {', '.join(training)}" if training else "")
                   + ("; pausing…" if ending == "paused" else "; cancelling…" if ending == "cancelled" else ""))
        if self._last_report != (round(progress, 3), message):
            self._last_report = (round(progress, 3), message)
            self.writer.update(progress=progress, message=message)


def _to_run(member: Run) -> bool:
    return (member.path / "config.json").is_file() and member.status().state in TO_RUN


def _summary(sweep: Sweep) -> str:
    results = sweep_results(sweep, n_boot=0)
    finished = sum(r.state == "finished" for r in results)
    failed = sum(r.state == "failed" for r in results)
    best = best_member(results)
    text = f"{finished} of {len(results)} members finished" + (f", {failed} failed" if failed else "")
    if best is not None:
        text += f"; best on validation: {describe(best.settings)} (val AUC {best.val_auc:.3f})"
    return text


def run_sweep(sweep: Sweep, resume: bool = False, *, gpus: int | None = None, trainer: Sequence[str] | None = None,
              poll: float = 0.5) -> int:
    """Coordinate a sweep in this process until it is done, paused or cancelled; returns an exit code.

    Every outcome ends in the sweep's ``status.json``. Refuses (exit code 3, status untouched) when
    another coordinator is live or the sweep cannot be started as asked. SIGTERM pauses.
    """
    try:
        sweep.check_can_start(resume, by_trainer=True)
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    slots = member_slots(gpus)
    writer = StatusWriter(sweep).start(state="running", error=None, finished_at=None, message="Starting…",
                                       started_at=sweep.raw_status().started_at or now_iso())
    coordinator = Coordinator(sweep, writer, slots=slots, trainer=trainer, poll=poll)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, coordinator.pause_now) if in_main else None
    log.info("sweep %s: %d members, %s", sweep.id, len(sweep.members()),
             f"one per GPU on GPUs {', '.join(map(str, slots))}" if slots != [None] else "one after another")
    try:
        ending = coordinator.run()
        summary = _summary(sweep)
        writer.update(state=ending, message=f"{ENDINGS[ending]}. {summary}.",
                      finished_at=None if ending == "paused" else now_iso(),
                      **({"progress": 1.0, "eta_seconds": 0} if ending == "finished" else {}))
        log.info("sweep %s %s: %s", sweep.id, ending, summary)
        return 0
    except Exception as exc:  # noqa: BLE001 - every failure ends in the status, none is swallowed silently
        log.error("sweep coordinator failed:\n%s", traceback.format_exc())
        writer.update(state="failed", finished_at=now_iso(), error=f"{type(exc).__name__}: {exc}", message="Failed")
        return 2
    finally:
        writer.close()
        sweep.pause_path.unlink(missing_ok=True)
        sweep.cancel_path.unlink(missing_ok=True)
        if in_main:
            signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------------------- CLI
def _value(text: str) -> Any:
    """A value on the command line: JSON (2, 1e-4, true, null), else the text itself (none, light)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text.strip()


def _pairs(items: Sequence[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what}: expected SETTING=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def parse_grid(items: Sequence[str] | None) -> dict[str, list[Any]]:
    """``["unfreeze_from_block=2,3", "augment=none,light"]`` → ``{"unfreeze_from_block": [2, 3], "augment": [...]}``."""
    return {key: [_value(v) for v in value.split(",") if v.strip()] for key, value in _pairs(items, "--grid").items()}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core.sweep", description=__doc__.splitlines()[0])
    new = p.add_argument_group("a new sweep (trained in this process)")
    new.add_argument("--grid", action="append", metavar="SETTING=V1,V2,…",
                     help=f"one axis of the grid; repeat for more. Axes: {', '.join(AXES)} or any dotted setting "
                          "(augment takes named strengths: none, light, standard, acquisition, strong)")
    new.add_argument("--config", help="base run config JSON (default: the defaults, or --preset)")
    new.add_argument("--preset", choices=list(PRESETS), help="base settings from a named preset")
    new.add_argument("--set", action="append", metavar="SETTING=VALUE", help="override one base setting; repeat")
    new.add_argument("--name", help="the sweep's name (default: the base config's)")
    new.add_argument("--gpus", type=int, help="spread members over this many GPUs (default: those visible)")
    old = p.add_argument_group("an existing sweep")
    old.add_argument("--run-dir", help="coordinate this sweep folder (what the dashboard starts)")
    old.add_argument("--resume", nargs="?", const="", metavar="SWEEP_ID",
                     help="go on with a paused or interrupted sweep; without an id, list them")
    old.add_argument("--pause", metavar="SWEEP_ID", help="ask the coordinator to pause (members stop after their batch)")
    old.add_argument("--cancel", metavar="SWEEP_ID", help="ask the coordinator to cancel the rest of the sweep")
    old.add_argument("--show", metavar="SWEEP_ID", help="members on validation, best first")
    old.add_argument("--final", metavar="SWEEP_ID", help="train the final run with the best settings; evaluated on test")
    old.add_argument("--member", metavar="RUN_ID", help="with --final: this member's settings instead of the best")
    old.add_argument("--list", action="store_true", help="list the sweeps of the store")
    p.add_argument("--store", help="run store folder (default models/ or $CXR_STUDIO_RUNS)")
    return p


def _table(sweep: Sweep) -> str:
    results = sweep_results(sweep)
    best = best_member(results)
    lines = [f"sweep {sweep.id} ({sweep.status().state}): {len(results)} members; validation only, never test"]
    for r in sorted(results, key=lambda r: -(r.val_auc if r.val_auc is not None else -1)):
        lo, hi = r.val_auc_ci
        figures = (f"val AUC {r.val_auc:.3f} [{lo:.3f}, {hi:.3f}]  val loss {r.val_loss:.3f}"
                   if r.val_auc is not None and lo is not None else "")
        lines.append(f"{'*' if best and r.run_id == best.run_id else ' '} {r.index:2d} {r.state:<11} {figures:<44} "
                     f"{describe(r.settings)}  {r.run_id}")
    if sweep.final_run_id:
        final = Run(sweep.path.parent / sweep.final_run_id)
        lines.append(f"final run {final.id} ({final.status().state}): evaluated once on test, in its metrics.json")
    return "\n".join(lines)


def _log_to(path: Path) -> None:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("cxr_studio").addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    lower_own_priority(os.environ)  # a coordinator launched from the dashboard: its members inherit the lower priority
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("cxr_studio").setLevel(logging.INFO)
    store = RunStore(args.store)
    try:
        if args.list or (args.resume == "" and not args.run_dir):
            wanted = ("paused", "interrupted", "failed") if args.resume == "" else None
            sweeps = [s for s in list_sweeps(store) if wanted is None or s.status().state in wanted]
            for sweep in sweeps:
                print(f"{sweep.id}\t{sweep.status().state}\t{sweep.status().message}")
            if args.resume == "":
                print("error: --resume needs a sweep id" + ("" if sweeps else f"; no sweep in {store.root} can be resumed"),
                      file=sys.stderr)
                return 2
            return 0
        if args.pause or args.cancel:
            sweep = get_sweep(store, args.pause or args.cancel)
            sweep.request_pause() if args.pause else sweep.request_cancel()
            print(f"{'pause' if args.pause else 'cancel'} requested for sweep {sweep.id}", file=sys.stderr)
            return 0
        if args.show:
            print(_table(get_sweep(store, args.show)))
            return 0
        if args.final:
            return _final(store, get_sweep(store, args.final), args.member)
        if args.run_dir:
            sweep, resume = Sweep(Path(args.run_dir)), args.resume is not None
            if not (sweep.path / SWEEP_FILE).is_file():
                raise RunError(f"{args.run_dir} is not a sweep folder (no {SWEEP_FILE})")
        elif args.resume:
            sweep, resume = get_sweep(store, args.resume), True
            sweep.check_can_start(resume=True)
            sweep.pause_path.unlink(missing_ok=True)
            sweep.cancel_path.unlink(missing_ok=True)
            _log_to(sweep.log_path)
        else:
            from core.startup import import_tensorflow_quietly

            import_tensorflow_quietly()  # validating members builds nothing, but it imports the backbone registry
            base = RunConfig.load(args.config) if args.config else preset(args.preset) if args.preset else RunConfig()
            base = base.with_overrides(**{k: _value(v) for k, v in _pairs(args.set, "--set").items()})
            sweep, resume = create_sweep(store, base, parse_grid(args.grid), args.name), False
            _log_to(sweep.log_path)
    except (ConfigError, RunError, OSError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"sweep {sweep.id} in {sweep.path.parent}: {len(sweep.members())} members", file=sys.stderr)
    code = run_sweep(sweep, resume, gpus=args.gpus)
    if not args.run_dir:
        print(_table(sweep))
    return code


def _final(store: RunStore, sweep: Sweep, member: str | None) -> int:
    """``--final``: create the final run and train it here, as ``python -m core.train --run-dir`` would."""
    from core.startup import import_tensorflow_quietly
    from core.train_cli import main as train_main

    import_tensorflow_quietly()  # validating the final run's config imports the backbone registry
    run = create_final_run(sweep, store, member)
    print(f"final run {run.id} of sweep {sweep.id}", file=sys.stderr)
    return train_main(["--run-dir", str(run.path)])


if __name__ == "__main__":
    sys.exit(main())
