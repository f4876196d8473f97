"""Shared benchmark helpers: machine description, load average, real-data subsets (symlinks), timers, tables, JSON."""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from core.config.paths import REPO_ROOT as REPO  # the one definition of the repository root
from core.data.datasets import CLASS_NAMES as CLASSES  # the class folder names, defined once in core

__all__ = [
    "REPO",
    "CLASSES",
    "default_data",
    "base_parser",
    "budget_flags",
    "machine",
    "loadavg",
    "timer",
    "link_subset",
    "link_records",
    "peak_rss_gib",
    "table",
    "finish",
    "ours_precision",
]


def default_data() -> Path:
    """``../shared/data/chest_xray`` relative to the repository root (never an absolute path of one machine)."""
    return REPO.parent / "shared" / "data" / "chest_xray"


def base_parser(description: str, parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    """A benchmark's parser: ``--quick``, ``--data`` and ``--out``, then the flags of ``parents``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quick", action="store_true",
                        help="small settings that finish in under 5 minutes on 2 CPU cores")
    common.add_argument("--data", type=Path, default=default_data(),
                        help="Kaggle-layout chest_xray folder (default: %(default)s)")
    common.add_argument("--out", type=Path, help="write the figures as JSON here (default: print only)")
    return argparse.ArgumentParser(description=description, parents=[common, *parents])


def budget_flags() -> argparse.ArgumentParser:
    """A parent parser: how much training a member gets in benchmarks.sweep and benchmarks.augmentation (image size,
    films per class, epochs per phase), with the defaults both apply (``--quick`` in brackets)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--image-size", type=int, help="default 224 (--quick 128)")
    p.add_argument("--max-images-per-class", type=int,
                   help="cap on training films per class (default all; --quick 100)")
    p.add_argument("--head-epochs", type=int, help="default 3 (--quick 1)")
    p.add_argument("--finetune-epochs", type=int, help="default 3 (--quick 1)")
    return p


def loadavg() -> list[float]:
    """1, 5 and 15 minute load averages: other users of the CPU make every timing here slower."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Windows
        return []


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")
    return [flag for flag in wanted if f" {flag}" in text]


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU, cores usable, memory, accelerators, library versions, load."""
    import keras
    import psutil

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        usable = os.cpu_count()
    if keras.backend.backend() != "tensorflow":  # Keras on JAX: no TensorFlow to ask (the GPU machine has none)
        import jax

        gpus = [d.device_kind for d in jax.devices() if d.platform == "gpu"]
        libraries = {"keras_backend": keras.backend.backend(), "jax": jax.__version__}
    else:
        import tensorflow as tf

        gpus = [g.name for g in tf.config.list_physical_devices("GPU")]
        libraries = {"keras_backend": "tensorflow", "tensorflow": tf.__version__}
    return {
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cores": usable,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": gpus,
        "gpu_note": "no GPU on this machine (none lent to this task)" if not gpus else "",
        "python": platform.python_version(),
        **libraries,
        "keras": keras.__version__,
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", _module_name()] + sys.argv[1:]),
        "loadavg_start": loadavg(),
    }


def _module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec and spec.name else Path(sys.argv[0]).stem


@contextmanager
def timer(into: dict, key: str) -> Iterator[None]:
    """Adds the wall seconds of the block to ``into[key]``, and the load average when it ended."""
    start = time.perf_counter()
    try:
        yield
    finally:
        into[key] = into.get(key, 0.0) + time.perf_counter() - start
        into.setdefault("loadavg", {})[key] = loadavg()


def link_records(paths_by_class: dict[str, Sequence[str | Path]], root: Path, split: str) -> Path:
    """Symlink files into ``root/split/<class>/`` (real files stay where they are; nothing is copied)."""
    for cls, paths in paths_by_class.items():
        folder = root / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        for path in paths:
            path = Path(path).resolve()
            link = folder / path.name
            if not link.exists():
                link.symlink_to(path)
    return root / split


def link_subset(data: Path, root: Path, split: str, per_class: int | None, seed: int = 0) -> dict[str, list[Path]]:
    """A balanced, seeded subset of ``data/split`` (every file when ``per_class`` is None) symlinked
    into ``root/split``; returns the chosen files."""
    if not (data / split).is_dir():
        raise SystemExit(f"no {split}/ folder in {data}: pass --data pointing at a Kaggle-layout chest_xray folder")
    rng = random.Random(seed)
    chosen = {}
    for cls in CLASSES:
        files = sorted(p for p in (data / split / cls).iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
        if per_class is None:
            chosen[cls] = files
            continue
        if len(files) < per_class:
            raise SystemExit(f"{data / split / cls} has {len(files)} images; {per_class} asked")
        chosen[cls] = sorted(rng.sample(files, per_class))
    link_records(chosen, root, split)
    return chosen


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain fixed-width table for the terminal."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(headers)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(out)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def finish(result: dict[str, Any], out: Path | None, text: str) -> None:
    """Print the human table and write the JSON figures when ``--out`` is given."""
    result.setdefault("machine", {})["loadavg_end"] = loadavg()
    print()
    print(text)
    print(f"\nload average start {result['machine'].get('loadavg_start')} end {result['machine']['loadavg_end']} "
          f"(1/5/15 min; {result['machine'].get('cores')} cores; other users of this CPU slow every figure)")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str))
        print(f"figures written to {out}")


def ours_precision(choice: str, backbone: str = "vgg16") -> str:
    """The dtype policy "ours" runs with: the product's automatic choice for this CPU, or the one asked for."""
    if choice != "auto":
        return choice
    from core.training.device import plan_device

    return plan_device("cpu", "auto", False, backbone=backbone).precision
