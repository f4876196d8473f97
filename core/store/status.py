"""A run's status and liveness: the ``status.json`` record and how viewers judge it (the trainer's writer is :mod:`core.store.heartbeat`).

After launch the trainer is the only writer of ``status.json``. Every write carries the host,
the pid (with its start time, so a reused pid is told apart) and the time; a background thread
refreshes it every few seconds. A viewer on any host reads a fresh heartbeat as "running" and a
stale one as "interrupted"; on the trainer's own host a dead process says so at once.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import psutil

__all__ = ["RunStatus", "judge_status", "trainer_gone", "process_alive", "process_start_time",
           "signal_trainer", "HOST", "ACTIVE_STATES", "RESUMABLE_STATES", "HEARTBEAT_SECONDS",
           "STALE_AFTER_SECONDS", "LAUNCH_GRACE_SECONDS", "INTERRUPTED_MESSAGE"]

HOST = socket.gethostname()
ACTIVE_STATES = ("queued", "running")
RESUMABLE_STATES = ("interrupted", "stopped", "failed")
HEARTBEAT_SECONDS = 5.0  # how often a trainer refreshes its status
STALE_AFTER_SECONDS = 45.0  # a "running" status not refreshed for this long has lost its trainer (any host)
LAUNCH_GRACE_SECONDS = 120.0  # how long a trainer launched on another host may take to report
INTERRUPTED_MESSAGE = ("The training process ended without finishing (killed or crashed). "
                       "Resume continues from the last completed epoch.")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunStatus:
    """What a run is doing now, as written by its trainer to ``status.json``."""

    state: str = "created"  # created, queued, running, finished, failed, stopped, interrupted
    host: str | None = None  # where the trainer runs
    pid: int | None = None
    pgid: int | None = None  # the trainer's process group (its own when launched by the run store)
    pid_started: float | None = None  # the process's start time: tells a reused pid apart
    heartbeat_at: float | None = None  # Unix time of the trainer's last write
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
    monitor: str | None = None  # what checkpoints and early stopping follow ("val_loss", "val_exact_auc")
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

    def heartbeat_age(self, now: float | None = None) -> float | None:
        """Seconds since the trainer last wrote, or None when it never did."""
        return None if self.heartbeat_at is None else (time.time() if now is None else now) - self.heartbeat_at

    def set(self, **fields: Any) -> None:
        """Set known fields; an unknown name is a KeyError (a typo must not pass silently)."""
        for key, value in fields.items():
            if key not in RunStatus.__dataclass_fields__:
                raise KeyError(key)
            setattr(self, key, value)


def process_alive(pid: int | None, started: float | None = None) -> bool:
    """True when ``pid`` is a live (non-zombie) process of this host and the one meant.

    With ``started`` (its start time) a reused pid is told apart exactly; without it (records of
    older versions) the command line must name ``core.train``.
    """
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if started is not None:
            return abs(proc.create_time() - started) < 0.5
        return "core.train" in " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def process_start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def signal_trainer(pid: int, pgid: int | None, sig: int) -> None:
    """Signal the trainer's process group when it leads its own (never ours), else the process alone."""
    try:
        if pgid == pid and pgid != os.getpgrp():
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def trainer_gone(status: RunStatus, now: float | None = None) -> bool:
    """True when an active status has lost its trainer: stale heartbeat, or a dead process on this host."""
    if status.host == HOST and not process_alive(status.pid, status.pid_started):
        return True  # no need to wait for the heartbeat to age
    age = status.heartbeat_age(now)
    return age is None or age > STALE_AFTER_SECONDS


def judge_status(status: RunStatus, launch: dict[str, Any] | None, now: float | None = None) -> RunStatus:
    """The status as a viewer should read it (the file is not changed).

    "running" holds while the heartbeat is fresh; a lost trainer reads as "interrupted". A launch
    (``launch.json``) the trainer has not answered yet reads as "queued", or as "failed" once its
    process on this host has died without a word.
    """
    now = time.time() if now is None else now
    if not launch or launch.get("time", 0) <= (status.heartbeat_at or 0):  # no launch, or answered
        if status.active and trainer_gone(status, now):
            status.state, status.message = "interrupted", INTERRUPTED_MESSAGE
        return status
    if launch.get("host") == HOST and not process_alive(launch.get("pid"), launch.get("started")):
        status.state, status.message = "failed", "Failed"
        status.error = "the training process ended before it reported; see log.txt"
    elif launch.get("host") != HOST and now - launch.get("time", 0) > LAUNCH_GRACE_SECONDS:
        status.state, status.message = "interrupted", INTERRUPTED_MESSAGE
    else:
        status.state, status.message = "queued", "Resuming…" if launch.get("resume") else "Starting…"
    return status
