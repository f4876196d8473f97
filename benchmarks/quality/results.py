"""Run files copied into the repository's results, with every path of this machine made portable."""
from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.quality.orchestrate import RowOutcome
from benchmarks.quality.paths import REPO, RESULT_FILES

__all__ = ["path_roots", "portable_text", "portable", "portable_arg", "copy_run_files", "copy_row_results"]


def path_roots(*extra: tuple[str | Path | None, str]) -> list[tuple[str, str]]:
    """``(absolute prefix, what it becomes)`` pairs, longest prefix first: the repository becomes relative paths,
    its parent ``..`` (``../shared/data/…``), the home folder ``~``; ``extra`` folders elsewhere (the data root, the
    run store, the image cache, a results folder) get the given placeholder."""
    pairs: list[tuple[str, str]] = [(str(REPO), ""), (str(REPO.parent), "..")]
    for folder, label in extra:
        if not folder:
            continue
        path = Path(folder).expanduser().absolute()
        if not (path.resolve().is_relative_to(REPO.parent.resolve()) or path.is_relative_to(REPO.parent)):
            pairs.append((str(path), label))
    pairs.append((str(Path.home()), "~"))
    out: dict[str, str] = {}
    for prefix, label in pairs:
        for variant in (prefix, str(Path(prefix).resolve())):
            if variant not in ("/", "") and variant not in out:
                out[variant] = label
    return sorted(out.items(), key=lambda pair: len(pair[0]), reverse=True)


def portable_text(text: str, roots: Sequence[tuple[str, str]]) -> str:
    """``text`` with every path of this machine in it rewritten by :func:`path_roots`' rules."""
    for prefix, label in roots:
        if prefix not in text:
            continue

        def swap(match: re.Match, label: str = label) -> str:
            if match.group(1):  # the prefix is a folder of the path: keep what follows it
                return f"{label}/" if label else ""
            return label or "."

        text = re.sub(re.escape(prefix) + r"(?:(/)|(?![\w.~/-]))", swap, text)
    return text


def portable(obj: Any, roots: Sequence[tuple[str, str]]) -> Any:
    """``obj`` (JSON data) with every path of this machine rewritten by :func:`path_roots`' rules."""
    if isinstance(obj, str):
        return portable_text(obj, roots)
    if isinstance(obj, dict):
        return {key: portable(value, roots) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(value, roots) for value in obj]
    return obj


def portable_arg(arg: str, roots: Sequence[tuple[str, str]]) -> str:
    """A command-line argument as the report shows it: paths as :func:`portable` writes them, any other absolute
    path (``--out /elsewhere/report.md``) as ``…/`` and its file name."""
    flag, equals, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
    value = portable_text(value, roots)
    if os.path.isabs(value):
        value = f"…/{Path(value).name}"
    return f"{flag}{equals}{value}"


def copy_run_files(run_path: str | Path, dest: Path, roots: Sequence[tuple[str, str]]) -> list[str]:
    """Copy a run's metrics.json, config.json, threshold.json (and ensemble.json) into ``dest``, paths made portable."""
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in RESULT_FILES:
        source = Path(run_path) / name
        if source.is_file():
            data = portable(json.loads(source.read_text()), roots)
            (dest / name).write_text(json.dumps(data, indent=2) + "\n")
            copied.append(name)
    return copied


def copy_row_results(outcome: RowOutcome, folder: Path, roots: Sequence[tuple[str, str]]) -> None:
    """The row's folder afresh: ``seed<N>/`` per seed run and ``ensemble/``; each result notes where it went."""
    shutil.rmtree(folder, ignore_errors=True)  # a rerun of the row replaces its earlier files
    for result in outcome.all_results:
        if not result.run_path:
            continue
        dest = folder / (f"seed{result.seed}" if result.seed is not None else "ensemble")
        if copy_run_files(result.run_path, dest, roots):
            result.results_dir = portable_text(str(dest.absolute()), roots)
