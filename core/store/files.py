"""Run-folder files that readers can trust: atomic writes, JSON lines that tolerate a torn last line, and a history read incrementally."""
from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_text", "json_lines", "read_jsonl", "HistoryTail", "latest_epochs", "json_default"]


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


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON rows of ``text``, one per line; blank lines and lines that do not parse (torn by a crash) are skipped."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # torn write at the end of the file, or a line cut by a crash
    return rows


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All complete JSON lines of a file; a torn (partly written) last line is ignored."""
    if not path.exists():
        return []
    return json_lines(path.read_text(errors="replace"))


class HistoryTail:
    """A history file read incrementally: each :meth:`rows` call parses only the complete lines appended since the last.

    A viewer that polls a live run (the Train page, every refresh) keeps one per run instead of re-reading and
    re-parsing the whole file each time. A file that was replaced (a resume truncates it by an atomic rewrite) or
    shrank is read again from the start. Safe to share between threads.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._rows: list[dict[str, Any]] = []
        self._offset = 0
        self._identity: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            try:
                info = os.stat(self.path)
            except FileNotFoundError:
                self._rows, self._offset, self._identity = [], 0, None
                return []
            identity = (info.st_dev, info.st_ino)
            if identity != self._identity or info.st_size < self._offset:
                self._rows, self._offset, self._identity = [], 0, identity
            if info.st_size > self._offset:
                with open(self.path, "rb") as handle:
                    handle.seek(self._offset)
                    data = handle.read(info.st_size - self._offset)
                complete = data.rfind(b"\n") + 1  # a torn last line waits for its end
                self._rows += json_lines(data[:complete].decode(errors="replace"))
                self._offset += complete
            return list(self._rows)


def latest_epochs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-epoch rows of a history, one per epoch number (the latest wins after a resume), in epoch order."""
    by_epoch: dict[int, dict[str, Any]] = {}
    for row in rows:
        if row.get("type") == "epoch":
            by_epoch[int(row["epoch"])] = row
    return [by_epoch[key] for key in sorted(by_epoch)]


def json_default(obj: Any) -> Any:
    """numpy scalars/arrays and paths in JSON."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
