"""Jobs: what a user launches — train (and the process that runs a run), evaluate, predict, data, ensembles, sweeps and the starter package."""
