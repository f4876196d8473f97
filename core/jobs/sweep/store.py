"""The sweep folder: ``sweep.json`` (base config, grid, member ids), creating, listing and finding sweeps, and which sweep a run belongs to."""
from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from core.config import RunConfig
from core.jobs.sweep.grid import normalize_grid, plan_members
from core.store.files import atomic_write_text
from core.store.runs import Run, RunError, RunStore
from core.store.status import HOST, judge_status, now_iso, process_alive, trainer_gone

SWEEP_FILE = "sweep.json"
TO_RUN = ("created", "interrupted", "stopped")  # member states the coordinator starts or resumes
DONE = ("finished", "failed")
ENDINGS = {"finished": "Finished", "paused": "Paused: resume goes on from each member's last completed epoch",
           "cancelled": "Cancelled: members not yet trained stay untrained"}


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
