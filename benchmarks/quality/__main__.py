"""``python -m benchmarks.quality``: the command of :mod:`benchmarks.quality.cli`."""
from __future__ import annotations

import sys

from benchmarks.quality.cli import main

if __name__ == "__main__":
    sys.exit(main())
