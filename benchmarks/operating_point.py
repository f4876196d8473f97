"""Operating-point experiment: which threshold rule holds up, judged on validation only, over several seeds.

    python -m benchmarks.operating_point RUN_ID RUN_ID RUN_ID [--repeats 50] [--out benchmarks/results/operating_point.json]

Each run is a finished run of the same recipe with a different seed. For each run the validation
images listed in its ``splits.json`` are predicted once with its best checkpoint (the test split
is never read). Then, for every rule of ``core.evaluation.threshold``:

- **held out**: validation is cut in two halves by patient (stratified, ``--repeats`` times per
  run); the rule chooses its threshold on one half and is scored on the other, both ways round.
  The score is the held-out balanced accuracy (mean of sensitivity and specificity), and its
  spread shows how much the rule's choice depends on which films it saw;
- **across seeds**: the threshold each seed's full validation set gives, in logit space; its
  standard deviation is the seed-to-seed flip the quality issue measured (0.059 vs 0.350).

The default rule is the one with the best mean held-out balanced accuracy; rules within half a
point of it are ranked by the smaller seed-to-seed spread of their threshold.
"""
from __future__ import annotations

import sys
from typing import Any, Sequence

import numpy as np

from benchmarks._common import base_parser, finish, machine, table

__all__ = ["validation_predictions", "compare_rules", "pick_default", "main"]


def validation_predictions(run) -> dict[str, np.ndarray]:
    """Labels, P(PNEUMONIA) and patient ids of a run's validation images (its saved list, its best model).

    Read from the run's ``threshold.json`` when the trainer saved them there; else predicted again.
    """
    saved = (run.read_json("threshold.json") or {}).get("validation")
    if saved:
        return {"y": np.asarray(saved["labels"], dtype=int), "p": np.asarray(saved["probabilities"], dtype=float),
                "groups": np.asarray(saved["patients"])}
    from core.evaluation.evaluate import predict_probabilities
    from core.model.classifier import load_model
    from core.data.pipeline import load_arrays, make_dataset
    from core.data.preprocess import Preprocessing
    from core.data.splits import saved_splits

    config = run.config()
    splits = saved_splits(run.path)
    if splits is None:
        raise SystemExit(f"run {run.id} has no splits.json: train it with the current code first")
    loaded = load_arrays(splits.val, config.data.image_size, config.data.resize_mode, cache=config.data.cache,
                         preprocessing=Preprocessing.of(config.data))
    prob = predict_probabilities(load_model(run.model_path), make_dataset(*loaded, 64, training=False))
    patients = np.array([splits.val[i].patient or splits.val[i].path for i in loaded.kept])
    return {"y": np.asarray(loaded.labels, dtype=int), "p": prob, "groups": patients}


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return float(np.log(p / (1 - p)))


def _rates(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float, float]:
    called = p >= threshold
    return float(called[y == 1].mean()), float((~called[y == 0]).mean())


def compare_rules(per_run: Sequence[dict[str, np.ndarray]], repeats: int = 50,
                  target_sensitivity: float = 0.95) -> dict[str, dict[str, Any]]:
    """Held-out and across-seed figures of every rule (see the module docstring)."""
    from sklearn.model_selection import StratifiedGroupKFold

    from core.config.catalog import THRESHOLD_METHODS
    from core.evaluation.threshold import choose_threshold

    out: dict[str, dict[str, Any]] = {}
    for method in THRESHOLD_METHODS:
        held_out: list[tuple[float, float]] = []
        logits: list[float] = []
        for data in per_run:
            y, p, groups = data["y"], data["p"], data["groups"]
            logits.append(_logit(choose_threshold(y, p, method, target_sensitivity, groups=groups)))
            for repeat in range(repeats):
                halves = StratifiedGroupKFold(n_splits=2, shuffle=True, random_state=repeat)
                for choose, score in halves.split(p, y, groups):
                    t = choose_threshold(y[choose], p[choose], method, target_sensitivity, groups=groups[choose],
                                         n_boot=50, seed=repeat)
                    held_out.append(_rates(y[score], p[score], t))
        sens, spec = np.array(held_out).T
        balanced = (sens + spec) / 2
        out[method] = {
            "held_out_balanced_accuracy": float(balanced.mean()), "held_out_balanced_accuracy_sd": float(balanced.std()),
            "held_out_sensitivity": float(sens.mean()), "held_out_specificity": float(spec.mean()),
            "held_out_specificity_sd": float(spec.std()),
            "thresholds": [float(1 / (1 + np.exp(-z))) for z in logits],
            "threshold_logit_sd_across_seeds": float(np.std(logits)),
        }
    return out


def pick_default(results: dict[str, dict[str, Any]], tolerance: float = 0.005) -> str:
    """Best held-out balanced accuracy; within ``tolerance`` of it, the steadiest threshold across seeds."""
    best = max(r["held_out_balanced_accuracy"] for r in results.values())
    close = [m for m, r in results.items() if r["held_out_balanced_accuracy"] >= best - tolerance]
    return min(close, key=lambda m: results[m]["threshold_logit_sd_across_seeds"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished runs of one recipe, one per seed")
    parser.add_argument("--store", help="run store folder (default models/)")
    parser.add_argument("--repeats", type=int, default=50, help="patient-grouped half splits per run")
    args = parser.parse_args(argv)
    from core.jobs.commands.startup import import_tensorflow_quietly

    import_tensorflow_quietly()
    from core.store.runs import RunStore

    store = RunStore(args.store)
    runs = [store.get(run_id) for run_id in args.runs]
    per_run = [validation_predictions(run) for run in runs]
    results = compare_rules(per_run, args.repeats)
    default = pick_default(results)
    rows = [[method, f"{100 * r['held_out_balanced_accuracy']:.2f} ± {100 * r['held_out_balanced_accuracy_sd']:.2f}",
             f"{100 * r['held_out_sensitivity']:.1f}", f"{100 * r['held_out_specificity']:.1f} ± "
             f"{100 * r['held_out_specificity_sd']:.1f}", ", ".join(f"{t:.3f}" for t in r["thresholds"]),
             f"{r['threshold_logit_sd_across_seeds']:.2f}", "← default" if method == default else ""]
            for method, r in results.items()]
    text = table(rows, ["rule", "held-out bal. acc. %", "sens. %", "spec. %", "threshold per seed", "logit sd", ""])
    text += (f"\n\nvalidation images per run: {[len(d['y']) for d in per_run]}; repeats: {args.repeats}; "
             f"default: {default}")
    finish({"runs": [run.id for run in runs], "recipe": runs[0].config().to_dict(), "repeats": args.repeats,
            "validation_images": [len(d["y"]) for d in per_run], "rules": results, "default": default,
            "machine": machine()}, args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
