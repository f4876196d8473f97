"""``python -m core.predict`` and ``cxr-predict``: a stable command name; the command itself is :mod:`core.jobs.commands.predict`."""
import sys

from core.jobs.commands.predict import main

if __name__ == "__main__":
    sys.exit(main())
