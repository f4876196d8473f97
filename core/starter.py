"""``python -m core.starter``: a stable command name; the command itself is :mod:`core.jobs.commands.starter`."""
import sys

from core.jobs.commands.starter import main

if __name__ == "__main__":
    sys.exit(main())
