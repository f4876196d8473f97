"""The ``cxr-evaluate`` / ``python -m core.evaluate`` command: evaluate a run once on its test split and print the table."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from core.evaluation.evaluate import evaluate_run
from core.jobs.commands.arguments import add_store_flag
from core.jobs.commands.startup import import_tensorflow_quietly
from core.store.runs import RunError, RunStore

__all__ = ["main", "format_table"]


def _pct(value: float | None) -> str:
    return "  n/a" if value is None else f"{100 * value:5.1f}"


def format_table(m: dict[str, Any]) -> str:
    ci = m.get("ci", {})

    def row(label: str, key: str, as_pct: bool = True) -> str:
        lo, hi = ci.get(key, [None, None])
        value = m.get(key)
        if as_pct:
            text = f"{_pct(value)} %"
            interval = f"  [{_pct(lo).strip()}–{_pct(hi).strip()}]" if lo is not None else ""
        else:
            text = "  n/a" if value is None else f"{value:.3f}"
            interval = f"  [{lo:.3f}–{hi:.3f}]" if lo is not None else ""
        return f"  {label:<12}{text}{interval}"

    c = m["confusion"]
    lines = [
        f"run {m['run_id']} — test split, {m['n']} images ({m['n_positive']} pneumonia), "
        f"threshold {m['threshold']:.3f} ({m['threshold_info'].get('method', '?')})",
        row("sensitivity", "sensitivity"),
        row("specificity", "specificity"),
        row("ROC AUC", "roc_auc", as_pct=False),
        row("accuracy", "accuracy"),
        f"  confusion   TN {c['tn']}  FP {c['fp']}  FN {c['fn']}  TP {c['tp']}",
        f"  at 0.5:     sensitivity {_pct(m['at_0.5']['sensitivity']).strip()} %, "
        f"specificity {_pct(m['at_0.5']['specificity']).strip()} %, accuracy {_pct(m['at_0.5']['accuracy']).strip()} %",
    ]
    for subtype, s in m.get("subgroups", {}).items():
        lo, hi = s.get("sensitivity_ci") or (None, None)
        interval = f"  [{_pct(lo).strip()}–{_pct(hi).strip()}]" if lo is not None else ""
        lines.append(f"  {subtype:<12}sensitivity {_pct(s['sensitivity']).strip()} %{interval} (n={s['n']})")
    lines.append("  (95 % patient-level bootstrap intervals in brackets)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m core.evaluate RUN_ID [--store DIR]``: evaluate on the test split, print a table."""
    parser = argparse.ArgumentParser(prog="python -m core.evaluate", description=main.__doc__)
    parser.add_argument("run_id")
    add_store_flag(parser)
    args = parser.parse_args(argv)
    import_tensorflow_quietly()
    try:
        run = RunStore(args.store).get(args.run_id)
        if not run.model_path.is_file():
            raise RunError(f"run {args.run_id} has no trained model ({run.model_path}); train it first")
        result = evaluate_run(run)
    except (RunError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    print(f"saved {run.path / 'metrics.json'}")
    return 0
