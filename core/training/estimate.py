"""How long a run will take on this machine: a probe of a few timed batches, run in its own process.

The probe builds the model without pretrained weights (the same compute), never downloads a
data set, and sets Keras's global dtype policy only inside its own process:
:func:`estimate_in_subprocess` runs ``python -m core.train --estimate`` and reads its JSON, so a
long-lived caller (the dashboard) neither trains nor changes its own Keras state.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.config import RunConfig
from core.config.paths import REPO_ROOT
from core.data.splits import resolve_splits
from core.training.fit import PHASES, compile_classifier

__all__ = ["EstimateError", "count_images", "estimate_run_time", "estimate_in_subprocess", "KAGGLE_TRAIN_POOL"]


KAGGLE_TRAIN_POOL = 5216  # images in the Kaggle set's train folder (1,341 NORMAL + 3,875 PNEUMONIA)
KAGGLE_OFFICIAL_VAL = 16


class EstimateError(RuntimeError):
    """The probe could not measure (bad settings, data that cannot be counted, a crash); the message says why."""


def count_images(config: RunConfig) -> tuple[int, int, str | None]:
    """Train and validation image counts for a run's data settings, without downloading anything.

    A folder, a MedMNIST file or the synthetic demo set (generated locally on first use) is
    split as a run would split it. The Kaggle source without a local folder is not downloaded:
    its published size is assumed, and the note says so.

    Returns:
        ``(n_train, n_val, note)``; ``note`` is None when the counts are the run's own.
    """
    data = config.data
    if data.source == "kaggle" and not data.path:
        if data.validation == "official":
            n_train, n_val = KAGGLE_TRAIN_POOL, KAGGLE_OFFICIAL_VAL
        else:
            n_val = round(KAGGLE_TRAIN_POOL * data.val_fraction)
            n_train = KAGGLE_TRAIN_POOL - n_val
        if data.max_images_per_class is not None:
            cap = data.max_images_per_class
            n_train = min(n_train, 2 * cap)
            n_val = min(n_val, 2 * max(2, math.ceil(cap * data.val_fraction / (1 - data.val_fraction))))
        return n_train, n_val, "Kaggle set not on this machine (nothing is downloaded to estimate): its published size was assumed"

    splits = resolve_splits(data, config.train.seed)
    return len(splits.train), len(splits.val), None


def estimate_run_time(config: RunConfig, n_train: int | None = None, n_val: int | None = None,
                      steps: int = 2) -> dict[str, Any]:
    """Estimate a run's duration on this machine from a probe: a few timed batches per phase.

    The probe builds the model without pretrained weights (same compute), times ``steps``
    training steps of each phase after one warm-up step, and one validation batch, then scales
    by the data set size. Data loading and the final evaluation are not included. Keras's dtype
    policy is restored afterwards; call :func:`estimate_in_subprocess` to leave it untouched.
    """
    import keras  # heavy: Keras

    from core.model.classifier import build_classifier, set_trainable  # heavy: Keras
    from core.training.device import plan_device  # heavy: TensorFlow

    note = None
    if n_train is None or n_val is None:
        n_train, n_val, note = count_images(config)
    plan = plan_device(config.train.device, config.train.precision, config.train.jit_compile,
                       backbone=config.model.backbone)
    size, batch = config.data.image_size, config.train.batch_size
    previous_policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(plan.precision)
    try:
        model = build_classifier(config.model.__class__(**{**config.model.__dict__, "weights": "none"}), size)
        x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32")
        y = np.arange(batch, dtype="float32") % 2
        per_step = {}
        for name in PHASES:
            if getattr(config.train, name).epochs == 0:
                continue
            set_trainable(model, config.model, name)
            compile_classifier(model, 1e-4, plan.jit_compile)
            model.train_on_batch(x, y)  # warm-up: tracing and compilation
            start = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(x, y)
            per_step[name] = (time.perf_counter() - start) / steps
        model.predict_on_batch(x)
        start = time.perf_counter()
        model.predict_on_batch(x)
        val_step = time.perf_counter() - start
    finally:
        keras.mixed_precision.set_dtype_policy(previous_policy)
    steps_per_epoch = max(1, -(-n_train // batch))
    val_steps = max(1, -(-n_val // batch))
    epoch_seconds = {name: t * steps_per_epoch + val_step * val_steps for name, t in per_step.items()}
    total = sum(epoch_seconds[name] * getattr(config.train, name).epochs for name in epoch_seconds)
    return {
        "total_seconds": total,
        "seconds_per_epoch": epoch_seconds,
        "images_per_sec": {name: batch / t for name, t in per_step.items()},
        "train_images": n_train,
        "val_images": n_val,
        "device": plan.to_dict(),
        "note": f"measured on {steps} batches of {batch} per phase (upper bound: early stopping may end sooner; "
                "data loading and the test evaluation not included)" + (f"; {note}" if note else ""),
    }


def estimate_in_subprocess(config: RunConfig, steps: int = 1, timeout: float = 600) -> dict[str, Any]:
    """:func:`estimate_run_time` in a ``python -m core.train --estimate`` process; its JSON result.

    Raises:
        EstimateError: the settings are invalid, the data cannot be counted, the probe crashed
            or ran past ``timeout`` seconds. The message is the probe's own.
    """
    config.validate()
    with tempfile.TemporaryDirectory(prefix="cxr-estimate-") as folder:
        path = Path(folder) / "config.json"
        path.write_text(config.to_json())
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "core.train", "--estimate", "--config", str(path), "--estimate-steps", str(steps)],
                cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise EstimateError(f"the time probe ran past {timeout:.0f} s") from None
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        result = {}
    if proc.returncode == 0 and "total_seconds" in result:
        return result
    tail = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
    raise EstimateError(result.get("error") or f"the time probe failed: {tail[0]}")
