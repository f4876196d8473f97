"""``python -m core.serve`` and ``cxr-serve``: a stable command name; the command itself is :mod:`core.jobs.commands.serve`."""
import sys

from core.jobs.commands.serve import main

if __name__ == "__main__":
    sys.exit(main())
