"""The run store: one folder per run (create, list, status with heartbeat, history, launch, stop, delete), written atomically."""
