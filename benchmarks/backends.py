"""The quick real-sample preset trained under TensorFlow and under JAX on this machine's CPU, side by side in one run: wall time and the test AUC, sensitivity and specificity of each.

Each round trains the preset once per backend, in alternating order (a change in the machine's load
hits both), as the command a user runs: ``python -m core.train --preset "Quick real-sample demo"
--backend B``, timed from the process start to its exit. JAX keeps its compiled programs on disk
(core.training.device.enable_compile_cache) and the rounds share one cache folder, so its first round
is cold and the later ones warm; TensorFlow compiles nothing ahead on a CPU. There is no target: the
default backend for a CPU is chosen by these figures (docs/gpu.md).

    python -m benchmarks.backends --rounds 2 --out benchmarks/results/backends-cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

from core.config.backend import BACKENDS
from core.config.paths import REPO_ROOT

PRESET = "Quick real-sample demo"


def train_once(backend: str, store: Path, cache: Path) -> dict[str, Any]:
    """One training of the preset in its own process; its wall seconds, outcome and test figures."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "core.train", "--preset", PRESET, "--backend", backend,
                           "--store", str(store)], cwd=REPO_ROOT, capture_output=True, text=True,
                          env={**os.environ, "CXR_STUDIO_CACHE": str(cache), "KERAS_BACKEND": backend})
    seconds = time.perf_counter() - start
    lines = proc.stdout.strip().splitlines()
    summary = json.loads(lines[-1]) if lines else {}
    return {"backend": backend, "seconds": round(seconds, 1), "exit_code": proc.returncode,
            "state": summary.get("state"), "error": summary.get("error"), **(summary.get("metrics") or {})}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per backend: median and range of the seconds over rounds, and the test figures of each round."""
    out = {}
    for backend in sorted({row["backend"] for row in rows}):
        mine = [row for row in rows if row["backend"] == backend and row["state"] == "finished"]
        seconds = [row["seconds"] for row in mine]
        out[backend] = {"rounds": len(mine),
                        "seconds": {"median": median(seconds), "min": min(seconds), "max": max(seconds)} if seconds else None,
                        "roc_auc": [row.get("roc_auc") for row in mine],
                        "sensitivity": [row.get("sensitivity") for row in mine],
                        "specificity": [row.get("specificity") for row in mine]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.backends", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    from benchmarks._common import loadavg, machine  # heavy: Keras (TensorFlow here, the dashboard's backend)

    described, rows = machine(), []  # before the rounds: its load average is the one at the start
    with tempfile.TemporaryDirectory(prefix="cxr-backends-") as folder:
        for round_ in range(args.rounds):
            order = args.backends.split(",")
            for backend in order if round_ % 2 == 0 else order[::-1]:
                row = train_once(backend, Path(folder) / "runs", Path(folder) / "cache")
                row["round"] = round_ + 1
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    result = {"machine": described, "preset": PRESET, "rows": rows, "summary": summarise(rows)}
    result["machine"]["loadavg_end"] = loadavg()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
