"""``python -m core.datasets`` and ``cxr-data``: a stable command name; the command itself is :mod:`core.jobs.commands.data`."""
import sys

from core.jobs.commands.data import main

if __name__ == "__main__":
    sys.exit(main())
