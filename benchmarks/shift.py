"""The shift report of the official test split against a run's training films, measured twice: against the training films as staged, and like with like.

    python -m benchmarks.shift [--run models/starter-efficientnet-lite0] [--data ../shared/data/chest_xray]
        [--aspect512 ../shared/data/chest_xray_train_aspect512] [--films 624] [--seed 0]
        [--out benchmarks/results/shift-official-test.json]

The staged Kaggle training copy was squashed to 224 × 224, converted to RGB and re-saved as JPEG
quality 75; the test films are the original grayscale files. A domain classifier on those two
measures that processing as much as the films (../shared/notes: 0.997 against 0.69 like with like).
So the report (``core.evaluation.shift.shift_report``, the same call as ``cxr-site report`` and the
Data page) is made twice on the same test films:

1. **as staged**: the run's own training films from its splits.json, as the shipped starter would;
2. **like with like**: the aspect512 copies of the run's training films (originals re-staged at a
   longest side of 512 px, grayscale, JPEG quality 90; matched by file name), both sides through the
   run's one image path.

The run folder is copied into a temporary store, so nothing is written into it.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import REPO, base_parser, finish, machine, table
from core.evaluation.shift import shift_report
from core.store.runs import RunStore

__all__ = ["COMPARISONS", "summary", "main"]

COMPARISONS = ("as_staged", "like_with_like")
KEPT = ("training_side", "training", "films", "positive_rate", "histograms", "leaks", "skipped", "reading",
        "recommend_site_profile", "labelled", "films_in_folder", "image_size", "resize_mode", "seed", "max_films")


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """What the results file keeps of a report: everything but the per-film rows and the out-of-fold scores."""
    domain = {k: v for k, v in report["domain"].items() if k not in ("scores_new", "scores_train")}
    return {"domain": domain, **{k: report[k] for k in KEPT if k in report}}


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=REPO / "models" / "starter-efficientnet-lite0")
    parser.add_argument("--aspect512", type=Path,
                        default=REPO.parent / "shared" / "data" / "chest_xray_train_aspect512",
                        help="copies of the training originals, longest side 512 (default: %(default)s)")
    parser.add_argument("--films", type=int, default=624, help="films per side at most (default: all 624 test films)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    films = 100 if args.quick else args.films
    test = args.data / "test"
    if not test.is_dir() or not (args.run / "model.keras").is_file():
        print(f"needs the official test split ({test}) and a trained run ({args.run})")
        return 2
    result: dict[str, Any] = {"benchmark": "shift", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
                              "run": args.run.name, "new_films": "the official test split (original files)",
                              "films_per_side": films, "seed": args.seed, "comparisons": {}}
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(tmp))
        shutil.copytree(args.run, Path(tmp) / args.run.name, ignore=shutil.ignore_patterns("shifts", "backup"))
        run = store.get(args.run.name)
        for name, training in zip(COMPARISONS, (None, args.aspect512)):
            if training is not None and not training.is_dir():
                print(f"{name}: skipped, {training} is not here")
                continue
            started = time.time()
            report = shift_report(run, test, max_films=films, seed=args.seed, training_folder=training, save=False,
                                  progress=lambda f, message: print(f"  {name} {f:4.0%} {message}", end="\r"))
            result["comparisons"][name] = {**summary(report), "seconds": round(time.time() - started, 1)}
            print()
    rows = [(name, c["domain"]["n_new"], c["domain"]["n_train"], f"{c['domain']['auc']:.3f}",
             f"{c['domain']['ci'][0]:.3f}–{c['domain']['ci'][1]:.3f}",
             f"{c['positive_rate']['new']['rate']:.1%}", c["recommend_site_profile"])
            for name, c in result["comparisons"].items()]
    text = table(rows, ["training side", "new", "training", "domain AUC", "95 % CI", "called +", "profile?"])
    for name, c in result["comparisons"].items():
        text += f"\n\n{name}:\n" + "\n".join(f"  - {line}" for line in c["reading"])
    finish(result, args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
