"""Waiting in tests: the one polling helper. It polls a condition and fails, saying what it waited for, when it never holds."""
from __future__ import annotations

import inspect
import time
from typing import Any, Callable


def wait_for(condition: Callable[[], Any], timeout: float, run=None, *, poll: float = 0.05,
             what: str | None = None) -> None:
    """Poll ``condition()`` until it holds; raise AssertionError naming ``what`` was awaited when it never does.

    ``timeout`` (seconds) only stops a wait that would otherwise hang; the condition is checked at
    least once. With ``run`` (a :class:`core.store.runs.Run`) the wait fails as soon as the run
    fails, and either failure shows the run's status and the tail of its ``log.txt``. ``what``
    defaults to the condition's source line.
    """
    what = what or _describe(condition)
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if run is not None and run.raw_status().state == "failed":
            raise AssertionError(f"run {run.id} failed while waiting for {what}: {run.raw_status().error}\n"
                                 f"{run.log_tail()}")
        if time.monotonic() >= deadline:
            break
        time.sleep(poll)
    message = f"timed out after {timeout:g} s waiting for {what}"
    if run is not None:
        message += f"; run {run.id} status {run.status()}\n{run.log_tail()}"
    raise AssertionError(message)


def _describe(condition: Callable[[], Any]) -> str:
    try:
        return "`" + inspect.getsource(condition).strip() + "`"
    except (OSError, TypeError):
        return repr(condition)
