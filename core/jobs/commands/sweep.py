"""The ``python -m core.sweep`` command: create, run, resume, pause, cancel, show and finish sweeps."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.config import PRESETS, ConfigError, RunConfig, preset
from core.jobs.commands.arguments import add_store_flag
from core.jobs.commands.startup import import_tensorflow_quietly
from core.jobs.commands.train import main as train_main
from core.jobs.sweep.coordinator import run_sweep
from core.jobs.sweep.grid import AXES, describe
from core.jobs.sweep.results import best_member, create_final_run, sweep_results
from core.jobs.sweep.store import SWEEP_FILE, Sweep, create_sweep, get_sweep, list_sweeps
from core.store.runs import Run, RunError, RunStore, lower_own_priority


def _value(text: str) -> Any:
    """A value on the command line: JSON (2, 1e-4, true, null), else the text itself (none, light)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text.strip()


def _pairs(items: Sequence[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what}: expected SETTING=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def parse_grid(items: Sequence[str] | None) -> dict[str, list[Any]]:
    """``["unfreeze_from_block=2,3", "augment=none,light"]`` → ``{"unfreeze_from_block": [2, 3], "augment": [...]}``."""
    return {key: [_value(v) for v in value.split(",") if v.strip()] for key, value in _pairs(items, "--grid").items()}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core.sweep", description=__doc__.splitlines()[0])
    new = p.add_argument_group("a new sweep (trained in this process)")
    new.add_argument("--grid", action="append", metavar="SETTING=V1,V2,…",
                     help=f"one axis of the grid; repeat for more. Axes: {', '.join(AXES)} or any dotted setting "
                          "(augment takes named strengths: none, light, standard, acquisition, strong)")
    new.add_argument("--config", help="base run config JSON (default: the defaults, or --preset)")
    new.add_argument("--preset", choices=list(PRESETS), help="base settings from a named preset")
    new.add_argument("--set", action="append", metavar="SETTING=VALUE", help="override one base setting; repeat")
    new.add_argument("--name", help="the sweep's name (default: the base config's)")
    new.add_argument("--gpus", type=int, help="spread members over this many GPUs (default: those visible)")
    old = p.add_argument_group("an existing sweep")
    old.add_argument("--run-dir", help="coordinate this sweep folder (what the dashboard starts)")
    old.add_argument("--resume", nargs="?", const="", metavar="SWEEP_ID",
                     help="go on with a paused or interrupted sweep; without an id, list them")
    old.add_argument("--pause", metavar="SWEEP_ID", help="ask the coordinator to pause (members stop after their batch)")
    old.add_argument("--cancel", metavar="SWEEP_ID", help="ask the coordinator to cancel the rest of the sweep")
    old.add_argument("--show", metavar="SWEEP_ID", help="members on validation, best first")
    old.add_argument("--final", metavar="SWEEP_ID", help="train the final run with the best settings; evaluated on test")
    old.add_argument("--member", metavar="RUN_ID", help="with --final: this member's settings instead of the best")
    old.add_argument("--list", action="store_true", help="list the sweeps of the store")
    add_store_flag(p)
    return p


def _table(sweep: Sweep) -> str:
    results = sweep_results(sweep)
    best = best_member(results)
    lines = [f"sweep {sweep.id} ({sweep.status().state}): {len(results)} members; validation only, never test"]
    for r in sorted(results, key=lambda r: -(r.val_auc if r.val_auc is not None else -1)):
        lo, hi = r.val_auc_ci
        figures = (f"val AUC {r.val_auc:.3f} [{lo:.3f}, {hi:.3f}]  val loss {r.val_loss:.3f}"
                   if r.val_auc is not None and lo is not None else "")
        lines.append(f"{'*' if best and r.run_id == best.run_id else ' '} {r.index:2d} {r.state:<11} {figures:<44} "
                     f"{describe(r.settings)}  {r.run_id}")
    if sweep.final_run_id:
        final = Run(sweep.path.parent / sweep.final_run_id)
        lines.append(f"final run {final.id} ({final.status().state}): evaluated once on test, in its metrics.json")
    return "\n".join(lines)


def _log_to(path: Path) -> None:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("cxr_studio").addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    lower_own_priority(os.environ)  # a coordinator launched from the dashboard: its members inherit the lower priority
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("cxr_studio").setLevel(logging.INFO)
    store = RunStore(args.store)
    try:
        if args.list or (args.resume == "" and not args.run_dir):
            wanted = ("paused", "interrupted", "failed") if args.resume == "" else None
            sweeps = [s for s in list_sweeps(store) if wanted is None or s.status().state in wanted]
            for sweep in sweeps:
                print(f"{sweep.id}\t{sweep.status().state}\t{sweep.status().message}")
            if args.resume == "":
                print("error: --resume needs a sweep id" + ("" if sweeps else f"; no sweep in {store.root} can be resumed"),
                      file=sys.stderr)
                return 2
            return 0
        if args.pause or args.cancel:
            sweep = get_sweep(store, args.pause or args.cancel)
            sweep.request_pause() if args.pause else sweep.request_cancel()
            print(f"{'pause' if args.pause else 'cancel'} requested for sweep {sweep.id}", file=sys.stderr)
            return 0
        if args.show:
            print(_table(get_sweep(store, args.show)))
            return 0
        if args.final:
            return _final(store, get_sweep(store, args.final), args.member)
        if args.run_dir:
            sweep, resume = Sweep(Path(args.run_dir)), args.resume is not None
            if not (sweep.path / SWEEP_FILE).is_file():
                raise RunError(f"{args.run_dir} is not a sweep folder (no {SWEEP_FILE})")
        elif args.resume:
            sweep, resume = get_sweep(store, args.resume), True
            sweep.check_can_start(resume=True)
            sweep.pause_path.unlink(missing_ok=True)
            sweep.cancel_path.unlink(missing_ok=True)
            _log_to(sweep.log_path)
        else:
            import_tensorflow_quietly()  # validating members builds nothing, but it imports the backbone registry
            base = RunConfig.load(args.config) if args.config else preset(args.preset) if args.preset else RunConfig()
            base = base.with_overrides(**{k: _value(v) for k, v in _pairs(args.set, "--set").items()})
            sweep, resume = create_sweep(store, base, parse_grid(args.grid), args.name), False
            _log_to(sweep.log_path)
    except (ConfigError, RunError, OSError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"sweep {sweep.id} in {sweep.path.parent}: {len(sweep.members())} members", file=sys.stderr)
    code = run_sweep(sweep, resume, gpus=args.gpus)
    if not args.run_dir:
        print(_table(sweep))
    return code


def _final(store: RunStore, sweep: Sweep, member: str | None) -> int:
    """``--final``: create the final run and train it here, as ``python -m core.train --run-dir`` would."""
    import_tensorflow_quietly()  # validating the final run's config imports the backbone registry
    run = create_final_run(sweep, store, member)
    print(f"final run {run.id} of sweep {sweep.id}", file=sys.stderr)
    return train_main(["--run-dir", str(run.path)])


if __name__ == "__main__":
    sys.exit(main())
