"""The ``cxr-site`` / ``python -m core.site`` command: calibrate a run on a site's labelled films, list its profiles, report a folder's shift."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from core.evaluation.shift import shift_report
from core.evaluation.sites import calibrate_site, list_sites, operating_point
from core.jobs.commands.arguments import add_store_flag
from core.jobs.commands.startup import import_tensorflow_quietly
from core.store.runs import RunError, RunStore

__all__ = ["main", "format_profile"]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _interval(ci: Sequence[float | None] | None, as_pct: bool = True) -> str:
    if not ci or ci[0] is None:
        return ""
    return f" [{_pct(ci[0])}–{_pct(ci[1])}]" if as_pct else f" [{ci[0]:.3f}–{ci[1]:.3f}]"


def format_profile(profile: dict[str, Any]) -> str:
    """A site profile as a short table: cross-fitted, uncalibrated and validation figures side by side."""
    fitted, plain, val = profile["cross_fitted"], profile["uncalibrated"], profile.get("validation") or {}
    lines = [f"site profile {profile['name']!r} of run {profile['run_id']}: {profile['n']} films "
             f"({profile['counts']['NORMAL']} normal, {profile['counts']['PNEUMONIA']} pneumonia, "
             f"{profile['n_patients']} patients)",
             f"  threshold {profile['threshold']:.3f} ({profile['method']}, set on all of them); "
             f"the run's own {profile['run_threshold']:.3f}"
             + (f"; temperature {profile['temperature']:.2f}" if profile.get("temperature") else ""),
             f"  {'':<12}{'cross-fitted (mean of ' + str(fitted['n_splits']) + ' halvings)':<40}"
             f"{'uncalibrated, same films':<32}run's validation"]
    for key, label in (("sensitivity", "sensitivity"), ("specificity", "specificity"), ("accuracy", "accuracy"),
                       ("roc_auc", "ROC AUC")):
        as_pct = key != "roc_auc"
        show = _pct if as_pct else (lambda v: "n/a" if v is None else f"{v:.3f}")
        ci = fitted["ci"].get(key) if key != "roc_auc" else plain["ci"].get(key)
        lines.append(f"  {label:<12}{show(fitted['mean'][key]) + _interval(ci, as_pct):<40}"
                     f"{show(plain[key]) + _interval(plain['ci'].get(key), as_pct):<32}"
                     f"{show(val.get(key)) + _interval((val.get('ci') or {}).get(key), as_pct)}")
    lines.append("  (95 % patient-bootstrap intervals in brackets)")
    lines += [f"  warning: {w}" for w in profile.get("warnings", [])]
    return "\n".join(lines)


def _calibrate(args: argparse.Namespace, run: Any) -> int:
    def progress(fraction: float, message: str) -> None:
        print(f"[{100 * fraction:3.0f} %] {message}", file=sys.stderr, flush=True)

    profile = calibrate_site(run, args.folder, args.name, method=args.rule, temperature=not args.no_temperature,
                             n_splits=args.splits, progress=progress)
    if profile["name"] != args.name:
        print(f"a profile named {args.name!r} exists already: saved as {profile['name']!r}", file=sys.stderr)
    print(format_profile(profile))
    print(f"saved {profile['path']}")
    return 0


def _list(args: argparse.Namespace, run: Any) -> int:
    rows = list_sites(run)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"run {run.path.name}: default {operating_point(run).label}")
    if not rows:
        print("  no site profiles yet (cxr-site calibrate RUN FOLDER --name NAME)")
    for row in rows:
        if "error" in row:
            print(f"  {row['name']:<20} {row['error']}")
            continue
        fitted = row["cross_fitted"] or {}
        print(f"  {row['name']:<20} {str(row['created_at'])[:10]}  {row['n']} films  threshold {row['threshold']:.3f} "
              f"({row['method']})  cross-fitted sensitivity {_pct(fitted.get('sensitivity'))}, "
              f"specificity {_pct(fitted.get('specificity'))}")
    return 0


def _report(args: argparse.Namespace, run: Any) -> int:
    report = shift_report(run, args.folder, max_films=args.max_films, training_folder=args.training_films)
    if args.json:
        print(json.dumps(report, indent=1, default=str))
        return 0
    domain = report.get("domain") or {}
    if domain.get("auc") is not None:
        print(f"domain classifier AUC {domain['auc']:.3f}{_interval(domain.get('ci'), as_pct=False)} "
              f"({domain.get('n_new')} new films against {domain.get('n_train')} training films)")
    for sentence in report.get("reading", []):
        print(f"  {sentence}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``cxr-site calibrate RUN FOLDER --name NAME`` | ``cxr-site list RUN`` | ``cxr-site report RUN FOLDER``."""
    parser = argparse.ArgumentParser(prog="cxr-site", description="Site profiles and shift reports of a run "
                                     "(research use only).")
    sub = parser.add_subparsers(dest="command", required=True)
    calibrate = sub.add_parser("calibrate", help="set the run's threshold on a site's labelled films (a profile)")
    calibrate.add_argument("run_id")
    calibrate.add_argument("folder", help="labelled films: Kaggle layout or one folder per class")
    calibrate.add_argument("--name", required=True, help="the profile's name (never overwritten: a suffix is added)")
    calibrate.add_argument("--rule", default=None, help="threshold rule (default: the run's own)")
    calibrate.add_argument("--splits", type=int, default=20, help="patient halvings for the cross-fitted figures")
    calibrate.add_argument("--no-temperature", action="store_true", help="do not fit a temperature")
    listing = sub.add_parser("list", help="the run's site profiles")
    listing.add_argument("run_id")
    listing.add_argument("--json", action="store_true")
    report = sub.add_parser("report", help="how far a folder's films are from the run's training films")
    report.add_argument("run_id")
    report.add_argument("folder", help="films, labelled or not")
    report.add_argument("--max-films", type=int, default=300, help="films sampled from each side")
    report.add_argument("--training-films", default=None, metavar="DIR",
                        help="copies of the run's training films (matched by file name), when they are not where "
                             "splits.json says, or to compare like with like")
    report.add_argument("--json", action="store_true")
    for command in (calibrate, listing, report):
        add_store_flag(command)
    args = parser.parse_args(argv)
    if args.command == "calibrate" and args.splits < 1:
        parser.error("--splits must be at least 1")
    if args.command != "list":
        import_tensorflow_quietly()
    try:
        run = RunStore(args.store).get(args.run_id)
        if args.command != "list" and not run.model_path.is_file():
            raise RunError(f"run {args.run_id} has no trained model ({run.model_path.name}); train it first")
        return {"calibrate": _calibrate, "list": _list, "report": _report}[args.command](args, run)
    except (RunError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
