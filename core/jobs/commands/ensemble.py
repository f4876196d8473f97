"""The ``python -m core.ensemble`` command: create an ensemble (of runs, or of N seeds of a config) and train it here."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from core.config import ConfigError, RunConfig, preset
from core.evaluation.ensemble import member_ids
from core.jobs.commands.arguments import add_store_flag
from core.jobs.commands.startup import import_tensorflow_quietly
from core.jobs.ensemble import create_ensemble, create_seed_ensemble
from core.store.runs import RunError, RunStore


# ----------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core.ensemble", description=__doc__.splitlines()[0])
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--members", nargs="+", metavar="RUN_ID", help="ensemble these existing runs")
    what.add_argument("--seeds", type=int, metavar="N", help="train N seeds of one config, then ensemble them")
    p.add_argument("--config", help="run config JSON for --seeds")
    p.add_argument("--preset", help="named preset for --seeds")
    p.add_argument("--name")
    add_store_flag(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Create an ensemble run and train it (its members first) in this process; prints its metrics as JSON."""
    args = _parser().parse_args(argv)

    import_tensorflow_quietly()
    from core.jobs.run import run_and_record  # heavy: Keras, scikit-learn

    store = RunStore(args.store)
    try:
        if args.members:
            run = create_ensemble(store, args.members, args.name)
        else:
            config = RunConfig.load(args.config) if args.config else preset(args.preset) if args.preset else RunConfig()
            if args.name:
                config.name = args.name
            run = create_seed_ensemble(store, config, args.seeds)
    except (ConfigError, RunError, OSError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"ensemble run {run.id} in {run.path.parent} (members: {', '.join(member_ids(run))})", file=sys.stderr)
    code = run_and_record(run, resume=False)
    metrics = run.metrics() or {}
    print(json.dumps({"run": run.id, "state": run.status().state, "error": run.status().error,
                      "metrics": {k: metrics.get(k) for k in ("sensitivity", "specificity", "roc_auc")}}))
    return code
