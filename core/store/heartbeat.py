"""The trainer's side of ``status.json``: the one writer after launch, stamping host, pid and time, with a heartbeat thread."""
from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict
from typing import Any

from core.store.runs import Run
from core.store.status import HEARTBEAT_SECONDS, HOST, RunStatus, now_iso, process_start_time

__all__ = ["StatusWriter"]


class StatusWriter:
    """The trainer's side of ``status.json``: the one writer after launch, with a heartbeat thread.

    It keeps the status in memory, so the heartbeat and the training loop never overwrite each
    other's fields, and stamps every write with host, pid and time. Use as a context manager.
    """

    def __init__(self, run: Run, interval: float = HEARTBEAT_SECONDS):
        self.run = run
        self.interval = interval
        self._status = run.raw_status()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = process_start_time(os.getpid())

    def update(self, **fields: Any) -> RunStatus:
        """Set fields and write the whole status atomically, with a fresh heartbeat."""
        with self._lock:
            self._status.set(**fields)
            self._status.set(host=HOST, pid=os.getpid(), pgid=os.getpgrp(), pid_started=self._started,
                             heartbeat_at=time.time(), updated_at=now_iso())
            self.run.write_json("status.json", asdict(self._status))
            return RunStatus.from_dict(asdict(self._status))

    def start(self, **fields: Any) -> "StatusWriter":
        """Write ``fields`` now, then refresh the heartbeat every ``interval`` seconds."""
        self.update(**fields)
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{self.run.id}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> "StatusWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.update()
            except OSError:
                continue  # a full disk or a lost share: the next beat retries, and staleness shows it
