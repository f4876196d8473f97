"""Command-line flags that several commands share, defined once (argparse)."""
from __future__ import annotations

import argparse

__all__ = ["add_store_flag"]


def add_store_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--store DIR``: the run store folder every command reads or writes."""
    parser.add_argument("--store", default=None, help="run store folder (default models/ or $CXR_STUDIO_RUNS)")
