"""``python -m core.site`` and ``cxr-site``: a stable command name; the command itself is :mod:`core.jobs.commands.site`."""
import sys

from core.jobs.commands.site import main

if __name__ == "__main__":
    sys.exit(main())
