"""``python -m core.evaluate`` and ``cxr-evaluate``: a stable command name; the command itself is :mod:`core.jobs.commands.evaluate`."""
import sys

from core.jobs.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
