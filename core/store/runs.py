"""The run store: one folder per training run — create, list, read status and history, launch, stop, delete.

The folder is the only interface between a trainer and its viewers: every write is atomic
(temp file + rename) or an append of whole JSON lines, and readers tolerate a torn last line,
so a dashboard refresh, a second viewer or a killed trainer never corrupts or loses a run.
After launch the trainer is the only writer of ``status.json``; the launcher records what it
started in ``launch.json``. Liveness is the trainer's heartbeat (host, pid, time), so a run
trained on another host that shares the folder reads as running there and here.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from core.config import RunConfig
from core.config.paths import REPO_ROOT
from core.store.files import atomic_write_text, json_default, latest_epochs, read_jsonl
from core.store.status import ACTIVE_STATES, HOST, RESUMABLE_STATES, RunStatus, judge_status
from core.store.status import now_iso as _now
from core.store.status import process_alive, process_start_time, signal_trainer, trainer_gone

__all__ = ["RunError", "StopRequested", "RunStatus", "Run", "RunStore", "default_store_root", "ACTIVE_STATES",
           "RESUMABLE_STATES", "STARTER_MARKER", "LOG_FORMAT"]


FINAL_STATES = ("finished", "failed", "stopped", "interrupted")
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"  # the line format of a run's log.txt
STARTER_MARKER = "starter.json"  # in a run folder shipped with the repository (models/starter-*): never deleted here
TRAINER_NICE_ENV = "CXR_STUDIO_TRAINER_NICE"
DEFAULT_TRAINER_NICE = 10  # a launched trainer yields the CPU to the dashboard that shows it (benchmarks/dashboard.py)


def trainer_nice(env: Mapping[str, str]) -> int:
    """The nice value a launched trainer runs at: ``CXR_STUDIO_TRAINER_NICE`` in ``env``, else the default."""
    value = env.get(TRAINER_NICE_ENV, "")
    try:
        return min(max(int(value), 0), 19) if value.strip() else DEFAULT_TRAINER_NICE
    except ValueError:
        return DEFAULT_TRAINER_NICE


def lower_own_priority(env: Mapping[str, str]) -> int:
    """Set this process's nice value to what its launcher asked for (``CXR_STUDIO_TRAINER_NICE``), never higher
    priority than it already has; idempotent, so a sweep member started by a lowered coordinator ends up the same.
    Returns the nice value in effect (unchanged when nothing was asked)."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if TRAINER_NICE_ENV not in env:
        return current
    wanted = max(trainer_nice(env), current)
    if wanted != current:
        os.setpriority(os.PRIO_PROCESS, 0, wanted)
    return wanted


class RunError(RuntimeError):
    """A run-store operation that cannot be done (unknown run, deleting a running run, …)."""


class StopRequested(Exception):
    """Raised in the trainer when a stop was asked (stop-request file or SIGTERM); the run ends "stopped"."""


def default_store_root() -> Path:
    """``$CXR_STUDIO_RUNS`` if set, else the repository's ``models/`` folder."""
    return Path(os.environ.get("CXR_STUDIO_RUNS") or REPO_ROOT / "models")


class Run:
    """One run folder: ``config.json``, ``status.json``, ``history.jsonl``, ``model.keras``, … ."""

    ENTRY_POINT = "core.train"  # the module :meth:`launch` starts on this folder

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
        atomic_write_text(self.path / name, json.dumps(obj, indent=2, default=json_default))

    # --- config / status / history ----------------------------------------------------------
    def config(self) -> RunConfig:
        return RunConfig.from_dict(self.read_json("config.json") or {})

    def raw_status(self) -> RunStatus:
        return RunStatus.from_dict(self.read_json("status.json") or {})

    def launch_record(self) -> dict[str, Any] | None:
        """What the last launcher started (``launch.json``: pid, pgid, host, time), if any."""
        return self.read_json("launch.json")

    def status(self, now: float | None = None) -> RunStatus:
        """The status as a viewer should read it: running while the trainer's heartbeat is fresh (see
        :func:`core.store.status.judge_status`)."""
        return judge_status(self.raw_status(), self.launch_record(), now)

    def update_status(self, **fields: Any) -> RunStatus:
        """Set status fields (run creation and tests; a trainer writes through :class:`StatusWriter`)."""
        status = self.raw_status()
        status.set(**fields, updated_at=_now())
        self.write_json("status.json", asdict(status))
        return status

    def append_history(self, entry: dict[str, Any]) -> None:
        """Append one JSON line (one write call, flushed), so a crash can tear only the last line."""
        line = json.dumps({"time": time.time(), **entry}, default=json_default) + "\n"
        with open(self.history_path, "a") as handle:
            handle.write(line)
            handle.flush()

    def history(self, kind: str | None = None) -> list[dict[str, Any]]:
        rows = read_jsonl(self.history_path)
        return [row for row in rows if kind is None or row.get("type") == kind]

    def epochs(self) -> list[dict[str, Any]]:
        """Per-epoch rows, one per epoch number (the latest wins after a resume)."""
        return latest_epochs(self.history("epoch"))

    def truncate_history(self, last_epoch: int) -> None:
        """Drop epoch rows after ``last_epoch`` (used on resume, before training goes on)."""
        rows = [row for row in read_jsonl(self.history_path)
                if not (row.get("type") == "epoch" and int(row.get("epoch", 0)) > last_epoch)]
        atomic_write_text(self.history_path, "".join(json.dumps(row) + "\n" for row in rows))

    def metrics(self) -> dict[str, Any] | None:
        return self.read_json("metrics.json")

    @property
    def starter(self) -> dict[str, Any] | None:
        """The starter marker (``starter.json``) of a run shipped with the repository, else None."""
        if not (self.path / STARTER_MARKER).is_file():
            return None
        return self.read_json(STARTER_MARKER) or {}  # an unreadable marker still protects the run

    def official_test_metrics(self) -> dict[str, Any] | None:
        """A starter's evaluation on the full test split of its ``splits.json`` (the file its ``starter.json`` names
        under ``official_test_metrics``), kept beside a ``metrics.json`` that is on the bundled sample's films; else None."""
        name = (self.starter or {}).get("official_test_metrics")
        if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+\.json", name):
            return None
        return self.read_json(name)

    def threshold(self) -> float:
        info = self.read_json("threshold.json")
        return float(info["threshold"]) if info and "threshold" in info else 0.5

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # --- control ----------------------------------------------------------------------------
    def live_trainer(self) -> str | None:
        """Who trains this run now, in words, or None: a fresh heartbeat on any host, or a live local process."""
        status = self.raw_status()
        where = f"on {status.host or 'an unknown host'} (pid {status.pid})"
        if status.active and not trainer_gone(status):
            return f"a trainer {where} is running it (heartbeat {status.heartbeat_age():.0f} s ago)"
        if status.host == HOST and process_alive(status.pid, status.pid_started):
            return f"its trainer process {where} is still alive although silent; force-stop it first"
        return None

    def check_can_start(self, resume: bool, by_trainer: bool = False) -> None:
        """Raise :class:`RunError` unless this run may be started (new) or resumed now.

        ``by_trainer``: asked by the trainer a launch just started, whose own launch must not count.
        """
        status = judge_status(self.raw_status(), None) if by_trainer else self.status()
        owner = self.live_trainer()
        if owner or status.state == "queued":
            raise RunError(f"run {self.id} cannot be {'resumed' if resume else 'started'}: "
                           + (owner or "a trainer was just launched for it"))
        if resume and status.state not in RESUMABLE_STATES + ("created",):
            raise RunError(f"run {self.id} is {status.state}: there is nothing to resume")
        if not resume and status.state != "created":
            raise RunError(f"run {self.id} was already started ({status.state}): resume it or create a new run")

    def launch(self, resume: bool = False, env: dict[str, str] | None = None) -> int:
        """Start ``python -m core.train --run-dir …`` in its own session; returns its pid.

        Only ``launch.json`` is written here: from now on the trainer owns ``status.json``.
        """
        proc = self.spawn(resume, env)
        # Reap the child when it ends, so a long-lived launcher (the dashboard) collects no zombies.
        threading.Thread(target=proc.wait, name=f"reap-{self.id}", daemon=True).start()
        return proc.pid

    def spawn(self, resume: bool = False, env: dict[str, str] | None = None, *, own_session: bool = True,
              command: list[str] | None = None) -> subprocess.Popen:
        """Start ``command`` (default ``python -m <ENTRY_POINT>``) ``--run-dir …`` and record it in ``launch.json``.

        ``own_session=False`` keeps the trainer in the caller's process group (a sweep's coordinator,
        whose hard stop must reach its member too).
        """
        self.check_can_start(resume)
        self.stop_path.unlink(missing_ok=True)
        args = [*(command or [sys.executable, "-m", self.ENTRY_POINT]), "--run-dir", str(self.path)]
        if resume:
            args.append("--resume")
        started = time.time()  # before the trainer can write: its heartbeat is always later
        with open(self.log_path, "a") as log:
            proc = subprocess.Popen(
                args, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={TRAINER_NICE_ENV: str(DEFAULT_TRAINER_NICE), **os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                start_new_session=own_session,
            )
        self.write_json("launch.json", {"pid": proc.pid, "pgid": proc.pid if own_session else None, "host": HOST,
                                        "time": started, "started": process_start_time(proc.pid), "resume": resume})
        return proc

    def request_stop(self) -> None:
        """Ask the trainer to stop after the current batch (works across hosts); the best checkpoint is kept."""
        atomic_write_text(self.stop_path, _now())

    def stop_requested(self) -> bool:
        return self.stop_path.exists()

    def kill(self, grace: float = 10.0, poll: float = 0.1) -> bool:
        """Hard stop of a trainer on this host: SIGTERM, then SIGKILL after ``grace`` seconds.

        Signals go to the trainer's own process group when it leads one (as launched here), else
        to its pid alone. Returns True when a process was signalled.

        Raises:
            RunError: the trainer runs on another host (only :meth:`request_stop` reaches it).
        """
        target = self._local_process()
        if target is None:
            status = self.status()
            if status.active and status.host not in (None, HOST):
                raise RunError(f"run {self.id} trains on {status.host}: stop it there, or use Stop (a stop request)")
            return False
        pid, pgid, started = target
        signal_trainer(pid, pgid, signal.SIGTERM)
        deadline = time.time() + grace
        while time.time() < deadline and process_alive(pid, started):
            time.sleep(poll)
        if process_alive(pid, started):
            signal_trainer(pid, pgid, signal.SIGKILL)
        return True

    def _local_process(self) -> tuple[int, int | None, float | None] | None:
        """The live trainer process on this host (from the status, else the launch record)."""
        status = self.raw_status()
        if status.host == HOST and process_alive(status.pid, status.pid_started):
            return status.pid, status.pgid, status.pid_started
        launch = self.launch_record() or {}
        if launch.get("host") == HOST and process_alive(launch.get("pid"), launch.get("started")):
            return launch["pid"], launch.get("pgid"), launch.get("started")
        return None

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
        # Newest first by creation time, so a shipped starter run (its id is not a date) never hides a new run.
        return sorted(runs, key=lambda run: (run.raw_status().created_at or "", run.id), reverse=True)

    def resumable(self) -> list[Run]:
        """Runs that ended without finishing (interrupted, stopped, failed), newest first."""
        return [run for run in self.list() if run.status().state in RESUMABLE_STATES]

    def get(self, run_id: str) -> Run:
        path = self.root / run_id
        if not re.fullmatch(r"[\w.-]+", run_id) or not (path / "config.json").exists():
            raise RunError(f"no run {run_id!r} in {self.root}")
        return Run(path)

    def delete(self, run_id: str) -> None:
        run = self.get(run_id)
        if run.starter is not None:
            raise RunError(f"run {run_id} is the starter model shipped with the repository ({STARTER_MARKER}); it is "
                           "not deleted from the dashboard. Remove its folder by hand if you really mean to "
                           "(`git checkout -- models/` brings it back).")
        if run.status().active or run.live_trainer():
            raise RunError(f"run {run_id} is still running; stop it first")
        shutil.rmtree(run.path)
