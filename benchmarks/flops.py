"""FLOP/s: our VGG16 training steps (float32 and bfloat16) next to a large matmul on the same CPU, same run.

Nominal FLOPs are counted analytically from the layers (2·H·W·k²·Cin·Cout per convolution, 2·H·W·k²·C
per depthwise convolution, 2·in·out per dense layer; backward = weight gradients of trainable layers + input gradients of every layer
above the first trainable one), so "achieved FLOP/s" is comparable with the matmul, which is the
best this CPU does through TensorFlow/oneDNN. Timings are interleaved (fp32, bf16, fp32, …) so a
change in the machine's load hits both precisions alike; the minimum over repetitions is reported.

Steps timed:
- ``finetune full``: the whole model, blocks 4-5 trainable (what the tutorial pipeline runs each step).
- ``finetune cached``: our fine-tune step on cached block-3 outputs (blocks 4-5 + head only).
- ``forward``: the frozen forward pass (what the head phase costs per image, once in ours).
"""
from __future__ import annotations

import sys
import time

import numpy as np

from benchmarks._common import base_parser, finish, loadavg, machine, table


def conv_dense_flops(model, trainable_from: str | None) -> tuple[float, float]:
    """(forward, backward) nominal FLOPs per image of a Keras model."""
    import keras

    forward = backward = 0.0
    above = trainable_from is None
    for layer in model.layers:
        if trainable_from is not None and layer.name == trainable_from:
            above = True
        flops = 0.0
        if isinstance(layer, keras.layers.DepthwiseConv2D):  # one k×k filter per input channel
            _, h, w, cout = layer.output.shape
            kh, kw = layer.kernel_size
            flops = 2.0 * h * w * kh * kw * cout
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, cout = layer.output.shape
            kh, kw = layer.kernel_size
            cin = layer.input.shape[-1]
            flops = 2.0 * h * w * kh * kw * cin * cout
        elif isinstance(layer, keras.layers.Dense):
            flops = 2.0 * layer.input.shape[-1] * layer.units
        forward += flops
        if layer.trainable_weights:
            backward += flops  # weight gradient
        if above and layer.name != trainable_from:
            backward += flops  # gradient to the layer's input (not needed below the first trainable layer)
    return forward, backward


def _matmul(n: int, dtype, reps: int) -> float:
    import tensorflow as tf

    a = tf.random.normal((n, n), dtype=tf.float32)
    a = tf.cast(a, dtype)
    b = tf.cast(tf.random.normal((n, n)), dtype)
    mm = tf.function(lambda x, y: tf.reduce_sum(tf.cast(tf.matmul(x, y)[:1, :1], tf.float32)))
    mm(a, b).numpy()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        mm(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n ** 3 / best


def backbone_gains(args, backbones: list[str]) -> int:
    """bf16 ÷ fp32 train-step speed-up per backbone, whole network trainable, interleaved repetitions."""
    info = machine()
    import keras

    from core.config import ModelConfig
    from core.model.classifier import build_classifier, set_trainable

    size = args.image_size or 128
    batch = args.batch_size or 16
    reps = args.reps or 3
    x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = (np.arange(batch) % 2).astype("float32")
    rows, gains = [], {}
    for name in backbones:
        models = {}
        for policy in ("float32", "mixed_bfloat16"):
            keras.mixed_precision.set_dtype_policy(policy)
            cfg = ModelConfig(backbone=name, weights="none", unfreeze_from_block=1)
            model = build_classifier(cfg, size)
            set_trainable(model, cfg, "finetune")
            model.compile(optimizer=keras.optimizers.Adam(1e-5), loss=keras.losses.BinaryCrossentropy(from_logits=True))
            model.train_on_batch(x, y)
            models[policy] = model
        keras.mixed_precision.set_dtype_policy("float32")
        times = {policy: [] for policy in models}
        for _ in range(reps):
            for policy, model in models.items():
                start = time.perf_counter()
                model.train_on_batch(x, y)
                times[policy].append(time.perf_counter() - start)
        fp32, bf16 = min(times["float32"]), min(times["mixed_bfloat16"])
        gains[name] = {"float32_s": fp32, "bfloat16_s": bf16, "speedup": fp32 / bf16, "loadavg": loadavg()}
        rows.append([name, size, fp32, bf16, f"{fp32 / bf16:.2f}×"])
        print(rows[-1], f"(load {loadavg()})", flush=True)
    result = {"machine": info, "settings": {"image_size": size, "batch_size": batch, "reps": reps}, "bf16_gain": gains}
    finish(result, args.out, table(rows, ["backbone", "px", "fp32 s/step", "bf16 s/step", "bf16 speed-up"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, help="default 224, quick 128")
    p.add_argument("--batch-size", type=int, help="default 32, quick 16")
    p.add_argument("--reps", type=int, help="timed repetitions per step (default 5, quick 3)")
    p.add_argument("--matmul", type=int, default=2048, help="matmul side")
    p.add_argument("--xla", action="store_true", help="also time the cached fine-tune step with jit_compile=True")
    p.add_argument("--backbones", help="comma list: only compare fp32 vs bf16 whole-network train steps of these "
                                       "backbones (the figures behind core.training.device.BF16_CPU_SPEEDUP)")
    args = p.parse_args(argv)
    if args.backbones:
        return backbone_gains(args, [b for b in args.backbones.split(",") if b])
    size = args.image_size or (128 if args.quick else 224)
    batch = args.batch_size or (16 if args.quick else 32)
    reps = args.reps or (3 if args.quick else 5)

    info = machine()
    import keras
    import tensorflow as tf

    from core.config import ModelConfig
    from core.data.frozen import split_at_freeze_boundary
    from core.model.classifier import build_classifier, set_trainable

    result = {"machine": info, "settings": {"image_size": size, "batch_size": batch, "reps": reps, "matmul": args.matmul}}
    peaks = {}
    for name, dtype in (("float32", tf.float32), ("bfloat16", tf.bfloat16)):
        peaks[name] = _matmul(args.matmul, dtype, reps)
    result["matmul_flops_per_s"] = peaks
    print(f"matmul {args.matmul}²: fp32 {peaks['float32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bfloat16'] / 1e9:.1f} GFLOP/s "
          f"(load {loadavg()})", flush=True)

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = (np.arange(batch) % 2).astype("float32")
    cfg = ModelConfig(backbone="vgg16", weights="none", unfreeze_from_block=4)
    steps = {}  # (step, policy) -> (callable, flops per call)
    policies = ("float32", "mixed_bfloat16")
    for policy in policies:
        keras.mixed_precision.set_dtype_policy(policy)
        model = build_classifier(cfg, size)
        fwd, _ = conv_dense_flops(model, None)
        steps[("forward", policy)] = (lambda m=model: m.predict_on_batch(x), fwd * batch)
        set_trainable(model, cfg, "finetune")
        split = split_at_freeze_boundary(model)
        first = next(layer.name for layer in model.layers if layer.trainable_weights)
        f_full, b_full = conv_dense_flops(model, first)
        model.compile(optimizer=keras.optimizers.Adam(1e-5), loss=keras.losses.BinaryCrossentropy(from_logits=True))
        steps[("finetune full", policy)] = (lambda m=model: m.train_on_batch(x, y), (f_full + b_full) * batch)
        features = split.bottom.predict_on_batch(x).astype("float32")
        f_top, b_top = conv_dense_flops(split.top, first)
        split.top.compile(optimizer=keras.optimizers.Adam(1e-5), loss=keras.losses.BinaryCrossentropy(from_logits=True))
        steps[("finetune cached", policy)] = (lambda t=split.top, f=features: t.train_on_batch(f, y), (f_top + b_top) * batch)
        if args.xla:
            top_xla = keras.models.clone_model(split.top)
            top_xla.compile(optimizer=keras.optimizers.Adam(1e-5), loss=keras.losses.BinaryCrossentropy(from_logits=True),
                            jit_compile=True)
            steps[("finetune cached XLA", policy)] = (lambda t=top_xla, f=features: t.train_on_batch(f, y), (f_top + b_top) * batch)
    keras.mixed_precision.set_dtype_policy("float32")

    times: dict = {key: [] for key in steps}
    for key, (fn, _) in steps.items():  # warm-up: tracing and oneDNN primitive creation
        fn()
    for _ in range(reps):
        for key, (fn, _) in steps.items():  # interleaved: fp32 and bf16 share the machine's load
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    print(f"timed (load {loadavg()})", flush=True)

    rows, figures = [], {}
    for (step, policy), (_, flops) in steps.items():
        t = min(times[(step, policy)])
        achieved = flops / t
        peak = peaks["bfloat16" if "bfloat16" in policy else "float32"]
        figures[f"{step} | {policy}"] = {"seconds_min": t, "seconds_all": times[(step, policy)], "gflop_per_step": flops / 1e9,
                                         "gflop_per_s": achieved / 1e9, "fraction_of_matmul": achieved / peak,
                                         "images_per_s": batch / t}
        rows.append([step, policy, flops / 1e9, t, batch / t, achieved / 1e9, f"{achieved / peak:.0%}"])
    for step in sorted({s for s, _ in steps}):
        a, b = figures.get(f"{step} | float32"), figures.get(f"{step} | mixed_bfloat16")
        if a and b:
            figures[f"{step} | bf16 speedup"] = a["seconds_min"] / b["seconds_min"]
    result["steps"] = figures
    text = table(rows, ["step", "policy", "GFLOP/step", "s/step", "img/s", "GFLOP/s", "of matmul"])
    text += (f"\n\nmatmul {args.matmul}²: fp32 {peaks['float32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bfloat16'] / 1e9:.1f} GFLOP/s; "
             "bf16 speed-up: " + ", ".join(f"{s} {figures[f'{s} | bf16 speedup']:.2f}×"
                                          for s in sorted({s for s, _ in steps}) if f"{s} | bf16 speedup" in figures))
    text += f"\nVGG16 @ {size} px, batch {batch}, weights=None; 'of matmul' = achieved / the same-precision matmul's FLOP/s."
    finish(result, args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
