"""Explanation latency: per-image prediction + CAM, ours (core.evaluation.explain.Explainer) vs tf-keras-vis called the default way.

For one 0..255 image at a time (the interactive case), interleaved so load hits all alike:
- ``floor``: one compiled forward pass plus the backward pass from the logit to the CAM layer
  (a bare ``tf.function``: the least any Grad-CAM can cost). Target: ours ≤ 1.3× of it.
- ``forward``: one compiled forward pass alone.
- ``ours``: ``Explainer(model).explain(image, method)`` — probability and 0..1 heatmap at input size.
- ``tf-keras-vis``: ``model.predict(x, verbose=0)`` for the probability, then ``Gradcam(model)(score, x)``
  (objects built once, the call with its defaults: it seeks the penultimate conv layer, expands
  and normalises the CAM), likewise ``GradcamPlusPlus``; ``Scorecam(...)(score, x, max_N=10)``
  (the "Faster Score-CAM" size our app uses; the default max_N=None would run 512 forward passes).
  The Grad-CAM CAM call is also timed alone, without the ``predict`` for the probability.
The model: our VGG16 classifier at 224 px (random weights: offline), loaded once.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path


from benchmarks._common import base_parser, finish, link_subset, loadavg, machine, table

METHODS = ("gradcam", "gradcam++", "scorecam")


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--images", type=int, help="distinct real test X-rays, each explained once per round (default 8, quick 4)")
    p.add_argument("--rounds", type=int, help="rounds over the images (default 3, quick 2)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--precision", default="float32", help="dtype policy of the loaded model (float32 or mixed_bfloat16)")
    p.add_argument("--methods", default=",".join(METHODS))
    args = p.parse_args(argv)
    n_images = args.images or (4 if args.quick else 8)
    rounds = args.rounds or (2 if args.quick else 3)
    methods = [m for m in args.methods.split(",") if m]

    info = machine()
    import keras
    import tensorflow as tf
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.scores import BinaryScore

    from core.config import ModelConfig
    from core.data.images import load_image
    from core.evaluation.explain import Explainer, default_cam_layer
    from core.model.classifier import build_classifier

    keras.mixed_precision.set_dtype_policy(args.precision)
    size = args.image_size
    model = build_classifier(ModelConfig(backbone="vgg16", weights="none"), size)
    with tempfile.TemporaryDirectory(prefix="cxr-explain-") as tmp:
        files = link_subset(args.data, Path(tmp), "test", max(1, n_images // 2), seed=0)
        paths = [f for fs in files.values() for f in fs][:n_images]
        images = [load_image(path, size) for path in paths]
    images = [im.astype("float32") for im in images]

    layer = default_cam_layer(model)
    explainer = Explainer(model)
    grad_model = keras.Model(model.inputs, [model.get_layer(layer).output, model.outputs[0]])

    @tf.function(input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)])
    def floor(x):
        with tf.GradientTape() as tape:
            features, logit = grad_model(x, training=False)
            tape.watch(features)
            score = tf.reduce_sum(tf.cast(logit, tf.float32))
        return logit, tape.gradient(score, features)

    @tf.function(input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)])
    def forward(x):
        return model(x, training=False)

    vis = {"gradcam": Gradcam(model), "gradcam++": GradcamPlusPlus(model), "scorecam": Scorecam(model)}

    def tfkv(method, x):
        prob = model.predict(x, verbose=0)
        score = BinaryScore(1.0)
        if method == "scorecam":
            return prob, vis[method](score, x, max_N=10)
        return prob, vis[method](score, x)

    cases = {"floor (forward + backward to CAM layer)": lambda x: [t.numpy() for t in floor(tf.constant(x[None]))],
             "forward only": lambda x: forward(tf.constant(x[None])).numpy()}
    for method in methods:
        cases[f"ours {method}"] = lambda x, m=method: explainer.explain(x, m)
        cases[f"tf-keras-vis {method}"] = lambda x, m=method: tfkv(m, x[None])
    if "gradcam" in methods:  # the CAM call alone, without model.predict for the probability
        cases["tf-keras-vis gradcam, CAM call only"] = lambda x: vis["gradcam"](BinaryScore(1.0), x[None])
    for fn in cases.values():  # warm-up: tracing, oneDNN primitives
        fn(images[0])
        fn(images[0])
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for image in images:
            for name, fn in cases.items():
                start = time.perf_counter()
                fn(image)
                times[name].append(time.perf_counter() - start)
    print(f"timed {rounds} × {len(images)} images (load {loadavg()})", flush=True)

    floor_t = statistics.median(times["floor (forward + backward to CAM layer)"])
    rows, figures = [], {}
    for name, ts in times.items():
        med = statistics.median(ts)
        figures[name] = {"median_s": med, "min_s": min(ts), "all_s": ts, "vs_floor": med / floor_t}
        rows.append([name, med, min(ts), f"{med / floor_t:.2f}×"])
    for method in methods:
        ours, theirs = figures.get(f"ours {method}"), figures.get(f"tf-keras-vis {method}")
        if ours and theirs:
            figures[f"speedup {method}"] = theirs["median_s"] / ours["median_s"]
    ours_gc = figures.get("ours gradcam")
    result = {"machine": info, "settings": {"images": len(images), "rounds": rounds, "image_size": size,
                                            "precision": args.precision, "cam_layer": layer}, "latency": figures}
    text = table(rows, ["per image", "median s", "min s", "÷ floor"])
    text += "\n\n" + ", ".join(f"{m}: ours {figures[f'speedup {m}']:.2f}× faster than tf-keras-vis"
                               for m in methods if f"speedup {m}" in figures)
    if ours_gc:
        met = ours_gc["vs_floor"] <= 1.3 and ours_gc["median_s"] < 0.2
        result["target"] = {"gradcam_vs_floor": ours_gc["vs_floor"], "gradcam_seconds": ours_gc["median_s"], "met": met}
        text += (f"\ntarget (Grad-CAM ≤ 1.3× floor and < 0.2 s for VGG16@224): {ours_gc['vs_floor']:.2f}×, "
                 f"{ours_gc['median_s']:.3f} s → {'met' if met else 'missed'}")
    text += f"\nVGG16 @ {size} px, {args.precision}, CAM layer {layer}, batch of 1, medians over {rounds}×{len(images)}."
    finish(result, args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
