"""``python -m core.sweep``: a stable command name; the command itself is :mod:`core.jobs.commands.sweep`."""
import sys

from core.jobs.commands.sweep import main

if __name__ == "__main__":
    sys.exit(main())
