"""The ``cxr-predict`` / ``python -m core.predict`` command: classify image files with a run, one JSON line each."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from core.evaluation.predict import predict_files
from core.jobs.commands.arguments import add_store_flag
from core.jobs.commands.startup import import_tensorflow_quietly
from core.store.runs import RunError, RunStore

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m core.predict --run RUN IMAGE...``: one JSON line per image.

    Exit status 0 when every image was read, 1 when any image failed, 2 when the run is unusable.
    """
    import_tensorflow_quietly()
    from core.evaluation.explain import CAM_METHODS  # heavy: Keras and TensorFlow, once they are quiet

    parser = argparse.ArgumentParser(prog="python -m core.predict",
                                     description="Classify chest X-rays with a trained run (research use only).")
    parser.add_argument("--run", required=True, help="run id in the store")
    add_store_flag(parser)
    parser.add_argument("--cam", choices=list(CAM_METHODS), default=None, help="also save a heatmap overlay")
    parser.add_argument("--out", default=None, help="folder for heatmap PNGs (default ./heatmaps)")
    parser.add_argument("--site", default=None, metavar="NAME",
                        help="call at this site profile's threshold (cxr-site list RUN); default the run's validation one")
    parser.add_argument("--opacity", type=float, default=0.4, help="heatmap opacity 0..1")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    args = parser.parse_args(argv)
    if not 0 <= args.opacity <= 1:
        parser.error("--opacity must be between 0 and 1")
    try:
        run = RunStore(args.store).get(args.run)
        results = predict_files(run, args.images, cam=args.cam, out_dir=args.out, opacity=args.opacity,
                                site=args.site)
    except (RunError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for result in results:
        print(json.dumps(result), flush=True)
    return 1 if any("error" in r for r in results) else 0
