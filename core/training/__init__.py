"""Training: device choice, the multi-worker cluster, callbacks, the two-phase fit and the time estimate."""
