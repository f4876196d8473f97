"""Where the repository is: the one ``REPO_ROOT`` (the bundled sample, the shipped starter and the default run store sit under it)."""
from __future__ import annotations

from pathlib import Path

__all__ = ["REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parents[2]
