"""The run store: one folder per training run — create, list, read status and history, launch, stop, delete.

The folder is the only interface between a trainer and its viewers: every write is atomic
(temp file + rename) or an append of whole JSON lines, and readers tolerate a torn last line,
so a dashboard refresh, a second viewer or a killed trainer never corrupts or loses a run.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import psutil

from core.config import RunConfig

__all__ = ["RunError", "RunStatus", "Run", "RunStore", "default_store_root", "ACTIVE_STATES"]

REPO_ROOT = Path(__file__).resolve().parents[1]
ACTIVE_STATES = ("queued", "running")
FINAL_STATES = ("finished", "failed", "stopped", "interrupted")


class RunError(RuntimeError):
    """A run-store operation that cannot be done (unknown run, deleting a running run, …)."""


def default_store_root() -> Path:
    """``$CXR_STUDIO_RUNS`` if set, else the repository's ``models/`` folder."""
    return Path(os.environ.get("CXR_STUDIO_RUNS") or REPO_ROOT / "models")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder and rename, so readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All complete JSON lines of a file; a torn (partly written) last line is ignored."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # torn write at the end of the file, or a line cut by a crash
    return rows


@dataclass
class RunStatus:
    """What a run is doing now, as written by its trainer to ``status.json``."""

    state: str = "created"  # created, queued, running, finished, failed, stopped, interrupted
    pid: int | None = None
    phase: str | None = None  # "head" | "finetune" | "threshold" | "evaluate"
    epoch: int = 0  # completed epochs over the whole run
    epochs_total: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    progress: float = 0.0  # 0..1 over the whole run
    images_per_sec: float | None = None
    eta_seconds: float | None = None
    message: str = ""
    error: str | None = None
    device: dict[str, Any] = field(default_factory=dict)
    best_val_auc: float | None = None
    created_at: str | None = None
    started_at: str | None = None
    updated_at: str | None = None
    finished_at: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "RunStatus":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in raw.items() if k in known})

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


def _trainer_alive(pid: int | None) -> bool:
    """True when ``pid`` is a live (non-zombie) trainer process, robust to pid reuse."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return "core.train" in " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


class Run:
    """One run folder: ``config.json``, ``status.json``, ``history.jsonl``, ``model.keras``, … ."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({self.id!r})"

    @property
    def id(self) -> str:
        return self.path.name

    # --- files -------------------------------------------------------------------------
    @property
    def model_path(self) -> Path:
        return self.path / "model.keras"

    @property
    def log_path(self) -> Path:
        return self.path / "log.txt"

    @property
    def history_path(self) -> Path:
        return self.path / "history.jsonl"

    @property
    def stop_path(self) -> Path:
        return self.path / "stop.request"

    def read_json(self, name: str) -> dict[str, Any] | None:
        path = self.path / name
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            return None  # only possible for files written outside this API

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_text(self.path / name, json.dumps(obj, indent=2, default=_json_default))

    # --- config / status / history ----------------------------------------------------------
    def config(self) -> RunConfig:
        return RunConfig.from_dict(self.read_json("config.json") or {})

    def raw_status(self) -> RunStatus:
        return RunStatus.from_dict(self.read_json("status.json") or {})

    def status(self) -> RunStatus:
        """The saved status, with a trainer that died without saying so reported as interrupted."""
        status = self.raw_status()
        if status.active and not _trainer_alive(status.pid):
            # A queued run gets a moment for its process to appear before it is called dead.
            age = time.time() - (self.path / "status.json").stat().st_mtime
            if status.state == "running" or age > 60:
                status.state = "interrupted"
                status.message = "The training process ended without finishing (killed or crashed). Resume continues from the last completed epoch."
        return status

    def update_status(self, **fields: Any) -> RunStatus:
        status = self.raw_status()
        for key, value in fields.items():
            if key not in RunStatus.__dataclass_fields__:
                raise KeyError(key)
            setattr(status, key, value)
        status.updated_at = _now()
        self.write_json("status.json", asdict(status))
        return status

    def append_history(self, entry: dict[str, Any]) -> None:
        """Append one JSON line (one write call, flushed), so a crash can tear only the last line."""
        line = json.dumps({"time": time.time(), **entry}, default=_json_default) + "\n"
        with open(self.history_path, "a") as handle:
            handle.write(line)
            handle.flush()

    def history(self, kind: str | None = None) -> list[dict[str, Any]]:
        rows = read_jsonl(self.history_path)
        return [row for row in rows if kind is None or row.get("type") == kind]

    def epochs(self) -> list[dict[str, Any]]:
        """Per-epoch rows, one per epoch number (the latest wins after a resume)."""
        by_epoch: dict[int, dict[str, Any]] = {}
        for row in self.history("epoch"):
            by_epoch[int(row["epoch"])] = row
        return [by_epoch[key] for key in sorted(by_epoch)]

    def truncate_history(self, last_epoch: int) -> None:
        """Drop epoch rows after ``last_epoch`` (used on resume, before training goes on)."""
        rows = [row for row in read_jsonl(self.history_path)
                if not (row.get("type") == "epoch" and int(row.get("epoch", 0)) > last_epoch)]
        atomic_write_text(self.history_path, "".join(json.dumps(row) + "\n" for row in rows))

    def metrics(self) -> dict[str, Any] | None:
        return self.read_json("metrics.json")

    def threshold(self) -> float:
        info = self.read_json("threshold.json")
        return float(info["threshold"]) if info and "threshold" in info else 0.5

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # --- control ----------------------------------------------------------------------------
    def launch(self, resume: bool = False, env: dict[str, str] | None = None) -> int:
        """Start ``python -m core.train --run-dir …`` in its own session; returns its pid."""
        status = self.status()
        if status.active:
            raise RunError(f"run {self.id} is already {status.state}")
        self.stop_path.unlink(missing_ok=True)
        args = [sys.executable, "-m", "core.train", "--run-dir", str(self.path)]
        if resume:
            args.append("--resume")
        self.update_status(state="queued", pid=None, error=None,
                           message="Resuming…" if resume else "Starting…")
        with open(self.log_path, "a") as log:
            proc = subprocess.Popen(
                args, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, start_new_session=True,
            )
        # Reap the child when it ends, so a long-lived launcher (the dashboard) collects no zombies.
        threading.Thread(target=proc.wait, name=f"reap-{self.id}", daemon=True).start()
        self.update_status(pid=proc.pid)
        return proc.pid

    def request_stop(self) -> None:
        """Ask the trainer to stop after the current batch; the best checkpoint is kept."""
        atomic_write_text(self.stop_path, _now())

    def stop_requested(self) -> bool:
        return self.stop_path.exists()

    def kill(self) -> None:
        """Hard stop (SIGTERM to the trainer's process group) for a trainer that does not respond."""
        pid = self.raw_status().pid
        if _trainer_alive(pid):
            os.killpg(os.getpgid(pid), signal.SIGTERM)

    def wait(self, timeout: float = 600, poll: float = 0.5) -> RunStatus:
        """Block until the run is no longer active (for scripts and tests)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = self.status()
            if not status.active:
                return status
            time.sleep(poll)
        raise TimeoutError(f"run {self.id} still {self.status().state} after {timeout:.0f} s")


class RunStore:
    """All runs under one folder (default ``models/``, or ``$CXR_STUDIO_RUNS``)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else default_store_root()

    def __iter__(self) -> Iterator[Run]:
        return iter(self.list())

    def create(self, config: RunConfig) -> Run:
        config.validate()
        self.root.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^a-z0-9]+", "-", config.name.lower()).strip("-")[:40] or "run"
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        for attempt in range(1000):
            run_id = f"{stamp}-{slug}" + (f"-{attempt}" if attempt else "")
            try:
                (self.root / run_id).mkdir()
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 1000 runs in one second
            raise RunError("could not allocate a run id")
        run = Run(self.root / run_id)
        atomic_write_text(run.path / "config.json", config.to_json())
        run.update_status(state="created", created_at=_now())
        return run

    def list(self) -> list[Run]:
        if not self.root.is_dir():
            return []
        runs = [Run(p) for p in self.root.iterdir() if p.is_dir() and (p / "config.json").exists()]
        return sorted(runs, key=lambda run: run.id, reverse=True)

    def get(self, run_id: str) -> Run:
        path = self.root / run_id
        if not re.fullmatch(r"[\w.-]+", run_id) or not (path / "config.json").exists():
            raise RunError(f"no run {run_id!r} in {self.root}")
        return Run(path)

    def delete(self, run_id: str) -> None:
        run = self.get(run_id)
        if run.status().active:
            raise RunError(f"run {run_id} is still running; stop it first")
        shutil.rmtree(run.path)


def _json_default(obj: Any) -> Any:
    """numpy scalars/arrays and paths in JSON."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
