"""Waiting on a run in tests: poll a condition, and show the run's log when it fails or times out."""
from __future__ import annotations

import time


def wait_for(condition, timeout: float, run, poll: float = 0.05) -> None:
    """Poll ``condition()`` until it holds; fail early, with the log's tail, when the run fails or time runs out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if run.raw_status().state == "failed":
            raise AssertionError(f"run failed: {run.raw_status().error}\n{run.log_tail()}")
        time.sleep(poll)
    raise AssertionError(f"timed out; status {run.status()}\n{run.log_tail()}")
