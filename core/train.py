"""``python -m core.train`` and ``cxr-train``: a stable command name; the command itself is :mod:`core.jobs.commands.train`."""
import sys

from core.jobs.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
