"""The quality report as one data set's section of a Markdown results file, between its start and end markers."""
from __future__ import annotations

import re
from pathlib import Path

__all__ = ["SECTION_START", "SECTION_END", "start_marker", "write_section"]

SECTION_START = "<!-- benchmarks.quality:{kind} start: written by python -m benchmarks.quality; edit outside -->"
SECTION_END = "<!-- benchmarks.quality:{kind} end -->"


def start_marker(kind: str) -> str:
    """What marks the start of ``kind``'s section in a results file (the start marker up to its note)."""
    return SECTION_START.format(kind=kind).split(":", 1)[0] + f":{kind} start"


def write_section(path: Path, kind: str, text: str) -> None:
    """Put the report between this data set's markers in ``path`` (appended, with its markers, when absent)."""
    start, end = SECTION_START.format(kind=kind), SECTION_END.format(kind=kind)
    block = f"{start}\n\n{text.rstrip()}\n\n{end}"
    old = path.read_text() if path.is_file() else ""
    pattern = re.compile(re.escape(start_marker(kind)) + r".*?" + re.escape(end), re.S)
    if pattern.search(old):
        new = pattern.sub(lambda _: block, old, count=1)
    else:
        new = (old.rstrip() + "\n\n" if old.strip() else "") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)
