"""A stand-in trainer for the sweep tests: owns status.json like ``core.train`` and sleeps instead of training.

Run as ``python sweep_stand_in.py --run-dir RUN [--resume]``. Each start appends a line to the run's
``calls.jsonl`` (resume flag, CUDA_VISIBLE_DEVICES, start and end time). ``STAND_IN_STEPS`` steps of
``STAND_IN_SECONDS`` each; a stop request ends it "stopped"; a member whose ``model.dropout`` is
``STAND_IN_CRASH`` dies without a word (exit code 1). A finished stand-in saves made-up validation
predictions that get worse as the dropout grows, so the lowest dropout is the best member.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from core.store.runs import Run  # noqa: E402
from core.store.heartbeat import StatusWriter


def record(run: Run, **fields) -> None:
    with open(run.path / "calls.jsonl", "a") as handle:
        handle.write(json.dumps(fields) + "\n")


def main(argv: list[str]) -> int:
    run = Run(Path(argv[argv.index("--run-dir") + 1]))
    resume = "--resume" in argv
    dropout = run.config().model.dropout
    started = time.time()
    writer = StatusWriter(run, interval=0.5).start(state="running", error=None, message="stand-in training")
    if os.environ.get("STAND_IN_CRASH") and float(os.environ["STAND_IN_CRASH"]) == dropout:
        os._exit(1)  # a crash: no status, no clean-up
    steps, seconds = int(os.environ.get("STAND_IN_STEPS", "5")), float(os.environ.get("STAND_IN_SECONDS", "0.05"))
    state = "finished"
    for step in range(steps):
        if run.stop_requested():
            state = "stopped"
            break
        writer.update(progress=(step + 1) / steps)
        time.sleep(seconds)
    if state == "finished":
        labels = np.array([0] * 10 + [1] * 10)
        noise = np.random.default_rng(0).uniform(0, 1, 20)
        probabilities = labels * (1 - dropout) + noise * dropout * 2
        run.write_json("threshold.json", {"threshold": 0.5, "method": "youden", "validation": {
            "labels": labels.tolist(), "probabilities": (probabilities / probabilities.max()).tolist(),
            "patients": [f"p{i // 2}" for i in range(20)]}})
    writer.update(state=state, progress=1.0 if state == "finished" else writer.update().progress, message=state)
    writer.close()
    run.stop_path.unlink(missing_ok=True)
    record(run, resume=resume, gpu=os.environ.get("CUDA_VISIBLE_DEVICES"), start=started, end=time.time(), state=state)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
