"""The commands: ``cxr-train``, ``cxr-evaluate``, ``cxr-predict``, ``cxr-data`` and the ``python -m core.<name>`` entry points; each parses its arguments and calls the jobs below it."""
