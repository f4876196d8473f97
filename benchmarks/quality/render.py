"""The Markdown report of a quality summary: headline, every run, targets, subgroups and run details."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from benchmarks.quality.orchestrate import RowOutcome
from benchmarks.quality.rows import HEADLINE, PublishedRow
from benchmarks.quality.summary import build_summary

__all__ = ["render_report", "build_report", "wilson"]


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f} %"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _fmt(key: str, value: float | None) -> str:
    return _num(value) if key in ("roc_auc", "pr_auc") else _pct(value)


def _with_ci(key: str, value: float | None, ci: dict[str, Any] | None) -> str:
    lo, hi = (ci or {}).get(key) or (None, None)
    if value is None or lo is None:
        return _fmt(key, value)
    if key in ("roc_auc", "pr_auc"):
        return f"{value:.3f} [{lo:.3f}–{hi:.3f}]"
    return f"{100 * value:.1f} % [{100 * lo:.1f}–{100 * hi:.1f}]"


def _mean_sd(key: str, stats: dict[str, Any] | None) -> str:
    mean, sd = (stats or {}).get("mean"), (stats or {}).get("sd")
    if mean is None:
        return "–"
    if key in ("roc_auc", "pr_auc"):
        return f"{mean:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")
    return f"{100 * mean:.1f}" + (f" ± {100 * sd:.1f}" if sd is not None else "") + " %"



def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """Wilson score 95 % interval for k of n (Wilson 1927)."""
    if n <= 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return lines


def _run_name(row: dict[str, Any], entry: dict[str, Any]) -> str:
    return f"{row['name']}, {entry['label']}" if entry.get("label") else row["name"]


def _threshold_note(entry: dict[str, Any]) -> str:
    threshold = entry.get("threshold")
    shown = f"{threshold:.3f}" if threshold is not None else "?"
    return f"threshold {shown}, {entry.get('threshold_method') or '?'} on {entry.get('chosen_on') or 'validation'}"


def _not_run(row: dict[str, Any], entry: dict[str, Any] | None = None) -> str:
    if entry is None:
        return f"ours: {row['name']} — not run: {(row.get('error') or 'no run').replace(chr(10), ' ')}"
    reason = (entry.get("error") or entry.get("state") or "").replace("\n", " ")
    state = entry.get("state") or "not run"
    return f"ours: {_run_name(row, entry)} — {state}: {reason}"


def _headline(summary: dict[str, Any]) -> list[str]:
    rows: list[list[str]] = []
    for row in summary["rows"]:
        done = [e for e in row["runs"] if e.get("values")]
        if not row["runs"]:
            rows.append([_not_run(row)] + ["–"] * 5)
            continue
        if len(row["runs"]) == 1 and done:
            entry = done[0]
            rows.append([f"**ours: {_run_name(row, entry)}** ({_threshold_note(entry)})"]
                        + [_with_ci(k, entry["values"].get(k), entry["ci"]) for k in HEADLINE])
        elif done:
            seeds = ", ".join(str(e["seed"]) for e in done)
            of = f"{len(done)} of {len(row['runs'])} seeds" if len(done) < len(row["runs"]) else f"{len(done)} seeds"
            rows.append([f"**ours: {row['name']}** ({of}: {seeds}; mean ± sd; threshold by "
                         f"{row.get('threshold_method') or '?'} on validation, per seed)"]
                        + [_mean_sd(k, row["stats"].get(k)) for k in HEADLINE])
        else:
            rows.append([f"ours: {row['name']} — no seed finished"] + ["–"] * 5)
        ensemble = row.get("ensemble")
        if ensemble and ensemble.get("values"):
            rows.append([f"**ours: {_run_name(row, ensemble)}** ({_threshold_note(ensemble)})"]
                        + [_with_ci(k, ensemble["values"].get(k), ensemble["ci"]) for k in HEADLINE])
        elif ensemble:
            rows.append([_not_run(row, ensemble)] + ["–"] * 5)
    for p in summary["published"]:
        rows.append([f"{p['label']} (published)"] + [_fmt(k, p.get(k)) for k in HEADLINE])
    base = summary.get("baseline_always_pneumonia")
    if base:
        rows.append(['always "pneumonia" (trivial baseline)'] + [_fmt(k, base.get(k)) for k in HEADLINE])
    return _table(["", "accuracy", "sensitivity", "specificity", "ROC AUC", "PR AUC"], rows)


def _per_run(summary: dict[str, Any]) -> list[str]:
    rows: list[list[str]] = []
    for row in summary["rows"]:
        for entry in row["runs"] + ([row["ensemble"]] if row.get("ensemble") else []):
            if not entry.get("values"):
                rows.append([_not_run(row, entry)] + ["–"] * 5)
                continue
            rows.append([f"**ours: {_run_name(row, entry)}** ({_threshold_note(entry)})"]
                        + [_with_ci(k, entry["values"].get(k), entry["ci"]) for k in HEADLINE])
            rows.append([f"ours: {_run_name(row, entry)}, same run at threshold 0.5"]
                        + [_fmt(k, entry["at_0.5"].get(k)) for k in HEADLINE])
    if not rows:
        return []
    return ["", "Every run: value [95 % patient-bootstrap interval from its metrics.json] at its validation-chosen "
                "threshold, and the same run at 0.5 for comparison:", ""] + \
        _table(["", "accuracy", "sensitivity", "specificity", "ROC AUC", "PR AUC"], rows)


def _seed_list(seeds: Sequence[Any]) -> str:
    return ", ".join(str(s) for s in seeds)


def _verdict(check: dict[str, Any], everyone: int) -> str:
    if check["met"] is None:
        return f"not checked ({check['note']})" if check["note"] else "not checked"
    if check["met"]:
        return "met"
    misses = check["misses"]
    who = ""
    if check["rule"] == "each_at_least" and misses != ["ensemble"]:
        who = " (all seeds)" if len(misses) == everyone and everyone > 1 else f" (seed {_seed_list(misses)})"
    return f"**missed**{who}" + (f"; {check['note']}" if check["note"] else "")


def _target_table(checks: list[dict[str, Any]], column: str, with_stats: bool = True) -> list[str]:
    """``target | each seed | mean ± sd | met?`` (an ensemble: ``target | its value | met?``)."""
    rows = []
    for check in checks:
        values = ", ".join(_fmt(check["key"], v) for v in check["values"])
        if check["rule"] == "spread_at_most":
            middle = "–" if check["spread"] is None else f"spread {100 * check['spread']:.1f} points"
        else:
            middle = _mean_sd(check["key"], check)
        rows.append([check["label"], values] + ([middle] if with_stats else []) +
                    [_verdict(check, len(check["seeds"]))])
    return _table(["target", column] + (["mean ± sd"] if with_stats else []) + ["met?"], rows)


def _missed_words(checks: list[dict[str, Any]]) -> str:
    parts = []
    for check in checks:
        if check["met"] is False:
            who = "" if check["rule"] != "each_at_least" or check["misses"] == ["ensemble"] else \
                " (all seeds)" if len(check["misses"]) == len(check["seeds"]) and len(check["seeds"]) > 1 else \
                f" (seed {_seed_list(check['misses'])})"
            parts.append(check["label"] + who)
    return "; ".join(parts)


def _targets(summary: dict[str, Any]) -> list[str]:
    if not summary["targets"]:
        return []
    lines = ["", "#### Targets", "",
             "Each target must be met by every seed (not only by the mean), on the official "
             f"{summary['official_test_images']}-image test split at the threshold chosen on validation; the "
             "ensemble is checked on its own values."]
    if summary["kind"] == "demo":
        lines.append("Synthetic demo images: the Kaggle targets are applied only to exercise the check; this is no "
                     "verdict on the issue.")
    sizes = sorted({e["test"]["n"] for row in summary["rows"] for e in row["runs"] + [row.get("ensemble") or {}]
                    if e.get("test")})
    if any(n != summary["official_test_images"] for n in sizes):
        lines.append(f"**The test split here has {', '.join(map(str, sizes))} images, not the official "
                     f"{summary['official_test_images']}: the verdicts below are not the issue's target check.**")
    for row in summary["rows"]:
        lines.append("")
        if not row["targets"]:
            lines.append(f"**{row['name']}**: not checked, the row did not run ({row.get('error') or 'no run'}).")
            continue
        missed = _missed_words(row["targets"])
        unchecked = [c["label"] for c in row["targets"] if c["met"] is None]
        verdict = f"**not met**: {missed}." if missed else "every target met by every seed."
        if unchecked and not missed:
            verdict = f"every checked target met by every seed; not checked: {'; '.join(unchecked)}."
        lines += [f"**{row['name']}** (seeds {_seed_list(row['seeds'])}): {verdict}", ""]
        lines += _target_table(row["targets"], f"each seed ({_seed_list(row['seeds'])})")
        ensemble = row.get("ensemble")
        if ensemble is None:
            continue
        lines.append("")
        if not row["ensemble_targets"] or not ensemble.get("values"):
            lines.append(f"{row['name']}, {ensemble['label']}: not checked, {ensemble.get('state')}: "
                         f"{ensemble.get('error') or 'no result'}.")
            continue
        missed = _missed_words(row["ensemble_targets"])
        lines += [f"{row['name']}, {ensemble['label']}: " + (f"**not met**: {missed}." if missed else
                                                            "every target met."), ""]
        lines += _target_table(row["ensemble_targets"], ensemble["label"], with_stats=False)
    return lines


def _subgroups(summary: dict[str, Any]) -> list[str]:
    subgroup_rows = []
    for row in summary["rows"]:
        for entry in row["runs"] + ([row["ensemble"]] if row.get("ensemble") else []):
            groups = entry.get("subgroups") or {}
            if not groups:
                continue
            cells = [_run_name(row, entry)]
            for subtype in ("bacteria", "virus"):
                g = groups.get(subtype)
                if not g:
                    cells.append("–")
                    continue
                ci = g.get("sensitivity_ci")  # the core's patient bootstrap, where metrics.json has it
                note = ""
                if ci is None or ci[0] is None:
                    ci, note = wilson(int(g["detected"]), int(g["n"])), " W"
                interval = f" [{100 * ci[0]:.1f}–{100 * ci[1]:.1f}]{note}" if ci else ""
                cells.append(f"{100 * g['sensitivity']:.1f} %{interval} (missed {g['missed']} of {g['n']})")
            subgroup_rows.append(cells)
    if not subgroup_rows:
        return []
    lines = ["", "Sensitivity by pneumonia type (file names tell bacterial vs viral; at the run's threshold):", ""]
    lines += _table(["run", "bacterial pneumonia", "viral pneumonia"], subgroup_rows)
    if any(" W" in cell for row in subgroup_rows for cell in row):
        lines += ["", "W: Wilson 95 % interval from the counts in metrics.json (metrics.json has no bootstrap "
                      "interval per subtype)."]
    return lines


def _details(summary: dict[str, Any]) -> list[str]:
    detail_rows = []
    for row in summary["rows"]:
        entries = row["runs"] + ([row["ensemble"]] if row.get("ensemble") else [])
        if not entries:
            alpha = f" α={row['alpha']}" if row.get("alpha") else ""
            detail_rows.append([row["name"], "not run", "–", f"{row.get('backbone') or '?'}{alpha}",
                                row.get("weights") or "–", str(row.get("image_size") or "?"),
                                f"– (planned {row.get('planned_epochs') or '?'})"] + ["–"] * 6)
            continue
        for entry in entries:
            epochs = ", ".join(f"{phase} {n}" for phase, n in (entry.get("epochs") or {}).items())
            if entry.get("members"):
                epochs = f"none: combines the {len(entry['members'])} seed runs"
            else:
                epochs = (f"{epochs or '–'} (planned {entry.get('planned_epochs')}; best epoch "
                          f"{entry.get('best_epoch') or '–'}, on {entry.get('monitor') or '?'})")
            counts = entry.get("counts") or {}
            shown_counts = "/".join(str(counts.get(k, "?")) for k in ("train", "val", "test")) if counts else "–"
            load = entry.get("load")
            alpha = f" α={entry['alpha']}" if entry.get("alpha") else ""
            detail_rows.append([
                row["name"], entry.get("label") or "–", f"`{entry['run_id']}`" if entry.get("run_id") else "–",
                f"{entry.get('backbone') or '?'}{alpha}", entry.get("weights") or "–",
                str(entry.get("image_size") or "?"),
                epochs, _num(entry.get("best_val_loss")), _num(entry.get("best_val_auc")), shown_counts,
                _duration(entry.get("train_seconds")), _duration(entry.get("wall_seconds")),
                f"{load[0]:.1f} → {load[1]:.1f}" if load else "–"])
    lines = ["", "Runs (each a folder in the run store; the dashboard's Runs and Evaluate pages show the same numbers):",
             ""]
    lines += _table(["row", "run", "run id", "backbone", "weights", "px", "epochs run", "val loss at best",
                     "val AUC at best", "train/val/test images", "time in epochs", "wall time", "load avg"],
                    detail_rows)
    walls = [f"{row['name']} {_duration(row.get('wall_seconds'))}" for row in summary["rows"] if row.get("wall_seconds")]
    if walls:
        lines += ["", "Wall time per row (its seeds and ensemble, one after another): " + "; ".join(walls) + "."]
    return lines


def render_report(summary: dict[str, Any]) -> str:
    """The markdown report, drawn only from the summary (so summary.json holds every figure it shows)."""
    rows, invocations = summary["rows"], summary["invocations"]
    seeds_per_row = max((len(row["seeds"]) for row in rows), default=0)
    heading = f"### Quality: {summary['title']}"
    if seeds_per_row > 1:
        heading += f" — {seeds_per_row} seeds per row" + (" and their ensemble" if any(r.get("ensemble") for r in rows)
                                                           else "")
    lines = [heading, ""]
    if len(invocations) == 1:
        inv = invocations[0]
        lines += [f"- date: {inv['date']}", f"- machine: {inv['machine']}", f"- command: `{inv['command']}`",
                  f"- total wall time: {_duration(inv.get('wall_seconds'))} ({inv.get('runs', 0)} runs, one after "
                  "another)"]
    else:
        lines.append("- commands (each row is from the last command that ran it):")
        for number, inv in enumerate(invocations, start=1):
            lines.append(f"  {number}. {inv['date']}: `{inv['command']}`, rows {', '.join(inv.get('rows', []))}; total "
                         f"wall time {_duration(inv.get('wall_seconds'))} ({inv.get('runs', 0)} runs); machine: "
                         f"{inv['machine']}")
    seeded = next((row for row in rows if len(row["seeds"]) > 1), None)
    if seeded:
        lines.append(f"- seeds: training seeds {_seed_list(seeded['seeds'])} per row, all sharing one validation "
                     f"split (data.split_seed {seeded['split_seed']}); mean ± sd: {summary['sd']}")
    if summary.get("results"):
        lines.append(f"- files: `{summary['results']}/` (per run: metrics.json, config.json, threshold.json, and an "
                     "ensemble's ensemble.json; summary.json holds every figure below)")
    lines.append("")
    test = summary.get("test_split")
    if test:
        lines += [f"Test split: {test['n']} images ({test['n_positive']} pneumonia, {test['n'] - test['n_positive']} "
                  f"normal, {test.get('n_patients') or '?'} patients), used once per run after training. Ours: value "
                  f"[{test.get('ci_method') or '95 % bootstrap interval'}]. Threshold chosen on validation only.", ""]
    lines += _headline(summary)
    lines += _per_run(summary)
    lines += _targets(summary)
    lines += _subgroups(summary)
    lines += _details(summary)
    lines += ["", "Rows:", ""]
    lines += [f"- **{row['name']}**: {row['summary']}." for row in rows]
    return "\n".join(lines) + "\n"


def build_report(outcomes: Sequence[RowOutcome], kind: str, command: str, machine: str,
                 published: Sequence[PublishedRow] | None = None, date: str | None = None,
                 wall_seconds: float | None = None) -> str:
    """The markdown report of these rows (headline, every run, targets, subgroups, run details)."""
    return render_report(build_summary(outcomes, kind, command, machine, published, date, wall_seconds))
