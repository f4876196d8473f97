"""The flags of the commands that train quality rows (benchmarks.quality, benchmarks.recipe_choice), defined once."""
from __future__ import annotations

import argparse

__all__ = ["OVERRIDES", "row_flags"]

OVERRIDES = "overrides (applied to every selected row)"  # the title of the group of recipe overrides


def row_flags() -> tuple[argparse.ArgumentParser, argparse._ArgumentGroup]:
    """A parent parser (for ``argparse.ArgumentParser(parents=[...])``) with the data set, seeds and run store flags
    and the recipe overrides both commands take, and its overrides group, where a command adds its own overrides
    before it builds its parser on this parent."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--medmnist", action="store_true", help="the PneumoniaMNIST rows instead of Kaggle chest_xray")
    p.add_argument("--data", help="data set folder, a MedMNIST .npz, or 'demo' (default: ../shared/data/chest_xray, "
                                  "or ../shared/data/medmnist/pneumoniamnist.npz with --medmnist; "
                                  "relative to the repo root)")
    p.add_argument("--seeds", type=int, default=3,
                   help="training seeds per row: the base seed + 0..N-1, one validation split (default: %(default)s)")
    p.add_argument("--store", help="run store folder (default models/ or $CXR_STUDIO_RUNS)")
    overrides = p.add_argument_group(OVERRIDES)
    overrides.add_argument("--seed", type=int, help="the base seed (default: the recipe's, 42)")
    overrides.add_argument("--image-size", type=int)
    overrides.add_argument("--head-epochs", type=int)
    overrides.add_argument("--finetune-epochs", type=int)
    overrides.add_argument("--max-images-per-class", type=int,
                           help="balanced training subset, for smoke runs (val shrinks in proportion)")
    return p, overrides
