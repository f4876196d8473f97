"""The shipped starter's site profile on the official test split, treated as a new site: cross-fitted figures beside the uncalibrated ones.

    python -m benchmarks.site_profile [--run models/starter-efficientnet-lite0] [--data ../shared/data/chest_xray]
        [--out benchmarks/results/site-official-test.json]

This is Protocol S of docs/metrics.md made the way a user makes it, through
``core.evaluation.sites.calibrate_site`` (Evaluate → Site profiles, ``cxr-site calibrate``): every test
film is predicted through the run's one image path; the threshold is set with the run's rule on half
the site's patients and scored on the other half, and the other way round, over 20 seeded patient
halvings; intervals are a patient bootstrap of the cross-fitted calls. The uncalibrated figures are
the same films at the run's own validation threshold. The official test split is read here as a site
would be, never to choose anything for the run; the figures are reported apart from the quality table.

The run folder is copied into a temporary store, so nothing is written into it. The figures are
deterministic (one model, fixed films, seeded halvings): one pass is enough.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import REPO, base_parser, finish, machine, table
from core.evaluation.sites import calibrate_site
from core.store.runs import RunStore

__all__ = ["summary", "main"]

KEPT = ("threshold", "method", "target_sensitivity", "temperature", "n", "counts", "n_patients", "uncalibrated",
        "validation", "run_threshold", "warnings")


def summary(profile: dict[str, Any]) -> dict[str, Any]:
    """What the results file keeps of a profile: the figures, without the film list and the paths of this machine."""
    kept = {k: profile[k] for k in KEPT if k in profile}
    kept["cross_fitted"] = profile["cross_fitted"]
    kept["leaks"] = {kind: len(files) for kind, files in (profile.get("leaks") or {}).items()}
    kept["skipped"] = len(profile.get("skipped") or [])
    return kept


def _row(name: str, figures: dict[str, Any], threshold: str) -> tuple:
    ci = figures.get("ci", {})
    cell = lambda k: f"{figures[k]:.1%}" + (f" [{ci[k][0]:.1%}–{ci[k][1]:.1%}]" if k in ci else "")  # noqa: E731
    return name, threshold, cell("sensitivity"), cell("specificity"), cell("accuracy"), f"{figures['roc_auc']:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=REPO / "models" / "starter-efficientnet-lite0")
    args = parser.parse_args(argv)
    test = args.data / "test"
    if not test.is_dir() or not (args.run / "model.keras").is_file():
        print(f"needs the official test split ({test}) and a trained run ({args.run})")
        return 2
    result: dict[str, Any] = {"benchmark": "site_profile", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
                              "run": args.run.name, "site": "the official test split (original files)"}
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(args.run, Path(tmp) / args.run.name, ignore=shutil.ignore_patterns("sites", "backup"))
        run = RunStore(Path(tmp)).get(args.run.name)
        started = time.time()
        profile = calibrate_site(run, test, "official-test",
                                 progress=lambda f, message: print(f"  {f:4.0%} {message}", end="\r"))
        result["profile"] = {**summary(profile), "seconds": round(time.time() - started, 1)}
    p = result["profile"]
    mean = {**p["cross_fitted"]["mean"], "ci": p["cross_fitted"]["ci"]}
    rows = [_row("cross-fitted (mean of 20 halvings)", mean, f"set per half; all films: {p['threshold']:.3f}"),
            _row("uncalibrated", p["uncalibrated"], f"{p['uncalibrated']['threshold']:.3f}"),
            _row("the run's validation", p["validation"], f"{p['validation']['threshold']:.3f}")]
    text = table(rows, ["figures", "threshold", "sensitivity", "specificity", "accuracy", "ROC AUC"])
    finish(result, args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
