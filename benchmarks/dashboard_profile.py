"""Where the dashboard server's CPU time goes: py-spy recording it from outside, and the summary of its samples."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["start_profile", "stop_profile", "IDLE_LEAVES", "summarise_profile"]


def start_profile(pid: int, seconds: float, out: Path) -> subprocess.Popen | None:
    """py-spy recording the server's busy threads in collapsed-stack form, or None when py-spy is not installed."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        return None
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "50",
                             "--format", "raw", "--output", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profile(proc: subprocess.Popen | None) -> None:
    """Stop a recording early (py-spy writes what it has) and wait for it; nothing when there was none."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(2)  # SIGINT: py-spy writes what it has
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


# Leaf frames where a thread waits (py-spy cannot always tell a Python-level sleep or wait from work).
IDLE_LEAVES = ("Condition.wait", "EpollSelector.select", "polling_path_watcher.py:90", "_worker (concurrent/futures",
               "Event.wait", "sleep")


def summarise_profile(path: Path, top: int = 12) -> dict[str, Any]:
    """From py-spy's collapsed stacks: busy samples (waits left out), our functions by inclusive share of them, and
    the leaf functions by self share."""
    inclusive: dict[str, int] = {}
    leaves: dict[str, int] = {}
    total = idle = 0
    if not path.is_file():
        return {"samples": 0}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n, frames = int(count), stack.split(";")
        if any(mark in frames[-1] for mark in IDLE_LEAVES):
            idle += n
            continue
        total += n
        leaves[frames[-1]] = leaves.get(frames[-1], 0) + n
        for frame in set(frames):
            if "dashboard/" in frame or "core/" in frame:
                inclusive[frame] = inclusive.get(frame, 0) + n

    def ranked(counts: dict[str, int]) -> list[list[Any]]:
        return [[frame, round(n / total, 4)] for frame, n in sorted(counts.items(), key=lambda kv: -kv[1])[:top]]

    if not total:
        return {"samples": 0, "idle_samples": idle}
    return {"samples": total, "idle_samples": idle, "ours_inclusive": ranked(inclusive), "leaf_self": ranked(leaves)}

