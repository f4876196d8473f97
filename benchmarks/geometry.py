"""Does the film's geometry carry the class? The same preset trained once per resize mode, each run tested and audited.

    python -m benchmarks.geometry [--preset "Quick real-sample demo"] [--variants stretch center_square preprocessed]
        [--seeds 42] [--store DIR] [--out benchmarks/results/geometry.json]

Each variant (:data:`VARIANTS`: ``stretch`` squashes every film to a square, ``letterbox`` pads it,
``center_square`` keeps the centred square of its shorter side, ``preprocessed`` crops to the body,
takes that box's centred square, inpaints burnt-in markers and applies CLAHE) trains the preset as a
normal run (``python -m core.train``), which chooses its threshold on validation and is evaluated
once on its test films; then the shortcut audit (``core.evaluation.audit``) measures on those
films the calls that change without the border or the markers, and the shape cue: within each
true class, Spearman's ρ between P(pneumonia) and the film's original width/height. Nothing is
chosen on the test films here: the table only reports what each mode gives.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks._common import base_parser, finish, machine, table
from core.config import PRESETS, RESIZE_MODES, preset
from core.config.paths import REPO_ROOT
from core.store.runs import RunStore

__all__ = ["VARIANTS", "train_and_audit", "main"]

# The data settings of each variant, on top of the preset's own: a resize mode alone (no preprocessing, whatever the
# preset has), or the preprocessing the Quick real-sample demo preset uses.
VARIANTS: dict[str, dict[str, Any]] = {
    **{mode: {"data.resize_mode": mode, "data.field_of_view": "full", "data.remove_markers": False,
              "data.intensity": "none"} for mode in RESIZE_MODES},
    "preprocessed": {"data.resize_mode": "center_square", "data.field_of_view": "body", "data.remove_markers": True,
                     "data.intensity": "clahe"},
}


def train_and_audit(store: RunStore, preset_name: str, mode: str, seed: int) -> dict[str, Any]:
    """One run of the preset at this resize mode and seed, trained in its own process, then audited."""
    from core.evaluation.audit import shortcut_audit  # heavy: Keras, TensorFlow

    config = preset(preset_name).with_overrides(**{**VARIANTS[mode], "train.seed": seed,
                                                   "name": f"geometry-{mode}-seed{seed}"})
    run = store.create(config)
    done = subprocess.run([sys.executable, "-m", "core.train", "--run-dir", str(run.path)], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    if done.returncode != 0 or run.status().state != "finished":
        raise RuntimeError(f"{run.id} did not finish: {run.status().error or done.stderr[-500:]}")
    metrics, status = run.metrics(), run.status()
    audit = shortcut_audit(run)
    trained = (datetime.fromisoformat(status.finished_at) - datetime.fromisoformat(status.started_at)).total_seconds()
    return {"mode": mode, "seed": seed, "run_id": run.id, "train_seconds": round(trained, 1),  # status.json's start → end
            "n": metrics["n"], "threshold": metrics["threshold"],
            **{k: metrics[k] for k in ("accuracy", "sensitivity", "specificity", "roc_auc")},
            "ci": {k: metrics["ci"].get(k) for k in ("sensitivity", "specificity", "roc_auc")},
            "border_flips": audit["border"]["per_class"], "marker_films": audit["markers"]["films"],
            "marker_flips": audit["markers"]["flipped"], "shape": audit["shape"], "reading": audit["reading"]}


def _rho(entry: dict[str, Any]) -> str:
    if entry.get("rho") is None:
        return "n/a"
    lo, hi = entry["ci"]
    return f"{entry['rho']:+.2f} [{lo:+.2f}, {hi:+.2f}]" if lo is not None else f"{entry['rho']:+.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--preset", default="Quick real-sample demo", choices=list(PRESETS))
    parser.add_argument("--variants", "--modes", nargs="+", default=["stretch", "center_square", "preprocessed"],
                        choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--store", type=Path, help="run store for the runs (default: a temporary folder)")
    args = parser.parse_args(argv)
    from core.jobs.commands.startup import import_tensorflow_quietly  # heavy: TensorFlow, quietly

    import_tensorflow_quietly()
    store = RunStore(args.store or Path(tempfile.mkdtemp(prefix="cxr-geometry-")))
    result = {"benchmark": "geometry", "preset": args.preset, "machine": machine(),
              "runs": [train_and_audit(store, args.preset, mode, seed) for seed in args.seeds for mode in args.variants]}
    rows = [[r["mode"], r["seed"], f"{r['roc_auc']:.3f}", f"{100 * r['sensitivity']:.1f} %",
             f"{100 * r['specificity']:.1f} %",
             f"{r['border_flips']['NORMAL']['flipped']}/{r['border_flips']['NORMAL']['n']}",
             f"{r['border_flips']['PNEUMONIA']['flipped']}/{r['border_flips']['PNEUMONIA']['n']}",
             _rho(r["shape"]["NORMAL"]), _rho(r["shape"]["PNEUMONIA"])] for r in result["runs"]]
    finish(result, args.out, table(rows, ["mode", "seed", "test AUC", "sensitivity", "specificity",
                                          "NORMAL flips w/o border", "PNEUMONIA flips", "ρ NORMAL", "ρ PNEUMONIA"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
