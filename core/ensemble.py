"""``python -m core.ensemble``: a stable command name; the command itself is :mod:`core.jobs.commands.ensemble`."""
import sys

from core.jobs.commands.ensemble import main

if __name__ == "__main__":
    sys.exit(main())
