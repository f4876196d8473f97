"""The ``python -m core.starter`` command: package a finished run as the shipped starter model."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from core.data.datasets import DatasetError
from core.jobs.commands.startup import import_tensorflow_quietly
from core.jobs.starter import package_starter
from core.store.runs import RunError


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m core.starter RUN_DIR DEST [--machine TEXT] [--note TEXT] [--chosen TEXT]``: package a finished run as the shipped starter."""
    parser = argparse.ArgumentParser(prog="python -m core.starter", description=main.__doc__)
    parser.add_argument("run_dir", help="the finished run's folder")
    parser.add_argument("dest", help="the starter's folder, e.g. models/starter-efficientnet-lite0")
    parser.add_argument("--machine", default=None, help="the training machine in words")
    parser.add_argument("--note", default=None, help="anything about the training a reader should know")
    parser.add_argument("--chosen", default=None, help="how this run was chosen to ship, and on what data")
    args = parser.parse_args(argv)

    import_tensorflow_quietly()

    try:
        run = package_starter(args.run_dir, args.dest, machine=args.machine, note=args.note,
                              chosen=args.chosen)
    except (RunError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in run.path.iterdir())
    print(f"starter {run.path} ({size / 1e6:.1f} MB)")
    return 0
